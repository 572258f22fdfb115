//! distribution's htpasswd authentication: a file of `user:bcrypt-hash` lines,
//! re-read when it changes on disk.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

use crate::password::MAX_PASSWORD_LEN;

/// The parsed file and what it looked like on disk when read.
struct Loaded {
    stamp: Option<(SystemTime, u64, u64)>,
    users: HashMap<String, String>,
    /// The cost of the file's hashes, for the unknown-user dummy check.
    dummy: String,
}

pub struct Htpasswd {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

#[derive(Debug, thiserror::Error)]
pub enum HtpasswdError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} line {line}: {msg}")]
    Syntax {
        path: String,
        line: usize,
        msg: &'static str,
    },
}

fn stamp(path: &std::path::Path) -> Option<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

fn parse(path: &std::path::Path) -> Result<Loaded, HtpasswdError> {
    let p = path.display().to_string();
    let st = stamp(path);
    let text = std::fs::read_to_string(path).map_err(|source| HtpasswdError::Io {
        path: p.clone(),
        source,
    })?;
    let mut users = HashMap::new();
    let mut cost = 5;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let syntax = |msg| HtpasswdError::Syntax {
            path: p.clone(),
            line: i + 1,
            msg,
        };
        let (user, hash) = line
            .split_once(':')
            .ok_or_else(|| syntax("expected user:hash"))?;
        // Only bcrypt, as in distribution: the other htpasswd formats are weak.
        if !(hash.starts_with("$2a$") || hash.starts_with("$2b$") || hash.starts_with("$2y$")) {
            return Err(syntax(
                "not a bcrypt hash (create entries with htpasswd -B)",
            ));
        }
        if let Some(c) = hash.get(4..6).and_then(|c| c.parse::<u32>().ok()) {
            cost = cost.max(c);
        }
        users.insert(user.to_owned(), hash.to_owned());
    }
    let dummy = bcrypt::hash("wharf-dummy-password", cost.clamp(4, 31)).unwrap_or_default();
    Ok(Loaded {
        stamp: st,
        users,
        dummy,
    })
}

impl Htpasswd {
    /// Reads the file now, so a missing or malformed file fails at start-up.
    pub fn open(path: PathBuf) -> Result<Htpasswd, HtpasswdError> {
        let loaded = parse(&path)?;
        Ok(Htpasswd {
            path,
            loaded: Mutex::new(loaded),
        })
    }

    /// Re-reads the file if its size, inode or mtime changed, and says
    /// whether the users changed. A file that became unreadable or malformed
    /// keeps the last good contents (logged).
    pub fn refresh(&self) -> bool {
        let now = stamp(&self.path);
        let Ok(mut g) = self.loaded.lock() else {
            return false;
        };
        if now == g.stamp {
            return false;
        }
        match parse(&self.path) {
            Ok(l) => {
                tracing::info!(path = %self.path.display(), users = l.users.len(), "htpasswd file reloaded");
                *g = l;
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "htpasswd file changed but cannot be used; keeping the previous one");
                g.stamp = now;
                false
            }
        }
    }

    /// Whether the file names `user` (with any password).
    pub fn contains(&self, user: &str) -> bool {
        self.loaded
            .lock()
            .map(|g| g.users.contains_key(user))
            .unwrap_or(false)
    }

    /// Whether the file names no user at all.
    pub fn is_empty(&self) -> bool {
        self.loaded
            .lock()
            .map(|g| g.users.is_empty())
            .unwrap_or(true)
    }

    /// Whether `user` exists with `password`. Costs one bcrypt check either way.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        self.refresh();
        let (hash, known) = match self.loaded.lock() {
            Ok(g) => match g.users.get(user) {
                Some(h) => (h.clone(), true),
                None => (g.dummy.clone(), false),
            },
            Err(_) => return false,
        };
        let ok =
            password.len() <= MAX_PASSWORD_LEN && bcrypt::verify(password, &hash).unwrap_or(false);
        ok && known
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        let h = bcrypt::hash("pw1", 4).unwrap();
        std::fs::write(&path, format!("# comment\nalice:{h}\n")).unwrap();
        let f = Htpasswd::open(path.clone()).unwrap();
        assert!(f.verify("alice", "pw1"));
        assert!(!f.verify("alice", "pw2"));
        assert!(!f.verify("bob", "pw1"));

        // A new file (new inode and size) is picked up without a restart.
        let h2 = bcrypt::hash("pw2", 4).unwrap();
        let tmp = dir.path().join("new");
        std::fs::write(&tmp, format!("alice:{h2}\nbob:{h}\n")).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert!(f.verify("alice", "pw2"));
        assert!(!f.verify("alice", "pw1"));
        assert!(f.verify("bob", "pw1"));

        // A broken replacement keeps the last good contents.
        std::fs::write(&path, "garbage without a colon\n").unwrap();
        assert!(f.verify("bob", "pw1"));
    }

    #[test]
    fn refuses_weak_or_broken_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        std::fs::write(&path, "alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n").unwrap();
        let e = Htpasswd::open(path.clone()).err().unwrap().to_string();
        assert!(e.contains("line 1") && e.contains("bcrypt"), "{e}");
        assert!(Htpasswd::open(dir.path().join("missing")).is_err());
    }
}
