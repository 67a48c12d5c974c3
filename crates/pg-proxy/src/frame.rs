//! Length-checking framer for PostgreSQL v3 messages: the only code that reads a length prefix.
//!
//! Promise: a frame is returned only when all of its declared bytes are buffered and the declared
//! length is within `[4, max]`; nothing here panics on hostile input. Message bodies are then read
//! with [`BodyReader`], which bounds-checks every field. pgwire's decoders are never handed bytes
//! that did not pass through here.

use bytes::{Buf, Bytes, BytesMut};

/// Why bytes could not be framed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix is below the 4 bytes it must count itself.
    #[error("invalid message length {0}")]
    LengthTooShort(i64),
    /// The length prefix exceeds the configured maximum.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Declared length.
        len: usize,
        /// Configured limit.
        max: usize,
    },
    /// A startup-phase packet that is none of startup, SSL, GSS or cancel request.
    #[error("unsupported protocol version {major}.{minor}")]
    UnsupportedProtocol {
        /// Major version requested.
        major: u16,
        /// Minor version requested.
        minor: u16,
    },
    /// A message body is shorter than its fields say, or a string is not terminated.
    #[error("malformed {0} message")]
    Malformed(&'static str),
}

/// The largest startup-phase packet PostgreSQL itself accepts (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_PACKET: usize = 10_000;

const SSL_REQUEST_CODE: u32 = 80_877_103;
const GSSENC_REQUEST_CODE: u32 = 80_877_104;
const CANCEL_REQUEST_CODE: u32 = 80_877_102;

/// A packet of the untyped startup phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// `SSLRequest`: the client wants TLS.
    SslRequest,
    /// `GSSENCRequest`: the client wants GSSAPI encryption (always refused).
    GssEncRequest,
    /// `CancelRequest` with the key the client was given.
    CancelRequest {
        /// Process id from BackendKeyData.
        pid: i32,
        /// Secret key bytes (4 bytes in protocol 3.0, up to 256 in 3.2).
        secret: Bytes,
    },
    /// `StartupMessage`.
    Startup {
        /// Requested major protocol version (3).
        major: u16,
        /// Requested minor protocol version.
        minor: u16,
        /// Parameter pairs in the order sent.
        parameters: Vec<(String, String)>,
    },
}

/// Decodes one startup-phase packet from `buf`, or `Ok(None)` if more bytes are needed.
pub fn decode_startup(buf: &mut BytesMut) -> Result<Option<StartupPacket>, FrameError> {
    let Some(len) = peek_len(buf, 0)? else {
        return Ok(None);
    };
    if len < 8 {
        return Err(FrameError::LengthTooShort(len as i64));
    }
    if len > MAX_STARTUP_PACKET {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_STARTUP_PACKET,
        });
    }
    if buf.len() < len {
        return Ok(None);
    }
    let mut packet = buf.split_to(len).freeze();
    packet.advance(4);
    let code = packet.get_u32();
    match code {
        SSL_REQUEST_CODE if packet.is_empty() => Ok(Some(StartupPacket::SslRequest)),
        GSSENC_REQUEST_CODE if packet.is_empty() => Ok(Some(StartupPacket::GssEncRequest)),
        CANCEL_REQUEST_CODE => {
            if packet.len() < 8 || packet.len() > 4 + 256 {
                return Err(FrameError::Malformed("CancelRequest"));
            }
            let pid = packet.get_i32();
            Ok(Some(StartupPacket::CancelRequest {
                pid,
                secret: packet,
            }))
        }
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xffff) as u16;
            if major != 3 {
                return Err(FrameError::UnsupportedProtocol { major, minor });
            }
            let mut reader = BodyReader::new(packet, "StartupMessage");
            let mut parameters = Vec::new();
            loop {
                let key = reader.cstr()?;
                if key.is_empty() {
                    break;
                }
                let value = reader.cstr()?;
                parameters.push((
                    String::from_utf8_lossy(&key).into_owned(),
                    String::from_utf8_lossy(&value).into_owned(),
                ));
            }
            Ok(Some(StartupPacket::Startup {
                major,
                minor,
                parameters,
            }))
        }
    }
}

/// One typed message: its tag byte and its body (without tag and length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Message type byte, e.g. `b'Q'`.
    pub tag: u8,
    /// Body bytes.
    pub body: Bytes,
}

impl Frame {
    /// Appends the frame (tag, length, body) to `out`.
    pub fn encode_into(&self, out: &mut BytesMut) {
        encode_frame(self.tag, &self.body, out);
    }
}

/// Appends a typed message with `tag` and `body` to `out`.
pub fn encode_frame(tag: u8, body: &[u8], out: &mut BytesMut) {
    out.reserve(5 + body.len());
    out.extend_from_slice(&[tag]);
    // Bodies come from frames already bounded by the framer's limit (< 2^31) or from messages the
    // gateway builds itself, so the length fits.
    let len = u32::try_from(body.len() + 4).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
}

/// Decodes one typed message from `buf` with a body limit of `max` bytes, or `Ok(None)` if more
/// bytes are needed.
pub fn decode_frame(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, FrameError> {
    let Some(len) = peek_len(buf, 1)? else {
        return Ok(None);
    };
    if len < 4 {
        return Err(FrameError::LengthTooShort(len as i64));
    }
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    if buf.len() < len + 1 {
        // Reserve what the declared (already bounded) length needs, so reads don't grow piecemeal.
        buf.reserve(len + 1 - buf.len());
        return Ok(None);
    }
    let tag = buf.get_u8();
    let mut body = buf.split_to(len).freeze();
    body.advance(4);
    Ok(Some(Frame { tag, body }))
}

/// Reads the i32 length at `offset`; a negative length is an error.
fn peek_len(buf: &BytesMut, offset: usize) -> Result<Option<usize>, FrameError> {
    let Some(bytes) = buf.get(offset..offset + 4) else {
        return Ok(None);
    };
    let raw = i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if raw < 0 {
        return Err(FrameError::LengthTooShort(i64::from(raw)));
    }
    Ok(Some(raw as usize))
}

/// Bounds-checked reader over one message body. Every accessor returns
/// [`FrameError::Malformed`] instead of panicking when the body is too short.
#[derive(Debug, Clone)]
pub struct BodyReader {
    body: Bytes,
    what: &'static str,
}

impl BodyReader {
    /// A reader over `body`, naming the message `what` in errors.
    pub fn new(body: Bytes, what: &'static str) -> Self {
        Self { body, what }
    }

    fn malformed(&self) -> FrameError {
        FrameError::Malformed(self.what)
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.body.len()
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, FrameError> {
        if self.body.is_empty() {
            return Err(self.malformed());
        }
        Ok(self.body.get_u8())
    }

    /// A big-endian i16.
    pub fn i16(&mut self) -> Result<i16, FrameError> {
        if self.body.len() < 2 {
            return Err(self.malformed());
        }
        Ok(self.body.get_i16())
    }

    /// A big-endian i32.
    pub fn i32(&mut self) -> Result<i32, FrameError> {
        if self.body.len() < 4 {
            return Err(self.malformed());
        }
        Ok(self.body.get_i32())
    }

    /// A big-endian u32.
    pub fn u32(&mut self) -> Result<u32, FrameError> {
        if self.body.len() < 4 {
            return Err(self.malformed());
        }
        Ok(self.body.get_u32())
    }

    /// A NUL-terminated string, without the NUL.
    pub fn cstr(&mut self) -> Result<Bytes, FrameError> {
        let Some(end) = memchr::memchr(0, &self.body) else {
            return Err(self.malformed());
        };
        let s = self.body.split_to(end);
        self.body.advance(1);
        Ok(s)
    }

    /// A NUL-terminated string that must be UTF-8.
    pub fn cstring(&mut self) -> Result<String, FrameError> {
        let raw = self.cstr()?;
        String::from_utf8(raw.to_vec()).map_err(|_| self.malformed())
    }

    /// `n` raw bytes.
    pub fn bytes(&mut self, n: usize) -> Result<Bytes, FrameError> {
        if self.body.len() < n {
            return Err(self.malformed());
        }
        Ok(self.body.split_to(n))
    }

    /// An i32-length-prefixed value: `None` for length -1 (SQL NULL).
    pub fn value(&mut self) -> Result<Option<Bytes>, FrameError> {
        let len = self.i32()?;
        if len == -1 {
            return Ok(None);
        }
        let len = usize::try_from(len).map_err(|_| self.malformed())?;
        self.bytes(len).map(Some)
    }

    /// Everything left.
    pub fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.body)
    }

    /// Errors unless the body has been read completely.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.body.is_empty() {
            Ok(())
        } else {
            Err(self.malformed())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(tag: u8, body: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        encode_frame(tag, body, &mut b);
        b
    }

    #[test]
    fn frames_a_complete_message_and_waits_for_a_partial_one() {
        let mut buf = typed(b'Q', b"select 1\0");
        let full = buf.clone();
        let mut partial = BytesMut::from(&full[..6]);
        assert_eq!(decode_frame(&mut partial, 1024).unwrap(), None);
        let f = decode_frame(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(f.tag, b'Q');
        assert_eq!(&f.body[..], b"select 1\0");
        assert!(buf.is_empty());
    }

    #[test]
    fn rejects_lengths_below_four_and_negative() {
        for len in [0i32, 1, 3, -1, i32::MIN] {
            let mut buf = BytesMut::new();
            buf.extend_from_slice(b"p");
            buf.extend_from_slice(&len.to_be_bytes());
            assert!(matches!(
                decode_frame(&mut buf, 1024),
                Err(FrameError::LengthTooShort(_))
            ));
        }
    }

    #[test]
    fn rejects_a_two_gigabyte_length_prefix_before_buffering_it() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(b"Q");
        buf.extend_from_slice(&0x7fff_fff0_i32.to_be_bytes());
        assert_eq!(
            decode_frame(&mut buf, 1 << 20),
            Err(FrameError::TooLarge {
                len: 0x7fff_fff0,
                max: 1 << 20
            })
        );
    }

    #[test]
    fn decodes_startup_ssl_gss_and_cancel() {
        let mut b = BytesMut::new();
        b.extend_from_slice(&8u32.to_be_bytes());
        b.extend_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
        b.extend_from_slice(&8u32.to_be_bytes());
        b.extend_from_slice(&GSSENC_REQUEST_CODE.to_be_bytes());
        b.extend_from_slice(&16u32.to_be_bytes());
        b.extend_from_slice(&CANCEL_REQUEST_CODE.to_be_bytes());
        b.extend_from_slice(&7i32.to_be_bytes());
        b.extend_from_slice(&9i32.to_be_bytes());
        let body = b"user\0agent\0database\0app\0\0";
        b.extend_from_slice(&((8 + body.len()) as u32).to_be_bytes());
        b.extend_from_slice(&0x0003_0000u32.to_be_bytes());
        b.extend_from_slice(body);
        assert_eq!(
            decode_startup(&mut b).unwrap(),
            Some(StartupPacket::SslRequest)
        );
        assert_eq!(
            decode_startup(&mut b).unwrap(),
            Some(StartupPacket::GssEncRequest)
        );
        assert_eq!(
            decode_startup(&mut b).unwrap(),
            Some(StartupPacket::CancelRequest {
                pid: 7,
                secret: Bytes::from_static(&[0, 0, 0, 9])
            })
        );
        let Some(StartupPacket::Startup { parameters, .. }) = decode_startup(&mut b).unwrap()
        else {
            panic!("startup expected")
        };
        assert_eq!(
            parameters,
            vec![
                ("user".to_string(), "agent".to_string()),
                ("database".to_string(), "app".to_string())
            ]
        );
    }

    #[test]
    fn startup_without_terminator_is_malformed_not_a_panic() {
        let body = b"user\0agent";
        let mut b = BytesMut::new();
        b.extend_from_slice(&((8 + body.len()) as u32).to_be_bytes());
        b.extend_from_slice(&0x0003_0000u32.to_be_bytes());
        b.extend_from_slice(body);
        assert!(matches!(
            decode_startup(&mut b),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn startup_limits_length_and_version() {
        let mut b = BytesMut::new();
        b.extend_from_slice(&100_000u32.to_be_bytes());
        assert!(matches!(
            decode_startup(&mut b),
            Err(FrameError::TooLarge { .. })
        ));
        let mut b = BytesMut::new();
        b.extend_from_slice(&9u32.to_be_bytes());
        b.extend_from_slice(&0x0002_0000u32.to_be_bytes());
        b.extend_from_slice(&[0]);
        assert!(matches!(
            decode_startup(&mut b),
            Err(FrameError::UnsupportedProtocol { major: 2, .. })
        ));
    }

    #[test]
    fn body_reader_never_panics_on_short_bodies() {
        let mut r = BodyReader::new(Bytes::from_static(&[0, 1]), "test");
        assert!(r.i32().is_err());
        assert_eq!(r.i16().unwrap(), 1);
        assert!(r.u8().is_err());
        assert!(r.cstr().is_err());
        let mut r = BodyReader::new(Bytes::from_static(&[0, 0, 0, 9, 1]), "test");
        assert!(r.value().is_err());
        let mut r = BodyReader::new(Bytes::from_static(&[0xff, 0xff, 0xff, 0xfe]), "test");
        assert!(r.value().is_err());
    }
}
