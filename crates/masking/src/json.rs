//! The streaming JSON masker: token level, constant memory, bounded depth.
//!
//! Structural bytes, whitespace, numbers and strings that need no masking are copied verbatim, so
//! a document with nothing to mask comes out byte-identical. String values (and keys) get content
//! detection on their raw, still-escaped bytes; matches are widened to whole escape sequences so
//! the output stays valid JSON. A value selected by a path rule (or held under a secret-looking
//! key such as `"password"`) is masked whole: strings become a token, other scalars `null`,
//! containers have every scalar inside masked.
//!
//! Memory is bounded: strings are buffered at most 64 KiB at a time (longer strings are masked in
//! pieces cut at content-determined places), literals at most 512 bytes, nesting at most 128
//! levels. Input that is not JSON, or nests deeper, switches the rest of the stream to the text
//! masker: still masked, never passed through raw.

use std::sync::Arc;

use gatehouse_core::{Finding, StreamMasker};

use crate::detect::Detector;
use crate::detect::scan::{Span, Stop, is_secret_key_name};
use crate::jsonpath::PathElem;
use crate::profile::{MaskingProfile, Rule};
use crate::stream::TextStreamMasker;

const PIECE: usize = 64 * 1024;
const MAX_LITERAL: usize = 512;
const MAX_DEPTH: usize = 128;
const MAX_KEY: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RuleRef {
    Path(usize),
    Detector(Detector),
}

#[derive(Debug)]
struct Frame {
    obj: bool,
    index: usize,
    key: Vec<u8>,
    /// `key` names a secret (`password`, `api_key`, …): computed once per key.
    key_is_secret: bool,
    expect_key: bool,
    masked: Option<RuleRef>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Between,
    Str,
    Lit,
}

/// Masks a JSON stream (a document, or several: JSON lines work too).
pub struct JsonStreamMasker {
    profile: Arc<MaskingProfile>,
    field: Option<String>,
    frames: Vec<Frame>,
    state: State,
    tok: Vec<u8>,
    tok_offset: u64,
    offset: u64,
    whole: Option<RuleRef>,
    is_key: bool,
    key_set: bool,
    escape: bool,
    token_emitted: bool,
    findings: Vec<Finding>,
    fallback: Option<TextStreamMasker>,
}

impl std::fmt::Debug for JsonStreamMasker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token being read and the keys are unmasked input: never shown.
        f.debug_struct("JsonStreamMasker")
            .field("profile", &self.profile.name())
            .field("depth", &self.frames.len())
            .field("held", &self.tok.len())
            .field("fell_back", &self.fallback.is_some())
            .finish_non_exhaustive()
    }
}

impl JsonStreamMasker {
    /// A masker for a new JSON stream under `profile`; findings name `field`.
    pub fn new(profile: Arc<MaskingProfile>, field: Option<String>) -> JsonStreamMasker {
        JsonStreamMasker {
            profile,
            field,
            frames: Vec::new(),
            state: State::Between,
            tok: Vec::new(),
            tok_offset: 0,
            offset: 0,
            whole: None,
            is_key: false,
            key_set: false,
            escape: false,
            token_emitted: false,
            findings: Vec::new(),
            fallback: None,
        }
    }

    /// Whether malformed or too-deep input switched this stream to text masking.
    pub fn fell_back(&self) -> bool {
        self.fallback.is_some()
    }

    fn rule(&self, r: RuleRef) -> Option<&Rule> {
        match r {
            RuleRef::Path(i) => self.profile.json_paths.get(i).map(|p| &p.1),
            RuleRef::Detector(d) => self.profile.detector_rule(d),
        }
    }

    /// The whole-value rule for a value starting now, if any.
    fn value_rule(&self) -> Option<RuleRef> {
        let top = self.frames.last();
        if let Some(r) = top.and_then(|f| f.masked) {
            return Some(r);
        }
        if !self.profile.json_paths.is_empty() {
            let path: Vec<PathElem<'_>> = self
                .frames
                .iter()
                .map(|f| {
                    if f.obj {
                        PathElem::Key(&f.key)
                    } else {
                        PathElem::Index(f.index)
                    }
                })
                .collect();
            if let Some(i) = self
                .profile
                .json_paths
                .iter()
                .position(|(p, _)| p.matches(&path))
            {
                return Some(RuleRef::Path(i));
            }
        }
        if top.is_some_and(|f| f.obj && f.key_is_secret) {
            return Some(RuleRef::Detector(Detector::SecretAssignment));
        }
        None
    }

    fn finding(&mut self, rule: &str, offset: u64, length: usize) {
        self.findings.push(Finding {
            rule: rule.to_string(),
            field: self.field.clone(),
            offset,
            length: length as u64,
        });
    }

    /// Masks raw string content by detection, widening matches to whole escape sequences.
    fn detect_string(&mut self, content: &[u8], base: u64, out: &mut Vec<u8>) {
        // Disjoint borrows of the fields: no reference-count traffic per string.
        let JsonStreamMasker {
            profile,
            field,
            findings,
            ..
        } = self;
        let mut pos = 0;
        loop {
            let seg = content.get(pos..).unwrap_or(&[]);
            let r = profile.scanner.scan(seg, true);
            let end = match r.stop {
                Stop::Restart(e) => pos + e,
                _ => content.len(),
            };
            let seg = content.get(pos..end).unwrap_or(&[]);
            if r.spans.is_empty() {
                out.extend_from_slice(seg);
            } else {
                let spans = snap_to_escapes(seg, &r.spans);
                profile.apply_spans(
                    seg,
                    &spans,
                    base + pos as u64,
                    field.as_deref(),
                    true,
                    out,
                    findings,
                );
            }
            if end <= pos || end >= content.len() {
                break;
            }
            pos = end;
        }
    }

    /// Emits `tok[..cut]` of the current string (a piece, or all of it at the end).
    fn emit_string_part(&mut self, cut: usize, out: &mut Vec<u8>) {
        // The whole token (the common case) is taken without copying; its buffer is given back.
        let whole_token = cut >= self.tok.len();
        let part: Vec<u8> = if whole_token {
            std::mem::take(&mut self.tok)
        } else {
            self.tok.drain(..cut).collect()
        };
        self.emit_part(&part, out);
        if whole_token {
            self.tok = part;
            self.tok.clear();
        }
    }

    fn emit_part(&mut self, part: &[u8], out: &mut Vec<u8>) {
        let base = self.tok_offset;
        self.tok_offset += part.len() as u64;
        if self.is_key && !self.key_set {
            let secret_names = self.profile.detector_enabled(Detector::SecretAssignment);
            if let Some(f) = self.frames.last_mut() {
                f.key.clear();
                f.key
                    .extend_from_slice(part.get(..part.len().min(MAX_KEY)).unwrap_or(&[]));
                f.key_is_secret = secret_names && is_secret_key_name(&f.key);
            }
            self.key_set = true;
        }
        match self.whole {
            Some(r) => {
                if !self.token_emitted {
                    self.token_emitted = true;
                    let Some(rule) = self.rule(r).cloned() else {
                        return;
                    };
                    self.profile.replace(&rule, part, true, out);
                    self.finding(&rule.name, base, part.len());
                }
            }
            None => self.detect_string(part, base, out),
        }
    }

    fn end_string(&mut self, out: &mut Vec<u8>) {
        self.emit_string_part(self.tok.len(), out);
        self.close_string(out);
    }

    /// Ends the current string once its last part is out.
    fn close_string(&mut self, out: &mut Vec<u8>) {
        out.push(b'"');
        if self.is_key {
            if let Some(f) = self.frames.last_mut() {
                f.expect_key = false;
            }
        } else if self.whole.is_some() && !self.token_emitted {
            // An empty string under a whole-mask rule is still reported as masked.
            self.token_emitted = true;
        }
        self.state = State::Between;
        self.whole = None;
        self.is_key = false;
        self.key_set = false;
        self.token_emitted = false;
    }

    fn end_literal(&mut self, out: &mut Vec<u8>) {
        let lit = std::mem::take(&mut self.tok);
        let base = self.tok_offset;
        if let Some(r) = self.whole {
            if lit.as_slice() == b"null" {
                out.extend_from_slice(&lit);
            } else {
                out.extend_from_slice(b"null");
                if let Some(name) = self.rule(r).map(|x| x.name.clone()) {
                    self.finding(&name, base, lit.len());
                }
            }
        } else if matches!(lit.as_slice(), b"true" | b"false" | b"null")
            && !self.profile.scanner.has_word_rules()
        {
            // No built-in detector matches a keyword (none has a letters-only anchor); only an
            // operator's word list or regex could.
            out.extend_from_slice(&lit);
        } else {
            let r = self.profile.scanner.scan(&lit, true);
            if r.spans.is_empty() {
                out.extend_from_slice(&lit);
            } else {
                out.extend_from_slice(b"null");
                for s in &r.spans {
                    if let Some(name) = self
                        .profile
                        .rules
                        .get(usize::from(s.rule))
                        .map(|x| x.name.clone())
                    {
                        self.finding(&name, base + s.start as u64, s.end - s.start);
                    }
                }
            }
        }
        self.tok = lit;
        self.tok.clear();
        self.whole = None;
        self.state = State::Between;
    }

    /// Switches the rest of the stream to text masking, starting with the unfinished token.
    fn fall_back(&mut self, rest: &[u8], out: &mut Vec<u8>) {
        let start = self.tok_offset;
        let mut fb =
            TextStreamMasker::starting_at(Arc::clone(&self.profile), self.field.clone(), start);
        let tok = std::mem::take(&mut self.tok);
        if self.state == State::Str && self.whole.is_some() && self.token_emitted {
            // The token for this string is already out; the rest of it stays hidden.
        } else {
            fb.push(&tok, out);
        }
        fb.push(rest, out);
        self.fallback = Some(fb);
    }

    /// Where a string piece may be cut without splitting an escape sequence.
    fn safe_cut(&self, want: usize) -> usize {
        let mut i = 0;
        let mut last_ok = 0;
        while i < want && i < self.tok.len() {
            last_ok = i;
            i += match self.tok.get(i) {
                Some(b'\\') if self.tok.get(i + 1) == Some(&b'u') => 6,
                Some(b'\\') => 2,
                _ => 1,
            };
        }
        if i <= want.min(self.tok.len()) {
            i
        } else {
            last_ok
        }
    }

    fn push_inner(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let mut i = 0;
        let base = self.offset;
        while i < chunk.len() {
            match self.state {
                State::Str => {
                    if self.escape {
                        if let Some(&b) = chunk.get(i) {
                            self.tok.push(b);
                        }
                        i += 1;
                        self.escape = false;
                    } else {
                        let rest = chunk.get(i..).unwrap_or(&[]);
                        match memchr::memchr2(b'"', b'\\', rest) {
                            None => {
                                self.tok.extend_from_slice(rest);
                                i = chunk.len();
                            }
                            Some(k) if self.tok.is_empty() && rest.get(k) == Some(&b'"') => {
                                // The rest of the string lies in this chunk: masked from the
                                // chunk, without a copy into the token buffer.
                                self.emit_part(rest.get(..k).unwrap_or(&[]), out);
                                self.close_string(out);
                                i += k + 1;
                                continue;
                            }
                            Some(k) => {
                                self.tok.extend_from_slice(rest.get(..k).unwrap_or(&[]));
                                i += k + 1;
                                if rest.get(k) == Some(&b'\\') {
                                    self.tok.push(b'\\');
                                    self.escape = true;
                                } else {
                                    self.end_string(out);
                                    continue;
                                }
                            }
                        }
                    }
                    while self.tok.len() >= PIECE {
                        let cut = self.safe_cut(PIECE).max(1);
                        self.emit_string_part(cut, out);
                    }
                }
                State::Lit => {
                    let b = chunk.get(i).copied().unwrap_or(b' ');
                    if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.') {
                        self.tok.push(b);
                        i += 1;
                        if self.tok.len() > MAX_LITERAL {
                            self.fall_back(chunk.get(i..).unwrap_or(&[]), out);
                            break;
                        }
                    } else {
                        self.end_literal(out);
                    }
                }
                State::Between => {
                    let b = chunk.get(i).copied().unwrap_or(b' ');
                    let here = base + i as u64;
                    match b {
                        b' ' | b'\t' | b'\n' | b'\r' | b':' => out.push(b),
                        b'{' | b'[' => {
                            if self.frames.len() >= MAX_DEPTH {
                                self.tok_offset = here;
                                self.fall_back(chunk.get(i..).unwrap_or(&[]), out);
                                break;
                            }
                            let masked = self.value_rule();
                            let obj = b == b'{';
                            self.frames.push(Frame {
                                obj,
                                index: 0,
                                key: Vec::new(),
                                key_is_secret: false,
                                expect_key: obj,
                                masked,
                            });
                            out.push(b);
                        }
                        b'}' | b']' if self.frames.last().is_some_and(|f| f.obj == (b == b'}')) => {
                            self.frames.pop();
                            out.push(b);
                        }
                        b',' => match self.frames.last_mut() {
                            Some(f) => {
                                if f.obj {
                                    f.expect_key = true;
                                    f.key.clear();
                                    f.key_is_secret = false;
                                } else {
                                    f.index += 1;
                                }
                                out.push(b);
                            }
                            None => {
                                self.tok_offset = here;
                                self.fall_back(chunk.get(i..).unwrap_or(&[]), out);
                                break;
                            }
                        },
                        b'"' => {
                            self.is_key = self.frames.last().is_some_and(|f| f.obj && f.expect_key);
                            self.whole = if self.is_key { None } else { self.value_rule() };
                            self.key_set = false;
                            self.token_emitted = false;
                            self.tok.clear();
                            self.tok_offset = here + 1;
                            self.state = State::Str;
                            out.push(b'"');
                        }
                        b'-' | b'0'..=b'9' | b't' | b'f' | b'n' => {
                            self.whole = self.value_rule();
                            self.tok.clear();
                            self.tok.push(b);
                            self.tok_offset = here;
                            self.state = State::Lit;
                        }
                        _ => {
                            self.tok_offset = here;
                            self.fall_back(chunk.get(i..).unwrap_or(&[]), out);
                            break;
                        }
                    }
                    i += 1;
                }
            }
        }
        self.offset += chunk.len() as u64;
    }
}

/// Widens spans so none starts or ends inside a JSON escape sequence; merges any that then
/// overlap.
fn snap_to_escapes(content: &[u8], spans: &[Span]) -> Vec<Span> {
    let mut units = Vec::new();
    let mut i = 0;
    while i < content.len() {
        let len = match content.get(i) {
            Some(b'\\') if content.get(i + 1) == Some(&b'u') => 6,
            Some(b'\\') => 2,
            _ => 1,
        };
        if len > 1 {
            units.push((i, (i + len).min(content.len())));
        }
        i += len;
    }
    let mut out: Vec<Span> = Vec::with_capacity(spans.len());
    for s in spans {
        let mut s = *s;
        for &(a, b) in &units {
            if s.start > a && s.start < b {
                s.start = a;
            }
            if s.end > a && s.end < b {
                s.end = b;
            }
        }
        match out.last_mut() {
            Some(prev) if s.start < prev.end => prev.end = prev.end.max(s.end),
            _ => out.push(s),
        }
    }
    out
}

impl StreamMasker for JsonStreamMasker {
    fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        if let Some(fb) = self.fallback.as_mut() {
            fb.push(chunk, out);
            return;
        }
        self.push_inner(chunk, out);
    }

    fn flush(&mut self, out: &mut Vec<u8>) {
        if let Some(fb) = self.fallback.as_mut() {
            fb.flush(out);
            return;
        }
        if self.state == State::Str && !self.is_key && !self.tok.is_empty() {
            let cut = self.safe_cut(self.tok.len());
            self.emit_string_part(cut, out);
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        if let Some(fb) = self.fallback.as_mut() {
            fb.finish(out);
            return;
        }
        match self.state {
            State::Str => {
                // Truncated document: mask what there is; no closing quote is invented.
                self.emit_string_part(self.tok.len(), out);
                self.state = State::Between;
            }
            State::Lit => self.end_literal(out),
            State::Between => {}
        }
    }

    fn take_findings(&mut self) -> Vec<Finding> {
        let mut f = std::mem::take(&mut self.findings);
        if let Some(fb) = self.fallback.as_mut() {
            f.extend(fb.take_findings());
        }
        f
    }
}
