//! Background work on its own short-lived thread at the lowest CPU priority.
//!
//! Garbage collection is CPU and kernel work (SQLite transactions, unlinks)
//! that at normal priority competes with request handling on equal terms:
//! pull p99 during a collection was 4x its quiet value with only the
//! deletions lowered to nice 19 (at 2,000 pulls/s on 2 cores). Linux's idle
//! scheduling class runs a thread only when nothing else wants the CPU and
//! preempts it at once when a request handler wakes up.
//!
//! Not quite always: a handler that another wake-up preempted can be, for
//! the EEVDF scheduler, ahead of its share and not eligible, and then the
//! scheduler picks an idle-class thread, which keeps the CPU until the next
//! tick (4 ms at 250 Hz) while the handler waits. `perf sched` caught 2-4 ms
//! waits of this kind during collections. So background work also [`cede`]s
//! every few tens of microseconds: each yield makes the scheduler choose
//! again, and by then the handler is eligible (an idle-class thread's virtual
//! time runs about 340 times faster than a normal one's).
//!
//! Priority is per thread and an unprivileged thread cannot raise it again,
//! so jobs run on a pool of their own whose threads never serve requests
//! (tokio's blocking pool, lowered once, would later serve requests at that
//! priority). Those threads can also be moved, once, into a cgroup that the
//! CPU controller serves only when nothing else wants the CPU; see
//! [`start`].

use std::cell::Cell;
use std::io;

mod cgroup;
mod pool;
mod session;
pub use cgroup::IdleCgroup;
pub use pool::{THREADS, start};
pub use session::{Session, own_session};

/// Runs `f` on a background thread, in the idle scheduling class (nice 19
/// where that is refused), and returns what it returns. The thread keeps
/// best-effort I/O priority: the class alone would also make its I/O idle,
/// and a thread that holds a database write lock must not wait seconds for
/// its fsync behind other I/O while writers queue on the lock.
///
/// Jobs wait for a free thread when [`THREADS`] run already. `name` says
/// what the job is in errors. Errors if the pool could not start or `f`
/// panics; a panic does not take a pool thread with it.
pub async fn run<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    pool::submit(Box::new(move || {
        // The caller hears of a panic as a dropped sender.
        if let Ok(v) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            let _ = tx.send(v);
        }
    }))?;
    rx.await
        .map_err(|_| io::Error::other(format!("background job {name} panicked")))
}

/// I/O priority best-effort (class 2), level 7 of 0-7, as `ioprio_set`
/// encodes it: class in bits 13 and up.
#[cfg(target_os = "linux")]
const IOPRIO_BE_LOWEST: libc::c_long = (2 << 13) | 7;
#[cfg(target_os = "linux")]
const IOPRIO_WHO_PROCESS: libc::c_long = 1;

/// Lowers the calling thread, and with it every thread it starts from now
/// on, to the priority `run` gives its jobs, for good. For a process that is
/// all background work (`wharf gc`): call it before starting the runtime.
/// A hint: failure costs request latency, not correctness.
#[cfg(target_os = "linux")]
pub fn lower_this_thread() {
    LOWERED.with(|l| l.set(Some(true)));
    // SAFETY: ioprio_set only reads its integer arguments; who 0 is the
    // calling thread. Set before the class, which would otherwise imply idle
    // I/O priority.
    let _ = unsafe {
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            0 as libc::c_long,
            IOPRIO_BE_LOWEST,
        )
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param that outlives the call; pid 0
    // means the calling thread.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } == 0 {
        return;
    }
    let idle_error = io::Error::last_os_error();
    // SAFETY: gettid and setpriority only take and return integers.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) };
    tracing::debug!(
        error = %idle_error,
        nice_error = ?(rc != 0).then(io::Error::last_os_error),
        "could not move a background thread to the idle scheduling class"
    );
}

#[cfg(not(target_os = "linux"))]
pub fn lower_this_thread() {}

thread_local! {
    /// Whether this thread runs at background priority: set by
    /// `lower_this_thread`, else asked of the kernel once, for threads that
    /// inherited it from the thread that started them.
    static LOWERED: Cell<Option<bool>> = const { Cell::new(None) };
}

/// On a background thread, gives the CPU to whoever is waiting for it; on
/// any other thread, nothing. Long background work calls it every few tens
/// of microseconds (see the module's doc); it costs a system call that
/// returns at once when nobody waits.
pub fn cede() {
    let lowered = LOWERED.with(|l| {
        l.get().unwrap_or_else(|| {
            let v = lowered_by_kernel();
            l.set(Some(v));
            v
        })
    });
    if lowered {
        std::thread::yield_now();
    }
}

/// The calling thread is in the idle class, or at nice 19.
#[cfg(target_os = "linux")]
fn lowered_by_kernel() -> bool {
    // SAFETY: sched_getscheduler, gettid and getpriority only take and
    // return integers.
    unsafe {
        libc::sched_getscheduler(0) == libc::SCHED_IDLE
            || libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) == 19
    }
}

#[cfg(not(target_os = "linux"))]
fn lowered_by_kernel() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn join_all(handles: Vec<tokio::task::JoinHandle<io::Result<()>>>) {
        for h in handles {
            h.await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn returns_what_the_job_returns_on_a_pool_thread() {
        let name = run("wharf-test-job", || {
            std::thread::current().name().map(str::to_owned)
        })
        .await
        .unwrap();
        assert_eq!(name.as_deref(), Some("wharf-background"));
    }

    #[tokio::test]
    async fn a_panicking_job_is_an_error_not_a_hang() {
        let e = run("wharf-test-panic", || -> u32 { panic!("boom") })
            .await
            .unwrap_err();
        assert!(e.to_string().contains("wharf-test-panic"), "{e}");
        // Every pool thread still takes jobs: THREADS jobs that wait for
        // each other all finish.
        let all = std::sync::Arc::new(std::sync::Barrier::new(THREADS));
        let jobs = (0..THREADS).map(|_| {
            let all = all.clone();
            tokio::spawn(run("wharf-test-barrier", move || {
                all.wait();
            }))
        });
        let waited =
            tokio::time::timeout(std::time::Duration::from_secs(30), join_all(jobs.collect()))
                .await;
        assert!(waited.is_ok(), "a pool thread is gone");
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_job_runs_in_the_idle_class_with_best_effort_io() {
        // SAFETY: sched_getscheduler and ioprio_get only read integers; 0 is
        // the calling thread.
        let (policy, ioprio) = run("wharf-test-prio", || unsafe {
            (
                libc::sched_getscheduler(0),
                libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, 0 as libc::c_long),
            )
        })
        .await
        .unwrap();
        assert_eq!(policy, libc::SCHED_IDLE);
        assert_eq!(ioprio, IOPRIO_BE_LOWEST);
        // The caller's own thread is untouched.
        // SAFETY: as above.
        assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_OTHER);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn cede_tells_background_threads_from_request_threads() {
        let seen = |f: fn() -> Option<bool>| std::thread::spawn(f).join().unwrap();
        // A request thread: asked of the kernel once, then remembered.
        assert_eq!(
            seen(|| {
                cede();
                LOWERED.with(Cell::get)
            }),
            Some(false)
        );
        // A thread that inherited the idle class, as `wharf gc`'s runtime
        // threads do: the kernel says so.
        assert_eq!(
            seen(|| {
                lower_this_thread();
                std::thread::spawn(|| {
                    cede();
                    LOWERED.with(Cell::get)
                })
                .join()
                .unwrap()
            }),
            Some(true)
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn threads_started_by_a_lowered_thread_inherit_its_priority() {
        let policy = std::thread::spawn(|| {
            lower_this_thread();
            // SAFETY: sched_getscheduler only reads an integer.
            std::thread::spawn(|| unsafe { libc::sched_getscheduler(0) })
                .join()
                .unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(policy, libc::SCHED_IDLE);
    }
}
