//! The admin API under `/api/v1`: users, projects and members, robot
//! accounts, personal access tokens and the audit log. JSON in and out, the
//! same error envelope as `/v2/`, described by `/api/v1/openapi.json`.
//!
//! Who may do what: system administrators everything; a project admin manages
//! that project's members; every user their own password and tokens, and sees
//! the projects they may see.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, put};
use serde::Deserialize;
use serde_json::{Value, json};
use wharf_auth::{
    AuditFilter, Auth, AuthError, Credential, CredentialKind, MetaError, PAT_PREFIX, Permission,
    Principal, Project, ROBOT_SECRET_PREFIX, ROBOT_USER_PREFIX, Role, User, now_ms, password,
};

use crate::auth::authenticate;
use crate::{ApiError, AppState, ConnInfo, ErrorCode, json_response};

/// Largest admin request body.
const MAX_BODY: usize = 64 * 1024;
/// Most audit records one query returns.
const MAX_AUDIT: usize = 1000;
/// The OpenAPI description, served and used by the tests.
pub const OPENAPI: &str = include_str!("../openapi.json");

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/users", get(list_users).post(create_user))
        .route(
            "/api/v1/users/{name}",
            get(get_user).patch(update_user).delete(delete_user),
        )
        .route("/api/v1/users/{name}/password", put(set_password))
        .route(
            "/api/v1/users/{name}/tokens",
            get(list_tokens).post(create_token),
        )
        .route("/api/v1/users/{name}/tokens/{token}", delete(delete_token))
        .route("/api/v1/projects", get(list_projects).post(create_project))
        .route(
            "/api/v1/projects/{name}",
            get(get_project)
                .patch(update_project)
                .delete(delete_project),
        )
        .route("/api/v1/projects/{name}/members", get(list_members))
        .route("/api/v1/projects/{name}/usage", get(project_usage))
        .route(
            "/api/v1/projects/{name}/policy",
            get(get_policy).put(put_policy),
        )
        .route(
            "/api/v1/projects/{name}/retention",
            axum::routing::post(run_retention),
        )
        .route(
            "/api/v1/projects/{name}/members/{user}",
            put(set_member).delete(remove_member),
        )
        .route("/api/v1/robots", get(list_robots).post(create_robot))
        .route("/api/v1/robots/{name}", delete(delete_robot))
        .route("/api/v1/audit", get(audit))
        .route(
            "/api/v1/throttles",
            get(list_throttles).delete(clear_throttles),
        )
        .route("/api/v1/gc", get(gc_status).post(run_gc))
        .route("/api/v1/repositories/{*name}", delete(delete_repository))
}

async fn openapi() -> Response {
    let mut r = OPENAPI.into_response();
    r.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    r
}

/// What authentication needs from a request (owned: a borrowed request
/// would make the handler's future not `Send`).
type RequestFacts = (axum::http::Uri, HeaderMap, Option<ConnInfo>);

fn facts(req: &Request) -> RequestFacts {
    (
        req.uri().clone(),
        req.headers().clone(),
        req.extensions().get::<ConnInfo>().copied(),
    )
}

/// The authenticated caller of an admin request.
struct Admin {
    auth: Arc<Auth>,
    who: Principal,
    addr: Option<std::net::IpAddr>,
}

impl Admin {
    async fn from(st: &AppState, (uri, headers, conn): RequestFacts) -> Result<Admin, ApiError> {
        let headers = &headers;
        let Some(auth) = st.auth.clone() else {
            return Err(ApiError::msg(
                ErrorCode::NotFound,
                "access control is not enabled on this registry",
            ));
        };
        let addr = conn.and_then(|c| c.client_ip());
        let base = crate::base_url(st, &uri, headers, conn.as_ref());
        let who = authenticate(&auth, headers, addr, &base).await?;
        if who == Principal::Anonymous {
            return Err(ApiError::msg(
                ErrorCode::Unauthorized,
                "authentication required",
            ));
        }
        Ok(Admin { auth, who, addr })
    }

    fn require_admin(&self) -> Result<(), ApiError> {
        if self.who.is_admin() && !matches!(self.who, Principal::Htpasswd { .. }) {
            Ok(())
        } else {
            Err(ApiError::msg(
                ErrorCode::Denied,
                "this needs a system administrator",
            ))
        }
    }

    /// The caller is `user` (not through a token) or an administrator.
    fn require_self_or_admin(&self, user: &str) -> Result<(), ApiError> {
        match &self.who {
            Principal::User { name, .. } if name == user => Ok(()),
            _ => self.require_admin(),
        }
    }

    async fn require_project_admin(&self, project: &str) -> Result<(), ApiError> {
        if self.require_admin().is_ok() {
            return Ok(());
        }
        if let Principal::User { name, .. } = &self.who {
            let roles = self.auth.store().roles_of(name).await.map_err(store)?;
            if roles
                .iter()
                .any(|(p, r)| p == project && *r == Role::ProjectAdmin)
            {
                return Ok(());
            }
        }
        Err(ApiError::msg(
            ErrorCode::Denied,
            "this needs a project admin",
        ))
    }

    async fn record(&self, action: &str, resource: &str) {
        self.auth.invalidate();
        self.auth
            .audit(&self.who.actor(), self.addr, action, resource, "ok")
            .await;
    }
}

fn store(e: MetaError) -> ApiError {
    match e {
        MetaError::AlreadyExists(what) => {
            ApiError::msg(ErrorCode::Conflict, format!("{what} already exists"))
        }
        MetaError::NotFound(what) => {
            ApiError::msg(ErrorCode::NotFound, format!("{what} does not exist"))
        }
        e => ApiError::msg(ErrorCode::Unknown, e.to_string()),
    }
}

/// The `dry_run` query parameter (absent: false).
fn dry_run_param(q: &crate::Query) -> Result<bool, ApiError> {
    match q.get("dry_run") {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") => Ok(true),
        Some(v) => Err(invalid(format!("dry_run must be true or false, not {v:?}"))),
    }
}

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::msg(ErrorCode::InvalidRequest, msg)
}

fn not_found(what: &str) -> ApiError {
    ApiError::msg(ErrorCode::NotFound, format!("{what} does not exist"))
}

async fn body<T: serde::de::DeserializeOwned>(req: Request) -> Result<T, ApiError> {
    let bytes: Bytes = axum::body::to_bytes(req.into_body(), MAX_BODY)
        .await
        .map_err(|_| invalid("request body too large"))?;
    serde_json::from_slice(&bytes).map_err(|e| invalid(format!("invalid JSON body: {e}")))
}

fn ok(status: StatusCode, v: Value) -> Result<Response, ApiError> {
    Ok(json_response(status, &v, None))
}

fn user_json(u: &User) -> Value {
    json!({"name": u.name, "admin": u.admin, "created_at": wharf_auth::rfc3339(u.created_at_ms / 1000)})
}

fn project_json(p: &Project) -> Value {
    json!({"name": p.name, "public": p.public, "created_at": wharf_auth::rfc3339(p.created_at_ms / 1000)})
}

fn credential_json(c: &Credential) -> Value {
    let name = match c.kind {
        CredentialKind::Robot => format!("{ROBOT_USER_PREFIX}{}", c.name),
        CredentialKind::Token => c.name.clone(),
    };
    json!({
        "name": name,
        "permissions": c.permissions,
        "expires_at": c.expires_at_ms.map(|t| wharf_auth::rfc3339(t / 1000)),
        "created_at": wharf_auth::rfc3339(c.created_at_ms / 1000),
        "created_by": c.created_by,
    })
}

async fn hash_password(pw: &str) -> Result<String, ApiError> {
    if pw.len() < 8 || pw.len() > password::MAX_PASSWORD_LEN {
        return Err(invalid(format!(
            "passwords have 8 to {} characters",
            password::MAX_PASSWORD_LEN
        )));
    }
    let pw = pw.to_owned();
    tokio::task::spawn_blocking(move || password::hash(&pw))
        .await
        .map_err(|e| ApiError::msg(ErrorCode::Unknown, e.to_string()))?
        .map_err(|e| ApiError::msg(ErrorCode::Unknown, e))
}

// ---- users -------------------------------------------------------------------

async fn list_users(State(st): State<Arc<AppState>>, req: Request) -> Result<Response, ApiError> {
    let a = Admin::from(&st, facts(&req)).await?;
    a.require_admin()?;
    let users = a.auth.store().users().await.map_err(store)?;
    ok(
        StatusCode::OK,
        Value::Array(users.iter().map(user_json).collect()),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    name: String,
    password: String,
    #[serde(default)]
    admin: bool,
}

async fn create_user(State(st): State<Arc<AppState>>, req: Request) -> Result<Response, ApiError> {
    let a = Admin::from(&st, facts(&req)).await?;
    a.require_admin()?;
    let n: NewUser = body(req).await?;
    if !wharf_auth::valid_user_name(&n.name) {
        return Err(invalid(
            "user names have 1 to 64 of A-Z a-z 0-9 . _ - and start with a letter or digit",
        ));
    }
    let now = now_ms();
    let u = User {
        name: n.name,
        password_hash: hash_password(&n.password).await?,
        admin: n.admin,
        created_at_ms: now,
        password_changed_at_ms: now,
    };
    a.auth.store().create_user(&u).await.map_err(store)?;
    a.record("user.create", &u.name).await;
    ok(StatusCode::CREATED, user_json(&u))
}

async fn get_user(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let a = Admin::from(&st, facts(&req)).await?;
    a.require_self_or_admin(&name)?;
    let u = a
        .auth
        .store()
        .user(&name)
        .await
        .map_err(store)?
        .ok_or_else(|| not_found("user"))?;
    let mut v = user_json(&u);
    let roles = a.auth.store().roles_of(&name).await.map_err(store)?;
    v["projects"] = roles
        .into_iter()
        .map(|(p, r)| json!({"project": p, "role": r.as_str()}))
        .collect();
    ok(StatusCode::OK, v)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserUpdate {
    admin: Option<bool>,
}

async fn update_user(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let a = Admin::from(&st, facts(&req)).await?;
    a.require_admin()?;
    let up: UserUpdate = body(req).await?;
    if let Some(admin) = up.admin {
        if !admin && a.who.subject() == name {
            return Err(invalid("administrators cannot demote themselves"));
        }
        if !a
            .auth
            .store()
            .set_admin(&name, admin)
            .await
            .map_err(store)?
        {
            return Err(not_found("user"));
        }
        a.record(
            if admin {
                "user.grant_admin"
            } else {
                "user.revoke_admin"
            },
            &name,
        )
        .await;
    }
    let u = a
        .auth
        .store()
        .user(&name)
        .await
        .map_err(store)?
        .ok_or_else(|| not_found("user"))?;
    ok(StatusCode::OK, user_json(&u))
}

async fn delete_user(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let a = Admin::from(&st, facts(&req)).await?;
    a.require_admin()?;
    if a.who.subject() == name {
        return Err(invalid("administrators cannot delete themselves"));
    }
    if !a.auth.store().delete_user(&name).await.map_err(store)? {
        return Err(not_found("user"));
    }
    a.record("user.delete", &name).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPassword {
    password: String,
}

async fn set_password(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let a = Admin::from(&st, facts(&req)).await?;
    a.require_self_or_admin(&name)?;
    let p: NewPassword = body(req).await?;
    let hash = hash_password(&p.password).await?;
    if !a
        .auth
        .store()
        .set_password(&name, &hash, now_ms())
        .await
        .map_err(store)?
    {
        return Err(not_found("user"));
    }
    a.record("user.password", &name).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---- robots and tokens -----------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewCredential {
    name: String,
    permissions: Vec<Permission>,
    /// Days until it expires; absent or 0: never.
    #[serde(default)]
    expires_in_days: Option<u32>,
}

fn check_permissions(perms: &mut [Permission]) -> Result<(), ApiError> {
    if perms.is_empty() || perms.len() > 100 {
        return Err(invalid("give 1 to 100 permissions"));
    }
    for p in perms.iter_mut() {
        if p.project != "*" && !wharf_oci::is_name_component(&p.project) {
            return Err(invalid(format!("invalid project {:?}", p.project)));
        }
        let acts = wharf_auth::Actions::parse_list(&p.actions.join(","));
        if acts.is_empty()
            || p.actions
                .iter()
                .any(|x| !matches!(x.as_str(), "pull" | "push" | "delete" | "*"))
        {
            return Err(invalid("actions are pull, push, delete or *"));
        }
        // Pushing needs pulling (clients check what exists first).
        let acts = if acts.contains(wharf_auth::Actions::PUSH) {
            acts.union(wharf_auth::Actions::PULL)
        } else {
            acts
        };
        p.actions = acts.names().into_iter().map(String::from).collect();
    }
    Ok(())
}

async fn new_credential(
    a: &Admin,
    kind: CredentialKind,
    owner: &str,
    mut n: NewCredential,
) -> Result<Response, ApiError> {
    if !wharf_auth::valid_user_name(&n.name) {
        return Err(invalid(
            "names have 1 to 64 of A-Z a-z 0-9 . _ - and start with a letter or digit",
        ));
    }
    check_permissions(&mut n.permissions)?;
    let prefix = match kind {
        CredentialKind::Robot => ROBOT_SECRET_PREFIX,
        CredentialKind::Token => PAT_PREFIX,
    };
    let secret = password::random_secret(prefix);
    let now = now_ms();
    let c = Credential {
        kind,
        owner: owner.to_owned(),
        name: n.name,
        secret_hash: password::secret_hash(&secret),
        permissions: n.permissions,
        expires_at_ms: n
            .expires_in_days
            .filter(|d| *d > 0)
            .map(|d| now + i64::from(d) * 86_400_000),
        created_at_ms: now,
        created_by: a.who.actor(),
    };
    a.auth.store().create_credential(&c).await.map_err(store)?;
    let mut v = credential_json(&c);
    // The only time the secret is shown.
    v["secret"] = secret.into();
    let (action, resource) = match kind {
        CredentialKind::Robot => ("robot.create", format!("{ROBOT_USER_PREFIX}{}", c.name)),
        CredentialKind::Token => ("token.create", format!("{owner}/{}", c.name)),
    };
    a.record(action, &resource).await;
    ok(StatusCode::CREATED, v)
}

async fn list_robots(State(st): State<Arc<AppState>>, req: Request) -> Result<Response, ApiError> {
    let a = Admin::from(&st, facts(&req)).await?;
    a.require_admin()?;
    let v = a
        .auth
        .store()
        .credentials(CredentialKind::Robot, None)
        .await
        .map_err(store)?;
    ok(StatusCode::OK, v.iter().map(credential_json).collect())
}

async fn create_robot(State(st): State<Arc<AppState>>, req: Request) -> Result<Response, ApiError> {
    let a = Admin::from(&st, facts(&req)).await?;
    a.require_admin()?;
    let mut n: NewCredential = body(req).await?;
    if let Some(stripped) = n.name.strip_prefix(ROBOT_USER_PREFIX) {
        n.name = stripped.to_owned();
    }
    new_credential(&a, CredentialKind::Robot, "", n).await
}

async fn delete_robot(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let a = Admin::from(&st, facts(&req)).await?;
    a.require_admin()?;
    let name = name
        .strip_prefix(ROBOT_USER_PREFIX)
        .unwrap_or(&name)
        .to_owned();
    if !a
        .auth
        .store()
        .delete_credential(CredentialKind::Robot, "", &name)
        .await
        .map_err(store)?
    {
        return Err(not_found("robot"));
    }
    a.record("robot.delete", &format!("{ROBOT_USER_PREFIX}{name}"))
        .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_tokens(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let a = Admin::from(&st, facts(&req)).await?;
    a.require_self_or_admin(&name)?;
    let v = a
        .auth
        .store()
        .credentials(CredentialKind::Token, Some(&name))
        .await
        .map_err(store)?;
    ok(StatusCode::OK, v.iter().map(credential_json).collect())
}

async fn create_token(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let a = Admin::from(&st, facts(&req)).await?;
    a.require_self_or_admin(&name)?;
    let n: NewCredential = body(req).await?;
    new_credential(&a, CredentialKind::Token, &name, n).await
}

async fn delete_token(
    State(st): State<Arc<AppState>>,
    Path((name, token)): Path<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    let a = Admin::from(&st, facts(&req)).await?;
    a.require_self_or_admin(&name)?;
    if !a
        .auth
        .store()
        .delete_credential(CredentialKind::Token, &name, &token)
        .await
        .map_err(store)?
    {
        return Err(not_found("token"));
    }
    a.record("token.delete", &format!("{name}/{token}")).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---- projects ----------------------------------------------------------------

async fn list_projects(
    State(st): State<Arc<AppState>>,
    req: Request,
) -> Result<Response, ApiError> {
    let a = Admin::from(&st, facts(&req)).await?;
    let vis = a.auth.visibility(&a.who).await.map_err(auth_err)?;
    let projects = a.auth.store().projects().await.map_err(store)?;
    let shown: Vec<Value> = projects
        .iter()
        .filter(|p| vis.shows(&format!("{}/x", p.name)))
        .map(project_json)
        .collect();
    ok(StatusCode::OK, Value::Array(shown))
}

fn auth_err(e: AuthError) -> ApiError {
    ApiError::msg(ErrorCode::Unknown, e.to_string())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewProject {
    name: String,
    #[serde(default)]
    public: bool,
}

async fn create_project(
    State(st): State<Arc<AppState>>,
    req: Request,
) -> Result<Response, ApiError> {
    let a = Admin::from(&st, facts(&req)).await?;
    a.require_admin()?;
    let n: NewProject = body(req).await?;
    if !wharf_oci::is_name_component(&n.name) {
        return Err(invalid(
            "a project name is one repository-name component: lowercase letters, digits and . _ - separators",
        ));
    }
    let p = Project {
        name: n.name,
        public: n.public,
        created_at_ms: now_ms(),
    };
    a.auth.store().create_project(&p).await.map_err(store)?;
    a.record("project.create", &p.name).await;
    ok(StatusCode::CREATED, project_json(&p))
}

async fn get_project(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let a = Admin::from(&st, facts(&req)).await?;
    let vis = a.auth.visibility(&a.who).await.map_err(auth_err)?;
    let p = a.auth.store().project(&name).await.map_err(store)?;
    match p {
        Some(p) if vis.shows(&format!("{}/x", p.name)) => ok(StatusCode::OK, project_json(&p)),
        _ => Err(not_found("project")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectUpdate {
    public: Option<bool>,
}

async fn update_project(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let a = Admin::from(&st, facts(&req)).await?;
    a.require_project_admin(&name).await?;
    let up: ProjectUpdate = body(req).await?;
    if let Some(public) = up.public {
        if !a
            .auth
            .store()
            .set_project_public(&name, public)
            .await
            .map_err(store)?
        {
            return Err(not_found("project"));
        }
        a.record(
            if public {
                "project.public"
            } else {
                "project.private"
            },
            &name,
        )
        .await;
    }
    let p = a
        .auth
        .store()
        .project(&name)
        .await
        .map_err(store)?
        .ok_or_else(|| not_found("project"))?;
    ok(StatusCode::OK, project_json(&p))
}

async fn delete_project(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let a = Admin::from(&st, facts(&req)).await?;
    a.require_admin()?;
    // Repositories stay (deleting them is the registry's business); the
    // project record, its visibility and members go.
    if !a.auth.store().delete_project(&name).await.map_err(store)? {
        return Err(not_found("project"));
    }
    st.registry.set_project_policy(&name, None).await?;
    a.record("project.delete", &name).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_members(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let a = Admin::from(&st, facts(&req)).await?;
    a.require_project_admin(&name).await?;
    existing_project(&a, &name).await?;
    let m = a.auth.store().members(&name).await.map_err(store)?;
    ok(
        StatusCode::OK,
        m.iter()
            .map(|m| json!({"user": m.user, "role": m.role.as_str()}))
            .collect(),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberRole {
    role: String,
}

async fn set_member(
    State(st): State<Arc<AppState>>,
    Path((name, user)): Path<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    let a = Admin::from(&st, facts(&req)).await?;
    a.require_project_admin(&name).await?;
    let r: MemberRole = body(req).await?;
    let role: Role = r.role.parse().map_err(invalid)?;
    a.auth
        .store()
        .set_member(&name, &user, role)
        .await
        .map_err(store)?;
    a.record("member.set", &format!("{name}/{user}={role}"))
        .await;
    ok(StatusCode::OK, json!({"user": user, "role": role.as_str()}))
}

async fn remove_member(
    State(st): State<Arc<AppState>>,
    Path((name, user)): Path<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    let a = Admin::from(&st, facts(&req)).await?;
    a.require_project_admin(&name).await?;
    if !a
        .auth
        .store()
        .remove_member(&name, &user)
        .await
        .map_err(store)?
    {
        return Err(not_found("member"));
    }
    a.record("member.remove", &format!("{name}/{user}")).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---- audit -------------------------------------------------------------------

async fn audit(State(st): State<Arc<AppState>>, req: Request) -> Result<Response, ApiError> {
    let a = Admin::from(&st, facts(&req)).await?;
    // htpasswd users may do everything (distribution's rule), so also read this.
    if !matches!(a.who, Principal::Htpasswd { .. }) {
        a.require_admin()?;
    }
    let q = crate::Query::parse(req.uri().query());
    let num = |k: &str| -> Result<Option<i64>, ApiError> {
        q.get(k)
            .filter(|v| !v.is_empty())
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| invalid(format!("{k} must be a number")))
            })
            .transpose()
    };
    let s = |k: &str| q.get(k).filter(|v| !v.is_empty()).map(str::to_owned);
    let limit = num("limit")?.unwrap_or(100).clamp(1, MAX_AUDIT as i64) as usize;
    let f = AuditFilter {
        actor: s("actor"),
        action: s("action"),
        resource_prefix: s("resource"),
        outcome: s("outcome"),
        since_ms: num("since")?.map(|t| t * 1000),
        until_ms: num("until")?.map(|t| t * 1000),
        before_id: num("before")?,
        limit,
    };
    let rows = a.auth.store().audit(&f).await.map_err(store)?;
    ok(
        StatusCode::OK,
        rows.into_iter()
            .map(|(id, e)| {
                json!({
                    "id": id, "at": wharf_auth::rfc3339(e.at_ms / 1000), "actor": e.actor,
                    "addr": e.addr, "action": e.action, "resource": e.resource,
                    "outcome": e.outcome, "detail": e.detail,
                })
            })
            .collect(),
    )
}

// ---- login throttles ----------------------------------------------------------

/// `GET /api/v1/throttles?limit=N`: accounts and addresses with failed
/// logins, newest first (system admins).
async fn list_throttles(
    State(st): State<Arc<AppState>>,
    req: Request,
) -> Result<Response, ApiError> {
    let a = Admin::from(&st, facts(&req)).await?;
    a.require_admin()?;
    let q = crate::Query::parse(req.uri().query());
    let limit = match q.get("limit") {
        None | Some("") => 100,
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| invalid("limit must be a whole number"))?
            .clamp(1, 10_000),
    };
    let now = wharf_auth::now_ms();
    let list: Vec<wharf_auth::throttle::ThrottleEntry> = a
        .auth
        .throttles(limit)
        .await
        .map_err(internal_auth)?
        .iter()
        .map(|t| wharf_auth::throttle::ThrottleEntry::new(t, now))
        .collect();
    ok(
        StatusCode::OK,
        serde_json::to_value(list).map_err(|e| ApiError::msg(ErrorCode::Unknown, e.to_string()))?,
    )
}

/// `DELETE /api/v1/throttles?account=NAME&address=ADDR`: forgets failed
/// logins of an account, an address, or both (`account=` empty: names that
/// name no account); of everyone with neither (system admins).
async fn clear_throttles(
    State(st): State<Arc<AppState>>,
    req: Request,
) -> Result<Response, ApiError> {
    let a = Admin::from(&st, facts(&req)).await?;
    a.require_admin()?;
    let q = crate::Query::parse(req.uri().query());
    let account = q.get("account");
    let address =
        match q.get("address").filter(|v| !v.is_empty()) {
            None => None,
            Some(v) => Some(wharf_auth::throttle::parse_throttle_addr(v).ok_or_else(|| {
                invalid("address must be an IP address (or an IPv6 /64 as listed)")
            })?),
        };
    let cleared = a
        .auth
        .clear_throttles(account, address.as_deref())
        .await
        .map_err(internal_auth)?;
    a.auth
        .audit(
            a.who.actor(),
            a.addr,
            "throttle.clear",
            wharf_auth::throttle::clear_resource(account, address.as_deref()),
            "ok",
        )
        .await;
    ok(
        StatusCode::OK,
        serde_json::to_value(wharf_auth::throttle::ThrottlesCleared { cleared })
            .map_err(|e| ApiError::msg(ErrorCode::Unknown, e.to_string()))?,
    )
}

fn internal_auth(e: wharf_auth::AuthError) -> ApiError {
    ApiError::msg(ErrorCode::Unknown, e.to_string())
}

// ---- garbage collection ------------------------------------------------------

/// `GET /api/v1/gc`: whether a collection is running, on any process or
/// node on the metadata store, and who runs it.
async fn gc_status(State(st): State<Arc<AppState>>, req: Request) -> Result<Response, ApiError> {
    let a = Admin::from(&st, facts(&req)).await?;
    a.require_admin()?;
    let v = match st.registry.gc_running().await.map_err(ApiError::from)? {
        None => json!({"running": false}),
        Some(l) => json!({
            "running": true,
            "holder": l.owner,
            "since": wharf_auth::rfc3339(l.acquired_at_ms / 1000),
            "lease_expires": wharf_auth::rfc3339(l.expires_at_ms / 1000),
        }),
    };
    ok(StatusCode::OK, v)
}

/// `POST /api/v1/gc?dry_run=true&grace_seconds=N&untagged_age_seconds=M`:
/// one collection now.
async fn run_gc(State(st): State<Arc<AppState>>, req: Request) -> Result<Response, ApiError> {
    let a = Admin::from(&st, facts(&req)).await?;
    a.require_admin()?;
    let q = crate::Query::parse(req.uri().query());
    let dry_run = dry_run_param(&q)?;
    let untagged_age = q
        .get("untagged_age_seconds")
        .map(|v| {
            v.parse::<u64>()
                .map(std::time::Duration::from_secs)
                .map_err(|_| invalid("untagged_age_seconds must be a whole number"))
        })
        .transpose()?
        .or(st.config.gc_untagged_age);
    let grace = match q.get("grace_seconds") {
        None => st.config.gc_grace,
        Some(v) => std::time::Duration::from_secs(
            v.parse::<u64>()
                .map_err(|_| invalid("grace_seconds must be a whole number"))?,
        ),
    };
    let events = crate::GcAudit {
        log: a.auth.audit_log().clone(),
        actor: a.who.actor(),
        addr: a.addr,
    };
    let r = st
        .registry
        .gc(
            wharf_core::GcOptions {
                grace,
                dry_run,
                untagged_age,
            },
            &events,
        )
        .await
        .map_err(|e| match e {
            wharf_core::CoreError::Busy(m) => ApiError::msg(ErrorCode::Conflict, m),
            e => ApiError::from(e),
        })?;
    if !dry_run {
        a.auth
            .audit(
                a.who.actor(),
                a.addr,
                "gc",
                format!("{} blobs, {} bytes", r.blobs, r.bytes),
                "ok",
            )
            .await;
    }
    ok(
        StatusCode::OK,
        serde_json::to_value(&r).map_err(|e| ApiError::msg(ErrorCode::Unknown, e.to_string()))?,
    )
}

// ---- repositories --------------------------------------------------------------

/// `DELETE /api/v1/repositories/<name>`: the repository with its manifests,
/// tags and upload sessions; blobs nothing else uses go with the next
/// garbage collection. For whoever may delete in the repository's project.
async fn delete_repository(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let a = Admin::from(&st, facts(&req)).await?;
    let repo: wharf_oci::RepoName = name
        .parse()
        .map_err(|_| ApiError::new(ErrorCode::NameInvalid))?;
    let may = a
        .auth
        .grant(
            &a.who,
            &wharf_auth::Resource::Repository(repo.clone()),
            wharf_auth::Actions::DELETE,
        )
        .await
        .map_err(auth_err)?;
    if !may.contains(wharf_auth::Actions::DELETE) {
        return Err(ApiError::msg(
            ErrorCode::Denied,
            "deleting this repository is not allowed",
        ));
    }
    st.registry.delete_repository(&repo).await?;
    a.auth
        .audit(
            a.who.actor(),
            a.addr,
            "repository.delete",
            repo.to_string(),
            "ok",
        )
        .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /api/v1/projects/<name>/usage`: storage used, a blob shared inside
/// the project counted once, and per repository.
async fn project_usage(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let a = Admin::from(&st, facts(&req)).await?;
    let vis = a.auth.visibility(&a.who).await.map_err(auth_err)?;
    if !vis.shows(&format!("{name}/x")) || !wharf_oci::is_name_component(&name) {
        return Err(not_found("project"));
    }
    let (bytes, repos) = st.registry.project_usage(&name).await?;
    let quota = st
        .registry
        .project_policy(&name)
        .await?
        .and_then(|p| p.quota_bytes);
    ok(
        StatusCode::OK,
        json!({
            "project": name,
            "bytes": bytes,
            "quota_bytes": quota,
            "repositories": repos.iter().map(|(n, b)| json!({"name": n, "bytes": b})).collect::<Vec<_>>(),
        }),
    )
}

// ---- policy ------------------------------------------------------------------

/// `NotFound` unless the project has a record.
async fn existing_project(a: &Admin, name: &str) -> Result<(), ApiError> {
    match a.auth.store().project(name).await.map_err(store)? {
        Some(_) => Ok(()),
        None => Err(not_found("project")),
    }
}

/// `GET /api/v1/projects/<name>/policy`: quota, immutability and retention
/// rules. For the project's admins.
async fn get_policy(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let a = Admin::from(&st, facts(&req)).await?;
    a.require_project_admin(&name).await?;
    existing_project(&a, &name).await?;
    let p = st.registry.project_policy(&name).await?.unwrap_or_default();
    ok(StatusCode::OK, policy_json(&p)?)
}

fn policy_json(p: &wharf_core::ProjectPolicy) -> Result<Value, ApiError> {
    let mut v =
        serde_json::to_value(p).map_err(|e| ApiError::msg(ErrorCode::Unknown, e.to_string()))?;
    if let Some(o) = v.as_object_mut() {
        o.entry("quota_bytes").or_insert(Value::Null);
    }
    Ok(v)
}

/// `PUT /api/v1/projects/<name>/policy`: replaces the policy. Project admins
/// set rules; only system administrators change the quota.
async fn put_policy(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let (facts, body_req) = (facts(&req), req);
    let a = Admin::from(&st, facts).await?;
    a.require_project_admin(&name).await?;
    existing_project(&a, &name).await?;
    let new: wharf_core::ProjectPolicy = body(body_req).await?;
    let old = st.registry.project_policy(&name).await?.unwrap_or_default();
    if new.quota_bytes != old.quota_bytes {
        a.require_admin().map_err(|_| {
            ApiError::msg(ErrorCode::Denied, "only a system administrator sets quotas")
        })?;
    }
    let stored = (new != wharf_core::ProjectPolicy::default()).then_some(&new);
    st.registry.set_project_policy(&name, stored).await?;
    a.record("project.policy", &name).await;
    ok(StatusCode::OK, policy_json(&new)?)
}

/// `POST /api/v1/projects/<name>/retention?dry_run=true`: applies the
/// project's retention rules now, or lists what they would remove.
async fn run_retention(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let a = Admin::from(&st, facts(&req)).await?;
    a.require_project_admin(&name).await?;
    existing_project(&a, &name).await?;
    let q = crate::Query::parse(req.uri().query());
    let dry_run = dry_run_param(&q)?;
    let r = st.registry.apply_retention(&name, dry_run).await?;
    if !dry_run {
        for t in &r.tags {
            a.auth
                .audit(
                    &a.who.actor(),
                    a.addr,
                    "retention.delete",
                    &format!("{}:{}", t.repo, t.tag),
                    "ok",
                )
                .await;
        }
    }
    ok(StatusCode::OK, retention_json(&r))
}

pub(crate) fn retention_json(r: &wharf_core::RetentionReport) -> Value {
    json!({
        "dry_run": r.dry_run,
        "manifests": r.manifests,
        "tags": r.tags.iter().map(|t| json!({
            "repository": t.repo.as_str(),
            "tag": t.tag,
            "digest": t.digest.as_str(),
            "pushed_at": wharf_auth::rfc3339(t.pushed_at_ms / 1000),
            "pulled_at": t.pulled_at_ms.map(|p| wharf_auth::rfc3339(p / 1000)),
        })).collect::<Vec<_>>(),
    })
}
