//! One authenticator for every credential format a caller may present: the key formats are
//! recognised by their prefix, anything shaped like a JWT goes to the OIDC verifier, and anything
//! else is refused as malformed — after the size cap, before any decoding.

use std::sync::Arc;

use gatehouse_core::{AuthError, AuthErrorKind, Authenticator, BoxFuture, Credential, Identity};

use crate::apikey::{SERVICE_ACCOUNT_KEY_PREFIX, ServiceAccountKeys};
use crate::exchange::{GATEWAY_KEY_PREFIX, GatewayKeyIssuer};
use crate::oidc::OidcAuthenticator;
use crate::token::{DEFAULT_MAX_TOKEN_BYTES, looks_like_jwt};

/// Routes each credential to the authenticator for its format.
#[derive(Debug, Clone)]
pub struct CompositeAuthenticator {
    service_accounts: Option<Arc<ServiceAccountKeys>>,
    gateway_keys: Option<Arc<GatewayKeyIssuer>>,
    oidc: Option<Arc<OidcAuthenticator>>,
    max_token_bytes: usize,
}

impl Default for CompositeAuthenticator {
    fn default() -> Self {
        Self::new()
    }
}

impl CompositeAuthenticator {
    /// An authenticator that accepts nothing until formats are added.
    pub fn new() -> Self {
        Self {
            service_accounts: None,
            gateway_keys: None,
            oidc: None,
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
        }
    }

    /// Accepts service-account keys.
    pub fn with_service_accounts(mut self, keys: Arc<ServiceAccountKeys>) -> Self {
        self.service_accounts = Some(keys);
        self
    }

    /// Accepts gateway keys from token exchange.
    pub fn with_gateway_keys(mut self, issuer: Arc<GatewayKeyIssuer>) -> Self {
        self.gateway_keys = Some(issuer);
        self
    }

    /// Accepts OIDC JWTs.
    pub fn with_oidc(mut self, oidc: Arc<OidcAuthenticator>) -> Self {
        self.oidc = Some(oidc);
        self
    }

    /// Sets the largest credential accepted (checked first).
    pub fn with_max_token_bytes(mut self, max: usize) -> Self {
        self.max_token_bytes = max;
        self
    }

    /// Verifies one token of any accepted format.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if token.len() > self.max_token_bytes {
            return Err(AuthError::new(
                AuthErrorKind::TooLarge,
                format!("credential is over the {}-byte limit", self.max_token_bytes),
            ));
        }
        let unsupported =
            || AuthError::new(AuthErrorKind::Unsupported, "credential type not enabled");
        if token.starts_with(SERVICE_ACCOUNT_KEY_PREFIX) {
            return self
                .service_accounts
                .as_ref()
                .ok_or_else(unsupported)?
                .verify(token);
        }
        if token.starts_with(GATEWAY_KEY_PREFIX) {
            return self
                .gateway_keys
                .as_ref()
                .ok_or_else(unsupported)?
                .verify(token);
        }
        if looks_like_jwt(token) {
            return self
                .oidc
                .as_ref()
                .ok_or_else(unsupported)?
                .verify(token)
                .await;
        }
        Err(AuthError::new(
            AuthErrorKind::Malformed,
            "not a JWT, service-account key or gateway key",
        ))
    }
}

impl Authenticator for CompositeAuthenticator {
    fn authenticate<'a>(
        &'a self,
        credential: &'a Credential,
    ) -> BoxFuture<'a, Result<Identity, AuthError>> {
        Box::pin(async move {
            match credential.token() {
                Some(token) => self.verify(token).await,
                None => Err(AuthError::new(
                    AuthErrorKind::Unsupported,
                    "a bearer token or key is required",
                )),
            }
        })
    }
}
