//! Concurrent sessions counted per identity and per target, so one identity cannot take every
//! upstream connection (the server's `max_connections`) from the others.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::PgProxyError;

/// Live session counts of one listener.
#[derive(Debug, Default)]
pub(crate) struct SessionCounts {
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    identities: HashMap<String, usize>,
    targets: HashMap<String, usize>,
}

/// One counted session; the counts go down when it is dropped.
#[derive(Debug)]
pub(crate) struct SessionSlot {
    owner: Arc<SessionCounts>,
    identity: String,
    target: String,
}

impl SessionCounts {
    /// Counts a new session of `identity` on `target`, or refuses it (53300) when either cap
    /// (`None`: no cap) is reached.
    pub(crate) fn acquire(
        self: &Arc<Self>,
        identity: &str,
        target: &str,
        per_identity: Option<usize>,
        per_target: Option<usize>,
    ) -> Result<SessionSlot, PgProxyError> {
        let mut c = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let by_identity = c.identities.get(identity).copied().unwrap_or(0);
        if let Some(max) = per_identity
            && by_identity >= max
        {
            return Err(PgProxyError::TooManySessions(format!(
                "too many sessions for this identity: at most {max} concurrent sessions per identity \
                     (max_sessions_per_identity)"
            )));
        }
        let by_target = c.targets.get(target).copied().unwrap_or(0);
        if let Some(max) = per_target
            && by_target >= max
        {
            return Err(PgProxyError::TooManySessions(format!(
                "too many sessions for target \"{target}\": at most {max} concurrent sessions per target \
                     (max_sessions_per_target)"
            )));
        }
        c.identities.insert(identity.to_string(), by_identity + 1);
        c.targets.insert(target.to_string(), by_target + 1);
        Ok(SessionSlot {
            owner: self.clone(),
            identity: identity.to_string(),
            target: target.to_string(),
        })
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut c = self
            .owner
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Counts {
            identities,
            targets,
        } = &mut *c;
        release(identities, &self.identity);
        release(targets, &self.target);
    }
}

fn release(map: &mut HashMap<String, usize>, key: &str) {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_identity_and_target_and_releases_on_drop() {
        let counts = Arc::new(SessionCounts::default());
        let a1 = counts.acquire("a", "t", Some(2), Some(3));
        let a2 = counts.acquire("a", "t", Some(2), Some(3));
        assert!(a1.is_ok() && a2.is_ok());
        let a3 = counts.acquire("a", "t", Some(2), Some(3));
        assert!(matches!(a3, Err(PgProxyError::TooManySessions(_))));
        let b1 = counts.acquire("b", "t", Some(2), Some(3));
        assert!(b1.is_ok());
        let b2 = counts.acquire("b", "t", Some(2), Some(3));
        assert!(matches!(b2, Err(PgProxyError::TooManySessions(m)) if m.contains("target")));
        assert!(counts.acquire("b", "u", Some(2), Some(3)).is_ok());
        drop(a1);
        assert!(counts.acquire("a", "t", Some(2), Some(3)).is_ok());
    }
}
