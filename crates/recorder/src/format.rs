//! The stored line format: how one audit record is laid out on disk and exactly which bytes its
//! hash covers.
//!
//! A record is one line of JSON. Its first members are fixed and in a fixed order, so that the
//! verifier can read them without a general JSON parser, and its last member is the hash:
//!
//! ```text
//! {"schema_version":1,"log":"gw-a","sequence":7,"kind":"event","prev":"<64 hex>",<payload>,"hash":"<64 hex>"}\n
//! ```
//!
//! **What the hash covers.** Take the stored line without its trailing `\n`; remove the final
//! `,"hash":"<64 hex>"}` (75 bytes) and put back a single `}`. The SHA-256 of those bytes is the
//! hash. Equivalently: the record is first written as a JSON object without `hash`, hashed, and
//! the hash is then spliced in as the last member. Nothing is re-serialised: the verifier hashes
//! the bytes it read.

use sha2::{Digest, Sha256};

/// The schema version written into every record.
pub const SCHEMA_VERSION: u32 = 1;

/// `prev` of the very first record of a log: 32 zero bytes.
pub const GENESIS: [u8; 32] = [0u8; 32];

/// Length of the `,"hash":"<64 hex>"}` suffix.
const HASH_SUFFIX_LEN: usize = 75;
const HASH_MEMBER: &[u8] = b",\"hash\":\"";

/// What a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RecordKind {
    /// A control event handed to the recorder by a protocol crate.
    Event,
    /// A signed checkpoint over the record before it.
    Checkpoint,
    /// Crash recovery cut a torn final line; this record says how many bytes were cut.
    RecoveryCut,
    /// Retention dropped old segments; this signed record says where the retained chain starts.
    RetentionCut,
    /// The log was closed: a signed seal over the final checkpoint. A later run continues the
    /// chain with a signed checkpoint right after it.
    Seal,
    /// The running writer found its segment changed behind its back (bytes appended, or the
    /// file cut): this record says what it found and what it did; a signed checkpoint follows.
    ForeignData,
}

impl RecordKind {
    /// The name stored in the `kind` member.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Event => "event",
            RecordKind::Checkpoint => "checkpoint",
            RecordKind::RecoveryCut => "recovery_cut",
            RecordKind::RetentionCut => "retention_cut",
            RecordKind::Seal => "seal",
            RecordKind::ForeignData => "foreign_data",
        }
    }

    fn parse(s: &[u8]) -> Option<Self> {
        Some(match s {
            b"event" => RecordKind::Event,
            b"checkpoint" => RecordKind::Checkpoint,
            b"recovery_cut" => RecordKind::RecoveryCut,
            b"retention_cut" => RecordKind::RetentionCut,
            b"seal" => RecordKind::Seal,
            b"foreign_data" => RecordKind::ForeignData,
            _ => return None,
        })
    }
}

/// Whether `log` is a valid log id: 1 to 64 of `[A-Za-z0-9._-]`, not starting with `.`. Log ids
/// become directory names and are stored without JSON escaping, so the set is kept small.
pub fn valid_log_id(log: &str) -> bool {
    !log.is_empty()
        && log.len() <= 64
        && !log.starts_with('.')
        && log
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Appends one record line (with its `\n`) to `out` and returns its hash.
///
/// `payload` holds the remaining JSON object members without the surrounding braces (for example
/// `"time":"…","body":{…}`), or is empty. `log` must satisfy [`valid_log_id`] (checked when the log
/// is opened, so not again here).
pub fn encode_line(
    out: &mut Vec<u8>,
    log: &str,
    sequence: u64,
    kind: RecordKind,
    prev: &[u8; 32],
    payload: &[u8],
) -> [u8; 32] {
    let start = out.len();
    out.extend_from_slice(b"{\"schema_version\":");
    out.extend_from_slice(SCHEMA_VERSION.to_string().as_bytes());
    out.extend_from_slice(b",\"log\":\"");
    out.extend_from_slice(log.as_bytes());
    out.extend_from_slice(b"\",\"sequence\":");
    out.extend_from_slice(sequence.to_string().as_bytes());
    out.extend_from_slice(b",\"kind\":\"");
    out.extend_from_slice(kind.as_str().as_bytes());
    out.extend_from_slice(b"\",\"prev\":\"");
    push_hex(out, prev);
    out.push(b'"');
    if !payload.is_empty() {
        out.push(b',');
        out.extend_from_slice(payload);
    }
    let mut hasher = Sha256::new();
    hasher.update(&out[start..]);
    hasher.update(b"}");
    let hash: [u8; 32] = hasher.finalize().into();
    out.extend_from_slice(HASH_MEMBER);
    push_hex(out, &hash);
    out.extend_from_slice(b"\"}\n");
    hash
}

fn push_hex(out: &mut Vec<u8>, bytes: &[u8; 32]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0x0f)]);
    }
}

/// Lower-case hex of a hash.
pub fn hex32(bytes: &[u8; 32]) -> String {
    hex::encode(bytes)
}

/// Value of each byte as a lower-case hex digit, or 0xFF.
const HEX_VALUE: [u8; 256] = {
    let mut t = [0xFFu8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// Parses 64 lower-case hex digits.
pub fn parse_hex32(s: &[u8]) -> Option<[u8; 32]> {
    let s: &[u8; 64] = s.try_into().ok()?;
    let mut out = [0u8; 32];
    // Branch-free: any non-digit sets a high bit in `bad` (verify decodes two per record).
    let mut bad = 0u8;
    for (o, pair) in out.iter_mut().zip(s.as_chunks::<2>().0) {
        let hi = HEX_VALUE[usize::from(pair[0])];
        let lo = HEX_VALUE[usize::from(pair[1])];
        bad |= hi | lo;
        *o = (hi << 4) | (lo & 0x0f);
    }
    (bad & 0xf0 == 0).then_some(out)
}

/// One record line, read back without a general JSON parser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedLine<'a> {
    /// `schema_version`.
    pub schema_version: u32,
    /// `log`.
    pub log: &'a str,
    /// `sequence`.
    pub sequence: u64,
    /// `kind`.
    pub kind: RecordKind,
    /// `prev`: the hash of the record before.
    pub prev: [u8; 32],
    /// `hash` as stored.
    pub stored_hash: [u8; 32],
    /// The hash computed over the line's bytes (see the module docs). Equal to `stored_hash` in
    /// an untouched record.
    pub computed_hash: [u8; 32],
    /// The payload members (without braces), possibly empty.
    pub payload: &'a [u8],
}

impl ParsedLine<'_> {
    /// The payload as a complete JSON object (for parsing with serde).
    pub fn payload_object(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.payload.len() + 2);
        v.push(b'{');
        v.extend_from_slice(self.payload);
        v.push(b'}');
        v
    }
}

/// Why a line is not a well-formed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LineError {
    /// The line does not end with the `"hash"` member.
    #[error("line does not end with a hash member")]
    NoHash,
    /// The fixed leading members are missing or out of order.
    #[error("line does not start with the fixed record members")]
    BadPrefix,
    /// `kind` is not a known record kind.
    #[error("unknown record kind")]
    UnknownKind,
}

/// Parses one line (without its `\n`) and hashes it. Never panics, whatever the input.
pub fn parse_line(line: &[u8]) -> Result<ParsedLine<'_>, LineError> {
    let len = line.len();
    if len < HASH_SUFFIX_LEN + 1 || !line.ends_with(b"\"}") {
        return Err(LineError::NoHash);
    }
    let body_end = len - HASH_SUFFIX_LEN;
    let (body, suffix) = line.split_at(body_end);
    let (member, rest) = suffix.split_at(HASH_MEMBER.len());
    if member != HASH_MEMBER {
        return Err(LineError::NoHash);
    }
    let stored_hash =
        parse_hex32(rest.get(..64).ok_or(LineError::NoHash)?).ok_or(LineError::NoHash)?;

    let mut cur = Cursor {
        bytes: body,
        pos: 0,
    };
    cur.expect(b"{\"schema_version\":")?;
    let schema_version = u32::try_from(cur.number()?).map_err(|_| LineError::BadPrefix)?;
    cur.expect(b",\"log\":\"")?;
    let log_bytes = cur.until_quote()?;
    let log = std::str::from_utf8(log_bytes).map_err(|_| LineError::BadPrefix)?;
    if !valid_log_id(log) {
        return Err(LineError::BadPrefix);
    }
    cur.expect(b",\"sequence\":")?;
    let sequence = cur.number()?;
    cur.expect(b",\"kind\":\"")?;
    let kind = RecordKind::parse(cur.until_quote()?).ok_or(LineError::UnknownKind)?;
    cur.expect(b",\"prev\":\"")?;
    let prev_hex = cur.take(64)?;
    let prev = parse_hex32(prev_hex).ok_or(LineError::BadPrefix)?;
    cur.expect(b"\"")?;
    let payload = match body.get(cur.pos..) {
        Some([]) => &[][..],
        Some([b',', rest @ ..]) => rest,
        _ => return Err(LineError::BadPrefix),
    };

    let mut hasher = Sha256::new();
    hasher.update(body);
    hasher.update(b"}");
    let computed_hash: [u8; 32] = hasher.finalize().into();
    Ok(ParsedLine {
        schema_version,
        log,
        sequence,
        kind,
        prev,
        stored_hash,
        computed_hash,
        payload,
    })
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn expect(&mut self, lit: &[u8]) -> Result<(), LineError> {
        let end = self
            .pos
            .checked_add(lit.len())
            .ok_or(LineError::BadPrefix)?;
        if self.bytes.get(self.pos..end) == Some(lit) {
            self.pos = end;
            Ok(())
        } else {
            Err(LineError::BadPrefix)
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], LineError> {
        let end = self.pos.checked_add(n).ok_or(LineError::BadPrefix)?;
        let s = self.bytes.get(self.pos..end).ok_or(LineError::BadPrefix)?;
        self.pos = end;
        Ok(s)
    }

    /// A canonical unsigned decimal (no leading zeros, at most 20 digits).
    fn number(&mut self) -> Result<u64, LineError> {
        let rest = self.bytes.get(self.pos..).ok_or(LineError::BadPrefix)?;
        let n = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if n == 0 || n > 20 || (n > 1 && rest.first() == Some(&b'0')) {
            return Err(LineError::BadPrefix);
        }
        let digits = rest.get(..n).ok_or(LineError::BadPrefix)?;
        let mut v: u64 = 0;
        for d in digits {
            v = v
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(d - b'0')))
                .ok_or(LineError::BadPrefix)?;
        }
        self.pos += n;
        Ok(v)
    }

    /// Bytes up to the next `"` (which is consumed). No escapes are allowed in these members.
    fn until_quote(&mut self) -> Result<&'a [u8], LineError> {
        let rest = self.bytes.get(self.pos..).ok_or(LineError::BadPrefix)?;
        let n = rest
            .iter()
            .take(64)
            .position(|&b| b == b'"')
            .ok_or(LineError::BadPrefix)?;
        let s = rest.get(..n).ok_or(LineError::BadPrefix)?;
        self.pos += n + 1;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_hash_definition() {
        let mut out = Vec::new();
        let prev = [7u8; 32];
        let h = encode_line(&mut out, "gw-a", 42, RecordKind::Event, &prev, b"\"x\":1");
        assert_eq!(out.last(), Some(&b'\n'));
        let line = &out[..out.len() - 1];
        let p = parse_line(line).unwrap();
        assert_eq!(p.log, "gw-a");
        assert_eq!(p.sequence, 42);
        assert_eq!(p.kind, RecordKind::Event);
        assert_eq!(p.prev, prev);
        assert_eq!(p.stored_hash, h);
        assert_eq!(p.computed_hash, h);
        assert_eq!(p.payload, b"\"x\":1");
        // The documented definition, recomputed independently.
        let text = std::str::from_utf8(line).unwrap();
        let cut = text.rfind(",\"hash\":\"").unwrap();
        let unsealed = format!("{}}}", &text[..cut]);
        assert_eq!(<[u8; 32]>::from(Sha256::digest(unsealed.as_bytes())), h);
        // And it is valid JSON.
        let v: serde_json::Value = serde_json::from_slice(line).unwrap();
        assert_eq!(v["hash"], hex32(&h));
        assert_eq!(v["prev"], hex32(&prev));
    }

    #[test]
    fn empty_payload() {
        let mut out = Vec::new();
        let h = encode_line(&mut out, "l", 1, RecordKind::Checkpoint, &GENESIS, b"");
        let p = parse_line(&out[..out.len() - 1]).unwrap();
        assert_eq!(p.computed_hash, h);
        assert!(p.payload.is_empty());
    }

    #[test]
    fn edits_change_the_computed_hash() {
        let mut out = Vec::new();
        encode_line(
            &mut out,
            "l",
            1,
            RecordKind::Event,
            &GENESIS,
            b"\"v\":\"abc\"",
        );
        let mut edited = out[..out.len() - 1].to_vec();
        let pos = edited.windows(3).position(|w| w == b"abc").unwrap();
        edited[pos] = b'x';
        let p = parse_line(&edited).unwrap();
        assert_ne!(p.computed_hash, p.stored_hash);
    }

    #[test]
    fn rejects_malformed_prefixes() {
        for bad in [
            &b""[..],
            b"{}",
            b"{\"schema_version\":01,\"log\":\"l\",\"sequence\":1,\"kind\":\"event\",\"prev\":\"0000000000000000000000000000000000000000000000000000000000000000\",\"hash\":\"0000000000000000000000000000000000000000000000000000000000000000\"}",
            b"{\"schema_version\":1,\"log\":\"l\",\"sequence\":1,\"kind\":\"nope\",\"prev\":\"0000000000000000000000000000000000000000000000000000000000000000\",\"hash\":\"0000000000000000000000000000000000000000000000000000000000000000\"}",
            b"{\"schema_version\":1,\"log\":\"l\",\"sequence\":99999999999999999999,\"kind\":\"event\",\"prev\":\"0000000000000000000000000000000000000000000000000000000000000000\",\"hash\":\"0000000000000000000000000000000000000000000000000000000000000000\"}",
        ] {
            assert!(parse_line(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn hex_digits() {
        let h: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37));
        assert_eq!(parse_hex32(hex32(&h).as_bytes()), Some(h));
        let good = hex32(&h).into_bytes();
        for (at, bad) in [
            (0, b'A'),
            (5, b'g'),
            (63, b'/'),
            (10, b':'),
            (1, 0x80),
            (2, b' '),
        ] {
            let mut v = good.clone();
            v[at] = bad;
            assert_eq!(parse_hex32(&v), None, "{at} {bad}");
        }
        assert_eq!(parse_hex32(&good[..63]), None);
        assert_eq!(parse_hex32(&[good.clone(), b"0".to_vec()].concat()), None);
        for b in 0..=255u8 {
            let mut v = good.clone();
            v[7] = b;
            let ok = b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
            assert_eq!(parse_hex32(&v).is_some(), ok, "{b}");
        }
    }

    #[test]
    fn log_ids() {
        assert!(valid_log_id("gw-a.1_x"));
        assert!(!valid_log_id(""));
        assert!(!valid_log_id(".hidden"));
        assert!(!valid_log_id("a/b"));
        assert!(!valid_log_id("a\"b"));
        assert!(!valid_log_id(&"a".repeat(65)));
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = parse_line(&data);
        }
    }
}
