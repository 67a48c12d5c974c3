//! Offline verification of audit logs: a pure function of the stored bytes, the trusted public
//! keys and (optionally) the checkpoints held by witnesses.
//!
//! Checks, per log: every line's hash over its exact bytes, the `prev` link (across segments
//! too), sequence continuity, the log id, every in-chain checkpoint (its head must be the hash of
//! the record before it and its signature must verify), retention cuts (a chain that does not
//! start at the genesis must be explained by a signed cut), seals (signed like checkpoints, over
//! a different message; a later run must continue with a signed checkpoint right after a seal),
//! and every witness checkpoint (the chain must reach its sequence with the same hash, and hold
//! the checkpoint or seal record itself). The first problem found is reported with its segment,
//! line and sequence; nothing after it is trusted.
//!
//! A log without problems is not necessarily complete: only signed records vouch for what came
//! before them. The verdict says where the last signature is ([`LogVerdict::last_signed`]), how
//! many records follow it ([`LogVerdict::unsigned_after`]) and whether the log ends with a seal
//! ([`LogVerdict::status`]). Without witnesses, a log cut back exactly to an earlier run's seal
//! cannot be told from a log that ended there.
//!
//! [`ChainVerifier`] takes one segment at a time so that a log larger than memory verifies in
//! constant space; [`verify`](fn@verify) is the convenience over in-memory logs.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoint, RetentionCut, SignatureProblem, TrustedKeys};
use crate::format::{
    self, GENESIS, LineError, ParsedLine, RecordKind, SCHEMA_VERSION, hex32, parse_line,
};
use crate::log::{ForeignData, RecoveryCut};

/// One stored segment: its name (which orders it) and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentData {
    /// File or object name, e.g. `seg-00000000000000000001.jsonl`.
    pub name: String,
    /// The bytes as stored.
    pub bytes: Vec<u8>,
}

/// All stored segments of one log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogData {
    /// Log id.
    pub log: String,
    /// Segments, in any order (they are ordered by name).
    pub segments: Vec<SegmentData>,
}

/// What verification trusts.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Public keys whose signatures are accepted.
    pub keys: TrustedKeys,
    /// Checkpoints held by witnesses (they catch a truncated tail or a rewritten chain).
    pub witnesses: Vec<Checkpoint>,
    /// Also check that every line is well-formed JSON (costs some speed; the hash chain does not
    /// need it).
    pub check_json: bool,
    /// Threads hashing lines in parallel (0: one per CPU). Links and signatures are checked in
    /// order afterwards; the result does not depend on this.
    pub threads: usize,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            keys: TrustedKeys::new(),
            witnesses: Vec::new(),
            check_json: true,
            threads: 0,
        }
    }
}

/// What is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ProblemKind {
    /// A line is not a well-formed record.
    Malformed,
    /// A schema version this verifier does not know.
    UnsupportedSchema,
    /// A record names another log.
    WrongLog,
    /// The stored hash does not match the line's bytes (an edit).
    HashMismatch,
    /// `prev` is not the hash of the record before (a deletion, insertion or reorder).
    BrokenLink,
    /// The sequence does not continue (a deletion, insertion or reorder).
    SequenceGap,
    /// A checkpoint's head is not the chain's hash at that point (a rewrite).
    CheckpointMismatch,
    /// A checkpoint or retention cut signature does not verify.
    BadSignature,
    /// A signature by a key that is not trusted.
    UnknownKey,
    /// A witness checkpoint disagrees with the chain (a rewrite with recomputed hashes).
    WitnessMismatch,
    /// The chain ends before a witness checkpoint (a truncated tail).
    TruncatedTail,
    /// The final line is incomplete (a crash before recovery ran).
    TornTail,
    /// The chain does not start at the genesis and no signed retention cut explains it.
    MissingStart,
    /// The log has no records at all.
    Empty,
    /// Records follow a seal without the signed checkpoint a new run writes first (appended by
    /// someone without the signing key).
    UnsignedAfterSeal,
    /// A checkpoint or seal record holds something its signature does not cover: an unknown
    /// member, a `time` other than the signed one, or bytes other than the canonical encoding of
    /// its signed fields (an edit with a recomputed hash).
    UnsignedContent,
}

/// The first problem in a log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// What is wrong.
    pub kind: ProblemKind,
    /// Segment name.
    pub segment: String,
    /// 1-based line within the segment (0 when the problem is not on a line).
    pub line: u64,
    /// Sequence of the bad record (as stored, or as expected when the line is unreadable).
    pub sequence: Option<u64>,
    /// Human-readable detail.
    pub detail: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} in {} line {}", self.kind, self.segment, self.line)?;
        if let Some(s) = self.sequence {
            write!(f, " (sequence {s})")?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// The verdict on one log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogVerdict {
    /// Log id.
    pub log: String,
    /// Segments read.
    pub segments: u64,
    /// Records verified (up to the first problem).
    pub records: u64,
    /// First sequence.
    pub first_sequence: Option<u64>,
    /// Last verified sequence.
    pub last_sequence: Option<u64>,
    /// Hex hash of the last verified record.
    pub head: Option<String>,
    /// In-chain checkpoints whose signature verified.
    pub checkpoints: u64,
    /// Sequence of the last verified checkpoint record.
    pub last_checkpoint: Option<u64>,
    /// Witness checkpoints matched.
    pub witnesses_matched: u64,
    /// Recovery cuts found (each is a crash whose torn tail was cut).
    pub recovery_cuts: u64,
    /// Retention cuts found.
    pub retention_cuts: u64,
    /// Seals found (one per run that was closed).
    #[serde(default)]
    pub seals: u64,
    /// The last checkpoint or seal record whose signature verified.
    #[serde(default)]
    pub last_signed: Option<SignedHead>,
    /// Verified records after the last signed record: nothing vouches for them (they may be
    /// records a running gateway has not checkpointed yet, or made up).
    #[serde(default)]
    pub unsigned_after: u64,
    /// The log ends with a seal: it was closed, and nothing was appended after.
    #[serde(default)]
    pub sealed: bool,
    /// Crash recoveries found: where a torn final line was cut on restart.
    #[serde(default)]
    pub recoveries: Vec<RecoveryNote>,
    /// Records that a run which ended without a seal wrote after its last signature: the
    /// restart's checkpoints sign them as they found them, so nothing vouches that they are what
    /// that run wrote (someone with write access could have changed them in between).
    #[serde(default)]
    pub unsigned_before_recovery: u64,
    /// Changes made to a segment behind the running gateway's back, as the gateway found and
    /// recorded them (`foreign_data` records): the log was written to by someone else. Any of
    /// them fails the verdict ([`LogStatus::Failed`]), though the chain around them verifies.
    #[serde(default)]
    pub foreign: Vec<ForeignNote>,
    /// The first problem, if any.
    pub problem: Option<Problem>,
}

/// Where a log's last signature is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedHead {
    /// Sequence of the checkpoint or seal record.
    pub sequence: u64,
    /// The record it signs (the one before it).
    pub covers: u64,
    /// When it was signed (RFC 3339, as signed).
    pub time: String,
    /// It is a seal.
    pub seal: bool,
}

/// A crash recovery found in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryNote {
    /// Sequence of the `recovery_cut` record.
    pub sequence: u64,
    /// The segment whose torn tail was cut.
    pub segment: String,
    /// How many torn bytes were cut.
    pub torn_bytes: u64,
    /// Records the run before wrote after its last signature (never signed by it).
    #[serde(default)]
    pub unsigned_before: u64,
}

/// A change made behind the running gateway's back, as its `foreign_data` record states it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForeignNote {
    /// Sequence of the `foreign_data` record.
    pub sequence: u64,
    /// When the gateway found it (RFC 3339).
    pub time: String,
    /// What it found and did.
    pub found: ForeignData,
}

impl std::fmt::Display for ForeignNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = &self.found;
        if d.found_bytes < d.written_bytes {
            write!(
                f,
                "segment {} was cut behind the gateway's back from {} to {} bytes (its own records were removed); found at {}, recorded at sequence {}; the chain continues in the next segment",
                d.segment, d.written_bytes, d.found_bytes, self.time, self.sequence
            )
        } else {
            write!(
                f,
                "{} byte(s) ({} line(s){}) were appended to segment {} after byte {} by someone other than the gateway; found at {}, recorded at sequence {}, cut from the segment{} (SHA-256 {})",
                d.foreign_bytes,
                d.foreign_lines,
                match d.claimed_sequences {
                    Some((a, b)) if a == b => format!(", claiming sequence {a}"),
                    Some((a, b)) => format!(", claiming sequences {a}..{b}"),
                    None => String::new(),
                },
                d.segment,
                d.written_bytes,
                self.time,
                self.sequence,
                match &d.kept_as {
                    Some(k) => format!(" and kept in {k}"),
                    None => String::new(),
                },
                d.foreign_sha256
            )
        }
    }
}

/// What a verdict amounts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogStatus {
    /// Verified, and the log ends with a valid seal.
    Sealed,
    /// Verified up to the last signed record; the log is not sealed (a running gateway, a crash,
    /// or an end that was cut or extended) and `unsigned_after` records follow the signature.
    Unsealed,
    /// A problem was found.
    Failed,
}

impl LogVerdict {
    /// No problem found and nothing written behind the gateway's back (the log may still be
    /// unsealed: see [`LogVerdict::status`]).
    pub fn ok(&self) -> bool {
        self.problem.is_none() && self.foreign.is_empty()
    }

    /// Sealed, unsealed (with unsigned records) or failed.
    pub fn status(&self) -> LogStatus {
        if self.problem.is_some() || !self.foreign.is_empty() {
            LogStatus::Failed
        } else if self.sealed && self.unsigned_before_recovery == 0 {
            LogStatus::Sealed
        } else {
            LogStatus::Unsealed
        }
    }
}

/// The verdict on a set of logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// One verdict per log.
    pub logs: Vec<LogVerdict>,
}

impl VerifyReport {
    /// Every log verified.
    pub fn ok(&self) -> bool {
        !self.logs.is_empty() && self.logs.iter().all(LogVerdict::ok)
    }

    /// The worst status across logs (`Failed` when there are no logs).
    pub fn status(&self) -> LogStatus {
        self.logs
            .iter()
            .map(LogVerdict::status)
            .max()
            .unwrap_or(LogStatus::Failed)
    }

    /// The first problem, across logs.
    pub fn first_problem(&self) -> Option<&Problem> {
        self.logs.iter().find_map(|l| l.problem.as_ref())
    }
}

/// Lines hashed per parallel block (bounds the memory of parsed lines).
const BLOCK_LINES: usize = 1 << 16;

/// What the parallel pass found out about one line. Everything that needs the line's bytes is
/// decided here, while they are in cache; the in-order pass then reads only these results.
struct CheckedLine<'a> {
    parsed: Result<ParsedLine<'a>, LineError>,
    /// The line is well-formed JSON (or the check is off).
    json_ok: bool,
    /// The record names the log being verified.
    log_ok: bool,
}

/// The per-line checks, shared by the threads of the parallel pass.
struct LineCheck<'l> {
    log: &'l str,
    check_json: bool,
}

impl LineCheck<'_> {
    fn one<'a>(&self, line: &'a [u8]) -> CheckedLine<'a> {
        let parsed = parse_line(line);
        let (json_ok, log_ok) = match &parsed {
            Ok(p) => (
                !self.check_json || crate::json_check::record_is_json(line, p),
                p.log == self.log,
            ),
            // A line that does not parse is reported as malformed, whatever else is true.
            Err(_) => (false, false),
        };
        CheckedLine {
            parsed,
            json_ok,
            log_ok,
        }
    }
}

/// Parses and hashes `lines` (the expensive, independent part of verification) on up to
/// `threads` threads (this one included), returning one result per line, in order.
fn check_lines<'a>(
    lines: &[&'a [u8]],
    threads: usize,
    check: &LineCheck<'_>,
) -> Vec<CheckedLine<'a>> {
    if threads <= 1 || lines.len() < 2048 {
        return lines.iter().map(|l| check.one(l)).collect();
    }
    let per = lines.len().div_ceil(threads);
    let mut chunks = lines.chunks(per);
    let own = chunks.next().unwrap_or_default();
    std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .map(|chunk| {
                let handle =
                    scope.spawn(move || chunk.iter().map(|l| check.one(l)).collect::<Vec<_>>());
                (chunk.len(), handle)
            })
            .collect();
        let mut out = Vec::with_capacity(lines.len());
        out.extend(own.iter().map(|l| check.one(l)));
        for (len, handle) in handles {
            match handle.join() {
                Ok(v) if v.len() == len => out.extend(v),
                // Never expected; but a lost result must never read as a good line.
                _ => out.extend((0..len).map(|_| CheckedLine {
                    parsed: Err(LineError::BadPrefix),
                    json_ok: false,
                    log_ok: false,
                })),
            }
        }
        out
    })
}

/// For a `foreign_data` record where the chain breaks: what the gateway recorded there.
fn foreign_hint(p: &ParsedLine<'_>) -> String {
    #[derive(Deserialize)]
    struct Timed {
        time: String,
        body: ForeignData,
    }
    if p.kind != RecordKind::ForeignData {
        return String::new();
    }
    match serde_json::from_slice::<Timed>(&p.payload_object()) {
        Ok(t) => format!(
            "; the gateway recorded here: {}",
            ForeignNote {
                sequence: p.sequence,
                time: t.time,
                found: t.body,
            }
        ),
        Err(_) => String::new(),
    }
}

/// Verifies a set of logs.
pub fn verify(logs: &[LogData], options: &VerifyOptions) -> VerifyReport {
    VerifyReport {
        logs: logs.iter().map(|l| verify_log(l, options)).collect(),
    }
}

/// Verifies one log held in memory.
pub fn verify_log(log: &LogData, options: &VerifyOptions) -> LogVerdict {
    let mut order: Vec<&SegmentData> = log.segments.iter().collect();
    order.sort_by(|a, b| a.name.cmp(&b.name));
    let mut v = ChainVerifier::new(&log.log, options);
    let last = order.len().saturating_sub(1);
    for (i, seg) in order.into_iter().enumerate() {
        if !v.segment(&seg.name, &seg.bytes, i == last) {
            break;
        }
    }
    v.finish()
}

#[derive(Deserialize)]
struct Envelope<T> {
    body: T,
}

/// A checkpoint or seal record's payload: exactly `time` and `body`, nothing else.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignedEnvelope {
    time: String,
    body: Checkpoint,
}

/// Why a checkpoint or seal record's payload is not the canonical encoding of its signed
/// fields (`None`: it is).
fn unsigned_content(payload: &[u8], env: &SignedEnvelope) -> Option<String> {
    if env.time != env.body.time {
        return Some(format!(
            "its time {:?} is not the signed time {:?}",
            env.time, env.body.time
        ));
    }
    let canonical = crate::log::kind_payload(&env.body.time, &env.body);
    if canonical == payload {
        return None;
    }
    let at = canonical
        .iter()
        .zip(payload)
        .position(|(a, b)| a != b)
        .unwrap_or(canonical.len().min(payload.len()));
    let near = |b: &[u8]| {
        String::from_utf8_lossy(b.get(at..).unwrap_or_default())
            .chars()
            .take(24)
            .collect::<String>()
    };
    Some(format!(
        "its bytes are not the canonical encoding of its signed fields (from byte {at} of the payload: found {:?}, expected {:?})",
        near(payload),
        near(&canonical)
    ))
}

/// Verifies one log segment by segment (feed segments in name order).
#[derive(Debug)]
pub struct ChainVerifier<'o> {
    options: &'o VerifyOptions,
    verdict: LogVerdict,
    expected_sequence: Option<u64>,
    prev: Option<[u8; 32]>,
    /// (segment, sequence, prev) of the first record when it is not the genesis.
    start_needing_cut: Option<(String, u64, [u8; 32])>,
    retention_cuts: Vec<RetentionCut>,
    witness_heads: HashMap<u64, Vec<[u8; 32]>>,
    /// Per witness checkpoint over record `s`: record `s + 1` must be that checkpoint (or seal).
    witness_records: HashMap<u64, Vec<bool>>,
    last_kind: Option<RecordKind>,
    last_segment: String,
    /// Records since the last checkpoint or seal.
    since_signed: u64,
}

impl<'o> ChainVerifier<'o> {
    /// Starts verifying log `log`.
    pub fn new(log: &str, options: &'o VerifyOptions) -> Self {
        let mut verdict = LogVerdict {
            log: log.to_owned(),
            segments: 0,
            records: 0,
            first_sequence: None,
            last_sequence: None,
            head: None,
            checkpoints: 0,
            last_checkpoint: None,
            witnesses_matched: 0,
            recovery_cuts: 0,
            retention_cuts: 0,
            seals: 0,
            last_signed: None,
            unsigned_after: 0,
            sealed: false,
            recoveries: Vec::new(),
            unsigned_before_recovery: 0,
            foreign: Vec::new(),
            problem: None,
        };
        let mut witness_heads: HashMap<u64, Vec<[u8; 32]>> = HashMap::new();
        let mut witness_records: HashMap<u64, Vec<bool>> = HashMap::new();
        for w in options.witnesses.iter().filter(|w| w.log == log) {
            let problem = match w.verify(&options.keys) {
                Ok(()) => match format::parse_hex32(w.head.as_bytes()) {
                    Some(h) => {
                        witness_heads.entry(w.sequence).or_default().push(h);
                        witness_records
                            .entry(w.sequence.saturating_add(1))
                            .or_default()
                            .push(w.sealed);
                        None
                    }
                    None => Some("witness checkpoint head is not a hash".to_owned()),
                },
                Err(SignatureProblem::UnknownKey) => Some(format!(
                    "witness checkpoint at sequence {} is signed by untrusted key {}",
                    w.sequence, w.key_id
                )),
                Err(SignatureProblem::Invalid) => Some(format!(
                    "witness checkpoint at sequence {} has a bad signature",
                    w.sequence
                )),
            };
            if let Some(detail) = problem {
                verdict.problem.get_or_insert(Problem {
                    kind: ProblemKind::BadSignature,
                    segment: "(witness)".into(),
                    line: 0,
                    sequence: Some(w.sequence),
                    detail,
                });
            }
        }
        Self {
            options,
            verdict,
            expected_sequence: None,
            prev: None,
            start_needing_cut: None,
            retention_cuts: Vec::new(),
            witness_heads,
            witness_records,
            last_kind: None,
            last_segment: String::new(),
            since_signed: 0,
        }
    }

    fn fail(
        &mut self,
        kind: ProblemKind,
        segment: &str,
        line: u64,
        sequence: Option<u64>,
        detail: String,
    ) -> bool {
        self.verdict.problem.get_or_insert(Problem {
            kind,
            segment: segment.to_owned(),
            line,
            sequence,
            detail,
        });
        false
    }

    /// Verifies the next segment. `is_last` allows nothing different except that a torn final
    /// line is reported as such. Returns `false` once a problem was found (stop feeding).
    pub fn segment(&mut self, name: &str, bytes: &[u8], is_last: bool) -> bool {
        if self.verdict.problem.is_some() {
            return false;
        }
        self.verdict.segments += 1;
        self.last_segment = name.to_owned();
        let mut lines: Vec<&[u8]> = Vec::new();
        let mut pos = 0usize;
        let mut torn: Option<usize> = None;
        while pos < bytes.len() {
            let rest = bytes.get(pos..).unwrap_or_default();
            match memchr::memchr(b'\n', rest) {
                Some(nl) => {
                    lines.push(rest.get(..nl).unwrap_or_default());
                    pos += nl + 1;
                }
                None => {
                    torn = Some(rest.len());
                    break;
                }
            }
        }
        let threads = match self.options.threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        let mut line_no = 0u64;
        for block in lines.chunks(BLOCK_LINES) {
            let check = LineCheck {
                log: &self.verdict.log,
                check_json: self.options.check_json,
            };
            for checked in check_lines(block, threads, &check) {
                line_no += 1;
                if !self.line(name, line_no, checked) {
                    return false;
                }
            }
        }
        if let Some(n) = torn {
            let kind = if is_last {
                ProblemKind::TornTail
            } else {
                ProblemKind::Malformed
            };
            return self.fail(
                kind,
                name,
                line_no + 1,
                self.expected_sequence,
                if is_last {
                    format!(
                        "{n} bytes after the last complete line: a crash mid-write (the next start cuts them and records a recovery cut) or a cut segment"
                    )
                } else {
                    format!("{n} bytes after the last complete line of a closed segment")
                },
            );
        }
        true
    }

    fn line(&mut self, segment: &str, line_no: u64, checked: CheckedLine<'_>) -> bool {
        let CheckedLine {
            parsed,
            json_ok,
            log_ok,
        } = checked;
        let p = match parsed {
            Ok(p) => p,
            Err(e) => {
                let seq = self.expected_sequence;
                return self.fail(ProblemKind::Malformed, segment, line_no, seq, e.to_string());
            }
        };
        let seq = Some(p.sequence);
        if p.schema_version != SCHEMA_VERSION {
            return self.fail(
                ProblemKind::UnsupportedSchema,
                segment,
                line_no,
                seq,
                format!("schema_version {}", p.schema_version),
            );
        }
        if !log_ok {
            let detail = format!("record of log {:?} in log {:?}", p.log, self.verdict.log);
            return self.fail(ProblemKind::WrongLog, segment, line_no, seq, detail);
        }
        if p.computed_hash != p.stored_hash {
            return self.fail(
                ProblemKind::HashMismatch,
                segment,
                line_no,
                seq,
                "the record's bytes do not match its hash (edited)".into(),
            );
        }
        if let Some(expected) = self.expected_sequence
            && p.sequence != expected
        {
            let detail = format!(
                "expected sequence {expected}, found {}{}",
                p.sequence,
                foreign_hint(&p)
            );
            return self.fail(ProblemKind::SequenceGap, segment, line_no, seq, detail);
        }
        match self.prev {
            Some(prev) if p.prev != prev => {
                return self.fail(
                    ProblemKind::BrokenLink,
                    segment,
                    line_no,
                    seq,
                    format!(
                        "prev {} is not the hash of the record before ({}){}",
                        hex32(&p.prev),
                        hex32(&prev),
                        foreign_hint(&p)
                    ),
                );
            }
            Some(_) => {}
            None => {
                if p.sequence != 1 || p.prev != GENESIS {
                    self.start_needing_cut = Some((segment.to_owned(), p.sequence, p.prev));
                }
                self.verdict.first_sequence = Some(p.sequence);
            }
        }
        if !json_ok {
            return self.fail(
                ProblemKind::Malformed,
                segment,
                line_no,
                seq,
                "not valid JSON".into(),
            );
        }
        if self.last_kind == Some(RecordKind::Seal) && p.kind != RecordKind::Checkpoint {
            let sealed_at = p.sequence.saturating_sub(1);
            return self.fail(
                ProblemKind::UnsignedAfterSeal,
                segment,
                line_no,
                seq,
                format!(
                    "a {} record follows the seal at sequence {sealed_at}; a new run starts with a signed checkpoint (records appended after the seal by someone without the signing key)",
                    p.kind.as_str()
                ),
            );
        }
        if let Some(sealed) = self.witness_records.remove(&p.sequence) {
            let want_seal = sealed.iter().any(|s| *s);
            let want_checkpoint = sealed.iter().any(|s| !*s);
            let fits = match p.kind {
                RecordKind::Seal => !want_checkpoint,
                RecordKind::Checkpoint => !want_seal,
                _ => false,
            };
            if !fits {
                let what = if want_seal { "seal" } else { "checkpoint" };
                return self.fail(
                    ProblemKind::WitnessMismatch,
                    segment,
                    line_no,
                    seq,
                    format!(
                        "a witness holds the {what} written as this record, but the log has a {} record here",
                        p.kind.as_str()
                    ),
                );
            }
        }
        match p.kind {
            RecordKind::Event => {}
            RecordKind::Checkpoint | RecordKind::Seal => {
                let is_seal = p.kind == RecordKind::Seal;
                let what = if is_seal { "seal" } else { "checkpoint" };
                let env = match serde_json::from_slice::<SignedEnvelope>(&p.payload_object()) {
                    Ok(e) => e,
                    Err(e) => {
                        // An unknown member (serde names it) is content no signature covers.
                        let kind = if e.to_string().contains("unknown field") {
                            ProblemKind::UnsignedContent
                        } else {
                            ProblemKind::Malformed
                        };
                        return self.fail(
                            kind,
                            segment,
                            line_no,
                            seq,
                            format!("{what} record: {e}"),
                        );
                    }
                };
                if let Some(why) = unsigned_content(p.payload, &env) {
                    return self.fail(
                        ProblemKind::UnsignedContent,
                        segment,
                        line_no,
                        seq,
                        format!("{what} record: {why}: content its signature does not cover"),
                    );
                }
                let cp = env.body;
                if cp.log != p.log
                    || cp.sequence.checked_add(1) != Some(p.sequence)
                    || cp.head != hex32(&p.prev)
                    || cp.sealed != is_seal
                {
                    return self.fail(
                        ProblemKind::CheckpointMismatch,
                        segment,
                        line_no,
                        seq,
                        format!(
                            "{what} names sequence {} head {}{}, the chain has {}",
                            cp.sequence,
                            cp.head,
                            if cp.sealed { " (sealed)" } else { "" },
                            hex32(&p.prev)
                        ),
                    );
                }
                if let Err(e) = cp.verify(&self.options.keys) {
                    return self.signature_problem(e, segment, line_no, seq, what, &cp.key_id);
                }
                if is_seal {
                    self.verdict.seals += 1;
                } else {
                    self.verdict.checkpoints += 1;
                    self.verdict.last_checkpoint = Some(p.sequence);
                }
                self.verdict.last_signed = Some(SignedHead {
                    sequence: p.sequence,
                    covers: cp.sequence,
                    time: cp.time,
                    seal: is_seal,
                });
            }
            RecordKind::RetentionCut => {
                let cut =
                    match serde_json::from_slice::<Envelope<RetentionCut>>(&p.payload_object()) {
                        Ok(e) => e.body,
                        Err(e) => {
                            return self.fail(
                                ProblemKind::Malformed,
                                segment,
                                line_no,
                                seq,
                                format!("retention cut body: {e}"),
                            );
                        }
                    };
                if let Err(e) = cut.verify(&self.options.keys) {
                    return self.signature_problem(
                        e,
                        segment,
                        line_no,
                        seq,
                        "retention cut",
                        &cut.key_id,
                    );
                }
                if cut.log != p.log {
                    let detail = "retention cut names another log".to_owned();
                    return self.fail(ProblemKind::WrongLog, segment, line_no, seq, detail);
                }
                self.verdict.retention_cuts += 1;
                self.retention_cuts.push(cut);
            }
            RecordKind::ForeignData => {
                #[derive(Deserialize)]
                struct Timed {
                    time: String,
                    body: ForeignData,
                }
                let note = match serde_json::from_slice::<Timed>(&p.payload_object()) {
                    Ok(t) => ForeignNote {
                        sequence: p.sequence,
                        time: t.time,
                        found: t.body,
                    },
                    Err(e) => {
                        return self.fail(
                            ProblemKind::Malformed,
                            segment,
                            line_no,
                            seq,
                            format!("foreign data body: {e}"),
                        );
                    }
                };
                self.verdict.foreign.push(note);
            }
            RecordKind::RecoveryCut => {
                let cut = match serde_json::from_slice::<Envelope<RecoveryCut>>(&p.payload_object())
                {
                    Ok(e) => e.body,
                    Err(e) => {
                        return self.fail(
                            ProblemKind::Malformed,
                            segment,
                            line_no,
                            seq,
                            format!("recovery cut body: {e}"),
                        );
                    }
                };
                self.verdict.recovery_cuts += 1;
                self.verdict.unsigned_before_recovery += self.since_signed;
                self.verdict.recoveries.push(RecoveryNote {
                    sequence: p.sequence,
                    segment: cut.segment,
                    torn_bytes: cut.torn_bytes,
                    unsigned_before: self.since_signed,
                });
            }
        }
        if let Some(heads) = self.witness_heads.remove(&p.sequence) {
            if heads.iter().any(|h| *h != p.stored_hash) {
                return self.fail(
                    ProblemKind::WitnessMismatch,
                    segment,
                    line_no,
                    seq,
                    "a witness checkpoint holds a different hash for this record (chain rewritten)"
                        .into(),
                );
            }
            self.verdict.witnesses_matched += heads.len() as u64;
        }
        self.prev = Some(p.stored_hash);
        self.since_signed = if matches!(p.kind, RecordKind::Checkpoint | RecordKind::Seal) {
            0
        } else {
            self.since_signed + 1
        };
        self.last_kind = Some(p.kind);
        self.expected_sequence = p.sequence.checked_add(1);
        self.verdict.records += 1;
        self.verdict.last_sequence = Some(p.sequence);
        true
    }

    fn signature_problem(
        &mut self,
        e: SignatureProblem,
        segment: &str,
        line_no: u64,
        seq: Option<u64>,
        what: &str,
        key: &str,
    ) -> bool {
        let (kind, detail) = match e {
            SignatureProblem::UnknownKey => (
                ProblemKind::UnknownKey,
                format!("{what} signed by untrusted key {key}"),
            ),
            SignatureProblem::Invalid => (
                ProblemKind::BadSignature,
                format!("{what} signature does not verify"),
            ),
        };
        self.fail(kind, segment, line_no, seq, detail)
    }

    /// Ends verification and returns the verdict.
    pub fn finish(mut self) -> LogVerdict {
        if self.verdict.problem.is_none() && self.verdict.records == 0 {
            let seg = self.last_segment.clone();
            self.fail(ProblemKind::Empty, &seg, 0, None, "no records".into());
        }
        if self.verdict.problem.is_none()
            && let Some((segment, sequence, prev)) = self.start_needing_cut.take()
        {
            let prev_hex = hex32(&prev);
            let explained = self.retention_cuts.iter().any(|c| {
                c.first_retained_sequence == sequence && c.first_retained_prev == prev_hex
            });
            if !explained {
                self.fail(
                    ProblemKind::MissingStart,
                    &segment,
                    1,
                    Some(sequence),
                    format!("the chain starts at sequence {sequence}; no signed retention cut explains the missing records"),
                );
            }
        }
        if self.verdict.problem.is_none() {
            let first = self.verdict.first_sequence.unwrap_or(0);
            let last = self.verdict.last_sequence.unwrap_or(0);
            // A witness checkpoint over record `s` was written as record `s + 1`: both must be
            // there.
            let beyond = self
                .witness_records
                .keys()
                .filter(|s| **s > last)
                .min()
                .copied();
            if let Some(s) = beyond {
                let seg = self.last_segment.clone();
                let sealed = self
                    .witness_records
                    .get(&s)
                    .is_some_and(|v| v.iter().any(|x| *x));
                let what = if sealed { "seal" } else { "checkpoint" };
                self.fail(
                    ProblemKind::TruncatedTail,
                    &seg,
                    0,
                    Some(last + 1),
                    format!(
                        "a witness holds the {what} written as record {s} (over record {}), the log ends at {last}: its end was cut",
                        s - 1
                    ),
                );
            }
            // Witness checkpoints before `first` were dropped by a (verified) retention cut.
            let _ = first;
        }
        if let Some(prev) = self.prev {
            self.verdict.head = Some(hex32(&prev));
        }
        let last = self.verdict.last_sequence.unwrap_or(0);
        self.verdict.unsigned_after = match &self.verdict.last_signed {
            Some(h) => last.saturating_sub(h.sequence),
            None => self.verdict.records,
        };
        self.verdict.sealed = self.verdict.problem.is_none()
            && self.last_kind == Some(RecordKind::Seal)
            && self.verdict.unsigned_after == 0;
        self.verdict
    }
}
