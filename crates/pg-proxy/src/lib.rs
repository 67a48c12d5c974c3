//! Gatehouse's PostgreSQL wire-protocol proxy: authenticates agents, holds the upstream
//! credentials, decides every statement, masks results before the client sees them, records it all.
//! Layers arrive as traits in a [`gatehouse_core::Pipeline`].
//!
//! ```text
//! client ──startup(database=TARGET, password=token)──▶ PgProxy
//!   SSLRequest → TLS (rustls) · password → Authenticator · upstream login (SCRAM/md5/trust, TLS)
//!   Query / Parse / Bind → StatementAnalyzer → Policy → (Approvals) → Recorder → upstream
//!   RowDescription → catalog + lineage → Masker::plan ; DataRow / CopyData / notices masked
//!   every byte to the client → EgressGuard
//! ```
//!
//! A refused statement is replaced upstream by one certain to fail, so PostgreSQL's own
//! transaction and pipeline state matches what the client is told; the error is rewritten to
//! SQLSTATE 42501 naming the rule. See [`PgProxy`] to run a listener and [`PgHooks`] to observe
//! each phase of a session.
//!
//! Every statement is decided, recorded and held for approval by the operation gate
//! ([`gatehouse_core::Gate`]): the policy and the pipeline's [`gatehouse_core::GateHooks`], which
//! can only make a decision stricter, then the gateway's own checks (the fast-path FunctionCall
//! refusal, masked columns copied out, a binary COPY it cannot describe), which only tighten too.
//! A review holds the statement until approvers decide, the request times out, or the client
//! cancels it or closes its connection (the request is then abandoned and nothing runs). Outcomes are the
//! SQLSTATEs of the table in `docs/DESIGN.md`: denied and approval denied 42501, approval timed
//! out and abandoned 57014, approvals unavailable 58000 (53400 when too many are held), audit
//! unavailable 58030. A `GateHooks::on_chunk` hook sees each masked row, COPY TO STDOUT row and
//! FunctionCall result (each DataRow, CopyData and FunctionCallResponse message as the client
//! will receive it); `Stop` withholds it and ends the session with 42501 naming the hook.
//!
//! Audit: each statement's `Operation` control event is recorded — at the recorder's durability,
//! OS write or fsync — *before* the statement goes upstream (a statement whose record cannot be
//! written is refused with 58030); its `OperationResult` summary is queued to a per-session task
//! and recorded in order without holding back the results (a lost summary is logged and counted
//! in `SessionEnd`).
//!
//! The legacy fast-path `FunctionCall` message is refused by default with an ErrorResponse
//! (42501, rule `function-call`; the session stays usable): a function called by OID can return
//! any column's value outside column masking. [`PgProxyConfig::allow_function_call`] serves it,
//! decided by the policy, with the result run through the content detectors.

#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod backstop;
pub mod binvalue;
mod cancel;
mod catalog;
pub mod config;
mod encoding;
mod error;
pub mod frame;
pub mod hooks;
mod opacity;
mod prepared;
pub mod rowmask;
pub mod scram;
mod session;
mod settings;
mod slots;
pub mod statements;
mod upstream;
pub mod wire;

use std::collections::HashMap;
use std::sync::Arc;

use gatehouse_core::Pipeline;

pub use config::{
    Limits, NonTextMasking, PgProxyConfig, PgTarget, Secret, UpstreamAddress, UpstreamConfig,
    UpstreamTls,
};
pub use error::PgProxyError;
pub use hooks::{DefaultHooks, PgHooks, SessionContext};
pub use statements::{
    CachedAnalyzer, ColumnLineage, LexicalAnalyzer, SessionEffect, SqlAnalyzer, StatementAnalyzer,
    StatementInfo, StatementKind,
};
pub use upstream::{AsyncStream, BoxStream};

/// What stands for SQL text whose literals cannot be found (it cannot be lexed) where its
/// constants must be masked: recorded statements, other sessions' statements.
pub(crate) const WITHHELD_STATEMENT: &str =
    "[statement text withheld: its literals cannot be located]";

/// SQL text with its constants and comments masked ([`gatehouse_sql::mask_constants`]), or
/// [`WITHHELD_STATEMENT`]. The text is read under both values of `standard_conforming_strings`
/// (the setting of the session that wrote it is not known here: another session's, or one that
/// changed it): where the two readings put a literal's end in different places (`'a\' b'`),
/// no reading can be trusted and the text is withheld.
pub(crate) fn statement_text_masked(text: &str) -> String {
    let on = gatehouse_core::SqlSessionSettings::default();
    let off = gatehouse_core::SqlSessionSettings {
        standard_conforming_strings: !on.standard_conforming_strings,
        ..on.clone()
    };
    match (
        gatehouse_sql::mask_constants(text, &on),
        gatehouse_sql::mask_constants(text, &off),
    ) {
        (Some(a), Some(b)) if a == b => a,
        _ => WITHHELD_STATEMENT.to_string(),
    }
}

/// A PostgreSQL listener's shared state.
pub(crate) struct ProxyInner {
    pub(crate) config: Arc<PgProxyConfig>,
    pub(crate) pipeline: Pipeline,
    /// Decides, records and holds every statement (policy, [`gatehouse_core::GateHooks`],
    /// audit, approvals).
    pub(crate) gate: Arc<gatehouse_core::Gate>,
    pub(crate) hooks: Arc<dyn PgHooks>,
    pub(crate) analyzer: Arc<dyn StatementAnalyzer>,
    pub(crate) cancels: cancel::CancelRegistry,
    /// Live sessions per identity and per target (the session caps of [`Limits`]).
    pub(crate) sessions: Arc<slots::SessionCounts>,
    catalogs: HashMap<String, catalog::Catalog>,
    secrets: Vec<String>,
}

impl ProxyInner {
    /// Replaces any held secret in gateway-generated text (error messages) before it goes out.
    pub(crate) fn scrub(&self, text: &str) -> String {
        let mut s = text.to_string();
        for secret in &self.secrets {
            if !secret.is_empty() && s.contains(secret.as_str()) {
                s = s.replace(secret.as_str(), "[redacted]");
            }
        }
        s
    }

    /// `op` as the audit log and recordings keep it: its text and its bound parameter values
    /// pass the masking profile's detectors, so literal PII (`WHERE email = 'bob@x.org'`,
    /// `INSERT … VALUES ('4111 1111 1111 1111')`) is recorded masked while the statement's
    /// structure stays readable. A binary parameter (recorded as `\x` hex) is decoded first; one
    /// in which anything matched is recorded as `[masked]`.
    ///
    /// Under a profile with column rules ([`gatehouse_core::Masker::masks_columns`]) a value no
    /// detector recognises is masked data too (`WHERE name = 'Alice Smith'` with `name` masked):
    /// every constant and comment of the text is recorded as a placeholder
    /// ([`gatehouse_sql::mask_constants`]; a text that cannot be lexed is recorded as
    /// [`WITHHELD_STATEMENT`]) and every bound parameter as `[masked]`.
    pub(crate) fn recorded_operation(
        &self,
        op: &gatehouse_core::SqlOperation,
        profile: Option<&str>,
    ) -> gatehouse_core::SqlOperation {
        let mut out = op.clone();
        out.text = self.recorded_text(&op.text, profile);
        let by_column = self.pipeline.masker.masks_columns(profile);
        for p in out.parameters.iter_mut().flatten() {
            if by_column {
                *p = "[masked]".to_string();
                continue;
            }
            let hex = p.strip_prefix("\\x").and_then(|h| {
                h.as_bytes()
                    .chunks(2)
                    .map(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 16).ok())
                    .collect::<Option<Vec<u8>>>()
            });
            match hex {
                Some(bytes) => {
                    if self.mask_text(&bytes, profile).is_some() {
                        *p = "[masked]".to_string();
                    }
                }
                None => *p = self.recorded_text(p, profile),
            }
        }
        out
    }

    /// Statement text as recorded (see [`ProxyInner::recorded_operation`]): under a profile with
    /// column rules its constants masked, then through the profile's detectors.
    pub(crate) fn recorded_text(&self, text: &str, profile: Option<&str>) -> String {
        let constants_masked;
        let text = if self.pipeline.masker.masks_columns(profile) {
            constants_masked = statement_text_masked(text);
            constants_masked.as_str()
        } else {
            text
        };
        match self.mask_text(text.as_bytes(), profile) {
            Some(m) => String::from_utf8_lossy(&m).into_owned(),
            None => text.to_string(),
        }
    }

    /// `value` through the profile's detectors: the masked bytes, or `None` when nothing
    /// matched.
    fn mask_text(&self, value: &[u8], profile: Option<&str>) -> Option<Vec<u8>> {
        let fields = [gatehouse_core::FieldDesc {
            name: String::new(),
            sources: Vec::new(),
            kind: gatehouse_core::FieldKind::Text,
        }];
        let plan = self.pipeline.masker.plan(&fields, profile);
        let mut out = Vec::new();
        let mut findings = Vec::new();
        match plan.apply(0, value, &mut out, &mut findings) {
            gatehouse_core::MaskOutcome::Unchanged => None,
            gatehouse_core::MaskOutcome::Masked => Some(out),
            _ => Some(b"[masked]".to_vec()),
        }
    }

    /// Catalog sources of each column (empty for expressions). If the catalog cannot be read,
    /// table-backed columns get a source naming the unresolved column, which a masker with any
    /// column rule should treat as unknown.
    pub(crate) async fn resolve_sources(
        &self,
        target: &str,
        columns: &[wire::ColumnDesc],
    ) -> Vec<Vec<String>> {
        if columns.iter().all(|c| c.table_oid == 0) {
            return vec![Vec::new(); columns.len()];
        }
        match self.catalogs.get(target) {
            Some(cat) => match cat.resolve(columns).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(target = %target, error = %e, "catalog lookup failed");
                    columns
                        .iter()
                        .map(|c| {
                            if c.table_oid == 0 {
                                Vec::new()
                            } else {
                                vec![format!("?.{}.{}", c.table_oid, c.attnum)]
                            }
                        })
                        .collect()
                }
            },
            None => vec![Vec::new(); columns.len()],
        }
    }

    /// Indices of the columns that are view columns computed by an expression (to be masked
    /// whole like any expression). When the catalog cannot tell, every table-backed column.
    pub(crate) async fn view_expressions(
        &self,
        target: &str,
        columns: &[wire::ColumnDesc],
    ) -> Vec<usize> {
        if columns.iter().all(|c| c.table_oid == 0) {
            return Vec::new();
        }
        let flags = match self.catalogs.get(target) {
            Some(cat) => match cat.view_expressions(columns).await {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(target = %target, error = %e, "view lookup failed");
                    columns.iter().map(|c| c.table_oid != 0).collect()
                }
            },
            None => return Vec::new(),
        };
        flags
            .iter()
            .enumerate()
            .filter(|(_, d)| **d)
            .map(|(i, _)| i)
            .collect()
    }

    /// Of the columns whose nullness alone an output shows (`table.column` names, see
    /// [`statements::NULLNESS_PREFIX`]), those that must count as sources after all: view
    /// columns computed by an expression (their nullness may be a predicate on a masked value),
    /// and any the catalog cannot place.
    pub(crate) async fn nullness_sources(
        &self,
        target: &str,
        names: &[String],
        tables: &[String],
    ) -> Vec<String> {
        let Some(cat) = self.catalogs.get(target) else {
            return names.to_vec();
        };
        let mut out = Vec::new();
        for n in names {
            match cat.computed_by_view(n, tables).await {
                Ok(false) => {}
                Ok(true) => out.push(n.clone()),
                Err(e) => {
                    tracing::warn!(target = %target, error = %e, "view lookup failed");
                    out.push(n.clone());
                }
            }
        }
        out
    }

    /// Expands SQL-level lineage names to qualified catalog sources (through views). On a
    /// catalog failure the names are kept as written (a masker rule on the bare column name still
    /// matches them).
    pub(crate) async fn expand_sources(
        &self,
        target: &str,
        names: &[String],
        tables: &[String],
    ) -> Vec<String> {
        if names.is_empty() {
            return Vec::new();
        }
        match self.catalogs.get(target) {
            Some(cat) => match cat.expand(names, tables).await {
                Ok(mut s) => {
                    for n in names {
                        if !s.contains(n) {
                            s.push(n.clone());
                        }
                    }
                    s
                }
                Err(e) => {
                    tracing::warn!(target = %target, error = %e, "catalog expansion failed");
                    names.to_vec()
                }
            },
            None => names.to_vec(),
        }
    }

    /// `tables` and every relation they read through views, recursively; `None` when the
    /// catalog cannot be asked (the caller fails closed).
    pub(crate) async fn with_view_reads(
        &self,
        target: &str,
        tables: &[String],
    ) -> Option<Vec<String>> {
        let cat = self.catalogs.get(target)?;
        let mut out = tables.to_vec();
        for t in tables {
            match cat.relation_reads(t).await {
                Ok(reads) => {
                    for r in reads {
                        if !out.contains(&r) {
                            out.push(r);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(target = %target, error = %e, "view dependency lookup failed");
                    return None;
                }
            }
        }
        Some(out)
    }

    /// Binary layouts of the non-built-in types among `oids` (empty when all are built-in or
    /// the lookup fails: such types are then unknown, and an expression of one is refused).
    pub(crate) async fn type_forms(&self, target: &str, oids: &[u32]) -> binvalue::TypeForms {
        if oids.iter().all(|o| binvalue::builtin_form(*o).is_some()) {
            return binvalue::TypeForms::new();
        }
        match self.catalogs.get(target) {
            Some(cat) => match cat.type_forms(oids).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(target = %target, error = %e, "type lookup failed");
                    binvalue::TypeForms::new()
                }
            },
            None => binvalue::TypeForms::new(),
        }
    }

    /// Every column of every relation of the target (`schema.table.column`). When the lookup
    /// fails, a source no rule can take for safe: `?.*`.
    pub(crate) async fn all_columns(&self, target: &str) -> Arc<Vec<String>> {
        match self.catalogs.get(target) {
            Some(cat) => match cat.all_columns().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(target = %target, error = %e, "column listing failed");
                    Arc::new(vec!["?.*".to_string()])
                }
            },
            None => Arc::new(Vec::new()),
        }
    }

    /// Whether `profile` masks any column of the target's database (`true` when the columns
    /// cannot be listed).
    pub(crate) async fn masks_any_column(&self, target: &str, profile: Option<&str>) -> bool {
        let every = self.all_columns(target).await;
        if every.iter().any(|c| c == "?.*") {
            return true;
        }
        let fields: Vec<gatehouse_core::FieldDesc> = every
            .iter()
            .map(|s| gatehouse_core::FieldDesc {
                name: s.rsplit('.').next().unwrap_or(s).to_string(),
                sources: vec![s.clone()],
                kind: gatehouse_core::FieldKind::Text,
            })
            .collect();
        let plan = self.pipeline.masker.plan(&fields, profile);
        (0..fields.len()).any(|i| plan.masks_derived(i))
    }

    /// Whether any of `functions` is defined outside `pg_catalog` (a lookup failure counts as
    /// yes).
    pub(crate) async fn user_functions(&self, target: &str, functions: &[String]) -> bool {
        match self.catalogs.get(target) {
            Some(cat) => cat.user_functions(functions).await.unwrap_or(true),
            None => false,
        }
    }

    /// The output columns of `sql`, described on the target's catalog connection.
    pub(crate) async fn describe(
        &self,
        target: &str,
        sql: &str,
    ) -> Result<Vec<wire::ColumnDesc>, PgProxyError> {
        match self.catalogs.get(target) {
            Some(cat) => cat.describe(sql).await,
            None => Err(PgProxyError::Gateway(
                "no catalog connection for this target".into(),
            )),
        }
    }

    /// The target catalog's generation (see [`catalog::Catalog::generation`]).
    pub(crate) fn catalog_generation(&self, target: &str) -> u64 {
        self.catalogs.get(target).map_or(0, |c| c.generation())
    }

    pub(crate) fn catalog_invalidate(&self, target: &str) {
        if let Some(c) = self.catalogs.get(target) {
            c.invalidate();
        }
    }
}

/// A PostgreSQL listener: accepts clients and runs each session through the pipeline.
#[derive(Clone)]
pub struct PgProxy {
    inner: Arc<ProxyInner>,
}

impl std::fmt::Debug for PgProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgProxy")
            .field(
                "targets",
                &self.inner.config.targets.keys().collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl PgProxy {
    /// A proxy with default hooks and the gatehouse-sql analyzer (classification + lineage)
    /// behind a memo of 1024 statement texts.
    pub fn new(config: PgProxyConfig, pipeline: Pipeline) -> Self {
        Self::with_parts(
            config,
            pipeline,
            Arc::new(DefaultHooks),
            Arc::new(CachedAnalyzer::new(SqlAnalyzer, 1024)),
        )
    }

    /// A proxy with custom hooks and statement analyzer.
    pub fn with_parts(
        config: PgProxyConfig,
        pipeline: Pipeline,
        hooks: Arc<dyn PgHooks>,
        analyzer: Arc<dyn StatementAnalyzer>,
    ) -> Self {
        // rustls needs one process-wide provider; aws-lc-rs is the only one built in.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let secrets = config.held_secrets();
        let catalogs = config
            .targets
            .iter()
            .map(|(name, t)| (name.clone(), catalog::Catalog::new(t.upstream.clone())))
            .collect();
        Self {
            inner: Arc::new(ProxyInner {
                config: Arc::new(config),
                gate: Arc::new(gatehouse_core::Gate::new(pipeline.clone())),
                pipeline,
                hooks,
                analyzer,
                cancels: cancel::CancelRegistry::default(),
                sessions: Arc::default(),
                catalogs,
                secrets,
            }),
        }
    }

    /// Serves clients from `listener` until the task is dropped. Each connection runs on its own
    /// task; a failing session never affects the others.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) if is_transient_accept_error(&e) => continue,
                Err(e) => return Err(e),
            };
            let _ = stream.set_nodelay(true);
            let inner = self.inner.clone();
            tokio::spawn(async move {
                session::run(inner, Box::new(stream), peer.to_string()).await;
            });
        }
    }

    /// Runs one session over an already accepted stream (any transport).
    pub async fn handle<S: AsyncStream + 'static>(&self, stream: S, client_addr: String) {
        session::run(self.inner.clone(), Box::new(stream), client_addr).await;
    }
}

fn is_transient_accept_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::Interrupted
    ) || e.raw_os_error().is_some_and(|c| c == 24 || c == 23)
}
