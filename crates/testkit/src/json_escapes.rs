//! JSON escapes decoded the way a reader of a response or a record would: tests that assert a
//! value is nowhere readable check the decoded text, not just the raw bytes.

/// `s` with JSON escapes decoded, repeatedly (a recording nests JSON in JSON strings): what any
/// reader of the caller's response or of the record could recover.
pub fn decode_json_escapes(s: &str) -> String {
    let mut cur = s.to_string();
    for _ in 0..4 {
        let b = cur.as_bytes();
        let mut units: Vec<u16> = Vec::new();
        let mut out = String::new();
        let flush = |units: &mut Vec<u16>, out: &mut String| {
            out.extend(char::decode_utf16(units.drain(..)).map(|c| c.unwrap_or('\u{FFFD}')));
        };
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'\\'
                && b.get(i + 1) == Some(&b'u')
                && let Some(u) = cur
                    .get(i + 2..i + 6)
                    .and_then(|h| u16::from_str_radix(h, 16).ok())
            {
                units.push(u);
                i += 6;
                continue;
            }
            flush(&mut units, &mut out);
            if b[i] == b'\\' && matches!(b.get(i + 1), Some(b'/' | b'\\' | b'"')) {
                out.push(b[i + 1] as char);
                i += 2;
                continue;
            }
            let ch = cur[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
        flush(&mut units, &mut out);
        if out == cur {
            break;
        }
        cur = out;
    }
    cur
}
