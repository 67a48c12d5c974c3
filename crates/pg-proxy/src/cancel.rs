//! Cancel keys: each client gets the upstream session's real process id (clients look themselves
//! up in `pg_stat_activity`, match notifications' pids, terminate their own backend) with a
//! secret of the gateway's own, which maps to the upstream session's key. A client never learns
//! the upstream secret, so a cancel can only go through the gateway.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::config::UpstreamAddress;

/// What a gateway cancel key resolves to.
#[derive(Debug, Clone)]
pub(crate) struct CancelTarget {
    pub(crate) address: UpstreamAddress,
    pub(crate) upstream_pid: i32,
    pub(crate) upstream_secret: Bytes,
    /// Woken on cancel, so a session waiting for an approval abandons it.
    pub(crate) notify: Arc<Notify>,
}

/// Live sessions' cancel keys.
#[derive(Debug, Default)]
pub(crate) struct CancelRegistry {
    entries: Mutex<HashMap<(i32, [u8; 4]), CancelTarget>>,
}

impl CancelRegistry {
    /// Registers a session; returns the key (the upstream pid, a fresh gateway secret) to hand
    /// the client.
    pub(crate) fn register(&self, target: CancelTarget) -> (i32, [u8; 4]) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let pid = target.upstream_pid;
        loop {
            // The secret is what protects the key (two targets' servers may share a pid).
            let secret: [u8; 4] = rand::random();
            if let std::collections::hash_map::Entry::Vacant(v) = entries.entry((pid, secret)) {
                v.insert(target);
                return (pid, secret);
            }
        }
    }

    /// Forgets a session's key.
    pub(crate) fn remove(&self, key: (i32, [u8; 4])) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
    }

    /// Looks a key up; unknown keys (and keys of the wrong length) resolve to nothing.
    pub(crate) fn lookup(&self, pid: i32, secret: &[u8]) -> Option<CancelTarget> {
        let secret: [u8; 4] = secret.try_into().ok()?;
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(pid, secret))
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_resolve_only_with_the_exact_secret() {
        let r = CancelRegistry::default();
        let t = CancelTarget {
            address: UpstreamAddress::Tcp {
                host: "127.0.0.1".into(),
                port: 1,
            },
            upstream_pid: 42,
            upstream_secret: Bytes::from_static(&[1, 2, 3, 4]),
            notify: Arc::new(Notify::new()),
        };
        let (pid, secret) = r.register(t.clone());
        assert_eq!(pid, 42, "the client sees the server's process id");
        assert_ne!(&secret[..], &[1, 2, 3, 4], "but never its secret");
        assert_eq!(r.lookup(pid, &secret).map(|t| t.upstream_pid), Some(42));
        // A second session of another server with the same pid gets its own secret.
        let (pid2, secret2) = r.register(t);
        assert_eq!(pid2, 42);
        assert!(r.lookup(pid2, &secret2).is_some() && secret2 != secret);
        let mut wrong = secret;
        wrong[0] ^= 1;
        assert!(r.lookup(pid, &wrong).is_none());
        assert!(r.lookup(pid, &[0; 8]).is_none());
        r.remove((pid, secret));
        assert!(r.lookup(pid, &secret).is_none());
    }
}
