//! JSON string escapes, decoded for detection: what a JSON parser would read, not the bytes on
//! the wire.
//!
//! A value written `"a\u0040b.com"`, `"\u0034\u0031…"` or with `\/` is the same e-mail or card
//! number to every client that parses it, so detectors must see it decoded. [`unescape`] decodes
//! the content of one string and remembers, for each decoded byte, the escape unit it came from,
//! so a match maps back to whole escape sequences of the raw text. [`EscapeDecoder`] decodes a
//! byte stream (the rest of a document that stopped being JSON) before text masking.
//!
//! Decoding follows RFC 8259: `\" \\ \/ \b \f \n \r \t`, `\uXXXX`, and surrogate pairs
//! (`\uD83D\uDE00`) as one character. A lone surrogate becomes U+FFFD; an unknown escape `\x`
//! decodes to `x`; a `\u` without four hex digits decodes to `u`. Decoding too much is safe
//! here: it only gives the detectors more to see.

use std::borrow::Cow;

fn hex4(raw: &[u8], at: usize) -> Option<u32> {
    let digits = raw.get(at..at + 4)?;
    let mut v = 0u32;
    for &d in digits {
        v = v * 16 + char::from(d).to_digit(16)?;
    }
    Some(v)
}

/// What an escape unit stands for.
enum Unit {
    Char(char),
    /// `\` followed by a byte that starts no known escape: that byte, as it was.
    Byte(u8),
}

/// The escape unit at `raw[i]` (a backslash): its length and what it stands for.
/// `raw` must hold the whole unit (up to 12 bytes, a surrogate pair) unless it ends the input.
fn escape_at(raw: &[u8], i: usize) -> (usize, Unit) {
    use Unit::{Byte, Char};
    match raw.get(i + 1) {
        None => (1, Byte(b'\\')),
        Some(b'u') => match hex4(raw, i + 2) {
            None => (2, Byte(b'u')),
            Some(hi @ 0xD800..=0xDBFF) => {
                let lo = (raw.get(i + 6..i + 8) == Some(&b"\\u"[..]))
                    .then(|| hex4(raw, i + 8))
                    .flatten()
                    .filter(|lo| (0xDC00..=0xDFFF).contains(lo));
                match lo {
                    Some(lo) => {
                        let cp = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                        (12, Char(char::from_u32(cp).unwrap_or('\u{FFFD}')))
                    }
                    None => (6, Char('\u{FFFD}')),
                }
            }
            Some(cp) => (6, Char(char::from_u32(cp).unwrap_or('\u{FFFD}'))),
        },
        Some(&c) => (
            2,
            Byte(match c {
                b'b' => 0x08,
                b'f' => 0x0c,
                b'n' => b'\n',
                b'r' => b'\r',
                b't' => b'\t',
                other => other,
            }),
        ),
    }
}

/// Length of the raw unit starting at `raw[i]`: an escape sequence, or one byte. An escape that
/// `raw` cuts short counts at the length it may still reach (a string being read is cut only
/// where what follows cannot extend the unit).
pub(crate) fn unit_len(raw: &[u8], i: usize) -> usize {
    if raw.get(i) != Some(&b'\\') {
        return 1;
    }
    match raw.get(i + 1) {
        None => 2,
        Some(b'u') if raw.len() < i + 6 => 6,
        Some(b'u')
            if raw.len() < i + 12
                && matches!(hex4(raw, i + 2), Some(0xD800..=0xDBFF))
                && raw.get(i + 6).is_none_or(|&b| b == b'\\')
                && raw.get(i + 7).is_none_or(|&b| b == b'u') =>
        {
            12
        }
        _ => escape_at(raw, i).0,
    }
}

fn push_unit(raw: &[u8], i: usize, out: &mut Vec<u8>) -> usize {
    match raw.get(i) {
        Some(b'\\') => {
            let (len, unit) = escape_at(raw, i);
            match unit {
                Unit::Byte(b) => out.push(b),
                Unit::Char(c) => {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
            len
        }
        Some(&b) => {
            out.push(b);
            1
        }
        None => 1,
    }
}

/// One string's content, decoded, with the raw unit each decoded byte came from.
pub(crate) struct Unescaped {
    /// What a JSON parser reads.
    pub bytes: Vec<u8>,
    /// `starts[k]`: where in the raw content the unit that produced `bytes[k]` begins.
    pub starts: Vec<usize>,
}

impl Unescaped {
    /// The raw range `start..end` covering decoded bytes `from..to`, widened to whole units.
    pub(crate) fn raw_range(&self, raw_len: usize, from: usize, to: usize) -> (usize, usize) {
        let start = self.starts.get(from).copied().unwrap_or(raw_len);
        let last = to
            .checked_sub(1)
            .and_then(|k| self.starts.get(k))
            .copied()
            .unwrap_or(start);
        // The raw end is the start of the first decoded byte of a later unit.
        let end = self
            .starts
            .get(to..)
            .unwrap_or(&[])
            .iter()
            .copied()
            .find(|&s| s > last)
            .unwrap_or(raw_len);
        (start, end.max(start))
    }
}

/// Decodes the escape sequences of raw JSON string content.
pub(crate) fn unescape(raw: &[u8]) -> Unescaped {
    let mut bytes = Vec::with_capacity(raw.len());
    let mut starts = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let before = bytes.len();
        let len = push_unit(raw, i, &mut bytes);
        starts.resize(starts.len() + (bytes.len() - before), i);
        i += len.max(1);
    }
    Unescaped { bytes, starts }
}

/// The decoded content of a string (borrowed when it holds no escape).
pub(crate) fn unescape_bytes(raw: &[u8]) -> Cow<'_, [u8]> {
    if memchr::memchr(b'\\', raw).is_none() {
        Cow::Borrowed(raw)
    } else {
        let mut out = Vec::with_capacity(raw.len());
        let mut i = 0;
        while i < raw.len() {
            i += push_unit(raw, i, &mut out).max(1);
        }
        Cow::Owned(out)
    }
}

/// Decodes JSON escapes in a byte stream of any chunking; holds back only an escape unit that
/// the next bytes may still complete (at most 11 bytes).
#[derive(Debug, Default)]
pub(crate) struct EscapeDecoder {
    pending: Vec<u8>,
}

impl EscapeDecoder {
    /// Decodes what can be decoded of `pending + chunk` into `out`.
    pub(crate) fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let mut buf = std::mem::take(&mut self.pending);
        buf.extend_from_slice(chunk);
        let mut i = 0;
        while i < buf.len() {
            match memchr::memchr(b'\\', buf.get(i..).unwrap_or(&[])) {
                None => {
                    out.extend_from_slice(buf.get(i..).unwrap_or(&[]));
                    i = buf.len();
                }
                Some(k) => {
                    out.extend_from_slice(buf.get(i..i + k).unwrap_or(&[]));
                    i += k;
                    if i + unit_len(&buf, i) > buf.len() {
                        // The unit may go on in the next chunk.
                        self.pending = buf.get(i..).unwrap_or(&[]).to_vec();
                        return;
                    }
                    i += push_unit(&buf, i, out).max(1);
                }
            }
        }
    }

    /// Decodes what is held, as the end of the input.
    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) {
        let buf = std::mem::take(&mut self.pending);
        let mut i = 0;
        while i < buf.len() {
            i += push_unit(&buf, i, out).max(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_escape_form() {
        let raw = br#"a\u0040b.com \/ \"q\" \\u0040 \uD83D\uDE00 \uD83D x\n\u00e9"#;
        let u = unescape(raw);
        assert_eq!(
            String::from_utf8(u.bytes.clone()).unwrap(),
            "a@b.com / \"q\" \\u0040 \u{1F600} \u{FFFD} x\n\u{e9}"
        );
        assert_eq!(u.bytes.len(), u.starts.len());
        assert_eq!(&*unescape_bytes(raw), &u.bytes[..]);
        // Decoded `@` (byte 1) maps back to the whole `\u0040`.
        assert_eq!(u.raw_range(raw.len(), 1, 2), (1, 7));
        // The emoji (four decoded bytes) maps back to the whole pair.
        let at = u
            .bytes
            .windows(4)
            .position(|w| w == "\u{1F600}".as_bytes())
            .unwrap();
        let (s, e) = u.raw_range(raw.len(), at, at + 4);
        assert_eq!(&raw[s..e], br"\uD83D\uDE00");
        // Half of a decoded character still covers its whole unit.
        let (s, e) = u.raw_range(raw.len(), at + 1, at + 2);
        assert_eq!(&raw[s..e], br"\uD83D\uDE00");
    }

    #[test]
    fn unfinished_escapes_are_never_cut() {
        assert_eq!(unit_len(b"\\", 0), 2);
        assert_eq!(unit_len(b"\\u00", 0), 6);
        assert_eq!(unit_len(b"\\uD83D", 0), 12);
        assert_eq!(unit_len(b"\\uD83D\\u", 0), 12);
        assert_eq!(unit_len(b"\\uD83Dx", 0), 6);
        assert_eq!(unit_len(b"\\u0040", 0), 6);
        assert_eq!(unit_len(b"\\uD83D\\uDE00", 0), 12);
        assert_eq!(unit_len(b"\\n", 0), 2);
        assert_eq!(unit_len(b"a", 0), 1);
    }

    #[test]
    fn stream_decoding_equals_one_shot_for_any_cut() {
        let raw = br#"x \u0034\u0031 \uD83D\uDE00 \\ \/ \u12 end\"#;
        let whole = unescape_bytes(raw).into_owned();
        for cut in 0..=raw.len() {
            for cut2 in cut..=raw.len() {
                let mut d = EscapeDecoder::default();
                let mut out = Vec::new();
                d.push(&raw[..cut], &mut out);
                d.push(&raw[cut..cut2], &mut out);
                d.push(&raw[cut2..], &mut out);
                d.finish(&mut out);
                assert_eq!(out, whole, "cuts {cut} {cut2}");
            }
        }
    }
}
