//! A session of its own for a process that is all background work.
//!
//! With autogroups (`/proc/sys/kernel/sched_autogroup_enabled`, on in most
//! distributions' kernels), Linux first shares the CPU between sessions and
//! only then between the threads of each, so a thread's idle class counts
//! only against threads of its own session. `wharf gc` started from a shell
//! or by cron is in another session than the server it runs beside, and
//! competed with it as an equal: pull p99 during a collection was 3.3x its
//! quiet value (median of 4) against 1.2x in the server's session. In a
//! session of its own whose autogroup runs at nice 19 it was 1.7x.

use std::io;

/// What [`own_session`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Session {
    /// Autogroups are off (or this is not Linux): sessions do not matter.
    Unchanged,
    /// The process leads a session of its own; `autogroup` is what
    /// `/proc/self/autogroup` says of it (`/autogroup-42 nice 19`), `forked`
    /// whether a child had to be started to get there.
    Own { forked: bool, autogroup: String },
}

/// Moves the calling process into a session of its own whose autogroup
/// runs at nice 19. Call it first thing, before any thread starts.
///
/// A process group leader (a command that an interactive shell started)
/// cannot start a session. Then this forks: the parent waits for the child,
/// passes SIGINT, SIGTERM, SIGHUP and SIGQUIT on to it (the child no longer
/// hears the terminal) and exits as the child did, without returning; the
/// child returns and does the work, and gets SIGTERM if the parent dies.
#[cfg(target_os = "linux")]
pub fn own_session() -> io::Result<Session> {
    let enabled = std::fs::read_to_string("/proc/sys/kernel/sched_autogroup_enabled")
        .is_ok_and(|s| s.trim() == "1");
    if !enabled {
        return Ok(Session::Unchanged);
    }
    // SAFETY: getpid, getpgrp and getsid take and return integers.
    let (pid, pgrp, sid) = unsafe { (libc::getpid(), libc::getpgrp(), libc::getsid(0)) };
    let mut forked = false;
    if sid != pid {
        if pgrp == pid {
            wait_for_a_child_that_goes_on()?;
            forked = true;
        }
        // SAFETY: setsid takes no arguments; it fails only for a group leader.
        if unsafe { libc::setsid() } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    lower_autogroup()?;
    let autogroup = std::fs::read_to_string("/proc/self/autogroup")?
        .trim()
        .to_owned();
    Ok(Session::Own { forked, autogroup })
}

#[cfg(not(target_os = "linux"))]
pub fn own_session() -> io::Result<Session> {
    Ok(Session::Unchanged)
}

/// Sets this session's autogroup to nice 19. The kernel lets unprivileged
/// processes change an autogroup's nice ten times a second in all
/// (`EAGAIN` beyond), so it tries for a few seconds.
#[cfg(target_os = "linux")]
fn lower_autogroup() -> io::Result<()> {
    let mut tries = 0;
    loop {
        match std::fs::write("/proc/self/autogroup", "19") {
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && tries < 50 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            r => return r,
        }
    }
}

#[cfg(target_os = "linux")]
static CHILD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

#[cfg(target_os = "linux")]
const FORWARDED: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

#[cfg(target_os = "linux")]
extern "C" fn forward(sig: libc::c_int) {
    let child = CHILD.load(std::sync::atomic::Ordering::Relaxed);
    if child > 0 {
        // SAFETY: kill is async-signal-safe and takes integers.
        unsafe { libc::kill(child, sig) };
    }
}

/// Forks. Returns in the child; the parent waits for it and exits as it did.
#[cfg(target_os = "linux")]
fn wait_for_a_child_that_goes_on() -> io::Result<()> {
    // SAFETY: the sigset is initialised by sigemptyset before use; the
    // calls only read and write it and the process's signal mask.
    let old_mask = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in FORWARDED {
            libc::sigaddset(&mut set, s);
        }
        let mut old: libc::sigset_t = std::mem::zeroed();
        // Held back until the parent forwards them, so none is lost.
        libc::sigprocmask(libc::SIG_BLOCK, &set, &mut old);
        old
    };
    // SAFETY: getpid takes no arguments.
    let parent = unsafe { libc::getpid() };
    // SAFETY: no other thread exists yet (the caller's contract), so the
    // child is a whole copy of this process.
    let child = unsafe { libc::fork() };
    if child < 0 {
        let e = io::Error::last_os_error();
        // SAFETY: restores the mask read above.
        unsafe { libc::sigprocmask(libc::SIG_SETMASK, &old_mask, std::ptr::null_mut()) };
        return Err(e);
    }
    if child == 0 {
        // SAFETY: prctl and getppid take integers; sigprocmask restores the
        // mask read above.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            if libc::getppid() != parent {
                // The parent died before the line above took effect.
                libc::_exit(1);
            }
            libc::sigprocmask(libc::SIG_SETMASK, &old_mask, std::ptr::null_mut());
        }
        return Ok(());
    }
    CHILD.store(child, std::sync::atomic::Ordering::Relaxed);
    let mut status = 0;
    // SAFETY: `forward` is async-signal-safe; the sigaction structure is
    // fully initialised; waitpid writes only `status`.
    unsafe {
        for s in FORWARDED {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = forward as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(s, &sa, std::ptr::null_mut());
        }
        libc::sigprocmask(libc::SIG_SETMASK, &old_mask, std::ptr::null_mut());
        while libc::waitpid(child, &mut status, 0) < 0 {
            if io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                std::process::exit(1);
            }
        }
        if libc::WIFSIGNALED(status) {
            // Die of the same signal, so that whoever waits for us sees it.
            let sig = libc::WTERMSIG(status);
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
            std::process::exit(128 + sig);
        }
    }
    std::process::exit(libc::WEXITSTATUS(status))
}
