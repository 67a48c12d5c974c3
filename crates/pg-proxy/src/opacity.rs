//! Catalog opacity: statements whose text the gateway understands but whose effect depends on
//! code stored in the database — an operator or a type whose functions a user wrote, a
//! function a user defined under a built-in's name (`lower`,
//! overloaded by argument type, in `public`, in `pg_temp`), a trigger or rule on a table a
//! statement writes, a column default, check constraint, index expression or row-security
//! policy calling user code, a view that calls user code.
//!
//! What it promises:
//! - Lookups run on the target's catalog connection (a side connection the gateway owns, see
//!   [`crate::catalog`]), never on the client's backend: a lookup cannot change, abort or be
//!   blocked by the client's transaction, whatever state that transaction is in.
//! - Names are matched in every schema, so `search_path` (set in the session, at connect time
//!   with `options`, or by `ALTER ROLE … SET`) cannot hide a function or table from the lookup:
//!   `lower` is opaque when any `lower` exists that was not created with the cluster (built-ins
//!   have OIDs below 16384 and belong to the bootstrap superuser).
//! - A failed lookup makes the statement opaque (fail closed).
//! - The side connection cannot see what the session changed in a transaction that has not
//!   ended. After the session runs a statement that may change stored code (any opaque
//!   statement, any DDL but plain DDL whose functions and types were vetted — see
//!   `gatehouse_sql::StatementInfo::plain_ddl`), every later statement of the session that
//!   names a function, a table or a type is opaque until the server reports the session idle
//!   outside a transaction block after it; then the cache is dropped. A statement decided
//!   after that group was sent upstream first waits for its answer (the session's
//!   `evaluate`), so a client that pipelines, or sends as soon as it reads an error, is not
//!   refused for a race. Plain DDL (a `CREATE
//!   TABLE` of columns of vetted types, a sequence, a btree index) cannot attach code, so what
//!   the side connection does not see of it runs none.
//! - Answers are cached per session and dropped when any session of the target runs DDL or
//!   settles as above; while any session of the target has such changes pending, nothing is
//!   cached (every lookup reads the catalog).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use gatehouse_core::{SqlOperation, SqlSessionSettings};
use gatehouse_sql::{Risk, StatementKind, classify};

use crate::catalog::Catalog;

/// Counts the sync groups a session sent upstream and the ReadyForQuery answers it got, so the
/// client half knows when a statement has run and its transaction has ended.
#[derive(Debug, Default)]
pub(crate) struct ReadyTracker {
    sent: AtomicU64,
    answered: AtomicU64,
    idle: AtomicBool,
}

impl ReadyTracker {
    /// A message that the server answers with one ReadyForQuery (Query, Sync, FunctionCall)
    /// was queued for the backend.
    pub(crate) fn sent(&self) {
        self.sent.fetch_add(1, Ordering::SeqCst);
    }

    /// ReadyForQuery arrived with this transaction status byte.
    pub(crate) fn answered(&self, status: Option<u8>) {
        self.idle.store(status == Some(b'I'), Ordering::SeqCst);
        self.answered.fetch_add(1, Ordering::SeqCst);
    }

    /// A queued Sync the server ignores (sent during copy-in mode): no answer will come.
    pub(crate) fn ignored(&self) {
        self.sent.fetch_sub(1, Ordering::SeqCst);
    }

    fn sent_count(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    /// Whether the server has answered group `group`, or the group is not queued upstream yet
    /// (so there is no answer to wait for).
    pub(crate) fn answered_or_unsent(&self, group: u64) -> bool {
        self.answered.load(Ordering::SeqCst) >= group || self.sent_count() < group
    }

    /// Group `group` (1-based) was answered and the session was idle outside a transaction
    /// block at the latest answer.
    fn settled_after(&self, group: u64) -> bool {
        self.answered.load(Ordering::SeqCst) >= group && self.idle.load(Ordering::SeqCst)
    }
}

/// Target-wide state: a generation bumped whenever cached answers may be stale, and how many
/// sessions have catalog changes the side connection may not see yet.
#[derive(Debug, Default)]
pub(crate) struct TargetOpacity {
    generation: AtomicU64,
    pending: Arc<AtomicUsize>,
}

impl TargetOpacity {
    pub(crate) fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

/// Holds one count in [`TargetOpacity::pending`] while a session is unsettled.
#[derive(Debug)]
struct PendingGuard(Arc<AtomicUsize>);

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why the code of a relation runs on a write and on a read (`None`: it runs none).
#[derive(Debug, Clone, Default)]
struct RelationCode {
    write: Option<String>,
    read: Option<String>,
}

/// Per-session cache and state.
#[derive(Debug, Default)]
pub(crate) struct SessionOpacity {
    generation: u64,
    functions: HashMap<String, Option<String>>,
    relations: HashMap<String, RelationCode>,
    types: HashMap<String, Option<String>>,
    operators: HashMap<String, Option<String>>,
    opclasses: HashMap<String, Option<String>>,
    /// `Some(g)`: the session may have changed stored code; settled once group `g` is answered
    /// outside a transaction block.
    unsettled: Option<(u64, PendingGuard)>,
    /// Statement text → the generation it was last decided under, and whether the catalog made
    /// it opaque then (bounded).
    decided: HashMap<String, (u64, bool)>,
}

/// Most statement texts remembered for [`SessionOpacity::needs_recheck`].
const DECIDED_MAX: usize = 4096;

/// Kinds that write a relation, or rebuild its indexes (`VACUUM FULL`, `REINDEX`, `CLUSTER`,
/// `REFRESH MATERIALIZED VIEW`): what runs on a write runs for them.
const WRITE_KINDS: [StatementKind; 7] = [
    StatementKind::Insert,
    StatementKind::Update,
    StatementKind::Delete,
    StatementKind::Merge,
    StatementKind::Copy,
    StatementKind::Truncate,
    StatementKind::Maintenance,
];

/// `serial` and its spellings name no type: the server writes an integer type and a sequence.
const SERIAL_TYPES: [&str; 6] = [
    "serial",
    "serial2",
    "serial4",
    "serial8",
    "smallserial",
    "bigserial",
];

/// Whether the statement names something the catalog must vet.
fn names_stored_objects(stmt: &gatehouse_sql::StatementInfo) -> bool {
    !stmt.functions.is_empty()
        || !stmt.tables.is_empty()
        || !stmt.types.is_empty()
        || !stmt.operators.is_empty()
        || !stmt.opclasses.is_empty()
}

fn is_opaque(stmt: &gatehouse_sql::StatementInfo) -> bool {
    matches!(
        stmt.kind,
        StatementKind::Unparseable | StatementKind::DoBlock | StatementKind::Call
    ) || stmt.has(Risk::OpaqueCode)
}

impl SessionOpacity {
    /// `(statement index, reason)` for every statement of `op` that the catalog makes opaque.
    pub(crate) async fn reasons(
        &mut self,
        catalog: Option<&Catalog>,
        ready: &ReadyTracker,
        op: &SqlOperation,
    ) -> Vec<(usize, String)> {
        self.reasons_for(catalog, ready, &op.text, &op.settings)
            .await
    }

    async fn reasons_for(
        &mut self,
        catalog: Option<&Catalog>,
        ready: &ReadyTracker,
        text: &str,
        settings: &SqlSessionSettings,
    ) -> Vec<(usize, String)> {
        let classification = classify(text, settings);
        let mut out = Vec::new();
        let Some(catalog) = catalog else {
            // No catalog to ask: everything that names code or tables is opaque.
            for (i, stmt) in classification.statements.iter().enumerate() {
                if !is_opaque(stmt) && names_stored_objects(stmt) {
                    out.push((i, "the target's catalog cannot be read".to_string()));
                }
            }
            return out;
        };
        let target = catalog.opacity();
        if let Some((group, _)) = &self.unsettled
            && ready.settled_after(*group)
        {
            self.unsettled = None;
            target.invalidate();
        }
        let generation = target.generation.load(Ordering::SeqCst);
        let cache = target.pending.load(Ordering::SeqCst) == 0 && self.unsettled.is_none();
        if generation != self.generation || !cache {
            self.clear();
            self.generation = generation;
        }
        for (i, stmt) in classification.statements.iter().enumerate() {
            let ddl = stmt.kinds.contains(&StatementKind::Ddl)
                || stmt.kinds.contains(&StatementKind::Drop);
            let mut vetted = false;
            if is_opaque(stmt) {
                // Already opaque from its text.
            } else if self.unsettled.is_some() {
                if names_stored_objects(stmt) {
                    out.push((
                        i,
                        "an earlier statement of this session may have changed stored code in a \
                         transaction that has not ended"
                            .to_string(),
                    ));
                }
            } else if let Some(why) = self.statement_reason(catalog, stmt).await {
                out.push((i, why));
            } else {
                vetted = true;
            }
            if is_opaque(stmt) || (ddl && !(vetted && stmt.plain_ddl)) {
                self.mark_unsettled(ready, target);
            } else if ddl {
                // DDL that attaches no code (its functions and types vetted above): later
                // statements need not wait for it to settle; cached answers are dropped.
                target.invalidate();
                self.clear();
            }
        }
        if self.decided.len() >= DECIDED_MAX {
            self.decided.clear();
        }
        self.decided
            .insert(text.to_string(), (generation, !out.is_empty()));
        out
    }

    /// Whether a statement decided earlier (at Parse) as not opaque by the catalog is opaque
    /// now that it is about to run: stored code may have changed since (the target's
    /// generation moved, a session has uncommitted changes, or this session is unsettled).
    /// Statements the catalog already made opaque when they were decided are not decided again.
    pub(crate) async fn newly_opaque(
        &mut self,
        catalog: Option<&Catalog>,
        ready: &ReadyTracker,
        op: &SqlOperation,
    ) -> bool {
        let before = self.decided.get(&op.text).copied();
        if let Some((generation, was_opaque)) = before {
            if was_opaque {
                return false;
            }
            if let Some(c) = catalog {
                let target = c.opacity();
                if self.unsettled.is_none()
                    && target.pending.load(Ordering::SeqCst) == 0
                    && target.generation.load(Ordering::SeqCst) == generation
                {
                    return false;
                }
            }
        }
        !self.reasons(catalog, ready, op).await.is_empty()
    }

    /// A statement decided earlier that may change stored code is about to run (a Bind of a
    /// statement parsed in an earlier group): unsettled from its group on.
    pub(crate) fn note_running(&mut self, catalog: Option<&Catalog>, ready: &ReadyTracker) {
        if let Some(catalog) = catalog {
            self.mark_unsettled(ready, catalog.opacity());
        }
    }

    /// The sync group after whose answer this session may settle, while it is unsettled.
    pub(crate) fn unsettled_group(&self) -> Option<u64> {
        self.unsettled.as_ref().map(|(g, _)| *g)
    }

    fn mark_unsettled(&mut self, ready: &ReadyTracker, target: &TargetOpacity) {
        // The statement is in the group not yet queued: the next one.
        let group = ready.sent_count() + 1;
        match &mut self.unsettled {
            Some((g, _)) => *g = (*g).max(group),
            None => {
                target.pending.fetch_add(1, Ordering::SeqCst);
                self.unsettled = Some((group, PendingGuard(target.pending.clone())));
            }
        }
        target.invalidate();
        self.clear();
    }

    fn clear(&mut self) {
        self.functions.clear();
        self.relations.clear();
        self.types.clear();
        self.operators.clear();
        self.opclasses.clear();
    }

    async fn statement_reason(
        &mut self,
        catalog: &Catalog,
        stmt: &gatehouse_sql::StatementInfo,
    ) -> Option<String> {
        for f in &stmt.functions {
            if let Some(why) = self.function(catalog, f).await {
                return Some(why);
            }
        }
        for o in &stmt.operators {
            if let Some(why) = self.operator(catalog, o).await {
                return Some(why);
            }
        }
        for o in &stmt.opclasses {
            if let Some(why) = self.opclass(catalog, o).await {
                return Some(why);
            }
        }
        for t in &stmt.types {
            if let Some(why) = self.type_code(catalog, t).await {
                return Some(why);
            }
        }
        let writes = WRITE_KINDS.iter().any(|k| stmt.kinds.contains(k));
        for t in &stmt.tables {
            let code = self.relation(catalog, t).await;
            let why = if writes { code.write } else { code.read };
            if why.is_some() {
                return why;
            }
        }
        None
    }

    async fn function(&mut self, catalog: &Catalog, name: &str) -> Option<String> {
        if let Some(known) = self.functions.get(name) {
            return known.clone();
        }
        let answer = match catalog.user_function(name).await {
            Ok(None) => None,
            Ok(Some(found)) => Some(format!(
                "function {name} may call {found}, defined in the database by a user"
            )),
            Err(e) => Some(format!(
                "the catalog lookup of function {name} failed ({e})"
            )),
        };
        self.functions.insert(name.to_string(), answer.clone());
        answer
    }

    async fn operator(&mut self, catalog: &Catalog, name: &str) -> Option<String> {
        if let Some(known) = self.operators.get(name) {
            return known.clone();
        }
        let answer = match catalog.user_operator(name).await {
            Ok(None) => None,
            Ok(Some(found)) => Some(format!(
                "operator {name} may be {found}, defined in the database by a user"
            )),
            Err(e) => Some(format!(
                "the catalog lookup of operator {name} failed ({e})"
            )),
        };
        self.operators.insert(name.to_string(), answer.clone());
        answer
    }

    async fn opclass(&mut self, catalog: &Catalog, name: &str) -> Option<String> {
        if let Some(known) = self.opclasses.get(name) {
            return known.clone();
        }
        let what = match name.strip_prefix('@') {
            Some(method) => format!("an index of access method {method}"),
            None => format!("an index with operator class {name}"),
        };
        let answer = match catalog.opclass_code(name).await {
            Ok(None) => None,
            Ok(Some(found)) => Some(format!("building {what} runs {found}")),
            Err(e) => Some(format!("the catalog lookup of {what} failed ({e})")),
        };
        self.opclasses.insert(name.to_string(), answer.clone());
        answer
    }

    async fn type_code(&mut self, catalog: &Catalog, name: &str) -> Option<String> {
        if SERIAL_TYPES.contains(&name) {
            return None;
        }
        if let Some(known) = self.types.get(name) {
            return known.clone();
        }
        let answer = match catalog.type_code(name).await {
            Ok(None) => None,
            Ok(Some(found)) => Some(format!("using type {name} runs {found}")),
            Err(e) => Some(format!("the catalog lookup of type {name} failed ({e})")),
        };
        self.types.insert(name.to_string(), answer.clone());
        answer
    }

    async fn relation(&mut self, catalog: &Catalog, name: &str) -> RelationCode {
        if let Some(known) = self.relations.get(name) {
            return known.clone();
        }
        let answer = match catalog.relation_code(name).await {
            Ok((write, read)) => RelationCode {
                write: write.map(|w| format!("writing {name} runs {w}")),
                read: read.map(|r| format!("reading {name} runs {r}")),
            },
            Err(e) => {
                let why = format!("the catalog lookup of relation {name} failed ({e})");
                RelationCode {
                    write: Some(why.clone()),
                    read: Some(why),
                }
            }
        };
        self.relations.insert(name.to_string(), answer.clone());
        answer
    }
}
