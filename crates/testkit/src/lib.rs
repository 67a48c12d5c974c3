//! Gatehouse test kit (dev only): the real servers and harness pieces every integration test needs,
//! written once.
//!
//! - [`pg`]: a throwaway PostgreSQL (as root through `runuser -u postgres`), one cluster per test
//!   binary, a fresh database per test, Unix socket and 127.0.0.1 TCP, optional TLS;
//! - [`sshd`]: a throwaway OpenSSH `sshd` on a listener the test already bound (no port races);
//! - [`net`]: loopback listeners bound before use;
//! - [`moto`]: a throwaway S3-compatible server (moto, with versioning and object lock);
//! - [`process`]: children in their own process group, killed as a group on drop;
//! - [`within`]: a timeout on anything that can hang;
//! - [`layers`]: simple in-memory implementations of every core trait, for protocol tests that do not
//!   need the real layer.
//!
//! Nothing here waits on standard input, and everything stays on loopback.

#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod exec_corpus;
pub mod json_escapes;
pub mod layers;
pub mod moto;
pub mod net;
pub mod pg;
pub mod process;
pub mod sshd;
pub mod tls;

use std::future::Future;
use std::time::Duration;

/// Errors from the test kit's servers and tools.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestkitError {
    /// A required program is not installed.
    #[error("{0} not found: {1}")]
    Missing(String, String),
    /// A program ran and failed.
    #[error("{program} failed ({status}): {stderr}")]
    Command {
        /// The program.
        program: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A server did not become ready in time.
    #[error("{0} did not become ready within {1:?}: {2}")]
    NotReady(String, Duration, String),
    /// An I/O error.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs `fut` with a deadline; panics with `what` if it does not finish in time. Every test that can
/// hang should go through this.
pub async fn within<F: Future>(limit: Duration, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {limit:?}"),
    }
}

/// Whether the current process runs as root (CI does).
pub fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}
