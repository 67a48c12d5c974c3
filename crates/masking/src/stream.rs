//! The text stream masker: one per stream (ssh channel, exec stream, HTTP body).
//!
//! Promise: with no forced [`flush`](gatehouse_core::StreamMasker::flush), the output is byte for
//! byte what one-shot masking of the whole stream gives, however the stream was chunked. That
//! holds because no detector reads across a line break (PEM blocks aside), so the masker emits
//! everything up to the last line break it has seen and holds back only the current line; a PEM
//! block whose END may still come is held from its BEGIN, up to the PEM cap, and a capped block
//! restarts scanning at the cap in both modes. Memory is bounded: a line that grows past the
//! hold-back limit (64 KiB, or more for large caps) is cut a maximal match length before its end
//! and emitted — the only case where streaming may differ from one-shot, and never by leaking a
//! match the scanner saw.

use std::sync::Arc;

use gatehouse_core::{Finding, StreamMasker};
use memchr::memmem;

use crate::detect::Detector;
use crate::detect::scan::{Span, Stop};
use crate::profile::MaskingProfile;

const HOLD_MIN: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Push,
    Flush,
    Finish,
}

/// Masks a text stream chunk by chunk. See the module docs for what it promises.
pub struct TextStreamMasker {
    profile: Arc<MaskingProfile>,
    field: Option<String>,
    pending: Vec<u8>,
    offset: u64,
    findings: Vec<Finding>,
    pem_budget: Option<usize>,
    hold_max: usize,
    max_match: usize,
}

impl std::fmt::Debug for TextStreamMasker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Held bytes are not masked yet: show how many, never what.
        f.debug_struct("TextStreamMasker")
            .field("profile", &self.profile.name())
            .field("held", &self.pending.len())
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

impl TextStreamMasker {
    /// A masker for a new stream under `profile`; findings name `field`.
    pub fn new(profile: Arc<MaskingProfile>, field: Option<String>) -> TextStreamMasker {
        Self::starting_at(profile, field, 0)
    }

    /// A masker whose findings count offsets from `offset` (used when a JSON stream falls back
    /// to text masking part-way).
    pub(crate) fn starting_at(
        profile: Arc<MaskingProfile>,
        field: Option<String>,
        offset: u64,
    ) -> TextStreamMasker {
        let max_match = profile.scanner.max_line_match();
        let hold_max = HOLD_MIN
            .max(max_match.saturating_mul(4))
            .max(profile.scanner.pem_cap().saturating_add(4096));
        TextStreamMasker {
            profile,
            field,
            pending: Vec::new(),
            offset,
            findings: Vec::new(),
            pem_budget: None,
            hold_max,
            max_match,
        }
    }

    /// Bytes held back right now (bounded by the hold-back limit plus one chunk).
    pub fn held(&self) -> usize {
        self.pending.len()
    }

    fn emit(&mut self, region: &[u8], spans: &[Span], base: u64, out: &mut Vec<u8>) {
        self.profile.apply_spans(
            region,
            spans,
            base,
            self.field.as_deref(),
            false,
            out,
            &mut self.findings,
        );
    }

    fn process(&mut self, out: &mut Vec<u8>, mode: Mode) {
        let pending = std::mem::take(&mut self.pending);
        let mut pos = 0;
        loop {
            let rest = pending.get(pos..).unwrap_or(&[]);
            if rest.is_empty() {
                break;
            }
            let (limit, at_eof, forced) = match mode {
                Mode::Push => match memchr::memrchr(b'\n', rest) {
                    Some(i) => (i + 1, false, false),
                    None if rest.len() > self.hold_max => (rest.len(), false, true),
                    None => break,
                },
                Mode::Flush | Mode::Finish => (rest.len(), true, false),
            };
            let region = rest.get(..limit).unwrap_or(&[]);
            let base = self.offset + pos as u64;
            let r = self.profile.scanner.scan(region, at_eof);
            match r.stop {
                Stop::End if forced => {
                    let mut cut = limit.saturating_sub(self.max_match).max(1);
                    let spans: Vec<Span> =
                        r.spans.iter().copied().filter(|s| s.start < cut).collect();
                    if let Some(last) = spans.last() {
                        cut = cut.max(last.end);
                    }
                    self.emit(region.get(..cut).unwrap_or(&[]), &spans, base, out);
                    pos += cut;
                    break;
                }
                Stop::End => {
                    self.emit(region, &r.spans, base, out);
                    pos += limit;
                    if mode == Mode::Push {
                        break;
                    }
                }
                Stop::Restart(e) => {
                    self.emit(region.get(..e).unwrap_or(&[]), &r.spans, base, out);
                    pos += e.max(1);
                }
                Stop::Hold(h) => {
                    self.emit(region.get(..h).unwrap_or(&[]), &r.spans, base, out);
                    pos += h;
                    break;
                }
                Stop::OpenPem => {
                    self.emit(region, &r.spans, base, out);
                    pos += limit;
                    if mode == Mode::Flush {
                        let used = r.spans.last().map_or(0, |s| s.end - s.start);
                        let cap = self.profile.scanner.pem_cap();
                        self.pem_budget = Some(cap.saturating_sub(used));
                    }
                    break;
                }
            }
        }
        self.pending = pending;
        self.pending.drain(..pos.min(self.pending.len()));
        self.offset += pos as u64;
    }

    /// Inside a PEM block that a flush cut open: swallow until its END line or the cap.
    fn continue_pem(&mut self, at_eof: bool) {
        let Some(budget) = self.pem_budget else {
            return;
        };
        let mut end = None;
        if let Some(i) = memmem::find(&self.pending, b"-----END ") {
            let after = i + 9;
            let window = self.pending.get(after..).unwrap_or(&[]);
            let window = window.get(..window.len().min(64)).unwrap_or(&[]);
            if let Some(k) = memmem::find(window, b"-----") {
                end = Some(after + k + 5);
            } else if let Some(k) = memchr::memchr(b'\n', window) {
                end = Some(after + k);
            }
        }
        let swallow = match end {
            Some(e) => Some(e.min(budget)),
            None if self.pending.len() >= budget => Some(budget),
            None if at_eof => Some(self.pending.len()),
            None => None,
        };
        let Some(n) = swallow else {
            return;
        };
        let n = n.min(self.pending.len());
        if n > 0 {
            self.findings.push(Finding {
                rule: Detector::PrivateKey.name().to_string(),
                field: self.field.clone(),
                offset: self.offset,
                length: n as u64,
            });
        }
        self.pending.drain(..n);
        self.offset += n as u64;
        self.pem_budget = if end.is_some() || n >= budget {
            None
        } else {
            Some(budget - n)
        };
    }
}

impl StreamMasker for TextStreamMasker {
    fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        if chunk.is_empty() {
            return;
        }
        let newline = memchr::memchr(b'\n', chunk).is_some();
        self.pending.extend_from_slice(chunk);
        if self.pem_budget.is_some() {
            self.continue_pem(false);
            if self.pem_budget.is_some() {
                return;
            }
            if memchr::memchr(b'\n', &self.pending).is_none() && self.pending.len() <= self.hold_max
            {
                return;
            }
        } else if !newline && self.pending.len() <= self.hold_max {
            return;
        }
        self.process(out, Mode::Push);
    }

    fn flush(&mut self, out: &mut Vec<u8>) {
        if self.pem_budget.is_some() {
            self.continue_pem(true);
        }
        self.process(out, Mode::Flush);
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        if self.pem_budget.is_some() {
            self.continue_pem(true);
        }
        self.process(out, Mode::Finish);
        self.pem_budget = None;
    }

    fn take_findings(&mut self) -> Vec<Finding> {
        std::mem::take(&mut self.findings)
    }
}
