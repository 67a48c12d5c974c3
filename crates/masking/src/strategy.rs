//! Replacement text for a match: what each [`Strategy`] writes.
//!
//! Every replacement is built so that masking it again changes nothing (idempotence): redact and
//! keyed-hash tokens contain no digit, `@`, `=`, `:` or literal anchor, and keyed-hash tokens
//! spell the digest with the letters `a`–`p` only, so no numeric detector can fire on them.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::config::Strategy;

/// Writes the replacement of `value` under `strategy` into `out`.
pub(crate) fn write_replacement(
    strategy: &Strategy,
    label: &str,
    hmac_key: Option<&[u8]>,
    value: &[u8],
    json_safe: bool,
    out: &mut Vec<u8>,
) {
    match strategy {
        // A `detect` column rule replaces only values derived from its column, whole.
        Strategy::Redact | Strategy::Detect => {
            out.push(b'[');
            out.extend_from_slice(label.as_bytes());
            out.push(b']');
        }
        Strategy::Partial => write_partial(value, json_safe, out),
        Strategy::KeyedHash => {
            out.push(b'[');
            out.extend_from_slice(label.as_bytes());
            out.push(b'#');
            // A missing key is refused when the profile is built; this branch only guards the
            // invariant (a constant token, never the value).
            let digest = hmac_key.and_then(|key| {
                let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).ok()?;
                mac.update(value);
                Some(mac.finalize().into_bytes())
            });
            match digest {
                Some(d) => {
                    for &b in d.iter().take(8) {
                        out.push(b'a' + (b >> 4));
                        out.push(b'a' + (b & 0x0f));
                    }
                }
                None => out.extend_from_slice(b"unkeyed"),
            }
            out.push(b']');
        }
        Strategy::Placeholder(text) => out.extend_from_slice(text.as_bytes()),
    }
}

/// `*` for every character but the last four (UTF-8 aware; in JSON, all stars when the kept tail
/// would hold an escape sequence).
fn write_partial(value: &[u8], json_safe: bool, out: &mut Vec<u8>) {
    let is_start = |b: &u8| !(0x80..=0xbf).contains(b);
    let chars = value.iter().filter(|b| is_start(b)).count();
    let keep = chars.min(4);
    let stars = chars - keep;
    let mut seen = 0;
    let mut tail_at = value.len();
    for (i, b) in value.iter().enumerate() {
        if is_start(b) {
            if seen == stars {
                tail_at = i;
                break;
            }
            seen += 1;
        }
    }
    let tail = value.get(tail_at..).unwrap_or(&[]);
    let json_bad = json_safe && tail.iter().any(|&b| b == b'\\' || b == b'"' || b < 0x20);
    if chars <= 4 || json_bad {
        out.extend(std::iter::repeat_n(b'*', chars.max(1)));
        return;
    }
    out.extend(std::iter::repeat_n(b'*', stars));
    out.extend_from_slice(tail);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rep(s: &Strategy, v: &str) -> String {
        let mut out = Vec::new();
        write_replacement(s, "card", Some(b"k"), v.as_bytes(), false, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn strategies() {
        assert_eq!(rep(&Strategy::Redact, "4111111111111111"), "[card]");
        assert_eq!(
            rep(&Strategy::Partial, "4111111111111111"),
            "************1111"
        );
        assert_eq!(rep(&Strategy::Partial, "abc"), "***");
        assert_eq!(rep(&Strategy::Partial, "žluťoučký"), "*****učký");
        assert_eq!(rep(&Strategy::Placeholder("XX".into()), "a"), "XX");
        let h1 = rep(&Strategy::KeyedHash, "a@b.co");
        assert_eq!(h1, rep(&Strategy::KeyedHash, "a@b.co"), "joinable");
        assert_ne!(h1, rep(&Strategy::KeyedHash, "a@b.cz"));
        assert!(h1.starts_with("[card#") && h1.len() == "[card#]".len() + 16);
        assert!(!h1.bytes().any(|b| b.is_ascii_digit()));
    }
}
