//! The one-pass scanner: find anchors, confirm each locally, keep the leftmost-longest matches.
//!
//! Two passes over the bytes, both far faster than a regex set: an aho-corasick automaton over
//! the literal anchors of the enabled detectors (it uses a SIMD prefilter), and a word-at-a-time
//! (SWAR) search for the byte anchors (digits, `@`, `=`, `:`). Every anchor is confirmed by a
//! small hand-written routine that reads at most a bounded window around it and never crosses a
//! line break (PEM blocks excepted). Candidates are then resolved leftmost first, longest first,
//! PEM blocks before anything that overlaps them.

use std::cmp::Reverse;

use aho_corasick::AhoCorasick;
use aho_corasick::packed;
use memchr::memmem;
use regex::bytes::Regex;

use super::Detector;
use super::validate;

/// A confirmed match: bytes `start..end` of the scanned text, found by rule `rule`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub start: usize,
    pub end: usize,
    pub rule: u16,
    pub kind: SpanKind,
}

/// What kind of span, for the PEM fail-closed rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpanKind {
    /// Any complete match.
    Plain,
    /// A complete PEM block.
    Pem,
    /// A PEM block whose END did not come within the cap: masked BEGIN..cap, and scanning
    /// restarts after the cap (in one-shot and streaming alike).
    PemCapped,
    /// A PEM block that runs to the end of input without END (only when the scan was told the
    /// input ends here).
    PemOpen,
}

/// Why the scan stopped where it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Everything was scanned.
    End,
    /// A capped PEM block ends at this offset: restart a fresh scan there.
    Restart(usize),
    /// A PEM block starts here and its END may still come: emit up to here, hold the rest.
    Hold(usize),
    /// The last span is a PEM block cut by the end of input.
    OpenPem,
}

/// Selected spans (sorted, non-overlapping) and where the scan stopped.
#[derive(Debug)]
pub(crate) struct ScanOutcome {
    pub spans: Vec<Span>,
    pub stop: Stop,
}

/// A compiled word list.
#[derive(Debug)]
pub(crate) struct DictMatcher {
    pub ac: AhoCorasick,
    pub rules: Vec<u16>,
    pub whole_words: bool,
}

/// A compiled operator regex.
#[derive(Debug)]
pub(crate) struct UserRegex {
    pub re: Regex,
    pub rule: u16,
    pub max_len: usize,
}

/// The literal-anchor searcher: Teddy (SIMD) when the CPU has it, else an aho-corasick automaton.
/// (With this many patterns and start bytes, `AhoCorasick` itself would pick no prefilter and
/// walk the automaton byte by byte: four times slower on prose.)
#[derive(Debug)]
enum LiteralSearcher {
    /// Teddy for long haystacks, the automaton for short ones (Teddy's own short-haystack
    /// fallback, Rabin-Karp, costs more per call on JSON-string-sized inputs).
    Teddy(packed::Searcher, AhoCorasick, Box<PairSet>),
    Automaton(AhoCorasick),
}

/// The first two bytes of every literal, as a 65,536-bit set: a short haystack without any of
/// these pairs cannot hold a literal, and skips the automaton.
#[derive(Debug)]
struct PairSet([u64; 1024]);

impl PairSet {
    fn new(pats: &[&str]) -> PairSet {
        let mut bits = [0u64; 1024];
        for p in pats {
            if let [a, b, ..] = p.as_bytes() {
                let i = usize::from(*a) << 8 | usize::from(*b);
                if let Some(w) = bits.get_mut(i >> 6) {
                    *w |= 1 << (i & 63);
                }
            }
        }
        PairSet(bits)
    }

    #[inline]
    fn contains(&self, a: u8, b: u8) -> bool {
        let i = usize::from(a) << 8 | usize::from(b);
        self.0.get(i >> 6).is_some_and(|x| x & (1 << (i & 63)) != 0)
    }

    #[inline]
    fn any_in(&self, t: &[u8]) -> bool {
        t.windows(2).any(|w| {
            self.contains(
                w.first().copied().unwrap_or(0),
                w.get(1).copied().unwrap_or(0),
            )
        })
    }
}

/// Below this many bytes the automaton beats Teddy's setup.
const SHORT_HAYSTACK: usize = 64;

impl LiteralSearcher {
    fn new(pats: &[&str]) -> Result<LiteralSearcher, String> {
        let teddy = packed::Config::new()
            .match_kind(packed::MatchKind::LeftmostFirst)
            .builder()
            .extend(pats)
            .build();
        let automaton = AhoCorasick::builder()
            .kind(Some(aho_corasick::AhoCorasickKind::DFA))
            .build(pats)
            .map_err(|e| e.to_string())?;
        Ok(match teddy {
            Some(t) => LiteralSearcher::Teddy(t, automaton, Box::new(PairSet::new(pats))),
            None => LiteralSearcher::Automaton(automaton),
        })
    }

    /// Calls `f(pattern, start)` for each non-overlapping match, leftmost first.
    #[inline]
    fn for_each(&self, t: &[u8], mut f: impl FnMut(usize, usize)) {
        match self {
            LiteralSearcher::Teddy(s, _, _) if t.len() >= SHORT_HAYSTACK => {
                for m in s.find_iter(t) {
                    f(m.pattern().as_usize(), m.start());
                }
            }
            LiteralSearcher::Teddy(_, _, pairs) if !pairs.any_in(t) => {}
            LiteralSearcher::Teddy(_, a, _) | LiteralSearcher::Automaton(a) => {
                for m in a.find_iter(t) {
                    f(m.pattern().as_usize(), m.start());
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lit {
    PemBegin,
    Jwt,
    AwsId,
    Github,
    GithubPat,
    Gitlab,
    Slack,
    SlackHook,
    Stripe,
    Google,
}

const LITERALS: &[(&str, Lit)] = &[
    ("-----BEGIN ", Lit::PemBegin),
    ("eyJ", Lit::Jwt),
    ("AKIA", Lit::AwsId),
    ("ASIA", Lit::AwsId),
    ("ABIA", Lit::AwsId),
    ("ACCA", Lit::AwsId),
    ("AGPA", Lit::AwsId),
    ("AIDA", Lit::AwsId),
    ("AIPA", Lit::AwsId),
    ("ANPA", Lit::AwsId),
    ("ANVA", Lit::AwsId),
    ("AROA", Lit::AwsId),
    ("APKA", Lit::AwsId),
    ("ghp_", Lit::Github),
    ("gho_", Lit::Github),
    ("ghu_", Lit::Github),
    ("ghs_", Lit::Github),
    ("ghr_", Lit::Github),
    ("github_pat_", Lit::GithubPat),
    ("glpat-", Lit::Gitlab),
    ("gldt-", Lit::Gitlab),
    ("glrt-", Lit::Gitlab),
    ("glptt-", Lit::Gitlab),
    ("xoxb-", Lit::Slack),
    ("xoxp-", Lit::Slack),
    ("xoxa-", Lit::Slack),
    ("xoxr-", Lit::Slack),
    ("xoxs-", Lit::Slack),
    ("xoxe-", Lit::Slack),
    ("xapp-", Lit::Slack),
    ("hooks.slack.com/services/", Lit::SlackHook),
    ("sk_live_", Lit::Stripe),
    ("sk_test_", Lit::Stripe),
    ("rk_live_", Lit::Stripe),
    ("rk_test_", Lit::Stripe),
    ("AIza", Lit::Google),
];

impl Lit {
    fn detector(self) -> Detector {
        match self {
            Lit::PemBegin => Detector::PrivateKey,
            Lit::Jwt => Detector::Jwt,
            Lit::AwsId => Detector::AwsAccessKeyId,
            Lit::Github | Lit::GithubPat => Detector::GithubToken,
            Lit::Gitlab => Detector::GitlabToken,
            Lit::Slack | Lit::SlackHook => Detector::SlackToken,
            Lit::Stripe => Detector::StripeKey,
            Lit::Google => Detector::GoogleApiKey,
        }
    }
}

const C_DIGIT: u8 = 1;
const C_AT: u8 = 2;
const C_ASSIGN: u8 = 3;

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// High bit set in some byte iff `x` has a zero byte (exact as a yes/no answer).
#[cfg(test)]
fn zero_bytes(x: u64) -> u64 {
    x.wrapping_sub(LO) & !x & HI
}

#[cfg(test)]
fn eq_bytes(x: u64, b: u8) -> u64 {
    zero_bytes(x ^ (LO * u64::from(b)))
}

/// High bit set in some byte iff `x` has a byte `m < b < n` (exact; bit-hacks `hasbetween`,
/// valid for `m <= 127`, `n <= 128`).
#[inline(always)]
fn between_bytes(x: u64, m: u64, n: u64) -> u64 {
    let low7 = x & (LO * 127);
    (LO * (127 + n)).wrapping_sub(low7) & !x & low7.wrapping_add(LO * (127 - m)) & HI
}

/// High bit set in some byte iff `x` has an ASCII digit.
#[cfg(test)]
fn digit_bytes(x: u64) -> u64 {
    between_bytes(x, 0x2f, 0x3a)
}

/// High bit set in some byte iff `x` has a byte in `0x30..=0x40`: digits, `:`, `;`, `<`, `=`,
/// `>`, `?`, `@`. One test covers every byte anchor; the class table drops the extras.
#[inline(always)]
fn anchor_range_bytes(x: u64) -> u64 {
    between_bytes(x, 0x2f, 0x41)
}

#[inline(always)]
fn at(t: &[u8], i: usize) -> u8 {
    t.get(i).copied().unwrap_or(0)
}

#[inline(always)]
fn before(t: &[u8], i: usize) -> u8 {
    if i == 0 { 0 } else { at(t, i - 1) }
}

#[inline(always)]
fn is_digit(b: u8) -> bool {
    b.is_ascii_digit()
}

#[inline(always)]
fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// A byte that blocks a match from starting right after it. `]` counts: it ends every redact
/// token, and treating it like the word byte it replaced keeps masking idempotent.
#[inline(always)]
fn left_blocked(b: u8) -> bool {
    is_word(b) || b == b']'
}

/// A byte that blocks a match from ending right before it (`[` starts every token).
#[inline(always)]
fn right_blocked(b: u8) -> bool {
    is_word(b) || b == b'['
}

#[inline(always)]
fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// End of the run of bytes satisfying `pred` from `from`, stopping at `limit`.
#[inline(always)]
fn run(t: &[u8], from: usize, limit: usize, pred: impl Fn(u8) -> bool) -> usize {
    let limit = limit.min(t.len());
    let mut i = from;
    while i < limit && pred(at(t, i)) {
        i += 1;
    }
    i
}

fn starts_with_at(t: &[u8], i: usize, lit: &[u8]) -> bool {
    t.get(i..).is_some_and(|s| s.starts_with(lit))
}

/// The scanner for one profile: which detectors are on, their limits, and the compiled anchors.
#[derive(Debug)]
pub(crate) struct Scanner {
    on: [bool; Detector::COUNT],
    max: [usize; Detector::COUNT],
    literals: Option<(LiteralSearcher, Vec<Lit>)>,
    class: [u8; 256],
    any_class: bool,
    dicts: Vec<DictMatcher>,
    regexes: Vec<UserRegex>,
}

const MAX_GROUPS: usize = 16;

impl Scanner {
    pub(crate) fn new(
        on: [bool; Detector::COUNT],
        max: [usize; Detector::COUNT],
        dicts: Vec<DictMatcher>,
        regexes: Vec<UserRegex>,
    ) -> Result<Scanner, String> {
        let is_on = |d: Detector| on[d.index()];
        let mut pats = Vec::new();
        let mut kinds = Vec::new();
        for &(p, k) in LITERALS {
            if is_on(k.detector()) {
                pats.push(p);
                kinds.push(k);
            }
        }
        let literals = if pats.is_empty() {
            None
        } else {
            Some((LiteralSearcher::new(&pats)?, kinds))
        };
        let digits = is_on(Detector::Iban)
            || is_on(Detector::PaymentCard)
            || is_on(Detector::UsSsn)
            || is_on(Detector::Phone);
        let at_sign = is_on(Detector::Email) || is_on(Detector::UrlPassword);
        let assign = is_on(Detector::SecretAssignment) || is_on(Detector::AwsSecretAccessKey);
        let mut class = [0u8; 256];
        if digits {
            for b in b'0'..=b'9' {
                class[usize::from(b)] = C_DIGIT;
            }
        }
        if at_sign {
            class[usize::from(b'@')] = C_AT;
        }
        if assign {
            class[usize::from(b'=')] = C_ASSIGN;
            class[usize::from(b':')] = C_ASSIGN;
        }
        Ok(Scanner {
            on,
            max,
            literals,
            class,
            any_class: digits || at_sign || assign,
            dicts,
            regexes,
        })
    }

    /// Longest match any line-bound rule can produce (the stream's forced-cut hold-back).
    pub(crate) fn max_line_match(&self) -> usize {
        let mut m = 64;
        for d in Detector::ALL {
            if d != Detector::PrivateKey && self.on[d.index()] {
                m = m.max(self.max[d.index()]);
            }
        }
        for r in &self.regexes {
            m = m.max(r.max_len);
        }
        m
    }

    /// The PEM cap (0 when the detector is off).
    pub(crate) fn pem_cap(&self) -> usize {
        if self.on[Detector::PrivateKey.index()] {
            self.max[Detector::PrivateKey.index()]
        } else {
            0
        }
    }

    /// Whether an operator's word list or regex is compiled in (they may match any text,
    /// keywords included).
    pub(crate) fn has_word_rules(&self) -> bool {
        !self.dicts.is_empty() || !self.regexes.is_empty()
    }

    pub(crate) fn is_on(&self, d: Detector) -> bool {
        self.on[d.index()]
    }

    /// Scans `t`. `at_eof` says whether more bytes may follow (only PEM blocks care).
    pub(crate) fn scan(&self, t: &[u8], at_eof: bool) -> ScanOutcome {
        if self.short_and_clean(t) {
            return ScanOutcome {
                spans: Vec::new(),
                stop: Stop::End,
            };
        }
        self.scan_full(t, at_eof)
    }

    /// [`Scanner::scan`] without the short-haystack shortcut.
    fn scan_full(&self, t: &[u8], at_eof: bool) -> ScanOutcome {
        let mut cands: Vec<Span> = Vec::new();
        let mut hold: Option<usize> = None;
        if let Some((searcher, kinds)) = &self.literals {
            searcher.for_each(t, |pattern, p| {
                let Some(&lit) = kinds.get(pattern) else {
                    return;
                };
                if lit == Lit::PemBegin {
                    match self.pem(t, p, at_eof) {
                        PemHit::None => {}
                        PemHit::Span(s) => cands.push(s),
                        PemHit::Incomplete => {
                            hold = Some(hold.map_or(p, |h: usize| h.min(p)));
                        }
                    }
                } else if let Some((s, e)) = self.literal(t, p, lit) {
                    cands.push(span(s, e, lit.detector()));
                }
            });
        }
        if self.any_class {
            self.class_pass(t, &mut cands);
        }
        for d in &self.dicts {
            for m in d.ac.find_iter(t) {
                if d.whole_words
                    && (left_blocked(before(t, m.start())) || right_blocked(at(t, m.end())))
                {
                    continue;
                }
                if let Some(&rule) = d.rules.get(m.pattern().as_usize()) {
                    cands.push(Span {
                        start: m.start(),
                        end: m.end(),
                        rule,
                        kind: SpanKind::Plain,
                    });
                }
            }
        }
        if !self.regexes.is_empty() {
            let mut line_start = 0;
            let ends = memchr::memchr_iter(b'\n', t).chain(std::iter::once(t.len()));
            for line_end in ends {
                let line = t.get(line_start..line_end).unwrap_or(&[]);
                for r in &self.regexes {
                    for m in r.re.find_iter(line) {
                        if !m.is_empty() && m.len() <= r.max_len {
                            cands.push(Span {
                                start: line_start + m.start(),
                                end: line_start + m.end(),
                                rule: r.rule,
                                kind: SpanKind::Plain,
                            });
                        }
                    }
                }
                line_start = line_end + 1;
            }
        }
        select(cands, hold)
    }

    /// One pass over a short haystack (a JSON string, a column value): no anchor byte of the
    /// class pass and no first byte pair of a literal means no built-in detector can match,
    /// so the full scan (two passes plus its set-up) is skipped. Word lists and regexes may
    /// match anything: with them, never clean.
    #[inline]
    fn short_and_clean(&self, t: &[u8]) -> bool {
        if t.len() >= SHORT_HAYSTACK || self.has_word_rules() {
            return false;
        }
        let pairs = match &self.literals {
            Some((LiteralSearcher::Teddy(_, _, pairs), _)) => Some(pairs),
            // No pair set to rule literals out: let the full scan decide.
            Some((LiteralSearcher::Automaton(_), _)) => return false,
            None => None,
        };
        let mut prev: Option<u8> = None;
        for &b in t {
            if self.class[usize::from(b)] != 0 {
                return false;
            }
            if let (Some(p), Some(a)) = (pairs, prev)
                && p.contains(a, b)
            {
                return false;
            }
            prev = Some(b);
        }
        true
    }

    fn class_pass(&self, t: &[u8], out: &mut Vec<Span>) {
        let mut i = 0;
        while let Some(p) = self.next_anchor(t, i) {
            i = match self.class[usize::from(at(t, p))] {
                C_DIGIT => self.numeric(t, p, out).max(p + 1),
                C_AT => {
                    self.at_sign(t, p, out);
                    p + 1
                }
                C_ASSIGN => {
                    self.assignment(t, p, out);
                    p + 1
                }
                _ => p + 1,
            };
        }
    }

    /// Next byte anchor at or after `from`: 32 bytes per step (four words, one branch), then the
    /// class table on the block that hit.
    fn next_anchor(&self, t: &[u8], from: usize) -> Option<usize> {
        let rest = t.get(from..)?;
        let mut base = 0;
        let word = |c: &[u8]| <[u8; 8]>::try_from(c).map_or(0, u64::from_le_bytes);
        for c in rest.chunks_exact(32) {
            let hit = anchor_range_bytes(word(c.get(0..8).unwrap_or(&[])))
                | anchor_range_bytes(word(c.get(8..16).unwrap_or(&[])))
                | anchor_range_bytes(word(c.get(16..24).unwrap_or(&[])))
                | anchor_range_bytes(word(c.get(24..32).unwrap_or(&[])));
            if hit != 0
                && let Some(k) = c.iter().position(|&b| self.class[usize::from(b)] != 0)
            {
                return Some(from + base + k);
            }
            base += 32;
        }
        rest.get(base..)?
            .iter()
            .position(|&b| self.class[usize::from(b)] != 0)
            .map(|k| from + base + k)
    }

    fn literal(&self, t: &[u8], p: usize, lit: Lit) -> Option<(usize, usize)> {
        let max = self.max[lit.detector().index()];
        let alnum = |b: u8| b.is_ascii_alphanumeric();
        let upper_digit = |b: u8| b.is_ascii_uppercase() || b.is_ascii_digit();
        match lit {
            Lit::PemBegin => None,
            Lit::Jwt => {
                if is_b64url(before(t, p)) || before(t, p) == b']' {
                    return None;
                }
                let lim = p.saturating_add(max);
                let h = run(t, p, lim, is_b64url);
                if h - p < 10 || at(t, h) != b'.' {
                    return None;
                }
                let pl = run(t, h + 1, lim, is_b64url);
                if pl - (h + 1) < 10 || at(t, pl) != b'.' {
                    return None;
                }
                Some((p, run(t, pl + 1, lim, is_b64url)))
            }
            Lit::AwsId => token(t, p, 4, upper_digit, 16, max, true),
            Lit::Github => token(t, p, 4, alnum, 30, max, false),
            Lit::GithubPat => token(t, p, 11, is_word, 22, max, false),
            Lit::Gitlab => {
                let plen = if starts_with_at(t, p, b"glptt-") {
                    6
                } else {
                    5
                };
                let plen = if starts_with_at(t, p, b"glpat-") {
                    6
                } else {
                    plen
                };
                token(t, p, plen, is_b64url, 20, max, false)
            }
            Lit::Slack => token(t, p, 5, |b| alnum(b) || b == b'-', 10, max, false),
            Lit::SlackHook => {
                let plen = 25;
                let e = run(t, p + plen, p.saturating_add(max), |b| {
                    alnum(b) || b == b'/'
                });
                (e - p - plen >= 20).then_some((p, e))
            }
            Lit::Stripe => token(t, p, 8, alnum, 16, max, false),
            Lit::Google => token(t, p, 4, is_b64url, 35, max, true)
                .filter(|&(s, e)| e - s == 39 && !is_b64url(at(t, e))),
        }
    }

    fn pem(&self, t: &[u8], p: usize, at_eof: bool) -> PemHit {
        let rule = Detector::PrivateKey;
        let hdr = p + 11;
        let label_end = run(t, hdr, hdr + 48, |b| {
            b.is_ascii_uppercase() || b.is_ascii_digit() || b == b' '
        });
        if !starts_with_at(t, label_end, b"-----") {
            return PemHit::None;
        }
        let label = t.get(hdr..label_end).unwrap_or(&[]);
        if memmem::find(label, b"PRIVATE KEY").is_none() {
            return PemHit::None;
        }
        let body = label_end + 5;
        let cap_end = p.saturating_add(self.max[rule.index()].max(body - p));
        let limit = t.len().min(cap_end);
        let capped = || {
            PemHit::Span(Span {
                start: p,
                end: cap_end,
                rule: rule.index() as u16,
                kind: SpanKind::PemCapped,
            })
        };
        let window = t.get(body..limit).unwrap_or(&[]);
        if let Some(rel) = memmem::find(window, b"-----END ") {
            let after = body + rel + 9;
            let line_lim = t.len().min(after + 64);
            let mut i = after;
            let mut end = None;
            while i < line_lim {
                if at(t, i) == b'\n' {
                    end = Some(i);
                    break;
                }
                if starts_with_at(t, i, b"-----") {
                    end = Some(i + 5);
                    break;
                }
                i += 1;
            }
            let end = match end {
                Some(e) => e,
                None if i < t.len() => i,
                None if at_eof => t.len(),
                None if t.len() >= cap_end => return capped(),
                None => return PemHit::Incomplete,
            };
            if end > cap_end {
                return capped();
            }
            return PemHit::Span(Span {
                start: p,
                end,
                rule: rule.index() as u16,
                kind: SpanKind::Pem,
            });
        }
        if t.len() >= cap_end {
            capped()
        } else if at_eof {
            PemHit::Span(Span {
                start: p,
                end: t.len(),
                rule: rule.index() as u16,
                kind: SpanKind::PemOpen,
            })
        } else {
            PemHit::Incomplete
        }
    }

    /// Digit-run anchor at `p`: IBAN (two capitals before), then cards, SSNs and phones over the
    /// run's digit groups. Returns where the class pass resumes.
    fn numeric(&self, t: &[u8], p: usize, out: &mut Vec<Span>) -> usize {
        if self.on[Detector::Iban.index()] && p >= 2 {
            let (c0, c1) = (at(t, p - 2), at(t, p - 1));
            if c0.is_ascii_uppercase()
                && c1.is_ascii_uppercase()
                && !left_blocked(before(t, p - 2))
                && let Some(e) = iban(t, p - 2)
            {
                out.push(span(p - 2, e, Detector::Iban));
            }
        }
        let (card, ssn, phone) = (
            self.on[Detector::PaymentCard.index()],
            self.on[Detector::UsSsn.index()],
            self.on[Detector::Phone.index()],
        );
        if !(card || ssn || phone) {
            return run(t, p, t.len(), is_digit);
        }
        // Fast path: most digit runs (years, counts, versions, times) hold fewer digits than the
        // shortest numeric detector needs (7), grouped or not.
        let mut i = p;
        let mut digits = 0;
        loop {
            let b = at(t, i);
            if is_digit(b) {
                digits += 1;
                i += 1;
            } else if matches!(b, b' ' | b'-' | b'.' | b')') && is_digit(at(t, i + 1)) {
                i += 1;
            } else if b == b')' && at(t, i + 1) == b' ' && is_digit(at(t, i + 2)) {
                i += 2;
            } else {
                break;
            }
            if digits >= 7 {
                break;
            }
        }
        if digits < 7 {
            return i;
        }
        let prefix = before(t, p);
        let plus = prefix == b'+';
        let paren = prefix == b'(';
        let mut groups = [(0usize, 0usize); MAX_GROUPS];
        let mut seps = [0u8; MAX_GROUPS];
        let mut n = 0;
        let mut i = p;
        let mut overflow = false;
        loop {
            let s = i;
            i = run(t, i, t.len(), is_digit);
            if let Some(g) = groups.get_mut(n) {
                *g = (s, i);
            }
            n += 1;
            let c = at(t, i);
            let sep_len = if matches!(c, b' ' | b'-' | b'.') && is_digit(at(t, i + 1)) {
                1
            } else if c == b')' && paren && n == 1 {
                if is_digit(at(t, i + 1)) {
                    1
                } else if at(t, i + 1) == b' ' && is_digit(at(t, i + 2)) {
                    2
                } else {
                    0
                }
            } else {
                0
            };
            if sep_len == 0 {
                break;
            }
            if n == MAX_GROUPS {
                overflow = true;
                break;
            }
            if let Some(sp) = seps.get_mut(n - 1) {
                *sp = c;
            }
            i += sep_len;
        }
        let groups = groups.get(..n).unwrap_or(&[]);
        let mut gi = 0;
        while gi < n {
            let left_ok = if gi == 0 {
                let s = if plus || paren { p - 1 } else { p };
                let b = before(t, s);
                !left_blocked(b)
                    && b != b'.'
                    && !(b == b'-' && s >= 1 && matches!(before(t, s - 1), b'0'..=b'9' | b']'))
            } else {
                seps.get(gi - 1) == Some(&b' ')
            };
            let mut next = gi + 1;
            if left_ok {
                for gj in (gi..n).rev() {
                    let right_ok = if gj == n - 1 {
                        let e = groups.get(gj).map_or(0, |g| g.1);
                        let b = at(t, e);
                        !overflow
                            && !right_blocked(b)
                            && !((b == b'.' || b == b'-')
                                && matches!(at(t, e + 1), b'0'..=b'9' | b'['))
                    } else {
                        seps.get(gj) == Some(&b' ')
                    };
                    if !right_ok {
                        continue;
                    }
                    let (Some(gs), Some(ss)) = (groups.get(gi..=gj), seps.get(gi..gj)) else {
                        continue;
                    };
                    let pre = gi == 0;
                    if let Some((d, s, e)) = self.classify(t, gs, ss, pre && plus, pre && paren) {
                        out.push(span(s, e, d));
                        next = gj + 1;
                        break;
                    }
                }
            }
            gi = next;
        }
        if overflow && n > 6 {
            groups.get(n - 6).map_or(i, |g| g.0)
        } else {
            i
        }
    }

    fn classify(
        &self,
        t: &[u8],
        groups: &[(usize, usize)],
        seps: &[u8],
        plus: bool,
        paren: bool,
    ) -> Option<(Detector, usize, usize)> {
        let (first, last) = (groups.first()?, groups.last()?);
        let start = if plus || paren { first.0 - 1 } else { first.0 };
        let end = last.1;
        let len = |k: usize| groups.get(k).map_or(0, |g| g.1 - g.0);
        let digits: usize = groups.iter().map(|g| g.1 - g.0).sum();
        let d0 = at(t, first.0);
        let phone = self.on[Detector::Phone.index()];
        let shape = |want: &[usize]| {
            groups.len() == want.len() && want.iter().enumerate().all(|(k, &w)| len(k) == w)
        };
        let nanp = |g: usize| {
            let a = groups.get(g).map_or(0, |x| at(t, x.0));
            let x = groups.get(g + 1).map_or(0, |x| at(t, x.0));
            (b'2'..=b'9').contains(&a) && (b'2'..=b'9').contains(&x)
        };
        if plus {
            let ok = phone
                && (8..=15).contains(&digits)
                && groups.len() <= 6
                && d0 != b'0'
                && seps.iter().all(|&s| s != b')');
            return ok.then_some((Detector::Phone, start, end));
        }
        if paren {
            let ok = phone
                && shape(&[3, 3, 4])
                && seps.first() == Some(&b')')
                && matches!(seps.get(1), Some(b'-' | b' ' | b'.'))
                && nanp(0);
            return ok.then_some((Detector::Phone, start, end));
        }
        if self.on[Detector::UsSsn.index()]
            && shape(&[3, 2, 4])
            && seps.first() == seps.get(1)
            && matches!(seps.first(), Some(b'-' | b' '))
        {
            let g = |k: usize| groups.get(k).and_then(|x| t.get(x.0..x.1)).unwrap_or(&[]);
            if validate::ssn_valid(g(0), g(1), g(2)) {
                return Some((Detector::UsSsn, start, end));
            }
        }
        let uniform = seps.windows(2).all(|w| w.first() == w.get(1));
        if self.on[Detector::PaymentCard.index()]
            && (13..=19).contains(&digits)
            && (b'2'..=b'6').contains(&d0)
        {
            // Printed layouts: 4-4-4-4(-3), 4-6-5, 4-6-4: lead groups of 4-6 digits, at most five
            // groups (so a card always fits the six-group window of long digit runs).
            let last = groups.len() - 1;
            let layout = groups.len() == 1
                || (len(0) == 4
                    && groups.len() <= 5
                    && uniform
                    && matches!(seps.first(), Some(b' ' | b'-'))
                    && (0..last).all(|k| (4..=6).contains(&len(k)))
                    && (2..=6).contains(&len(last)));
            if layout {
                let ds = groups
                    .iter()
                    .flat_map(|g| t.get(g.0..g.1).unwrap_or(&[]).iter().copied());
                if validate::luhn(ds) {
                    return Some((Detector::PaymentCard, start, end));
                }
            }
        }
        if phone && uniform && seps.iter().all(|&s| matches!(s, b' ' | b'-' | b'.')) {
            if shape(&[3, 3, 4]) && nanp(0) {
                return Some((Detector::Phone, start, end));
            }
            if shape(&[1, 3, 3, 4]) && d0 == b'1' && nanp(1) {
                return Some((Detector::Phone, start, end));
            }
            if d0 == b'0'
                && at(t, first.0 + 1) != b'0'
                && (10..=11).contains(&digits)
                && groups.len() >= 2
                && (0..groups.len()).all(|k| (2..=5).contains(&len(k)))
            {
                return Some((Detector::Phone, start, end));
            }
        }
        None
    }

    /// `@` anchor: the password of a URL's user-info, else an e-mail address.
    fn at_sign(&self, t: &[u8], p: usize, out: &mut Vec<Span>) {
        if self.on[Detector::UrlPassword.index()]
            && let Some(s) = url_password(t, p, self.max[Detector::UrlPassword.index()])
        {
            out.push(span(s, p, Detector::UrlPassword));
            return;
        }
        if !self.on[Detector::Email.index()] {
            return;
        }
        let local = |b: u8| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-' | b'\'')
        };
        let mut s = p;
        while s > 0 && p - s < 64 && local(before(t, s)) {
            s -= 1;
        }
        if (s > 0 && local(before(t, s))) || before(t, s) == b']' {
            return;
        }
        while s < p && matches!(at(t, s), b'.' | b'\'' | b'-' | b'+') {
            s += 1;
        }
        if s == p || before(t, p) == b'.' {
            return;
        }
        let max = self.max[Detector::Email.index()];
        let dom = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'.';
        let mut e = run(t, p + 1, (p + 1).saturating_add(255), dom);
        if at(t, e) == b'[' {
            return;
        }
        while e > p + 1 && matches!(at(t, e - 1), b'.' | b'-') {
            e -= 1;
        }
        let domain = t.get(p + 1..e).unwrap_or(&[]);
        let mut labels = 0;
        let mut tld: &[u8] = &[];
        for label in domain.split(|&b| b == b'.') {
            if label.is_empty() || label.first() == Some(&b'-') || label.last() == Some(&b'-') {
                return;
            }
            labels += 1;
            tld = label;
        }
        if labels < 2 || tld.len() < 2 || !tld.iter().all(u8::is_ascii_alphabetic) {
            return;
        }
        if e - s <= max {
            out.push(span(s, e, Detector::Email));
        }
    }

    /// `=` / `:` anchor: a value assigned to a secret-looking name.
    fn assignment(&self, t: &[u8], p: usize, out: &mut Vec<Span>) {
        let op = at(t, p);
        if op == b':' && at(t, p + 1) == b'/' && at(t, p + 2) == b'/' {
            return;
        }
        let mut j = p;
        let mut spaces = 0;
        while spaces < 8 && matches!(before(t, j), b' ' | b'\t') {
            j -= 1;
            spaces += 1;
        }
        if matches!(before(t, j), b'"' | b'\'') {
            j -= 1;
        }
        let Some(kind) = secret_key_kind_before(t, j) else {
            return;
        };
        let mut v = p + 1;
        if (op == b':' && at(t, v) == b'=') || (op == b'=' && at(t, v) == b'>') {
            v += 1;
        }
        let mut k = 0;
        while k < 8 && matches!(at(t, v), b' ' | b'\t') {
            v += 1;
            k += 1;
        }
        if kind == KeyKind::Authorization {
            for scheme in [&b"bearer "[..], b"basic ", b"token ", b"digest "] {
                let w = t.get(v..v + scheme.len()).unwrap_or(&[]);
                if w.eq_ignore_ascii_case(scheme) {
                    v += scheme.len();
                    break;
                }
            }
        }
        let max = self.max[Detector::SecretAssignment.index()];
        let q = at(t, v);
        let mut value = None;
        if q == b'"' || q == b'\'' {
            let lim = t.len().min((v + 1).saturating_add(max));
            let mut i = v + 1;
            while i < lim {
                let b = at(t, i);
                if b == b'\n' {
                    break;
                }
                if b == b'\\' {
                    i += 2;
                    continue;
                }
                if b == q {
                    value = Some((v + 1, i));
                    break;
                }
                i += 1;
            }
            if value.is_none() {
                v += 1;
            }
        }
        let (vs, ve) = match value {
            Some(x) => x,
            None => {
                let e = run(t, v, v.saturating_add(max), |b| {
                    !(b.is_ascii_whitespace()
                        || matches!(
                            b,
                            b',' | b';' | b'&' | b'"' | b'\'' | b'<' | b'>' | b'|' | b'`'
                        ))
                });
                (v, e)
            }
        };
        let val = t.get(vs..ve).unwrap_or(&[]);
        if !plausible_secret_value(val) {
            return;
        }
        let aws = kind == KeyKind::AwsSecret
            && val.len() == 40
            && val
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'+' | b'='));
        if aws && self.on[Detector::AwsSecretAccessKey.index()] {
            out.push(span(vs, ve, Detector::AwsSecretAccessKey));
        } else if self.on[Detector::SecretAssignment.index()] {
            out.push(span(vs, ve, Detector::SecretAssignment));
        }
    }
}

enum PemHit {
    None,
    Span(Span),
    Incomplete,
}

fn span(start: usize, end: usize, d: Detector) -> Span {
    Span {
        start,
        end,
        rule: d.index() as u16,
        kind: SpanKind::Plain,
    }
}

/// A prefixed token: `plen` prefix bytes, then at least `min_body` bytes of `pred` (exactly
/// `min_body` when `exact`), no word byte on the left.
fn token(
    t: &[u8],
    p: usize,
    plen: usize,
    pred: impl Fn(u8) -> bool,
    min_body: usize,
    max: usize,
    exact: bool,
) -> Option<(usize, usize)> {
    if left_blocked(before(t, p)) {
        return None;
    }
    let lim = if exact {
        p + plen + min_body + 1
    } else {
        p.saturating_add(max)
    };
    let e = run(t, p + plen, lim, pred);
    let body = e - (p + plen);
    if body < min_body || (exact && (body != min_body || right_blocked(at(t, e)))) {
        return None;
    }
    Some((p, e))
}

/// IBAN starting at `s` (two capitals), compact or grouped by four with single spaces.
fn iban(t: &[u8], s: usize) -> Option<usize> {
    let country = [at(t, s), at(t, s + 1)];
    let want = validate::iban_length(country)?;
    let mut compact = [0u8; 34];
    let mut n = 0;
    let mut i = s;
    while n < want {
        let b = at(t, i);
        if b.is_ascii_uppercase() || b.is_ascii_digit() {
            if (2..4).contains(&n) && !b.is_ascii_digit() {
                return None;
            }
            *compact.get_mut(n)? = b;
            n += 1;
            i += 1;
        } else if b == b' ' && n % 4 == 0 && n > 0 && at(t, i + 1).is_ascii_alphanumeric() {
            i += 1;
        } else {
            return None;
        }
    }
    if right_blocked(at(t, i)) {
        return None;
    }
    validate::iban_mod97(compact.get(..n)?).then_some(i)
}

/// Start of the password in `scheme://user:PASSWORD@` ending at the `@` at `p`.
fn url_password(t: &[u8], p: usize, max: usize) -> Option<usize> {
    let pw = |b: u8| {
        b.is_ascii_graphic()
            && !matches!(b, b'/' | b'@' | b':' | b'"' | b'\'' | b'<' | b'>' | b'\\')
    };
    let mut i = p;
    while i > 0 && p - i < max && pw(before(t, i)) {
        i -= 1;
    }
    // An already-masked password (`[secret]`) is left as it is: masking stays idempotent.
    if i == p || before(t, i) != b':' || at(t, i) == b'[' {
        return None;
    }
    let colon = i - 1;
    let user = |b: u8| {
        b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~' | b'%' | b'+' | b'!' | b'$')
    };
    let mut u = colon;
    while u > 0 && colon - u < 256 && user(before(t, u)) {
        u -= 1;
    }
    if u < 4 || t.get(u - 3..u) != Some(&b"://"[..]) || !at(t, u - 4).is_ascii_alphabetic() {
        return None;
    }
    Some(i)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Generic,
    AwsSecret,
    Authorization,
}

const SECRET_KEY_SUFFIXES: &[&[u8]] = &[
    b"password",
    b"passwd",
    b"pwd",
    b"passphrase",
    b"secret",
    b"token",
    b"apikey",
    b"accesskey",
    b"secretkey",
    b"privatekey",
    b"authorization",
    b"credential",
    b"credentials",
];

/// Whether the identifier ending at `key_end` names a secret (`db_password`, `x-api-key`,
/// `clientSecret`, `AWS_SECRET_ACCESS_KEY`, `Authorization`).
fn secret_key_kind_before(t: &[u8], key_end: usize) -> Option<KeyKind> {
    // Cheap filter on the last three characters before normalising the whole name: the tails
    // of every suffix in SECRET_KEY_SUFFIXES.
    if key_end < 3 {
        return None;
    }
    let tail = [
        at(t, key_end - 3).to_ascii_lowercase(),
        at(t, key_end - 2).to_ascii_lowercase(),
        at(t, key_end - 1).to_ascii_lowercase(),
    ];
    if !matches!(
        &tail,
        b"ord" | b"swd" | b"pwd" | b"ase" | b"ret" | b"ken" | b"key" | b"ion" | b"ial" | b"als"
    ) {
        return None;
    }
    let mut buf = [0u8; 32];
    let mut n = 0;
    let mut i = key_end;
    while i > 0 && key_end - i < 64 {
        let c = before(t, i);
        if c.is_ascii_alphanumeric() {
            if n < 32 {
                if let Some(slot) = buf.get_mut(31 - n) {
                    *slot = c.to_ascii_lowercase();
                }
                n += 1;
            }
        } else if !matches!(c, b'_' | b'-' | b'.') {
            break;
        }
        i -= 1;
    }
    secret_key_kind(buf.get(32 - n.min(32)..).unwrap_or(&[]))
}

/// Classifies a normalised (lower-case, no `_` `-` `.`) key name.
pub(crate) fn secret_key_kind(key: &[u8]) -> Option<KeyKind> {
    if key.is_empty() || key == b"pwd" || key == b"oldpwd" {
        return None;
    }
    if !SECRET_KEY_SUFFIXES.iter().any(|s| key.ends_with(s)) {
        return None;
    }
    if key.ends_with(b"secretaccesskey") || memmem::find(key, b"awssecret").is_some() {
        Some(KeyKind::AwsSecret)
    } else if key.ends_with(b"authorization") {
        Some(KeyKind::Authorization)
    } else {
        Some(KeyKind::Generic)
    }
}

/// Whether a raw key (a column name, a JSON key) names a secret.
pub(crate) fn is_secret_key_name(raw: &[u8]) -> bool {
    let mut buf = [0u8; 32];
    let mut n = 0;
    for &c in raw.iter().rev() {
        if c.is_ascii_alphanumeric() {
            if n == 32 {
                break;
            }
            if let Some(slot) = buf.get_mut(31 - n) {
                *slot = c.to_ascii_lowercase();
            }
            n += 1;
        } else if !matches!(c, b'_' | b'-' | b'.') {
            break;
        }
    }
    secret_key_kind(buf.get(32 - n..).unwrap_or(&[])).is_some()
}

/// Values that are not secrets: empty, booleans and nulls, structures, already-masked tokens.
fn plausible_secret_value(v: &[u8]) -> bool {
    if v.is_empty() || v.iter().all(|&b| b == b'*') {
        return false;
    }
    if matches!(v.first(), Some(b'[' | b'{')) {
        return false;
    }
    const NOT_SECRETS: &[&[u8]] = &[
        b"true",
        b"false",
        b"null",
        b"none",
        b"nil",
        b"undefined",
        b"yes",
        b"no",
    ];
    !NOT_SECRETS.iter().any(|n| v.eq_ignore_ascii_case(n))
}

/// Leftmost-first, longest-first selection (later overlapping matches keep only the part that
/// sticks out); PEM blocks win over anything that overlaps them; a
/// held PEM start cuts everything after it.
fn select(mut c: Vec<Span>, hold: Option<usize>) -> ScanOutcome {
    if c.is_empty() {
        let stop = hold.map_or(Stop::End, Stop::Hold);
        return ScanOutcome { spans: c, stop };
    }
    let has_pem = c.iter().any(|s| s.kind != SpanKind::Plain);
    if has_pem || hold.is_some() {
        let pems: Vec<(usize, usize)> = c
            .iter()
            .filter(|s| s.kind != SpanKind::Plain)
            .map(|s| (s.start, s.end))
            .collect();
        // A match running into a PEM block (or the held start of one) is cut where the block
        // starts, not dropped: the bytes before the block are masked either way, and a second
        // pass over the output finds nothing new.
        let cut_at = |s: &Span| -> Option<usize> {
            let mut end = s.end;
            if let Some(h) = hold {
                if s.start >= h {
                    return None;
                }
                end = end.min(h);
            }
            if s.kind == SpanKind::Plain {
                for &(a, b) in &pems {
                    if s.start >= a && s.start < b {
                        return None;
                    }
                    if s.start < a && a < end {
                        end = a;
                    }
                }
            }
            Some(end)
        };
        c.retain_mut(|s| match cut_at(s) {
            Some(end) if end > s.start => {
                s.end = end;
                true
            }
            _ => false,
        });
    }
    c.sort_unstable_by_key(|s| (s.start, Reverse(s.end), s.rule));
    let mut last_end = 0;
    let mut kept = 0;
    let mut stop = hold.map_or(Stop::End, Stop::Hold);
    for k in 0..c.len() {
        let Some(&(mut s)) = c.get(k) else { break };
        if s.start < last_end {
            // Overlaps the previous match: keep what sticks out (fail safe: every byte some
            // detector claimed is masked), drop it if nothing does.
            if s.end <= last_end || s.kind != SpanKind::Plain {
                continue;
            }
            s.start = last_end;
        }
        if let Some(slot) = c.get_mut(kept) {
            *slot = s;
        }
        kept += 1;
        last_end = s.end;
        match s.kind {
            SpanKind::PemCapped => {
                stop = Stop::Restart(s.end);
                break;
            }
            SpanKind::PemOpen => {
                stop = Stop::OpenPem;
                break;
            }
            _ => {}
        }
    }
    c.truncate(kept);
    ScanOutcome { spans: c, stop }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swar_digit_and_byte_tests_are_exact() {
        for b in 0u8..=255 {
            let x = u64::from_le_bytes([b, b'a', b'b', b'c', 0xff, 0x80, b'z', b' ']);
            assert_eq!(digit_bytes(x) != 0, b.is_ascii_digit(), "byte {b}");
            assert_eq!(
                anchor_range_bytes(x) != 0,
                (0x30..=0x40).contains(&b),
                "byte {b}"
            );
            assert_eq!(eq_bytes(x, b'@') != 0, b == b'@', "byte {b}");
        }
    }

    /// The shortcut never hides a match: every short text it calls clean, the full scan finds
    /// nothing in either. Texts: every sequence of up to three pieces (anchor bytes, literal
    /// prefixes, near misses, escapes), then random sequences of up to eight.
    #[test]
    fn short_clean_texts_hold_no_match() {
        use proptest::prelude::*;
        const PIECES: &[&str] = &[
            "a",
            "Z",
            " ",
            "-",
            "_",
            ".",
            "/",
            "+",
            "0",
            "7",
            "@",
            "=",
            ":",
            "eyJ",
            "ey",
            "AKIA",
            "AKI",
            "ghp_",
            "gh",
            "glpat-",
            "xoxb-",
            "sk_live_",
            "sk_",
            "AIza",
            "-----",
            "-----BEGIN ",
            "hooks.slack.com",
            "user",
            "example.com",
            "true",
            "\\n",
            "\\u00e9",
            "é",
            "\u{7f}",
            "n@x.io",
            "a.b@c.de",
            "password=",
            "api_key:",
            "password:",
            "hunter-two-horse",
        ];
        let engine = crate::MaskingEngine::with_defaults().expect("default profile");
        let scanner = &engine.profile(None).scanner;
        let clean = std::cell::Cell::new(0u32);
        let check = |t: &[u8]| -> Result<(), String> {
            if scanner.short_and_clean(t) {
                clean.set(clean.get() + 1);
                for eof in [true, false] {
                    let full = scanner.scan_full(t, eof);
                    if !full.spans.is_empty() || full.stop != Stop::End {
                        return Err(format!("{:?}", String::from_utf8_lossy(t)));
                    }
                }
            }
            Ok(())
        };
        for a in PIECES {
            for b in PIECES {
                for c in PIECES {
                    for t in [a.to_string(), format!("{a}{b}"), format!("{a}{b}{c}")] {
                        if let Err(t) = check(t.as_bytes()) {
                            panic!("clean by the shortcut, not by the full scan: {t}");
                        }
                    }
                }
            }
        }
        let text =
            prop::collection::vec(prop::sample::select(PIECES), 0..8).prop_map(|v| v.concat());
        proptest::test_runner::TestRunner::new(ProptestConfig {
            cases: 20_000,
            ..ProptestConfig::default()
        })
        .run(&text, |t| {
            check(t.as_bytes()).map_err(proptest::test_runner::TestCaseError::fail)
        })
        .expect("shortcut agrees with the full scan");
        // The shortcut must also fire, or the test proves nothing.
        let clean = clean.get();
        assert!(clean > 1_000, "only {clean} texts were clean");
        assert!(scanner.short_and_clean(b"plan"));
        assert!(!scanner.short_and_clean(b"user0@example.com"));
        assert!(!scanner.short_and_clean(b"ghp_x"));
    }

    #[test]
    fn secret_key_names() {
        for k in [
            "password",
            "DB_PASSWORD",
            "x-api-key",
            "clientSecret",
            "Authorization",
            "access_token",
        ] {
            assert!(is_secret_key_name(k.as_bytes()), "{k}");
        }
        for k in [
            "PWD",
            "OLDPWD",
            "max_tokens",
            "password_changed",
            "user",
            "token_count",
        ] {
            assert!(!is_secret_key_name(k.as_bytes()), "{k}");
        }
    }
}
