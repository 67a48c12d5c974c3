//! The set of layers a protocol crate runs every session through.

use std::sync::Arc;

use crate::{Approvals, Authenticator, EgressGuard, GateHooks, Masker, Policy, Recorder};

/// The layers, as shared trait objects. Built by the binary (or a test, or another team's gateway)
/// and handed to each protocol listener; cheap to clone.
#[derive(Clone)]
pub struct Pipeline {
    /// Verifies callers.
    pub authenticator: Arc<dyn Authenticator + Send + Sync>,
    /// Decides operations.
    pub policy: Arc<dyn Policy + Send + Sync>,
    /// Holds reviewed operations for approval.
    pub approvals: Arc<dyn Approvals + Send + Sync>,
    /// Masks results and streams.
    pub masker: Arc<dyn Masker + Send + Sync>,
    /// Blocks held secrets on every outbound path.
    pub egress: Arc<dyn EgressGuard + Send + Sync>,
    /// Records control events and session recordings.
    pub recorder: Arc<dyn Recorder + Send + Sync>,
    /// Phase hooks of every protocol ([`crate::GateHooks`]); [`crate::NoHooks`] changes nothing.
    pub hooks: Arc<dyn GateHooks + Send + Sync>,
}

impl Pipeline {
    /// Hooks that change nothing, for a pipeline without hooks.
    pub fn no_hooks() -> Arc<dyn GateHooks + Send + Sync> {
        Arc::new(crate::NoHooks)
    }
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").finish_non_exhaustive()
    }
}
