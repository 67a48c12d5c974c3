//! The egress guard: the last line of defence for "credentials never leave".
//!
//! One aho-corasick automaton over every secret the gateway holds and the forms it could leave
//! in: raw; hex (lower and upper case); base64, standard and URL-safe alphabets, at all three
//! byte alignments (the part of the encoding that does not depend on neighbouring bytes, so the
//! secret is caught inside any larger base64 blob, e.g. a `Basic` header); and percent-encoded
//! (upper and lower case hex, with and without the unreserved characters left alone); and JSON
//! string escapes (`\/`, `\uXXXX`), by also checking the text with them decoded. Each of those
//! forms is also watched for the secret written backwards, for the secret as UTF-16 (little and
//! big endian, so with or without a byte-order mark), and for every window of
//! [`WINDOW_LEN`] consecutive bytes of the secret (a file holding the key's first and last
//! parts, each shorter than the key, is the key). Counters
//! per site record bytes checked and hits: the signed evidence statement is derived from them.
//! Hits say where (offset, site), never what.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aho_corasick::AhoCorasick;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use gatehouse_core::{EgressBlocked, EgressCounters, EgressGuard, EgressSite, EgressStream};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_encode};

use crate::error::MaskingError;
use crate::escape::EscapeDecoder;

/// Shortest secret the guard accepts: shorter ones would block ordinary traffic.
pub const MIN_SECRET_LEN: usize = 6;

/// Shortest encoded fragment worth watching.
const MIN_FRAGMENT: usize = 6;

/// Length, in bytes of the secret (UTF-16 code units for the UTF-16 forms), of the windows the
/// guard watches besides the whole secret; a secret this short or shorter is watched whole only.
///
/// Why 16: the held secrets are credentials (API keys, tokens, passwords). Sixteen characters of
/// a random key drawn from a base64/base62 alphabet carry about 95 bits, so a chance match in
/// ordinary traffic (which would block that response) is negligible even across terabytes; a
/// 16-byte window of a hex key still carries 64 bits. Shorter windows would make leaking a key
/// piecemeal harder still but begin to match ordinary text for human-chosen passwords (8 to 12
/// characters of a dictionary word), and each window adds patterns: a 64-byte key gives 49
/// windows per direction and form, a few thousand patterns in all, which aho-corasick builds in
/// milliseconds. What a window cannot catch: a key leaked in pieces of at most 15 bytes each.
pub const WINDOW_LEN: usize = 16;

/// RFC 3986 unreserved characters stay as they are.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

const SITES: usize = 5;

fn site_index(site: EgressSite) -> usize {
    match site {
        EgressSite::Client => 0,
        EgressSite::Recording => 1,
        EgressSite::Audit => 2,
        EgressSite::Log => 3,
        _ => 4,
    }
}

const SITE_NAMES: [&str; SITES] = ["client", "recording", "audit", "log", "other"];

/// Collects held secrets, then builds the guard.
#[derive(Default)]
pub struct EgressGuardBuilder {
    secrets: Vec<Vec<u8>>,
}

impl std::fmt::Debug for EgressGuardBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secrets.
        f.debug_struct("EgressGuardBuilder")
            .field("secrets", &self.secrets.len())
            .finish()
    }
}

impl EgressGuardBuilder {
    /// An empty builder.
    pub fn new() -> EgressGuardBuilder {
        EgressGuardBuilder::default()
    }

    /// Watches `secret` and its encoded forms. Refuses secrets shorter than
    /// [`MIN_SECRET_LEN`].
    pub fn add_secret(&mut self, secret: &[u8]) -> Result<&mut EgressGuardBuilder, MaskingError> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(MaskingError::SecretTooShort {
                min: MIN_SECRET_LEN,
                len: secret.len(),
            });
        }
        self.secrets.push(secret.to_vec());
        Ok(self)
    }

    /// The byte strings the guard will search for: every secret, forwards and backwards, whole
    /// and in every [`WINDOW_LEN`]-byte window, in each of its encoded forms (raw, hex, base64
    /// at each alignment, percent-encoded, UTF-16LE/BE), deduplicated, shortest fragments left
    /// out.
    pub fn patterns(&self) -> Vec<Vec<u8>> {
        let mut forms: BTreeSet<Vec<u8>> = BTreeSet::new();
        for s in &self.secrets {
            for f in watched_forms(s) {
                if f.len() >= MIN_FRAGMENT {
                    forms.insert(f);
                }
            }
        }
        forms.into_iter().collect()
    }

    /// Builds the guard.
    pub fn build(&self) -> Result<SecretEgressGuard, MaskingError> {
        let patterns = self.patterns();
        let longest = patterns.iter().map(Vec::len).max().unwrap_or(0);
        let ac = if patterns.is_empty() {
            None
        } else {
            // Leftmost-longest: an occurrence of the whole secret is one hit, not one per
            // window it contains.
            Some(
                AhoCorasick::builder()
                    .match_kind(aho_corasick::MatchKind::LeftmostLongest)
                    .build(&patterns)
                    .map_err(|e| MaskingError::EgressBuild(e.to_string()))?,
            )
        };
        Ok(SecretEgressGuard {
            inner: Arc::new(Inner {
                ac,
                patterns: patterns.len(),
                longest,
                bytes: Default::default(),
                hits: Default::default(),
            }),
        })
    }
}

/// Every byte string the guard watches for `secret`: the secret and its reverse, whole and in
/// every window of [`WINDOW_LEN`] bytes, each in every encoded form; and the UTF-16 forms of the
/// secret and its reverse, whole and in every window of [`WINDOW_LEN`] code units.
fn watched_forms(secret: &[u8]) -> Vec<Vec<u8>> {
    let reversed = reversed(secret);
    let mut forms = Vec::new();
    for text in [secret, reversed.as_slice()] {
        for piece in windows(text, WINDOW_LEN) {
            forms.extend(encoded_forms(piece));
        }
        for units in utf16_forms(text) {
            for piece in windows(&units, WINDOW_LEN) {
                forms.push(piece.iter().flat_map(|u| u.to_le_bytes()).collect());
                forms.push(piece.iter().flat_map(|u| u.to_be_bytes()).collect());
            }
        }
    }
    forms
}

/// The whole of `s` and every window of `len` items in it (`s` alone when it is no longer).
fn windows<T>(s: &[T], len: usize) -> impl Iterator<Item = &[T]> {
    let pieces = if s.len() > len {
        s.windows(len)
    } else {
        s.windows(s.len().max(1))
    };
    std::iter::once(s).chain(pieces)
}

/// `secret` written backwards: by characters when it is UTF-8 (so a reversed multi-byte
/// character is still that character), else by bytes.
fn reversed(secret: &[u8]) -> Vec<u8> {
    match std::str::from_utf8(secret) {
        Ok(s) => s.chars().rev().collect::<String>().into_bytes(),
        Err(_) => secret.iter().rev().copied().collect(),
    }
}

/// `secret` as UTF-16 code units: as text when it is UTF-8, and each byte widened (the Latin-1
/// reading, which is also what a byte string widened naively gives) when that differs.
fn utf16_forms(secret: &[u8]) -> Vec<Vec<u16>> {
    let widened: Vec<u16> = secret.iter().map(|&b| u16::from(b)).collect();
    match std::str::from_utf8(secret) {
        Ok(s) => {
            let text: Vec<u16> = s.encode_utf16().collect();
            if text == widened {
                vec![text]
            } else {
                vec![text, widened]
            }
        }
        Err(_) => vec![widened],
    }
}

/// Every encoded form of `secret` (raw, hex, base64 fragments, percent-encoded).
fn encoded_forms(secret: &[u8]) -> Vec<Vec<u8>> {
    let mut forms = vec![
        secret.to_vec(),
        hex::encode(secret).into_bytes(),
        hex::encode_upper(secret).into_bytes(),
    ];
    for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
        for k in 0..3usize {
            let mut padded = vec![0u8; k];
            padded.extend_from_slice(secret);
            let enc = engine.encode(&padded).into_bytes();
            // Characters fully determined by the secret's bytes at this alignment.
            let first = (k * 8).div_ceil(6);
            let last = ((k + secret.len()) * 8) / 6;
            if let Some(frag) = enc.get(first..last) {
                forms.push(frag.to_vec());
            }
        }
    }
    for set in [NON_ALPHANUMERIC, COMPONENT] {
        let upper = percent_encode(secret, set).to_string().into_bytes();
        let mut lower = upper.clone();
        let mut i = 0;
        while i < lower.len() {
            if lower.get(i) == Some(&b'%') {
                for b in lower.iter_mut().skip(i + 1).take(2) {
                    b.make_ascii_lowercase();
                }
                i += 3;
            } else {
                i += 1;
            }
        }
        if secret.contains(&b' ') {
            let plus: Vec<u8> = String::from_utf8_lossy(&upper)
                .replace("%20", "+")
                .into_bytes();
            forms.push(plus);
        }
        forms.push(upper);
        forms.push(lower);
    }
    forms
}

struct Inner {
    ac: Option<AhoCorasick>,
    patterns: usize,
    longest: usize,
    bytes: [AtomicU64; SITES],
    hits: [AtomicU64; SITES],
}

impl Inner {
    /// Hits in `data` that end after `from`: (count, offset of the first).
    fn scan(&self, data: &[u8], from: usize) -> (u64, usize) {
        let Some(ac) = &self.ac else {
            return (0, 0);
        };
        // Fast path for the common case, no secret at all. A match cannot lie wholly before
        // `from`: those bytes are the tail of a stream chunk that was let through, so any
        // secret in them was blocked then.
        if !ac.is_match(data) {
            return (0, 0);
        }
        let mut count = 0u64;
        let mut first = None;
        for m in ac.find_iter(data) {
            if m.end() > from {
                count += 1;
                first.get_or_insert(m.start());
            }
        }
        (count, first.unwrap_or(0))
    }

    fn record(&self, site: EgressSite, bytes: usize, hits: u64) {
        let i = site_index(site);
        if let Some(c) = self.bytes.get(i) {
            c.fetch_add(bytes as u64, Ordering::Relaxed);
        }
        if hits > 0
            && let Some(c) = self.hits.get(i)
        {
            c.fetch_add(hits, Ordering::Relaxed);
        }
    }
}

/// The egress guard over a fixed set of held secrets. Cheap to clone.
#[derive(Clone)]
pub struct SecretEgressGuard {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SecretEgressGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretEgressGuard")
            .field("patterns", &self.inner.patterns)
            .finish_non_exhaustive()
    }
}

impl EgressGuard for SecretEgressGuard {
    fn check(&self, site: EgressSite, data: &[u8]) -> Result<(), EgressBlocked> {
        let (mut hits, mut first) = self.inner.scan(data, 0);
        if hits == 0 && memchr::memchr(b'\\', data).is_some() {
            // JSON escapes (`\/`, `\u0041`) spell the secret too: check the decoded text.
            // Offsets are then those of the decoded text.
            (hits, first) = self.inner.scan(&crate::escape::unescape_bytes(data), 0);
        }
        self.inner.record(site, data.len(), hits);
        if hits == 0 {
            Ok(())
        } else {
            Err(EgressBlocked {
                site,
                hits,
                first_offset: first as u64,
            })
        }
    }

    fn stream(&self, site: EgressSite) -> Box<dyn EgressStream> {
        Box::new(SecretEgressStream {
            inner: Arc::clone(&self.inner),
            site,
            window: Vec::new(),
            tail: 0,
            sent: 0,
            decoded: None,
        })
    }

    fn counters(&self) -> EgressCounters {
        let mut bytes_checked = BTreeMap::new();
        let mut hits = BTreeMap::new();
        for (i, name) in SITE_NAMES.iter().enumerate() {
            let b = self
                .inner
                .bytes
                .get(i)
                .map_or(0, |c| c.load(Ordering::Relaxed));
            let h = self
                .inner
                .hits
                .get(i)
                .map_or(0, |c| c.load(Ordering::Relaxed));
            if b > 0 || h > 0 {
                bytes_checked.insert((*name).to_string(), b);
                hits.insert((*name).to_string(), h);
            }
        }
        EgressCounters {
            patterns: self.inner.patterns as u64,
            bytes_checked,
            hits,
        }
    }
}

/// Egress checking for one stream: keeps the last `longest - 1` bytes that were let through, so
/// a secret split across chunks is still caught. From the first backslash on, the stream is also
/// checked with its JSON escapes decoded (a secret written `\/` or `\u0041` is the secret).
struct SecretEgressStream {
    inner: Arc<Inner>,
    site: EgressSite,
    window: Vec<u8>,
    tail: usize,
    sent: u64,
    decoded: Option<DecodedWindow>,
}

/// The decoded view of a stream: its decoder and window, like the raw one.
struct DecodedWindow {
    decoder: EscapeDecoder,
    window: Vec<u8>,
    tail: usize,
}

impl SecretEgressStream {
    /// Checks `chunk` in the decoded view (started at the first backslash); (hits, offset).
    fn check_decoded(&mut self, chunk: &[u8]) -> (u64, usize) {
        if self.decoded.is_none() {
            if memchr::memchr(b'\\', chunk).is_none() {
                return (0, 0);
            }
            // Up to here the stream held no backslash: its decoded tail is the raw tail.
            self.decoded = Some(DecodedWindow {
                decoder: EscapeDecoder::default(),
                window: self.window.get(..self.tail).unwrap_or(&[]).to_vec(),
                tail: self.tail,
            });
        }
        let Some(d) = self.decoded.as_mut() else {
            return (0, 0);
        };
        d.window.truncate(d.tail);
        let before = d.window.len();
        d.decoder.push(chunk, &mut d.window);
        let (hits, first) = self.inner.scan(&d.window, d.tail);
        if hits > 0 {
            d.window.truncate(before);
            return (hits, first);
        }
        let keep = self.inner.longest.saturating_sub(1).min(d.window.len());
        let drop = d.window.len() - keep;
        d.window.drain(..drop);
        d.tail = keep;
        (0, 0)
    }
}

impl EgressStream for SecretEgressStream {
    fn check(&mut self, chunk: &[u8]) -> Result<(), EgressBlocked> {
        self.window.truncate(self.tail);
        self.window.extend_from_slice(chunk);
        let (mut hits, mut first) = self.inner.scan(&self.window, self.tail);
        if hits == 0 {
            (hits, first) = self.check_decoded(chunk);
        }
        self.inner.record(self.site, chunk.len(), hits);
        if hits > 0 {
            // The chunk is not sent, so it does not become part of the tail.
            let first_offset = (self.sent + first as u64).saturating_sub(self.tail as u64);
            self.window.truncate(self.tail);
            return Err(EgressBlocked {
                site: self.site,
                hits,
                first_offset,
            });
        }
        self.sent += chunk.len() as u64;
        let keep = self.inner.longest.saturating_sub(1).min(self.window.len());
        let drop = self.window.len() - keep;
        self.window.drain(..drop);
        self.tail = keep;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_fragments_are_found_in_every_alignment() {
        let secret = b"correct horse battery";
        let forms = encoded_forms(secret);
        for prefix in [&b""[..], b"x", b"xy", b"xyz"] {
            let mut data = prefix.to_vec();
            data.extend_from_slice(secret);
            data.extend_from_slice(b"tail");
            for enc in [
                STANDARD_NO_PAD.encode(&data),
                URL_SAFE_NO_PAD.encode(&data),
                base64::engine::general_purpose::STANDARD.encode(&data),
            ] {
                assert!(
                    forms
                        .iter()
                        .any(|f| enc.as_bytes().windows(f.len()).any(|w| w == f.as_slice())),
                    "prefix {prefix:?}: {enc}"
                );
            }
        }
    }
}
