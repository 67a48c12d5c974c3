//! A PostgreSQL-faithful lexical pass: splits a query string into statements exactly where
//! PostgreSQL's own scanner would, and rewrites each statement into a form that `sqlparser` reads
//! the same way PostgreSQL does.
//!
//! Why this exists: `sqlparser` does not implement `standard_conforming_strings = off` (where
//! `'a\''` is one literal), string continuation across newlines, or the exact dollar-quote and
//! identifier rules. Here every string literal (standard, `E''`, dollar-quoted, continued) is
//! decoded with PostgreSQL's rules and re-emitted as a plain `'…'` literal with doubled quotes —
//! the one spelling every reader agrees on — and comments become a space. Anything whose reading
//! could differ between PostgreSQL and `sqlparser` is reported as a problem, never guessed.

use std::ops::Range;

use gatehouse_core::SqlSessionSettings;

/// One statement as PostgreSQL's scanner splits it.
#[derive(Debug, Clone)]
pub(crate) struct LexedStatement {
    /// Byte range in the original text (without the terminating `;`).
    pub span: Range<usize>,
    /// The statement rewritten for `sqlparser` (literals normalised, integer literals of up to
    /// 18 digits written as `0`, comments removed).
    pub rewritten: String,
    /// Why this statement cannot be read with certainty, if it cannot.
    pub problem: Option<String>,
    /// Why the rewritten text cannot stand for the statement (it is still read with certainty
    /// by PostgreSQL's parser from the original text).
    pub rewrite_problem: Option<String>,
    /// Only whitespace and comments: PostgreSQL skips it.
    pub is_empty: bool,
    /// Where the first token starts, relative to `span.start` (`0` when empty).
    pub code_start: usize,
    /// The statement as written, except that every integer literal written as `0` in
    /// `rewritten` is written as `1` (what PostgreSQL's parser reads; `1` rather than `0` because
    /// a few places of the grammar refuse `0`, e.g. `float(0)`, and none refuses `1`).
    pub parse_text: String,
}

/// Client encodings whose multi-byte characters never contain an ASCII byte, so the scanner's
/// view of quotes, backslashes and semicolons is the same as in UTF-8.
const ASCII_SAFE_ENCODINGS: &[&str] = &[
    "UTF8",
    "UNICODE",
    "SQLASCII",
    "LATIN1",
    "LATIN2",
    "LATIN3",
    "LATIN4",
    "LATIN5",
    "LATIN6",
    "LATIN7",
    "LATIN8",
    "LATIN9",
    "LATIN10",
    "ISO88591",
    "ISO88592",
    "ISO88593",
    "ISO88594",
    "ISO88595",
    "ISO88596",
    "ISO88597",
    "ISO88598",
    "ISO88599",
    "ISO885910",
    "ISO885913",
    "ISO885914",
    "ISO885915",
    "ISO885916",
    "WIN866",
    "WIN874",
    "WIN1250",
    "WIN1251",
    "WIN1252",
    "WIN1253",
    "WIN1254",
    "WIN1255",
    "WIN1256",
    "WIN1257",
    "WIN1258",
    "WINDOWS866",
    "WINDOWS874",
    "WINDOWS1250",
    "WINDOWS1251",
    "WINDOWS1252",
    "WINDOWS1253",
    "WINDOWS1254",
    "WINDOWS1255",
    "WINDOWS1256",
    "WINDOWS1257",
    "WINDOWS1258",
    "KOI8",
    "KOI8R",
    "KOI8U",
    "EUCJP",
    "EUCCN",
    "EUCKR",
    "EUCTW",
    "EUCJIS2004",
    "MULEINTERNAL",
    "ALT",
    "TCVN",
    "TCVN5712",
    "VSCII",
    "ABC",
    "MSKANJI",
];

/// Whether the scanner can be trusted under `encoding` (PostgreSQL accepts aliases and ignores
/// case, `-` and `_`). `SJIS`, `BIG5`, `GBK`, `UHC`, `GB18030` and `JOHAB` put ASCII bytes such
/// as `\` and `'` inside multi-byte characters: not safe. Unknown names are not safe either.
pub(crate) fn encoding_is_ascii_safe(encoding: &str) -> bool {
    let norm: String = encoding
        .chars()
        .filter(|c| !matches!(c, '-' | '_' | ' '))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    // MSKANJI is an alias of SJIS: listed above only to be excluded here explicitly.
    norm != "MSKANJI" && ASCII_SAFE_ENCODINGS.contains(&norm.as_str())
}

/// Where and why a string stopped being readable.
#[derive(Debug, Clone)]
pub(crate) struct LexFailure {
    /// From the start of the statement that could not be read to the end of the text.
    pub span: Range<usize>,
    /// Why.
    pub reason: String,
}

/// Splits `text` into statements. On failure, the statements completed before the unreadable
/// one are returned too (PostgreSQL would run none of them: it rejects the whole string; they
/// are kept so a policy can still see what was attempted).
pub(crate) fn split(
    text: &str,
    settings: &SqlSessionSettings,
) -> Result<Vec<LexedStatement>, (Vec<LexedStatement>, LexFailure)> {
    lex(text, settings).map(|(pieces, _)| pieces)
}

/// The text with every integer literal the lexer writes as `0` written so, everything else as
/// written, and the spans of its non-empty statements; `None` when the text cannot be split or
/// one of its statements cannot be read with certainty.
pub(crate) fn shape(
    text: &str,
    settings: &SqlSessionSettings,
) -> Option<(String, Vec<Range<usize>>)> {
    let (pieces, integers) = lex(text, settings).ok()?;
    if pieces
        .iter()
        .any(|p| p.problem.is_some() || p.rewrite_problem.is_some())
    {
        return None;
    }
    let mut shaped = String::with_capacity(text.len());
    let mut at = 0;
    for r in integers {
        shaped.push_str(text.get(at..r.start)?);
        shaped.push('0');
        at = r.end;
    }
    shaped.push_str(text.get(at..)?);
    let spans = pieces
        .into_iter()
        .filter(|p| !p.is_empty)
        .map(|p| p.span)
        .collect();
    Some((shaped, spans))
}

/// `text` with every constant written as a placeholder: quoted, bit and dollar-quoted strings
/// as `'[masked]'` (a prefix such as `E` or `X` kept), numbers as `[masked]`, comments as
/// `/*[masked]*/`; keywords, identifiers, operators and `$n` parameters as written. `None` when
/// the text cannot be split or one of its statements cannot be read with certainty (where a
/// literal ends is then not known).
pub(crate) fn mask_constants(text: &str, settings: &SqlSessionSettings) -> Option<String> {
    if !encoding_is_ascii_safe(&settings.client_encoding) || text.contains('\0') {
        return None;
    }
    let mut lexer = Lexer {
        text,
        bytes: text.as_bytes(),
        pos: 0,
        scs: settings.standard_conforming_strings,
        out: Vec::new(),
        current: StatementBuilder::new(0),
        zeroed: Vec::new(),
        constants: Vec::new(),
    };
    lexer.run().ok()?;
    if lexer.out.iter().any(|p| p.problem.is_some()) {
        return None;
    }
    let mut masked = String::with_capacity(text.len());
    let mut at = 0;
    for (range, what) in &lexer.constants {
        // Ranges come in text order and never overlap; anything else is a lexer fault.
        if range.start < at {
            return None;
        }
        masked.push_str(text.get(at..range.start)?);
        masked.push_str(match what {
            Constant::String => "'[masked]'",
            Constant::Number => "[masked]",
            Constant::Comment => "/*[masked]*/",
        });
        at = range.end;
    }
    masked.push_str(text.get(at..)?);
    Some(masked)
}

type Lexed = (Vec<LexedStatement>, Vec<Range<usize>>);

/// [`split`], plus the ranges of the integer literals written as `0`, in order.
fn lex(
    text: &str,
    settings: &SqlSessionSettings,
) -> Result<Lexed, (Vec<LexedStatement>, LexFailure)> {
    let whole = |reason: String| {
        Err((
            Vec::new(),
            LexFailure {
                span: 0..text.len(),
                reason,
            },
        ))
    };
    if !encoding_is_ascii_safe(&settings.client_encoding) {
        return whole(format!(
            "client_encoding {:?} is not supported: statement boundaries cannot be determined",
            settings.client_encoding
        ));
    }
    if text.contains('\0') {
        return whole("the query text contains a NUL byte".into());
    }
    let mut lexer = Lexer {
        text,
        bytes: text.as_bytes(),
        pos: 0,
        scs: settings.standard_conforming_strings,
        out: Vec::new(),
        current: StatementBuilder::new(0),
        zeroed: Vec::new(),
        constants: Vec::new(),
    };
    match lexer.run() {
        Ok(()) => {
            let mut pieces = lexer.out;
            fill_parse_texts(text, &mut pieces, &lexer.zeroed);
            Ok((pieces, lexer.zeroed))
        }
        Err(reason) => {
            let span = lexer.current.start.min(text.len())..text.len();
            let mut done: Vec<_> = lexer.out.into_iter().filter(|p| !p.is_empty).collect();
            fill_parse_texts(text, &mut done, &lexer.zeroed);
            Err((done, LexFailure { span, reason }))
        }
    }
}

/// Sets each piece's `parse_text` (pieces and `zeroed` both in text order).
fn fill_parse_texts(text: &str, pieces: &mut [LexedStatement], zeroed: &[Range<usize>]) {
    let mut rest = zeroed;
    for piece in pieces {
        let before = rest.partition_point(|r| r.start < piece.span.start);
        rest = rest.get(before..).unwrap_or(&[]);
        let inside = rest.partition_point(|r| r.end <= piece.span.end);
        let (mine, after) = rest.split_at(inside);
        piece.parse_text = parse_text(text, &piece.span, mine);
        rest = after;
    }
}

/// The text of `span` with the integers of `zeroed` inside it written as `1`.
fn parse_text(text: &str, span: &Range<usize>, zeroed: &[Range<usize>]) -> String {
    let mut out = String::with_capacity(span.len());
    let mut at = span.start;
    for r in zeroed
        .iter()
        .filter(|r| r.start >= span.start && r.end <= span.end)
    {
        out.push_str(text.get(at..r.start).unwrap_or(""));
        out.push('1');
        at = r.end;
    }
    out.push_str(text.get(at..span.end).unwrap_or(""));
    out
}

struct StatementBuilder {
    start: usize,
    rewritten: String,
    problem: Option<String>,
    rewrite_problem: Option<String>,
    has_code: bool,
    code_start: Option<usize>,
    /// psql's heuristic for `BEGIN ATOMIC … END` bodies (psqlscan.l): the first letters of
    /// the statement's leading words among CREATE, OR, REPLACE, FUNCTION, PROCEDURE …
    leading: [u8; 4],
    /// … how many words so far …
    words: usize,
    /// … parentheses open at this point …
    paren_depth: usize,
    /// … and `BEGIN` (or `CASE` inside one) not yet closed by `END`: a `;` inside ends nothing.
    /// PostgreSQL's parser checks the result (one statement per piece).
    begin_depth: usize,
}

impl StatementBuilder {
    fn new(start: usize) -> Self {
        Self {
            leading: [0; 4],
            words: 0,
            paren_depth: 0,
            begin_depth: 0,
            code_start: None,
            start,
            rewritten: String::new(),
            problem: None,
            rewrite_problem: None,
            has_code: false,
        }
    }

    fn problem(&mut self, why: impl Into<String>) {
        if self.problem.is_none() {
            self.problem = Some(why.into());
        }
    }

    /// Something only the rewritten text (for `sqlparser`, in lineage) cannot carry; PostgreSQL's
    /// parser reads the statement as written, and the split is certain.
    fn rewrite_problem(&mut self, why: impl Into<String>) {
        if self.rewrite_problem.is_none() {
            self.rewrite_problem = Some(why.into());
        }
    }

    fn non_word(&mut self) {
        self.has_code = true;
    }

    /// A plain word (keyword or unquoted identifier), as psql counts it.
    fn plain_word(&mut self, word: &str) {
        let lower = word.to_ascii_lowercase();
        if matches!(
            lower.as_str(),
            "create" | "function" | "procedure" | "or" | "replace"
        ) && let Some(slot) = self.leading.get_mut(self.words)
        {
            *slot = lower.as_bytes().first().copied().unwrap_or(0);
        }
        self.words += 1;
        let l = self.leading;
        let routine = l[0] == b'c'
            && (l[1] == b'f'
                || l[1] == b'p'
                || (l[1] == b'o' && l[2] == b'r' && (l[3] == b'f' || l[3] == b'p')));
        if routine && self.paren_depth == 0 {
            match lower.as_str() {
                "begin" => self.begin_depth += 1,
                "case" if self.begin_depth >= 1 => self.begin_depth += 1,
                "end" => self.begin_depth = self.begin_depth.saturating_sub(1),
                _ => {}
            }
        }
    }

    /// Whether a `;` here ends the statement.
    fn ends_at_semicolon(&self) -> bool {
        self.paren_depth == 0 && self.begin_depth == 0
    }
}

struct Lexer<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    scs: bool,
    out: Vec<LexedStatement>,
    current: StatementBuilder,
    /// Ranges of the integer literals written as `0`.
    zeroed: Vec<Range<usize>>,
    /// Ranges of every constant and comment, in text order (see [`mask_constants`]).
    constants: Vec<(Range<usize>, Constant)>,
}

/// What a range of [`Lexer::constants`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Constant {
    /// A quoted string (any prefix), a bit string or a dollar-quoted string.
    String,
    /// A numeric literal.
    Number,
    /// A `--` or `/* */` comment.
    Comment,
}

/// How a quoted literal treats backslashes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum QuoteStyle {
    /// `'…'` under `standard_conforming_strings = on`, `N'…'`: only `''` is special.
    Standard,
    /// `E'…'`, or `'…'` under `standard_conforming_strings = off`: backslash escapes.
    Escape,
    /// `B'…'` / `X'…'`: no escapes at all; a `''` ends one literal and starts the next.
    Bits,
    /// `U&'…'`: like standard, but with Unicode escapes we do not decode.
    Unicode,
}

/// Longest integer literal rewritten as `0` (a longer one may overflow where `0` does not, e.g.
/// in a type modifier, so it is kept as written).
const MAX_ZEROED_INTEGER: usize = 18;

#[cfg(not(test))]
fn zero_integers() -> bool {
    true
}

#[cfg(test)]
thread_local! {
    /// Tests compare answers with and without the zeroing.
    pub(crate) static KEEP_INTEGERS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[cfg(test)]
fn zero_integers() -> bool {
    !KEEP_INTEGERS.get()
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_ident_cont(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit() || b == b'$'
}

impl<'a> Lexer<'a> {
    fn peek(&self, offset: usize) -> Option<u8> {
        self.bytes.get(self.pos + offset).copied()
    }

    fn slice(&self, range: Range<usize>) -> &'a str {
        self.text.get(range).unwrap_or("")
    }

    fn finish_statement(&mut self, end: usize) {
        let builder = std::mem::replace(&mut self.current, StatementBuilder::new(end + 1));
        let span = builder.start..end;
        self.out.push(LexedStatement {
            span,
            is_empty: !builder.has_code,
            rewritten: builder.rewritten,
            problem: builder.problem,
            rewrite_problem: builder.rewrite_problem,
            code_start: builder
                .code_start
                .map_or(0, |c| c.saturating_sub(builder.start)),
            parse_text: String::new(),
        });
    }

    fn run(&mut self) -> Result<(), String> {
        while let Some(b) = self.peek(0) {
            let trivia = matches!(b, b';' | b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
                || (b == b'-' && self.peek(1) == Some(b'-'))
                || (b == b'/' && self.peek(1) == Some(b'*'));
            let starts_code = !trivia;
            if starts_code && self.current.code_start.is_none() {
                self.current.code_start = Some(self.pos);
            }
            match b {
                b';' if self.current.ends_at_semicolon() => {
                    self.finish_statement(self.pos);
                    self.pos += 1;
                }
                b' ' | b'\t' | b'\n' | b'\r' => {
                    self.current.rewritten.push(char::from(b));
                    self.pos += 1;
                }
                0x0c => {
                    // Form feed is whitespace to PostgreSQL; sqlparser does not know it.
                    self.current.rewritten.push(' ');
                    self.pos += 1;
                }
                0x0b => {
                    self.current.problem(
                        "vertical tab outside a literal (read differently by PostgreSQL versions)",
                    );
                    self.current.rewritten.push(' ');
                    self.pos += 1;
                }
                b'-' if self.peek(1) == Some(b'-') => self.line_comment(),
                b'/' if self.peek(1) == Some(b'*') => self.block_comment()?,
                b'\'' => {
                    let style = if self.scs {
                        QuoteStyle::Standard
                    } else {
                        QuoteStyle::Escape
                    };
                    self.pos += 1;
                    self.literal(style)?;
                }
                b'"' => self.quoted_identifier(false)?,
                b'$' => self.dollar()?,
                b if b.is_ascii_digit()
                    || (b == b'.' && self.peek(1).is_some_and(|n| n.is_ascii_digit())) =>
                {
                    self.number()
                }
                b if is_ident_start(b) => self.word()?,
                _ => {
                    // Operators and punctuation: copied verbatim. A non-ASCII byte cannot get
                    // here (it starts a word).
                    self.current.non_word();
                    match b {
                        b'(' => self.current.paren_depth += 1,
                        b')' => {
                            self.current.paren_depth = self.current.paren_depth.saturating_sub(1)
                        }
                        _ => {}
                    }
                    self.current.rewritten.push(char::from(b));
                    self.pos += 1;
                }
            }
        }
        let end = self.bytes.len();
        self.finish_statement(end);
        // The last piece after a final `;` is empty unless it has code: drop empty tails.
        Ok(())
    }

    fn line_comment(&mut self) {
        let start = self.pos;
        while let Some(b) = self.peek(0) {
            if b == b'\n' || b == b'\r' {
                break;
            }
            self.pos += 1;
        }
        self.constants.push((start..self.pos, Constant::Comment));
        self.current.rewritten.push(' ');
    }

    fn block_comment(&mut self) -> Result<(), String> {
        let start = self.pos;
        self.pos += 2;
        let mut depth = 1usize;
        while depth > 0 {
            match (self.peek(0), self.peek(1)) {
                (Some(b'/'), Some(b'*')) => {
                    depth += 1;
                    self.pos += 2;
                }
                (Some(b'*'), Some(b'/')) => {
                    depth -= 1;
                    self.pos += 2;
                }
                (Some(_), _) => self.pos += 1,
                (None, _) => {
                    return Err(format!("unterminated /* comment at byte {start}"));
                }
            }
        }
        self.constants.push((start..self.pos, Constant::Comment));
        self.current.rewritten.push(' ');
        Ok(())
    }

    /// Scans a quoted literal whose opening quote was just consumed; handles continuation across
    /// newlines; emits the decoded value as a standard literal.
    fn literal(&mut self, style: QuoteStyle) -> Result<(), String> {
        let start = self.pos.saturating_sub(1);
        let mut value: Vec<u8> = Vec::new();
        loop {
            let Some(b) = self.peek(0) else {
                return Err(format!("unterminated quoted string at byte {start}"));
            };
            match b {
                b'\'' => {
                    if self.peek(1) == Some(b'\'') && style != QuoteStyle::Bits {
                        value.push(b'\'');
                        self.pos += 2;
                        continue;
                    }
                    self.pos += 1;
                    if let Some(next_quote) = self.continuation() {
                        self.pos = next_quote + 1;
                        continue;
                    }
                    self.constants.push((start..self.pos, Constant::String));
                    break;
                }
                b'\\' if style == QuoteStyle::Escape => {
                    self.pos += 1;
                    self.escape(&mut value, start)?;
                }
                _ => {
                    value.push(b);
                    self.pos += 1;
                }
            }
        }
        match style {
            QuoteStyle::Unicode => {
                self.current
                    .rewrite_problem("U&'…' literals are not supported");
            }
            QuoteStyle::Bits => {
                if !value.iter().all(u8::is_ascii_hexdigit) {
                    self.current
                        .rewrite_problem("bit-string literal with characters other than digits");
                }
            }
            QuoteStyle::Standard | QuoteStyle::Escape => {}
        }
        match String::from_utf8(value) {
            Ok(v) if !v.contains('\0') => self.emit_literal(&v, style),
            _ => {
                self.current
                    .problem("string literal decodes to invalid UTF-8 or a NUL character");
                self.emit_literal("", style);
            }
        }
        Ok(())
    }

    fn emit_literal(&mut self, value: &str, style: QuoteStyle) {
        self.current.non_word();
        let out = &mut self.current.rewritten;
        // Keep a boundary so the literal never fuses with what precedes it.
        out.push(' ');
        if style == QuoteStyle::Bits {
            out.push('X');
        }
        out.push('\'');
        for ch in value.chars() {
            if ch == '\'' {
                out.push('\'');
            }
            out.push(ch);
        }
        out.push('\'');
    }

    /// After a closing quote: PostgreSQL joins `'a'<newline>'b'` into one literal (whitespace
    /// with at least one newline, `--` comments allowed). Returns the position of the quote that
    /// continues the literal.
    fn continuation(&self) -> Option<usize> {
        let mut i = self.pos;
        while matches!(self.bytes.get(i), Some(b' ' | b'\t' | 0x0c)) {
            i += 1;
        }
        if !matches!(self.bytes.get(i), Some(b'\n' | b'\r')) {
            return None;
        }
        loop {
            match self.bytes.get(i) {
                Some(b' ' | b'\t' | b'\n' | b'\r' | 0x0c) => i += 1,
                Some(b'-') if self.bytes.get(i + 1) == Some(&b'-') => {
                    // A comment must end with a newline to count.
                    while let Some(&c) = self.bytes.get(i) {
                        if c == b'\n' || c == b'\r' {
                            break;
                        }
                        i += 1;
                    }
                    self.bytes.get(i)?;
                }
                Some(b'\'') => return Some(i),
                _ => return None,
            }
        }
    }

    /// Decodes one backslash escape of an escape-string literal (the `\` is consumed).
    fn escape(&mut self, value: &mut Vec<u8>, start: usize) -> Result<(), String> {
        let Some(b) = self.peek(0) else {
            return Err(format!("unterminated quoted string at byte {start}"));
        };
        match b {
            b'b' => {
                value.push(0x08);
                self.pos += 1;
            }
            b'f' => {
                value.push(0x0c);
                self.pos += 1;
            }
            b'n' => {
                value.push(b'\n');
                self.pos += 1;
            }
            b'r' => {
                value.push(b'\r');
                self.pos += 1;
            }
            b't' => {
                value.push(b'\t');
                self.pos += 1;
            }
            b'0'..=b'7' => {
                let mut v: u32 = 0;
                let mut n = 0;
                while n < 3 {
                    match self.peek(0) {
                        Some(d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            self.pos += 1;
                            n += 1;
                        }
                        _ => break,
                    }
                }
                value.push((v & 0xff) as u8);
            }
            b'x' if self.peek(1).is_some_and(|d| d.is_ascii_hexdigit()) => {
                self.pos += 1;
                let mut v: u32 = 0;
                let mut n = 0;
                while n < 2 {
                    match self.peek(0).and_then(|d| char::from(d).to_digit(16)) {
                        Some(d) => {
                            v = v * 16 + d;
                            self.pos += 1;
                            n += 1;
                        }
                        None => break,
                    }
                }
                value.push((v & 0xff) as u8);
            }
            b'u' | b'U' => {
                let digits = if b == b'u' { 4 } else { 8 };
                let hex = self.bytes.get(self.pos + 1..self.pos + 1 + digits);
                let code = hex
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u32::from_str_radix(h, 16).ok());
                match code.and_then(char::from_u32) {
                    Some(ch) => {
                        let mut buf = [0u8; 4];
                        value.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                        self.pos += 1 + digits;
                    }
                    None => {
                        // PostgreSQL rejects these (bad digits, surrogates): so do we, but the
                        // literal's extent is still clear, so only this statement is affected.
                        self.current
                            .problem("invalid or surrogate Unicode escape in a string literal");
                        self.pos += 1;
                    }
                }
            }
            _ => {
                // `\` + any other character is that character (a whole UTF-8 sequence).
                let ch_len = self
                    .text
                    .get(self.pos..)
                    .and_then(|s| s.chars().next())
                    .map_or(1, char::len_utf8);
                value.extend_from_slice(self.bytes.get(self.pos..self.pos + ch_len).unwrap_or(&[]));
                self.pos += ch_len;
            }
        }
        Ok(())
    }

    fn quoted_identifier(&mut self, unicode: bool) -> Result<(), String> {
        let start = self.pos;
        self.pos += 1;
        loop {
            match self.peek(0) {
                None => return Err(format!("unterminated quoted identifier at byte {start}")),
                Some(b'"') if self.peek(1) == Some(b'"') => self.pos += 2,
                Some(b'"') => {
                    self.pos += 1;
                    break;
                }
                Some(_) => self.pos += 1,
            }
        }
        if self.pos - start == 2 {
            self.current.problem("zero-length quoted identifier");
        }
        if unicode {
            self.current
                .rewrite_problem("U&\"…\" identifiers are not supported");
        }
        self.current.non_word();
        let raw = self.slice(start..self.pos);
        self.current.rewritten.push_str(raw);
        Ok(())
    }

    fn dollar(&mut self) -> Result<(), String> {
        let start = self.pos;
        // `$1`: a parameter.
        if self.peek(1).is_some_and(|d| d.is_ascii_digit()) {
            self.pos += 1;
            while self.peek(0).is_some_and(|d| d.is_ascii_digit()) {
                self.pos += 1;
            }
            if self.peek(0).is_some_and(is_ident_cont) {
                self.current
                    .problem("parameter followed directly by identifier characters");
            }
            self.current.non_word();
            let raw = self.slice(start..self.pos);
            self.current.rewritten.push_str(raw);
            return Ok(());
        }
        // `$tag$` or `$$`.
        let mut i = start + 1;
        if self.bytes.get(i).is_some_and(|&b| is_ident_start(b)) {
            i += 1;
            while self
                .bytes
                .get(i)
                .is_some_and(|&b| is_ident_start(b) || b.is_ascii_digit())
            {
                i += 1;
            }
        }
        if self.bytes.get(i) != Some(&b'$') {
            self.current.problem("a lone '$' outside a literal");
            self.current.non_word();
            self.current.rewritten.push('$');
            self.pos += 1;
            return Ok(());
        }
        let delimiter = self.slice(start..i + 1);
        let body_start = i + 1;
        let Some(rel_end) = self.text.get(body_start..).and_then(|s| s.find(delimiter)) else {
            return Err(format!("unterminated dollar-quoted string at byte {start}"));
        };
        let body = self.slice(body_start..body_start + rel_end).to_string();
        self.pos = body_start + rel_end + delimiter.len();
        self.constants.push((start..self.pos, Constant::String));
        // PostgreSQL ends the delimiter scan greedily; `$a$b` right after the closing delimiter
        // would be read as an identifier continuation by some readers.
        self.emit_literal(&body, QuoteStyle::Standard);
        Ok(())
    }

    fn number(&mut self) {
        let start = self.pos;
        while self
            .peek(0)
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        {
            // `1..2` is not a number; stop before a second consecutive dot.
            if self.peek(0) == Some(b'.') && self.peek(1) == Some(b'.') {
                break;
            }
            self.pos += 1;
        }
        if matches!(self.peek(0), Some(b'\'' | b'"' | b'$')) {
            self.current.problem(
                "numeric literal followed directly by a quote or '$' (read differently by PostgreSQL versions)",
            );
        }
        self.current.non_word();
        self.constants.push((start..self.pos, Constant::Number));
        let raw = self.slice(start..self.pos);
        if raw.len() <= MAX_ZEROED_INTEGER
            && raw.bytes().all(|b| b.is_ascii_digit())
            && zero_integers()
        {
            // No classification or lineage answer depends on an integer's value (the test
            // `integer_values_never_change_an_answer` holds a corpus of every place one can
            // stand), so statements that differ only in them share one rewritten text, and the
            // parse memo serves them all (pgbench's `… WHERE aid = 123`). Spans come from the
            // original text, never from the rewritten one. At most 18 digits: a longer one may
            // overflow where `0` would not (sqlparser reads type modifiers as u64).
            self.current.rewritten.push('0');
            self.zeroed.push(start..self.pos);
        } else {
            self.current.rewritten.push_str(raw);
        }
    }

    fn word(&mut self) -> Result<(), String> {
        let b0 = self.peek(0).unwrap_or(0);
        let b1 = self.peek(1);
        // Literal prefixes only count at the start of a token.
        match (b0.to_ascii_lowercase(), b1) {
            (b'e', Some(b'\'')) => {
                self.pos += 2;
                return self.literal(QuoteStyle::Escape);
            }
            (b'n', Some(b'\'')) => {
                // NCHAR literal: the string itself follows the session's rules.
                self.pos += 2;
                let style = if self.scs {
                    QuoteStyle::Standard
                } else {
                    QuoteStyle::Escape
                };
                return self.literal(style);
            }
            (b'b' | b'x', Some(b'\'')) => {
                self.pos += 2;
                if b0.eq_ignore_ascii_case(&b'b') {
                    self.current
                        .rewrite_problem("bit-string literals are not supported");
                }
                return self.literal(QuoteStyle::Bits);
            }
            (b'u', Some(b'&')) => match self.peek(2) {
                Some(b'\'') => {
                    self.pos += 3;
                    return self.literal(QuoteStyle::Unicode);
                }
                Some(b'"') => {
                    self.pos += 2;
                    return self.quoted_identifier(true);
                }
                _ => {}
            },
            _ => {}
        }
        let start = self.pos;
        while self.peek(0).is_some_and(is_ident_cont) {
            self.pos += 1;
        }
        let raw = self.slice(start..self.pos);
        if raw.contains('$') {
            self.current
                .rewrite_problem("'$' inside an identifier (ambiguous with dollar quoting)");
        }
        for ch in raw.chars() {
            if !ch.is_ascii() && !ch.is_alphabetic() {
                self.current.problem(
                    "non-alphabetic non-ASCII character outside a literal (PostgreSQL reads it as part of an identifier)",
                );
                break;
            }
        }
        self.current.has_code = true;
        self.current.plain_word(raw);
        self.current.rewritten.push_str(raw);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scs(on: bool) -> SqlSessionSettings {
        SqlSessionSettings {
            standard_conforming_strings: on,
            ..SqlSessionSettings::default()
        }
    }

    fn pieces(text: &str, on: bool) -> Vec<String> {
        split(text, &scs(on))
            .map_err(|(_, f)| f.reason)
            .unwrap()
            .into_iter()
            .filter(|s| !s.is_empty)
            .map(|s| s.rewritten.trim().to_string())
            .collect()
    }

    #[test]
    fn backslash_quote_depends_on_scs() {
        let text = r"SELECT 'a\'' ; SELECT 'b'; -- '";
        // scs on: `''` after the backslash is a quote, so the literal runs on to `'b`, and
        // `b'; -- '` is a bit-string literal: one (broken) statement, as PostgreSQL sees it.
        assert_eq!(pieces(text, true), ["SELECT  'a\\'' ; SELECT ' X'; -- '"]);
        // scs off: `\'` is an escaped quote and the literal ends right after: two statements.
        assert_eq!(pieces(text, false), ["SELECT  'a'''", "SELECT  'b'"]);
        // The classic: the backslash hides the closing quote only under scs=off.
        let text = r"SELECT 'x\'; DROP TABLE t; --'";
        assert_eq!(pieces(text, true), ["SELECT  'x\\'", "DROP TABLE t"]);
        assert_eq!(pieces(text, false), ["SELECT  'x''; DROP TABLE t; --'"]);
    }

    /// The shape zeroes exactly the integers the parse sees zeroed and keeps everything else
    /// (comments, strings, names, over-long integers) as written; spans are the original text's.
    #[test]
    fn shape_zeroes_integers_only() {
        let text = "select 12 ; -- 34\nselect 'x5', t6 + 78, 1234567890123456789;;";
        let (shaped, spans) = shape(text, &scs(true)).unwrap();
        assert_eq!(
            shaped,
            "select 0 ; -- 34\nselect 'x5', t6 + 0, 1234567890123456789;;"
        );
        let statements: Vec<&str> = spans.iter().map(|r| &text[r.clone()]).collect();
        assert_eq!(
            statements,
            [
                "select 12 ",
                " -- 34\nselect 'x5', t6 + 78, 1234567890123456789"
            ]
        );
        assert_eq!(shape("select 'open", &scs(true)), None);
        assert_eq!(shape("select 1'x'", &scs(true)), None);
    }

    /// Only integer literals become `0`: not decimals, exponents, other radixes, parameters,
    /// digits inside names or literals, nor integers too long to be read as u64.
    #[test]
    fn integer_literals_are_written_as_zero() {
        assert_eq!(
            pieces(
                "SELECT 12, 007, 1.5, .5, 1e5, 0x1F, 1_000, $12, t12, \"c3\", '45', 123456789012345678, 1234567890123456789",
                true
            ),
            [
                "SELECT 0, 0, 1.5, .5, 1e5, 0x1F, 1_000, $12, t12, \"c3\",  '45', 0, 1234567890123456789"
            ]
        );
    }

    #[test]
    fn comments_dollar_quotes_and_continuation() {
        assert_eq!(
            pieces("SELECT /* a /* nested ; */ ; */ 1; SELECT 2 -- ;", true),
            ["SELECT   0", "SELECT 0"]
        );
        assert_eq!(
            pieces("SELECT $x$ ; ' $$ $x$, $$;$$", true),
            ["SELECT  ' ; '' $$ ',  ';'"]
        );
        assert_eq!(pieces("SELECT 'a'\n  -- c\n 'b'", true), ["SELECT  'ab'"]);
        assert_eq!(pieces("SELECT 'a' 'b'", true), ["SELECT  'a'  'b'"]);
        assert_eq!(
            pieces(r"SELECT E'\x41\101\u0041\n'", true),
            ["SELECT  'AAA\n'"]
        );
        assert!(split("SELECT 'abc", &scs(true)).is_err());
        assert!(split("SELECT /* abc", &scs(true)).is_err());
        assert!(split("SELECT $a$ abc $b$", &scs(true)).is_err());
        assert!(split("SELECT \"abc", &scs(true)).is_err());
    }

    #[test]
    fn problems() {
        let p = |t: &str| {
            let piece = &split(t, &scs(true)).unwrap()[0];
            piece.problem.clone().or(piece.rewrite_problem.clone())
        };
        assert!(p("SELECT a$b FROM t").is_some());
        assert!(p("SELECT $1 FROM t").is_none());
        assert!(p("SELECT\u{a0}1").is_some());
        assert!(p("SELECT U&'\\0041'").is_some());
        assert!(p("SELECT E'\\000'").is_some());
        assert!(p("SELECT 1e'x'").is_some());
        assert!(p("SELECT café FROM t").is_none());
    }

    #[test]
    fn encodings() {
        assert!(encoding_is_ascii_safe("UTF8"));
        assert!(encoding_is_ascii_safe("utf-8"));
        assert!(encoding_is_ascii_safe("latin1"));
        assert!(!encoding_is_ascii_safe("SJIS"));
        assert!(!encoding_is_ascii_safe("big5"));
        assert!(!encoding_is_ascii_safe("GBK"));
        assert!(!encoding_is_ascii_safe("whatever"));
    }

    #[test]
    fn mask_constants_hides_every_literal_and_comment() {
        let on = scs(true);
        let m = |t: &str| mask_constants(t, &on);
        assert_eq!(
            m("INSERT INTO c(name, n) VALUES ('Alice Smith', 42), (E'B\\'ob', 1.5e3)").as_deref(),
            Some("INSERT INTO c(name, n) VALUES ('[masked]', [masked]), (E'[masked]', [masked])")
        );
        assert_eq!(
            m("SELECT $q$Alice$q$, $$x$$, X'ff', U&'d\\0061t' /* Alice */ -- Smith\n, $1")
                .as_deref(),
            Some(
                "SELECT '[masked]', '[masked]', X'[masked]', U&'[masked]' /*[masked]*/ /*[masked]*/\n, $1"
            )
        );
        // A literal continued across a newline is one literal.
        assert_eq!(
            m("SELECT 'Ali'\n'ce' AS \"col\"").as_deref(),
            Some("SELECT '[masked]' AS \"col\"")
        );
        // Under standard_conforming_strings = off the backslash keeps the literal open.
        assert_eq!(
            mask_constants(r"SELECT 'it\'s Alice'", &scs(false)).as_deref(),
            Some("SELECT '[masked]'")
        );
        // Where a literal ends is not known: nothing.
        assert_eq!(m("SELECT 'Alice"), None);
        assert_eq!(m("SELECT $$Alice"), None);
        assert_eq!(m("SELECT 1 /* Alice"), None);
        assert_eq!(m(r"SELECT 'it\'s Alice'"), None);
    }
}
