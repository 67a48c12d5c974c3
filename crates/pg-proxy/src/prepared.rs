//! What a prepared-statement or portal name runs, as the *server* holds it.
//!
//! PostgreSQL keeps one namespace of prepared statements per session, filled by protocol `Parse`
//! and SQL `PREPARE`, emptied by `Close`, `DEALLOCATE` and `DISCARD ALL`; a named `Parse` or
//! `PREPARE` of a taken name fails and leaves the old statement in place. Portals (`Bind`) are a
//! second namespace. The gateway decides executions by what a name runs, so its idea of every
//! name follows what the server *accepted*, never what the client sent:
//!
//! - [`Names`] (shared by both halves of a session) holds the server-confirmed names and counts
//!   the changes still in flight. A change is confirmed by the server's own answer
//!   (ParseComplete, BindComplete, CloseComplete, the `PREPARE`/`DEALLOCATE` command tag); a
//!   change the server refused or skipped is dropped ([`PendingChange`] settles on drop).
//! - [`LocalNames`] (frontend) remembers the latest change the client sent for each name and the
//!   sync group it was sent in. A use of a name in the *same* group as its latest change runs
//!   exactly that change's statement or nothing (if any earlier message of the group failed, the
//!   server skips the use too). A use in a later group while a change is still in flight waits
//!   for the server's answer; otherwise the confirmed value is the truth.
//!
//! [`name_op`] reads SQL `PREPARE`/`EXECUTE`/`DEALLOCATE`/`DISCARD ALL` out of a statement text.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use gatehouse_core::Decision;
use tokio::sync::Notify;

use crate::statements::{StatementInfo, skip_block_comment, skip_quoted};

/// A statement the server holds under a name.
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    /// The statement text it runs (for SQL `PREPARE`, the text after `AS`).
    pub(crate) text: String,
    pub(crate) info: Option<StatementInfo>,
    /// Reviewed per execution (Bind, SQL `EXECUTE`) when the policy asked for a review.
    pub(crate) review: Option<Decision>,
    /// The operation index of the Parse/PREPARE that defined it.
    pub(crate) index: u64,
    /// The statement itself is `PREPARE`/`EXECUTE`/`DEALLOCATE`/`DISCARD ALL` (read when it was
    /// parsed, under the settings of that moment): decided when executed, not when bound.
    pub(crate) name_op: Option<NameOp>,
    /// Defined by SQL `PREPARE`: every execution (SQL `EXECUTE`, or a Bind of the name) is
    /// decided by the policy with the values it runs with.
    pub(crate) sql_prepared: bool,
}

/// A bound portal: the statement it was bound from and the parameter values bound to it.
#[derive(Debug, Clone)]
pub(crate) struct Bound {
    pub(crate) statement: Arc<Prepared>,
    pub(crate) parameters: Vec<Option<String>>,
    /// For a portal of `EXECUTE name`: what `name` ran when the portal was bound.
    pub(crate) runs: Option<Arc<Prepared>>,
}

/// Which namespace a change is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Space {
    Statement,
    Portal,
}

/// One change to a namespace.
#[derive(Debug, Clone)]
pub(crate) enum Change {
    DefineStatement(String, Arc<Prepared>),
    DefinePortal(String, Arc<Bound>),
    Remove(Space, String),
    /// `DEALLOCATE ALL` / `DISCARD ALL` (statements).
    RemoveAllStatements,
}

impl Change {
    /// The command tag with which the server confirms a change made by SQL.
    pub(crate) fn confirmed_by_tag(&self, tag: &str) -> bool {
        match self {
            Change::DefineStatement(..) => tag == "PREPARE",
            Change::Remove(Space::Statement, _) => tag == "DEALLOCATE",
            Change::RemoveAllStatements => tag == "DEALLOCATE ALL" || tag == "DISCARD ALL",
            _ => false,
        }
    }

    fn key(&self) -> Option<(Space, &str)> {
        match self {
            Change::DefineStatement(n, _) => Some((Space::Statement, n)),
            Change::DefinePortal(n, _) => Some((Space::Portal, n)),
            Change::Remove(s, n) => Some((*s, n)),
            Change::RemoveAllStatements => None,
        }
    }
}

#[derive(Debug, Default)]
struct NamesInner {
    statements: HashMap<String, Arc<Prepared>>,
    portals: HashMap<String, Arc<Bound>>,
    pending: HashMap<(Space, String), usize>,
    pending_all: usize,
}

/// Server-confirmed names and the changes in flight (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Names {
    inner: Mutex<NamesInner>,
    /// Woken whenever a change settles.
    pub(crate) settled: Notify,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Names {
    /// Registers a change the client's message will make if the server accepts it.
    pub(crate) fn send(self: &Arc<Self>, change: Change) -> PendingChange {
        {
            let mut g = lock(&self.inner);
            match change.key() {
                Some((s, n)) => *g.pending.entry((s, n.to_string())).or_insert(0) += 1,
                None => g.pending_all += 1,
            }
        }
        PendingChange {
            names: self.clone(),
            change: Some(change),
        }
    }

    fn settle(&self, change: Change, accepted: bool) {
        {
            let mut g = lock(&self.inner);
            match change.key() {
                Some((s, n)) => {
                    let key = (s, n.to_string());
                    if let Some(c) = g.pending.get_mut(&key) {
                        *c = c.saturating_sub(1);
                        if *c == 0 {
                            g.pending.remove(&key);
                        }
                    }
                }
                None => g.pending_all = g.pending_all.saturating_sub(1),
            }
            if accepted {
                match change {
                    Change::DefineStatement(n, p) => {
                        g.statements.insert(n, p);
                    }
                    Change::DefinePortal(n, b) => {
                        g.portals.insert(n, b);
                    }
                    Change::Remove(Space::Statement, n) => {
                        g.statements.remove(&n);
                    }
                    Change::Remove(Space::Portal, n) => {
                        g.portals.remove(&n);
                    }
                    Change::RemoveAllStatements => g.statements.clear(),
                }
            }
        }
        self.settled.notify_waiters();
    }

    /// Whether a change to `name` is still unanswered.
    pub(crate) fn in_flight(&self, space: Space, name: &str) -> bool {
        let g = lock(&self.inner);
        g.pending.contains_key(&(space, name.to_string()))
            || (space == Space::Statement && g.pending_all > 0)
    }

    /// Forgets every confirmed portal (the server drops them all when a transaction ends; a
    /// portal bound later is confirmed later).
    pub(crate) fn forget_portals(&self) {
        lock(&self.inner).portals.clear();
    }

    pub(crate) fn statement(&self, name: &str) -> Option<Arc<Prepared>> {
        lock(&self.inner).statements.get(name).cloned()
    }

    pub(crate) fn portal(&self, name: &str) -> Option<Arc<Bound>> {
        lock(&self.inner).portals.get(name).cloned()
    }
}

/// A change sent upstream and not yet answered. [`PendingChange::confirm`] applies it; dropping
/// it unconfirmed (the server refused or skipped the message) leaves the names as they were.
#[derive(Debug)]
pub(crate) struct PendingChange {
    names: Arc<Names>,
    change: Option<Change>,
}

impl PendingChange {
    pub(crate) fn change(&self) -> Option<&Change> {
        self.change.as_ref()
    }

    /// The server accepted the message: apply the change.
    pub(crate) fn confirm(mut self) {
        if let Some(c) = self.change.take() {
            self.names.settle(c, true);
        }
    }
}

impl Drop for PendingChange {
    fn drop(&mut self) {
        if let Some(c) = self.change.take() {
            self.names.settle(c, false);
        }
    }
}

/// What the frontend knows of a name from what the client sent.
#[derive(Debug, Default)]
pub(crate) struct LocalNames {
    seq: u64,
    /// (space, name) → (sequence, sync group, value after the change).
    latest: HashMap<(Space, String), (u64, u64, Option<Local>)>,
    /// Latest `DEALLOCATE ALL`/`DISCARD ALL`: (sequence, sync group).
    remove_all: Option<(u64, u64)>,
}

#[derive(Debug, Clone)]
pub(crate) enum Local {
    Statement(Arc<Prepared>),
    Portal(Arc<Bound>),
}

/// Where a name's meaning stands for a use in the current group.
#[derive(Debug)]
pub(crate) enum Resolved<T> {
    /// Exactly this (or nothing: the server has no such name, and the use fails).
    Known(Option<T>),
    /// A change from an earlier group is unanswered: wait for the server, then ask again.
    Wait,
}

impl LocalNames {
    /// Notes a change sent in `group`. Keeps at most `cap` names (oldest forgotten: a use then
    /// falls back to the confirmed names, after waiting for the server).
    pub(crate) fn note(&mut self, change: &Change, group: u64) {
        self.seq += 1;
        let seq = self.seq;
        let (key, value) = match change {
            Change::DefineStatement(n, p) => (
                (Space::Statement, n.clone()),
                Some(Local::Statement(p.clone())),
            ),
            Change::DefinePortal(n, b) => {
                ((Space::Portal, n.clone()), Some(Local::Portal(b.clone())))
            }
            Change::Remove(s, n) => ((*s, n.clone()), None),
            Change::RemoveAllStatements => {
                self.remove_all = Some((seq, group));
                return;
            }
        };
        // Entries of past groups only matter while their change is in flight, and then the
        // shared names say so: forget them so the map stays small.
        if self.latest.len() > 4096 {
            self.latest.retain(|_, (_, g, _)| *g == group);
        }
        self.latest.insert(key, (seq, group, value));
    }

    fn local(&self, space: Space, name: &str, group: u64) -> Option<Option<Local>> {
        let mine = self.latest.get(&(space, name.to_string()));
        let all = self
            .remove_all
            .filter(|_| space == Space::Statement)
            .map(|(seq, g)| (seq, g, None));
        let latest = match (mine.cloned(), all) {
            (Some(m), Some(a)) => Some(if m.0 > a.0 { m } else { a }),
            (m, a) => m.or(a),
        };
        match latest {
            Some((_, g, value)) if g == group => Some(value),
            _ => None,
        }
    }

    pub(crate) fn statement(
        &self,
        names: &Names,
        name: &str,
        group: u64,
    ) -> Resolved<Arc<Prepared>> {
        if let Some(v) = self.local(Space::Statement, name, group) {
            return Resolved::Known(match v {
                Some(Local::Statement(p)) => Some(p),
                _ => None,
            });
        }
        if names.in_flight(Space::Statement, name) {
            return Resolved::Wait;
        }
        Resolved::Known(names.statement(name))
    }

    pub(crate) fn portal(&self, names: &Names, name: &str, group: u64) -> Resolved<Arc<Bound>> {
        if let Some(v) = self.local(Space::Portal, name, group) {
            return Resolved::Known(match v {
                Some(Local::Portal(b)) => Some(b),
                _ => None,
            });
        }
        if names.in_flight(Space::Portal, name) {
            return Resolved::Wait;
        }
        Resolved::Known(names.portal(name))
    }
}

/// A SQL statement that touches prepared-statement names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NameOp {
    /// `PREPARE name [(types)] AS statement`: `statement` is the byte range of the inner text.
    Prepare {
        name: String,
        statement: Range<usize>,
    },
    /// `EXECUTE name [(args)]`, alone (`nested: false`) or inside `EXPLAIN` / `CREATE TABLE … AS`.
    Execute {
        name: String,
        args: Option<Range<usize>>,
        nested: bool,
    },
    /// `DEALLOCATE [PREPARE] name`.
    Deallocate { name: String },
    /// `DEALLOCATE [PREPARE] ALL` / `DISCARD ALL`.
    DeallocateAll,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// An identifier or keyword: unquoted ones lower-cased, quoted ones as written.
    Word {
        text: String,
        quoted: bool,
    },
    Open,
    Close,
    Other,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    span: Range<usize>,
}

/// PostgreSQL truncates identifiers to NAMEDATALEN - 1 bytes.
const MAX_IDENT: usize = 63;

fn truncate_ident(mut s: String) -> String {
    if s.len() > MAX_IDENT {
        let mut end = MAX_IDENT;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident_cont(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

/// Tokens of one statement, up to `limit` of them; `None` on an unterminated quote or comment.
fn tokenize(text: &str, scs: bool, limit: usize) -> Option<Vec<Token>> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0usize;
    while i < b.len() && out.len() < limit {
        let c = b[i];
        let start = i;
        match c {
            _ if c.is_ascii_whitespace() => {
                i += 1;
                continue;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = memchr::memchr(b'\n', &b[i..]).map_or(b.len(), |p| i + p + 1);
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = skip_block_comment(b, i)?;
                continue;
            }
            b'\'' => {
                i = skip_quoted(b, i + 1, b'\'', !scs)?;
                out.push(Token {
                    tok: Tok::Other,
                    span: start..i,
                });
            }
            b'"' => {
                i = skip_quoted(b, i + 1, b'"', false)?;
                let inner = text.get(start + 1..i - 1)?.replace("\"\"", "\"");
                out.push(Token {
                    tok: Tok::Word {
                        text: truncate_ident(inner),
                        quoted: true,
                    },
                    span: start..i,
                });
            }
            b'$' => {
                // $tag$ … $tag$; `$1` is a parameter.
                let tag_end = b[i + 1..]
                    .iter()
                    .position(|&x| !(x.is_ascii_alphanumeric() || x == b'_' || x >= 0x80))
                    .map(|p| i + 1 + p);
                match tag_end {
                    Some(e) if b[e] == b'$' && !b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                        let tag = &b[i..=e];
                        let body = e + 1;
                        let close = memchr::memmem::find(&b[body..], tag)?;
                        i = body + close + tag.len();
                    }
                    _ => {
                        i += 1;
                        while i < b.len() && b[i].is_ascii_digit() {
                            i += 1;
                        }
                    }
                }
                out.push(Token {
                    tok: Tok::Other,
                    span: start..i,
                });
            }
            b'(' | b'[' => {
                i += 1;
                out.push(Token {
                    tok: Tok::Open,
                    span: start..i,
                });
            }
            b')' | b']' => {
                i += 1;
                out.push(Token {
                    tok: Tok::Close,
                    span: start..i,
                });
            }
            _ if is_ident_start(c) => {
                let end = b[i..]
                    .iter()
                    .position(|&x| !is_ident_cont(x))
                    .map_or(b.len(), |p| i + p);
                // An `E'…'`/`B'…'`/`X'…'`/`U&'…'` prefix belongs to the string that follows.
                if b.get(end) == Some(&b'\'') && end - i == 1 {
                    let escapes = matches!(c, b'e' | b'E') || !scs;
                    i = skip_quoted(b, end + 1, b'\'', escapes)?;
                    out.push(Token {
                        tok: Tok::Other,
                        span: start..i,
                    });
                    continue;
                }
                // `U&"…"` is an identifier written with Unicode escapes (and maybe a UESCAPE
                // clause): this reader does not decode them, so it reads nothing here rather
                // than a name PostgreSQL does not read (`U&"\0073\0031"` is `s1`, not `u`).
                // A `U&'…'` string is a string like any other (no backslash-quote escape).
                if end - i == 1 && matches!(c, b'u' | b'U') && b.get(end) == Some(&b'&') {
                    match b.get(end + 1) {
                        Some(b'"') => return None,
                        Some(b'\'') => {
                            i = skip_quoted(b, end + 2, b'\'', false)?;
                            out.push(Token {
                                tok: Tok::Other,
                                span: start..i,
                            });
                            continue;
                        }
                        _ => {}
                    }
                }
                i = end;
                out.push(Token {
                    tok: Tok::Word {
                        text: truncate_ident(text.get(start..end)?.to_ascii_lowercase()),
                        quoted: false,
                    },
                    span: start..end,
                });
            }
            _ => {
                i += 1;
                while i < b.len() && !text.is_char_boundary(i) {
                    i += 1;
                }
                out.push(Token {
                    tok: Tok::Other,
                    span: start..i,
                });
            }
        }
    }
    Some(out)
}

fn keyword(t: Option<&Token>, kw: &str) -> bool {
    matches!(t, Some(Token { tok: Tok::Word { text, quoted: false }, .. }) if text == kw)
}

fn ident(t: Option<&Token>) -> Option<String> {
    match t {
        Some(Token {
            tok: Tok::Word { text, .. },
            ..
        }) => Some(text.clone()),
        _ => None,
    }
}

/// Index of the token closing the bracket opened at `open`.
fn matching(tokens: &[Token], open: usize) -> Option<usize> {
    let mut depth = 0i32;
    for (i, t) in tokens.iter().enumerate().skip(open) {
        match t.tok {
            Tok::Open => depth += 1,
            Tok::Close => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// `EXECUTE name [(args)]` starting at token `at`.
fn execute_at(tokens: &[Token], at: usize, nested: bool) -> Option<NameOp> {
    let name = ident(tokens.get(at + 1))?;
    let args = match tokens.get(at + 2) {
        Some(Token { tok: Tok::Open, .. }) => {
            let close = matching(tokens, at + 2)?;
            let open = tokens.get(at + 2)?;
            let close = tokens.get(close)?;
            Some(open.span.end..close.span.start)
        }
        _ => None,
    };
    Some(NameOp::Execute { name, args, nested })
}

/// Reads a statement that creates, runs or drops prepared statements. `Err(())` when the
/// statement has that form but cannot be read (refuse it); `Ok(None)` for every other statement.
#[allow(clippy::result_unit_err)]
pub(crate) fn name_op(stmt: &str, scs: bool) -> Result<Option<NameOp>, ()> {
    // Cheap exit: the leading keyword decides, and most statements are not of these kinds.
    let Some(first) = crate::statements::first_keyword(stmt) else {
        return Ok(None);
    };
    let first = first.to_ascii_lowercase();
    if !matches!(
        first.as_str(),
        "prepare" | "execute" | "deallocate" | "discard" | "explain" | "create"
    ) {
        return Ok(None);
    }
    let limit = if first == "prepare" { 4096 } else { 1 << 20 };
    let tokens = tokenize(stmt, scs, limit).ok_or(())?;
    // Leading parentheses (`(EXECUTE p)` is not valid SQL, but be exact about the first word).
    let lead = tokens
        .iter()
        .position(|t| t.tok != Tok::Open)
        .unwrap_or(tokens.len());
    let t = &tokens[lead..];
    match first.as_str() {
        "prepare" => {
            if keyword(t.get(1), "transaction") {
                return Ok(None);
            }
            let name = ident(t.get(1)).ok_or(())?;
            let mut at = 2;
            if matches!(t.get(2), Some(Token { tok: Tok::Open, .. })) {
                at = matching(t, 2).ok_or(())? + 1;
            }
            if !keyword(t.get(at), "as") {
                return Err(());
            }
            let inner = t.get(at + 1).ok_or(())?.span.start;
            Ok(Some(NameOp::Prepare {
                name,
                statement: inner..stmt.len(),
            }))
        }
        "execute" => execute_at(t, 0, false).map(Some).ok_or(()),
        "deallocate" => {
            let at = if keyword(t.get(1), "prepare") { 2 } else { 1 };
            if keyword(t.get(at), "all") {
                return Ok(Some(NameOp::DeallocateAll));
            }
            let name = ident(t.get(at)).ok_or(())?;
            Ok(Some(NameOp::Deallocate { name }))
        }
        "discard" => Ok(keyword(t.get(1), "all").then_some(NameOp::DeallocateAll)),
        "explain" => {
            // EXPLAIN [ ( options ) | ANALYZE | VERBOSE … ] EXECUTE name
            let mut i = 1;
            while let Some(tok) = t.get(i) {
                match &tok.tok {
                    Tok::Open => i = matching(t, i).ok_or(())? + 1,
                    Tok::Word {
                        text,
                        quoted: false,
                    } if text == "execute" => {
                        return execute_at(t, i, true).map(Some).ok_or(());
                    }
                    Tok::Word { quoted: false, .. } => i += 1,
                    _ => return Ok(None),
                }
                if i > 16 {
                    return Ok(None);
                }
            }
            Ok(None)
        }
        _ => {
            // CREATE [TEMP] TABLE name [(cols)] [WITH …] AS EXECUTE name
            let mut depth = 0i32;
            for i in 0..t.len() {
                match t[i].tok {
                    Tok::Open => depth += 1,
                    Tok::Close => depth -= 1,
                    _ => {}
                }
                if depth == 0 && keyword(t.get(i), "as") && keyword(t.get(i + 1), "execute") {
                    return execute_at(t, i + 1, true).map(Some).ok_or(());
                }
            }
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_prepare_execute_deallocate() {
        let s = "PREPARE Del (int) AS DELETE FROM t WHERE id = $1";
        let Ok(Some(NameOp::Prepare { name, statement })) = name_op(s, true) else {
            panic!()
        };
        assert_eq!(name, "del");
        assert_eq!(&s[statement], "DELETE FROM t WHERE id = $1");
        assert_eq!(name_op("prepare transaction 'x'", true), Ok(None));
        let s = "/* hi */ EXECUTE \"Del\"(1, ')', (select 2))";
        let Ok(Some(NameOp::Execute { name, args, nested })) = name_op(s, true) else {
            panic!()
        };
        assert_eq!(name, "Del");
        assert!(!nested);
        assert_eq!(&s[args.unwrap()], "1, ')', (select 2)");
        // Names written with Unicode escapes are not read (PostgreSQL reads `s1`); strings
        // written so are strings.
        assert_eq!(name_op(r#"EXECUTE U&"\0073\0031""#, true), Err(()));
        assert_eq!(name_op(r#"deallocate u&"\0073""#, true), Err(()));
        let s = r#"PREPARE p AS SELECT U&'\0041 ''x'' EXECUTE u'"#;
        let Ok(Some(NameOp::Prepare { name, .. })) = name_op(s, true) else {
            panic!()
        };
        assert_eq!(name, "p");
        assert_eq!(
            name_op("execute p", true),
            Ok(Some(NameOp::Execute {
                name: "p".into(),
                args: None,
                nested: false
            }))
        );
        assert_eq!(
            name_op("deallocate prepare all", true),
            Ok(Some(NameOp::DeallocateAll))
        );
        assert_eq!(
            name_op("discard all", true),
            Ok(Some(NameOp::DeallocateAll))
        );
        assert_eq!(name_op("discard plans", true), Ok(None));
        assert_eq!(
            name_op("DEALLOCATE p", true),
            Ok(Some(NameOp::Deallocate { name: "p".into() }))
        );
        assert!(matches!(
            name_op("explain (analyze, costs off) execute p(1)", true),
            Ok(Some(NameOp::Execute { nested: true, .. }))
        ));
        assert!(matches!(
            name_op("create temp table x as execute p(1)", true),
            Ok(Some(NameOp::Execute { nested: true, .. }))
        ));
        assert_eq!(name_op("create table x as select 1", true), Ok(None));
        assert_eq!(name_op("select 1", true), Ok(None));
        assert_eq!(name_op("execute", true), Err(()));
    }

    #[test]
    fn string_reading_follows_standard_conforming_strings() {
        // Under scs=off the backslash escapes the quote, so `)` is still inside the string.
        let s = "execute p('a\\'', ')')";
        let Ok(Some(NameOp::Execute { args, .. })) = name_op(s, false) else {
            panic!()
        };
        assert_eq!(&s[args.unwrap()], "'a\\'', ')'");
    }

    fn stmt(text: &str) -> Arc<Prepared> {
        Arc::new(Prepared {
            text: text.into(),
            info: None,
            review: None,
            index: 0,
            name_op: None,
            sql_prepared: false,
        })
    }

    fn text_of(r: Resolved<Arc<Prepared>>) -> Option<String> {
        match r {
            Resolved::Known(p) => p.map(|p| p.text.clone()),
            Resolved::Wait => Some("<wait>".into()),
        }
    }

    #[test]
    fn names_follow_what_the_server_accepted() {
        let names = Arc::new(Names::default());
        let mut local = LocalNames::default();
        // Group 1 defines s1 as a DELETE; the server accepts it.
        let c = Change::DefineStatement("s1".into(), stmt("delete"));
        local.note(&c, 1);
        let first = names.send(c);
        // Group 2 tries to redefine it; until the server answers, a use in group 3 waits.
        let c = Change::DefineStatement("s1".into(), stmt("select"));
        local.note(&c, 2);
        let second = names.send(c);
        assert_eq!(
            text_of(local.statement(&names, "s1", 3)).as_deref(),
            Some("<wait>")
        );
        // In the group of the redefinition, a use runs the redefinition or nothing.
        assert_eq!(
            text_of(local.statement(&names, "s1", 2)).as_deref(),
            Some("select")
        );
        first.confirm();
        drop(second); // refused by the server (42P05)
        assert_eq!(
            text_of(local.statement(&names, "s1", 3)).as_deref(),
            Some("delete")
        );
        // DEALLOCATE ALL in the current group hides every statement.
        local.note(&Change::RemoveAllStatements, 4);
        let all = names.send(Change::RemoveAllStatements);
        assert_eq!(text_of(local.statement(&names, "s1", 4)), None);
        assert_eq!(
            text_of(local.statement(&names, "s1", 5)).as_deref(),
            Some("<wait>")
        );
        all.confirm();
        assert_eq!(text_of(local.statement(&names, "s1", 5)), None);
    }

    #[test]
    fn long_names_are_truncated_like_the_server() {
        let long = "p".repeat(80);
        let Ok(Some(NameOp::Deallocate { name })) = name_op(&format!("deallocate {long}"), true)
        else {
            panic!()
        };
        assert_eq!(name.len(), 63);
    }
}
