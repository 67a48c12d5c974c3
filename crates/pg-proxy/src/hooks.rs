//! The session's phase hooks (pingora style): each runs at one well-defined point, has a default,
//! and lets an embedder observe or tighten what the gateway does without forking the proxy.
//!
//! The gateway's own behaviour (policy, approvals, masking, recording) runs around these hooks;
//! a hook can add knowledge (sources of a column) or observe, never bypass a layer. Decisions
//! about statements go through the operation gate's [`gatehouse_core::GateHooks`] (set in the
//! [`gatehouse_core::Pipeline`]), which can only make them stricter.

use gatehouse_core::{BoxFuture, FieldDesc, Identity, SessionId, Target};

use crate::PgProxyError;

/// Who and what a session is about, handed to every hook.
#[derive(Debug, Clone)]
pub struct SessionContext {
    /// Session id (also in every audit event).
    pub session: SessionId,
    /// The authenticated caller.
    pub identity: Identity,
    /// The target named in the startup packet.
    pub target: Target,
    /// Caller's address.
    pub client_addr: String,
}

/// Phase hooks of a PostgreSQL session. Every method has a default that changes nothing.
pub trait PgHooks: Send + Sync {
    /// After the caller is authenticated and before the gateway connects upstream. `Err` refuses
    /// the session with the error's SQLSTATE.
    fn on_startup<'a>(
        &'a self,
        _session: &'a SessionContext,
    ) -> BoxFuture<'a, Result<(), PgProxyError>> {
        Box::pin(async { Ok(()) })
    }

    /// For each result shape, after the catalog and lineage filled in the columns' sources and
    /// before [`gatehouse_core::Masker::plan`] sees them.
    fn on_row_description(&self, _session: &SessionContext, _fields: &mut [FieldDesc]) {}

    /// Whether [`PgHooks::on_data_row`] should be called. Off by default: observing rows costs
    /// a second walk over each one.
    fn wants_data_rows(&self) -> bool {
        false
    }

    /// For each row, after masking: the values exactly as the client will receive them. Called
    /// only when [`PgHooks::wants_data_rows`] is true.
    fn on_data_row(&self, _session: &SessionContext, _values: &[Option<&[u8]>]) {}

    /// When the session ends, with the reason recorded in `SessionEnd`.
    fn on_end(&self, _session: &SessionContext, _reason: &str) {}
}

/// Hooks that change nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultHooks;

impl PgHooks for DefaultHooks {}
