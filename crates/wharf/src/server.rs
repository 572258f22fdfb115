//! Listening: binding the configured addresses, and the file-descriptor
//! limit a server holding thousands of connections and uploads needs.

use std::net::SocketAddr;

use anyhow::{Context, bail};
use tokio::net::TcpListener;

/// Binds the first of `addrs` that works for each address family asked for.
/// `[::]` takes IPv4 as well on Linux, so a following `0.0.0.0` of the same
/// port is skipped when the IPv6 bind succeeded.
pub async fn bind(addrs: &[SocketAddr]) -> anyhow::Result<TcpListener> {
    let mut last_err = None;
    for a in addrs {
        match TcpListener::bind(a).await {
            Ok(l) => return Ok(l),
            Err(e) => last_err = Some((a, e)),
        }
    }
    match last_err {
        Some((a, e)) => Err(e).with_context(|| format!("listening on {a}")),
        None => bail!("no address to listen on"),
    }
}

/// Raises the soft limit on open files to the hard limit, as Go programs
/// (distribution among them) do at start: every connection and every
/// upload in progress holds a descriptor, and the usual soft limit of 1024
/// would let a few hundred stalled clients lock everyone else out. Returns
/// the limit now in force.
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        lim = raised;
    }
    Ok(lim.rlim_cur)
}
