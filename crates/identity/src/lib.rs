//! Gatehouse authenticators: turn an OIDC JWT, a service-account API key or a short-lived gateway
//! key into an [`gatehouse_core::Identity`] — or refuse it with a precise reason that never echoes
//! the token. Also token exchange and the local dev issuer.

#![forbid(unsafe_code)]
