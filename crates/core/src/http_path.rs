//! HTTP path canonicalisation: the one form of a request path that the policy decides on and the
//! upstream receives.
//!
//! Promises (each property-tested):
//! - percent-encodings of characters that need none are decoded (`%61dmin` → `admin`), the rest
//!   are written with upper-case hex, so equivalent spellings canonicalise identically;
//! - dot segments (`.`, `..`, also spelled `%2e`, `.%2E`, …) are resolved and can never climb above
//!   the root; empty segments (`//`) are removed; a trailing slash is kept;
//! - encoded separators `%2F` and `%5C` (and a raw `\`) stay opaque (`%2F`, `%5C`): they never
//!   become path separators here, and the result reports that they were present so a proxy can
//!   refuse them;
//! - Tomcat-style `..;param` segments and encoded control characters (`%00`) are refused rather
//!   than guessed;
//! - the function is idempotent.

use serde::{Deserialize, Serialize};

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("path must start with '/'")]
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    #[error("invalid percent-encoding at byte {0}")]
    InvalidPercentEncoding(usize),
    /// A control character (raw or encoded, e.g. `%00`).
    #[error("control character in path")]
    ControlCharacter,
    /// A dot segment with a `;` parameter (`..;x`), which some servers treat as `..`.
    #[error("ambiguous dot segment with parameters")]
    AmbiguousDotSegment,
}

/// A canonical path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanonicalPath {
    /// The canonical path, starting with `/`.
    pub path: String,
    /// Whether an encoded `/` or `\` (or a raw `\`) was present (kept opaque as `%2F` / `%5C`).
    pub encoded_separator: bool,
}

/// One decoded path byte: either a plain byte or an opaque separator that must stay encoded.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PathByte {
    Plain(u8),
    Opaque(u8),
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Whether a byte may appear literally in a canonical path segment (RFC 3986 `pchar` minus `%`).
fn is_literal(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
}

/// Canonicalises the path part of a request target (no query string).
pub fn canonicalize(raw: &str) -> Result<CanonicalPath, PathError> {
    let Some(rest) = raw.strip_prefix('/') else {
        return Err(PathError::NotAbsolute);
    };
    let mut encoded_separator = false;
    let mut segments: Vec<Vec<PathByte>> = Vec::new();
    let mut trailing_slash = false;
    let mut offset = 1;
    let raw_segments: Vec<&str> = rest.split('/').collect();
    let count = raw_segments.len();
    for (index, raw_seg) in raw_segments.into_iter().enumerate() {
        let last = index + 1 == count;
        let seg = decode_segment(raw_seg, offset, &mut encoded_separator)?;
        offset += raw_seg.len() + 1;
        match classify(&seg)? {
            SegmentKind::Empty | SegmentKind::Dot => {}
            SegmentKind::DotDot => {
                segments.pop();
            }
            SegmentKind::Name => {
                segments.push(seg);
                if last {
                    trailing_slash = false;
                }
                continue;
            }
        }
        if last {
            trailing_slash = true;
        }
    }
    let mut path = String::with_capacity(raw.len());
    for seg in &segments {
        path.push('/');
        for pb in seg {
            match *pb {
                PathByte::Plain(b) if is_literal(b) => path.push(char::from(b)),
                PathByte::Plain(b) | PathByte::Opaque(b) => {
                    path.push('%');
                    path.push_str(&format!("{b:02X}"));
                }
            }
        }
    }
    if segments.is_empty() || trailing_slash {
        path.push('/');
    }
    Ok(CanonicalPath {
        path,
        encoded_separator,
    })
}

/// Percent-decodes one raw segment, keeping encoded separators opaque.
fn decode_segment(
    raw: &str,
    offset: usize,
    encoded_separator: &mut bool,
) -> Result<Vec<PathByte>, PathError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex_val);
            let lo = bytes.get(i + 2).copied().and_then(hex_val);
            let (Some(h), Some(l)) = (hi, lo) else {
                return Err(PathError::InvalidPercentEncoding(offset + i));
            };
            let v = h * 16 + l;
            if v == b'/' || v == b'\\' {
                *encoded_separator = true;
                out.push(PathByte::Opaque(v));
            } else if v < 0x20 || v == 0x7f {
                return Err(PathError::ControlCharacter);
            } else {
                out.push(PathByte::Plain(v));
            }
            i += 3;
            continue;
        }
        if b < 0x20 || b == 0x7f {
            return Err(PathError::ControlCharacter);
        }
        if b == b'\\' {
            *encoded_separator = true;
            out.push(PathByte::Opaque(b));
        } else {
            out.push(PathByte::Plain(b));
        }
        i += 1;
    }
    Ok(out)
}

enum SegmentKind {
    Empty,
    Dot,
    DotDot,
    Name,
}

/// Classifies a decoded segment; refuses `..;x`-style segments that some servers treat as `..`.
fn classify(seg: &[PathByte]) -> Result<SegmentKind, PathError> {
    const DOT: PathByte = PathByte::Plain(b'.');
    match seg {
        [] => return Ok(SegmentKind::Empty),
        [DOT] => return Ok(SegmentKind::Dot),
        [DOT, DOT] => return Ok(SegmentKind::DotDot),
        _ => {}
    }
    let before_param = seg
        .split(|pb| *pb == PathByte::Plain(b';'))
        .next()
        .unwrap_or(&[]);
    if seg.contains(&PathByte::Plain(b';')) && matches!(before_param, [DOT] | [DOT, DOT]) {
        return Err(PathError::AmbiguousDotSegment);
    }
    Ok(SegmentKind::Name)
}

/// Splits a request target into (path, query) at the first `?`.
pub fn split_target(target: &str) -> (&str, Option<&str>) {
    match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(p: &str) -> String {
        canonicalize(p).unwrap().path
    }

    #[test]
    fn examples() {
        assert_eq!(c("/"), "/");
        assert_eq!(c("/api/users"), "/api/users");
        assert_eq!(c("/api/users/"), "/api/users/");
        assert_eq!(c("/api/../admin"), "/admin");
        assert_eq!(c("/api/%2e%2e/admin"), "/admin");
        assert_eq!(c("/api/.%2E/admin"), "/admin");
        assert_eq!(c("//admin"), "/admin");
        assert_eq!(c("/a//b///c"), "/a/b/c");
        assert_eq!(c("/../../etc/passwd"), "/etc/passwd");
        assert_eq!(c("/%61dmin"), "/admin");
        assert_eq!(c("/a/./b/."), "/a/b/");
        assert_eq!(c("/a/b/.."), "/a/");
        assert_eq!(c("/a%20b"), "/a%20b");
        assert_eq!(c("/a%7eb"), "/a~b");
        assert_eq!(c("/caf%c3%a9"), "/caf%C3%A9");
        assert_eq!(c("/Admin"), "/Admin");
    }

    #[test]
    fn encoded_separators_stay_opaque() {
        let p = canonicalize("/api/users%2F..%2Fadmin").unwrap();
        assert_eq!(p.path, "/api/users%2F..%2Fadmin");
        assert!(p.encoded_separator);
        let p = canonicalize("/api\\..\\admin").unwrap();
        assert_eq!(p.path, "/api%5C..%5Cadmin");
        assert!(p.encoded_separator);
        assert!(!canonicalize("/api/x").unwrap().encoded_separator);
    }

    #[test]
    fn refusals() {
        assert_eq!(canonicalize("api"), Err(PathError::NotAbsolute));
        assert_eq!(canonicalize(""), Err(PathError::NotAbsolute));
        assert_eq!(
            canonicalize("/a%zz"),
            Err(PathError::InvalidPercentEncoding(2))
        );
        assert_eq!(
            canonicalize("/a%2"),
            Err(PathError::InvalidPercentEncoding(2))
        );
        assert_eq!(canonicalize("/a%00b"), Err(PathError::ControlCharacter));
        assert_eq!(canonicalize("/a\nb"), Err(PathError::ControlCharacter));
        assert_eq!(
            canonicalize("/api/..;/admin"),
            Err(PathError::AmbiguousDotSegment)
        );
        assert_eq!(
            canonicalize("/api/.;x/admin"),
            Err(PathError::AmbiguousDotSegment)
        );
    }

    #[test]
    fn split() {
        assert_eq!(split_target("/a?b=c?d"), ("/a", Some("b=c?d")));
        assert_eq!(split_target("/a"), ("/a", None));
    }
}
