//! Failed-login throttling per client address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Addresses tracked at most; beyond it the oldest windows are dropped, so a
/// flood of addresses costs bounded memory.
const MAX_TRACKED: usize = 100_000;

pub struct Throttle {
    max_failures: u32,
    window: Duration,
    state: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl Throttle {
    /// At most `max_failures` failed logins per address in any `window`.
    pub fn new(max_failures: u32, window: Duration) -> Throttle {
        Throttle {
            max_failures,
            window,
            state: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(seconds to wait)` while `addr` is over its limit.
    pub fn check(&self, addr: IpAddr) -> Result<(), u64> {
        let Ok(g) = self.state.lock() else {
            return Ok(());
        };
        match g.get(&addr) {
            Some((start, n)) if *n >= self.max_failures => {
                let left = self.window.saturating_sub(start.elapsed());
                if left.is_zero() {
                    Ok(())
                } else {
                    Err(left.as_secs().max(1))
                }
            }
            _ => Ok(()),
        }
    }

    pub fn failure(&self, addr: IpAddr) {
        let Ok(mut g) = self.state.lock() else { return };
        let now = Instant::now();
        if g.len() >= MAX_TRACKED && !g.contains_key(&addr) {
            let window = self.window;
            g.retain(|_, (start, _)| now.duration_since(*start) < window);
            if g.len() >= MAX_TRACKED {
                g.clear();
            }
        }
        let e = g.entry(addr).or_insert((now, 0));
        if now.duration_since(e.0) >= self.window {
            *e = (now, 0);
        }
        e.1 += 1;
    }

    pub fn success(&self, addr: IpAddr) {
        if let Ok(mut g) = self.state.lock() {
            g.remove(&addr);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_the_limit_then_forgives() {
        let t = Throttle::new(3, Duration::from_millis(200));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(t.check(a).is_ok());
            t.failure(a);
        }
        assert!(t.check(a).is_err());
        assert!(t.check(b).is_ok(), "other addresses are not affected");
        std::thread::sleep(Duration::from_millis(250));
        assert!(t.check(a).is_ok(), "the window passed");
        t.failure(b);
        t.success(b);
        assert!(t.check(b).is_ok());
    }
}
