//! The HTTP API: OCI Distribution v1.1 / Docker Registry v2 under `/v2/`, plus
//! `/metrics` (Prometheus) and `/healthz`.
//!
//! Every request to `/v2/...` is parsed into an [`Endpoint`] first; handlers
//! then work with validated types only. Every error becomes the OCI JSON
//! envelope through [`ApiError`].

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};

mod admin;
mod auth;
mod blobs;
pub mod drain;
mod endpoint;
pub mod error;
mod limits;
mod manifests;
pub mod metrics;
pub mod server;

pub use endpoint::Endpoint;
pub use error::{ApiError, ErrorCode};
use wharf_core::Registry;

/// Facts about the connection a request came in on, set by the server.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The TCP peer.
    pub remote: Option<SocketAddr>,
    /// The client: the peer, or the address a trusted proxy forwarded for
    /// (see [`server::client_ip`]).
    pub client: Option<std::net::IpAddr>,
    pub tls: bool,
}

impl ConnInfo {
    /// The client's address, for throttling, limits and logs.
    pub fn client_ip(&self) -> Option<std::net::IpAddr> {
        self.client.or(self.remote.map(|a| a.ip()))
    }
}

/// Settings of the API layer.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Base URL for `Location` headers (`http.host`), e.g.
    /// `https://registry.example.com`. Without it, the request's `Host` is used.
    pub base_url: Option<String>,
    /// The grace period of collections started through the admin API when
    /// the request does not give one (`storage.maintenance.gc.grace`).
    pub gc_grace: std::time::Duration,
    /// The untagged-manifest policy (`storage.maintenance.untagged`), if on.
    pub gc_untagged_age: Option<std::time::Duration>,
    /// The longest pause in a request body (`http.timeouts.bodyidle`).
    pub body_idle: std::time::Duration,
    /// Upload requests in progress at once, in all (`http.limits.uploads`).
    pub max_uploads: usize,
    /// And per client address (`http.limits.uploadsperclient`).
    pub max_uploads_per_client: usize,
    /// Whether `/metrics` is served on the registry's port; off when it
    /// moves to the debug listener ([`debug_router`]).
    pub metrics_on_main: bool,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            base_url: None,
            gc_grace: std::time::Duration::from_secs(24 * 3600),
            gc_untagged_age: None,
            body_idle: std::time::Duration::from_secs(60),
            max_uploads: 4096,
            max_uploads_per_client: 256,
            metrics_on_main: true,
        }
    }
}

pub struct AppState {
    pub registry: Arc<Registry>,
    pub config: ApiConfig,
    /// Access control; `None` serves everyone everything (distribution's default).
    pub auth: Option<Arc<wharf_auth::Auth>>,
    /// Upload requests in progress, in all and per client address.
    pub(crate) uploads: limits::UploadLimits,
}

impl AppState {
    pub fn new(
        registry: Arc<Registry>,
        config: ApiConfig,
        auth: Option<Arc<wharf_auth::Auth>>,
    ) -> AppState {
        let uploads = limits::UploadLimits::new(config.max_uploads, config.max_uploads_per_client);
        AppState {
            registry,
            config,
            auth,
            uploads,
        }
    }
}

/// Puts what a garbage collection deletes in the audit log: each manifest
/// the untagged policy removes, as `gc.untagged.delete` of `repo@digest`.
pub struct GcAudit {
    pub log: wharf_auth::AuditLog,
    /// Who started the collection: an administrator, or `system:gc` for
    /// the schedule and `wharf gc`.
    pub actor: String,
    pub addr: Option<std::net::IpAddr>,
}

#[async_trait::async_trait]
impl wharf_core::GcEvents for GcAudit {
    async fn untagged_deleted(&self, manifests: &[(wharf_oci::RepoName, wharf_oci::Digest)]) {
        for (repo, digest) in manifests {
            self.log
                .record_now(
                    self.actor.as_str(),
                    self.addr,
                    "gc.untagged.delete",
                    format!("{repo}@{digest}"),
                    "ok",
                )
                .await;
        }
    }
}

/// The admin API's OpenAPI document (served at `/api/v1/openapi.json`).
pub fn admin_openapi() -> &'static str {
    admin::OPENAPI
}

/// The endpoint label a handler leaves on its response, for metrics and logs.
#[derive(Debug, Clone, Copy)]
pub struct EndpointLabel(pub &'static str);

pub type ApiResult = Result<Response, ApiError>;

/// The router with every route and the access-log and metrics layer.
/// Every request body may pause at most `config.body_idle`.
pub fn router(state: Arc<AppState>) -> Router {
    let body_idle = state.config.body_idle;
    let mut r = Router::new()
        .route("/v2", any(v2))
        .route("/v2/", any(v2))
        .route("/v2/{*rest}", any(v2))
        .merge(admin::routes())
        .route("/auth/token", any(auth::token))
        .route("/auth/jwks", get(auth::jwks))
        .route("/healthz", get(health));
    if state.config.metrics_on_main {
        r = r.route("/metrics", get(metrics::render));
    }
    r.fallback(|| async { ApiError::new(ErrorCode::NotFound) })
        .with_state(state)
        .layer(axum::middleware::from_fn(drain::drain_unread))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(body_idle))
        .layer(axum::middleware::from_fn(preflight))
        .layer(axum::middleware::from_fn(metrics::observe))
}

/// The debug listener's router (`http.debug.addr`): `/healthz`, and the
/// metrics at `metrics_path` if given (`http.debug.prometheus`).
pub fn debug_router(state: Arc<AppState>, metrics_path: Option<&str>) -> Router {
    let mut r = Router::new().route("/healthz", get(health));
    if let Some(p) = metrics_path {
        r = r.route(p, get(metrics::render));
    }
    r.fallback(|| async { ApiError::new(ErrorCode::NotFound) })
        .with_state(state)
}

/// Methods the API answers, for `OPTIONS`.
const ALLOW: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// Answers `OPTIONS` (a browser's CORS preflight carries no credentials) with
/// 204 and `Allow`, before authentication; the `Access-Control-*` headers
/// come from `http.headers`, as with distribution, so CORS is as open as the
/// operator configures it and closed otherwise.
async fn preflight(req: Request, next: axum::middleware::Next) -> Response {
    if req.method() != Method::OPTIONS {
        return next.run(req).await;
    }
    let mut r = empty(StatusCode::NO_CONTENT);
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(ALLOW));
    r
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    match st.registry.catalog(None, 0).await {
        Ok(_) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({"status": "ok"})),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "health check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(serde_json::json!({"status": "unavailable"})),
            )
                .into_response()
        }
    }
}

/// The query string as key/value pairs (first value wins).
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: Option<&str>) -> Query {
        Query(
            form_urlencoded::parse(q.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a key given several times (`?tag=a&tag=b`).
    pub(crate) fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// What handlers need from a request besides its endpoint.
pub(crate) struct Ctx {
    pub st: Arc<AppState>,
    pub method: Method,
    pub headers: HeaderMap,
    pub query: Query,
    pub body: Body,
    pub caller: auth::Caller,
    /// The client's address (see [`ConnInfo::client_ip`]).
    pub addr: Option<std::net::IpAddr>,
    base: String,
}

impl Ctx {
    /// An absolute URL for `path` (which starts with `/`), as distribution gives.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub(crate) fn header(&self, name: header::HeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

fn base_url(
    st: &AppState,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    conn: Option<&ConnInfo>,
) -> String {
    if let Some(b) = &st.config.base_url {
        return b.trim_end_matches('/').to_owned();
    }
    // HTTP/1.1 names the host in `Host`; HTTP/2 in the `:authority` that
    // hyper puts into the URI.
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()));
    let proto = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .filter(|p| *p == "http" || *p == "https");
    match host {
        Some(h) => {
            let scheme = proto.unwrap_or(if conn.is_some_and(|c| c.tls) {
                "https"
            } else {
                "http"
            });
            format!("{scheme}://{h}")
        }
        // Without a Host header a relative URL is all we can give.
        None => String::new(),
    }
}

async fn v2(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let raw = parts.uri.path().strip_prefix("/v2").unwrap_or("");
    let raw = raw.strip_prefix('/').unwrap_or(raw);
    let ep = match Endpoint::parse(raw) {
        Ok(ep) => ep,
        Err(e) => return e.into_response(),
    };
    let label = ep.label();
    let conn = parts.extensions.get::<ConnInfo>();
    let base = base_url(&st, &parts.uri, &parts.headers, conn);
    let addr = conn.and_then(ConnInfo::client_ip);
    let caller = match &st.auth {
        None => auth::Caller::Open,
        Some(a) => {
            match auth::authorize(a, &ep, &parts.method, &parts.headers, addr, &base).await {
                Ok(c) => c,
                Err(e) => {
                    let mut r = e.into_response();
                    r.extensions_mut().insert(EndpointLabel(label));
                    return r;
                }
            }
        }
    };
    let audit = st
        .auth
        .clone()
        .and_then(|a| audited(&ep, &parts.method).map(|x| (a, x)));
    let actor = audit.as_ref().map(|_| caller.actor());
    let ctx = Ctx {
        st,
        method: parts.method,
        headers: parts.headers,
        query: Query::parse(parts.uri.query()),
        body,
        caller,
        addr,
        base,
    };
    let mut resp = dispatch(ep, ctx)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    if let (Some((a, (action, resource))), Some(actor)) = (audit, actor) {
        let outcome = if resp.status().is_success() {
            "ok"
        } else {
            "failed"
        };
        a.audit(actor, addr, action, resource, outcome).await;
    }
    resp.extensions_mut().insert(EndpointLabel(label));
    resp
}

/// Requests recorded in the audit log: manifest pulls, pushes and deletes,
/// and blob deletes. (Blob reads and uploads belong to those and would drown
/// the log.)
fn audited(ep: &Endpoint, m: &Method) -> Option<(&'static str, String)> {
    match (ep, m) {
        (Endpoint::Manifest(n, r), &Method::GET) => Some(("pull", manifest_resource(n, r))),
        (Endpoint::Manifest(n, r), &Method::PUT) => Some(("push", manifest_resource(n, r))),
        (Endpoint::Manifest(n, r), &Method::DELETE) => Some(("delete", manifest_resource(n, r))),
        (Endpoint::Blob(n, d), &Method::DELETE) => Some(("delete", format!("{n}@{d}"))),
        _ => None,
    }
}

fn manifest_resource(n: &wharf_oci::RepoName, r: &wharf_oci::Reference) -> String {
    match r {
        wharf_oci::Reference::Tag(t) => format!("{n}:{t}"),
        wharf_oci::Reference::Digest(d) => format!("{n}@{d}"),
    }
}

async fn dispatch(ep: Endpoint, ctx: Ctx) -> ApiResult {
    use Endpoint as E;
    let m = ctx.method.clone();
    match ep {
        E::Base if m == Method::GET || m == Method::HEAD => {
            Ok(json_response(StatusCode::OK, &serde_json::json!({}), None))
        }
        E::Catalog if m == Method::GET => manifests::catalog(ctx).await,
        E::Tags(name) if m == Method::GET => manifests::tags(ctx, name).await,
        E::Manifest(name, r) if m == Method::GET || m == Method::HEAD => {
            manifests::get(ctx, name, r).await
        }
        E::Manifest(name, r) if m == Method::PUT => manifests::put(ctx, name, r).await,
        E::Manifest(name, r) if m == Method::DELETE => manifests::delete(ctx, name, r).await,
        // A reference that is no tag nor digest names nothing stored.
        E::ManifestBadRef(..) if m == Method::GET || m == Method::HEAD || m == Method::DELETE => {
            Err(ApiError::new(ErrorCode::ManifestUnknown))
        }
        E::ManifestBadRef(_, bad) if m == Method::PUT => Err(bad.put_error()),
        E::Referrers(name, d) if m == Method::GET => manifests::referrers(ctx, name, d).await,
        E::Blob(name, d) if m == Method::GET || m == Method::HEAD => blobs::get(ctx, name, d).await,
        E::Blob(name, d) if m == Method::DELETE => blobs::delete(ctx, name, d).await,
        E::UploadStart(name) if m == Method::POST => blobs::start(ctx, name).await,
        E::Upload(name, id) if m == Method::GET => blobs::status(ctx, name, id).await,
        E::Upload(name, id) if m == Method::PATCH => blobs::patch(ctx, name, id).await,
        E::Upload(name, id) if m == Method::PUT => blobs::put(ctx, name, id).await,
        E::Upload(name, id) if m == Method::DELETE => blobs::cancel(ctx, name, id).await,
        _ => Err(ApiError::new(ErrorCode::MethodNotAllowed)),
    }
}

pub(crate) fn json_response(
    status: StatusCode,
    v: &serde_json::Value,
    content_type: Option<&'static str>,
) -> Response {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type.unwrap_or("application/json")),
    );
    r
}

/// Sets a header from a string we built; values that cannot be headers are dropped.
pub(crate) fn set_header(r: &mut Response, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().insert(name, v);
    }
}

/// An empty response with a status.
pub(crate) fn empty(status: StatusCode) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    r
}
