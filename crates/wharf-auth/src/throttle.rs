//! Failed-login throttling that an attacker cannot turn into a lockout.
//!
//! Failures count against the pair (account, client address): ten wrong
//! passwords for `alice` from one address slow down `alice` from that address
//! only, never `alice` from elsewhere nor `bob` from the same NAT. After the
//! free attempts each failure blocks the pair twice as long as the one before
//! (1 s, 2 s, 4 s, … up to `auth.lockout.maxdelay`), so a typo costs a second
//! and a guesser gets about twenty tries an hour. Names that name no account
//! count together per address with their own allowance
//! (`auth.lockout.unknownattempts`), which bounds name-guessing without
//! touching real accounts. IPv6 clients are counted by their /64, which one
//! client can fill with addresses.
//!
//! The counts live in the metadata store, so every process and node on it
//! sees the same failures and an administrator can list and clear them
//! (`wharf throttle`, `/api/v1/throttles`).

use std::net::IpAddr;
use std::sync::Arc;

use wharf_meta::{AuthStore, MetaError, Throttle, ThrottleKey, ThrottlePolicy};

/// The address failures are counted under: the IPv4 address, or the /64
/// network of an IPv6 one.
pub fn throttle_addr(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                let net = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
                format!("{net}/64")
            }
        },
    }
}

/// Parses what an administrator names: an address (normalised as
/// [`throttle_addr`] does) or an IPv6 /64 as listed.
pub fn parse_throttle_addr(s: &str) -> Option<String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(throttle_addr(ip));
    }
    let (net, len) = s.split_once('/')?;
    let ip: std::net::Ipv6Addr = net.parse().ok()?;
    (len == "64").then(|| throttle_addr(IpAddr::V6(ip)))
}

/// A throttle as the admin API returns it and the CLI reads it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ThrottleEntry {
    /// The account; `null` for the address's names that name no account.
    pub account: Option<String>,
    /// The client's address, or its IPv6 /64.
    pub address: String,
    pub failures: u32,
    pub first_failure: String,
    pub last_failure: String,
    /// Set while logins under this entry are refused.
    pub blocked_until: Option<String>,
}

impl ThrottleEntry {
    pub fn new(t: &Throttle, now_ms: i64) -> ThrottleEntry {
        ThrottleEntry {
            account: t.key.account.clone(),
            address: t.key.addr.clone(),
            failures: t.failures,
            first_failure: crate::rfc3339(t.first_failure_ms / 1000),
            last_failure: crate::rfc3339(t.last_failure_ms / 1000),
            blocked_until: (t.blocked_until_ms > now_ms)
                .then(|| crate::rfc3339((t.blocked_until_ms + 999) / 1000)),
        }
    }
}

/// How the audit log names a clearing of throttles (`*`: any).
pub fn clear_resource(account: Option<&str>, addr: Option<&str>) -> String {
    format!(
        "account={} address={}",
        account.unwrap_or("*"),
        addr.unwrap_or("*")
    )
}

/// What clearing throttles did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ThrottlesCleared {
    pub cleared: u64,
}

pub struct LoginThrottle {
    store: Arc<dyn AuthStore>,
    /// For (account, address) keys.
    pub account: ThrottlePolicy,
    /// For the unknown-name key of an address.
    pub unknown: ThrottlePolicy,
}

impl LoginThrottle {
    pub fn new(
        store: Arc<dyn AuthStore>,
        account: ThrottlePolicy,
        unknown: ThrottlePolicy,
    ) -> LoginThrottle {
        LoginThrottle {
            store,
            account,
            unknown,
        }
    }

    fn policy(&self, key: &ThrottleKey) -> &ThrottlePolicy {
        if key.account.is_some() {
            &self.account
        } else {
            &self.unknown
        }
    }

    /// `Err(seconds to wait)` while `key` is blocked at `now_ms`; else
    /// whether it has failures (a success then clears them).
    pub async fn check(
        &self,
        key: &ThrottleKey,
        now_ms: i64,
    ) -> Result<Result<bool, u64>, MetaError> {
        let t = self.store.throttle(key, self.policy(key), now_ms).await?;
        Ok(match t {
            Some(t) if t.blocked_until_ms > now_ms => {
                metrics::counter!("wharf_login_throttled_total").increment(1);
                Err(((t.blocked_until_ms - now_ms) as u64).div_ceil(1000).max(1))
            }
            Some(_) => Ok(true),
            None => Ok(false),
        })
    }

    pub async fn failure(&self, key: &ThrottleKey, now_ms: i64) -> Result<Throttle, MetaError> {
        let t = self
            .store
            .throttle_failure(key, self.policy(key), now_ms)
            .await?;
        if t.blocked_until_ms > 0 {
            tracing::warn!(
                account = key.account.as_deref().unwrap_or("(unknown names)"),
                addr = %key.addr,
                failures = t.failures,
                blocked_for_ms = t.blocked_until_ms - now_ms,
                "failed logins: blocking further attempts for a while"
            );
        }
        Ok(t)
    }

    pub async fn success(&self, key: &ThrottleKey) -> Result<(), MetaError> {
        self.store
            .clear_throttles(key.account.as_deref(), Some(&key.addr))
            .await
            .map(|_| ())
    }

    /// Keys with failures, newest first: accounts' and unknown names'.
    pub async fn list(&self, now_ms: i64, limit: usize) -> Result<Vec<Throttle>, MetaError> {
        // Listed under the longer window, then each judged by its own.
        let wide = ThrottlePolicy {
            window_ms: self.account.window_ms.max(self.unknown.window_ms),
            ..self.account
        };
        let mut all = self.store.throttles(&wide, now_ms, limit).await?;
        all.retain(|t| {
            !self
                .policy(&t.key)
                .expired(t.last_failure_ms, t.blocked_until_ms, now_ms)
        });
        Ok(all)
    }

    pub async fn clear(&self, account: Option<&str>, addr: Option<&str>) -> Result<u64, MetaError> {
        self.store.clear_throttles(account, addr).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_ipv6_networks() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(throttle_addr(ip("192.0.2.7")), "192.0.2.7");
        assert_eq!(throttle_addr(ip("::ffff:192.0.2.7")), "192.0.2.7");
        assert_eq!(
            throttle_addr(ip("2001:db8:1:2:3:4:5:6")),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            throttle_addr(ip("2001:db8:1:2:ffff::1")),
            throttle_addr(ip("2001:db8:1:2::9")),
            "one /64 is one client"
        );
        assert_eq!(
            parse_throttle_addr("2001:db8:1:2::/64").as_deref(),
            Some("2001:db8:1:2::/64")
        );
        assert_eq!(
            parse_throttle_addr("2001:db8:1:2::5").as_deref(),
            Some("2001:db8:1:2::/64")
        );
        assert_eq!(parse_throttle_addr("10.1.2.3").as_deref(), Some("10.1.2.3"));
        assert_eq!(parse_throttle_addr("10.0.0.0/8"), None);
        assert_eq!(parse_throttle_addr("nonsense"), None);
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        let p = ThrottlePolicy {
            attempts: 10,
            window_ms: 300_000,
            delay_ms: 1_000,
            max_delay_ms: 3_600_000,
        };
        let d: Vec<i64> = [1, 9, 10, 11, 12, 21, 22, 100, u32::MAX]
            .iter()
            .map(|&n| p.delay_ms(n))
            .collect();
        assert_eq!(
            d,
            [
                0, 0, 1_000, 2_000, 4_000, 2_048_000, 3_600_000, 3_600_000, 3_600_000
            ]
        );
    }
}
