//! The pool's threads in an idle cgroup, on this machine's real cgroup
//! hierarchy. One test per process: the pool is process-wide.
#![cfg(target_os = "linux")]

use std::path::{Path, PathBuf};

/// A fresh cgroup path under this process's own cpu cgroup, on whichever
/// hierarchy has the cpu controller; None when this cannot make one (not
/// root, no cgroup v2 mount), which the test reports.
fn scratch_cgroup() -> Option<PathBuf> {
    // SAFETY: geteuid takes nothing and returns an integer.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let name = format!("wharf-test-{}", std::process::id());
    let (root, rel) = if Path::new("/sys/fs/cgroup/cpu/tasks").exists() {
        let rel = own.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctl, path) = (f.next()?, f.next()?, f.next()?);
            ctl.split(',').any(|c| c == "cpu").then(|| path.to_owned())
        });
        (PathBuf::from("/sys/fs/cgroup/cpu"), rel?)
    } else {
        // cgroup v2, wherever it is mounted (`/sys/fs/cgroup/unified` on
        // hybrid systems).
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = mounts.lines().find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mountpoint = left.split(' ').nth(4)?;
            right
                .starts_with("cgroup2 ")
                .then(|| PathBuf::from(mountpoint))
        });
        let rel = own.lines().find_map(|l| l.strip_prefix("0::"));
        (root?, rel?.to_owned())
    };
    Some(root.join(rel.trim_start_matches('/')).join(name))
}

/// The line of a thread's `/proc/.../cgroup` for the hierarchy with cpu.
fn cpu_cgroup_of(tid: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/cgroup")).unwrap();
    let v1 = Path::new("/sys/fs/cgroup/cpu/tasks").exists();
    s.lines()
        .find(|l| match l.split(':').nth(1) {
            Some(c) if v1 => c.split(',').any(|c| c == "cpu"),
            Some(c) => c.is_empty(),
            None => false,
        })
        .unwrap()
        .to_owned()
}

/// Moves whatever is in the cgroup back to its parent and removes it, pass
/// or fail.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let threads = ["cgroup.threads", "tasks"]
            .into_iter()
            .find(|f| self.0.join(f).exists());
        if let Some(f) = threads {
            let parent = self.0.parent().unwrap().join(f);
            for tid in std::fs::read_to_string(self.0.join(f))
                .unwrap_or_default()
                .lines()
            {
                let _ = std::fs::write(&parent, tid);
            }
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[tokio::test]
async fn pool_threads_move_into_the_idle_cgroup_and_the_rest_stay() {
    let Some(dir) = scratch_cgroup() else {
        eprintln!("SKIPPED: making cgroups needs root");
        return;
    };
    let cleanup = Cleanup(dir.clone());
    let cg = wharf_background::start(Some(&dir)).unwrap().unwrap();
    assert_eq!(cg.dir(), dir);
    assert_eq!(cg.how(), "cpu.idle");
    assert_eq!(
        std::fs::read_to_string(dir.join("cpu.idle"))
            .unwrap()
            .trim(),
        "1"
    );
    let threads = if dir.join("cgroup.threads").exists() {
        "cgroup.threads"
    } else {
        "tasks"
    };
    let moved: Vec<String> = std::fs::read_to_string(dir.join(threads))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    // Every pool thread, and nothing else of this process.
    assert_eq!(moved.len(), wharf_background::THREADS, "{moved:?}");
    let suffix = format!("/{}", dir.file_name().unwrap().to_str().unwrap());
    let job = wharf_background::run("wharf-test-where", || {
        // SAFETY: gettid takes nothing and returns an integer.
        unsafe { libc::gettid() }.to_string()
    })
    .await
    .unwrap();
    assert!(moved.contains(&job), "{job} not in {moved:?}");
    assert!(
        cpu_cgroup_of(&job).ends_with(&suffix),
        "{}",
        cpu_cgroup_of(&job)
    );
    // SAFETY: as above.
    let me = unsafe { libc::gettid() }.to_string();
    assert!(!cpu_cgroup_of(&me).ends_with(&suffix));
    // Once only.
    let again = wharf_background::start(Some(&dir)).unwrap_err();
    assert!(again.to_string().contains("started already"), "{again}");

    drop(cleanup);
    assert!(!dir.exists());
}
