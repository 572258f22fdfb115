//! The threads background jobs run on: started once, lowered once, and,
//! if configured, moved once into an idle cgroup. Moving a thread between
//! cgroups waits for the kernel (an RCU grace period under a global lock):
//! done per job on fresh threads, it made a collection 0.1-0.2 s slower.

use std::io;
use std::path::Path;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, OnceLock};

use crate::cgroup::IdleCgroup;

/// Pool threads: a collection deletes on 16 at once, then writes to the
/// database on one. More jobs than this wait for a thread.
pub const THREADS: usize = 17;

type Job = Box<dyn FnOnce() + Send>;

static POOL: OnceLock<Result<Mutex<Sender<Job>>, String>> = OnceLock::new();

/// Starts the pool, its threads in `cgroup` if one is given, and returns
/// where they went. With a cgroup, call it before the first job: a pool
/// started already (by an earlier call, or by a job, which starts one
/// outside any cgroup) is an error. Without one it is a no-op then.
pub fn start(cgroup: Option<&Path>) -> io::Result<Option<IdleCgroup>> {
    // Set only if this call started the pool.
    let mut started = None;
    POOL.get_or_init(|| match spawn(cgroup) {
        Ok((tx, cg)) => {
            started = Some(Ok(cg));
            Ok(Mutex::new(tx))
        }
        Err(e) => {
            let msg = e.to_string();
            started = Some(Err(e));
            Err(msg)
        }
    });
    match started {
        Some(placed) => placed,
        None if cgroup.is_some() => Err(io::Error::other(
            "the background pool had started already, outside the cgroup",
        )),
        None => Ok(None),
    }
}

/// Queues a job, starting the pool (outside any cgroup) if need be.
pub(crate) fn submit(job: Job) -> io::Result<()> {
    let pool = POOL.get_or_init(|| {
        spawn(None)
            .map(|(tx, _)| Mutex::new(tx))
            .map_err(|e| e.to_string())
    });
    let tx = pool
        .as_ref()
        .map_err(|e| io::Error::other(format!("the background pool did not start: {e}")))?;
    // Sending only fails once every thread is gone, which a panicking job
    // cannot cause (jobs catch their panics).
    tx.lock()
        .map_err(|_| io::Error::other("the background pool's queue is poisoned"))?
        .send(job)
        .map_err(|_| io::Error::other("the background pool has stopped"))
}

fn spawn(cgroup: Option<&Path>) -> io::Result<(Sender<Job>, Option<IdleCgroup>)> {
    let cg = cgroup.map(IdleCgroup::prepare).transpose()?;
    let (tx, rx) = channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    let (ready_tx, ready_rx) = channel::<io::Result<()>>();
    for _ in 0..THREADS {
        let rx = rx.clone();
        let ready = ready_tx.clone();
        let cg = cg.clone();
        std::thread::Builder::new()
            .name("wharf-background".into())
            .spawn(move || {
                // Into the cgroup first: the move is what makes the thread
                // idle to the CPU controller; the class is the fallback.
                let joined = cg.as_ref().map_or(Ok(()), IdleCgroup::join);
                crate::lower_this_thread();
                let failed = joined.is_err();
                let _ = ready.send(joined);
                if !failed {
                    work(&rx);
                }
            })?;
    }
    drop(ready_tx);
    for _ in 0..THREADS {
        ready_rx
            .recv()
            .map_err(|_| io::Error::other("a background thread died starting"))??;
    }
    Ok((tx, cg))
}

fn work(rx: &Mutex<Receiver<Job>>) {
    loop {
        // The lock is held only while waiting for the next job.
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}
