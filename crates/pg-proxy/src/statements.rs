//! The seam between the proxy and SQL understanding: split a simple-query string into its
//! statements and say what each one is and where its output columns come from.
//!
//! [`StatementAnalyzer`] is what the session calls; [`LexicalAnalyzer`] is the built-in
//! implementation (a PostgreSQL-aware lexer: quotes, `E''` strings, dollar quotes, nested comments,
//! `standard_conforming_strings`). A richer analyzer (gatehouse-sql: full classification and
//! output-column lineage) plugs in through the same trait.

use std::ops::Range;

use gatehouse_core::SqlSessionSettings;

/// What a statement does, as far as the proxy needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StatementKind {
    /// Returns rows and changes nothing (`SELECT`, `VALUES`, `TABLE`, `SHOW`, `EXPLAIN`).
    Read,
    /// `INSERT`, `UPDATE`, `DELETE`, `MERGE`.
    Write,
    /// `COPY`.
    Copy,
    /// Data definition (`CREATE`, `ALTER`, `DROP`, `TRUNCATE`, …).
    Ddl,
    /// Transaction control (`BEGIN`, `COMMIT`, `ROLLBACK`, `SAVEPOINT`, …).
    Transaction,
    /// Anything else (`SET`, `DO`, `CALL`, …).
    Other,
}

/// One statement of a query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementInfo {
    /// Byte range of the statement in the original string (without the `;`).
    pub span: Range<usize>,
    /// Kind.
    pub kind: StatementKind,
    /// Output-column lineage, when traced.
    pub lineage: Option<ColumnLineage>,
    /// Relations the statement names (normalised, as written: `users`, `public.users`).
    pub tables: Vec<String>,
    /// The statement copies data it reads somewhere else (`CREATE TABLE AS`, `SELECT INTO`,
    /// `INSERT … SELECT`, `COPY … TO`, `CREATE VIEW`, `CREATE FUNCTION`): masked columns among
    /// what it reads would leave the masking boundary.
    pub copies_data: bool,
    /// The source columns a copying statement reads, when known exactly (`COPY (query) TO`,
    /// `COPY t (a, b) TO`, the query of `CREATE VIEW/TABLE … AS`, `SELECT … INTO` and `INSERT
    /// … SELECT`: its output lineage), as `table.column` / `table.*` / `?.column`. `None`:
    /// every column of `tables`.
    pub reads: Option<Vec<String>>,
    /// Whether running the statement may change how the server reads the SQL that follows.
    pub effect: SessionEffect,
    /// What the statement reads cannot be known from its text (a `DO` block, `CALL`, code the
    /// classifier cannot see into, or an analyzer that does not trace reads): server messages
    /// about it are treated as if it read masked columns.
    pub opaque: bool,
    /// Functions the statement calls (normalised as written: `lower`, `public.f`). A function
    /// that runs a query of its own (`query_to_xml`, a user-defined function) makes what the
    /// output derives from untraceable from this text.
    pub functions: Vec<String>,
}

/// What a statement may do to the session state that SQL text is read and resolved under
/// (`standard_conforming_strings`, `client_encoding`, `backslash_quote`, `search_path`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SessionEffect {
    /// Nothing the gateway needs to follow.
    #[default]
    None,
    /// May change `standard_conforming_strings`, `client_encoding` or `search_path`: `SET`,
    /// `RESET`, `set_config`, `DISCARD`, transaction end, `ROLLBACK TO`, or code the gateway
    /// cannot see into (`DO`, `CALL`, functions other than well-known built-ins).
    Lexer,
    /// Changes `backslash_quote`, which the server never reports: refused.
    BackslashQuote,
}

/// Where each output column's value may come from. Sources are `table.column` (table as
/// written), `table.*` for a whole row or unexpanded star, `?.name` for a name not tied to a
/// table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ColumnLineage {
    /// `columns[i]` are the sources of output field `i`.
    Positional(Vec<Vec<String>>),
    /// Output positions are not known (an unexpanded `*`): every source may feed any field.
    Union(Vec<String>),
}

/// Why a string could not be analyzed. The proxy treats it as unparseable and refuses it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AnalyzeError {
    /// A quote, identifier, dollar quote or comment is never closed.
    #[error("unterminated {0}")]
    Unterminated(&'static str),
    /// The text is not valid in the session's client encoding.
    #[error("statement text is not valid in the session's client_encoding")]
    Encoding,
    /// The classifier could not read a statement with certainty.
    #[error("{0}")]
    Unparseable(String),
}

/// Splits and classifies SQL text under the session's settings.
pub trait StatementAnalyzer: Send + Sync {
    /// The statements of `text`, in order. Empty statements (`;;`) are left out.
    fn analyze(
        &self,
        text: &str,
        settings: &SqlSessionSettings,
    ) -> Result<Vec<StatementInfo>, AnalyzeError>;

    /// Whether no answer depends on the value of an integer literal (see `gatehouse_sql::shape`),
    /// so that [`CachedAnalyzer`] may serve texts differing only in integers from one entry,
    /// each with its own spans. `false` unless the analyzer promises it.
    fn integer_invariant(&self) -> bool {
        false
    }
}

/// The built-in analyzer: exact statement boundaries, kind from the leading keyword, no lineage.
#[derive(Debug, Clone, Copy, Default)]
pub struct LexicalAnalyzer;

impl StatementAnalyzer for LexicalAnalyzer {
    fn analyze(
        &self,
        text: &str,
        settings: &SqlSessionSettings,
    ) -> Result<Vec<StatementInfo>, AnalyzeError> {
        Ok(split(text, settings.standard_conforming_strings)?
            .into_iter()
            .filter_map(|span| {
                let stmt = text.get(span.clone())?;
                let kind = classify_leading(stmt)?;
                Some(StatementInfo {
                    span,
                    kind,
                    lineage: None,
                    tables: Vec::new(),
                    copies_data: false,
                    reads: None,
                    effect: lexical_effect(stmt, kind),
                    // No tables, no lineage: what it reads is unknown.
                    opaque: true,
                    functions: Vec::new(),
                })
            })
            .collect())
    }
}

/// The analyzer backed by gatehouse-sql: PostgreSQL-faithful splitting, full classification
/// (tables, risks) and output-column lineage.
#[derive(Debug, Clone, Copy, Default)]
pub struct SqlAnalyzer;

impl StatementAnalyzer for SqlAnalyzer {
    fn analyze(
        &self,
        text: &str,
        settings: &SqlSessionSettings,
    ) -> Result<Vec<StatementInfo>, AnalyzeError> {
        use gatehouse_sql::StatementKind as K;
        let classification = gatehouse_sql::classify(text, settings);
        let mut out = Vec::with_capacity(classification.statements.len());
        for st in classification.statements {
            if st.kind == K::Unparseable {
                return Err(AnalyzeError::Unparseable(
                    st.unparseable_reason
                        .unwrap_or_else(|| "unparseable".into()),
                ));
            }
            let kind = match st.kind {
                K::Select | K::Show | K::Explain | K::Cursor => StatementKind::Read,
                K::Insert | K::Update | K::Delete | K::Merge => StatementKind::Write,
                K::Copy => StatementKind::Copy,
                K::Ddl
                | K::Drop
                | K::Truncate
                | K::Grant
                | K::Revoke
                | K::AlterSystem
                | K::Maintenance => StatementKind::Ddl,
                K::Transaction | K::Prepare | K::Execute | K::Deallocate => {
                    StatementKind::Transaction
                }
                _ => StatementKind::Other,
            };
            let stmt_text = text.get(st.span.clone()).unwrap_or("");
            if let Some(why) = prepared_name_disagrees(&st, stmt_text, settings) {
                return Err(AnalyzeError::Unparseable(why));
            }
            let reads_into_elsewhere = st.has(gatehouse_sql::Risk::CreateTableAs)
                || st.has(gatehouse_sql::Risk::WriteFromColumns)
                || st.has(gatehouse_sql::Risk::SelectInto)
                || (st.kinds.contains(&K::Insert) && st.tables.len() > 1)
                // `INSERT INTO t (name) SELECT reverse(email) FROM t`: one table named, still a
                // copy of its columns into others.
                || (st.kinds.contains(&K::Insert)
                    && st.tables.len() == 1
                    && gatehouse_sql::copied_sources(
                        text.get(st.span.clone()).unwrap_or(""),
                        settings,
                        &gatehouse_sql::NoCatalog,
                    )
                    .is_some_and(|sources| !sources.is_empty()))
                || (st.kind == K::Copy && !copy_is_from(stmt_text))
                || stores_values(&st.functions)
                || (st.kind == K::Ddl
                    && !st.tables.is_empty()
                    && creates_view_or_function(stmt_text)
                    && !creates_non_copying_trigger(stmt_text, &st.functions));
            let lineage = match st.kind {
                K::Select | K::Insert | K::Update | K::Delete | K::Merge => {
                    gatehouse_sql::lineage(stmt_text, settings, &gatehouse_sql::NoCatalog)
                        .ok()
                        .map(convert_lineage)
                }
                // Settings and plans: no column of any table.
                K::Show | K::Explain => Some(ColumnLineage::Positional(Vec::new())),
                _ => None,
            };
            let effect = session_effect(&st, stmt_text);
            let opaque = st.has(gatehouse_sql::Risk::OpaqueCode)
                || matches!(st.kind, K::DoBlock | K::Call)
                || st.kinds.iter().any(|k| matches!(k, K::DoBlock | K::Call));
            let reads = if st.kind == K::Copy {
                copy_reads(stmt_text, settings)
            } else if reads_into_elsewhere
                && !opaque
                && !st.has(gatehouse_sql::Risk::WriteFromColumns)
                && !st.has(gatehouse_sql::Risk::WritableCte)
            {
                // What `CREATE VIEW/TABLE … AS`, `SELECT … INTO` and `INSERT … SELECT` copy:
                // the columns their query outputs, not every column of the tables they name.
                gatehouse_sql::copied_sources(stmt_text, settings, &gatehouse_sql::NoCatalog)
                    .map(|sources| sources.into_iter().map(|s| copied_name(&s)).collect())
            } else {
                None
            };
            out.push(StatementInfo {
                effect,
                span: trim(text, st.span),
                kind,
                lineage,
                tables: st.tables.into_iter().collect(),
                copies_data: reads_into_elsewhere,
                reads,
                opaque,
                functions: st.functions.into_iter().collect(),
            });
        }
        Ok(out)
    }

    /// Every answer comes from gatehouse-sql's classification and lineage (which promise it, see
    /// `gatehouse_sql::shape`) and from word tests on the statement text that no digit changes.
    fn integer_invariant(&self) -> bool {
        true
    }
}

/// Built-ins that store an argument's value where it is read back through channels no column
/// rule covers. Writing a masked column into one is copying it out of the masking boundary:
/// - a setting (`set_config`) comes back from `SHOW`, `current_setting`, `pg_settings` and (for
///   `application_name`) every session's `pg_stat_activity`;
/// - a sequence's value (`setval`) from `SELECT last_value FROM s`, `currval`, `nextval`,
///   `pg_sequences`;
/// - the random seed (`setseed`) from the numbers `random()` returns after it;
/// - an advisory lock's key (`pg_advisory_lock*`, `pg_try_advisory_*`) from `pg_locks`;
/// - a notification's payload (`pg_notify`) from every listening session;
/// - a large object's content, OID or size (`lo_from_bytea`, `lo_put`, `lowrite`, `lo_create`,
///   `lo_truncate`, `lo_import`, `lo_export`, every `lo_*`) from `lo_get`, `loread`,
///   `pg_largeobject`;
/// - a logical decoding message (`pg_logical_emit_message`) from a replication slot;
/// - names of replication slots and origins, restore points and backup labels
///   (`pg_create_*`, `pg_copy_*_slot`, `pg_replication_origin_*`, `pg_backup_start`) from their
///   views;
/// - a server file's content (`pg_file_write`, adminpack) from `pg_read_file`;
/// - SQL text sent to another server (`dblink*`).
///
/// Names match whatever schema qualifies them: a user's function of one of these names is
/// counted too (fail closed).
const STORING_FUNCTIONS: &[&str] = &[
    "set_config",
    "setval",
    "setseed",
    "pg_notify",
    "lowrite",
    "pg_logical_emit_message",
    "pg_start_backup",
    "pg_backup_start",
];

/// Prefixes of such built-ins' names (see [`STORING_FUNCTIONS`]).
const STORING_PREFIXES: &[&str] = &[
    "pg_advisory_",
    "pg_try_advisory_",
    "lo_",
    "pg_create_",
    "pg_copy_",
    "pg_replication_origin_",
    "pg_replication_slot_",
    "pg_file_",
    "pg_write",
    "dblink",
];

pub(crate) fn stores_values<'a>(functions: impl IntoIterator<Item = &'a String>) -> bool {
    functions.into_iter().any(|f| {
        let name = f.rsplit('.').next().unwrap_or(f).trim_matches('"');
        STORING_FUNCTIONS.contains(&name) || STORING_PREFIXES.iter().any(|p| name.starts_with(p))
    })
}

/// A bounded memo in front of another analyzer, keyed by the text and the settings that change
/// how it lexes. Clients that send the same text again (drivers re-preparing an unnamed
/// statement per call, applications repeating a query) skip the analysis. When the inner
/// analyzer is [integer-invariant](StatementAnalyzer::integer_invariant), the key is the text's
/// `gatehouse_sql::shape` (integer literals written as `0`), so texts differing only in inlined
/// ids or limits (`… WHERE aid = 4711`, pgbench's stream) share one entry, and each answer gets
/// the spans of its own text.
///
/// Promise: the answer is exactly the inner analyzer's for that text and settings (the inner
/// analyzer is pure); only texts up to [`CachedAnalyzer::MAX_TEXT`] bytes are kept; when the
/// memo is full, the older half of it is dropped.
pub struct CachedAnalyzer<A> {
    inner: A,
    capacity: usize,
    memo: std::sync::Mutex<Memo>,
}

type AnalyzeResult = Result<Vec<StatementInfo>, AnalyzeError>;

/// (text or shape, whether it is a shape, standard_conforming_strings, client_encoding).
type MemoKey = (String, bool, bool, String);

#[derive(Default)]
struct Memo {
    /// The current generation and the previous one; a hit in `old` is promoted.
    new: std::collections::HashMap<MemoKey, std::sync::Arc<AnalyzeResult>>,
    old: std::collections::HashMap<MemoKey, std::sync::Arc<AnalyzeResult>>,
}

impl<A> std::fmt::Debug for CachedAnalyzer<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedAnalyzer")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl<A: StatementAnalyzer> CachedAnalyzer<A> {
    /// Longest text kept.
    pub const MAX_TEXT: usize = 4096;

    /// A memo of about `capacity` texts in front of `inner`.
    pub fn new(inner: A, capacity: usize) -> Self {
        Self {
            inner,
            capacity: capacity.max(2),
            memo: std::sync::Mutex::new(Memo::default()),
        }
    }

    fn memo(&self) -> std::sync::MutexGuard<'_, Memo> {
        self.memo
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lookup(&self, key: &MemoKey) -> Option<AnalyzeResult> {
        let mut memo = self.memo();
        if let Some(hit) = memo.new.get(key) {
            return Some((**hit).clone());
        }
        let hit = memo.old.remove(key)?;
        let answer = (*hit).clone();
        memo.new.insert(key.clone(), hit);
        Some(answer)
    }
}

/// `answer`, made for another text of the same shape, with the spans of `text`'s statements;
/// `None` if the statement counts differ (never expected: the shape fixes them).
fn with_spans(answer: AnalyzeResult, text: &str, spans: &[Range<usize>]) -> Option<AnalyzeResult> {
    let Ok(mut infos) = answer else {
        return Some(answer);
    };
    if infos.len() != spans.len() {
        return None;
    }
    for (info, span) in infos.iter_mut().zip(spans) {
        info.span = trim(text, span.clone());
    }
    Some(Ok(infos))
}

impl<A: StatementAnalyzer> StatementAnalyzer for CachedAnalyzer<A> {
    fn analyze(&self, text: &str, settings: &SqlSessionSettings) -> AnalyzeResult {
        if text.len() > Self::MAX_TEXT {
            return self.inner.analyze(text, settings);
        }
        let shape = if self.inner.integer_invariant() {
            gatehouse_sql::shape(text, settings)
        } else {
            None
        };
        let (key_text, spans) = match shape {
            Some(s) => (s.text, Some(s.spans)),
            None => (text.to_string(), None),
        };
        let key = (
            key_text,
            spans.is_some(),
            settings.standard_conforming_strings,
            settings.client_encoding.clone(),
        );
        if let Some(hit) = self.lookup(&key) {
            match &spans {
                None => return hit,
                Some(spans) => {
                    if let Some(answer) = with_spans(hit, text, spans) {
                        return answer;
                    }
                }
            }
        }
        let answer = self.inner.analyze(text, settings);
        if let (Some(spans), Ok(infos)) = (&spans, &answer)
            && infos.len() != spans.len()
        {
            // Not what the shape promised: answer without keeping it.
            return answer;
        }
        let mut memo = self.memo();
        if memo.new.len() >= self.capacity / 2 {
            memo.old = std::mem::take(&mut memo.new);
        }
        memo.new.insert(key, std::sync::Arc::new(answer.clone()));
        answer
    }

    fn integer_invariant(&self) -> bool {
        self.inner.integer_invariant()
    }
}

fn source_name(s: &gatehouse_sql::Source) -> String {
    match s {
        gatehouse_sql::Source::Column { table, column } => format!("{table}.{column}"),
        gatehouse_sql::Source::AllColumns { table } => format!("{table}.*"),
        gatehouse_sql::Source::Unresolved { name } => format!("?.{name}"),
        gatehouse_sql::Source::Nullness { table, column } => {
            format!("{NULLNESS_PREFIX}{table}.{column}")
        }
        _ => "?.?".to_string(),
    }
}

/// A source of copied data as `table.column`: a column whose nullness alone is read counts as
/// read (conservative, as for `COPY (query) TO`).
fn copied_name(s: &gatehouse_sql::Source) -> String {
    match s {
        gatehouse_sql::Source::Nullness { table, column } => format!("{table}.{column}"),
        other => source_name(other),
    }
}

/// Marks a lineage name whose value shows only whether the column is NULL (`count(col)`,
/// `col IS NULL`): `=null:table.column`. It counts as a source only when the column turns out to
/// be a view's expression column.
pub(crate) const NULLNESS_PREFIX: &str = "=null:";

fn convert_lineage(l: gatehouse_sql::Lineage) -> ColumnLineage {
    if l.is_positional() {
        ColumnLineage::Positional(
            l.columns
                .iter()
                .map(|c| c.sources.iter().map(source_name).collect())
                .collect(),
        )
    } else {
        ColumnLineage::Union(l.all_sources().iter().map(source_name).collect())
    }
}

/// Built-in functions that cannot change a setting (and that a session cannot shadow without
/// changing `search_path`, which is itself followed). Any other function may run code that does.
const PURE_FUNCTIONS: &[&str] = &[
    "abs",
    "array_agg",
    "array_length",
    "avg",
    "btrim",
    "ceil",
    "char_length",
    "coalesce",
    "concat",
    "concat_ws",
    "count",
    "current_date",
    "current_setting",
    "current_timestamp",
    "current_user",
    "date_part",
    "date_trunc",
    "encode",
    "decode",
    "exists",
    "extract",
    "floor",
    "format",
    "generate_series",
    "greatest",
    "json_agg",
    "json_build_object",
    "jsonb_agg",
    "jsonb_build_object",
    "least",
    "left",
    "length",
    "localtimestamp",
    "lower",
    "ltrim",
    "max",
    "md5",
    "min",
    "mod",
    "now",
    "nullif",
    "octet_length",
    "position",
    "random",
    "replace",
    "right",
    "round",
    "row_number",
    "row_to_json",
    "rtrim",
    "session_user",
    "split_part",
    "string_agg",
    "strpos",
    "substr",
    "substring",
    "sum",
    "to_char",
    "to_json",
    "to_jsonb",
    "to_number",
    "to_timestamp",
    "trim",
    "trunc",
    "upper",
    "version",
];

fn pure_function(name: &str) -> bool {
    let bare = name.strip_prefix("pg_catalog.").unwrap_or(name);
    PURE_FUNCTIONS.contains(&bare)
}

/// Whether the statement names `backslash_quote` anywhere (a `SET`, `RESET` or `set_config`).
fn names_backslash_quote(stmt: &str) -> bool {
    memchr::memmem::find(stmt.to_ascii_lowercase().as_bytes(), b"backslash_quote").is_some()
}

/// The session effect of a statement classified by gatehouse-sql.
/// The proxy resolves `PREPARE`/`EXECUTE`/`DEALLOCATE` names with its own reader
/// ([`crate::prepared::name_op`]); PostgreSQL's parser must read the same name, or the statement
/// is not understood (an `EXECUTE` would otherwise be decided as another statement than the one
/// the server runs).
fn prepared_name_disagrees(
    st: &gatehouse_sql::StatementInfo,
    stmt: &str,
    settings: &SqlSessionSettings,
) -> Option<String> {
    use crate::prepared::NameOp;
    let ours = match crate::prepared::name_op(stmt, settings.standard_conforming_strings) {
        Ok(Some(
            NameOp::Prepare { name, .. }
            | NameOp::Execute { name, .. }
            | NameOp::Deallocate { name },
        )) => Some(name),
        Ok(Some(NameOp::DeallocateAll) | None) => None,
        // Refused where it is resolved, as a statement that cannot be read.
        Err(()) => return None,
    };
    (ours != st.prepared_name).then(|| {
        format!(
            "the gateway reads the prepared statement's name as {ours:?} where PostgreSQL reads \
             {:?}",
            st.prepared_name
        )
    })
}

fn session_effect(st: &gatehouse_sql::StatementInfo, stmt: &str) -> SessionEffect {
    use gatehouse_sql::StatementKind as K;
    if st.settings_changed.contains("backslash_quote")
        || (!st.settings_changed.is_empty() && names_backslash_quote(stmt))
    {
        return SessionEffect::BackslashQuote;
    }
    let ends_transaction = st.kind == K::Transaction
        && first_keyword(stmt).is_some_and(|w| {
            let w = w.to_ascii_lowercase();
            matches!(
                w.as_str(),
                "commit" | "end" | "rollback" | "abort" | "prepare"
            )
        });
    let opaque = st.kinds.iter().any(|k| {
        matches!(
            k,
            K::Set | K::DoBlock | K::Call | K::Execute | K::Unparseable | K::Other
        )
    }) || st.has(gatehouse_sql::Risk::OpaqueCode)
        || st.has(gatehouse_sql::Risk::EncodingChange)
        || !st.settings_changed.is_empty()
        || st.functions.iter().any(|f| !pure_function(f));
    if opaque || ends_transaction {
        SessionEffect::Lexer
    } else {
        SessionEffect::None
    }
}

/// The session effect of a statement known only by its leading keyword: anything but plain
/// transaction starts may change settings.
fn lexical_effect(stmt: &str, kind: StatementKind) -> SessionEffect {
    if names_backslash_quote(stmt) {
        return SessionEffect::BackslashQuote;
    }
    let begins = kind == StatementKind::Transaction
        && first_keyword(stmt).is_some_and(|w| {
            let w = w.to_ascii_lowercase();
            matches!(w.as_str(), "begin" | "start" | "savepoint" | "release")
        });
    if begins {
        SessionEffect::None
    } else {
        SessionEffect::Lexer
    }
}

/// Exactly which columns a `COPY … TO` reads: the lineage of `COPY (query)`, or the listed
/// columns of `COPY table (a, b)`, or `table.*`.
fn copy_reads(stmt: &str, settings: &SqlSessionSettings) -> Option<Vec<String>> {
    let mut rest = stmt.trim_start().get(4..)?.trim_start();
    // The pre-9.0 syntax `COPY BINARY table …`: `binary` is a keyword, never a table name.
    if rest.len() > 6
        && rest
            .get(..6)
            .is_some_and(|w| w.eq_ignore_ascii_case("binary"))
        && rest
            .get(6..7)
            .is_some_and(|c| c.chars().all(char::is_whitespace))
    {
        rest = rest.get(6..)?.trim_start();
    }
    if let Some(inner) = rest.strip_prefix('(') {
        let end = matching_paren(inner)?;
        let query = inner.get(..end)?;
        let lineage = gatehouse_sql::lineage(query, settings, &gatehouse_sql::NoCatalog).ok()?;
        // Conservative: a column whose nullness alone is read counts as read.
        return Some(
            lineage
                .all_sources()
                .into_iter()
                .map(|s| match s {
                    gatehouse_sql::Source::Nullness { table, column } => {
                        gatehouse_sql::Source::Column { table, column }
                    }
                    other => other,
                })
                .map(|s| source_name(&s))
                .collect(),
        );
    }
    let name_end = rest
        .find(|c: char| c.is_whitespace() || c == '(')
        .unwrap_or(rest.len());
    let table = rest.get(..name_end)?;
    if table.contains('"') {
        return None;
    }
    let table = table.to_ascii_lowercase();
    let after = rest.get(name_end..)?.trim_start();
    if let Some(cols) = after.strip_prefix('(') {
        let end = cols.find(')')?;
        let list = cols.get(..end)?;
        if list.contains('"') {
            return None;
        }
        return Some(
            list.split(',')
                .map(|c| format!("{table}.{}", c.trim().to_ascii_lowercase()))
                .collect(),
        );
    }
    Some(vec![format!("{table}.*")])
}

/// Index of the `)` closing an already opened parenthesis, skipping quoted text.
fn matching_paren(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut depth = 1i32;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            q @ (b'\'' | b'"') => {
                i = skip_quoted(b, i + 1, q, false)?;
                continue;
            }
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

fn copy_is_from(stmt: &str) -> bool {
    // `COPY t (cols) FROM STDIN` writes into the table; anything else (`TO`) reads out of it.
    let lower = stmt.to_ascii_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .collect();
    words.contains(&"from") && !words.contains(&"to") && !lower.trim_start().starts_with("copy (")
}

fn creates_view_or_function(stmt: &str) -> bool {
    let lower = stmt.to_ascii_lowercase();
    let head: Vec<&str> = lower.split_whitespace().take(8).collect();
    head.first() == Some(&"create")
        && head
            .iter()
            .any(|w| matches!(*w, "view" | "function" | "procedure" | "rule" | "trigger"))
}

/// Built-in trigger functions that write no column from another (`tsvector_update_trigger`,
/// which fills a column from text columns, is not one).
const NON_COPYING_TRIGGER_FUNCTIONS: &[&str] = &["suppress_redundant_updates_trigger"];

/// Whether `functions` names one of [`NON_COPYING_TRIGGER_FUNCTIONS`] (unqualified or in
/// `pg_catalog`): the session checks that no function of that name is defined outside
/// `pg_catalog`, where an unqualified call could resolve to it.
pub(crate) fn names_non_copying_trigger<'a>(
    functions: impl IntoIterator<Item = &'a String>,
) -> bool {
    functions.into_iter().any(|f| {
        let builtin = matches!(f.split_once('.'), None | Some(("pg_catalog", _)));
        builtin && NON_COPYING_TRIGGER_FUNCTIONS.contains(&f.rsplit('.').next().unwrap_or(f))
    })
}

/// Whether `stmt` is a `CREATE [OR REPLACE] [CONSTRAINT] TRIGGER` that runs a built-in trigger
/// function writing no column from another, and calls nothing else but side-effect-free
/// built-ins (in its `WHEN` condition): it copies no column, so it is not a masked-column copy
/// (it stays code the gateway cannot see into, held as the policy holds such code).
fn creates_non_copying_trigger<'a>(
    stmt: &str,
    functions: impl IntoIterator<Item = &'a String>,
) -> bool {
    let lower = stmt.to_ascii_lowercase();
    let mut words = lower.split_whitespace().peekable();
    if words.next() != Some("create") {
        return false;
    }
    if words.peek() == Some(&"or") {
        words.next();
        if words.next() != Some("replace") {
            return false;
        }
    }
    if words.peek() == Some(&"constraint") {
        words.next();
    }
    if words.next() != Some("trigger") {
        return false;
    }
    let mut trigger_function = false;
    for f in functions {
        let builtin = matches!(f.split_once('.'), None | Some(("pg_catalog", _)));
        let base = f.rsplit('.').next().unwrap_or(f);
        if builtin && NON_COPYING_TRIGGER_FUNCTIONS.contains(&base) {
            trigger_function = true;
        } else if !gatehouse_sql::is_safe_function(f) {
            return false;
        }
    }
    trigger_function
}

/// Byte ranges of the statements of `text`, split on top-level `;` the way PostgreSQL's own
/// lexer sees them. Ranges are trimmed of surrounding whitespace; empty ones are kept out by the
/// caller (`classify_leading` returns `None` for them).
pub fn split(
    text: &str,
    standard_conforming_strings: bool,
) -> Result<Vec<Range<usize>>, AnalyzeError> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut start = 0usize;
    let mut i = 0usize;
    let mut depth = 0i32; // parentheses, so `BEGIN ATOMIC … END` bodies inside parens stay whole
    let mut atomic = false;
    while i < b.len() {
        let c = b[i];
        match c {
            b'\'' => {
                let escapes = !standard_conforming_strings
                    || (i > 0
                        && matches!(b[i - 1], b'e' | b'E')
                        && !is_ident_byte_before(b, i - 1));
                i = skip_quoted(b, i + 1, b'\'', escapes)
                    .ok_or(AnalyzeError::Unterminated("string"))?;
            }
            b'"' => {
                i = skip_quoted(b, i + 1, b'"', false)
                    .ok_or(AnalyzeError::Unterminated("quoted identifier"))?;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = memchr::memchr(b'\n', &b[i..]).map_or(b.len(), |p| i + p + 1);
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = skip_block_comment(b, i).ok_or(AnalyzeError::Unterminated("comment"))?;
            }
            b'$' if i == 0 || !is_ident_byte(b[i - 1]) => {
                // $tag$ … $tag$ (tag may be empty); `$1` is a parameter, not a quote.
                let tag_end = b[i + 1..]
                    .iter()
                    .position(|&x| !(x.is_ascii_alphanumeric() || x == b'_' || x >= 0x80))
                    .map(|p| i + 1 + p);
                match tag_end {
                    Some(e) if b[e] == b'$' && !b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                        let tag = &b[i..=e];
                        let body_start = e + 1;
                        let close = memchr::memmem::find(&b[body_start..], tag)
                            .ok_or(AnalyzeError::Unterminated("dollar-quoted string"))?;
                        i = body_start + close + tag.len();
                    }
                    _ => i += 1,
                }
            }
            b'(' => {
                depth += 1;
                i += 1;
            }
            b')' => {
                depth -= 1;
                i += 1;
            }
            b';' if depth <= 0 && !atomic => {
                out.push(trim(text, start..i));
                i += 1;
                start = i;
            }
            _ if c.is_ascii_alphabetic() && (i == 0 || !is_ident_byte(b[i - 1])) => {
                let end = b[i..]
                    .iter()
                    .position(|&x| !is_ident_byte(x))
                    .map_or(b.len(), |p| i + p);
                let word = &text[i..end];
                if word.eq_ignore_ascii_case("atomic") && prev_word_is_begin(text, i) {
                    atomic = true;
                } else if atomic && word.eq_ignore_ascii_case("end") {
                    atomic = false;
                }
                i = end;
            }
            _ => i += 1,
        }
    }
    out.push(trim(text, start..b.len()));
    Ok(out.into_iter().filter(|r| !r.is_empty()).collect())
}

fn prev_word_is_begin(text: &str, i: usize) -> bool {
    let before = text[..i].trim_end();
    before.len() >= 5
        && before[before.len() - 5..].eq_ignore_ascii_case("begin")
        && !before.as_bytes()[..before.len() - 5]
            .last()
            .is_some_and(|&c| is_ident_byte(c))
}

fn is_ident_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

fn is_ident_byte_before(b: &[u8], i: usize) -> bool {
    i > 0 && is_ident_byte(b[i - 1])
}

/// Index just past the closing quote, or `None` if unterminated. Doubled quotes escape.
/// Index just past a (nested) block comment that starts at `i` (`/*`), or `None` if unterminated.
pub(crate) fn skip_block_comment(b: &[u8], mut i: usize) -> Option<usize> {
    let mut nest = 1;
    i += 2;
    while nest > 0 {
        match (b.get(i), b.get(i + 1)) {
            (Some(b'/'), Some(b'*')) => {
                nest += 1;
                i += 2;
            }
            (Some(b'*'), Some(b'/')) => {
                nest -= 1;
                i += 2;
            }
            (Some(_), _) => i += 1,
            (None, _) => return None,
        }
    }
    Some(i)
}

pub(crate) fn skip_quoted(
    b: &[u8],
    mut i: usize,
    quote: u8,
    backslash_escapes: bool,
) -> Option<usize> {
    while i < b.len() {
        let c = b[i];
        if backslash_escapes && c == b'\\' {
            i += 2;
            continue;
        }
        if c == quote {
            if b.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return Some(i + 1);
        }
        i += 1;
    }
    None
}

fn trim(text: &str, r: Range<usize>) -> Range<usize> {
    let s = &text[r.clone()];
    let lead = s.len() - s.trim_start().len();
    let trail = s.len() - s.trim_end().len();
    r.start + lead..r.end - trail
}

/// Kind from the first keyword (after comments and parentheses); `None` for an empty statement.
pub fn classify_leading(stmt: &str) -> Option<StatementKind> {
    let word = first_keyword(stmt)?;
    let w = word.to_ascii_lowercase();
    Some(match w.as_str() {
        "select" | "values" | "table" | "show" | "explain" | "with" | "fetch" | "declare" => {
            StatementKind::Read
        }
        "insert" | "update" | "delete" | "merge" => StatementKind::Write,
        "copy" => StatementKind::Copy,
        "create" | "alter" | "drop" | "truncate" | "grant" | "revoke" | "comment" | "reindex"
        | "cluster" | "vacuum" | "security" | "refresh" | "import" => StatementKind::Ddl,
        "begin" | "start" | "commit" | "end" | "rollback" | "abort" | "savepoint" | "release"
        | "prepare" => StatementKind::Transaction,
        _ => StatementKind::Other,
    })
}

/// The first keyword of a statement, skipping whitespace, comments and opening parentheses.
pub fn first_keyword(stmt: &str) -> Option<&str> {
    let b = stmt.as_bytes();
    let mut i = 0;
    loop {
        while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b'(') {
            i += 1;
        }
        if b.get(i..i + 2) == Some(b"--") {
            i = memchr::memchr(b'\n', &b[i..]).map_or(b.len(), |p| i + p + 1);
            continue;
        }
        if b.get(i..i + 2) == Some(b"/*") {
            i = memchr::memmem::find(&b[i..], b"*/").map_or(b.len(), |p| i + p + 2);
            continue;
        }
        break;
    }
    let end = b[i..]
        .iter()
        .position(|c| !c.is_ascii_alphabetic())
        .map_or(b.len(), |p| i + p);
    if end == i { None } else { stmt.get(i..end) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cached_analyzer_answers_like_the_inner_one() {
        let cached = CachedAnalyzer::new(SqlAnalyzer, 4);
        let on = SqlSessionSettings::default();
        let off = SqlSessionSettings {
            standard_conforming_strings: false,
            ..SqlSessionSettings::default()
        };
        let texts = [
            "select 1; select email from users",
            "select 'a\\'; drop table t; --'",
            "select (",
            "insert into t select * from u",
            "select 2",
            "select 3",
        ];
        for _ in 0..3 {
            for t in texts {
                for s in [&on, &off] {
                    assert_eq!(cached.analyze(t, s), SqlAnalyzer.analyze(t, s), "{t}");
                }
            }
        }
        let memo = cached.memo();
        assert!(memo.new.len() + memo.old.len() <= 4);
    }

    /// Texts that differ only in integer literals share one memo entry when the analyzer is
    /// integer-invariant, and each gets exactly what the analyzer gives it alone (its own spans,
    /// tables, lineage); digits in names, strings, comments and over-long integers keep texts
    /// apart.
    #[test]
    fn texts_differing_in_integers_share_an_entry_and_keep_their_own_answers() {
        let templates = [
            "select abalance from pgbench_accounts where aid = {};",
            "  select {} ;  select email from users where id = {}  ;",
            "BEGIN; UPDATE pgbench_accounts SET abalance = abalance + {} WHERE aid = {}; \
             SELECT abalance FROM pgbench_accounts WHERE aid = {}; END;",
            "copy (select email from users limit {}) to stdout",
            "copy users (id, email) to stdout -- first {} rows",
            "insert into archive select * from users where id > {}",
            "select substr(email, {}, {}) from users order by {} limit {} offset {}",
            "select 'x{}', email from users",
            "select * from users where id = {}::int8 and name = E'a\\'{}'",
            "create function f() returns int as $$ select {} $$ language sql",
            "create view v as select email from users where id < {}",
            "select email from t{} where a = {}",
            "select ({}",
            "fetch {} from c; select {}",
            "select email from users limit {}; drop table t{}",
        ];
        let values = ["1", "42", "123456789", "007", "999999999999999999"];
        let on = SqlSessionSettings::default();
        let off = SqlSessionSettings {
            standard_conforming_strings: false,
            ..SqlSessionSettings::default()
        };
        for template in templates {
            for settings in [&on, &off] {
                let cached = CachedAnalyzer::new(SqlAnalyzer, 64);
                let texts: Vec<String> = values
                    .iter()
                    .enumerate()
                    .map(|(i, _)| {
                        // Different values in one text too, so spans shift by different amounts.
                        let mut t = template.to_string();
                        let mut k = i;
                        while let Some(at) = t.find("{}") {
                            t.replace_range(at..at + 2, values[k % values.len()]);
                            k += 1;
                        }
                        t
                    })
                    .collect();
                for t in &texts {
                    assert_eq!(
                        cached.analyze(t, settings),
                        SqlAnalyzer.analyze(t, settings),
                        "{t}"
                    );
                }
                let memo = cached.memo();
                let entries = memo.new.len() + memo.old.len();
                let digits_elsewhere = ["t{}", "'x{}'", "\\'{}'", "-- ", "$$ select {}"];
                if digits_elsewhere.iter().any(|d| template.contains(d)) {
                    assert!(
                        entries > 1,
                        "{template}: digits outside integers were merged"
                    );
                } else {
                    assert_eq!(entries, 1, "{template}: not shared");
                }
            }
        }
        // Over 18 digits an integer is kept as written: its own entry.
        let cached = CachedAnalyzer::new(SqlAnalyzer, 64);
        for t in ["select 1", "select 1234567890123456789", "select 2"] {
            assert_eq!(cached.analyze(t, &on), SqlAnalyzer.analyze(t, &on), "{t}");
        }
        let memo = cached.memo();
        assert_eq!(memo.new.len() + memo.old.len(), 2);
    }

    use super::*;

    fn parts(text: &str) -> Vec<&str> {
        split(text, true)
            .unwrap()
            .into_iter()
            .map(|r| &text[r])
            .collect()
    }

    #[test]
    fn splits_on_top_level_semicolons_only() {
        assert_eq!(parts("select 1; select 2"), vec!["select 1", "select 2"]);
        assert_eq!(
            parts("select ';'; select \"a;b\""),
            vec!["select ';'", "select \"a;b\""]
        );
        assert_eq!(
            parts("select $$;$$; select $x$ $$; $x$"),
            vec!["select $$;$$", "select $x$ $$; $x$"]
        );
        assert_eq!(
            parts("select 1 -- ;\n; /* ; /* ; */ */ select 2"),
            vec!["select 1 -- ;", "/* ; /* ; */ */ select 2"]
        );
        assert_eq!(
            parts("select E'\\';'; drop table t"),
            vec!["select E'\\';'", "drop table t"]
        );
        assert_eq!(parts(";; select 1;;"), vec!["select 1"]);
        assert_eq!(parts("select $1; select 2"), vec!["select $1", "select 2"]);
        assert_eq!(
            parts(
                "create function f() returns int begin atomic select 1; select 2; end; drop table t"
            ),
            vec![
                "create function f() returns int begin atomic select 1; select 2; end",
                "drop table t"
            ]
        );
    }

    #[test]
    fn backslash_escapes_follow_standard_conforming_strings() {
        let t = "select 'a\\'; drop table t; --'";
        let on = SqlSessionSettings::default();
        let stmts = LexicalAnalyzer.analyze(t, &on).unwrap();
        assert_eq!(stmts.len(), 2, "a trailing comment is not a statement");
        assert_eq!(stmts[1].kind, StatementKind::Ddl);
        // With standard_conforming_strings off, the backslash escapes the quote: one statement
        // whose string runs to the final quote.
        assert_eq!(split(t, false).unwrap().len(), 1);
        assert!(split("select 'a\\'; drop table t", false).is_err());
    }

    #[test]
    fn unterminated_constructs_are_errors() {
        for t in [
            "select 'x",
            "select \"x",
            "select $$x",
            "select /* x",
            "select /* /* */",
        ] {
            assert!(split(t, true).is_err(), "{t}");
        }
    }

    #[test]
    fn kinds_from_leading_keyword() {
        assert_eq!(classify_leading("  (SELECT 1)"), Some(StatementKind::Read));
        assert_eq!(
            classify_leading("/* x */ DROP TABLE t"),
            Some(StatementKind::Ddl)
        );
        assert_eq!(
            classify_leading("-- c\ndelete from t"),
            Some(StatementKind::Write)
        );
        assert_eq!(classify_leading("BEGIN"), Some(StatementKind::Transaction));
        assert_eq!(classify_leading("  "), None);
    }
}
