//! Ways an idle cgroup is refused, each leaving nothing behind.
#![cfg(target_os = "linux")]

use std::path::Path;

use wharf_background::IdleCgroup;

#[test]
fn a_directory_that_is_not_a_cgroup_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    // One it made: removed again.
    let made = tmp.path().join("made");
    let e = IdleCgroup::prepare(&made).unwrap_err();
    assert!(e.to_string().contains("is not a cgroup"), "{e}");
    assert!(!made.exists());
    // One that was there: left alone.
    let e = IdleCgroup::prepare(tmp.path()).unwrap_err();
    assert!(e.to_string().contains("is not a cgroup"), "{e}");
    assert!(tmp.path().exists());
    // One it cannot make.
    let e = IdleCgroup::prepare(&tmp.path().join("no/such/parent")).unwrap_err();
    assert!(e.to_string().contains("creating cgroup"), "{e}");
}

/// A cgroup v2 hierarchy without the cpu controller (this machine's
/// `/sys/fs/cgroup/unified`, where cpu is on v1): the cgroup becomes
/// threaded, then enabling cpu fails, and the cgroup goes again.
#[test]
fn a_v2_hierarchy_without_the_cpu_controller_is_refused() {
    let root = Path::new("/sys/fs/cgroup/unified");
    let controllers = std::fs::read_to_string(root.join("cgroup.controllers"));
    // SAFETY: geteuid takes nothing and returns an integer.
    let is_root = unsafe { libc::geteuid() } == 0;
    if !is_root || controllers.map_or(true, |c| c.split_whitespace().any(|c| c == "cpu")) {
        eprintln!(
            "SKIPPED: needs root and a cgroup v2 hierarchy without cpu at {}",
            root.display()
        );
        return;
    }
    let dir = root.join(format!("wharf-test-{}", std::process::id()));
    let e = IdleCgroup::prepare(&dir).unwrap_err();
    assert!(e.to_string().contains("enabling the cpu controller"), "{e}");
    assert!(!dir.exists());
}
