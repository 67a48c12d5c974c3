//! The login name an agent types (`TARGET` or `login@TARGET`) and the per-source limiter on
//! failed logins.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::LoginRateLimit;

/// What the SSH user name asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginName {
    /// The target's name.
    pub target: String,
    /// The account asked for on the target, if given (`login@TARGET`).
    pub login: Option<String>,
}

impl LoginName {
    /// Splits at the last `@`: `deploy@web-1` → login `deploy`, target `web-1`. Empty parts are
    /// refused (`None`).
    pub fn parse(user: &str) -> Option<LoginName> {
        match user.rsplit_once('@') {
            Some((login, target)) if !login.is_empty() && !target.is_empty() => Some(LoginName {
                target: target.to_string(),
                login: Some(login.to_string()),
            }),
            Some(_) => None,
            None if !user.is_empty() => Some(LoginName {
                target: user.to_string(),
                login: None,
            }),
            None => None,
        }
    }
}

/// Counts failed logins per source address in a sliding window.
#[derive(Debug)]
pub struct FailedLoginLimiter {
    limit: LoginRateLimit,
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl FailedLoginLimiter {
    /// A limiter with `limit`.
    pub fn new(limit: LoginRateLimit) -> Self {
        Self {
            limit,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn window(&self) -> Duration {
        Duration::from_secs(self.limit.window_secs)
    }

    /// Whether `source` has used up its failures.
    pub fn is_limited(&self, source: IpAddr) -> bool {
        if self.limit.max_failures == 0 {
            return false;
        }
        let Ok(mut map) = self.failures.lock() else {
            // A poisoned lock means a panic elsewhere: refuse (fail closed).
            return true;
        };
        let now = Instant::now();
        let window = self.window();
        let Some(q) = map.get_mut(&source) else {
            return false;
        };
        while q.front().is_some_and(|t| now.duration_since(*t) >= window) {
            q.pop_front();
        }
        q.len() >= self.limit.max_failures as usize
    }

    /// Notes one failure from `source`.
    pub fn record_failure(&self, source: IpAddr) {
        if self.limit.max_failures == 0 {
            return;
        }
        if let Ok(mut map) = self.failures.lock() {
            // Bound memory under a flood from many addresses: start over rather than grow.
            if map.len() > 100_000 {
                map.clear();
            }
            let q = map.entry(source).or_default();
            q.push_back(Instant::now());
            while q.len() > self.limit.max_failures as usize {
                q.pop_front();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            LoginName::parse("web"),
            Some(LoginName {
                target: "web".into(),
                login: None
            })
        );
        assert_eq!(
            LoginName::parse("deploy@web"),
            Some(LoginName {
                target: "web".into(),
                login: Some("deploy".into())
            })
        );
        assert_eq!(
            LoginName::parse("a@b@web").map(|l| l.login),
            Some(Some("a@b".into()))
        );
        assert_eq!(LoginName::parse(""), None);
        assert_eq!(LoginName::parse("@web"), None);
        assert_eq!(LoginName::parse("x@"), None);
    }

    #[test]
    fn limiter_counts_per_source() {
        let l = FailedLoginLimiter::new(LoginRateLimit {
            max_failures: 2,
            window_secs: 3600,
        });
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(!l.is_limited(a));
        l.record_failure(a);
        assert!(!l.is_limited(a));
        l.record_failure(a);
        assert!(l.is_limited(a));
        assert!(!l.is_limited(b));
        let off = FailedLoginLimiter::new(LoginRateLimit {
            max_failures: 0,
            window_secs: 1,
        });
        for _ in 0..10 {
            off.record_failure(a);
        }
        assert!(!off.is_limited(a));
    }
}
