//! An idle CPU cgroup for the background threads.
//!
//! The idle scheduling class ranks threads only within their group: a
//! collection's threads in the server's own cgroup still take the CPU from
//! requests for a scheduler tick at a time, through kernel work that cannot
//! be preempted (unlinks, discards). A cgroup with `cpu.idle` set is served
//! only when the rest of its parent leaves the CPU idle. Measured (2 cores,
//! 2,000 pulls/s, 8 collections each way) during the server's own
//! collection: pull p99 went from a median of 1.72x its quiet value (worst
//! 2.64x) to 1.60x (worst 1.90x).
//!
//! On cgroup v1 any cpu cgroup does. On cgroup v2 the cgroup must be a
//! child of the process's own, which must be delegated (systemd's
//! `Delegate=cpu`): it becomes a threaded cgroup, the only kind that can
//! hold some threads of a process and not others. Only v1 has been tried.

use std::io;
use std::path::{Path, PathBuf};

/// A cgroup ready to take threads.
#[derive(Debug, Clone)]
pub struct IdleCgroup {
    dir: PathBuf,
    /// The file a thread joins by writing its id: `cgroup.threads` on v2,
    /// `tasks` on v1.
    threads: PathBuf,
    /// How it was made idle: `cpu.idle`, or a minimal weight on kernels
    /// before 5.15.
    how: &'static str,
}

impl IdleCgroup {
    /// Makes `dir` (creating it if it is missing) a cgroup whose threads run
    /// only when the CPU is otherwise idle. Errors name the step that failed;
    /// a cgroup this created is then removed again.
    pub fn prepare(dir: &Path) -> io::Result<IdleCgroup> {
        let created = match std::fs::create_dir(dir) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(context(e, format!("creating cgroup {}", dir.display()))),
        };
        let prepared = Self::make_idle(dir);
        if prepared.is_err() && created {
            let _ = std::fs::remove_dir(dir);
        }
        prepared
    }

    fn make_idle(dir: &Path) -> io::Result<IdleCgroup> {
        if !dir.join("cgroup.procs").exists() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a cgroup (no cgroup.procs)", dir.display()),
            ));
        }
        let v2 = dir.join("cgroup.type").exists();
        if v2 {
            if read(&dir.join("cgroup.type"))? != "threaded" {
                write(&dir.join("cgroup.type"), "threaded").map_err(|e| {
                    context(
                        e,
                        format!(
                            "making {} threaded (it must be a child of this process's \
                             own cgroup, delegated to it)",
                            dir.display()
                        ),
                    )
                })?;
            }
            let has_cpu = read(&dir.join("cgroup.controllers"))?
                .split_whitespace()
                .any(|c| c == "cpu");
            if !has_cpu {
                let parent = dir.parent().unwrap_or(dir).join("cgroup.subtree_control");
                write(&parent, "+cpu").map_err(|e| {
                    context(
                        e,
                        format!("enabling the cpu controller in {}", parent.display()),
                    )
                })?;
            }
        }
        let how = if write_if_present(&dir.join("cpu.idle"), "1")? {
            "cpu.idle"
        } else if write_if_present(&dir.join("cpu.weight"), "1")? {
            "cpu.weight"
        } else if write_if_present(&dir.join("cpu.shares"), "2")? {
            "cpu.shares"
        } else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("{} has no cpu controller", dir.display()),
            ));
        };
        Ok(IdleCgroup {
            threads: dir.join(if v2 { "cgroup.threads" } else { "tasks" }),
            dir: dir.to_owned(),
            how,
        })
    }

    /// Moves the calling thread, and the threads it starts from now on, into
    /// the cgroup.
    pub(crate) fn join(&self) -> io::Result<()> {
        // Thread id 0 is the writer, on both hierarchies.
        write(&self.threads, "0")
            .map_err(|e| context(e, format!("moving a thread into {}", self.dir.display())))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `cpu.idle`, `cpu.weight` or `cpu.shares`: what made it idle.
    pub fn how(&self) -> &'static str {
        self.how
    }
}

fn context(e: io::Error, what: String) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn read(p: &Path) -> io::Result<String> {
    std::fs::read_to_string(p)
        .map(|s| s.trim().to_owned())
        .map_err(|e| context(e, format!("reading {}", p.display())))
}

/// Cgroup files take one write per value; `std::fs::write` makes one.
fn write(p: &Path, v: &str) -> io::Result<()> {
    std::fs::write(p, v)
}

/// False if the file does not exist. A file that holds `v` already is left
/// alone: a cgroup that root prepared for a service that runs as another
/// user needs only its thread file writable by that user.
fn write_if_present(p: &Path, v: &str) -> io::Result<bool> {
    match std::fs::read_to_string(p) {
        Ok(now) if now.trim() == v => return Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        _ => {}
    }
    match write(p, v) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(context(e, format!("writing {v} to {}", p.display()))),
    }
}
