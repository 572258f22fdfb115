//! How many upload requests may stream their bodies at once: in all, and
//! per client address. An upload holds memory, a file and a connection
//! while its body arrives, so a client that opens thousands and stalls them
//! must meet a limit with a clear answer (`429 TOOMANYREQUESTS` with
//! `Retry-After`), not exhaust the server for everyone.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::{ApiError, ErrorCode};

pub(crate) struct UploadLimits {
    inner: Arc<Inner>,
}

struct Inner {
    total: usize,
    per_client: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    total: usize,
    by_client: HashMap<IpAddr, usize>,
}

/// One upload in progress; dropping it frees the place.
pub(crate) struct UploadSlot {
    inner: Arc<Inner>,
    client: Option<IpAddr>,
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        let mut s = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        s.total -= 1;
        if let Some(c) = self.client
            && let Some(n) = s.by_client.get_mut(&c)
        {
            *n -= 1;
            if *n == 0 {
                s.by_client.remove(&c);
            }
        }
        metrics::gauge!("wharf_uploads_in_progress").set(s.total as f64);
    }
}

impl UploadLimits {
    pub(crate) fn new(total: usize, per_client: usize) -> UploadLimits {
        UploadLimits {
            inner: Arc::new(Inner {
                total,
                per_client,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// A place for one more upload from `client`, or the error to answer.
    pub(crate) fn acquire(&self, client: Option<IpAddr>) -> Result<UploadSlot, ApiError> {
        let mut s = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        let busy = |msg: String| {
            metrics::counter!("wharf_uploads_refused_total").increment(1);
            ApiError::msg(ErrorCode::TooManyRequests, msg)
                .with_header(http::header::RETRY_AFTER, "5".into())
        };
        if s.total >= self.inner.total {
            return Err(busy(format!(
                "the registry has {} uploads in progress, its limit (http.limits.uploads): retry later",
                s.total
            )));
        }
        if let Some(c) = client {
            let n = s.by_client.entry(c).or_insert(0);
            if *n >= self.inner.per_client {
                return Err(busy(format!(
                    "{c} has {n} uploads in progress, the limit per client address \
                     (http.limits.uploadsperclient): finish or cancel some first"
                )));
            }
            *n += 1;
        }
        s.total += 1;
        metrics::gauge!("wharf_uploads_in_progress").set(s.total as f64);
        Ok(UploadSlot {
            inner: self.inner.clone(),
            client,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_in_all_and_per_client() {
        let l = UploadLimits::new(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let a1 = l.acquire(Some(a)).unwrap();
        let _a2 = l.acquire(Some(a)).unwrap();
        let e = l.acquire(Some(a)).err().unwrap();
        assert_eq!(e.code, ErrorCode::TooManyRequests);
        assert!(e.message.unwrap().contains("uploadsperclient"));
        let _b1 = l.acquire(Some(b)).unwrap();
        let e = l.acquire(Some(b)).err().unwrap();
        assert!(e.message.unwrap().contains("http.limits.uploads"));
        drop(a1);
        assert!(l.acquire(Some(b)).is_ok());
    }
}
