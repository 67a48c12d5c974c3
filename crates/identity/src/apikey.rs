//! Service-account API keys: `gatehouse_sa_<id>_<secret>`, configured as (id, subject, groups,
//! expiry, SHA-256 of the secret) so the config file never holds a usable key.
//!
//! Promise: a key authenticates only if its id is configured, the hash of its secret matches
//! (compared in constant time) and it has not expired.

use std::collections::HashMap;
use std::sync::Arc;

use gatehouse_core::{
    AuthError, AuthErrorKind, AuthMethod, Authenticator, BoxFuture, Credential, Identity, Timestamp,
};
use serde::{Deserialize, Serialize};

use crate::IdentityError;
use crate::clock::{Clock, SystemClock};
use crate::opaque;

/// Visible prefix of service-account keys.
pub const SERVICE_ACCOUNT_KEY_PREFIX: &str = "gatehouse_sa_";

/// Issuer recorded for service-account identities.
pub const GATEWAY_ISSUER: &str = "gatehouse";

/// One configured service-account key (no secret in it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceAccountKeyConfig {
    /// The key id (the 16 hex characters after the prefix).
    pub id: String,
    /// The service account the key authenticates as.
    pub subject: String,
    /// Hex SHA-256 of the key's secret half.
    pub key_sha256: String,
    /// Groups of the service account.
    #[serde(default)]
    pub groups: Vec<String>,
    /// When the key stops working (RFC 3339); `None`: no expiry.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expires_at: Option<Timestamp>,
}

/// A newly generated key: the text to hand to the service account once, and the config entry.
pub struct NewServiceAccountKey {
    /// The full key. Shown once; never stored.
    pub key: String,
    /// What goes into the config file.
    pub config: ServiceAccountKeyConfig,
}

impl std::fmt::Debug for NewServiceAccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewServiceAccountKey")
            .field("key", &"<redacted>")
            .field("config", &self.config)
            .finish()
    }
}

/// Generates a random service-account key.
pub fn generate_service_account_key(
    subject: impl Into<String>,
    groups: Vec<String>,
    expires_at: Option<Timestamp>,
) -> NewServiceAccountKey {
    let (key, id, hash) = opaque::generate(SERVICE_ACCOUNT_KEY_PREFIX);
    NewServiceAccountKey {
        key,
        config: ServiceAccountKeyConfig {
            id,
            subject: subject.into(),
            key_sha256: hex::encode(hash),
            groups,
            expires_at,
        },
    }
}

#[derive(Debug)]
struct Entry {
    hash: [u8; 32],
    config: ServiceAccountKeyConfig,
}

/// The configured service-account keys.
#[derive(Debug)]
pub struct ServiceAccountKeys {
    by_id: HashMap<String, Entry>,
    clock: Arc<dyn Clock>,
}

impl ServiceAccountKeys {
    /// Builds the store, refusing malformed or duplicate entries.
    pub fn new(configs: Vec<ServiceAccountKeyConfig>) -> Result<Self, IdentityError> {
        let mut by_id = HashMap::new();
        for config in configs {
            let valid_id = config.id.len() == opaque::ID_LEN
                && config
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !valid_id {
                return Err(IdentityError::Config(format!(
                    "service account key id {:?} is not 16 lower-case hex characters",
                    config.id
                )));
            }
            if config.subject.is_empty() {
                return Err(IdentityError::Config(format!(
                    "service account key {}: empty subject",
                    config.id
                )));
            }
            let mut hash = [0u8; 32];
            hex::decode_to_slice(&config.key_sha256, &mut hash).map_err(|_| {
                IdentityError::Config(format!(
                    "service account key {}: key_sha256 is not 64 hex characters",
                    config.id
                ))
            })?;
            let id = config.id.clone();
            if by_id.insert(id.clone(), Entry { hash, config }).is_some() {
                return Err(IdentityError::Config(format!(
                    "service account key {id} is configured twice"
                )));
            }
        }
        Ok(Self {
            by_id,
            clock: Arc::new(SystemClock),
        })
    }

    /// Sets the clock used for expiry.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Verifies a presented key.
    pub fn verify(&self, key: &str) -> Result<Identity, AuthError> {
        let parsed = opaque::parse(SERVICE_ACCOUNT_KEY_PREFIX, key)
            .ok_or_else(|| AuthError::new(AuthErrorKind::Malformed, "not a service-account key"))?;
        let presented = opaque::hash_secret(parsed.secret);
        let entry = self.by_id.get(parsed.id);
        // Compare against a dummy for unknown ids so both paths do the same work.
        let expected = entry.map_or([0u8; 32], |e| e.hash);
        let matches = opaque::digests_equal(&presented, &expected);
        let entry = match entry {
            Some(entry) if matches => entry,
            _ => return Err(AuthError::from(AuthErrorKind::UnknownCredential)),
        };
        if entry
            .config
            .expires_at
            .is_some_and(|exp| exp <= self.clock.now())
        {
            return Err(AuthError::new(
                AuthErrorKind::Expired,
                "service-account key expired",
            ));
        }
        let mut identity = Identity::new(
            entry.config.subject.clone(),
            GATEWAY_ISSUER,
            AuthMethod::ApiKey,
        );
        identity.groups = entry.config.groups.clone();
        identity.expires_at = entry.config.expires_at;
        identity.claims.insert(
            "key_id".into(),
            serde_json::Value::String(entry.config.id.clone()),
        );
        Ok(identity)
    }
}

impl Authenticator for ServiceAccountKeys {
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

    #[test]
    fn generated_key_authenticates_and_wrong_secret_does_not() {
        let new = generate_service_account_key("ci-bot", vec!["ci".into()], None);
        let keys = ServiceAccountKeys::new(vec![new.config.clone()]).unwrap();
        let id = keys.verify(&new.key).unwrap();
        assert_eq!(id.subject, "ci-bot");
        assert_eq!(id.issuer, GATEWAY_ISSUER);
        assert_eq!(id.groups, vec!["ci"]);
        assert_eq!(id.method, AuthMethod::ApiKey);

        let mut forged = new.key.clone();
        let last = forged.pop().unwrap();
        forged.push(if last == 'A' { 'B' } else { 'A' });
        assert_eq!(
            keys.verify(&forged).unwrap_err().kind,
            AuthErrorKind::UnknownCredential
        );
        let other = generate_service_account_key("x", vec![], None);
        assert_eq!(
            keys.verify(&other.key).unwrap_err().kind,
            AuthErrorKind::UnknownCredential
        );
        assert_eq!(
            keys.verify("gatehouse_sa_short").unwrap_err().kind,
            AuthErrorKind::Malformed
        );
        assert!(!format!("{new:?}").contains(&new.key));
    }

    #[test]
    fn expired_key_is_refused() {
        let start = gatehouse_core::now();
        let clock = Arc::new(ManualClock::new(start));
        let new =
            generate_service_account_key("bot", vec![], Some(start + time::Duration::hours(1)));
        let keys = ServiceAccountKeys::new(vec![new.config])
            .unwrap()
            .with_clock(clock.clone());
        assert!(keys.verify(&new.key).is_ok());
        clock.advance(time::Duration::hours(1));
        assert_eq!(
            keys.verify(&new.key).unwrap_err().kind,
            AuthErrorKind::Expired
        );
    }

    #[test]
    fn bad_config_is_refused() {
        let good = generate_service_account_key("bot", vec![], None).config;
        let dup = ServiceAccountKeys::new(vec![good.clone(), good.clone()]);
        assert!(dup.is_err());
        let bad_hash = ServiceAccountKeyConfig {
            key_sha256: "zz".into(),
            ..good.clone()
        };
        assert!(ServiceAccountKeys::new(vec![bad_hash]).is_err());
        let bad_id = ServiceAccountKeyConfig {
            id: "XYZ".into(),
            ..good
        };
        assert!(ServiceAccountKeys::new(vec![bad_id]).is_err());
    }
}
