//! Server-sent events masked the way a client reads them: per event, the `data:` lines are joined
//! with `\n` exactly as an `EventSource` joins them, masked as one value (JSON payloads with the
//! JSON masker, the rest as text), and written back as `data:` lines. A value split over two
//! `data:` lines of one event is therefore caught. Other fields (`event:`, `id:`, comments) are
//! masked line by line. Complete events are emitted as soon as their blank line arrives, so the
//! stream keeps streaming; an event larger than the cap is emitted in pieces (still masked).
//!
//! Sans-IO: fed bytes, writes bytes.

use gatehouse_core::{Finding, Masker, StreamContext};

/// The most bytes of one event held back waiting for its end.
pub(crate) const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// Masks one `text/event-stream` body.
pub(crate) struct SseMasker {
    /// Bytes of the current, unfinished line.
    line: Vec<u8>,
    /// The last byte seen was `\r` (a following `\n` belongs to the same line break).
    after_cr: bool,
    /// Complete lines of the current event (without line terminators).
    event: Vec<Vec<u8>>,
    event_bytes: usize,
    profile: Option<String>,
    findings: Vec<Finding>,
}

impl std::fmt::Debug for SseMasker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseMasker")
            .field("held", &self.event_bytes)
            .finish_non_exhaustive()
    }
}

impl SseMasker {
    pub(crate) fn new(profile: Option<String>) -> Self {
        Self {
            line: Vec::new(),
            after_cr: false,
            event: Vec::new(),
            event_bytes: 0,
            profile,
            findings: Vec::new(),
        }
    }

    /// Feeds upstream bytes; appends every completed event, masked, to `out`.
    pub(crate) fn push(&mut self, masker: &dyn Masker, chunk: &[u8], out: &mut Vec<u8>) {
        for &b in chunk {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\n' => self.end_line(masker, out),
                b'\r' => {
                    self.after_cr = true;
                    self.end_line(masker, out);
                }
                _ => {
                    self.line.push(b);
                    self.event_bytes += 1;
                }
            }
            if self.event_bytes > MAX_EVENT_BYTES {
                self.emit_oversized(masker, out);
            }
        }
    }

    /// End of stream: an unfinished event is emitted as it stands (masked), without inventing
    /// the blank line that would make a client dispatch it.
    pub(crate) fn finish(&mut self, masker: &dyn Masker, out: &mut Vec<u8>) {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.event.push(line);
        }
        if !self.event.is_empty() {
            self.emit_event(masker, out, false);
        }
    }

    pub(crate) fn take_findings(&mut self) -> Vec<Finding> {
        std::mem::take(&mut self.findings)
    }

    fn end_line(&mut self, masker: &dyn Masker, out: &mut Vec<u8>) {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            // Blank line: dispatch the event (a stray blank line passes through as is).
            if self.event.is_empty() {
                out.push(b'\n');
            } else {
                self.emit_event(masker, out, true);
            }
        } else {
            self.event_bytes += 1;
            self.event.push(line);
        }
    }

    /// An event over the cap: emit its complete lines now (each masked) and keep the event open.
    fn emit_oversized(&mut self, masker: &dyn Masker, out: &mut Vec<u8>) {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.event.push(line);
        }
        self.emit_event(masker, out, false);
    }

    fn emit_event(&mut self, masker: &dyn Masker, out: &mut Vec<u8>, dispatch: bool) {
        let lines = std::mem::take(&mut self.event);
        self.event_bytes = 0;
        let mut data: Option<Vec<u8>> = None;
        for line in &lines {
            if let Some(value) = field_value(line, b"data") {
                match &mut data {
                    Some(d) => {
                        d.push(b'\n');
                        d.extend_from_slice(value);
                    }
                    None => data = Some(value.to_vec()),
                }
            }
        }
        let mut masked_data = data.map(|d| self.mask_value(masker, &d, "data"));
        for line in &lines {
            if field_value(line, b"data").is_some() {
                // All data lines go out together, where the first one was.
                if let Some(md) = masked_data.take() {
                    for piece in md.split(|&b| b == b'\n') {
                        out.extend_from_slice(b"data: ");
                        out.extend_from_slice(piece);
                        out.push(b'\n');
                    }
                }
            } else {
                let masked = self.mask_value(masker, line, "field");
                out.extend_from_slice(&masked);
                out.push(b'\n');
            }
        }
        if dispatch {
            out.push(b'\n');
        }
    }

    fn mask_value(&mut self, masker: &dyn Masker, value: &[u8], field: &str) -> Vec<u8> {
        let json = matches!(
            value.iter().find(|b| !b.is_ascii_whitespace()),
            Some(b'{' | b'[')
        );
        let ctx = StreamContext {
            profile: self.profile.clone(),
            field: Some(format!("sse.{field}")),
            json,
        };
        let mut m = masker.stream(&ctx);
        let mut out = Vec::with_capacity(value.len());
        m.push(value, &mut out);
        m.finish(&mut out);
        self.findings.extend(m.take_findings());
        out
    }
}

/// The value of `name: value` / `name:value` / bare `name` (empty value), per the SSE spec
/// (one leading space is dropped).
fn field_value<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let rest = line.strip_prefix(name)?;
    if rest.is_empty() {
        return Some(rest);
    }
    let value = rest.strip_prefix(b":")?;
    Some(value.strip_prefix(b" ").unwrap_or(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_core::{FieldDesc, FieldPlan, StreamMasker};

    /// Replaces `SECRET` with `[x]`, buffering nothing (enough to see the event logic).
    struct Literal;
    struct LiteralStream(Vec<u8>);
    impl StreamMasker for LiteralStream {
        fn push(&mut self, chunk: &[u8], _out: &mut Vec<u8>) {
            self.0.extend_from_slice(chunk);
        }
        fn flush(&mut self, out: &mut Vec<u8>) {
            let s = String::from_utf8_lossy(&self.0).replace("jane@example.com", "[email]");
            out.extend_from_slice(s.as_bytes());
            self.0.clear();
        }
        fn finish(&mut self, out: &mut Vec<u8>) {
            self.flush(out);
        }
        fn take_findings(&mut self) -> Vec<Finding> {
            Vec::new()
        }
    }
    impl Masker for Literal {
        fn plan(&self, _f: &[FieldDesc], _p: Option<&str>) -> Box<dyn FieldPlan> {
            unimplemented!()
        }
        fn stream(&self, _c: &StreamContext) -> Box<dyn StreamMasker> {
            Box::new(LiteralStream(Vec::new()))
        }
    }

    fn run(chunks: &[&[u8]]) -> String {
        let mut m = SseMasker::new(None);
        let mut out = Vec::new();
        for c in chunks {
            m.push(&Literal, c, &mut out);
        }
        m.finish(&Literal, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn masks_the_joined_data_of_one_event() {
        // A client joins the two data lines with "\n": the masker sees what the client sees.
        let out = run(&[
            b"event: msg\ndata: {\"to\":\n",
            b"data: \"jane@example.com\"}\n\n",
        ]);
        assert_eq!(out, "event: msg\ndata: {\"to\":\ndata: \"[email]\"}\n\n");
        let out = run(&[b"data: jane@", b"example.com\n\n"]);
        assert_eq!(out, "data: [email]\n\n");
    }

    #[test]
    fn emits_each_event_when_complete_and_keeps_fields_in_order() {
        let mut m = SseMasker::new(None);
        let mut out = Vec::new();
        m.push(
            &Literal,
            b"id: 1\r\ndata: a\r\n\r\nid: 2\ndata: jane@example.com",
            &mut out,
        );
        assert_eq!(String::from_utf8_lossy(&out), "id: 1\ndata: a\n\n");
        out.clear();
        m.push(&Literal, b"\n\n", &mut out);
        assert_eq!(String::from_utf8_lossy(&out), "id: 2\ndata: [email]\n\n");
    }

    #[test]
    fn comments_and_bare_fields() {
        assert_eq!(run(&[b": keepalive\n\n"]), ": keepalive\n\n");
        assert_eq!(run(&[b"data\ndata\n\n"]), "data: \ndata: \n\n");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn run(masker: &dyn Masker, data: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut m = SseMasker::new(None);
        let mut out = Vec::new();
        let mut start = 0;
        for &c in cuts {
            let end = c.min(data.len()).max(start);
            m.push(masker, &data[start..end], &mut out);
            start = end;
        }
        m.push(masker, &data[start..], &mut out);
        m.finish(masker, &mut out);
        out
    }

    fn event_stream() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b"data: ".to_vec()),
            Just(b"event: update\n".to_vec()),
            Just(b"id: 7\r\n".to_vec()),
            Just(b": comment\n".to_vec()),
            Just(b" jane@example.com ".to_vec()),
            Just(b"{\"email\": \"bob@example.org\"}".to_vec()),
            Just(b" 4111 1111 1111 1111 ".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"\r".to_vec()),
            Just(b"\n\n".to_vec()),
            "[a-z ]{0,12}".prop_map(String::into_bytes),
        ];
        proptest::collection::vec(piece, 0..40).prop_map(|v| v.concat())
    }

    proptest! {
        /// The real masker, any chunking: same output, and no e-mail address survives.
        #[test]
        fn chunking_invariant_and_masked(
            data in event_stream(),
            mut cuts in proptest::collection::vec(0usize..800, 0..10),
        ) {
            cuts.sort_unstable();
            let engine = gatehouse_masking::MaskingEngine::with_defaults().unwrap();
            let whole = run(&engine, &data, &[]);
            prop_assert_eq!(&whole, &run(&engine, &data, &cuts));
            let text = String::from_utf8_lossy(&whole);
            prop_assert!(!text.contains("jane@example.com"), "{}", text);
            prop_assert!(!text.contains("bob@example.org"), "{}", text);
        }
    }
}
