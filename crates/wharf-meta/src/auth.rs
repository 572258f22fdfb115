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
}
