//! Gatehouse authenticators: turn an OIDC JWT, a service-account API key or a short-lived gateway
//! key into an [`gatehouse_core::Identity`] — or refuse it with a precise reason that never echoes
//! the token. Also token exchange and the local dev issuer.
//!
//! - [`OidcAuthenticator`]: multi-issuer JWT verification (discovery, cached JWKS with rate-limited
//!   refresh on unknown `kid` and scheduled refresh, static JWKS files), per-issuer algorithm
//!   allow-list, `iss`/`aud`/`exp`/`nbf`/`iat` with leeway, access-token enforcement, claims mapping;
//! - [`ServiceAccountKeys`]: `gatehouse_sa_…` keys stored as SHA-256 hashes, constant-time compare;
//! - [`GatewayKeyIssuer`]: token exchange to short-lived `gatehouse_gk_…` keys (under 100 chars);
//! - [`DevIssuer`]: an Ed25519 key on disk that mints tokens for the quickstart and tests;
//! - [`CompositeAuthenticator`]: one [`gatehouse_core::Authenticator`] for all formats.
//!
//! Every token is refused over [`DEFAULT_MAX_TOKEN_BYTES`] before any decoding. Only aws-lc-rs
//! crypto is used (through `jsonwebtoken` and `rustls`).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod apikey;
pub mod claims;
pub mod clock;
pub mod composite;
pub mod config;
pub mod dev;
mod error;
pub mod exchange;
mod http;
pub mod jwks;
pub mod oidc;
mod opaque;
pub mod token;

pub use apikey::{
    NewServiceAccountKey, SERVICE_ACCOUNT_KEY_PREFIX, ServiceAccountKeyConfig, ServiceAccountKeys,
    generate_service_account_key,
};
pub use clock::{Clock, ManualClock, SystemClock};
pub use composite::CompositeAuthenticator;
pub use config::{AccessTokenRules, ClaimsMapping, IdentityConfig, JwksSource, OidcProviderConfig};
pub use dev::DevIssuer;
pub use error::IdentityError;
pub use exchange::{GATEWAY_KEY_PREFIX, GatewayKey, GatewayKeyIssuer};
pub use oidc::OidcAuthenticator;
pub use token::{DEFAULT_MAX_TOKEN_BYTES, SigningAlgorithm, UnverifiedJwt};
