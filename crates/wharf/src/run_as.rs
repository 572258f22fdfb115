//! Dropping root: `WHARF_RUN_AS=UID:GID`.
//!
//! The container image starts as root only so that a data volume owned by
//! anyone (the tutorials' `-v /opt/data/registry:/var/lib/registry` is
//! root's) becomes the service user's, then runs as that user: every
//! command that opens the data directory (`serve`, `gc`, `repo rm --data`,
//! `throttle clear --data`) gives the directory to the user and switches to
//! it before opening the database, so that no file in it is ever root's (a
//! root-owned SQLite journal would lock the server out). `serve` does it
//! after binding its port and loading its TLS key, which may need root.
//!
//! Without the variable, or when not started as root, nothing changes.

use std::path::Path;

use anyhow::{Context, bail};

/// The user and group from `WHARF_RUN_AS`, if set.
pub fn target() -> anyhow::Result<Option<(u32, u32)>> {
    let Ok(v) = std::env::var("WHARF_RUN_AS") else {
        return Ok(None);
    };
    if v.is_empty() {
        return Ok(None);
    }
    let (u, g) = v.split_once(':').unwrap_or((v.as_str(), v.as_str()));
    let parse = |s: &str| {
        s.parse::<u32>()
            .with_context(|| format!("WHARF_RUN_AS={v:?}: expected numeric UID:GID"))
    };
    Ok(Some((parse(u)?, parse(g)?)))
}

/// If running as root with `WHARF_RUN_AS` set: makes `root` (created if
/// missing) and everything in it owned by that user, then becomes it.
pub fn become_service_user(root: &Path) -> anyhow::Result<()> {
    let Some((uid, gid)) = target()? else {
        return Ok(());
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    std::fs::create_dir_all(root)
        .with_context(|| format!("creating data directory {}", root.display()))?;
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(root)?;
    // The directory itself is given last: once it is the user's, the tree
    // below it is (a start killed half-way walks again next time).
    if meta.uid() != uid || meta.gid() != gid {
        let n = chown_tree(root, uid, gid)?;
        tracing::info!(data = %root.display(), uid, gid, entries = n, "gave the data directory to the service user");
    }
    // SAFETY: plain system calls with integer arguments; the order (groups,
    // group, user) is the one that leaves no privilege behind.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0 {
            return Err(std::io::Error::last_os_error()).context("setgroups");
        }
        if libc::setgid(gid) != 0 {
            return Err(std::io::Error::last_os_error()).context("setgid");
        }
        if libc::setuid(uid) != 0 {
            return Err(std::io::Error::last_os_error()).context("setuid");
        }
        if libc::getuid() != uid || libc::geteuid() != uid || libc::setuid(0) == 0 {
            bail!("could not drop root for uid {uid}");
        }
    }
    tracing::debug!(uid, gid, "running as the service user");
    Ok(())
}

/// Chowns everything under `dir`, then `dir`; returns how many entries.
fn chown_tree(dir: &Path, uid: u32, gid: u32) -> anyhow::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut n = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let e = e?;
            let p = e.path();
            let m = std::fs::symlink_metadata(&p)?;
            if m.is_dir() {
                stack.push(p.clone());
            }
            if m.uid() != uid || m.gid() != gid {
                std::os::unix::fs::lchown(&p, Some(uid), Some(gid))
                    .with_context(|| format!("chown {}", p.display()))?;
            }
            n += 1;
        }
    }
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", dir.display()))?;
    Ok(n + 1)
}
