//! A fast JSON well-formedness check for verify: no allocation, no values built.
//!
//! [`is_valid_json`] accepts exactly the inputs that
//! `serde_json::from_slice::<serde::de::IgnoredAny>` accepts (the check verify used before), at
//! several times its speed: the same grammar (RFC 8259 tokens, whitespace ` \t\n\r`, strings
//! without control characters, escapes `\" \\ \/ \b \f \n \r \t \uXXXX`, bytes of 0x80 and above
//! taken as they are), with nesting tracked in a fixed bit stack. Inputs nested deeper than the
//! stack (never written by the recorder) are handed to serde_json, so the answer is the same for
//! every input; the `audit_verify` fuzz target checks that equivalence differentially.
//! [`is_valid_json_members`] does the same for the inside of an object, so that verify scans
//! only a record's payload once its fixed members have been parsed.

/// Nesting levels tracked in the bit stack (deeper inputs go to serde_json).
const MAX_DEPTH: usize = 256;

/// Whether `bytes` is one well-formed JSON value (surrounded by optional whitespace).
pub fn is_valid_json(bytes: &[u8]) -> bool {
    match scan(bytes) {
        Scan::Valid => true,
        Scan::Invalid => false,
        Scan::TooDeep => reference_is_valid_json(bytes),
    }
}

/// The reference [`is_valid_json`] is equivalent to: serde_json skipping one value. Slower; for
/// tests and the `audit_verify` fuzz target.
pub fn reference_is_valid_json(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
}

enum Scan {
    Valid,
    Invalid,
    TooDeep,
}

/// Open containers, innermost last: bit set for an object, clear for an array.
struct Nesting {
    bits: [u64; MAX_DEPTH / 64],
    depth: usize,
}

impl Nesting {
    fn push(&mut self, object: bool) -> bool {
        let (word, bit) = (self.depth / 64, self.depth % 64);
        let Some(w) = self.bits.get_mut(word) else {
            return false;
        };
        if object {
            *w |= 1 << bit;
        } else {
            *w &= !(1 << bit);
        }
        self.depth += 1;
        true
    }

    /// Whether the innermost open container is an object (`None` at top level).
    fn top_is_object(&self) -> Option<bool> {
        let d = self.depth.checked_sub(1)?;
        let w = self.bits.get(d / 64)?;
        Some(w & (1 << (d % 64)) != 0)
    }
}

#[inline]
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(i) {
        i += 1;
    }
    i
}

const ONES: u64 = u64::MAX / 255;
const HIGHS: u64 = ONES << 7;

/// The bytes of the word that may be `"`, `\` or below 0x20, as their high bits (a SWAR test).
/// A borrow can flag a plain byte above a real hit, never below one: the lowest flagged byte is
/// always a real hit.
#[inline]
fn special_mask(w: u64) -> u64 {
    let ctrl = w.wrapping_sub(ONES * 0x20) & !w;
    let q = w ^ (ONES * u64::from(b'"'));
    let quote = q.wrapping_sub(ONES) & !q;
    let s = w ^ (ONES * u64::from(b'\\'));
    let slash = s.wrapping_sub(ONES) & !s;
    (ctrl | quote | slash) & HIGHS
}

/// The index of the first `"`, `\` or control byte at or after `i` (or `b.len()`).
#[inline]
fn next_special(b: &[u8], mut i: usize) -> usize {
    while let Some(chunk) = b.get(i..i + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let m = special_mask(u64::from_le_bytes(word));
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&c) = b.get(i) {
        if c == b'"' || c == b'\\' || c < 0x20 {
            break;
        }
        i += 1;
    }
    i
}

/// Scans a string body starting just after its opening quote; returns the index after the
/// closing quote.
#[inline]
fn string(b: &[u8], mut i: usize) -> Option<usize> {
    loop {
        i = next_special(b, i);
        match *b.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => {
                i = match *b.get(i + 1)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i + 2,
                    b'u' => {
                        let hex = b.get(i + 2..i + 6)?;
                        if !hex.iter().all(u8::is_ascii_hexdigit) {
                            return None;
                        }
                        i + 6
                    }
                    _ => return None,
                };
            }
            _ => return None, // a control character
        }
    }
}

#[inline]
fn digits(b: &[u8], mut i: usize) -> usize {
    while let Some(b'0'..=b'9') = b.get(i) {
        i += 1;
    }
    i
}

/// Scans a number starting at its first digit (after an optional `-`).
#[inline]
fn number(b: &[u8], mut i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'0' => {
            i += 1;
            if let Some(b'0'..=b'9') = b.get(i) {
                return None;
            }
        }
        b'1'..=b'9' => i = digits(b, i + 1),
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        let end = digits(b, i + 1);
        if end == i + 1 {
            return None;
        }
        i = end;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        let end = digits(b, i);
        if end == i {
            return None;
        }
        i = end;
    }
    Some(i)
}

#[inline]
fn literal(b: &[u8], i: usize, lit: &[u8]) -> Option<usize> {
    (b.get(i..i + lit.len())? == lit).then_some(i + lit.len())
}

/// An object key and its colon, starting at the opening quote (after whitespace).
#[inline]
fn key(b: &[u8], i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let i = skip_ws(b, string(b, i + 1)?);
    (b.get(i) == Some(&b':')).then_some(i + 1)
}

/// Whether `{` + `members` + `}` is well-formed JSON, without building it: verify checks a
/// record's payload members this way once the fixed members around them have been parsed.
pub fn is_valid_json_members(members: &[u8]) -> bool {
    match scan_inner(members, true) {
        Ok(true) => true,
        Err(()) => false,
        Ok(false) => {
            let mut object = Vec::with_capacity(members.len() + 2);
            object.push(b'{');
            object.extend_from_slice(members);
            object.push(b'}');
            reference_is_valid_json(&object)
        }
    }
}

/// Whether a record `line` (without its `\n`), already parsed as `parsed`, is well-formed JSON;
/// the same answer as [`is_valid_json`]`(line)`, scanning only the payload. The fixed members
/// and the hash member that [`crate::format::parse_line`] accepted are valid JSON by
/// construction, so the line is valid exactly when its payload is a valid member list.
pub fn record_is_json(line: &[u8], parsed: &crate::format::ParsedLine<'_>) -> bool {
    if parsed.payload.is_empty() {
        // No payload, or a stray `,` before the hash member: rare, so scan it all.
        is_valid_json(line)
    } else {
        is_valid_json_members(parsed.payload)
    }
}

fn scan(b: &[u8]) -> Scan {
    match scan_inner(b, false) {
        Ok(true) => Scan::Valid,
        Ok(false) => Scan::TooDeep,
        Err(()) => Scan::Invalid,
    }
}

/// `Ok(true)`: valid; `Ok(false)`: too deep to tell here; `Err`: invalid. With `members`, `b`
/// is read as the inside of an object whose braces are implied.
fn scan_inner(b: &[u8], members: bool) -> Result<bool, ()> {
    let mut nest = Nesting {
        bits: [0; MAX_DEPTH / 64],
        depth: 0,
    };
    let mut i = 0usize;
    if members {
        nest.push(true);
        i = skip_ws(b, 0);
        if i == b.len() {
            return Ok(true);
        }
        i = key(b, i).ok_or(())?;
    }
    'value: loop {
        i = skip_ws(b, i);
        let c = *b.get(i).ok_or(())?;
        match c {
            b'"' => i = string(b, i + 1).ok_or(())?,
            b'0'..=b'9' => i = number(b, i).ok_or(())?,
            b'-' => i = number(b, i + 1).ok_or(())?,
            b'n' => i = literal(b, i, b"null").ok_or(())?,
            b't' => i = literal(b, i, b"true").ok_or(())?,
            b'f' => i = literal(b, i, b"false").ok_or(())?,
            b'[' | b'{' => {
                let object = c == b'{';
                if !nest.push(object) {
                    return Ok(false);
                }
                i = skip_ws(b, i + 1);
                let close = if object { b'}' } else { b']' };
                if b.get(i) == Some(&close) {
                    // Empty: closed at once, and it is the value just read.
                    nest.depth -= 1;
                    i += 1;
                } else {
                    if object {
                        i = key(b, i).ok_or(())?;
                    }
                    continue 'value;
                }
            }
            _ => return Err(()),
        }
        // After a value: commas, closers, or the end.
        loop {
            i = skip_ws(b, i);
            if members && nest.depth == 1 && i == b.len() {
                return Ok(true); // the implied `}`
            }
            let Some(object) = nest.top_is_object() else {
                return if i == b.len() { Ok(true) } else { Err(()) };
            };
            match (b.get(i), object) {
                (Some(b','), true) => {
                    i = key(b, skip_ws(b, i + 1)).ok_or(())?;
                    continue 'value;
                }
                (Some(b','), false) => {
                    i += 1;
                    continue 'value;
                }
                (Some(b'}'), true) | (Some(b']'), false) => {
                    if members && nest.depth == 1 {
                        return Err(()); // would close the implied object early
                    }
                    nest.depth -= 1;
                    i += 1;
                }
                _ => return Err(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn serde_ok(b: &[u8]) -> bool {
        reference_is_valid_json(b)
    }

    #[test]
    fn agrees_with_serde_json_on_samples() {
        let samples: &[&[u8]] = &[
            b"",
            b" ",
            b"{}",
            b"[]",
            b" { } ",
            b"{\"a\":1}",
            b"{\"a\":1,}",
            b"{\"a\" : [1, 2.5e-3, -0, true, false, null, \"x\\u00e9\\n\"]}",
            b"[1,]",
            b"[,1]",
            b"{\"a\"}",
            b"{1:2}",
            b"01",
            b"-",
            b"-01",
            b"1.",
            b"1.e3",
            b"1e",
            b"1e+",
            b"1E+7",
            b"\"\\x\"",
            b"\"\\u12\"",
            b"\"\\u12G4\"",
            b"\"\\uD800\"",
            b"\"a\x01b\"",
            b"\"\xff\xfe\"",
            b"\"\x7f\"",
            b"nul",
            b"nullx",
            b"[1 2]",
            b"{\"a\":1 \"b\":2}",
            b"[[[]]]",
            b"[[[]]",
            b"[]]",
            b"{\"a\":{\"b\":[{}]}}",
            b"1 2",
            b"\"unterminated",
            b"\"12345678901234567\\\"89\"",
            b"\"1234567\"",
            b"\"12345678\"",
        ];
        for s in samples {
            assert_eq!(
                is_valid_json(s),
                serde_ok(s),
                "{:?}",
                String::from_utf8_lossy(s)
            );
            assert_members_agree(s);
        }
    }

    fn assert_members_agree(m: &[u8]) {
        let object = [&b"{"[..], m, b"}"].concat();
        assert_eq!(
            is_valid_json_members(m),
            serde_ok(&object),
            "members {:?}",
            String::from_utf8_lossy(m)
        );
    }

    #[test]
    fn members_agree_with_serde_json() {
        for m in [
            &b""[..],
            b" ",
            b"\"a\":1",
            b" \"a\" : 1 , \"b\":[{}] ",
            b"\"a\":1,",
            b",\"a\":1",
            b"\"a\":1}",
            b"\"a\":1},{\"b\":2",
            b"\"a\":{\"b\":1}}",
            b"\"a\"",
            b"1:2",
            b"\"a\":1 \"b\":2",
            b"\"a\":[1,{\"x\":null}],\"t\":\"2026\"",
        ] {
            assert_members_agree(m);
        }
    }

    #[test]
    fn deep_nesting_agrees_with_serde_json() {
        for depth in [127usize, 128, 255, 256, 257, 300, 5000] {
            for object in [false, true] {
                let (open, close): (&[u8], &[u8]) = if object {
                    (b"{\"k\":", b"}")
                } else {
                    (b"[", b"]")
                };
                let mut v = Vec::new();
                for _ in 0..depth {
                    v.extend_from_slice(open);
                }
                v.extend_from_slice(b"1");
                for _ in 0..depth {
                    v.extend_from_slice(close);
                }
                assert_eq!(is_valid_json(&v), serde_ok(&v), "depth {depth}");
                let inner = [&b"\"k\":"[..], &v].concat();
                assert_members_agree(&inner);
                v.pop();
                assert_eq!(is_valid_json(&v), serde_ok(&v), "depth {depth}, unclosed");
            }
        }
    }

    #[test]
    fn record_lines_agree_with_serde_json() {
        use crate::format::{GENESIS, RecordKind, encode_line, parse_line};
        for payload in [
            &b""[..],
            b",",
            b"\"time\":\"t\",\"body\":{\"a\":[1,2]}",
            b"\"time\":\"t\",",
            b" \"a\" : null ",
            b"\"a\":1},{\"b\":2",
            b"\"a\":\"\x01\"",
        ] {
            let mut out = Vec::new();
            encode_line(&mut out, "l", 1, RecordKind::Event, &GENESIS, payload);
            let line = &out[..out.len() - 1];
            let p = parse_line(line).unwrap();
            assert_eq!(
                record_is_json(line, &p),
                serde_ok(line),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    proptest! {
        #[test]
        fn agrees_with_serde_json_on_json_like_bytes(
            parts in proptest::collection::vec(
                prop_oneof![
                    Just(&b"{"[..]), Just(&b"}"[..]), Just(&b"["[..]), Just(&b"]"[..]),
                    Just(&b","[..]), Just(&b":"[..]), Just(&b"\""[..]), Just(&b"\\"[..]),
                    Just(&b" "[..]), Just(&b"1"[..]), Just(&b"-"[..]), Just(&b"."[..]),
                    Just(&b"e"[..]), Just(&b"0"[..]), Just(&b"null"[..]), Just(&b"true"[..]),
                    Just(&b"\"key\""[..]), Just(&b"\\u00ff"[..]), Just(&b"\x01"[..]),
                    Just(&b"abcdefgh"[..]), Just(&b"\xc3\xa9"[..]),
                ],
                0..40,
            )
        ) {
            let bytes: Vec<u8> = parts.concat();
            prop_assert_eq!(is_valid_json(&bytes), serde_ok(&bytes));
            let object = [&b"{"[..], &bytes, b"}"].concat();
            prop_assert_eq!(is_valid_json_members(&bytes), serde_ok(&object));
        }

        #[test]
        fn accepts_what_serde_json_writes(v in any::<Vec<(String, Option<f64>, bool, Vec<u32>)>>()) {
            let bytes = serde_json::to_vec(&v).unwrap();
            prop_assert!(is_valid_json(&bytes));
        }
    }
}
