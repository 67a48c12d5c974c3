//! Statement classification: what each statement of a query string is and what it touches.
//!
//! Promise: every statement PostgreSQL would run appears in the result, in order; a statement
//! this module cannot read with certainty is [`StatementKind::Unparseable`] with a reason —
//! never a guess. Sets are conservative: nested statements (writable CTEs, `PREPARE … AS`,
//! `EXPLAIN …`) add their kinds and risks to the outer statement.

use std::collections::BTreeSet;
use std::ops::Range;

use gatehouse_core::SqlSessionSettings;
use serde::{Deserialize, Serialize};
use sqlparser::ast::{ObjectName, ObjectNamePart, Statement};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::lex;

/// What kind of statement this is. Names (see [`StatementKind::as_str`]) are what policy files use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StatementKind {
    /// `SELECT`, `VALUES`, `TABLE`, `WITH … SELECT`.
    Select,
    /// `INSERT`.
    Insert,
    /// `UPDATE`.
    Update,
    /// `DELETE`.
    Delete,
    /// `MERGE`.
    Merge,
    /// `CREATE`/`ALTER`/`COMMENT`/`RENAME` of any object (tables, functions, roles, …).
    Ddl,
    /// `DROP` of any object.
    Drop,
    /// `TRUNCATE`.
    Truncate,
    /// `COPY`.
    Copy,
    /// `GRANT`.
    Grant,
    /// `REVOKE`.
    Revoke,
    /// `SET`, `RESET`, `DISCARD`, `SET ROLE`, `SET SESSION AUTHORIZATION`.
    Set,
    /// `SHOW`.
    Show,
    /// `DO` (an anonymous code block: its body cannot be analysed).
    DoBlock,
    /// `CALL` of a procedure.
    Call,
    /// `PREPARE name AS …` (the prepared statement is classified too).
    Prepare,
    /// `EXECUTE name` of a prepared statement (what it runs is not in the text).
    Execute,
    /// `DEALLOCATE`.
    Deallocate,
    /// `BEGIN`, `START TRANSACTION`, `COMMIT`, `ROLLBACK`, savepoints.
    Transaction,
    /// `EXPLAIN` (its statement is classified too: `EXPLAIN ANALYZE` runs it).
    Explain,
    /// `LOCK`.
    Lock,
    /// `VACUUM`, `ANALYZE`.
    Maintenance,
    /// `LISTEN`, `UNLISTEN`, `NOTIFY`.
    Notify,
    /// `DECLARE … CURSOR`, `FETCH`, `CLOSE`.
    Cursor,
    /// `ALTER SYSTEM` (changes server configuration for everyone).
    AlterSystem,
    /// Parsed, but of no kind above.
    Other,
    /// Could not be read with certainty (see [`StatementInfo::unparseable_reason`]).
    Unparseable,
}

impl StatementKind {
    /// Every kind, for validation and listings.
    pub const ALL: &'static [StatementKind] = &[
        StatementKind::Select,
        StatementKind::Insert,
        StatementKind::Update,
        StatementKind::Delete,
        StatementKind::Merge,
        StatementKind::Ddl,
        StatementKind::Drop,
        StatementKind::Truncate,
        StatementKind::Copy,
        StatementKind::Grant,
        StatementKind::Revoke,
        StatementKind::Set,
        StatementKind::Show,
        StatementKind::DoBlock,
        StatementKind::Call,
        StatementKind::Prepare,
        StatementKind::Execute,
        StatementKind::Deallocate,
        StatementKind::Transaction,
        StatementKind::Explain,
        StatementKind::Lock,
        StatementKind::Maintenance,
        StatementKind::Notify,
        StatementKind::Cursor,
        StatementKind::AlterSystem,
        StatementKind::Other,
        StatementKind::Unparseable,
    ];

    /// The name used in policy files and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            StatementKind::Select => "select",
            StatementKind::Insert => "insert",
            StatementKind::Update => "update",
            StatementKind::Delete => "delete",
            StatementKind::Merge => "merge",
            StatementKind::Ddl => "ddl",
            StatementKind::Drop => "drop",
            StatementKind::Truncate => "truncate",
            StatementKind::Copy => "copy",
            StatementKind::Grant => "grant",
            StatementKind::Revoke => "revoke",
            StatementKind::Set => "set",
            StatementKind::Show => "show",
            StatementKind::DoBlock => "do_block",
            StatementKind::Call => "call",
            StatementKind::Prepare => "prepare",
            StatementKind::Execute => "execute",
            StatementKind::Deallocate => "deallocate",
            StatementKind::Transaction => "transaction",
            StatementKind::Explain => "explain",
            StatementKind::Lock => "lock",
            StatementKind::Maintenance => "maintenance",
            StatementKind::Notify => "notify",
            StatementKind::Cursor => "cursor",
            StatementKind::AlterSystem => "alter_system",
            StatementKind::Other => "other",
            StatementKind::Unparseable => "unparseable",
        }
    }

    /// The kind with this policy-file name.
    pub fn from_name(name: &str) -> Option<StatementKind> {
        StatementKind::ALL
            .iter()
            .copied()
            .find(|k| k.as_str() == name)
    }
}

impl std::fmt::Display for StatementKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A risky form a statement contains. Names (see [`Risk::as_str`]) are what policy files use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Risk {
    /// `UPDATE` or `DELETE` without a `WHERE` clause (every row).
    WriteWithoutWhere,
    /// `COPY … TO/FROM PROGRAM`: runs a shell command on the database server.
    CopyProgram,
    /// `COPY … TO/FROM 'file'`: reads or writes a file on the database server.
    CopyFile,
    /// A data-modifying statement inside `WITH`.
    WritableCte,
    /// `SELECT … INTO new_table`.
    SelectInto,
    /// `CREATE TABLE … AS` / `CREATE MATERIALIZED VIEW … AS`.
    CreateTableAs,
    /// Changes `standard_conforming_strings` or `client_encoding` (or resets all settings):
    /// later statements would be split differently.
    EncodingChange,
    /// `SET ROLE`, `SET SESSION AUTHORIZATION`, or `set_config('role', …)`.
    RoleChange,
    /// A function or procedure in a language other than `sql`/`plpgsql` (e.g. `plpython3u`, `c`).
    UntrustedLanguage,
    /// An effect the classifier cannot see from the text: a `DO` block, `CALL`, `LOAD`,
    /// `EXECUTE` of a prepared statement, creating or changing functions, procedures, triggers,
    /// rules, event triggers, policies, extensions, casts, operators or aggregates, a call of any
    /// function that is not a known side-effect-free built-in, or a change of a setting that
    /// changes what later statements run or how they are read (`search_path`, `role`, …). See
    /// [`StatementInfo::opaque_reasons`].
    OpaqueCode,
    /// An `UPDATE` (or the update or insert of a `MERGE`, or the update of an `ON CONFLICT`)
    /// that sets columns from other columns or subqueries (`SET notes = encode(phone, …)`,
    /// `WHEN NOT MATCHED THEN INSERT VALUES (s.id, reverse(s.email))`): it can copy one
    /// column's content into another.
    WriteFromColumns,
}

impl Risk {
    /// Every risk, for validation and listings.
    pub const ALL: &'static [Risk] = &[
        Risk::WriteWithoutWhere,
        Risk::CopyProgram,
        Risk::CopyFile,
        Risk::WritableCte,
        Risk::SelectInto,
        Risk::CreateTableAs,
        Risk::EncodingChange,
        Risk::RoleChange,
        Risk::UntrustedLanguage,
        Risk::OpaqueCode,
        Risk::WriteFromColumns,
    ];

    /// The name used in policy files and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Risk::WriteWithoutWhere => "write_without_where",
            Risk::CopyProgram => "copy_program",
            Risk::CopyFile => "copy_file",
            Risk::WritableCte => "writable_cte",
            Risk::SelectInto => "select_into",
            Risk::CreateTableAs => "create_table_as",
            Risk::EncodingChange => "encoding_change",
            Risk::RoleChange => "role_change",
            Risk::UntrustedLanguage => "untrusted_language",
            Risk::OpaqueCode => "opaque_code",
            Risk::WriteFromColumns => "write_from_columns",
        }
    }

    /// The risk with this policy-file name.
    pub fn from_name(name: &str) -> Option<Risk> {
        Risk::ALL.iter().copied().find(|r| r.as_str() == name)
    }
}

impl std::fmt::Display for Risk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One classified statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatementInfo {
    /// Byte range of the statement in the text (without its `;`).
    pub span: Range<usize>,
    /// The statement's own kind.
    pub kind: StatementKind,
    /// `kind` plus the kinds of statements nested in it (writable CTEs, `PREPARE … AS DELETE`,
    /// `EXPLAIN ANALYZE UPDATE`, `CREATE TABLE … AS SELECT`).
    pub kinds: BTreeSet<StatementKind>,
    /// Relations named anywhere in the statement, normalised as PostgreSQL resolves spelling:
    /// unquoted parts lower-cased, quoted parts kept, each part cut to 63 bytes, joined with `.`.
    /// Conservative: CTE names and dropped/created objects are included.
    pub tables: BTreeSet<String>,
    /// Functions called (including table functions and `CALL`), normalised like `tables`.
    pub functions: BTreeSet<String>,
    /// Risky forms present.
    pub risks: BTreeSet<Risk>,
    /// Settings changed (`SET`, `RESET`, `set_config`), lower-cased; `all` for `RESET ALL` /
    /// `DISCARD ALL`, `*` when the name is not a literal.
    pub settings_changed: BTreeSet<String>,
    /// Languages of functions/procedures created, lower-cased.
    pub languages: BTreeSet<String>,
    /// Why the statement could not be read, when `kind` is `Unparseable`.
    pub unparseable_reason: Option<String>,
    /// Why the statement is opaque ([`Risk::OpaqueCode`]): one entry per construct whose
    /// effect cannot be seen from the text (a `DO` block, a call of a function that is not a
    /// known side-effect-free built-in, `EXECUTE` of a prepared statement, …).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub opaque_reasons: BTreeSet<String>,
    /// Types named in casts, column definitions and domain definitions, normalised like
    /// `tables` (`span`, `public.span`; built-in spellings as the parser writes them:
    /// `pg_catalog.int4`, `text`, `serial`). A type's support functions (input, output, a
    /// range's `subtype_diff`, …) run where it is used, so the proxy looks them up.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub types: BTreeSet<String>,
    /// Operators written in the statement (`=`, `===`, `public.@@` from `OPERATOR(public.@@)`,
    /// the operator of `x = ANY (subquery)`), qualified as written. An operator runs the
    /// function behind it (and its selectivity estimators while planning), so the proxy looks
    /// them up like functions. Operators PostgreSQL picks implicitly (`JOIN … USING`, `CASE x
    /// WHEN`, sorting) are not listed.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub operators: BTreeSet<String>,
    /// Operator classes named in index, exclusion-constraint and partition-key columns
    /// (`text_pattern_ops`, `public.my_ops`), and `@` followed by the access method of every
    /// index or exclusion constraint it creates (`@gist`: its default classes apply to columns
    /// without one). An index build runs its classes' support functions.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub opclasses: BTreeSet<String>,
    /// The statement is DDL that cannot attach code for later statements to run: `CREATE
    /// TABLE` (no `INHERITS`, `PARTITION OF`/`BY`, `LIKE`, `OF type`, table access method or
    /// exclusion constraint), `CREATE`/`ALTER SEQUENCE`, `CREATE INDEX` with `btree` or `hash`
    /// on columns or expressions without a named operator class, `ALTER TABLE` adding or
    /// dropping columns, defaults, `NOT NULL` and non-exclusion constraints (but no foreign
    /// key that cascades, sets null or sets a default into the existing table). Code can still
    /// come from what it names: functions in its expressions and the types of its columns
    /// (see `functions` and `types`), which the caller must vet.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub plain_ddl: bool,
    /// The prepared statement named by `PREPARE`, `EXECUTE` or `DEALLOCATE` (as PostgreSQL
    /// reads the name; `None` for `DEALLOCATE ALL`), so the proxy can resolve what an `EXECUTE`
    /// runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepared_name: Option<String>,
}

impl StatementInfo {
    fn new(span: Range<usize>, kind: StatementKind) -> Self {
        let mut kinds = BTreeSet::new();
        kinds.insert(kind);
        Self {
            span,
            kind,
            kinds,
            tables: BTreeSet::new(),
            functions: BTreeSet::new(),
            risks: BTreeSet::new(),
            settings_changed: BTreeSet::new(),
            languages: BTreeSet::new(),
            unparseable_reason: None,
            opaque_reasons: BTreeSet::new(),
            types: BTreeSet::new(),
            operators: BTreeSet::new(),
            opclasses: BTreeSet::new(),
            plain_ddl: false,
            prepared_name: None,
        }
    }

    fn unparseable(span: Range<usize>, reason: impl Into<String>) -> Self {
        let mut info = Self::new(span, StatementKind::Unparseable);
        info.unparseable_reason = Some(reason.into());
        info
    }

    /// Whether this statement could be read with certainty.
    pub fn is_parsed(&self) -> bool {
        self.kind != StatementKind::Unparseable
    }

    /// Whether the statement has `risk`.
    pub fn has(&self, risk: Risk) -> bool {
        self.risks.contains(&risk)
    }
}

/// Every statement of a query string, in order. Empty statements (`;;`, comments only) are
/// skipped, as PostgreSQL skips them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Classification {
    /// The statements.
    pub statements: Vec<StatementInfo>,
}

impl Classification {
    /// Whether every statement was read with certainty.
    pub fn is_fully_parsed(&self) -> bool {
        self.statements.iter().all(StatementInfo::is_parsed)
    }
}

/// Classifies every statement of `text` as PostgreSQL would split it under `settings`.
///
/// Never fails: what cannot be read is reported as [`StatementKind::Unparseable`] with a reason.
/// When the text stops being readable part-way (an unterminated quote or comment), the statements
/// before that point are still listed — PostgreSQL would reject the whole string, but a policy
/// should see what was attempted — followed by one unparseable entry spanning the rest.
///
/// Each statement is read by PostgreSQL's own parser (libpg_query) under the session's
/// `standard_conforming_strings`, after the splitter in this crate cut the text as the server's
/// scanner does under the session's `client_encoding`; the two must agree on every boundary, or
/// the statement is unparseable.
pub fn classify(text: &str, settings: &SqlSessionSettings) -> Classification {
    let (pieces, failure) = match lex::split(text, settings) {
        Ok(pieces) => (pieces, None),
        Err((pieces, failure)) => (pieces, Some(failure)),
    };
    let mut statements: Vec<StatementInfo> = pieces
        .into_iter()
        .filter(|p| !p.is_empty)
        .map(|p| classify_piece(&p, settings))
        .collect();
    if let Some(failure) = failure {
        statements.push(StatementInfo::unparseable(failure.span, failure.reason));
    }
    Classification { statements }
}

/// Classifications made most recently on this thread.
const CLASSIFY_MEMO: usize = 8;
/// Longest statement text the classification memo keeps.
const CLASSIFY_MEMO_MAX_TEXT: usize = 8 * 1024;

/// One classification memo entry: the parser's input, the setting it was read under, and the
/// answer (span left at 0..0).
struct Classified {
    parse_text: String,
    standard_conforming_strings: bool,
    info: StatementInfo,
}

thread_local! {
    /// The last [`CLASSIFY_MEMO`] classifications on this thread, newest last. The layers of one
    /// request each classify the same statement on the same thread (the proxy's analyzer, then
    /// the policy), so it is parsed once; since integer literals are rewritten in the parser's
    /// input, statements differing only in them share one entry. A classification depends on
    /// the parser's input and the lexer setting alone, so a hit is exactly what parsing again
    /// would give.
    static CLASSIFIED: std::cell::RefCell<std::collections::VecDeque<Classified>> =
        const { std::cell::RefCell::new(std::collections::VecDeque::new()) };
}

pub(crate) fn classify_piece(
    piece: &lex::LexedStatement,
    settings: &SqlSessionSettings,
) -> StatementInfo {
    let span = piece.span.clone();
    if let Some(problem) = &piece.problem {
        return StatementInfo::unparseable(span, problem.clone());
    }
    let scs = settings.standard_conforming_strings;
    let hit = CLASSIFIED.with_borrow(|memo| {
        memo.iter()
            .rev()
            .find(|c| c.standard_conforming_strings == scs && c.parse_text == piece.parse_text)
            .map(|c| c.info.clone())
    });
    if let Some(info) = hit {
        return StatementInfo { span, ..info };
    }
    let info = match crate::pg::parse_one(&piece.parse_text, settings, piece.code_start) {
        Ok(tree) => classify_tree(&tree),
        Err(reason) => StatementInfo::unparseable(0..0, reason),
    };
    if piece.parse_text.len() <= CLASSIFY_MEMO_MAX_TEXT {
        CLASSIFIED.with_borrow_mut(|memo| {
            if memo.len() >= CLASSIFY_MEMO {
                memo.pop_front();
            }
            memo.push_back(Classified {
                parse_text: piece.parse_text.clone(),
                standard_conforming_strings: scs,
                info: info.clone(),
            });
        });
    }
    StatementInfo { span, ..info }
}

/// Settings whose change alters how later statements are split (see the lexer).
fn is_encoding_setting(name: &str) -> bool {
    matches!(
        name,
        "standard_conforming_strings" | "client_encoding" | "names" | "all" | "*"
    )
}

fn is_role_setting(name: &str) -> bool {
    matches!(name, "role" | "session_authorization" | "*")
}

/// The classification of one parsed statement (`{"SelectStmt": {…}}`), span left at 0..0.
fn classify_tree(tree: &serde_json::Value) -> StatementInfo {
    let kind = tree
        .as_object()
        .and_then(|m| m.iter().next())
        .map_or(StatementKind::Other, |(tag, body)| {
            crate::tree::kind_of(tag, body)
        });
    let mut info = StatementInfo::new(0..0, kind);
    crate::tree::classify_tree(tree, &mut info);
    for name in info.settings_changed.clone() {
        if is_encoding_setting(&name) {
            info.risks.insert(Risk::EncodingChange);
        }
        if is_role_setting(&name) {
            info.risks.insert(Risk::RoleChange);
        }
    }
    // `ALTER ROLE … SET` (ddl) records defaults of later sessions: not a change of this one.
    if kind != StatementKind::Ddl {
        for name in info.settings_changed.clone() {
            if crate::tree::OPAQUE_SETTINGS.contains(&name.as_str()) {
                info.risks.insert(Risk::OpaqueCode);
                info.opaque_reasons.insert(format!(
                    "changes {name}, which changes what later statements run or how they are read"
                ));
            }
        }
    }
    info
}

/// Statements parsed by `sqlparser` most recently on this thread, kept by their rewritten text
/// (for [`crate::lineage`]).
const PARSE_MEMO: usize = 4;
/// Longest rewritten text the memo keeps.
const PARSE_MEMO_MAX_TEXT: usize = 8 * 1024;

/// One memo entry: a parse.
struct Parsed {
    rewritten: String,
    statement: std::rc::Rc<Statement>,
}

thread_local! {
    /// The last [`PARSE_MEMO`] successful `sqlparser` parses on this thread, newest last: the
    /// proxy traces lineage of a statement more than once per request. A parse depends on the
    /// rewritten text alone, so a hit is exactly what parsing again would give.
    static RECENT: std::cell::RefCell<std::collections::VecDeque<Parsed>> =
        const { std::cell::RefCell::new(std::collections::VecDeque::new()) };
}

/// Parses one lexed statement with `sqlparser` (for lineage); exactly one statement is required.
pub(crate) fn parse_piece(piece: &lex::LexedStatement) -> Result<std::rc::Rc<Statement>, String> {
    if let Some(problem) = piece.problem.as_ref().or(piece.rewrite_problem.as_ref()) {
        return Err(problem.clone());
    }
    let text = piece.rewritten.as_str();
    let hit = RECENT.with_borrow(|recent| {
        recent
            .iter()
            .rev()
            .find(|p| p.rewritten == text)
            .map(|p| p.statement.clone())
    });
    if let Some(statement) = hit {
        return Ok(statement);
    }
    let statement = std::rc::Rc::new(parse_text(text)?);
    if text.len() <= PARSE_MEMO_MAX_TEXT {
        RECENT.with_borrow_mut(|recent| {
            if recent.len() >= PARSE_MEMO {
                recent.pop_front();
            }
            recent.push_back(Parsed {
                rewritten: text.to_string(),
                statement: statement.clone(),
            });
        });
    }
    Ok(statement)
}

fn parse_text(text: &str) -> Result<Statement, String> {
    let dialect = PostgreSqlDialect {};
    let mut parsed = Parser::new(&dialect)
        .try_with_sql(text)
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| format!("not understood: {e}"))?;
    if parsed.len() != 1 {
        return Err(format!(
            "read as {} statements where PostgreSQL sees one",
            parsed.len()
        ));
    }
    parsed.pop().ok_or_else(|| "no statement".to_string())
}

/// Normalises an identifier as PostgreSQL does: unquoted → ASCII lower case; cut to 63 bytes.
pub(crate) fn normalise_ident(ident: &sqlparser::ast::Ident) -> String {
    let mut s = if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_ascii_lowercase()
    };
    if s.len() > 63 {
        let mut end = 63;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// Normalises a qualified name (see [`normalise_ident`]).
pub(crate) fn normalise_name(name: &ObjectName) -> String {
    name.0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(ident) => normalise_ident(ident),
            ObjectNamePart::Function(f) => f.to_string().to_ascii_lowercase(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod memo_tests {
    use super::*;

    fn cold<T>(f: impl FnOnce() -> T) -> T {
        RECENT.with_borrow_mut(|r| r.clear());
        CLASSIFIED.with_borrow_mut(|r| r.clear());
        f()
    }

    /// The per-thread parse memo never changes an answer: each text classified (and traced)
    /// right after the memo was emptied, after itself, and after texts that evicted it, gives
    /// the same result. Texts that lex to nearly the same rewritten form must not collide.
    #[test]
    fn the_parse_memo_gives_what_parsing_gives() {
        let settings = SqlSessionSettings::default();
        let texts = [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 1",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 2",
            "select email from users",
            "SELECT email FROM users; DROP TABLE users",
            "DELETE FROM users WHERE id = 1 RETURNING email",
            "UPDATE t SET a = 'x' WHERE b = $$y$$",
            "COPY (SELECT * FROM users) TO PROGRAM 'sh'",
            "SELECT lower(email) AS e FROM users u JOIN orders o ON o.uid = u.id",
            "not sql at all",
            "BEGIN; INSERT INTO t VALUES (1); COMMIT",
        ];
        let fresh: Vec<_> = texts
            .iter()
            .map(|t| {
                cold(|| {
                    (
                        classify(t, &settings),
                        crate::lineage(t, &settings, &crate::NoCatalog).ok(),
                    )
                })
            })
            .collect();
        for round in 0..3 {
            for (i, t) in texts.iter().enumerate() {
                let again = (
                    classify(t, &settings),
                    crate::lineage(t, &settings, &crate::NoCatalog).ok(),
                );
                assert_eq!(again, fresh[i], "round {round}: {t}");
            }
        }
        // The memo is filled by a classification (one text, one statement: one entry).
        cold(|| classify(texts[2], &settings));
        let held = CLASSIFIED.with_borrow(|r| r.len());
        assert_eq!(held, 1);
    }

    /// Every place an integer literal can stand, for the zeroing in the lexer.
    const INTEGER_CORPUS: &[&str] = &[
        "SELECT abalance FROM pgbench_accounts WHERE aid = 8123456",
        "UPDATE pgbench_accounts SET abalance = abalance + -4321 WHERE aid = 77",
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (3, 1, 27, 55, CURRENT_TIMESTAMP)",
        "SELECT 1",
        "SELECT 1 AS one, 2 two, 3",
        "SELECT email FROM users ORDER BY 2 DESC LIMIT 10 OFFSET 20",
        "SELECT email, count(*) FROM users GROUP BY 1 HAVING count(*) > 5",
        "SELECT email FROM users FETCH FIRST 3 ROWS ONLY",
        "SELECT tags[1], tags[2:3] FROM users",
        "SELECT (ARRAY[1, 2, 3])[2]",
        "SELECT substr(email, 1, 3) FROM users",
        "SELECT encode(convert_to(email, 'UTF8'), 'hex') FROM users WHERE id IN (1, 2, 3)",
        "SELECT CAST(id AS varchar(12)), id::numeric(10, 2), now()::timestamp(3) FROM users",
        "SELECT interval '1 day' * 3, make_interval(days => 4)",
        "SELECT * FROM generate_series(1, 100) g(i)",
        "SELECT row_to_json(u) FROM users u LIMIT 1",
        "SELECT string_agg(email, ',') FROM (SELECT email FROM users LIMIT 5) s",
        "WITH x AS (SELECT email FROM users WHERE id > 10) SELECT lower(email) FROM x",
        "DELETE FROM users WHERE id = 42 RETURNING email, 7",
        "DELETE FROM users",
        "UPDATE users SET score = 0",
        "SELECT pg_sleep(5)",
        "SELECT set_config('statement_timeout', '5000', false)",
        "SET statement_timeout = 5000",
        "SET extra_float_digits = 3",
        "SET LOCAL lock_timeout TO 100",
        "PREPARE p (int) AS SELECT email FROM users WHERE id = $1 + 1",
        "EXECUTE p(5)",
        "DECLARE c CURSOR FOR SELECT email FROM users",
        "FETCH 10 FROM c",
        "MOVE 5 IN c",
        "CREATE TABLE t2 (a int DEFAULT 5, b varchar(40), c numeric(12, 3))",
        "CREATE TABLE copy9 AS SELECT email FROM users LIMIT 10",
        "CREATE SEQUENCE s3 START 5 INCREMENT 2",
        "ALTER TABLE users ALTER COLUMN email TYPE varchar(300)",
        "CREATE INDEX ON users (id) WITH (fillfactor = 70)",
        "COPY (SELECT email FROM users LIMIT 7) TO STDOUT",
        "COPY users (id, email) FROM STDIN",
        "VALUES (1, 'a'), (2, 'b')",
        "SELECT email FROM users u1 JOIN orders o2 ON o2.uid = u1.id WHERE o2.total > 100",
        "SELECT CASE WHEN id > 5 THEN email ELSE 'x' END FROM users",
        "SELECT id % 2, id / 3, id << 1, 2 ^ 10 FROM users",
        "SELECT 00012, 0, 999999999999999999",
        "SELECT 9999999999999999999999999999, 1e5, 1.5, .5, 0x1F, 1_000",
        "SELECT CAST(id AS varchar(99999999999999999999)) FROM users",
        "LOCK TABLE users IN ACCESS EXCLUSIVE MODE NOWAIT",
        "VACUUM (PARALLEL 2) users",
        "SELECT email FROM users TABLESAMPLE SYSTEM (10) REPEATABLE (42)",
        "SELECT lag(email, 2) OVER (ORDER BY id ROWS BETWEEN 3 PRECEDING AND 1 FOLLOWING) FROM users",
        "BEGIN; INSERT INTO t VALUES (1); DROP TABLE users; COMMIT",
    ];

    /// `f` with the lexer keeping integers as written (`keep`) or zeroing them.
    fn integers_kept<T>(keep: bool, f: impl FnOnce() -> T) -> T {
        crate::lex::KEEP_INTEGERS.set(keep);
        let out = f();
        crate::lex::KEEP_INTEGERS.set(false);
        out
    }

    fn answers(text: &str, keep_integers: bool) -> impl PartialEq + std::fmt::Debug {
        let catalog = |table: &str| {
            (table == "users").then(|| vec!["id".to_string(), "email".into(), "tags".into()])
        };
        let settings = SqlSessionSettings::default();
        integers_kept(keep_integers, || {
            cold(|| {
                (
                    classify(text, &settings),
                    crate::lineage(text, &settings, &crate::NoCatalog),
                    crate::lineage(text, &settings, &catalog),
                )
            })
        })
    }

    fn rewritten(text: &str, keep_integers: bool) -> Option<Vec<String>> {
        let settings = SqlSessionSettings::default();
        integers_kept(keep_integers, || crate::lex::split(text, &settings).ok())
            .map(|p| p.into_iter().map(|p| p.rewritten).collect())
    }

    /// The lexer writes integer literals as zeros so that statements differing only in them
    /// share a parse. That is sound only if no answer depends on an integer's value: here each
    /// text of a corpus covering every place an integer can stand is classified and traced with
    /// its integers as written and as zeros, and the answers must be equal.
    #[test]
    fn integer_values_never_change_an_answer() {
        let mut zeroed = 0;
        for text in INTEGER_CORPUS {
            assert_eq!(answers(text, true), answers(text, false), "{text}");
            if rewritten(text, true) != rewritten(text, false) {
                zeroed += 1;
            }
        }
        // Not vacuous: most texts of the corpus had integers to zero.
        assert!(zeroed >= 40, "only {zeroed} texts zeroed");
    }

    /// Statements differing only in integer literals share one parse and one classification,
    /// and each still gets its own span.
    #[test]
    fn statements_differing_in_integers_share_a_memo_entry() {
        let settings = SqlSessionSettings::default();
        cold(|| {
            classify(
                "SELECT abalance FROM pgbench_accounts WHERE aid = 1",
                &settings,
            )
        });
        let c = classify(
            "SELECT abalance FROM pgbench_accounts WHERE aid = 123456",
            &settings,
        );
        assert_eq!(CLASSIFIED.with_borrow(|r| r.len()), 1);
        assert_eq!(c.statements.len(), 1);
        assert_eq!(c.statements[0].span, 0..56);
        let second = classify(
            "BEGIN;SELECT abalance FROM pgbench_accounts WHERE aid = 9",
            &settings,
        );
        assert_eq!(
            CLASSIFIED.with_borrow(|r| r.len()),
            2,
            "BEGIN, and the shared entry"
        );
        let long = &second.statements[1];
        assert_eq!(long.span, 6..57);
        assert_eq!(long.tables, c.statements[0].tables);
    }
}
