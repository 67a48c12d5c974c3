//! Test harness for the identity tests: locally generated signing keys and a token builder
//! ([`keys`]), and the real `oidc-provider` started as a child process ([`oidc`]).

pub mod keys;
pub mod oidc;

use std::time::Duration;

/// Every await in these tests goes through this, so nothing can hang CI.
pub async fn within<F: std::future::Future>(fut: F) -> F::Output {
    gatehouse_testkit::within(Duration::from_secs(60), fut).await
}
