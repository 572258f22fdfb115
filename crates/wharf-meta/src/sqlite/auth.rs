//! [`AuthStore`] on the embedded SQLite database.

use rusqlite::{OptionalExtension, params};

use super::{SqliteMeta, backend};
use crate::MetaError;
use crate::auth::{
    AuditEntry, AuditFilter, AuthStore, Credential, CredentialKind, Member, Permission, Project,
    Role, Throttle, ThrottleKey, ThrottlePolicy, User,
};

const THROTTLE_COLS: &str = "addr, account, failures, first_at, last_at, blocked_until";

fn throttle_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Throttle> {
    let account: String = r.get(1)?;
    Ok(Throttle {
        key: ThrottleKey {
            addr: r.get(0)?,
            account: (!account.is_empty()).then_some(account),
        },
        failures: r.get(2)?,
        first_failure_ms: r.get(3)?,
        last_failure_ms: r.get(4)?,
        blocked_until_ms: r.get(5)?,
    })
}

/// Keys forgotten per recorded failure: enough to keep up with any rate of
/// new keys, few enough to cost nothing.
const THROTTLE_PRUNE: i64 = 16;

fn is_constraint(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation
    )
}

fn user_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        name: r.get(0)?,
        password_hash: r.get(1)?,
        admin: r.get(2)?,
        created_at_ms: r.get(3)?,
        password_changed_at_ms: r.get(4)?,
    })
}

const USER_COLS: &str = "name, password_hash, admin, created_at, password_changed_at";
const CRED_COLS: &str =
    "kind, owner, name, secret_hash, permissions, expires_at, created_at, created_by";

type RawCredential = (
    String,
    String,
    String,
    Vec<u8>,
    String,
    Option<i64>,
    i64,
    String,
);

fn raw_credential(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawCredential> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
    ))
}

fn credential_from_raw(r: RawCredential) -> Result<Credential, MetaError> {
    let (kind, owner, name, secret_hash, permissions, expires_at_ms, created_at_ms, created_by) = r;
    Ok(Credential {
        kind: kind.parse().map_err(MetaError::Backend)?,
        owner,
        name,
        secret_hash,
        permissions: serde_json::from_str::<Vec<Permission>>(&permissions).map_err(backend)?,
        expires_at_ms,
        created_at_ms,
        created_by,
    })
}

fn project_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Project> {
    Ok(Project {
        name: r.get(0)?,
        public: r.get(1)?,
        created_at_ms: r.get(2)?,
    })
}

fn role(s: &str) -> Result<Role, MetaError> {
    s.parse().map_err(MetaError::Backend)
}

#[async_trait::async_trait]
impl AuthStore for SqliteMeta {
    async fn create_user(&self, u: &User) -> Result<(), MetaError> {
        let u = u.clone();
        self.write(move |c| {
            match c.execute(
                &format!("INSERT INTO users ({USER_COLS}) VALUES (?1, ?2, ?3, ?4, ?5)"),
                params![
                    u.name,
                    u.password_hash,
                    u.admin,
                    u.created_at_ms,
                    u.password_changed_at_ms
                ],
            ) {
                Ok(_) => Ok(()),
                Err(e) if is_constraint(&e) => {
                    Err(MetaError::AlreadyExists(format!("user {}", u.name)))
                }
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    async fn user(&self, name: &str) -> Result<Option<User>, MetaError> {
        let name = name.to_owned();
        self.read(move |c| {
            Ok(
                c.prepare_cached(&format!("SELECT {USER_COLS} FROM users WHERE name = ?1"))?
                    .query_row([name], user_row)
                    .optional()?,
            )
        })
        .await
    }

    async fn users(&self) -> Result<Vec<User>, MetaError> {
        self.read(|c| {
            Ok(
                c.prepare_cached(&format!("SELECT {USER_COLS} FROM users ORDER BY name"))?
                    .query_map([], user_row)?
                    .collect::<Result<_, _>>()?,
            )
        })
        .await
    }

    async fn set_password(&self, name: &str, hash: &str, now_ms: i64) -> Result<bool, MetaError> {
        let (name, hash) = (name.to_owned(), hash.to_owned());
        self.write(move |c| {
            Ok(c.execute(
                "UPDATE users SET password_hash = ?2, password_changed_at = ?3 WHERE name = ?1",
                params![name, hash, now_ms],
            )? > 0)
        })
        .await
    }

    async fn set_admin(&self, name: &str, admin: bool) -> Result<bool, MetaError> {
        let name = name.to_owned();
        self.write(move |c| {
            Ok(c.execute(
                "UPDATE users SET admin = ?2 WHERE name = ?1",
                params![name, admin],
            )? > 0)
        })
        .await
    }

    async fn delete_user(&self, name: &str) -> Result<bool, MetaError> {
        let name = name.to_owned();
        self.write(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "DELETE FROM credentials WHERE kind = 'token' AND owner = ?1",
                [&name],
            )?;
            let n = tx.execute("DELETE FROM users WHERE name = ?1", [&name])?;
            tx.commit()?;
            Ok(n > 0)
        })
        .await
    }

    async fn create_project(&self, p: &Project) -> Result<(), MetaError> {
        let p = p.clone();
        self.write(move |c| {
            match c.execute(
                "INSERT INTO projects (name, public, created_at) VALUES (?1, ?2, ?3)",
                params![p.name, p.public, p.created_at_ms],
            ) {
                Ok(_) => Ok(()),
                Err(e) if is_constraint(&e) => {
                    Err(MetaError::AlreadyExists(format!("project {}", p.name)))
                }
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    async fn project(&self, name: &str) -> Result<Option<Project>, MetaError> {
        let name = name.to_owned();
        self.read(move |c| {
            Ok(
                c.prepare_cached("SELECT name, public, created_at FROM projects WHERE name = ?1")?
                    .query_row([name], project_row)
                    .optional()?,
            )
        })
        .await
    }

    async fn projects(&self) -> Result<Vec<Project>, MetaError> {
        self.read(|c| {
            Ok(
                c.prepare_cached("SELECT name, public, created_at FROM projects ORDER BY name")?
                    .query_map([], project_row)?
                    .collect::<Result<_, _>>()?,
            )
        })
        .await
    }

    async fn set_project_public(&self, name: &str, public: bool) -> Result<bool, MetaError> {
        let name = name.to_owned();
        self.write(move |c| {
            Ok(c.execute(
                "UPDATE projects SET public = ?2 WHERE name = ?1",
                params![name, public],
            )? > 0)
        })
        .await
    }

    async fn delete_project(&self, name: &str) -> Result<bool, MetaError> {
        let name = name.to_owned();
        self.write(move |c| Ok(c.execute("DELETE FROM projects WHERE name = ?1", [name])? > 0))
            .await
    }

    async fn set_member(&self, project: &str, user: &str, r: Role) -> Result<(), MetaError> {
        let (project, user) = (project.to_owned(), user.to_owned());
        self.write(move |c| {
            let tx = c.transaction()?;
            let has = |sql: &str, key: &str| -> Result<bool, MetaError> {
                Ok(tx.query_row(sql, [key], |_| Ok(())).optional()?.is_some())
            };
            if !has("SELECT 1 FROM projects WHERE name = ?1", &project)? {
                return Err(MetaError::NotFound(format!("project {project}")));
            }
            if !has("SELECT 1 FROM users WHERE name = ?1", &user)? {
                return Err(MetaError::NotFound(format!("user {user}")));
            }
            tx.execute(
                "INSERT INTO members (project, user, role) VALUES (?1, ?2, ?3) \
                 ON CONFLICT(project, user) DO UPDATE SET role = excluded.role",
                params![project, user, r.as_str()],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn remove_member(&self, project: &str, user: &str) -> Result<bool, MetaError> {
        let (project, user) = (project.to_owned(), user.to_owned());
        self.write(move |c| {
            Ok(c.execute(
                "DELETE FROM members WHERE project = ?1 AND user = ?2",
                [project, user],
            )? > 0)
        })
        .await
    }

    async fn members(&self, project: &str) -> Result<Vec<Member>, MetaError> {
        let project = project.to_owned();
        self.read(move |c| {
            let rows: Vec<(String, String)> = c
                .prepare_cached("SELECT user, role FROM members WHERE project = ?1 ORDER BY user")?
                .query_map([project], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            rows.into_iter()
                .map(|(user, r)| {
                    Ok(Member {
                        user,
                        role: role(&r)?,
                    })
                })
                .collect()
        })
        .await
    }

    async fn roles_of(&self, user: &str) -> Result<Vec<(String, Role)>, MetaError> {
        let user = user.to_owned();
        self.read(move |c| {
            let rows: Vec<(String, String)> = c
                .prepare_cached(
                    "SELECT project, role FROM members WHERE user = ?1 ORDER BY project",
                )?
                .query_map([user], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            rows.into_iter().map(|(p, r)| Ok((p, role(&r)?))).collect()
        })
        .await
    }

    async fn create_credential(&self, cr: &Credential) -> Result<(), MetaError> {
        let cr = cr.clone();
        let perms = serde_json::to_string(&cr.permissions).map_err(backend)?;
        self.write(move |c| {
            let tx = c.transaction()?;
            if cr.kind == CredentialKind::Token
                && tx
                    .query_row("SELECT 1 FROM users WHERE name = ?1", [&cr.owner], |_| {
                        Ok(())
                    })
                    .optional()?
                    .is_none()
            {
                return Err(MetaError::NotFound(format!("user {}", cr.owner)));
            }
            match tx.execute(
                &format!(
                    "INSERT INTO credentials ({CRED_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
                ),
                params![
                    cr.kind.as_str(),
                    cr.owner,
                    cr.name,
                    cr.secret_hash,
                    perms,
                    cr.expires_at_ms,
                    cr.created_at_ms,
                    cr.created_by
                ],
            ) {
                Ok(_) => {}
                Err(e) if is_constraint(&e) => {
                    return Err(MetaError::AlreadyExists(format!(
                        "{} {}",
                        cr.kind.as_str(),
                        cr.name
                    )));
                }
                Err(e) => return Err(e.into()),
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn credential_by_secret_hash(
        &self,
        hash: &[u8],
    ) -> Result<Option<Credential>, MetaError> {
        let hash = hash.to_vec();
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {CRED_COLS} FROM credentials WHERE secret_hash = ?1"
            ))?
            .query_row([hash], raw_credential)
            .optional()?
            .map(credential_from_raw)
            .transpose()
        })
        .await
    }

    async fn credentials(
        &self,
        kind: CredentialKind,
        owner: Option<&str>,
    ) -> Result<Vec<Credential>, MetaError> {
        let owner = owner.map(str::to_owned);
        self.read(move |c| {
            let rows: Vec<RawCredential> = c
                .prepare_cached(&format!(
                    "SELECT {CRED_COLS} FROM credentials WHERE kind = ?1 \
                     AND (?2 IS NULL OR owner = ?2) ORDER BY owner, name"
                ))?
                .query_map(params![kind.as_str(), owner], raw_credential)?
                .collect::<Result<_, _>>()?;
            rows.into_iter().map(credential_from_raw).collect()
        })
        .await
    }

    async fn delete_credential(
        &self,
        kind: CredentialKind,
        owner: &str,
        name: &str,
    ) -> Result<bool, MetaError> {
        let (owner, name) = (owner.to_owned(), name.to_owned());
        self.write(move |c| {
            Ok(c.execute(
                "DELETE FROM credentials WHERE kind = ?1 AND owner = ?2 AND name = ?3",
                params![kind.as_str(), owner, name],
            )? > 0)
        })
        .await
    }

    async fn append_audit(&self, entries: &[AuditEntry]) -> Result<(), MetaError> {
        if entries.is_empty() {
            return Ok(());
        }
        let entries = entries.to_vec();
        self.write(move |c| {
            let tx = c.transaction()?;
            {
                let mut st = tx.prepare_cached(
                    "INSERT INTO audit (at, actor, addr, action, resource, outcome, detail) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?;
                for e in &entries {
                    st.execute(params![
                        e.at_ms, e.actor, e.addr, e.action, e.resource, e.outcome, e.detail
                    ])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn audit(&self, f: &AuditFilter) -> Result<Vec<(i64, AuditEntry)>, MetaError> {
        let f = f.clone();
        self.read(move |c| {
            // LIKE with an escaped prefix, so `_` and `%` in names match literally.
            let prefix = f.resource_prefix.as_deref().map(|p| {
                let mut s = String::with_capacity(p.len() + 1);
                for ch in p.chars() {
                    if matches!(ch, '\\' | '%' | '_') {
                        s.push('\\');
                    }
                    s.push(ch);
                }
                s.push('%');
                s
            });
            let limit = i64::try_from(f.limit).unwrap_or(i64::MAX);
            let mut st = c.prepare_cached(
                "SELECT id, at, actor, addr, action, resource, outcome, detail FROM audit \
                 WHERE (?1 IS NULL OR actor = ?1) AND (?2 IS NULL OR action = ?2) \
                 AND (?3 IS NULL OR resource LIKE ?3 ESCAPE '\\') AND (?4 IS NULL OR outcome = ?4) \
                 AND (?5 IS NULL OR at >= ?5) AND (?6 IS NULL OR at < ?6) \
                 AND (?7 IS NULL OR id < ?7) ORDER BY id DESC LIMIT ?8",
            )?;
            let rows = st
                .query_map(
                    params![
                        f.actor,
                        f.action,
                        prefix,
                        f.outcome,
                        f.since_ms,
                        f.until_ms,
                        f.before_id,
                        limit
                    ],
                    |r| {
                        Ok((
                            r.get(0)?,
                            AuditEntry {
                                at_ms: r.get(1)?,
                                actor: r.get(2)?,
                                addr: r.get(3)?,
                                action: r.get(4)?,
                                resource: r.get(5)?,
                                outcome: r.get(6)?,
                                detail: r.get(7)?,
                            },
                        ))
                    },
                )?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn prune_audit(&self, before_ms: i64) -> Result<u64, MetaError> {
        self.write(move |c| Ok(c.execute("DELETE FROM audit WHERE at < ?1", [before_ms])? as u64))
            .await
    }

    async fn throttle(
        &self,
        key: &ThrottleKey,
        policy: &ThrottlePolicy,
        now: i64,
    ) -> Result<Option<Throttle>, MetaError> {
        let (addr, account) = (key.addr.clone(), key.account.clone().unwrap_or_default());
        let policy = *policy;
        self.read(move |c| {
            let t = c
                .prepare_cached(&format!(
                    "SELECT {THROTTLE_COLS} FROM login_throttles WHERE addr = ?1 AND account = ?2"
                ))?
                .query_row(params![addr, account], throttle_row)
                .optional()?;
            Ok(t.filter(|t| !policy.expired(t.last_failure_ms, t.blocked_until_ms, now)))
        })
        .await
    }

    async fn throttle_failure(
        &self,
        key: &ThrottleKey,
        policy: &ThrottlePolicy,
        now: i64,
    ) -> Result<Throttle, MetaError> {
        let key = key.clone();
        let policy = *policy;
        self.write(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let account = key.account.clone().unwrap_or_default();
            let old = tx
                .prepare_cached(&format!(
                    "SELECT {THROTTLE_COLS} FROM login_throttles WHERE addr = ?1 AND account = ?2"
                ))?
                .query_row(params![key.addr, account], throttle_row)
                .optional()?
                .filter(|t| !policy.expired(t.last_failure_ms, t.blocked_until_ms, now));
            let (failures, first) = match &old {
                Some(t) => (t.failures.saturating_add(1), t.first_failure_ms),
                None => (1, now),
            };
            let delay = policy.delay_ms(failures);
            let blocked_until = if delay > 0 {
                now.saturating_add(delay)
            } else {
                0
            };
            tx.prepare_cached(
                "INSERT INTO login_throttles (addr, account, failures, first_at, last_at, blocked_until) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                 ON CONFLICT(addr, account) DO UPDATE SET failures = excluded.failures, \
                   first_at = excluded.first_at, last_at = excluded.last_at, \
                   blocked_until = excluded.blocked_until",
            )?
            .execute(params![key.addr, account, failures, first, now, blocked_until])?;
            // Forget a few keys nobody failed on lately (by the index on
            // last_at; a block never outlasts max_delay after the last failure).
            let forget_before = now
                .saturating_sub(policy.window_ms)
                .saturating_sub(policy.max_delay_ms);
            tx.prepare_cached(
                "DELETE FROM login_throttles WHERE (addr, account) IN \
                 (SELECT addr, account FROM login_throttles WHERE last_at < ?1 LIMIT ?2)",
            )?
            .execute(params![forget_before, THROTTLE_PRUNE])?;
            tx.commit()?;
            Ok(Throttle {
                key,
                failures,
                first_failure_ms: first,
                last_failure_ms: now,
                blocked_until_ms: blocked_until,
            })
        })
        .await
    }

    async fn clear_throttles(
        &self,
        account: Option<&str>,
        addr: Option<&str>,
    ) -> Result<u64, MetaError> {
        let (account, addr) = (account.map(str::to_owned), addr.map(str::to_owned));
        self.write(move |c| {
            Ok(c.prepare_cached(
                "DELETE FROM login_throttles WHERE (?1 IS NULL OR account = ?1) AND (?2 IS NULL OR addr = ?2)",
            )?
            .execute(params![account, addr])? as u64)
        })
        .await
    }

    async fn throttles(
        &self,
        policy: &ThrottlePolicy,
        now: i64,
        limit: usize,
    ) -> Result<Vec<Throttle>, MetaError> {
        let policy = *policy;
        self.read(move |c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {THROTTLE_COLS} FROM login_throttles \
                 WHERE max(last_at, blocked_until) + ?1 > ?2 \
                 ORDER BY last_at DESC LIMIT ?3"
            ))?;
            let rows = st
                .query_map(
                    params![
                        policy.window_ms,
                        now,
                        i64::try_from(limit).unwrap_or(i64::MAX)
                    ],
                    throttle_row,
                )?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }
}
