//! Request-smuggling guard for HTTP/1 connections.
//!
//! hyper resolves a request that carries both `Content-Length` and `Transfer-Encoding` the way
//! RFC 9112 §6.3 allows (chunked wins, the connection closes afterwards) and drops the evidence
//! before the service sees the request. Gatehouse refuses such requests outright, so this module
//! watches the raw bytes the client sends: [`FramingScanner`] (sans-IO, fuzzed) follows message
//! boundaries (heads, `Content-Length` bodies, chunked bodies) and flags every request whose
//! framing is ambiguous; [`FramingGuard`] feeds it everything hyper reads, and the service
//! refuses a flagged request with `400` before anything else happens.
//!
//! The scanner only observes; it never changes the bytes. When it cannot follow the stream (an
//! HTTP/2 preface, an upgrade, a `CONNECT`, a head it cannot parse), it stops watching and hyper's
//! own strict parser remains the authority.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Longest chunk-size line (with extensions) the scanner follows.
const MAX_CHUNK_LINE: usize = 4096;

/// Verdicts per HTTP/1 request index on one connection: the reason a request was flagged.
#[derive(Debug, Clone, Default)]
pub struct FramingVerdicts(Arc<Mutex<HashMap<u64, String>>>);

impl FramingVerdicts {
    fn flag(&self, index: u64, reason: String) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(index, reason);
        }
    }

    /// Takes the verdict for request `index`, if it was flagged.
    pub fn take(&self, index: u64) -> Option<String> {
        self.0.lock().ok().and_then(|mut m| m.remove(&index))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Before the first byte: could still be the HTTP/2 preface.
    Preface { seen: usize },
    /// Reading a request head.
    Head,
    /// Skipping a `Content-Length` body.
    Body { remaining: u64 },
    /// Reading a chunk-size line.
    ChunkSize,
    /// Skipping chunk data.
    ChunkData { remaining: u64 },
    /// The CRLF after chunk data.
    ChunkDataEnd { need: u8 },
    /// Trailer lines after the last chunk.
    Trailers,
    /// No longer following the stream.
    Passthrough,
}

/// Follows HTTP/1 message framing over a client byte stream and flags ambiguous requests.
#[derive(Debug)]
pub struct FramingScanner {
    state: State,
    line: Vec<u8>,
    head: Vec<u8>,
    max_head: usize,
    requests: u64,
    verdicts: FramingVerdicts,
}

impl FramingScanner {
    /// A scanner that records flags in `verdicts`; heads longer than `max_head` end the watch.
    pub fn new(verdicts: FramingVerdicts, max_head: usize) -> Self {
        Self {
            state: State::Preface { seen: 0 },
            line: Vec::new(),
            head: Vec::new(),
            max_head,
            requests: 0,
            verdicts,
        }
    }

    /// Whether the scanner still follows the stream.
    pub fn is_watching(&self) -> bool {
        self.state != State::Passthrough
    }

    /// Observes the next bytes from the client.
    pub fn observe(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.state.clone() {
                State::Passthrough => return,
                State::Preface { seen } => {
                    let Some(&b) = data.first() else { return };
                    if H2_PREFACE.get(seen) == Some(&b) {
                        if seen + 1 == H2_PREFACE.len() {
                            self.state = State::Passthrough;
                            return;
                        }
                        self.head.push(b);
                        self.state = State::Preface { seen: seen + 1 };
                        data = data.get(1..).unwrap_or(&[]);
                    } else {
                        // Not HTTP/2: replay what was held as the start of a head.
                        let held = std::mem::take(&mut self.head);
                        self.state = State::Head;
                        self.observe_head_bytes(&held);
                    }
                }
                State::Head => {
                    let used = self.observe_head_bytes(data);
                    data = data.get(used..).unwrap_or(&[]);
                }
                State::Body { remaining } => {
                    let n = remaining.min(data.len() as u64);
                    let left = remaining - n;
                    data = data
                        .get(usize::try_from(n).unwrap_or(data.len())..)
                        .unwrap_or(&[]);
                    self.state = if left == 0 {
                        State::Head
                    } else {
                        State::Body { remaining: left }
                    };
                }
                State::ChunkData { remaining } => {
                    let n = remaining.min(data.len() as u64);
                    let left = remaining - n;
                    data = data
                        .get(usize::try_from(n).unwrap_or(data.len())..)
                        .unwrap_or(&[]);
                    self.state = if left == 0 {
                        State::ChunkDataEnd { need: 2 }
                    } else {
                        State::ChunkData { remaining: left }
                    };
                }
                State::ChunkDataEnd { need } => {
                    let Some(&b) = data.first() else { return };
                    data = data.get(1..).unwrap_or(&[]);
                    self.state = match (need, b) {
                        (2, b'\r') => State::ChunkDataEnd { need: 1 },
                        (_, b'\n') => State::ChunkSize,
                        _ => State::Passthrough,
                    };
                }
                State::ChunkSize | State::Trailers => {
                    let Some(pos) = data.iter().position(|&b| b == b'\n') else {
                        self.line.extend_from_slice(data);
                        if self.line.len() > MAX_CHUNK_LINE {
                            self.state = State::Passthrough;
                        }
                        return;
                    };
                    self.line.extend_from_slice(data.get(..pos).unwrap_or(&[]));
                    data = data.get(pos + 1..).unwrap_or(&[]);
                    let line = std::mem::take(&mut self.line);
                    let line = line.strip_suffix(b"\r").unwrap_or(&line);
                    self.state = if self.state == State::Trailers {
                        if line.is_empty() {
                            State::Head
                        } else {
                            State::Trailers
                        }
                    } else {
                        match parse_chunk_size(line) {
                            Some(0) => State::Trailers,
                            Some(n) => State::ChunkData { remaining: n },
                            None => State::Passthrough,
                        }
                    };
                }
            }
        }
    }

    /// Accumulates head bytes; returns how many of `data` were consumed. Works a line at a
    /// time (`memchr` to each line feed), with the verdicts of a byte-at-a-time reading: a head
    /// ends at the first empty line, and one that grows past `max_head` before its end is not
    /// judged (hyper refuses it).
    fn observe_head_bytes(&mut self, data: &[u8]) -> usize {
        let mut i = 0;
        if self.head.is_empty() {
            // Empty lines before a request line are skipped (as hyper does).
            i = data
                .iter()
                .position(|&b| b != b'\r' && b != b'\n')
                .unwrap_or(data.len());
        }
        while let Some(rest) = data.get(i..).filter(|r| !r.is_empty()) {
            let Some(nl) = memchr::memchr(b'\n', rest) else {
                self.head.extend_from_slice(rest);
                if self.head.len() > self.max_head {
                    self.state = State::Passthrough;
                }
                return data.len();
            };
            self.head.extend_from_slice(rest.get(..=nl).unwrap_or(rest));
            i += nl + 1;
            // Every byte before this line feed was within the limit, or the head is too big.
            if self.head.len() - 1 > self.max_head {
                self.state = State::Passthrough;
                return data.len();
            }
            if self.head.ends_with(b"\r\n\r\n") || self.head.ends_with(b"\n\n") {
                let head = std::mem::take(&mut self.head);
                self.end_of_head(&head);
                return i;
            }
            if self.head.len() > self.max_head {
                self.state = State::Passthrough;
                return data.len();
            }
        }
        data.len()
    }

    fn end_of_head(&mut self, head: &[u8]) {
        let index = self.requests;
        self.requests += 1;
        let Ok(text) = std::str::from_utf8(head) else {
            self.state = State::Passthrough;
            return;
        };
        let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
        let request_line = lines.next().unwrap_or("");
        let method = request_line.split(' ').next().unwrap_or("");
        let mut lengths: Vec<&str> = Vec::new();
        let mut codings: Vec<String> = Vec::new();
        let mut upgrade = method.eq_ignore_ascii_case("CONNECT");
        for line in lines {
            if line.is_empty() {
                continue;
            }
            if line.starts_with([' ', '\t']) {
                // Obsolete line folding: refuse rather than guess how a server would unfold it.
                self.verdicts
                    .flag(index, "obsolete header line folding".into());
                self.state = State::Passthrough;
                return;
            }
            let Some((name, value)) = line.split_once(':') else {
                self.state = State::Passthrough;
                return;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                lengths.extend(value.split(',').map(str::trim));
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                codings.extend(
                    value
                        .split(',')
                        .map(|c| c.trim().to_ascii_lowercase())
                        .filter(|c| !c.is_empty()),
                );
            } else if name.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
            }
        }
        let flag = |reason: &str| Some(reason.to_string());
        let reason = if !lengths.is_empty() && !codings.is_empty() {
            flag("both Content-Length and Transfer-Encoding")
        } else if lengths.windows(2).any(|w| w.first() != w.get(1)) {
            flag("conflicting Content-Length values")
        } else if lengths
            .iter()
            .any(|l| l.is_empty() || !l.bytes().all(|b| b.is_ascii_digit()))
        {
            flag("invalid Content-Length")
        } else if !codings.is_empty() && codings.last().map(String::as_str) != Some("chunked") {
            flag("Transfer-Encoding does not end in chunked")
        } else if codings.iter().filter(|c| *c == "chunked").count() > 1 {
            flag("chunked applied more than once")
        } else {
            None
        };
        if let Some(reason) = reason {
            self.verdicts.flag(index, reason);
            // The connection closes after this request: nothing further to follow.
            self.state = State::Passthrough;
            return;
        }
        if upgrade {
            self.state = State::Passthrough;
            return;
        }
        self.state = if !codings.is_empty() {
            State::ChunkSize
        } else if let Some(len) = lengths.first() {
            match len.parse::<u64>() {
                Ok(0) => State::Head,
                Ok(n) => State::Body { remaining: n },
                Err(_) => State::Passthrough,
            }
        } else {
            State::Head
        };
    }
}

fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let size = line.split(|&b| b == b';').next()?;
    let size = std::str::from_utf8(size)
        .ok()?
        .trim_end_matches([' ', '\t']);
    if size.is_empty() || size.len() > 16 {
        return None;
    }
    u64::from_str_radix(size, 16).ok()
}

/// Wraps a client connection and lets a [`FramingScanner`] see every byte read from it.
#[derive(Debug)]
pub struct FramingGuard<I> {
    inner: I,
    scanner: FramingScanner,
}

impl<I> FramingGuard<I> {
    /// Wraps `inner`; flags go to `verdicts`.
    pub fn new(inner: I, verdicts: FramingVerdicts, max_head: usize) -> Self {
        Self {
            inner,
            scanner: FramingScanner::new(verdicts, max_head),
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for FramingGuard<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.scanner.is_watching()
            && let Some(new) = buf.filled().get(before..)
        {
            this.scanner.observe(new);
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for FramingGuard<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> (FramingScanner, FramingVerdicts) {
        let v = FramingVerdicts::default();
        let mut s = FramingScanner::new(v.clone(), 64 * 1024);
        for c in chunks {
            s.observe(c);
        }
        (s, v)
    }

    #[test]
    fn flags_cl_and_te_together() {
        let (_, v) = scan(&[
            b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ]);
        assert_eq!(
            v.take(0).unwrap(),
            "both Content-Length and Transfer-Encoding"
        );
    }

    #[test]
    fn follows_pipelined_requests_across_bodies_byte_by_byte() {
        let stream: &[u8] = b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello\
GET /b HTTP/1.1\r\nHost: x\r\n\r\n\
POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nTrailer: x\r\n\r\n\
POST /d HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        let chunks: Vec<&[u8]> = stream.chunks(1).collect();
        let (s, v) = scan(&chunks);
        assert!(v.take(0).is_none());
        assert!(v.take(1).is_none());
        assert!(v.take(2).is_none());
        assert_eq!(v.take(3).unwrap(), "conflicting Content-Length values");
        assert!(!s.is_watching());
    }

    #[test]
    fn body_bytes_that_look_like_a_head_are_not_a_request() {
        // The smuggled "request" inside a body is body, not a second request.
        let (_, v) = scan(&[
            b"POST /a HTTP/1.1\r\nContent-Length: 47\r\n\r\nGET /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /y HTTP/1.1\r\n\r\n",
        ]);
        assert!(v.take(0).is_none());
        assert!(v.take(1).is_none());
    }

    #[test]
    fn other_ambiguities() {
        let (_, v) = scan(&[b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"]);
        assert!(v.take(0).is_some());
        let (_, v) = scan(&[b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n"]);
        assert!(v.take(0).is_some());
        let (_, v) = scan(&[b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n"]);
        assert!(v.take(0).is_some());
    }

    #[test]
    fn h2_preface_and_upgrades_end_the_watch() {
        let (s, _) = scan(&[H2_PREFACE, b"garbage"]);
        assert!(!s.is_watching());
        let (s, _) = scan(&[b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"]);
        assert!(!s.is_watching());
        // A near-preface is just a (bad) HTTP/1 head.
        let (s, _) = scan(&[b"PRI / HTTP/1.1\r\n\r\n"]);
        assert!(s.is_watching());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn verdicts_of(data: &[u8], cuts: &[usize]) -> Vec<(u64, String)> {
        verdicts_with(data, cuts, 4096).0
    }

    /// The verdicts, how many request heads were read, and whether the scanner still watches.
    fn verdicts_with(
        data: &[u8],
        cuts: &[usize],
        max_head: usize,
    ) -> (Vec<(u64, String)>, u64, bool) {
        let v = FramingVerdicts::default();
        let mut s = FramingScanner::new(v.clone(), max_head);
        let mut start = 0;
        for &c in cuts {
            let end = c.min(data.len()).max(start);
            s.observe(&data[start..end]);
            start = end;
        }
        s.observe(&data[start..]);
        let mut out: Vec<_> = v.0.lock().unwrap().drain().collect();
        out.sort();
        (out, s.requests, s.is_watching())
    }

    fn http_like() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b"POST / HTTP/1.1\r\n".to_vec()),
            Just(b"GET /x HTTP/1.1\r\n".to_vec()),
            Just(b"Content-Length: 3\r\n".to_vec()),
            Just(b"Content-Length: 5\r\n".to_vec()),
            Just(b"Transfer-Encoding: chunked\r\n".to_vec()),
            Just(b"Upgrade: websocket\r\n".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"3\r\nabc\r\n".to_vec()),
            Just(b"0\r\n\r\n".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..8),
        ];
        proptest::collection::vec(piece, 0..24).prop_map(|v| v.concat())
    }

    proptest! {
        /// Hostile bytes never panic the scanner, and how the bytes are cut into reads never
        /// changes a verdict.
        #[test]
        fn chunking_never_changes_verdicts(
            data in http_like(),
            mut cuts in proptest::collection::vec(0usize..600, 0..12),
        ) {
            cuts.sort_unstable();
            prop_assert_eq!(verdicts_of(&data, &[]), verdicts_of(&data, &cuts));
        }

        /// Heads read a line at a time judge exactly as heads read a byte at a time, the
        /// head-size limit included (small limits, so heads cross it at every position).
        #[test]
        fn line_reading_equals_byte_reading(data in http_like(), max_head in 8usize..80) {
            let every_byte: Vec<usize> = (1..data.len()).collect();
            prop_assert_eq!(
                verdicts_with(&data, &[], max_head),
                verdicts_with(&data, &every_byte, max_head)
            );
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = verdicts_of(&data, &[7, 64, 500]);
        }
    }
}
