//! `wharf gc` as a process: a session of its own at low priority, and when
//! it has to fork for that, its exit status and the signals sent to it still
//! reach the collection.

#![cfg(target_os = "linux")]

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn autogroups_on() -> bool {
    let on = std::fs::read_to_string("/proc/sys/kernel/sched_autogroup_enabled")
        .is_ok_and(|s| s.trim() == "1");
    if !on {
        eprintln!("skipped: this kernel has autogroups off, so wharf gc keeps its session");
    }
    on
}

/// `wharf gc` as a shell with job control starts it: leading a process group.
fn gc_as_group_leader(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_wharf"));
    c.arg("gc")
        .args(args)
        .env("RUST_LOG", "wharf=debug")
        .process_group(0);
    c
}

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // After the command name in parentheses: state, then parent.
        let rest = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
        if rest.split_whitespace().nth(1) == Some(&pid.to_string()) {
            out.push(child);
        }
    }
    out
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn collects_in_a_session_of_its_own_at_nice_19() {
    if !autogroups_on() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    // Started by a process that is not a group leader (cron, a script):
    // it starts its session itself.
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["gc", "--grace", "0s", "--data", data])
        .env("RUST_LOG", "wharf=debug")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("collecting in a session of its own forked=false") && log.contains("nice 19"),
        "{log}"
    );
    // Started as a group leader: a child does the work.
    let out = gc_as_group_leader(&["--grace", "0s", "--data", data])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("collecting in a session of its own forked=true") && log.contains("nice 19"),
        "{log}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("freed 0 blobs"),
        "the child's output is the command's"
    );
}

#[test]
fn a_failure_in_the_child_is_the_commands_exit_status() {
    if !autogroups_on() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = gc_as_group_leader(&["--grace", "soon", "--data"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--grace"), "{err}");
}

/// A collection under test; whatever the test's outcome, nothing of it
/// stays behind.
struct Blocked {
    parent: std::process::Child,
    child: u32,
}

impl Blocked {
    /// The parent's exit status, failing after 20 s rather than hanging.
    fn exit_status(&mut self) -> std::process::ExitStatus {
        let mut status = None;
        wait_until("wharf gc has exited", || {
            status = self.parent.try_wait().unwrap();
            status.is_some()
        });
        status.unwrap()
    }
}

impl Drop for Blocked {
    fn drop(&mut self) {
        let _ = self.parent.kill();
        let _ = self.parent.wait();
        // SAFETY: kill takes integers.
        unsafe { libc::kill(self.child as i32, libc::SIGKILL) };
    }
}

/// Starts `wharf gc` as a group leader whose child blocks opening its
/// configuration, a FIFO nobody writes.
fn blocked_collection(dir: &Path) -> Blocked {
    let fifo = dir.join("config.yml");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let parent = gc_as_group_leader(&["--config", fifo.to_str().unwrap(), "--data"])
        .arg(dir.join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = None;
    wait_until("the collection's child has started", || {
        child = children_of(parent.id()).first().copied();
        child.is_some()
    });
    Blocked {
        parent,
        child: child.unwrap_or_default(),
    }
}

fn gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn ctrl_c_at_the_terminal_stops_the_collection() {
    if !autogroups_on() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut gc = blocked_collection(dir.path());
    // A terminal's Ctrl-C goes to the foreground process group, which the
    // child, in its own session, is no longer part of.
    // SAFETY: kill takes integers; a negative pid names a process group.
    assert_eq!(
        unsafe { libc::kill(-(gc.parent.id() as i32), libc::SIGINT) },
        0
    );
    let status = gc.exit_status();
    assert_eq!(status.signal(), Some(libc::SIGINT), "{status}");
    wait_until("the child has stopped too", || gone(gc.child));
}

#[test]
fn the_child_does_not_outlive_a_killed_parent() {
    if !autogroups_on() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut gc = blocked_collection(dir.path());
    gc.parent.kill().unwrap();
    gc.parent.wait().unwrap();
    // The child was told (SIGTERM) and is reaped by whoever adopts it; a
    // zombie has no command line left.
    let child = gc.child;
    wait_until("the child has stopped", || {
        gone(child) || std::fs::read(format!("/proc/{child}/cmdline")).is_ok_and(|c| c.is_empty())
    });
}
