//! Authentication and authorisation.
//!
//! - [`Auth::basic`] turns a user name and password (htpasswd, a local user,
//!   a robot account, a personal access token) into a [`Principal`].
//! - [`Auth::grant`] decides what a principal may do to a resource, from
//!   projects, roles and credentials' permissions.
//! - [`Auth::issue`] and [`Auth::verify_bearer`] are the two halves of Docker's
//!   token protocol: signed, short-lived JWTs whose `access` claim holds only
//!   what was granted.
//!
//! The HTTP side (challenges, the token endpoint) lives in `wharf-api`.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The records access control is made of, re-exported for the API layer.
pub use wharf_meta::{
    AuditFilter, AuthStore, Credential, CredentialKind, MetaError, Permission, Project, Role, User,
};
use wharf_oci::RepoName;

pub mod audit;
pub mod htpasswd;
pub mod password;
pub mod scope;
pub mod throttle;
pub mod token;

pub use audit::{AuditLog, now_ms};
pub use scope::{AccessEntry, Action, Actions, Resource, Scope, project_of};
use throttle::LoginThrottle;
use token::{Audience, Claims, Signer, TokenError, Verifier};
pub use wharf_meta::{Throttle, ThrottleKey, ThrottlePolicy};

/// Prefix of personal access tokens, so they are recognisable in a password field.
pub const PAT_PREFIX: &str = "wharf_pat_";
/// Prefix of robot account secrets.
pub const ROBOT_SECRET_PREFIX: &str = "wharf_robot_";
/// Robot accounts log in as `robot$<name>` (as in Harbor).
pub const ROBOT_USER_PREFIX: &str = "robot$";

/// Who is making a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Anonymous,
    /// A local user.
    User {
        name: String,
        admin: bool,
    },
    /// A user of the htpasswd file: like distribution, every action on everything.
    Htpasswd {
        name: String,
    },
    /// A robot account, limited to its permissions.
    Robot {
        name: String,
        permissions: Vec<Permission>,
    },
    /// A user's personal access token: the user's rights, cut down to the
    /// token's permissions.
    UserToken {
        user: String,
        admin: bool,
        token: String,
        permissions: Vec<Permission>,
    },
    /// The subject of an external issuer's token; its access is in the token.
    External {
        sub: String,
    },
}

impl Principal {
    /// The name recorded in audit records and tokens' `sub`.
    pub fn subject(&self) -> String {
        match self {
            Principal::Anonymous => String::new(),
            Principal::User { name, .. } | Principal::Htpasswd { name } => name.clone(),
            Principal::Robot { name, .. } => format!("{ROBOT_USER_PREFIX}{name}"),
            Principal::UserToken { user, .. } => user.clone(),
            Principal::External { sub } => sub.clone(),
        }
    }

    pub fn actor(&self) -> String {
        match self {
            Principal::Anonymous => "anonymous".into(),
            Principal::UserToken { user, token, .. } => format!("{user} (token {token})"),
            p => p.subject(),
        }
    }

    pub fn is_admin(&self) -> bool {
        match self {
            Principal::User { admin, .. } => *admin,
            Principal::Htpasswd { .. } => true,
            _ => false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("authentication required")]
    Unauthorized,
    #[error("invalid credentials")]
    BadCredentials,
    #[error("too many failed logins; retry in {0} s")]
    Throttled(u64),
    #[error("{0}")]
    BadToken(#[from] TokenError),
    #[error("{0}")]
    Store(#[from] MetaError),
    #[error("{0}")]
    Internal(String),
}

/// How clients authenticate.
pub enum Mode {
    /// distribution's `auth.htpasswd`: Basic authentication on every request.
    Htpasswd {
        realm: String,
        file: Arc<htpasswd::Htpasswd>,
    },
    /// Wharf's users, projects and roles, with its own token service.
    Builtin { signer: Box<Signer> },
    /// distribution's `auth.token`: tokens from an external issuer.
    External { realm: String },
}

pub struct Settings {
    /// The `service` clients ask tokens for, and tokens' audience.
    pub service: String,
    /// Tokens' `iss`.
    pub issuer: String,
    pub token_ttl: Duration,
    pub refresh_ttl: Duration,
    /// How long a verified password is remembered (saves an argon2 or bcrypt
    /// run per request). Changes made through Wharf invalidate it at once.
    pub credential_cache_ttl: Duration,
    /// Failed logins per (account, address) before each further one blocks
    /// the pair for a doubling delay (see [`throttle`]).
    pub max_failed_logins: u32,
    /// Failures are forgotten this long after the last one (or its block).
    pub failed_login_window: Duration,
    /// Failed logins with names that name no account, per address.
    pub max_unknown_logins: u32,
    /// The first block, after `max_failed_logins` failures; each further
    /// failure doubles it.
    pub login_delay: Duration,
    /// The longest a pair is blocked for at once.
    pub max_login_delay: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            service: "wharf".into(),
            issuer: "wharf".into(),
            token_ttl: Duration::from_secs(300),
            refresh_ttl: Duration::from_secs(30 * 24 * 3600),
            credential_cache_ttl: Duration::from_secs(60),
            max_failed_logins: 10,
            failed_login_window: Duration::from_secs(300),
            max_unknown_logins: 30,
            login_delay: Duration::from_secs(1),
            max_login_delay: Duration::from_secs(3600),
        }
    }
}

/// An entry of a small bounded cache.
struct Cached<T> {
    value: T,
    until: Instant,
    epoch: u64,
}

const CACHE_MAX: usize = 10_000;

struct BoundedCache<T> {
    map: Mutex<HashMap<Vec<u8>, Cached<T>>>,
}

impl<T: Clone> BoundedCache<T> {
    fn new() -> Self {
        BoundedCache {
            map: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, key: &[u8], epoch: u64) -> Option<T> {
        let g = self.map.lock().ok()?;
        let c = g.get(key)?;
        (c.epoch == epoch && c.until > Instant::now()).then(|| c.value.clone())
    }

    fn put(&self, key: Vec<u8>, value: T, until: Instant, epoch: u64) {
        let Ok(mut g) = self.map.lock() else { return };
        if g.len() >= CACHE_MAX {
            let now = Instant::now();
            g.retain(|_, c| c.until > now && c.epoch == epoch);
            if g.len() >= CACHE_MAX {
                g.clear();
            }
        }
        g.insert(
            key,
            Cached {
                value,
                until,
                epoch,
            },
        );
    }
}

/// A verified bearer token.
#[derive(Debug, Clone)]
pub struct BearerToken {
    pub claims: Arc<Claims>,
}

impl BearerToken {
    /// The actions the token grants on `resource`.
    pub fn granted(&self, resource: &Resource) -> Actions {
        scope::granted(&self.claims.access, resource)
    }
}

/// What the token endpoint returns.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenResponse {
    pub token: String,
    pub access_token: String,
    pub expires_in: u64,
    pub issued_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
}

/// Which projects' repositories a principal may see listed.
#[derive(Debug, Clone)]
pub enum Visibility {
    All,
    Projects(HashSet<String>),
}

impl Visibility {
    pub fn shows(&self, repo: &str) -> bool {
        match self {
            Visibility::All => true,
            Visibility::Projects(p) => {
                let project = repo.split_once('/').map_or("library", |(p, _)| p);
                p.contains(project)
            }
        }
    }
}

fn role_actions(r: Role) -> Actions {
    match r {
        Role::ProjectAdmin | Role::Maintainer => Actions::ALL,
        Role::Developer => Actions::PULL.union(Actions::PUSH),
        Role::Guest | Role::LimitedGuest => Actions::PULL,
    }
}

fn permission_actions(perms: &[Permission], project: &str) -> Actions {
    perms
        .iter()
        .filter(|p| p.project == project || p.project == "*")
        .fold(Actions::NONE, |acc, p| {
            acc.union(Actions::parse_list(&p.actions.join(",")))
        })
}

pub struct Auth {
    store: Arc<dyn AuthStore>,
    mode: Mode,
    settings: Settings,
    verifier: Option<Verifier>,
    throttle: LoginThrottle,
    /// Bumped by every change to users or credentials: cached logins die.
    epoch: AtomicU64,
    logins: BoundedCache<Principal>,
    /// Verified tokens by their signature segment (short to hash), with the
    /// whole token to compare on a hit.
    tokens: BoundedCache<(Arc<str>, Arc<Claims>)>,
    cache_salt: [u8; 32],
    audit: AuditLog,
    /// Password checks running at once: each argon2 run takes 19 MiB and a
    /// core for tens of milliseconds, so a flood of logins queues here
    /// instead of exhausting memory.
    hashing: tokio::sync::Semaphore,
}

impl Auth {
    /// `verify_keys` are the keys bearer tokens are checked with: the
    /// signer's own for `Builtin`, the configured bundle for `External`.
    pub fn new(
        store: Arc<dyn AuthStore>,
        mode: Mode,
        settings: Settings,
        external_keys: Vec<token::VerifyKey>,
        audit: AuditLog,
    ) -> Auth {
        let verifier = match &mode {
            Mode::Builtin { signer } => Some(Verifier::new(
                vec![signer.verify_key()],
                settings.issuer.clone(),
                settings.service.clone(),
            )),
            Mode::External { .. } => Some(Verifier::new(
                external_keys,
                settings.issuer.clone(),
                settings.service.clone(),
            )),
            Mode::Htpasswd { .. } => None,
        };
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let policy = |attempts: u32| ThrottlePolicy {
            attempts: attempts.max(1),
            window_ms: ms(settings.failed_login_window),
            delay_ms: ms(settings.login_delay).max(1),
            max_delay_ms: ms(settings.max_login_delay).max(1000),
        };
        Auth {
            throttle: LoginThrottle::new(
                store.clone(),
                policy(settings.max_failed_logins),
                policy(settings.max_unknown_logins),
            ),
            store,
            mode,
            settings,
            verifier,
            epoch: AtomicU64::new(0),
            logins: BoundedCache::new(),
            tokens: BoundedCache::new(),
            cache_salt: rand::random(),
            audit,
            hashing: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            ),
        }
    }

    pub fn mode(&self) -> &Mode {
        &self.mode
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn store(&self) -> &Arc<dyn AuthStore> {
        &self.store
    }

    pub fn audit_log(&self) -> &AuditLog {
        &self.audit
    }

    /// Forgets remembered logins; call after changing users or credentials.
    pub fn invalidate(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    pub async fn audit(
        &self,
        actor: impl Into<String>,
        addr: Option<IpAddr>,
        action: &str,
        resource: impl Into<String>,
        outcome: &str,
    ) {
        self.audit
            .record_now(actor, addr, action, resource, outcome)
            .await;
    }

    fn login_key(&self, user: &str, password: &str) -> Vec<u8> {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(self.cache_salt);
        h.update(user.as_bytes());
        h.update([0]);
        h.update(password.as_bytes());
        h.finalize().to_vec()
    }

    /// Checks a user name and password. Unknown names cost what wrong
    /// passwords cost. Failures count against (account, address), or the
    /// address's unknown names (see [`throttle`]); a login remembered from
    /// a recent success is not throttled.
    pub async fn basic(
        &self,
        user: &str,
        password: &str,
        addr: Option<IpAddr>,
    ) -> Result<Principal, AuthError> {
        if let Mode::Htpasswd { file, .. } = &self.mode
            && file.refresh()
        {
            self.invalidate();
        }
        let key = self.login_key(user, password);
        let epoch = self.epoch.load(Ordering::SeqCst);
        if let Some(p) = self.logins.get(&key, epoch) {
            return Ok(p);
        }
        let now = now_ms();
        let throttle_key = match addr {
            Some(a) => Some(ThrottleKey {
                account: self.account_exists(user).await?.then(|| user.to_owned()),
                addr: throttle::throttle_addr(a),
            }),
            None => None,
        };
        let had_failures = match &throttle_key {
            Some(k) => self
                .throttle
                .check(k, now)
                .await?
                .map_err(AuthError::Throttled)?,
            None => false,
        };
        let found = self.check_password(user, password).await?;
        match found {
            Some(p) => {
                if let Some(k) = throttle_key.as_ref().filter(|_| had_failures)
                    && let Err(e) = self.throttle.success(k).await
                {
                    tracing::warn!(error = %e, "clearing failed logins after a success failed");
                }
                self.logins.put(
                    key,
                    p.clone(),
                    Instant::now() + self.settings.credential_cache_ttl,
                    epoch,
                );
                self.audit(&p.actor(), addr, "login", "", "ok").await;
                Ok(p)
            }
            None => {
                if let Some(k) = &throttle_key {
                    self.throttle.failure(k, now).await?;
                }
                metrics::counter!("wharf_login_failures_total").increment(1);
                self.audit(user, addr, "login", "", "failed").await;
                Err(AuthError::BadCredentials)
            }
        }
    }

    /// Whether `user` names an account that could log in: a user (also for
    /// personal access tokens), a robot, or an htpasswd entry.
    async fn account_exists(&self, user: &str) -> Result<bool, AuthError> {
        Ok(match &self.mode {
            Mode::Htpasswd { file, .. } => file.contains(user),
            Mode::External { .. } => false,
            Mode::Builtin { .. } => match user.strip_prefix(ROBOT_USER_PREFIX) {
                Some(robot) => self
                    .store
                    .credentials(CredentialKind::Robot, None)
                    .await?
                    .iter()
                    .any(|c| c.name == robot),
                None => self.store.user(user).await?.is_some(),
            },
        })
    }

    /// Accounts and addresses with failed logins, newest first.
    pub async fn throttles(&self, limit: usize) -> Result<Vec<Throttle>, AuthError> {
        Ok(self.throttle.list(now_ms(), limit).await?)
    }

    /// Forgets failed logins of an account (`Some("")`: of unknown names),
    /// an address (as [`throttle::parse_throttle_addr`] reads it), or both;
    /// of everyone with neither. Returns how many entries went.
    pub async fn clear_throttles(
        &self,
        account: Option<&str>,
        addr: Option<&str>,
    ) -> Result<u64, AuthError> {
        Ok(self.throttle.clear(account, addr).await?)
    }

    async fn check_password(
        &self,
        user: &str,
        password: &str,
    ) -> Result<Option<Principal>, AuthError> {
        let (user, password) = (user.to_owned(), password.to_owned());
        match &self.mode {
            Mode::Htpasswd { file, .. } => {
                let _permit = self.hashing.acquire().await;
                // bcrypt takes milliseconds: keep it off the async workers.
                let (file, name) = (file.clone(), user.clone());
                let ok = blocking(move || file.verify(&name, &password)).await?;
                Ok(ok.then_some(Principal::Htpasswd { name: user }))
            }
            Mode::External { .. } => Ok(None),
            Mode::Builtin { .. } => {
                if let Some(robot) = user.strip_prefix(ROBOT_USER_PREFIX) {
                    let c = self
                        .store
                        .credential_by_secret_hash(&password::secret_hash(&password))
                        .await?;
                    return Ok(c
                        .filter(|c| {
                            c.kind == CredentialKind::Robot
                                && c.name == robot
                                && !expired(c.expires_at_ms)
                        })
                        .map(|c| Principal::Robot {
                            name: c.name,
                            permissions: c.permissions,
                        }));
                }
                if password.starts_with(PAT_PREFIX) {
                    let c = self
                        .store
                        .credential_by_secret_hash(&password::secret_hash(&password))
                        .await?;
                    let Some(c) = c.filter(|c| {
                        c.kind == CredentialKind::Token
                            && c.owner == user
                            && !expired(c.expires_at_ms)
                    }) else {
                        return Ok(None);
                    };
                    let Some(u) = self.store.user(&user).await? else {
                        return Ok(None);
                    };
                    return Ok(Some(Principal::UserToken {
                        user: u.name,
                        admin: u.admin,
                        token: c.name,
                        permissions: c.permissions,
                    }));
                }
                let record = self.store.user(&user).await?;
                let _permit = self.hashing.acquire().await;
                let hash = record.as_ref().map(|u| u.password_hash.clone());
                let ok = blocking(move || match hash {
                    Some(h) => password::verify(&h, &password),
                    None => {
                        password::verify_dummy(&password);
                        false
                    }
                })
                .await?;
                Ok(match (ok, record) {
                    (true, Some(u)) => Some(Principal::User {
                        name: u.name,
                        admin: u.admin,
                    }),
                    _ => None,
                })
            }
        }
    }

    /// What `p` may do to `resource`, within `wanted`.
    pub async fn grant(
        &self,
        p: &Principal,
        resource: &Resource,
        wanted: Actions,
    ) -> Result<Actions, AuthError> {
        let repo = match resource {
            // Everyone may ask for the catalog; it shows only what they may see.
            Resource::Catalog => return Ok(wanted),
            Resource::Repository(r) => r,
        };
        if p.is_admin() {
            return Ok(wanted);
        }
        let project = project_of(repo);
        let public = match self.store.project(project).await? {
            Some(pr) => pr.public,
            None => false,
        };
        let base = if public { Actions::PULL } else { Actions::NONE };
        let may = match p {
            Principal::Anonymous => base,
            Principal::User { name, .. } => base.union(self.role_in(name, project).await?),
            Principal::Robot { permissions, .. } => {
                base.union(permission_actions(permissions, project))
            }
            Principal::UserToken {
                user,
                permissions,
                admin,
                ..
            } => {
                let owner = if *admin {
                    Actions::ALL
                } else {
                    base.union(self.role_in(user, project).await?)
                };
                owner.intersect(permission_actions(permissions, project).union(base))
            }
            Principal::Htpasswd { .. } => Actions::ALL,
            Principal::External { .. } => Actions::NONE,
        };
        Ok(may.intersect(wanted))
    }

    async fn role_in(&self, user: &str, project: &str) -> Result<Actions, AuthError> {
        Ok(self
            .store
            .roles_of(user)
            .await?
            .into_iter()
            .find(|(p, _)| p == project)
            .map_or(Actions::NONE, |(_, r)| role_actions(r)))
    }

    /// Which repositories `p` sees in listings.
    pub async fn visibility(&self, p: &Principal) -> Result<Visibility, AuthError> {
        if p.is_admin() {
            return Ok(Visibility::All);
        }
        let mut set: HashSet<String> = self
            .store
            .projects()
            .await?
            .into_iter()
            .filter(|p| p.public)
            .map(|p| p.name)
            .collect();
        match p {
            Principal::User { name, .. } => {
                for (project, role) in self.store.roles_of(name).await? {
                    if role != Role::LimitedGuest {
                        set.insert(project);
                    }
                }
            }
            Principal::Robot { permissions, .. } | Principal::UserToken { permissions, .. } => {
                let all_projects = permissions.iter().any(|x| x.project == "*");
                let owner_roles = match p {
                    Principal::UserToken { user, .. } => Some(self.store.roles_of(user).await?),
                    _ => None,
                };
                let candidates: Vec<String> = if all_projects {
                    self.store
                        .projects()
                        .await?
                        .into_iter()
                        .map(|p| p.name)
                        .collect()
                } else {
                    permissions.iter().map(|x| x.project.clone()).collect()
                };
                for project in candidates {
                    if !permission_actions(permissions, &project).contains(Actions::PULL) {
                        continue;
                    }
                    let owner_ok = match &owner_roles {
                        None => true,
                        Some(roles) => {
                            p.is_admin()
                                || matches!(p, Principal::UserToken { admin: true, .. })
                                || roles
                                    .iter()
                                    .any(|(pr, r)| *pr == project && *r != Role::LimitedGuest)
                        }
                    };
                    if owner_ok {
                        set.insert(project);
                    }
                }
            }
            _ => {}
        }
        Ok(Visibility::Projects(set))
    }

    /// Whether `p` may list `repo`'s tags (limited guests may not).
    pub async fn may_list(&self, p: &Principal, repo: &RepoName) -> Result<bool, AuthError> {
        Ok(self.visibility(p).await?.shows(repo.as_str()))
    }

    /// Issues a token granting `p` what it may do of `scopes`, and a refresh
    /// token if asked (`offline_token=true`) and `p` is not anonymous.
    pub async fn issue(
        &self,
        p: &Principal,
        scopes: &[Scope],
        offline: bool,
    ) -> Result<TokenResponse, AuthError> {
        let Mode::Builtin { signer } = &self.mode else {
            return Err(AuthError::Internal("this registry issues no tokens".into()));
        };
        let mut access = Vec::new();
        for s in scopes {
            let granted = self.grant(p, &s.resource, s.actions).await?;
            if !granted.is_empty() {
                access.push(AccessEntry::from(&Scope {
                    resource: s.resource.clone(),
                    actions: granted,
                }));
            }
        }
        let now_ms = now_ms();
        let now = now_ms / 1000;
        let ttl = self.settings.token_ttl.as_secs();
        let via = match p {
            Principal::UserToken { token, .. } => Some(format!("pat:{token}")),
            _ => None,
        };
        let claims = Claims {
            iss: self.settings.issuer.clone(),
            sub: p.subject(),
            aud: Audience::One(self.settings.service.clone()),
            exp: now + ttl as i64,
            nbf: now,
            iat: now,
            jti: password::random_secret(""),
            access,
            wharf_use: None,
            wharf_via: via.clone(),
            wharf_login_ms: None,
        };
        let token = signer.sign(&claims)?;
        let refresh_token = if offline && *p != Principal::Anonymous {
            let r = Claims {
                exp: now + self.settings.refresh_ttl.as_secs() as i64,
                access: Vec::new(),
                wharf_use: Some("refresh".into()),
                wharf_login_ms: Some(now_ms),
                jti: password::random_secret(""),
                ..claims
            };
            Some(signer.sign(&r)?)
        } else {
            None
        };
        Ok(TokenResponse {
            access_token: token.clone(),
            token,
            expires_in: ttl,
            issued_at: rfc3339(now),
            refresh_token,
        })
    }

    /// The principal a refresh token stands for, if it is still valid: the
    /// user, robot or access token still exists and (for a user) the
    /// password has not changed since the refresh token was issued.
    pub async fn refresh(&self, token: &str, addr: Option<IpAddr>) -> Result<Principal, AuthError> {
        // A bad refresh token counts like an unknown name: it names nobody.
        let now = now_ms();
        let key = addr.map(|a| ThrottleKey {
            account: None,
            addr: throttle::throttle_addr(a),
        });
        if let Some(k) = &key {
            self.throttle
                .check(k, now)
                .await?
                .map_err(AuthError::Throttled)?;
        }
        let result = self.refresh_inner(token).await;
        if let (Err(AuthError::BadCredentials | AuthError::BadToken(_)), Some(k)) = (&result, &key)
        {
            self.throttle.failure(k, now).await?;
        }
        result
    }

    async fn refresh_inner(&self, token: &str) -> Result<Principal, AuthError> {
        let fail = std::convert::identity::<AuthError>;
        let verifier = self.verifier.as_ref().ok_or(AuthError::Unauthorized)?;
        let c = verifier
            .verify(token, now_ms() / 1000)
            .map_err(|e| fail(e.into()))?;
        if c.wharf_use.as_deref() != Some("refresh") {
            return Err(fail(AuthError::BadCredentials));
        }
        let p = self.principal_of(&c).await?;
        if let Principal::User { name, .. } | Principal::UserToken { user: name, .. } = &p {
            let u = self.store.user(name).await?;
            let login_ms = c.wharf_login_ms.unwrap_or(c.iat * 1000);
            if u.is_none_or(|u: User| u.password_changed_at_ms > login_ms) {
                return Err(fail(AuthError::BadCredentials));
            }
        }
        if p == Principal::Anonymous {
            return Err(fail(AuthError::BadCredentials));
        }
        Ok(p)
    }

    /// Resolves a token's subject to a principal as it stands now.
    pub async fn principal_of(&self, c: &Claims) -> Result<Principal, AuthError> {
        if !matches!(self.mode, Mode::Builtin { .. }) {
            return Ok(Principal::External { sub: c.sub.clone() });
        }
        if c.sub.is_empty() {
            return Ok(Principal::Anonymous);
        }
        if let Some(robot) = c.sub.strip_prefix(ROBOT_USER_PREFIX) {
            let found = self
                .store
                .credentials(CredentialKind::Robot, Some(""))
                .await?
                .into_iter()
                .find(|r| r.name == robot && !expired(r.expires_at_ms));
            return Ok(found.map_or(Principal::Anonymous, |r| Principal::Robot {
                name: r.name,
                permissions: r.permissions,
            }));
        }
        let Some(u) = self.store.user(&c.sub).await? else {
            return Ok(Principal::Anonymous);
        };
        if let Some(pat) = c.wharf_via.as_deref().and_then(|v| v.strip_prefix("pat:")) {
            let found = self
                .store
                .credentials(CredentialKind::Token, Some(&u.name))
                .await?
                .into_iter()
                .find(|t| t.name == pat && !expired(t.expires_at_ms));
            return Ok(
                found.map_or(Principal::Anonymous, |t| Principal::UserToken {
                    user: u.name.clone(),
                    admin: u.admin,
                    token: t.name,
                    permissions: t.permissions,
                }),
            );
        }
        Ok(Principal::User {
            name: u.name,
            admin: u.admin,
        })
    }

    /// Verifies a bearer token (cached until it expires: a token is checked
    /// once, not on every request it rides on).
    pub fn verify_bearer(&self, token: &str) -> Result<BearerToken, AuthError> {
        let verifier = self.verifier.as_ref().ok_or(AuthError::Unauthorized)?;
        let now = now_ms() / 1000;
        let key = token.rsplit('.').next().unwrap_or(token).as_bytes();
        if let Some((whole, c)) = self.tokens.get(key, 0)
            && *whole == *token
            && c.exp > now
        {
            return Ok(BearerToken { claims: c });
        }
        let c = verifier.verify(token, now)?;
        if c.wharf_use.is_some() {
            return Err(AuthError::BadToken(TokenError::Malformed));
        }
        let c = Arc::new(c);
        let left = u64::try_from(c.exp - now).unwrap_or(0);
        self.tokens.put(
            key.to_vec(),
            (Arc::from(token), c.clone()),
            Instant::now() + Duration::from_secs(left),
            0,
        );
        Ok(BearerToken { claims: c })
    }

    /// Creates the first administrator if no administrator exists. Returns
    /// the generated password when none was given.
    pub async fn bootstrap_admin(
        &self,
        name: &str,
        given: Option<String>,
    ) -> Result<Option<String>, AuthError> {
        if self.store.users().await?.iter().any(|u| u.admin) {
            return Ok(None);
        }
        let generated = given.is_none();
        let pw = given.unwrap_or_else(|| password::random_secret(""));
        let pw2 = pw.clone();
        let hash = blocking(move || password::hash(&pw2))
            .await?
            .map_err(AuthError::Internal)?;
        let now = now_ms();
        match self.store.user(name).await? {
            Some(_) => {
                self.store.set_password(name, &hash, now).await?;
                self.store.set_admin(name, true).await?;
            }
            None => {
                self.store
                    .create_user(&User {
                        name: name.to_owned(),
                        password_hash: hash,
                        admin: true,
                        created_at_ms: now,
                        password_changed_at_ms: now,
                    })
                    .await?
            }
        }
        self.invalidate();
        Ok(generated.then_some(pw))
    }
}

/// User names: 1 to 64 of `A-Za-z0-9._-`, starting with a letter or digit
/// (so never `robot$...`, and safe in logs and URLs).
pub fn valid_user_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Runs CPU-heavy work (password hashing) on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, AuthError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AuthError::Internal(e.to_string()))
}

fn expired(at: Option<i64>) -> bool {
    at.is_some_and(|t| t <= now_ms())
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a Unix time.
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
