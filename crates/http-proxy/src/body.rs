//! Response bodies on their way to the caller: decoded (gzip, deflate), masked by content type
//! (JSON, text/NDJSON, server-sent events), checked by the egress guard, and captured (capped)
//! for the recording. Sans-IO: [`BodyProcessor`] is fed upstream bytes and returns bytes that are
//! safe to send; the response body in `proxy.rs` (`MaskedBody`) drives it from hyper's
//! own polling; nothing is released on a timer.

use std::io::Write as _;

use gatehouse_core::{
    BinaryHandling, EgressSite, EgressStream, Finding, Masker, StreamContext, StreamMasker,
    TextDetector,
};
use http::HeaderMap;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use sha2::{Digest, Sha256};

use crate::config::OtherContentPolicy;
use crate::error::HttpProxyError;
use crate::sse::SseMasker;

/// How a body is masked, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ContentKind {
    /// `application/json`, `*/*+json`, JSON lines: the token-level JSON masker.
    Json,
    /// `text/*` (but event streams), XML, form data: the text stream masker.
    Text,
    /// `text/event-stream`.
    EventStream,
    /// Anything else (binary): not maskable.
    Other,
}

impl ContentKind {
    pub(crate) fn of(headers: &HeaderMap) -> ContentKind {
        // No declared type: mask as text rather than let an undeclared JSON body through raw.
        let Some(ct) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
            return ContentKind::Text;
        };
        let essence = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "text/event-stream" => ContentKind::EventStream,
            "application/json"
            | "application/x-ndjson"
            | "application/ndjson"
            | "application/jsonl"
            | "application/json-seq"
            | "application/x-json-stream" => ContentKind::Json,
            e if e.ends_with("+json") => ContentKind::Json,
            e if e.starts_with("text/") => ContentKind::Text,
            "application/xml"
            | "application/x-www-form-urlencoded"
            | "application/javascript"
            | "application/yaml"
            | "application/x-yaml"
            | "application/graphql" => ContentKind::Text,
            e if e.ends_with("+xml") => ContentKind::Text,
            _ => ContentKind::Other,
        }
    }
}

/// The encodings the gateway can decode, and so may accept from an upstream.
pub(crate) const DECODABLE: &[&str] = &["gzip", "deflate"];

/// Streaming decompression of one `Content-Encoding`.
enum Decoder {
    Identity,
    Gzip(flate2::write::GzDecoder<Vec<u8>>),
    Deflate(flate2::write::ZlibDecoder<Vec<u8>>),
}

impl Decoder {
    fn for_headers(headers: &HeaderMap) -> Result<Decoder, HttpProxyError> {
        let mut codings = Vec::new();
        for v in headers.get_all(CONTENT_ENCODING) {
            let v = v.to_str().map_err(|_| {
                HttpProxyError::UpstreamRefused("unreadable Content-Encoding".into())
            })?;
            codings.extend(
                v.split(',')
                    .map(|c| c.trim().to_ascii_lowercase())
                    .filter(|c| !c.is_empty() && c != "identity"),
            );
        }
        match codings.as_slice() {
            [] => Ok(Decoder::Identity),
            [c] if c == "gzip" || c == "x-gzip" => {
                Ok(Decoder::Gzip(flate2::write::GzDecoder::new(Vec::new())))
            }
            [c] if c == "deflate" => Ok(Decoder::Deflate(flate2::write::ZlibDecoder::new(
                Vec::new(),
            ))),
            // The codings are the upstream's text: not echoed.
            _ => Err(HttpProxyError::UpstreamRefused(
                "the response's content encoding cannot be decoded for masking (only gzip or \
                 deflate, once)"
                    .into(),
            )),
        }
    }

    /// Decodes `chunk`; returns the decoded bytes (borrowing for identity).
    fn decode<'a>(&'a mut self, chunk: &'a [u8]) -> Result<&'a [u8], HttpProxyError> {
        let bad = |e: std::io::Error| {
            HttpProxyError::UpstreamRefused(format!("bad compressed body: {e}"))
        };
        match self {
            Decoder::Identity => Ok(chunk),
            Decoder::Gzip(d) => {
                d.get_mut().clear();
                d.write_all(chunk).map_err(bad)?;
                Ok(d.get_ref())
            }
            Decoder::Deflate(d) => {
                d.get_mut().clear();
                d.write_all(chunk).map_err(bad)?;
                Ok(d.get_ref())
            }
        }
    }

    fn finish(&mut self) -> Result<Vec<u8>, HttpProxyError> {
        let bad = |e: std::io::Error| {
            HttpProxyError::UpstreamRefused(format!("bad compressed body: {e}"))
        };
        match self {
            Decoder::Identity => Ok(Vec::new()),
            Decoder::Gzip(d) => {
                d.get_mut().clear();
                d.try_finish().map_err(bad)?;
                Ok(std::mem::take(d.get_mut()))
            }
            Decoder::Deflate(d) => {
                d.get_mut().clear();
                d.try_finish().map_err(bad)?;
                Ok(std::mem::take(d.get_mut()))
            }
        }
    }

    fn is_identity(&self) -> bool {
        matches!(self, Decoder::Identity)
    }
}

enum Masking {
    Stream(Box<dyn StreamMasker>),
    EventStream(SseMasker),
    /// Not maskable: passed through (egress-checked), hashed for the record.
    Pass(Box<Sha256>),
}

/// What the recording keeps of a body.
#[derive(Debug, Clone, Default)]
pub(crate) struct BodyCapture {
    /// Masked bytes, at most the cap.
    pub bytes: Vec<u8>,
    /// Total (masked) bytes sent.
    pub total: u64,
    /// For unmaskable content: the SHA-256 of what passed, instead of its bytes (of the whole
    /// body, also when it turned binary part-way: the text before was passed unaltered).
    pub sha256: Option<String>,
    /// Why the body (from byte `raw_from` of what was sent) passed unmasked, when it did:
    /// `"binary content type"`, `"binary body"` (a text body turned out binary under
    /// `binary = "raw"`), or `"other content"` (the operator's `other_content` pass).
    pub raw_why: Option<&'static str>,
    /// Offset in the sent body where the unmasked part starts (0 for a whole raw body); the
    /// text before it is in the recording.
    pub raw_from: u64,
}

/// Decodes, masks, egress-checks and captures one response body.
pub(crate) struct BodyProcessor {
    decoder: Decoder,
    masking: Masking,
    egress: Box<dyn EgressStream>,
    capture: BodyCapture,
    cap: usize,
    max_decoded: u64,
    decoded: u64,
    findings: Vec<Finding>,
    /// Watches a masked body for binary data (NUL bytes, invalid UTF-8) across chunks.
    detector: TextDetector,
    /// Under `binary = "raw"`: the digest of the text sent so far, so that a body that turns
    /// raw is recorded with the digest of all of it.
    sent: Option<Box<Sha256>>,
    binary: BinaryHandling,
    rule_id: String,
    /// Compressed bytes received but not decoded yet (see [`DECODE_SLICE`]).
    backlog: Vec<u8>,
    /// How far into `backlog` decoding has gone.
    backlog_pos: usize,
}

/// Compressed input is decoded this many bytes at a time: gzip and deflate expand at most about
/// 1032:1, so one slice decodes to about 1 MiB at worst, never to a whole frame's worth (a
/// 400 KB frame of a "gzip bomb" is 400 MB decoded).
const DECODE_SLICE: usize = 1024;

/// One push emits at most about this many decoded bytes (plus one slice's worth); the rest of
/// the frame waits in the backlog until the caller took what was emitted, so memory per
/// response stays bounded however well the body compresses.
const PUSH_BUDGET: usize = 256 * 1024;

impl std::fmt::Debug for BodyProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyProcessor")
            .field("sent", &self.capture.total)
            .finish_non_exhaustive()
    }
}

/// Settings for one body.
pub(crate) struct BodySettings<'a> {
    pub masker: &'a dyn Masker,
    pub egress: &'a dyn gatehouse_core::EgressGuard,
    pub profile: Option<String>,
    pub other: OtherContentPolicy,
    pub record_cap: usize,
    pub max_decoded: u64,
    /// What the policy says about a body masking cannot rewrite (the decision's `binary`).
    pub binary: BinaryHandling,
    /// The rule that allowed the request (named when a binary body is refused).
    pub rule_id: String,
    /// The response has no body (HEAD, 204, 304, `Content-Length: 0`): nothing to refuse.
    pub bodiless: bool,
}

impl BodyProcessor {
    /// Prepares for a response with `headers`. Refuses encodings it cannot decode and, when so
    /// configured, content it cannot mask.
    pub(crate) fn new(headers: &HeaderMap, s: &BodySettings<'_>) -> Result<Self, HttpProxyError> {
        let decoder = Decoder::for_headers(headers)?;
        let kind = ContentKind::of(headers);
        let mut capture = BodyCapture::default();
        let masking = match kind {
            ContentKind::Json | ContentKind::Text => {
                Masking::Stream(s.masker.stream(&StreamContext {
                    profile: s.profile.clone(),
                    field: Some("body".into()),
                    json: kind == ContentKind::Json,
                }))
            }
            ContentKind::EventStream => Masking::EventStream(SseMasker::new(s.profile.clone())),
            ContentKind::Other => match s.other {
                OtherContentPolicy::Refuse => {
                    return Err(HttpProxyError::UpstreamRefused(
                        "content type cannot be masked and is refused by configuration".into(),
                    ));
                }
                // A binary body passes only where the policy says `binary = "raw"`; never
                // rewritten as text.
                _ if s.binary != BinaryHandling::Raw && !s.bodiless => {
                    return Err(HttpProxyError::BinaryRefused {
                        rule: s.rule_id.clone(),
                        what: content_type(headers),
                    });
                }
                _ => {
                    capture.raw_why =
                        (s.binary == BinaryHandling::Raw).then_some("binary content type");
                    Masking::Pass(Box::new(Sha256::new()))
                }
            },
        };
        Ok(Self {
            decoder,
            masking,
            egress: s.egress.stream(EgressSite::Client),
            capture,
            cap: s.record_cap,
            max_decoded: s.max_decoded,
            decoded: 0,
            findings: Vec::new(),
            detector: TextDetector::new(),
            sent: (s.binary == BinaryHandling::Raw).then(|| Box::new(Sha256::new())),
            binary: s.binary,
            rule_id: s.rule_id.clone(),
            backlog: Vec::new(),
            backlog_pos: 0,
        })
    }

    /// Checks decoded bytes of a masked body and returns from which offset of `decoded` the
    /// current masking goes on (0: all of it). On binary data: refused (no raw rule); under
    /// `binary = "raw"`, the text before the first binary byte is masked to its end, and then
    /// the rest passes unmasked only if masking changed nothing in the body — a body already
    /// altered would otherwise arrive silently corrupted, so it is refused.
    fn check_text(
        &mut self,
        masker: &dyn Masker,
        decoded: &[u8],
        end: bool,
        out: &mut Vec<u8>,
    ) -> Result<usize, HttpProxyError> {
        if matches!(self.masking, Masking::Pass(_)) {
            return Ok(0);
        }
        let at = match self.detector.push_at(decoded) {
            Some(at) => at,
            None if !end || self.detector.finish() => return Ok(0),
            None => decoded.len(),
        };
        if self.binary != BinaryHandling::Raw {
            return Err(HttpProxyError::BinaryRefused {
                rule: self.rule_id.clone(),
                what: "NUL bytes or invalid UTF-8 in a text body".into(),
            });
        }
        let text = decoded.get(..at).unwrap_or_default();
        let start = out.len();
        match &mut self.masking {
            Masking::Stream(m) => {
                m.push(text, out);
                m.finish(out);
            }
            Masking::EventStream(m) => {
                m.push(masker, text, out);
                m.finish(masker, out);
            }
            Masking::Pass(_) => {}
        }
        self.collect_findings();
        if !self.findings.is_empty() {
            return Err(HttpProxyError::BinaryRefused {
                rule: self.rule_id.clone(),
                what: "binary data after text that masking changed (passing the rest raw would deliver a silently altered body)".into(),
            });
        }
        self.check_and_capture(out, start)?;
        self.capture.raw_why = Some("binary body");
        self.capture.raw_from = self.capture.total;
        // Masking changed nothing: the text sent so far is the body's own bytes, and the digest
        // goes on over the raw rest (so it covers the whole body).
        let sent = self.sent.take().unwrap_or_default();
        self.masking = Masking::Pass(sent);
        Ok(at)
    }

    /// Whether the body leaves the gateway in a different length or encoding than it came
    /// (then `Content-Length` and `Content-Encoding` must go).
    pub(crate) fn transforms(&self) -> bool {
        !self.decoder.is_identity() || !matches!(self.masking, Masking::Pass(_))
    }

    /// Feeds an upstream chunk; appends what is safe to send to `out`. A compressed chunk is
    /// decoded in slices, and only until about [`PUSH_BUDGET`] bytes came out: what is left
    /// waits in the backlog ([`has_backlog`](Self::has_backlog)), for the next push (an empty
    /// chunk continues it).
    pub(crate) fn push(
        &mut self,
        masker: &dyn Masker,
        chunk: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), HttpProxyError> {
        if self.decoder.is_identity() {
            return self.push_decoded_from(masker, chunk, out);
        }
        if self.backlog_pos >= self.backlog.len() {
            self.backlog.clear();
            self.backlog_pos = 0;
        }
        self.backlog.extend_from_slice(chunk);
        let start = out.len();
        while self.backlog_pos < self.backlog.len() && out.len() - start < PUSH_BUDGET {
            let end = (self.backlog_pos + DECODE_SLICE).min(self.backlog.len());
            let slice = self
                .backlog
                .get(self.backlog_pos..end)
                .unwrap_or(&[])
                .to_vec();
            self.backlog_pos = end;
            self.push_decoded_from(masker, &slice, out)?;
        }
        if self.backlog_pos >= self.backlog.len() {
            self.backlog = Vec::new();
            self.backlog_pos = 0;
        }
        Ok(())
    }

    /// Whether compressed bytes received earlier still wait to be decoded: push an empty chunk
    /// (before reading more from the upstream, and before finishing).
    pub(crate) fn has_backlog(&self) -> bool {
        self.backlog_pos < self.backlog.len()
    }

    /// Decodes, checks, masks and egress-checks one piece of upstream bytes.
    fn push_decoded_from(
        &mut self,
        masker: &dyn Masker,
        chunk: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), HttpProxyError> {
        let decoded = self.decoder.decode(chunk)?;
        self.decoded += decoded.len() as u64;
        if self.decoded > self.max_decoded {
            return Err(HttpProxyError::UpstreamRefused(format!(
                "response body larger than {} bytes once decoded (limits.max_response_body)",
                self.max_decoded
            )));
        }
        let decoded = decoded.to_vec();
        let from = self.check_text(masker, &decoded, false, out)?;
        let decoded = decoded.get(from..).unwrap_or_default();
        let start = out.len();
        match &mut self.masking {
            Masking::Stream(m) => m.push(decoded, out),
            Masking::EventStream(m) => m.push(masker, decoded, out),
            Masking::Pass(h) => {
                h.update(decoded);
                out.extend_from_slice(decoded);
            }
        }
        self.check_and_capture(out, start)
    }

    /// End of the upstream body: emit everything left.
    pub(crate) fn finish(
        &mut self,
        masker: &dyn Masker,
        out: &mut Vec<u8>,
    ) -> Result<(), HttpProxyError> {
        let rest = self.decoder.finish()?.to_vec();
        let from = self.check_text(masker, &rest, true, out)?;
        let rest = rest.get(from..).unwrap_or_default();
        let start = out.len();
        match &mut self.masking {
            Masking::Stream(m) => {
                m.push(rest, out);
                m.finish(out);
            }
            Masking::EventStream(m) => {
                m.push(masker, rest, out);
                m.finish(masker, out);
            }
            Masking::Pass(h) => {
                h.update(rest);
                out.extend_from_slice(rest);
                self.capture.sha256 = Some(hex::encode(h.clone().finalize()));
            }
        }
        self.check_and_capture(out, start)
    }

    fn check_and_capture(&mut self, out: &[u8], start: usize) -> Result<(), HttpProxyError> {
        let new = out.get(start..).unwrap_or(&[]);
        if new.is_empty() {
            return Ok(());
        }
        self.egress
            .check(new)
            .map_err(|_| HttpProxyError::EgressBlocked)?;
        self.capture.total += new.len() as u64;
        if !matches!(self.masking, Masking::Pass(_)) {
            if let Some(h) = self.sent.as_mut() {
                h.update(new);
            }
            let room = self.cap.saturating_sub(self.capture.bytes.len());
            self.capture
                .bytes
                .extend_from_slice(new.get(..room.min(new.len())).unwrap_or(&[]));
        }
        self.collect_findings();
        Ok(())
    }

    fn collect_findings(&mut self) {
        match &mut self.masking {
            Masking::Stream(m) => self.findings.extend(m.take_findings()),
            Masking::EventStream(m) => self.findings.extend(m.take_findings()),
            Masking::Pass(_) => {}
        }
    }

    /// What was sent, for the recording, and the masking findings (taken: a second call gets
    /// empty parts).
    pub(crate) fn take_parts(&mut self) -> (BodyCapture, Vec<Finding>) {
        self.collect_findings();
        // Cut short: the digest of what did pass.
        if let Masking::Pass(h) = &self.masking
            && self.capture.sha256.is_none()
        {
            self.capture.sha256 = Some(hex::encode(h.as_ref().clone().finalize()));
        }
        (
            std::mem::take(&mut self.capture),
            std::mem::take(&mut self.findings),
        )
    }
}

/// What the declared content type is, for a refusal message: its kind, never its text (the
/// value is the upstream's, and may carry anything: personal data, part of a held key).
fn content_type(headers: &HeaderMap) -> String {
    match headers.get(CONTENT_TYPE) {
        None => "no content type".into(),
        Some(_) => "a content type that is not text, JSON or an event stream".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(ct: Option<&str>) -> ContentKind {
        let mut h = HeaderMap::new();
        if let Some(ct) = ct {
            h.insert(CONTENT_TYPE, ct.parse().unwrap());
        }
        ContentKind::of(&h)
    }

    #[test]
    fn content_kinds() {
        assert_eq!(
            kind(Some("application/json; charset=utf-8")),
            ContentKind::Json
        );
        assert_eq!(kind(Some("application/problem+json")), ContentKind::Json);
        assert_eq!(kind(Some("application/x-ndjson")), ContentKind::Json);
        assert_eq!(kind(Some("Text/Event-Stream")), ContentKind::EventStream);
        assert_eq!(kind(Some("text/html")), ContentKind::Text);
        assert_eq!(kind(None), ContentKind::Text);
        assert_eq!(kind(Some("image/png")), ContentKind::Other);
        assert_eq!(kind(Some("application/octet-stream")), ContentKind::Other);
    }

    #[test]
    fn unknown_or_stacked_encodings_are_refused() {
        for enc in ["br", "zstd", "gzip, gzip", "compress"] {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_ENCODING, enc.parse().unwrap());
            assert!(Decoder::for_headers(&h).is_err(), "{enc}");
        }
    }
}
