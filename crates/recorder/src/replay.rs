//! Replay formats: terminal sessions as asciicast v2 (playable with `asciinema play`), SQL
//! sessions as a transcript, HTTP sessions as a list of exchanges.

use std::collections::BTreeMap;

use gatehouse_core::{Decision, Event, EventBody, Operation, RecordingFrame, RecordingKind};
use serde::{Deserialize, Serialize};

use crate::RecorderError;
use crate::recording::Recording;

/// Decodes UTF-8 across frame boundaries: a character split between two frames is not mangled.
#[derive(Debug, Default)]
struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    fn push(&mut self, data: &[u8]) -> String {
        self.pending.extend_from_slice(data);
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (good, after) = rest.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(good).unwrap_or_default());
                    match e.error_len() {
                        Some(n) => {
                            out.push('\u{FFFD}');
                            rest = after.get(n..).unwrap_or_default();
                        }
                        None => {
                            // An incomplete character at the end: keep it for the next frame.
                            rest = after;
                            break;
                        }
                    }
                }
            }
        }
        self.pending = rest.to_vec();
        out
    }
}

/// Renders a terminal (or exec) recording as asciicast v2.
pub fn to_asciicast(recording: &Recording) -> Result<String, RecorderError> {
    let (cols, rows) = match recording.header.kind {
        RecordingKind::Terminal { cols, rows } => (cols, rows),
        RecordingKind::Exec => (80, 24),
        _ => {
            return Err(RecorderError::Recording(
                "only terminal and exec recordings replay as asciicast".into(),
            ));
        }
    };
    let timestamp = time::OffsetDateTime::parse(
        &recording.header.started,
        &time::format_description::well_known::Rfc3339,
    )
    .map(|t| t.unix_timestamp())
    .unwrap_or(0);
    let header = serde_json::json!({
        "version": 2,
        "width": cols,
        "height": rows,
        "timestamp": timestamp,
        "title": format!("gatehouse session {}", recording.header.session),
        "env": {"TERM": "xterm-256color"},
    });
    let mut out = header.to_string();
    out.push('\n');
    let (mut o, mut i) = (Utf8Stream::default(), Utf8Stream::default());
    for f in &recording.frames {
        let t = f.at_us as f64 / 1e6;
        let (code, text) = match &f.frame {
            RecordingFrame::Output { data } | RecordingFrame::ErrorOutput { data } => {
                ("o", o.push(data))
            }
            RecordingFrame::Input { data } => ("i", i.push(data)),
            RecordingFrame::Resize { cols, rows } => ("r", format!("{cols}x{rows}")),
            _ => continue,
        };
        if text.is_empty() {
            continue;
        }
        let line = serde_json::to_string(&(
            serde_json::json!(format!("{t:.6}").parse::<f64>().unwrap_or(t)),
            code,
            text,
        ))
        .map_err(|e| RecorderError::Recording(e.to_string()))?;
        out.push_str(&line);
        out.push('\n');
    }
    Ok(out)
}

/// One statement of a SQL transcript.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TranscriptStatement {
    /// Operation index in the session.
    pub index: u64,
    /// Statement text.
    pub text: Option<String>,
    /// The policy decision.
    pub decision: Option<Decision>,
    /// Command tag or SQLSTATE.
    pub status: Option<String>,
    /// Row count reported.
    pub row_count: Option<u64>,
    /// Column names of the recorded rows.
    pub columns: Vec<String>,
    /// Masked rows, at most the cap.
    pub rows: Vec<serde_json::Value>,
    /// Rows recorded beyond the cap (not shown).
    pub rows_omitted: u64,
}

/// Builds the transcript of a SQL session from its audit events (statements, decisions, results)
/// and its recording (masked rows: entries labelled `rows` with `{"index", "columns", "rows"}`,
/// and `statement` entries with `{"index", "text"}`), showing at most `row_cap` rows per statement.
pub fn sql_transcript(
    recording: Option<&Recording>,
    events: &[Event],
    row_cap: usize,
) -> Vec<TranscriptStatement> {
    let mut items: BTreeMap<u64, TranscriptStatement> = BTreeMap::new();
    for e in events {
        match &e.body {
            EventBody::Operation {
                index,
                operation,
                decision,
            } => {
                let it = items.entry(*index).or_insert_with(|| TranscriptStatement {
                    index: *index,
                    ..Default::default()
                });
                it.text = Some(match operation {
                    Operation::Sql(op) => op.text.clone(),
                    other => other.summary(),
                });
                it.decision = Some(decision.clone());
            }
            EventBody::OperationResult(r) => {
                let it = items.entry(r.index).or_insert_with(|| TranscriptStatement {
                    index: r.index,
                    ..Default::default()
                });
                it.status = Some(r.status.clone());
                it.row_count = r.rows;
            }
            _ => {}
        }
    }
    if let Some(rec) = recording {
        for f in &rec.frames {
            let RecordingFrame::Entry { label, body } = &f.frame else {
                continue;
            };
            let Some(index) = body.get("index").and_then(serde_json::Value::as_u64) else {
                continue;
            };
            let it = items.entry(index).or_insert_with(|| TranscriptStatement {
                index,
                ..Default::default()
            });
            match label.as_str() {
                "statement" if it.text.is_none() => {
                    it.text = body.get("text").and_then(|t| t.as_str()).map(str::to_owned);
                }
                "rows" => {
                    if let Some(cols) = body.get("columns").and_then(|c| c.as_array()) {
                        it.columns = cols
                            .iter()
                            .filter_map(|c| c.as_str().map(str::to_owned))
                            .collect();
                    }
                    for row in body
                        .get("rows")
                        .and_then(|r| r.as_array())
                        .into_iter()
                        .flatten()
                    {
                        if it.rows.len() < row_cap {
                            it.rows.push(row.clone());
                        } else {
                            it.rows_omitted += 1;
                        }
                    }
                }
                _ => {}
            }
        }
    }
    items.into_values().collect()
}

/// Renders a transcript as text.
pub fn render_sql_transcript(statements: &[TranscriptStatement]) -> String {
    let mut out = String::new();
    for s in statements {
        out.push_str(&format!(
            "-- [{}] {}\n",
            s.index,
            s.text.as_deref().unwrap_or("(statement not recorded)")
        ));
        if let Some(d) = &s.decision {
            out.push_str(
                &format!(
                    "--   decision: {:?} by rule {} ({})\n",
                    d.verdict, d.rule_id, d.reason
                )
                .to_lowercase(),
            );
        }
        if let Some(st) = &s.status {
            match s.row_count {
                Some(n) => out.push_str(&format!("--   result: {st}, {n} rows\n")),
                None => out.push_str(&format!("--   result: {st}\n")),
            }
        }
        if !s.columns.is_empty() {
            out.push_str(&format!("--   | {} |\n", s.columns.join(" | ")));
        }
        for r in &s.rows {
            out.push_str(&format!("--   {r}\n"));
        }
        if s.rows_omitted > 0 {
            out.push_str(&format!("--   … {} more rows not shown\n", s.rows_omitted));
        }
    }
    out
}

/// One HTTP exchange.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpExchange {
    /// Microseconds since the recording opened, at the request.
    pub at_us: u64,
    /// The request entry body.
    pub request: Option<serde_json::Value>,
    /// The response entry body.
    pub response: Option<serde_json::Value>,
}

/// Lists the exchanges of an HTTP recording (entries labelled `http_request` / `http_response`;
/// each response pairs with the oldest request still waiting for one).
pub fn http_exchanges(recording: &Recording) -> Vec<HttpExchange> {
    let mut out: Vec<HttpExchange> = Vec::new();
    let mut waiting = std::collections::VecDeque::new();
    for f in &recording.frames {
        let RecordingFrame::Entry { label, body } = &f.frame else {
            continue;
        };
        match label.as_str() {
            "http_request" => {
                waiting.push_back(out.len());
                out.push(HttpExchange {
                    at_us: f.at_us,
                    request: Some(body.clone()),
                    response: None,
                });
            }
            "http_response" => match waiting.pop_front().and_then(|i| out.get_mut(i)) {
                Some(x) => x.response = Some(body.clone()),
                None => out.push(HttpExchange {
                    at_us: f.at_us,
                    request: None,
                    response: Some(body.clone()),
                }),
            },
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_split_across_frames() {
        let mut s = Utf8Stream::default();
        let e = "é".as_bytes();
        assert_eq!(s.push(&e[..1]), "");
        assert_eq!(s.push(&e[1..]), "é");
        assert_eq!(s.push(b"\xffa"), "\u{FFFD}a");
    }
}
