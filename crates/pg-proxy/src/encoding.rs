//! Client encodings. PostgreSQL converts a statement from the session's `client_encoding` to the
//! server's encoding before it reads a single token, so the gateway does the same: it decodes
//! the statement exactly (strictly: an invalid sequence is refused, never replaced) and reads the
//! decoded text. That matters most for client-only encodings (SJIS, BIG5, GBK, UHC, GB18030)
//! whose multi-byte characters may end in an ASCII byte such as `\` or `'`: read as bytes, such a
//! trail byte would be taken for an escape or a quote.
//!
//! Text the gateway writes to the client (its own errors, masked values, rewritten statements)
//! is encoded back into the session's encoding. An encoding the gateway cannot decode exactly
//! (`JOHAB`, `EUC_TW`, `EUC_JIS_2004`, `SHIFT_JIS_2004`, `MULE_INTERNAL`, `LATIN5`) is refused.

use std::borrow::Cow;

/// How text is decoded and encoded in one client encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Codec {
    /// UTF-8 (and SQL_ASCII against a UTF-8 server, which validates input as UTF-8).
    Utf8,
    /// ISO 8859-1: each byte is the code point of the same number.
    Latin1,
    /// Decoded and encoded by `encoding_rs`.
    Other(&'static encoding_rs::Encoding),
}

/// PostgreSQL's name for an encoding, normalised the way the server compares them
/// (`clean_encoding_name`): only ASCII letters and digits count, case ignored — asyncpg sends
/// `'utf-8'`, quotes included.
fn normalise(name: &str) -> String {
    name.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

impl Codec {
    /// The codec for a `client_encoding` value (as the server reports it, or an alias), or
    /// `None` when the gateway cannot decode it exactly.
    pub(crate) fn for_name(name: &str) -> Option<Codec> {
        use encoding_rs as e;
        Some(match normalise(name).as_str() {
            "UTF8" | "UNICODE" | "SQLASCII" => Codec::Utf8,
            "LATIN1" | "ISO88591" => Codec::Latin1,
            "LATIN2" | "ISO88592" => Codec::Other(e::ISO_8859_2),
            "LATIN3" | "ISO88593" => Codec::Other(e::ISO_8859_3),
            "LATIN4" | "ISO88594" => Codec::Other(e::ISO_8859_4),
            "LATIN6" | "ISO885910" => Codec::Other(e::ISO_8859_10),
            "LATIN7" | "ISO885913" => Codec::Other(e::ISO_8859_13),
            "LATIN8" | "ISO885914" => Codec::Other(e::ISO_8859_14),
            "LATIN9" | "ISO885915" => Codec::Other(e::ISO_8859_15),
            "LATIN10" | "ISO885916" => Codec::Other(e::ISO_8859_16),
            "ISO88595" => Codec::Other(e::ISO_8859_5),
            "ISO88596" => Codec::Other(e::ISO_8859_6),
            "ISO88597" => Codec::Other(e::ISO_8859_7),
            "ISO88598" => Codec::Other(e::ISO_8859_8),
            "WIN866" | "ALT" => Codec::Other(e::IBM866),
            "WIN874" => Codec::Other(e::WINDOWS_874),
            "WIN1250" => Codec::Other(e::WINDOWS_1250),
            "WIN1251" | "WIN" => Codec::Other(e::WINDOWS_1251),
            "WIN1252" => Codec::Other(e::WINDOWS_1252),
            "WIN1253" => Codec::Other(e::WINDOWS_1253),
            "WIN1254" => Codec::Other(e::WINDOWS_1254),
            "WIN1255" => Codec::Other(e::WINDOWS_1255),
            "WIN1256" => Codec::Other(e::WINDOWS_1256),
            "WIN1257" => Codec::Other(e::WINDOWS_1257),
            "WIN1258" | "ABC" | "TCVN" | "TCVN5712" => Codec::Other(e::WINDOWS_1258),
            "KOI8R" | "KOI8" => Codec::Other(e::KOI8_R),
            "KOI8U" => Codec::Other(e::KOI8_U),
            "EUCJP" => Codec::Other(e::EUC_JP),
            "EUCKR" => Codec::Other(e::EUC_KR),
            "EUCCN" => Codec::Other(e::GBK),
            "SJIS" | "MSKANJI" | "SHIFTJIS" | "WIN932" | "WINDOWS932" => Codec::Other(e::SHIFT_JIS),
            "BIG5" | "WIN950" | "WINDOWS950" => Codec::Other(e::BIG5),
            "GBK" | "WIN936" | "WINDOWS936" => Codec::Other(e::GBK),
            "UHC" | "WIN949" | "WINDOWS949" => Codec::Other(e::EUC_KR),
            "GB18030" => Codec::Other(e::GB18030),
            _ => return None,
        })
    }

    /// Whether text in this encoding is UTF-8 as it is.
    pub(crate) fn is_utf8(self) -> bool {
        self == Codec::Utf8
    }

    /// Decodes `bytes` exactly; `None` when they are not valid in this encoding.
    pub(crate) fn decode(self, bytes: &[u8]) -> Option<Cow<'_, str>> {
        match self {
            Codec::Utf8 => std::str::from_utf8(bytes).ok().map(Cow::Borrowed),
            Codec::Latin1 => Some(if bytes.is_ascii() {
                Cow::Borrowed(std::str::from_utf8(bytes).ok()?)
            } else {
                Cow::Owned(bytes.iter().map(|&b| char::from(b)).collect())
            }),
            Codec::Other(enc) => enc.decode_without_bom_handling_and_without_replacement(bytes),
        }
    }

    /// Decodes `bytes`, replacing what is not valid (text the server sent, shown to a person).
    pub(crate) fn decode_lossy(self, bytes: &[u8]) -> Cow<'_, str> {
        match self {
            Codec::Utf8 => String::from_utf8_lossy(bytes),
            Codec::Latin1 => self.decode(bytes).unwrap_or_default(),
            Codec::Other(enc) => enc.decode_without_bom_handling(bytes).0,
        }
    }

    /// Encodes `text`; a character the encoding cannot represent becomes `?`.
    pub(crate) fn encode(self, text: &str) -> Cow<'_, [u8]> {
        match self {
            Codec::Utf8 => Cow::Borrowed(text.as_bytes()),
            _ if text.is_ascii() => Cow::Borrowed(text.as_bytes()),
            Codec::Latin1 => Cow::Owned(
                text.chars()
                    .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
                    .collect(),
            ),
            Codec::Other(enc) => {
                let mut out = Vec::with_capacity(text.len());
                let mut encoder = enc.new_encoder();
                let mut rest = text;
                loop {
                    let mut buf = [0u8; 256];
                    let (result, read, written) =
                        encoder.encode_from_utf8_without_replacement(rest, &mut buf, true);
                    out.extend_from_slice(buf.get(..written).unwrap_or_default());
                    rest = rest.get(read..).unwrap_or_default();
                    match result {
                        encoding_rs::EncoderResult::InputEmpty => break,
                        encoding_rs::EncoderResult::OutputFull => {}
                        encoding_rs::EncoderResult::Unmappable(_) => out.push(b'?'),
                    }
                }
                Cow::Owned(out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_and_aliases_resolve_as_the_server_compares_them() {
        assert_eq!(Codec::for_name("UTF8"), Some(Codec::Utf8));
        assert_eq!(Codec::for_name("utf-8"), Some(Codec::Utf8));
        assert_eq!(Codec::for_name("'utf-8'"), Some(Codec::Utf8));
        assert_eq!(
            Codec::for_name("latin9"),
            Some(Codec::Other(encoding_rs::ISO_8859_15))
        );
        assert_eq!(
            Codec::for_name("Shift_JIS"),
            Some(Codec::Other(encoding_rs::SHIFT_JIS))
        );
        for unsupported in [
            "JOHAB",
            "EUC_TW",
            "EUC_JIS_2004",
            "SHIFT_JIS_2004",
            "MULE_INTERNAL",
            "LATIN5",
            "nonsense",
        ] {
            assert_eq!(Codec::for_name(unsupported), None, "{unsupported}");
        }
    }

    #[test]
    fn a_trail_byte_that_is_a_backslash_stays_inside_its_character() {
        // SJIS 0x95 0x5C is 表: its second byte is ASCII '\'.
        let sjis = Codec::for_name("SJIS").unwrap();
        let text = sjis.decode(b"SELECT '\x95\x5c'").unwrap();
        assert_eq!(text, "SELECT '表'");
        assert_eq!(&sjis.encode(&text)[..], b"SELECT '\x95\x5c'");
        // BIG5 0xA5 0x5C is 功.
        let big5 = Codec::for_name("BIG5").unwrap();
        assert_eq!(big5.decode(b"\xa5\x5c").unwrap(), "功");
        // An invalid sequence is refused, not replaced.
        assert!(sjis.decode(b"\x81").is_none());
        assert!(Codec::Utf8.decode(b"\xff").is_none());
    }

    #[test]
    fn single_byte_encodings_round_trip_and_unmappable_characters_become_question_marks() {
        let latin9 = Codec::for_name("LATIN9").unwrap();
        assert_eq!(latin9.decode(b"\xa4").unwrap(), "€");
        assert_eq!(&latin9.encode("€ and 表")[..], b"\xa4 and ?");
        let latin1 = Codec::Latin1;
        assert_eq!(latin1.decode(b"caf\xe9").unwrap(), "café");
        assert_eq!(&latin1.encode("café €")[..], b"caf\xe9 ?");
    }
}
