//! PostgreSQL's own parser (libpg_query, through the `pg_query` crate), cross-checked against the
//! splitter in [`crate::lex`].
//!
//! Each statement the splitter found is parsed on its own, with the session's lexer settings.
//! The two readers must agree exactly: PostgreSQL's parser must find exactly one statement, with
//! no `;` after it (the splitter ended the statement where the parser did) and starting at the
//! splitter's first token. Anything else is an error, and the statement is unparseable — never a
//! guess. Because the scanners read the same bytes left to right, the first place where they
//! disagree always shows up as one of these errors in the statement that contains it.

use std::sync::Mutex;

use gatehouse_core::SqlSessionSettings;
use serde_json::Value;

/// libpg_query redirects the process's standard error (a `dup2` of fd 2) while it parses, to
/// capture warnings. Two parses at once on different threads would restore each other's pipe and
/// leave fd 2 pointing at a closed pipe, so parses run one at a time.
static PARSER: Mutex<()> = Mutex::new(());

/// The parse tree of the one statement in `text` (a statement as the splitter cut it, with its
/// integer literals possibly rewritten), as JSON (`{"SelectStmt": {…}}`); `code_start`: where
/// the splitter saw its first token, relative to `text`.
pub(crate) fn parse_one(
    text: &str,
    settings: &SqlSessionSettings,
    code_start: usize,
) -> Result<Value, String> {
    // The server's default `backslash_quote` (safe_encoding) is `on` for every client encoding
    // the splitter accepts (see `lex::encoding_is_ascii_safe`). Escape-string warnings are off:
    // libpg_query writes them to a pipe it reads only after the parse, and many of them could
    // fill it.
    let mut options = pg_query::ParserOptions::DISABLE_ESCAPE_STRING_WARNING;
    if !settings.standard_conforming_strings {
        options |= pg_query::ParserOptions::DISABLE_STANDARD_CONFORMING_STRINGS;
    }
    let _one_at_a_time = PARSER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // On a stack of its own: decoding and walking the tree recurse once per nesting level
    // (at most about 100: the decoder refuses deeper trees), and libpg_query's own stack check
    // allows it up to 2 MB more; a proxy's worker thread may have only 2 MB in all.
    std::panic::catch_unwind(|| on_parser_stack(|| parse_and_read(text, options, code_start)))
        .unwrap_or_else(|_| Err("PostgreSQL's parser failed on this statement".into()))
}

/// Stack one parse may use (see [`parse_one`]).
const PARSER_STACK: usize = 16 << 20;

/// Runs `f` where [`PARSER_STACK`] bytes of stack are free: on the calling thread's own stack
/// when it has that much left (threads built with [`crate::PARSER_THREAD_STACK`]), otherwise on
/// a stack allocated for the call (an mmap and munmap per parse, which costs more than the parse
/// itself on a busy machine).
fn on_parser_stack<R>(f: impl FnOnce() -> R) -> R {
    stacker::maybe_grow(PARSER_STACK, PARSER_STACK, f)
}

fn parse_and_read(
    text: &str,
    options: pg_query::ParserOptions,
    code_start: usize,
) -> Result<Value, String> {
    let parsed = pg_query::parse(text, options)
        .map_err(|e| format!("not understood by PostgreSQL's parser: {e}"))?;
    let stmts = &parsed.protobuf.stmts;
    let [one] = stmts.as_slice() else {
        return Err(format!(
            "PostgreSQL's parser reads {} statements where the splitter sees one",
            stmts.len()
        ));
    };
    if one.stmt_len != 0 {
        return Err("PostgreSQL's parser ends the statement before the splitter does".into());
    }
    if usize::try_from(one.stmt_location).ok() != Some(code_start) {
        return Err("PostgreSQL's parser starts the statement where the splitter does not".into());
    }
    let node = one
        .stmt
        .as_ref()
        .and_then(|n| n.node.as_ref())
        .ok_or_else(|| "PostgreSQL's parser returned an empty statement".to_string())?;
    serde_json::to_value(node).map_err(|e| format!("parse tree not readable: {e}"))
}

/// For a statement that is exactly one `COPY … TO STDOUT` (a table, optionally with a column
/// list, or a query), a query whose result has the same columns with the same types: the COPY's
/// own query, written back by PostgreSQL's deparser, or `SELECT <columns> FROM <table>`. It is
/// only ever described (Parse and Describe), never run. `None` for anything else.
pub(crate) fn copy_out_query(text: &str, settings: &SqlSessionSettings) -> Option<(String, bool)> {
    use pg_query::NodeEnum;
    // A COPY statement spells its keyword (keywords have no escaped form): text without it is
    // not one, and needs no second parse.
    if !text
        .as_bytes()
        .windows(4)
        .any(|w| w.eq_ignore_ascii_case(b"copy"))
    {
        return None;
    }
    let mut options = pg_query::ParserOptions::DISABLE_ESCAPE_STRING_WARNING;
    if !settings.standard_conforming_strings {
        options |= pg_query::ParserOptions::DISABLE_STANDARD_CONFORMING_STRINGS;
    }
    let _one_at_a_time = PARSER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    std::panic::catch_unwind(|| {
        on_parser_stack(|| {
            let parsed = pg_query::parse(text, options).ok()?;
            let [one] = parsed.protobuf.stmts.as_slice() else {
                return None;
            };
            let Some(NodeEnum::CopyStmt(copy)) = one.stmt.as_ref()?.node.as_ref() else {
                return None;
            };
            if copy.is_from || copy.is_program || !copy.filename.is_empty() {
                return None;
            }
            let binary = copy.options.iter().any(|o| {
                matches!(o.node.as_ref(), Some(NodeEnum::DefElem(d))
                    if d.defname == "format"
                        && matches!(d.arg.as_ref().and_then(|a| a.node.as_ref()),
                            Some(NodeEnum::String(v)) if v.sval.eq_ignore_ascii_case("binary")))
            });
            if let Some(query) = copy.query.as_ref().and_then(|q| q.node.as_ref()) {
                return Some((
                    query.deparse(pg_query::DeparseOptions::default()).ok()?,
                    binary,
                ));
            }
            let rel = copy.relation.as_ref()?;
            let mut columns = Vec::new();
            for a in &copy.attlist {
                let Some(NodeEnum::String(s)) = a.node.as_ref() else {
                    return None;
                };
                columns.push(quote_ident(&s.sval));
            }
            let columns = if columns.is_empty() {
                "*".to_string()
            } else {
                columns.join(", ")
            };
            let mut name = String::new();
            for part in [&rel.catalogname, &rel.schemaname] {
                if !part.is_empty() {
                    name.push_str(&quote_ident(part));
                    name.push('.');
                }
            }
            name.push_str(&quote_ident(&rel.relname));
            // `ONLY`: COPY reads the table itself, not its inheritance children.
            Some((format!("SELECT {columns} FROM ONLY {name}"), binary))
        })
    })
    .ok()
    .flatten()
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
