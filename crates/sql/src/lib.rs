//! Pure SQL understanding for Gatehouse: classifies every statement of a PostgreSQL string (kind,
//! tables, functions, risky forms) and traces output-column lineage, so the policy can decide and
//! the PostgreSQL proxy can mask derived columns. No I/O.
//!
//! Two entry points, both taking the session's [`SqlSessionSettings`] because
//! `standard_conforming_strings` and `client_encoding` change where PostgreSQL itself splits a
//! string:
//!
//! - [`classify`] → a [`Classification`]: one [`StatementInfo`] per statement PostgreSQL would
//!   run, in order. What cannot be read with certainty is [`StatementKind::Unparseable`] with a
//!   reason — never a guess.
//! - [`lineage`] → a [`Lineage`]: for each output column of a query (or `… RETURNING`), the
//!   source columns its value derives from. Give it a [`Catalog`] (any
//!   `Fn(&str) -> Option<Vec<String>>`) to expand `*`; without one, `*` and whole-row references
//!   are reported as [`Source::AllColumns`].
//!
//! How: a PostgreSQL-faithful lexical pass (quotes, `E''` and backslashes under
//! `standard_conforming_strings = off`, dollar quoting, nested comments, string continuation,
//! client encodings) splits the text; PostgreSQL's own parser (libpg_query, via `pg_query`)
//! then reads each statement under the session's settings for classification, and must agree
//! with the split exactly (one statement, same start, same end). Lineage still reads each
//! statement with `sqlparser` (PostgreSQL dialect), from a rewritten text in which every literal
//! has the one spelling all readers agree on.
//!
//! ```
//! use gatehouse_core::SqlSessionSettings;
//! use gatehouse_sql::{classify, lineage, NoCatalog, Risk, Source, StatementKind};
//!
//! let settings = SqlSessionSettings::default();
//! let c = classify("BEGIN; DELETE FROM Accounts; COMMIT", &settings);
//! assert_eq!(c.statements.len(), 3);
//! assert_eq!(c.statements[1].kind, StatementKind::Delete);
//! assert!(c.statements[1].tables.contains("accounts"));
//! assert!(c.statements[1].has(Risk::WriteWithoutWhere));
//!
//! // Under standard_conforming_strings = off, the backslash hides the quote: one statement.
//! let off = SqlSessionSettings { standard_conforming_strings: false, ..settings.clone() };
//! let c = classify(r"SELECT 'x\'; DROP TABLE t; --'", &off);
//! assert_eq!(c.statements.len(), 1);
//! assert_eq!(c.statements[0].kind, StatementKind::Select);
//!
//! let l = lineage("SELECT lower(u.email) AS e FROM users u", &settings, &NoCatalog).unwrap();
//! assert_eq!(l.columns[0].name, "e");
//! assert!(l.columns[0].sources.contains(&Source::Column {
//!     table: "users".into(),
//!     column: "email".into(),
//! }));
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![deny(clippy::indexing_slicing, clippy::panic)]

use gatehouse_core::SqlSessionSettings;

mod classify;
mod lex;
mod lineage;
mod pg;
mod tree;

/// Stack size for threads that classify SQL (a tokio runtime's `thread_stack_size`): a thread
/// with at least this much stack parses statements on its own stack; on a smaller one each parse
/// first allocates a stack of its own, which costs more than the parse. Only reserved address
/// space: pages are touched as the parse needs them.
pub const PARSER_THREAD_STACK: usize = 24 << 20;

pub use classify::{Classification, Risk, StatementInfo, StatementKind, classify};
pub use lineage::{Catalog, Lineage, NoCatalog, OutputColumn, Source, copied_sources, lineage};
pub use tree::{OPAQUE_SETTINGS, is_safe_function};

/// What [`classify`] read from one SQL operation, made only here and remembering exactly what it
/// read: the facts a protocol hands the policy with the operation
/// ([`gatehouse_core::Classified`]) so that the SQL is not read twice. A policy uses them only
/// when [`SqlFacts::is_for`] the operation it decides, so facts of another text cannot be passed
/// off for this one.
#[derive(Debug)]
pub struct SqlFacts {
    text: String,
    settings: SqlSessionSettings,
    classification: Classification,
}

impl SqlFacts {
    /// Classifies `op`'s text under its settings.
    pub fn of(op: &gatehouse_core::SqlOperation) -> std::sync::Arc<SqlFacts> {
        std::sync::Arc::new(SqlFacts {
            text: op.text.clone(),
            settings: op.settings.clone(),
            classification: classify(&op.text, &op.settings),
        })
    }

    /// Whether these facts were read from exactly `op`'s text under `op`'s settings.
    pub fn is_for(&self, op: &gatehouse_core::SqlOperation) -> bool {
        self.text == op.text && self.settings == op.settings
    }

    /// The classification.
    pub fn classification(&self) -> &Classification {
        &self.classification
    }
}

/// A text up to the values of its integer literals: see [`shape`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Shape {
    /// The text with every integer literal of up to 18 digits written as `0`; everything else
    /// (comments, other literals, whitespace) as written.
    pub text: String,
    /// Byte ranges, in the original text, of the statements PostgreSQL would run (without the
    /// `;`; empty statements left out).
    pub spans: Vec<std::ops::Range<usize>>,
}

/// The text's [`Shape`] under `settings`, or `None` when the text cannot be split or one of its
/// statements cannot be read with certainty.
///
/// Promise: no answer of [`classify`] or [`lineage`] depends on the value of an integer literal
/// of up to 18 digits, so two texts with the same `shape().text` under the same settings get the
/// same answers, apart from spans (each text's own are in its `spans`). A caller can keep
/// answers by shape: statements differing only in inlined ids (`… WHERE id = 42`) share one.
pub fn shape(text: &str, settings: &SqlSessionSettings) -> Option<Shape> {
    lex::shape(text, settings).map(|(text, spans)| Shape { text, spans })
}

/// `text` with every constant and comment written as a placeholder, for a record or a view of
/// SQL text that must not show the values it carries: quoted, bit and dollar-quoted strings
/// become `'[masked]'` (a prefix such as `E` kept), numbers `[masked]`, comments
/// `/*[masked]*/`; keywords, identifiers, operators and `$n` parameters stay as written.
/// `None` when the text cannot be split or one of its statements cannot be read with certainty
/// (where a literal ends is then not known): a caller withholds such a text whole.
///
/// ```
/// use gatehouse_core::SqlSessionSettings;
/// let s = SqlSessionSettings::default();
/// assert_eq!(
///     gatehouse_sql::mask_constants("SELECT * FROM t WHERE name = 'Alice' AND id = 7 -- hi", &s)
///         .as_deref(),
///     Some("SELECT * FROM t WHERE name = '[masked]' AND id = [masked] /*[masked]*/"),
/// );
/// assert_eq!(gatehouse_sql::mask_constants("SELECT 'unterminated", &s), None);
/// ```
pub fn mask_constants(text: &str, settings: &SqlSessionSettings) -> Option<String> {
    lex::mask_constants(text, settings)
}

/// For a text that is one `COPY … TO STDOUT`, a query with the same output columns (to be
/// described, never run), and whether its format is binary: see the binary COPY masking in
/// gatehouse-pg.
pub fn copy_out_query(text: &str, settings: &SqlSessionSettings) -> Option<(String, bool)> {
    pg::copy_out_query(text, settings)
}

/// Why [`lineage`] could not trace a text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SqlError {
    /// The statement cannot be read with certainty (the reason says why).
    #[error("unparseable SQL: {0}")]
    Unparseable(String),
    /// Lineage needs exactly one statement; the text has this many.
    #[error("expected exactly one statement, found {0}")]
    NotOneStatement(usize),
}

/// Whether PostgreSQL's scanner splits text the same way under `client_encoding` as under UTF-8
/// (false for `SJIS`, `BIG5`, `GBK`, `UHC`, `GB18030`, `JOHAB` and unknown names).
pub fn encoding_is_supported(client_encoding: &str) -> bool {
    lex::encoding_is_ascii_safe(client_encoding)
}
