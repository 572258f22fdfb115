//! The HTTP side of access control: which access each endpoint needs,
//! challenges (`WWW-Authenticate`), and the token endpoint (`/auth/token`).

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use wharf_auth::{Actions, Auth, AuthError, BearerToken, Mode, Principal, Resource, Scope};
use wharf_oci::RepoName;

use crate::{ApiError, AppState, ConnInfo, Endpoint, ErrorCode, Query, json_response};

/// Scopes one token request may ask for.
const MAX_SCOPES: usize = 32;
/// Largest token-request form body.
const MAX_FORM: usize = 64 * 1024;

/// Who is calling, once authenticated and authorised.
#[derive(Clone)]
pub(crate) enum Caller {
    /// Access control is off.
    Open,
    /// Authenticated with a password (htpasswd or built-in users).
    Basic(Principal),
    /// Authenticated with a bearer token.
    Bearer(BearerToken),
}

impl Caller {
    pub(crate) fn actor(&self) -> String {
        match self {
            Caller::Open => "anonymous".into(),
            Caller::Basic(p) => p.actor(),
            Caller::Bearer(t) if t.claims.sub.is_empty() => "anonymous".into(),
            Caller::Bearer(t) => t.claims.sub.clone(),
        }
    }

    /// Whether the caller may also do `wanted` to `repo` (for the `from` of a mount).
    pub(crate) async fn may(&self, auth: Option<&Auth>, repo: &RepoName, wanted: Actions) -> bool {
        let resource = Resource::Repository(repo.clone());
        match (self, auth) {
            (Caller::Open, _) => true,
            (Caller::Bearer(t), _) => t.granted(&resource).contains(wanted),
            (Caller::Basic(p), Some(a)) => a
                .grant(p, &resource, wanted)
                .await
                .is_ok_and(|g| g.contains(wanted)),
            (Caller::Basic(_), None) => false,
        }
    }

    /// The principal as it stands now (for listings).
    pub(crate) async fn principal(&self, auth: &Auth) -> Result<Option<Principal>, ApiError> {
        match self {
            Caller::Open => Ok(None),
            Caller::Basic(p) => Ok(Some(p.clone())),
            Caller::Bearer(t) => Ok(Some(auth.principal_of(&t.claims).await.map_err(internal)?)),
        }
    }
}

fn internal(e: AuthError) -> ApiError {
    ApiError::msg(ErrorCode::Unknown, e.to_string())
}

/// The access an endpoint needs: `None` for `/v2/` (any valid credential).
fn required(ep: &Endpoint, m: &Method) -> Option<(Resource, Actions)> {
    let repo = |n: &RepoName| Resource::Repository(n.clone());
    let push = Actions::PULL.union(Actions::PUSH);
    Some(match ep {
        Endpoint::Base => return None,
        Endpoint::Catalog => (Resource::Catalog, Actions::ALL),
        Endpoint::Tags(n) | Endpoint::Referrers(n, _) => (repo(n), Actions::PULL),
        Endpoint::Manifest(n, _) | Endpoint::ManifestBadRef(n, _) | Endpoint::Blob(n, _) => {
            match *m {
                Method::DELETE => (repo(n), Actions::DELETE),
                Method::PUT => (repo(n), push),
                _ => (repo(n), Actions::PULL),
            }
        }
        Endpoint::UploadStart(n) | Endpoint::Upload(n, _) => (repo(n), push),
    })
}

fn scope_string(resource: &Resource, actions: Actions) -> String {
    Scope {
        resource: resource.clone(),
        actions,
    }
    .to_string()
}

/// The 401 that tells a client how to authenticate.
fn challenge(
    auth: &Auth,
    base: &str,
    need: Option<&(Resource, Actions)>,
    error: Option<&str>,
    message: &str,
) -> ApiError {
    let value = match auth.mode() {
        Mode::Htpasswd { realm, .. } => format!("Basic realm=\"{}\"", quote(realm)),
        Mode::Builtin { .. } | Mode::External { .. } => {
            let realm = match auth.mode() {
                Mode::External { realm } => realm.clone(),
                _ => format!("{base}/auth/token"),
            };
            let mut v = format!(
                "Bearer realm=\"{}\",service=\"{}\"",
                quote(&realm),
                quote(&auth.settings().service)
            );
            if let Some((r, a)) = need {
                v.push_str(&format!(",scope=\"{}\"", scope_string(r, *a)));
            }
            if let Some(e) = error {
                v.push_str(&format!(",error=\"{e}\""));
            }
            v
        }
    };
    ApiError::msg(ErrorCode::Unauthorized, message).with_header(header::WWW_AUTHENTICATE, value)
}

fn quote(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn throttled(secs: u64) -> ApiError {
    ApiError::msg(
        ErrorCode::TooManyRequests,
        format!("too many failed logins from this address; retry in {secs} s"),
    )
    .with_header(header::RETRY_AFTER, secs.to_string())
}

enum Credentials {
    None,
    Basic(String, String),
    Bearer(String),
}

fn credentials(headers: &HeaderMap) -> Result<Credentials, ()> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Ok(Credentials::None);
    };
    let v = v.to_str().map_err(|_| ())?;
    let (scheme, rest) = v.split_once(' ').ok_or(())?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .map_err(|_| ())?;
        let s = String::from_utf8(raw).map_err(|_| ())?;
        let (u, p) = s.split_once(':').ok_or(())?;
        Ok(Credentials::Basic(u.to_owned(), p.to_owned()))
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Ok(Credentials::Bearer(rest.to_owned()))
    } else {
        Err(())
    }
}

/// Authenticates a request to the admin API: anonymous without credentials,
/// else the principal behind the password or token.
pub(crate) async fn authenticate(
    auth: &Auth,
    headers: &HeaderMap,
    addr: Option<IpAddr>,
    base: &str,
) -> Result<Principal, ApiError> {
    let creds = credentials(headers)
        .map_err(|_| challenge(auth, base, None, None, "malformed Authorization header"))?;
    match creds {
        Credentials::None => Ok(Principal::Anonymous),
        Credentials::Basic(u, p) if !matches!(auth.mode(), Mode::External { .. }) => {
            match auth.basic(&u, &p, addr).await {
                Ok(p) => Ok(p),
                Err(AuthError::Throttled(s)) => Err(throttled(s)),
                Err(AuthError::BadCredentials) => Err(challenge(
                    auth,
                    base,
                    None,
                    None,
                    "invalid username or password",
                )),
                Err(e) => Err(internal(e)),
            }
        }
        Credentials::Bearer(t) if !matches!(auth.mode(), Mode::Htpasswd { .. }) => {
            match auth.verify_bearer(&t) {
                Ok(t) => auth.principal_of(&t.claims).await.map_err(internal),
                Err(e) => Err(challenge(
                    auth,
                    base,
                    None,
                    Some("invalid_token"),
                    &e.to_string(),
                )),
            }
        }
        _ => Err(challenge(auth, base, None, None, "authentication required")),
    }
}

/// Authenticates and authorises a `/v2/` request.
pub(crate) async fn authorize(
    auth: &Auth,
    ep: &Endpoint,
    method: &Method,
    headers: &HeaderMap,
    addr: Option<IpAddr>,
    base: &str,
) -> Result<Caller, ApiError> {
    let need = required(ep, method);
    let creds = credentials(headers).map_err(|_| {
        challenge(
            auth,
            base,
            need.as_ref(),
            None,
            "malformed Authorization header",
        )
    })?;
    let basic_allowed = !matches!(auth.mode(), Mode::External { .. });
    let bearer_allowed = !matches!(auth.mode(), Mode::Htpasswd { .. });
    let caller = match creds {
        Credentials::Basic(u, p) if basic_allowed => match auth.basic(&u, &p, addr).await {
            Ok(p) => Caller::Basic(p),
            Err(AuthError::Throttled(s)) => return Err(throttled(s)),
            Err(AuthError::BadCredentials) => {
                return Err(challenge(
                    auth,
                    base,
                    need.as_ref(),
                    None,
                    "invalid username or password",
                ));
            }
            Err(e) => return Err(internal(e)),
        },
        Credentials::Bearer(t) if bearer_allowed => match auth.verify_bearer(&t) {
            Ok(t) => Caller::Bearer(t),
            Err(e) => {
                tracing::debug!(error = %e, "bearer token refused");
                return Err(challenge(
                    auth,
                    base,
                    need.as_ref(),
                    Some("invalid_token"),
                    &e.to_string(),
                ));
            }
        },
        _ => {
            return Err(challenge(
                auth,
                base,
                need.as_ref(),
                None,
                "authentication required",
            ));
        }
    };
    let Some((resource, wanted)) = need else {
        return Ok(caller);
    };
    let ok = match &caller {
        Caller::Open => true,
        Caller::Bearer(t) => t.granted(&resource).contains(wanted),
        Caller::Basic(p) => auth
            .grant(p, &resource, wanted)
            .await
            .map_err(internal)?
            .contains(wanted),
    };
    if ok {
        return Ok(caller);
    }
    let what = scope_string(&resource, wanted);
    if let Resource::Repository(r) = &resource {
        let action = if wanted.contains(Actions::DELETE) {
            "delete"
        } else if wanted.contains(Actions::PUSH) {
            "push"
        } else {
            "pull"
        };
        auth.audit(&caller.actor(), addr, action, r.as_str(), "denied")
            .await;
    }
    match caller {
        // A token without the scope: ask for a new one, as the spec says.
        Caller::Bearer(_) => Err(challenge(
            auth,
            base,
            Some(&(resource, wanted)),
            Some("insufficient_scope"),
            &format!("access to {what} is not granted"),
        )),
        Caller::Basic(Principal::Anonymous) | Caller::Open => Err(challenge(
            auth,
            base,
            Some(&(resource, wanted)),
            None,
            "authentication required",
        )),
        Caller::Basic(_) => Err(ApiError::msg(
            ErrorCode::Denied,
            format!("access to {what} is denied"),
        )),
    }
}

fn client_addr(req: &Request) -> Option<IpAddr> {
    req.extensions()
        .get::<ConnInfo>()
        .and_then(ConnInfo::client_ip)
}

/// An OAuth2-style error as the token endpoint answers it.
fn token_error(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    let mut r = ApiError::msg(code, message).into_response();
    *r.status_mut() = status;
    r
}

/// `GET|POST /auth/token`: Docker's token endpoint (GET with Basic
/// credentials) and its OAuth2 form (POST `grant_type=password|refresh_token`).
pub(crate) async fn token(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let Some(auth) = st.auth.as_deref() else {
        return ApiError::new(ErrorCode::NotFound).into_response();
    };
    if !matches!(auth.mode(), Mode::Builtin { .. }) {
        return ApiError::new(ErrorCode::NotFound).into_response();
    }
    let addr = client_addr(&req);
    let (parts, body) = req.into_parts();
    let mut params = Query::parse(parts.uri.query()).0;
    let post = parts.method == Method::POST;
    if post {
        let bytes = match axum::body::to_bytes(body, MAX_FORM).await {
            Ok(b) => b,
            Err(_) => {
                return token_error(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::TooLarge,
                    "form too large",
                );
            }
        };
        params
            .extend(form_urlencoded::parse(&bytes).map(|(k, v)| (k.into_owned(), v.into_owned())));
    } else if parts.method != Method::GET {
        return ApiError::new(ErrorCode::MethodNotAllowed).into_response();
    }
    let get = |k: &str| {
        params
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    if let Some(service) = get("service")
        && service != auth.settings().service
    {
        return token_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::Unsupported,
            "this token service does not serve that service",
        );
    }
    // `scope` may repeat, and one value may hold several space-separated scopes.
    let mut scopes = Vec::new();
    for (_, v) in params.iter().filter(|(k, _)| k == "scope") {
        for s in v.split(' ').filter(|s| !s.is_empty()) {
            match s.parse::<Scope>() {
                Ok(s) => scopes.push(s),
                Err(e) => {
                    return token_error(
                        StatusCode::BAD_REQUEST,
                        ErrorCode::Unsupported,
                        &e.to_string(),
                    );
                }
            }
        }
    }
    if scopes.len() > MAX_SCOPES {
        return token_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::Unsupported,
            "too many scopes",
        );
    }
    let offline = get("offline_token") == Some("true") || get("access_type") == Some("offline");

    let principal = if post {
        match get("grant_type") {
            Some("password") => {
                let (Some(u), Some(p)) = (get("username"), get("password")) else {
                    return token_error(
                        StatusCode::BAD_REQUEST,
                        ErrorCode::Unsupported,
                        "username and password required",
                    );
                };
                auth.basic(u, p, addr).await
            }
            Some("refresh_token") => match get("refresh_token") {
                Some(t) => auth.refresh(t, addr).await,
                None => {
                    return token_error(
                        StatusCode::BAD_REQUEST,
                        ErrorCode::Unsupported,
                        "refresh_token required",
                    );
                }
            },
            _ => {
                return token_error(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::Unsupported,
                    "unsupported grant_type",
                );
            }
        }
    } else {
        match credentials(&parts.headers) {
            Ok(Credentials::Basic(u, p)) => auth.basic(&u, &p, addr).await,
            Ok(Credentials::None) => Ok(Principal::Anonymous),
            _ => Err(AuthError::BadCredentials),
        }
    };
    let principal = match principal {
        Ok(p) => p,
        Err(AuthError::Throttled(s)) => return throttled(s).into_response(),
        Err(AuthError::Store(e)) => return internal(AuthError::Store(e)).into_response(),
        Err(e) => {
            tracing::debug!(error = %e, "token request refused");
            return token_error(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                "invalid credentials",
            );
        }
    };
    match auth.issue(&principal, &scopes, offline).await {
        Ok(t) => {
            let mut v = serde_json::to_value(&t).unwrap_or_default();
            if post && let Some(o) = v.as_object_mut() {
                let granted: Vec<String> = scopes.iter().map(ToString::to_string).collect();
                o.insert("scope".into(), granted.join(" ").into());
            }
            let mut r = json_response(StatusCode::OK, &v, None);
            r.headers_mut().insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_static("no-store"),
            );
            r
        }
        Err(e) => internal(e).into_response(),
    }
}

/// `GET /auth/jwks`: the token signing key, for services that verify Wharf's tokens.
pub(crate) async fn jwks(State(st): State<Arc<AppState>>) -> Response {
    match st.auth.as_deref().map(Auth::mode) {
        Some(Mode::Builtin { signer }) => json_response(StatusCode::OK, &signer.jwks(), None),
        _ => ApiError::new(ErrorCode::NotFound).into_response(),
    }
}
