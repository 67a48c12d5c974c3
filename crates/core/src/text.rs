//! Is a byte stream text? A streaming check that chunk boundaries cannot fool.
//!
//! A stream is *text* while every byte so far is valid UTF-8 without NUL. Once a NUL byte or an
//! invalid sequence is seen the stream is binary for good, and a stream that ends inside a
//! multi-byte character is binary too. A character split across chunks is judged when its last
//! byte arrives, so splitting binary data so that each chunk looks like text changes nothing.
//! Masking rewrites text only; what this calls binary is refused or passed raw, never rewritten.

/// Streaming text/binary classifier (see the module docs).
#[derive(Debug, Default, Clone)]
pub struct TextDetector {
    /// The start of a character whose remaining bytes have not arrived yet (at most 3 bytes).
    pending: Vec<u8>,
    binary: bool,
}

/// Bytes in a UTF-8 sequence that starts with `lead` (1 for a byte that cannot start one).
fn sequence_len(lead: u8) -> usize {
    match lead {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => 1,
    }
}

impl TextDetector {
    /// A detector that has seen nothing (an empty stream is text).
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next chunk; returns whether the stream is still text.
    pub fn push(&mut self, data: &[u8]) -> bool {
        self.push_at(data).is_none()
    }

    /// Feeds the next chunk and says where it stops being text: `None` while the stream is
    /// text; `Some(i)` when byte `i` of `data` starts the first byte that is not text. `Some(0)`
    /// also when the character begun at the end of an earlier chunk (see [`Self::pending`]) is
    /// broken: those earlier bytes are then not text either. Once binary, always `Some(0)`.
    pub fn push_at(&mut self, data: &[u8]) -> Option<usize> {
        if self.binary {
            return Some(0);
        }
        let mut base = 0;
        let mut data = data;
        if let Some(&lead) = self.pending.first() {
            let need = sequence_len(lead);
            let take = need.saturating_sub(self.pending.len()).min(data.len());
            let (head, rest) = data.split_at(take);
            if head.contains(&0) {
                self.binary = true;
                return Some(0);
            }
            self.pending.extend_from_slice(head);
            if self.pending.len() < need {
                return None;
            }
            if std::str::from_utf8(&self.pending).is_err() {
                self.binary = true;
                return Some(0);
            }
            self.pending.clear();
            data = rest;
            base = take;
        }
        let at = match memchr_nul(data) {
            Some(n) => {
                let before = data.get(..n).unwrap_or_default();
                Some(match std::str::from_utf8(before) {
                    Ok(_) => n,
                    Err(e) => e.valid_up_to(),
                })
            }
            None => match std::str::from_utf8(data) {
                Ok(_) => None,
                // Cut short at the end of the chunk: wait for the rest of the character.
                Err(e) if e.error_len().is_none() => {
                    self.pending = data.get(e.valid_up_to()..).unwrap_or_default().to_vec();
                    None
                }
                Err(e) => Some(e.valid_up_to()),
            },
        };
        let at = at?;
        self.binary = true;
        Some(base + at)
    }

    /// How many bytes at the end of what was pushed start a character whose rest has not
    /// arrived yet (0 to 3): not yet known to be text.
    pub fn pending(&self) -> usize {
        if self.binary { 0 } else { self.pending.len() }
    }

    /// The stream ended: it is text only if it did not stop inside a character.
    pub fn finish(&mut self) -> bool {
        if !self.pending.is_empty() {
            self.binary = true;
        }
        !self.binary
    }

    /// Whether binary data has been seen.
    pub fn is_binary(&self) -> bool {
        self.binary
    }
}

fn memchr_nul(data: &[u8]) -> Option<usize> {
    data.iter().position(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(data: &[u8]) -> bool {
        let mut d = TextDetector::new();
        d.push(data) && d.finish()
    }

    fn split_everywhere(data: &[u8]) -> bool {
        let expected = whole(data);
        for cut in 0..=data.len() {
            let (a, b) = data.split_at(cut);
            let mut d = TextDetector::new();
            d.push(a);
            d.push(b);
            assert_eq!(d.finish(), expected, "cut at {cut} of {data:?}");
        }
        // One byte at a time.
        let mut d = TextDetector::new();
        for b in data {
            d.push(std::slice::from_ref(b));
        }
        assert_eq!(d.finish(), expected, "bytewise {data:?}");
        expected
    }

    #[test]
    fn text_stays_text_however_it_is_cut() {
        for s in [
            "",
            "hello\n",
            "žluťoučký kůň\r\n",
            "日本語",
            "emoji 🦀 ok",
            "\x1b[1mbold\x1b[0m\t",
        ] {
            assert!(split_everywhere(s.as_bytes()), "{s}");
        }
    }

    #[test]
    fn binary_is_binary_however_it_is_cut() {
        let cases: [&[u8]; 8] = [
            b"text\0more",
            b"\xff",
            b"abc\xc3",          // ends inside a character
            b"\xe2\x82",         // ends inside a character
            b"\xc0\xaf",         // overlong
            b"\xed\xa0\x80",     // surrogate
            b"\xf4\x90\x80\x80", // beyond U+10FFFF
            b"z@v.Oe\x8f\x01\x02",
        ];
        for c in cases {
            assert!(!split_everywhere(c), "{c:?}");
        }
    }

    #[test]
    fn binary_once_is_binary_for_good() {
        let mut d = TextDetector::new();
        assert!(d.push(b"plain text "));
        assert!(!d.push(b"\xff"));
        assert!(!d.push(b"plain again"));
        assert!(!d.finish());
        assert!(d.is_binary());
    }

    #[test]
    fn random_bytes_are_binary() {
        // xorshift: deterministic, no dependency.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let data: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        assert!(!whole(&data));
    }

    #[test]
    fn push_at_says_where_text_stops() {
        let mut d = TextDetector::new();
        assert_eq!(d.push_at(b"mail a@b.c\n\0rest"), Some(11));
        let mut d = TextDetector::new();
        assert_eq!(d.push_at(b"ok \xe2\x82"), None);
        assert_eq!(d.pending(), 2);
        assert_eq!(d.push_at(b"\xac euro \xff"), Some(7));
        let mut d = TextDetector::new();
        assert_eq!(d.push_at(b"ok \xe2\x82"), None);
        assert_eq!(d.push_at(b"x"), Some(0));
        let mut d = TextDetector::new();
        assert_eq!(d.push_at(b"\xe2"), None);
        assert_eq!(d.push_at(b"\0"), Some(0));
        let mut d = TextDetector::new();
        assert_eq!(d.push_at(b"caf\xc3\0"), Some(3));
    }
}
