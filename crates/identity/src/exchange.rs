//! Token exchange: a verified JWT becomes a short-lived opaque gateway key
//! (`gatehouse_gk_<id>_<secret>`, 73 characters) with the same identity and groups, expiring no
//! later than the JWT. It exists because OpenSSH cuts passwords at 1023 bytes while real IdP
//! tokens are often longer; it is handy for psql too.
//!
//! Keys live in this process's memory, stored as SHA-256 hashes: a restart revokes them all, and
//! replicas behind a load balancer do not share them (a shared store is future work).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use gatehouse_core::{
    AuthError, AuthErrorKind, AuthMethod, Authenticator, BoxFuture, Credential, Identity, Timestamp,
};

use crate::clock::{Clock, SystemClock};
use crate::opaque;

/// Visible prefix of gateway keys.
pub const GATEWAY_KEY_PREFIX: &str = "gatehouse_gk_";

/// Default bound on live keys, so exchange cannot grow memory without limit.
pub const DEFAULT_MAX_LIVE_KEYS: usize = 100_000;

/// A freshly issued gateway key. `Debug` never prints the key.
#[derive(Clone)]
pub struct GatewayKey {
    key: String,
    /// When it stops working.
    pub expires_at: Timestamp,
}

impl GatewayKey {
    /// The key text to hand to the caller.
    pub fn as_str(&self) -> &str {
        &self.key
    }
}

impl std::fmt::Debug for GatewayKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayKey")
            .field("key", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

#[derive(Debug)]
struct Record {
    hash: [u8; 32],
    identity: Identity,
    expires_at: Timestamp,
}

/// Issues and verifies gateway keys.
#[derive(Debug)]
pub struct GatewayKeyIssuer {
    keys: RwLock<HashMap<String, Record>>,
    max_ttl: time::Duration,
    max_live_keys: usize,
    clock: Arc<dyn Clock>,
}

impl GatewayKeyIssuer {
    /// An issuer whose keys live at most `max_ttl`.
    pub fn new(max_ttl: std::time::Duration) -> Self {
        Self {
            keys: RwLock::new(HashMap::new()),
            max_ttl: time::Duration::try_from(max_ttl).unwrap_or(time::Duration::HOUR),
            max_live_keys: DEFAULT_MAX_LIVE_KEYS,
            clock: Arc::new(SystemClock),
        }
    }

    /// Sets the clock used for expiry.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Sets the bound on live keys.
    pub fn with_max_live_keys(mut self, max: usize) -> Self {
        self.max_live_keys = max;
        self
    }

    /// Verifies `token` with `verifier` and issues a key for the identity it proves. Only
    /// identities from a JWT (OIDC or the dev issuer) may be exchanged.
    pub async fn exchange(
        &self,
        verifier: &dyn Authenticator,
        token: &str,
        ttl: Option<std::time::Duration>,
    ) -> Result<GatewayKey, AuthError> {
        let identity = verifier
            .authenticate(&Credential::Bearer(token.to_string()))
            .await?;
        self.issue(&identity, ttl)
    }

    /// Issues a key for an already verified identity: same subject, issuer, groups and claims;
    /// expiry the earliest of the identity's, `now + ttl` and `now + max_ttl`.
    pub fn issue(
        &self,
        identity: &Identity,
        ttl: Option<std::time::Duration>,
    ) -> Result<GatewayKey, AuthError> {
        if !matches!(identity.method, AuthMethod::Oidc | AuthMethod::DevIssuer) {
            return Err(AuthError::new(
                AuthErrorKind::Unsupported,
                "only identities proven by a JWT can be exchanged",
            ));
        }
        let now = self.clock.now();
        let requested = ttl
            .and_then(|t| time::Duration::try_from(t).ok())
            .map_or(self.max_ttl, |t| t.min(self.max_ttl));
        let mut expires_at = now + requested;
        if let Some(exp) = identity.expires_at {
            expires_at = expires_at.min(exp);
        }
        if expires_at <= now {
            return Err(AuthError::new(
                AuthErrorKind::Expired,
                "the token has expired",
            ));
        }
        let (key, id, hash) = opaque::generate(GATEWAY_KEY_PREFIX);
        let mut stored = identity.clone();
        stored.method = AuthMethod::GatewayKey;
        stored.expires_at = Some(expires_at);
        let mut keys = self
            .keys
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if keys.len() >= self.max_live_keys {
            keys.retain(|_, record| record.expires_at > now);
            if keys.len() >= self.max_live_keys {
                return Err(AuthError::new(
                    AuthErrorKind::RateLimited,
                    "too many live gateway keys",
                ));
            }
        }
        keys.insert(
            id,
            Record {
                hash,
                identity: stored,
                expires_at,
            },
        );
        Ok(GatewayKey { key, expires_at })
    }

    /// Verifies a presented gateway key.
    pub fn verify(&self, key: &str) -> Result<Identity, AuthError> {
        let parsed = opaque::parse(GATEWAY_KEY_PREFIX, key)
            .ok_or_else(|| AuthError::new(AuthErrorKind::Malformed, "not a gateway key"))?;
        let presented = opaque::hash_secret(parsed.secret);
        let now = self.clock.now();
        let keys = self
            .keys
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let record = keys.get(parsed.id);
        let expected = record.map_or([0u8; 32], |r| r.hash);
        let matches = opaque::digests_equal(&presented, &expected);
        match record {
            Some(record) if matches => {
                if record.expires_at <= now {
                    Err(AuthError::new(
                        AuthErrorKind::Expired,
                        "gateway key expired",
                    ))
                } else {
                    Ok(record.identity.clone())
                }
            }
            _ => Err(AuthError::from(AuthErrorKind::UnknownCredential)),
        }
    }

    /// Revokes a key (by its full text). Returns whether it existed.
    pub fn revoke(&self, key: &str) -> bool {
        let Some(parsed) = opaque::parse(GATEWAY_KEY_PREFIX, key) else {
            return false;
        };
        let presented = opaque::hash_secret(parsed.secret);
        let mut keys = self
            .keys
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let owned = keys
            .get(parsed.id)
            .is_some_and(|r| opaque::digests_equal(&presented, &r.hash));
        owned && keys.remove(parsed.id).is_some()
    }

    /// Forgets expired keys; returns how many are still live.
    pub fn purge_expired(&self) -> usize {
        let now = self.clock.now();
        let mut keys = self
            .keys
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        keys.retain(|_, record| record.expires_at > now);
        keys.len()
    }
}

impl Authenticator for GatewayKeyIssuer {
    fn authenticate<'a>(
        &'a self,
        credential: &'a Credential,
    ) -> BoxFuture<'a, Result<Identity, AuthError>> {
        Box::pin(async move {
            match credential.token() {
                Some(token) => self.verify(token),
                None => Err(AuthError::new(
                    AuthErrorKind::Unsupported,
                    "a key is required",
                )),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn jwt_identity(expires_in: time::Duration, now: Timestamp) -> Identity {
        let mut id = Identity::new("alice", "https://idp", AuthMethod::Oidc).with_group("dba");
        id.expires_at = Some(now + expires_in);
        id
    }

    #[test]
    fn issued_key_carries_identity_and_never_outlives_the_jwt() {
        let now = gatehouse_core::now();
        let clock = Arc::new(ManualClock::new(now));
        let issuer =
            GatewayKeyIssuer::new(std::time::Duration::from_secs(3600)).with_clock(clock.clone());
        let original = jwt_identity(time::Duration::minutes(10), now);
        let key = issuer.issue(&original, None).unwrap();
        assert!(key.as_str().len() < 100);
        assert!(key.as_str().starts_with(GATEWAY_KEY_PREFIX));
        assert_eq!(Some(key.expires_at), original.expires_at);
        assert!(!format!("{key:?}").contains(key.as_str()));
        let verified = issuer.verify(key.as_str()).unwrap();
        assert_eq!(verified.subject, "alice");
        assert_eq!(verified.issuer, "https://idp");
        assert_eq!(verified.groups, vec!["dba"]);
        assert_eq!(verified.method, AuthMethod::GatewayKey);

        let short = issuer
            .issue(&original, Some(std::time::Duration::from_secs(60)))
            .unwrap();
        assert_eq!(short.expires_at, now + time::Duration::seconds(60));

        clock.advance(time::Duration::minutes(10));
        assert_eq!(
            issuer.verify(key.as_str()).unwrap_err().kind,
            AuthErrorKind::Expired
        );
        assert_eq!(issuer.purge_expired(), 0);
        assert_eq!(
            issuer.verify(key.as_str()).unwrap_err().kind,
            AuthErrorKind::UnknownCredential
        );
    }

    #[test]
    fn refuses_to_exchange_non_jwt_or_expired_identities() {
        let now = gatehouse_core::now();
        let issuer = GatewayKeyIssuer::new(std::time::Duration::from_secs(3600));
        let api = Identity::new("bot", "gatehouse", AuthMethod::ApiKey);
        assert_eq!(
            issuer.issue(&api, None).unwrap_err().kind,
            AuthErrorKind::Unsupported
        );
        let expired = jwt_identity(time::Duration::seconds(-1), now);
        assert_eq!(
            issuer.issue(&expired, None).unwrap_err().kind,
            AuthErrorKind::Expired
        );
    }

    #[test]
    fn revoke_and_bounded_store() {
        let now = gatehouse_core::now();
        let issuer =
            GatewayKeyIssuer::new(std::time::Duration::from_secs(3600)).with_max_live_keys(2);
        let id = jwt_identity(time::Duration::minutes(5), now);
        let a = issuer.issue(&id, None).unwrap();
        let _b = issuer.issue(&id, None).unwrap();
        assert_eq!(
            issuer.issue(&id, None).unwrap_err().kind,
            AuthErrorKind::RateLimited
        );
        assert!(issuer.revoke(a.as_str()));
        assert_eq!(
            issuer.verify(a.as_str()).unwrap_err().kind,
            AuthErrorKind::UnknownCredential
        );
        assert!(issuer.issue(&id, None).is_ok());
    }
}
