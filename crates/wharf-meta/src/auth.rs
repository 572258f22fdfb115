//! Access-control records: users, projects and their members, robot accounts
//! and personal access tokens, and the audit log.
//!
//! A separate trait from [`crate::MetaStore`] so that neither grows into one
//! fifty-method interface; a backend implements both over one database.

use std::fmt;
use std::str::FromStr;

use crate::MetaError;

/// A local user. Names are unique.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    /// A PHC string (argon2id); never logged or returned by the API.
    pub password_hash: String,
    /// A system administrator: every permission on every project.
    pub admin: bool,
    pub created_at_ms: i64,
    /// When the password last changed; refresh tokens issued before it are void.
    pub password_changed_at_ms: i64,
}

/// A project: the first component of a repository name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    pub name: String,
    /// Anyone, even anonymous, may pull from a public project.
    pub public: bool,
    pub created_at_ms: i64,
}

/// A member's role in a project, from most to least powerful.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Pull, push, delete, and manage the project's members.
    ProjectAdmin,
    /// Pull, push and delete.
    Maintainer,
    /// Pull and push.
    Developer,
    /// Pull, and list the project's repositories and tags.
    Guest,
    /// Pull only: repositories and tags are not listed.
    LimitedGuest,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::ProjectAdmin,
        Role::Maintainer,
        Role::Developer,
        Role::Guest,
        Role::LimitedGuest,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::ProjectAdmin => "projectadmin",
            Role::Maintainer => "maintainer",
            Role::Developer => "developer",
            Role::Guest => "guest",
            Role::LimitedGuest => "limitedguest",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        let norm: String = s
            .chars()
            .filter(|c| *c != '-' && *c != '_' && *c != ' ')
            .collect::<String>()
            .to_ascii_lowercase();
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == norm)
            .ok_or_else(|| {
                format!(
                    "unknown role {s:?}; expected one of projectadmin, maintainer, developer, guest, limitedguest"
                )
            })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub user: String,
    pub role: Role,
}

/// Who a credential belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CredentialKind {
    /// A robot account: a principal of its own, logged in as `robot$<name>`.
    Robot,
    /// A user's personal access token, used as that user's password.
    Token,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Robot => "robot",
            CredentialKind::Token => "token",
        }
    }
}

impl FromStr for CredentialKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "robot" => Ok(CredentialKind::Robot),
            "token" => Ok(CredentialKind::Token),
            _ => Err(format!("unknown credential kind {s:?}")),
        }
    }
}

/// What a robot or token may do in one project (`*` for every project).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Permission {
    pub project: String,
    /// Registry actions: `pull`, `push`, `delete`.
    pub actions: Vec<String>,
}

/// A robot account or personal access token. Only a hash of its secret is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub kind: CredentialKind,
    /// The owning user for a token; empty for a robot.
    pub owner: String,
    pub name: String,
    /// SHA-256 of the secret (secrets are 256-bit random, so a fast hash is
    /// enough and lookups by hash are safe).
    pub secret_hash: Vec<u8>,
    pub permissions: Vec<Permission>,
    pub expires_at_ms: Option<i64>,
    pub created_at_ms: i64,
    pub created_by: String,
}

/// One audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub at_ms: i64,
    /// The principal (`anonymous`, a user, `robot$name`).
    pub actor: String,
    /// The client's address.
    pub addr: String,
    /// `pull`, `push`, `delete`, `login`, or an admin change like `user.create`.
    pub action: String,
    /// What was acted on (`repo:tag`, `repo@digest`, a user or project name).
    pub resource: String,
    /// `ok`, `denied` or `failed`.
    pub outcome: String,
    pub detail: Option<String>,
}

/// Which audit records to return, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub action: Option<String>,
    /// Records whose resource starts with this.
    pub resource_prefix: Option<String>,
    pub outcome: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Only records with an id below this (for paging backwards).
    pub before_id: Option<i64>,
    pub limit: usize,
}

/// What failed logins are counted against: an account from one client
/// address, or (`account: None`) every name that names no account, from one
/// address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ThrottleKey {
    pub account: Option<String>,
    /// The client's address, or its network for IPv6 (`2001:db8::/64`).
    pub addr: String,
}

/// How failures turn into waits: `attempts` failures are free within
/// `window_ms`; the last of them blocks the key for `delay_ms`, and each one
/// after them twice as long as the one before (1 s, 2 s, 4 s, … by default)
/// up to `max_delay_ms`. A key with no failure for `window_ms` after its
/// last failure or block is forgotten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottlePolicy {
    pub attempts: u32,
    pub window_ms: i64,
    pub delay_ms: i64,
    pub max_delay_ms: i64,
}

impl ThrottlePolicy {
    /// How long the `failures`-th failure blocks the key.
    pub fn delay_ms(&self, failures: u32) -> i64 {
        if failures < self.attempts {
            return 0;
        }
        let doublings = (failures - self.attempts).min(40);
        self.delay_ms
            .max(1)
            .saturating_mul(1i64 << doublings)
            .min(self.max_delay_ms)
    }

    /// Whether a key last failed at `last_ms` and blocked until
    /// `blocked_until_ms` is forgotten at `now_ms`.
    pub fn expired(&self, last_ms: i64, blocked_until_ms: i64, now_ms: i64) -> bool {
        now_ms >= last_ms.max(blocked_until_ms).saturating_add(self.window_ms)
    }
}

/// The failures counted against a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Throttle {
    pub key: ThrottleKey,
    pub failures: u32,
    pub first_failure_ms: i64,
    pub last_failure_ms: i64,
    /// Logins under this key are refused until then (0: not blocked).
    pub blocked_until_ms: i64,
}

/// Access-control storage.
///
/// Contract, proven for every backend by [`crate::testsuite::auth`]:
/// - Every method is atomic.
/// - Creating something that exists is `AlreadyExists`; changing something
///   missing returns `false` (or `NotFound` where a reference is missing).
/// - Deleting a user removes their memberships and tokens; deleting a project
///   removes its memberships.
#[async_trait::async_trait]
pub trait AuthStore: Send + Sync + 'static {
    async fn create_user(&self, user: &User) -> Result<(), MetaError>;
    async fn user(&self, name: &str) -> Result<Option<User>, MetaError>;
    /// All users, by name.
    async fn users(&self) -> Result<Vec<User>, MetaError>;
    async fn set_password(&self, name: &str, hash: &str, now_ms: i64) -> Result<bool, MetaError>;
    async fn set_admin(&self, name: &str, admin: bool) -> Result<bool, MetaError>;
    async fn delete_user(&self, name: &str) -> Result<bool, MetaError>;

    async fn create_project(&self, project: &Project) -> Result<(), MetaError>;
    async fn project(&self, name: &str) -> Result<Option<Project>, MetaError>;
    /// All projects, by name.
    async fn projects(&self) -> Result<Vec<Project>, MetaError>;
    async fn set_project_public(&self, name: &str, public: bool) -> Result<bool, MetaError>;
    async fn delete_project(&self, name: &str) -> Result<bool, MetaError>;

    /// Adds a member or changes their role. `NotFound` if the project or user
    /// does not exist.
    async fn set_member(&self, project: &str, user: &str, role: Role) -> Result<(), MetaError>;
    async fn remove_member(&self, project: &str, user: &str) -> Result<bool, MetaError>;
    /// A project's members, by user name.
    async fn members(&self, project: &str) -> Result<Vec<Member>, MetaError>;
    /// A user's roles, by project name.
    async fn roles_of(&self, user: &str) -> Result<Vec<(String, Role)>, MetaError>;

    /// `AlreadyExists` if (kind, owner, name) is taken; `NotFound` if a
    /// token's owner does not exist.
    async fn create_credential(&self, credential: &Credential) -> Result<(), MetaError>;
    async fn credential_by_secret_hash(&self, hash: &[u8])
    -> Result<Option<Credential>, MetaError>;
    /// Credentials of a kind, optionally of one owner, by owner then name.
    async fn credentials(
        &self,
        kind: CredentialKind,
        owner: Option<&str>,
    ) -> Result<Vec<Credential>, MetaError>;
    /// Revokes (deletes) a credential. Returns whether it existed.
    async fn delete_credential(
        &self,
        kind: CredentialKind,
        owner: &str,
        name: &str,
    ) -> Result<bool, MetaError>;

    /// Appends records in one transaction.
    async fn append_audit(&self, entries: &[AuditEntry]) -> Result<(), MetaError>;
    /// Records matching `filter`, newest first, with their ids.
    async fn audit(&self, filter: &AuditFilter) -> Result<Vec<(i64, AuditEntry)>, MetaError>;
    /// Deletes records older than `before_ms`; returns how many.
    async fn prune_audit(&self, before_ms: i64) -> Result<u64, MetaError>;

    /// The failures counted against `key`, unless forgotten under `policy`
    /// at `now_ms`.
    async fn throttle(
        &self,
        key: &ThrottleKey,
        policy: &ThrottlePolicy,
        now_ms: i64,
    ) -> Result<Option<Throttle>, MetaError>;
    /// Counts one more failure against `key` (atomically, whoever else
    /// counts at the same time) and returns the key's state afterwards. Also
    /// forgets a few keys that `policy` lets go, so that the table stays as
    /// small as the recent failures.
    async fn throttle_failure(
        &self,
        key: &ThrottleKey,
        policy: &ThrottlePolicy,
        now_ms: i64,
    ) -> Result<Throttle, MetaError>;
    /// Forgets the failures of the keys matching both filters (`None`
    /// matches any; an account of `Some("")` matches the unknown-name keys).
    /// Returns how many keys were forgotten.
    async fn clear_throttles(
        &self,
        account: Option<&str>,
        addr: Option<&str>,
    ) -> Result<u64, MetaError>;
    /// Every key with failures not forgotten under `policy` at `now_ms`,
    /// most recent failure first, at most `limit`.
    async fn throttles(
        &self,
        policy: &ThrottlePolicy,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<Throttle>, MetaError>;
}
