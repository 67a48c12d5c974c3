//! Integration tests of gatehouse-identity: a real OIDC provider (`oidc-provider`), locally signed
//! tokens for every refusal the verifier must make, keys, exchange, dev issuer, and properties.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod exchange_and_keys;
mod properties;
mod provider;
mod refusals;
mod support;
mod tls;
