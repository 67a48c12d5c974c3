//! The streaming JSON masker: token level, constant memory, bounded depth.
//!
//! Structural bytes, whitespace, numbers and strings that need no masking are copied verbatim, so
//! a document with nothing to mask comes out byte-identical. String values (and keys) get content
//! detection on their *decoded* text, as a JSON parser reads it (`\u0040`, `\/`, surrogate pairs:
//! see `escape`), so escaping a value cannot hide it; a match is replaced over the whole escape
//! sequences it came from, so the output stays valid JSON. Keys are decoded before secret-name
//! and path matching too (`"pass\u0077ord"` is `password`). A value selected by a path rule (or held under a secret-looking
//! key such as `"password"`) is masked whole: strings become a token, other scalars `null`,
//! containers have every scalar inside masked.
//!
//! Memory is bounded: strings are buffered at most 64 KiB at a time (longer strings are masked in
//! pieces cut at content-determined places), literals at most 512 bytes, nesting at most 128
//! levels. Input that is not JSON, or nests deeper, switches the rest of the stream to the text
//! masker: still masked, never passed through raw. That rest has its JSON escapes decoded before
//! the text masker sees it (so it comes out decoded, not byte-identical).

use std::sync::Arc;

use gatehouse_core::{Finding, StreamMasker};

use crate::detect::Detector;
use crate::detect::scan::{Span, Stop, is_secret_key_name};
use crate::escape::{self, EscapeDecoder};
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
    fallback: Option<Fallback>,
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

    /// Masks raw string content by detection. Content with escape sequences is decoded first
    /// (detectors see what a JSON parser reads); matches map back to whole escape sequences of
    /// the raw text, which are replaced, so the output stays valid JSON.
    fn detect_string(&mut self, content: &[u8], base: u64, out: &mut Vec<u8>) {
        if memchr::memchr(b'\\', content).is_some() {
            self.detect_escaped(content, base, out);
            return;
        }
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
                profile.apply_spans(
                    seg,
                    &r.spans,
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

    /// [`Self::detect_string`] for content holding escape sequences.
    fn detect_escaped(&mut self, content: &[u8], base: u64, out: &mut Vec<u8>) {
        let dec = escape::unescape(content);
        // Every match, in decoded coordinates.
        let mut spans: Vec<Span> = Vec::new();
        let mut pos = 0;
        loop {
            let seg = dec.bytes.get(pos..).unwrap_or(&[]);
            let r = self.profile.scanner.scan(seg, true);
            let end = match r.stop {
                Stop::Restart(e) => pos + e,
                _ => dec.bytes.len(),
            };
            spans.extend(r.spans.iter().map(|s| Span {
                start: s.start + pos,
                end: s.end + pos,
                ..*s
            }));
            if end <= pos || end >= dec.bytes.len() {
                break;
            }
            pos = end;
        }
        if spans.is_empty() {
            out.extend_from_slice(content);
            return;
        }
        // Raw ranges, widened to whole escape units; ranges that then share a unit merge.
        // (raw start, raw end, decoded start, decoded end, rule)
        let mut ranges: Vec<(usize, usize, usize, usize, u16)> = Vec::with_capacity(spans.len());
        for s in &spans {
            let (rs, re) = dec.raw_range(content.len(), s.start, s.end);
            match ranges.last_mut() {
                Some(prev) if rs < prev.1 => {
                    prev.1 = prev.1.max(re);
                    prev.3 = prev.3.max(s.end);
                }
                _ => ranges.push((rs, re, s.start, s.end, s.rule)),
            }
        }
        let mut copied = 0;
        for (rs, re, ds, de, rule) in ranges {
            out.extend_from_slice(content.get(copied..rs).unwrap_or(&[]));
            let value = dec.bytes.get(ds..de).unwrap_or(&[]);
            if let Some(rule) = self.profile.rules.get(usize::from(rule)) {
                // The decoded value: the same value hashes the same however it was escaped.
                self.profile.replace(rule, value, true, out);
                let name = rule.name.clone();
                self.finding(&name, base + rs as u64, re - rs);
            } else {
                // Cannot happen (spans name the profile's rules); never let the value through.
                out.extend(std::iter::repeat_n(b'*', value.len().max(1)));
            }
            copied = re;
        }
        out.extend_from_slice(content.get(copied..).unwrap_or(&[]));
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
            // The key as a parser reads it: `"pass\\u0077ord"` is `password`.
            let key = escape::unescape_bytes(part);
            if let Some(f) = self.frames.last_mut() {
                f.key.clear();
                f.key
                    .extend_from_slice(key.get(..key.len().min(MAX_KEY)).unwrap_or(&[]));
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
                    let value = escape::unescape_bytes(part);
                    self.profile.replace(&rule, &value, true, out);
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
        let mut fb = Fallback {
            decoder: EscapeDecoder::default(),
            text: TextStreamMasker::starting_at(
                Arc::clone(&self.profile),
                self.field.clone(),
                start,
            ),
            decoded: Vec::new(),
        };
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
            i += escape::unit_len(&self.tok, i).max(1);
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

/// The rest of a stream that stopped being JSON: JSON escapes decoded (so `\\u0040` cannot hide
/// an `@` from the detectors), then text-masked. Its output is the decoded, masked text.
struct Fallback {
    decoder: EscapeDecoder,
    text: TextStreamMasker,
    decoded: Vec<u8>,
}

impl Fallback {
    fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        self.decoded.clear();
        self.decoder.push(chunk, &mut self.decoded);
        self.text.push(&self.decoded, out);
    }

    fn flush(&mut self, out: &mut Vec<u8>) {
        // An unfinished escape unit (at most 11 bytes) stays held.
        self.text.flush(out);
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        self.decoded.clear();
        self.decoder.finish(&mut self.decoded);
        self.text.push(&self.decoded, out);
        self.text.finish(out);
    }

    fn take_findings(&mut self) -> Vec<Finding> {
        self.text.take_findings()
    }
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
