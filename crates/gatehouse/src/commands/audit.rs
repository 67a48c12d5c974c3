//! `gatehouse audit verify|sessions|replay`: offline tools over an audit directory (the gateway's
//! data directory holding `audit/<log id>/` and `recordings/`, or the `audit/` directory itself).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use gatehouse_core::{RecordingKind, SessionId};
use gatehouse_recorder::read::{list_sessions, load_local_logs, session_events};
use gatehouse_recorder::storage::read_regular_file;
use gatehouse_recorder::verify::{
    LogData, LogStatus, LogVerdict, VerifyOptions, VerifyReport, verify,
};
use gatehouse_recorder::{Checkpoint, FileWitness, ObjectStoreWitness, TrustedKeys};

/// Exit status of `audit verify` for a log that verified up to its last signed checkpoint but is
/// not sealed (a running gateway, a crash, or an end that was cut or extended).
pub const EXIT_UNSEALED: u8 = 3;

use super::{CommandError, CommandResult};

/// Audit subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Verify the audit log. Exit 0: verified and sealed (closed, nothing after the seal);
    /// 3: verified up to the last signed checkpoint, not sealed, the records after it unsigned;
    /// 1: verification failed (the first bad record is named), a recording sealed in the log
    /// is missing or does not match its sealed hash, or the witness holds something it never
    /// writes (a FIFO, a misnamed or unexpected entry) or checkpoints of a log that is gone;
    /// 2: could not run (bad arguments, an audit or witness directory that does not exist or
    /// cannot be read). A recording file that no seal in the log covers is named as unsealed
    /// and never exits 0.
    Verify {
        /// The audit directory.
        dir: PathBuf,
        /// Trusted checkpoint public key (hex), repeatable. Without it the keys stored beside each
        /// log are used, which cannot detect a rewrite by someone who also replaced the key.
        #[arg(long = "key")]
        keys: Vec<String>,
        /// Where the witness keeps the signed checkpoints: a directory, or `s3://<bucket>/<prefix>`
        /// (endpoint, region and credentials from the `AWS_*` environment; `AWS_ALLOW_HTTP=true`
        /// for an `http://` endpoint). Detects a cut-off tail (also one cut back exactly to an
        /// earlier run's seal) and a rewritten chain. A witness directory may hold only
        /// `<log>/<sequence>.checkpoint.json` regular files, each the checkpoint its name says;
        /// anything else fails verification.
        #[arg(long)]
        witness: Option<WitnessSource>,
        /// The bucket the recorder writes recordings to when it has an object store,
        /// `s3://<bucket>` (`AWS_*` environment as for `--witness`): every recording whose seal
        /// names an object (`recordings/<session>/<id>.jsonl`) is read back from it and checked,
        /// and objects there no seal covers are named as unsealed. Without it such recordings
        /// cannot be checked, and verification fails.
        #[arg(long = "object-store")]
        object_store: Option<RecordingBucket>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List sessions.
    Sessions {
        /// The audit directory.
        dir: PathBuf,
        /// Only sessions of this identity (subject, or `issuer|subject`).
        #[arg(long)]
        identity: Option<String>,
        /// Only sessions that started at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replay a session: SQL transcript, asciicast v2 for terminals, exchange list for HTTP.
    Replay {
        /// Session id.
        session: String,
        /// The audit directory.
        #[arg(long)]
        dir: PathBuf,
        /// Write to a file instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn failed(msg: impl Into<String>) -> CommandError {
    CommandError::Failed(msg.into())
}

/// (audit dir with one sub-directory per log, recordings dir).
pub fn roots(dir: &Path) -> (PathBuf, PathBuf) {
    if dir.join("audit").is_dir() {
        (dir.join("audit"), dir.join("recordings"))
    } else {
        (
            dir.to_path_buf(),
            dir.parent().unwrap_or(Path::new(".")).join("recordings"),
        )
    }
}

/// Loads every log under `dir`.
pub fn load_logs(dir: &Path) -> Result<(Vec<LogData>, PathBuf, PathBuf), CommandError> {
    let (audit, recordings) = roots(dir);
    let logs = load_local_logs(&audit).map_err(|e| failed(format!("{}: {e}", audit.display())))?;
    if logs.is_empty() {
        return Err(failed(format!("{}: no audit log found", audit.display())));
    }
    Ok((logs, audit, recordings))
}

/// Where `--witness` reads the witnessed checkpoints from.
#[derive(Debug, Clone)]
pub enum WitnessSource {
    /// A witness directory (`[audit] witness_dir`, or an export of a webhook receiver).
    Dir(PathBuf),
    /// An object-storage witness (`[audit.witness_s3]`): `s3://<bucket>/<prefix>`.
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix (may be empty).
        prefix: String,
    },
}

impl std::str::FromStr for WitnessSource {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix("s3://") {
            Some(rest) => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err("s3:// witness without a bucket (s3://<bucket>/<prefix>)".into());
                }
                Ok(Self::S3 {
                    bucket: bucket.to_owned(),
                    prefix: prefix.trim_matches('/').to_owned(),
                })
            }
            None => Ok(Self::Dir(PathBuf::from(s))),
        }
    }
}

impl std::fmt::Display for WitnessSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dir(d) => write!(f, "{}", d.display()),
            Self::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// Why the witness could not be read.
#[derive(Debug)]
pub enum WitnessReadError {
    /// The witness holds something that is not what its name says (an object replaced): the
    /// verification fails.
    Tampered(String),
    /// The witness could not be reached or read.
    Unreadable(String),
}

impl WitnessSource {
    /// Every checkpoint the witness holds.
    pub fn read_all(&self) -> Result<Vec<Checkpoint>, WitnessReadError> {
        match self {
            // Anything in the directory that the witness does not write (a FIFO, a misnamed
            // or unexpected entry) is tampering: a failed verification, not a failed run.
            Self::Dir(d) => FileWitness::read_all(d).map_err(|e| match e {
                gatehouse_recorder::RecorderError::Witness(m) => {
                    WitnessReadError::Tampered(format!("witness {}: {m}", d.display()))
                }
                e => WitnessReadError::Unreadable(format!("witness {}: {e}", d.display())),
            }),
            Self::S3 { bucket, prefix } => {
                let allow_http = std::env::var("AWS_ALLOW_HTTP").is_ok_and(|v| v == "true");
                let builder = ObjectStoreWitness::prepare_s3(
                    object_store::aws::AmazonS3Builder::from_env(),
                    allow_http,
                )
                .with_bucket_name(bucket);
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| WitnessReadError::Unreadable(format!("runtime: {e}")))?;
                // Every version: a checkpoint hidden behind a delete marker or a newer version
                // is still read.
                rt.block_on(ObjectStoreWitness::read_all_versions(
                    builder, allow_http, prefix,
                ))
                .map_err(|e| match e {
                    gatehouse_recorder::RecorderError::Witness(m) => {
                        WitnessReadError::Tampered(format!("witness {self}: {m}"))
                    }
                    e => WitnessReadError::Unreadable(format!("witness {self}: {e}")),
                })
            }
        }
    }
}

/// The latest checkpoint per log among `held`.
pub fn latest_per_log(held: Vec<Checkpoint>) -> Vec<Checkpoint> {
    let mut latest: std::collections::BTreeMap<String, Checkpoint> = Default::default();
    for cp in held {
        match latest.get(&cp.log) {
            Some(have) if have.sequence >= cp.sequence => {}
            _ => {
                latest.insert(cp.log.clone(), cp);
            }
        }
    }
    latest.into_values().collect()
}

/// Verifies the logs under `dir` with the given trust anchors.
pub fn verify_dir(
    dir: &Path,
    keys: &[String],
    witness: Option<&[Checkpoint]>,
) -> Result<(VerifyReport, bool), CommandError> {
    let (logs, audit, _) = load_logs(dir)?;
    let mut trusted = TrustedKeys::new();
    let pinned = !keys.is_empty();
    for k in keys {
        trusted = trusted.with(
            TrustedKeys::parse_public_key(k)
                .map_err(|e| CommandError::Usage(format!("--key {k}: {e}")))?,
        );
    }
    if !pinned {
        for log in &logs {
            let path = audit.join(&log.log).join("checkpoint-key.pub");
            let hex = read_regular_file(&path)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .map_err(|e| failed(format!("{}: {e}", path.display())))?;
            trusted = trusted.with(
                TrustedKeys::parse_public_key(hex.trim())
                    .map_err(|e| failed(format!("{}: {e}", path.display())))?,
            );
        }
    }
    let mut options = VerifyOptions {
        keys: trusted,
        ..VerifyOptions::default()
    };
    if let Some(w) = witness {
        options.witnesses = w.to_vec();
    }
    Ok((verify(&logs, &options), pinned))
}

/// What `audit verify` found about the session recordings.
#[derive(Debug, Default)]
pub struct RecordingCheck {
    /// Recordings sealed in the log and checked against their files.
    pub checked: usize,
    /// Sealed recordings that are missing, cut, extended or edited (a failure).
    pub problems: Vec<String>,
    /// Recording files no seal in the log covers (a session still open, a recording whose seal
    /// failed, or a file put there): nothing vouches for their content.
    pub unsealed: Vec<String>,
}

/// The bucket recordings are written to (`--object-store s3://<bucket>`).
#[derive(Debug, Clone)]
pub struct RecordingBucket {
    /// Bucket name.
    pub bucket: String,
}

impl std::str::FromStr for RecordingBucket {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bucket = s
            .strip_prefix("s3://")
            .map(|b| b.trim_end_matches('/'))
            .ok_or_else(|| format!("{s}: expected s3://<bucket>"))?;
        if bucket.is_empty() || bucket.contains('/') {
            return Err(format!(
                "{s}: expected s3://<bucket> (recordings are at recordings/<session>/<id>.jsonl in it)"
            ));
        }
        Ok(Self {
            bucket: bucket.to_owned(),
        })
    }
}

/// Where the recorder puts recordings in its object store (see `AuditRecorder::open`).
const OBJECT_RECORDINGS: &str = "recordings";

/// A seal's location names an object (`recordings/<session>/<id>.jsonl`, the key in the bucket)
/// rather than a file under the local recordings directory (`<session>/<id>.jsonl`).
fn is_object_location(location: &str) -> bool {
    let parts: Vec<&str> = location.split('/').collect();
    parts.len() == 3 && parts.first() == Some(&OBJECT_RECORDINGS)
}

/// Reads recordings back from the bucket.
struct ObjectReader {
    bucket: String,
    store: object_store::aws::AmazonS3,
    rt: tokio::runtime::Runtime,
}

impl ObjectReader {
    fn open(b: &RecordingBucket) -> Result<Self, CommandError> {
        let allow_http = std::env::var("AWS_ALLOW_HTTP").is_ok_and(|v| v == "true");
        let store = ObjectStoreWitness::prepare_s3(
            object_store::aws::AmazonS3Builder::from_env(),
            allow_http,
        )
        .with_bucket_name(&b.bucket)
        .build()
        .map_err(|e| failed(format!("--object-store s3://{}: {e}", b.bucket)))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| failed(format!("runtime: {e}")))?;
        Ok(Self {
            bucket: b.bucket.clone(),
            store,
            rt,
        })
    }

    fn get(&self, key: &str) -> Result<Vec<u8>, String> {
        use object_store::ObjectStoreExt as _;
        self.rt
            .block_on(async {
                let got = self.store.get(&object_store::path::Path::from(key)).await?;
                got.bytes().await
            })
            .map(|b| b.to_vec())
            .map_err(|e| e.to_string())
    }

    /// Every key under `recordings/` (two levels: session, recording).
    fn list(&self) -> Result<Vec<String>, CommandError> {
        use object_store::ObjectStore as _;
        let err = |e: object_store::Error| {
            failed(format!(
                "list s3://{}/{OBJECT_RECORDINGS}/: {e}",
                self.bucket
            ))
        };
        self.rt.block_on(async {
            let mut keys = Vec::new();
            let top = object_store::path::Path::from(OBJECT_RECORDINGS);
            let sessions = self
                .store
                .list_with_delimiter(Some(&top))
                .await
                .map_err(err)?;
            keys.extend(sessions.objects.into_iter().map(|o| o.location.to_string()));
            for session in sessions.common_prefixes {
                let inner = self
                    .store
                    .list_with_delimiter(Some(&session))
                    .await
                    .map_err(err)?;
                keys.extend(inner.objects.into_iter().map(|o| o.location.to_string()));
                // Anything deeper is listed as a prefix: name it too, it is not a recording.
                keys.extend(inner.common_prefixes.into_iter().map(|p| format!("{p}/")));
            }
            Ok(keys)
        })
    }
}

/// Checks every recording seal the log holds (a session's end, and each seal recorded on its own,
/// as for each SSH channel) against its file, and lists every file under the recordings
/// directory that no seal covers.
pub fn check_recordings(
    dir: &Path,
    bucket: Option<&RecordingBucket>,
) -> Result<RecordingCheck, CommandError> {
    let (logs, _, recordings) = load_logs(dir)?;
    check_recordings_of(&logs, &recordings, bucket)
}

/// [`check_recordings`] over logs already loaded. A recording is read only if it is a regular
/// file: a FIFO, device, socket, directory or symbolic link in its place is a failure ("not a
/// regular file"), never opened for reading.
///
/// Seals naming an object (`recordings/<session>/<id>.jsonl`) are read back from `bucket`, and
/// every object under `recordings/` there that no seal covers is listed as unsealed; without a
/// bucket such a seal is a failure (it cannot be checked).
pub fn check_recordings_of(
    logs: &[LogData],
    recordings: &Path,
    bucket: Option<&RecordingBucket>,
) -> Result<RecordingCheck, CommandError> {
    let mut out = RecordingCheck::default();
    let mut sealed_files = std::collections::BTreeSet::new();
    let mut sealed_objects = std::collections::BTreeSet::new();
    let reader = bucket.map(ObjectReader::open).transpose()?;
    for s in gatehouse_recorder::read::recording_seals(logs) {
        out.checked += 1;
        if is_object_location(&s.seal.location) {
            let key = s.seal.location.clone();
            let Some(reader) = &reader else {
                out.problems.push(format!(
                    "recording {key} of session {} is sealed in the audit log as an object in the recorder's object store; pass --object-store s3://<bucket> to check it",
                    s.session.0
                ));
                continue;
            };
            let url = format!("s3://{}/{key}", reader.bucket);
            match reader.get(&key) {
                Ok(bytes) if gatehouse_recorder::recording::check_seal(&bytes, &s.seal) => {}
                Ok(_) => out.problems.push(format!(
                    "recording {url} of session {} does not match the hash sealed in the audit log: it was altered",
                    s.session.0
                )),
                Err(e) => out.problems.push(format!(
                    "recording {url} of session {} is sealed in the audit log but cannot be read: {e}",
                    s.session.0
                )),
            }
            sealed_objects.insert(key);
            continue;
        }
        let path = recordings.join(&s.seal.location);
        sealed_files.insert(path.clone());
        match read_regular_file(&path) {
            Ok(bytes) if gatehouse_recorder::recording::check_seal(&bytes, &s.seal) => {}
            Ok(_) => out.problems.push(format!(
                "recording {} of session {} does not match the hash sealed in the audit log: it was altered",
                path.display(),
                s.session.0
            )),
            Err(e) => out.problems.push(format!(
                "recording {} of session {} is sealed in the audit log but cannot be read: {e}",
                path.display(),
                s.session.0
            )),
        }
    }
    let mut files = Vec::new();
    if recordings.is_dir() {
        list_files(recordings, &mut files)
            .map_err(|e| failed(format!("{}: {e}", recordings.display())))?;
    }
    files.sort();
    for f in files {
        if !sealed_files.contains(&f) {
            out.unsealed.push(format!(
                "recording {} is not sealed in the audit log (a session still open, a recording whose seal failed, or a file put there): nothing vouches for its content",
                f.display()
            ));
        }
    }
    if let Some(reader) = &reader {
        let mut keys = reader.list()?;
        keys.sort();
        for k in keys {
            if !sealed_objects.contains(&k) {
                out.unsealed.push(format!(
                    "recording s3://{}/{k} is not sealed in the audit log (a session still open, a recording whose seal failed, or an object put there): nothing vouches for its content",
                    reader.bucket
                ));
            }
        }
    }
    Ok(out)
}

impl RecordingCheck {
    /// The status of the log and its recordings together: failed when a sealed recording does
    /// not match (or cannot be read), not sealed when a recording is unsealed, else the log's.
    pub fn combined(&self, report: &VerifyReport) -> LogStatus {
        if !self.problems.is_empty() {
            LogStatus::Failed
        } else if !self.unsealed.is_empty() && report.status() == LogStatus::Sealed {
            LogStatus::Unsealed
        } else {
            report.status()
        }
    }

    /// The recordings part of a JSON report.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "checked": self.checked,
            "problems": self.problems,
            "unsealed": self.unsealed,
        })
    }
}

/// Every file under `dir`, recursively (symbolic links are listed, not followed).
fn list_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            list_files(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// The exit status for a verification report.
pub fn exit_status(report: &VerifyReport) -> ExitCode {
    match report.status() {
        LogStatus::Sealed => ExitCode::SUCCESS,
        LogStatus::Unsealed => ExitCode::from(EXIT_UNSEALED),
        LogStatus::Failed => ExitCode::from(1),
    }
}

/// Where the last signature is, in words.
fn signed_head(l: &LogVerdict) -> String {
    match &l.last_signed {
        Some(h) => format!(
            "the {} at sequence {} (over record {}, signed {})",
            if h.seal { "seal" } else { "checkpoint" },
            h.sequence,
            h.covers,
            h.time
        ),
        None => "no signed checkpoint".into(),
    }
}

/// One log's verdict as the lines `audit verify` prints.
pub fn describe(l: &LogVerdict, witnessed: bool) -> Vec<String> {
    let range = format!(
        "{} record(s) in {} segment(s), sequence {}..{}",
        l.records,
        l.segments,
        l.first_sequence
            .map_or_else(|| "-".into(), |s| s.to_string()),
        l.last_sequence
            .map_or_else(|| "-".into(), |s| s.to_string()),
    );
    let mut lines = vec![match l.status() {
        LogStatus::Unsealed if l.sealed => format!(
            "log {}: SEALED, BUT {} record(s) written by a run that ended without a seal were never signed by it (see below) — verified {range}; ends with {}",
            l.log,
            l.unsigned_before_recovery,
            signed_head(l),
        ),
        LogStatus::Sealed => format!(
            "log {}: SEALED — verified {range}; ends with {}; {} checkpoint(s), {} seal(s); head {}",
            l.log,
            signed_head(l),
            l.checkpoints,
            l.seals,
            l.head.as_deref().unwrap_or("-"),
        ),
        LogStatus::Unsealed => {
            let why = "nothing vouches for them (a running gateway has not signed them yet, the gateway crashed, or the end of the log was cut or extended)";
            match &l.last_signed {
                Some(_) if l.unsigned_after == 0 => format!(
                    "log {}: NOT SEALED — verified {range} up to {}, the last record: every record is signed, but the log does not end with a seal (a running gateway, one that was killed or crashed, or a seal that was cut off)",
                    l.log,
                    signed_head(l),
                ),
                Some(_) => format!(
                    "log {}: NOT SEALED — verified {range} up to {}; {} record(s) after it are UNSIGNED: {why}",
                    l.log,
                    signed_head(l),
                    l.unsigned_after,
                ),
                None => format!(
                    "log {}: NOT SEALED — verified {range}, but no signed checkpoint yet: all {} record(s) are UNSIGNED: {why}",
                    l.log, l.unsigned_after,
                ),
            }
        }
        LogStatus::Failed => match (&l.problem, l.foreign.first()) {
            (Some(p), _) => format!("log {}: FAILED — {p}", l.log),
            (None, Some(_)) => format!(
                "log {}: FAILED — written to by someone other than the gateway ({} time(s), below); the chain around it verified {range}, last signature: {}",
                l.log,
                l.foreign.len(),
                signed_head(l)
            ),
            (None, None) => format!("log {}: FAILED", l.log),
        },
    }];
    for f in &l.foreign {
        lines.push(format!("  FOREIGN DATA: {f}"));
    }
    if l.problem.is_some() && l.records > 0 {
        lines.push(format!(
            "  before the problem: {range}; last signature: {}",
            signed_head(l)
        ));
    }
    for r in &l.recoveries {
        lines.push(if r.torn_bytes > 0 {
            format!(
                "  crash recovery at sequence {}: a crash mid-write left {} torn byte(s) at the end of {}; the restart cut them and recorded the cut",
                r.sequence, r.torn_bytes, r.segment
            )
        } else {
            format!(
                "  unsealed end before sequence {}: the run before ended without a seal (killed or crashed between writes); the restart recorded it",
                r.sequence
            )
        });
        if r.unsigned_before > 0 {
            lines.push(format!(
                "  {} record(s) before sequence {} were never signed by the run that wrote them (it ended without a seal): the restart signed them as it found them, so NOTHING VOUCHES that they are what that run wrote",
                r.unsigned_before, r.sequence
            ));
        }
    }
    if witnessed {
        lines.push(if l.witnesses_matched == 0 && l.last_signed.is_some() {
            "  witness: holds no checkpoint of this log (a witness of another gateway, or not configured for it?): it protected nothing here".to_string()
        } else {
            format!("  witness: {} checkpoint(s) matched", l.witnesses_matched)
        });
    }
    lines
}

/// Runs the command.
pub fn run(command: Command) -> CommandResult {
    match command {
        Command::Verify {
            dir,
            keys,
            witness,
            object_store,
            json,
        } => {
            let held = match witness.as_ref().map(WitnessSource::read_all) {
                None => None,
                Some(Ok(held)) => Some(held),
                Some(Err(WitnessReadError::Tampered(m))) => {
                    eprintln!("gatehouse: audit verification failed: {m}");
                    return Ok(ExitCode::from(1));
                }
                Some(Err(WitnessReadError::Unreadable(m))) => return Err(failed(m)),
            };
            // A witness that holds checkpoints of a log that is gone: the log was removed, which
            // is a failed verification (exit 1), not a command that could not run.
            if let Some(held) = &held {
                let (audit, _) = roots(&dir);
                // A directory that cannot be read (missing, a typo, no permission): the command
                // could not run (exit 2), as without a witness.
                let found = load_local_logs(&audit)
                    .map_err(|e| failed(format!("{}: {e}", audit.display())))?;
                let none = found.is_empty();
                let count = held.len();
                if none && count > 0 {
                    eprintln!(
                        "gatehouse: audit verification failed: {}: no audit log found, but the witness holds {count} signed checkpoint(s) of one: the log was removed",
                        audit.display()
                    );
                    return Ok(ExitCode::from(1));
                }
                // A log the witness vouches for but the directory lacks was removed whole (the
                // other logs verifying says nothing about it).
                let local: std::collections::BTreeSet<String> =
                    found.into_iter().map(|l| l.log).collect();
                let missing: std::collections::BTreeSet<&str> = held
                    .iter()
                    .map(|c| c.log.as_str())
                    .filter(|l| !local.contains(*l))
                    .collect();
                if let Some(log) = missing.first() {
                    eprintln!(
                        "gatehouse: audit verification failed: the witness holds signed checkpoints of log {log}, which is not in {}: the log was removed (or the witness is shared with another gateway: give each gateway's audit directory its own witness directory or prefix)",
                        audit.display()
                    );
                    return Ok(ExitCode::from(1));
                }
            }
            let (report, pinned) = verify_dir(&dir, &keys, held.as_deref())?;
            let recordings = check_recordings(&dir, object_store.as_ref())?;
            let recording_problems = &recordings.problems;
            if json {
                let mut v = serde_json::to_value(&report).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert(
                        "status".into(),
                        serde_json::to_value(report.status()).unwrap_or_default(),
                    );
                    o.insert("witness".into(), serde_json::json!(witness.is_some()));
                    o.insert("recordings".into(), recordings.to_json());
                    o.insert(
                        "status".into(),
                        serde_json::to_value(recordings.combined(&report)).unwrap_or_default(),
                    );
                }
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                for l in &report.logs {
                    for line in describe(l, witness.is_some()) {
                        println!("{line}");
                    }
                }
                if recording_problems.is_empty() {
                    println!(
                        "recordings: {} sealed recording(s), each matches the hash sealed in the audit log",
                        recordings.checked
                    );
                } else {
                    for p in recording_problems {
                        println!("recordings: FAILED: {p}");
                    }
                }
                for u in &recordings.unsealed {
                    println!("recordings: UNSEALED: {u}");
                }
                if !pinned {
                    eprintln!(
                        "note: checkpoint keys were read from the log directory; pass --key <hex> to pin them"
                    );
                }
                if witness.is_none() {
                    eprintln!(
                        "note: without --witness, a log cut back exactly to an earlier checkpoint or an earlier run's seal cannot be told from one that ended there; pass --witness <dir> to detect it"
                    );
                }
            }
            if let Some(p) = recording_problems.first() {
                eprintln!("gatehouse: audit verification failed: {p}");
                return Ok(ExitCode::from(1));
            }
            if report.status() == LogStatus::Sealed
                && let Some(u) = recordings.unsealed.first()
            {
                eprintln!(
                    "gatehouse: the audit log is sealed, but {} recording(s) are not (exit {EXIT_UNSEALED}): {u}",
                    recordings.unsealed.len()
                );
                return Ok(ExitCode::from(EXIT_UNSEALED));
            }
            match report.status() {
                LogStatus::Failed => {
                    if let Some(p) = report.first_problem() {
                        eprintln!("gatehouse: audit log verification failed: {p}");
                    } else if let Some(f) = report.logs.iter().find_map(|l| l.foreign.first()) {
                        eprintln!("gatehouse: audit log verification failed: {f}");
                    }
                }
                LogStatus::Unsealed => eprintln!(
                    "gatehouse: audit log verified up to its last signed checkpoint only; it is not sealed (exit {EXIT_UNSEALED})"
                ),
                LogStatus::Sealed => {}
            }
            Ok(exit_status(&report))
        }
        Command::Sessions {
            dir,
            identity,
            since,
            json,
        } => {
            let (logs, _, _) = load_logs(&dir)?;
            let since = since
                .map(|s| {
                    time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339)
                        .map_err(|e| {
                            CommandError::Usage(format!(
                                "--since {s}: {e} (use RFC 3339, e.g. 2026-11-23T00:00:00Z)"
                            ))
                        })
                })
                .transpose()?;
            let sessions: Vec<_> = list_sessions(&logs)
                .into_iter()
                .filter(|s| {
                    identity.as_ref().is_none_or(|want| {
                        s.principal.as_ref().is_some_and(|p| {
                            p == want || p.rsplit('|').next() == Some(want.as_str())
                        })
                    })
                })
                .filter(|s| since.is_none_or(|t| s.first_event.is_some_and(|f| f >= t)))
                .collect();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&sessions).unwrap_or_default()
                );
            } else {
                for s in &sessions {
                    let fmt = |t: Option<time::OffsetDateTime>| {
                        t.and_then(|t| {
                            t.format(&time::format_description::well_known::Rfc3339)
                                .ok()
                        })
                        .unwrap_or_else(|| "-".into())
                    };
                    println!(
                        "{}  {}  {}  target={}  ops={} denied={} reviewed={}  started={} ended={}",
                        s.session,
                        s.principal.as_deref().unwrap_or("(not authenticated)"),
                        s.end_reason.as_deref().unwrap_or("open"),
                        s.target.as_deref().unwrap_or("-"),
                        s.operations,
                        s.denied,
                        s.reviewed,
                        fmt(s.first_event),
                        fmt(s.ended),
                    );
                }
                if sessions.is_empty() {
                    println!("no sessions");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay { session, dir, out } => {
            let (logs, _, recordings) = load_logs(&dir)?;
            let id = SessionId(session.clone());
            let events = session_events(&logs, &id);
            if events.is_empty() {
                return Err(failed(format!("no session {session} in {}", dir.display())));
            }
            let summary = list_sessions(&logs).into_iter().find(|s| s.session == id);
            let recording = match summary.as_ref().and_then(|s| s.recording.as_ref()) {
                Some(seal) => {
                    let path = recordings.join(&seal.location);
                    let bytes = read_regular_file(&path)
                        .map_err(|e| failed(format!("recording {}: {e}", path.display())))?;
                    if !gatehouse_recorder::recording::check_seal(&bytes, seal) {
                        return Err(failed(format!(
                            "recording {} does not match the hash sealed in the audit log: it was altered",
                            path.display()
                        )));
                    }
                    Some(
                        gatehouse_recorder::recording::parse_recording(&bytes)
                            .map_err(|e| failed(e.to_string()))?,
                    )
                }
                None => None,
            };
            let text = match recording.as_ref().map(|r| r.header.kind) {
                Some(RecordingKind::Terminal { .. }) | Some(RecordingKind::Exec) => {
                    let r = recording.as_ref().ok_or_else(|| failed("no recording"))?;
                    gatehouse_recorder::replay::to_asciicast(r)
                        .map_err(|e| failed(e.to_string()))?
                }
                Some(RecordingKind::Http) => {
                    let r = recording.as_ref().ok_or_else(|| failed("no recording"))?;
                    serde_json::to_string_pretty(&gatehouse_recorder::replay::http_exchanges(r))
                        .unwrap_or_default()
                }
                _ => {
                    let statements = gatehouse_recorder::replay::sql_transcript(
                        recording.as_ref(),
                        &events,
                        100,
                    );
                    gatehouse_recorder::replay::render_sql_transcript(&statements)
                }
            };
            match out {
                Some(path) => std::fs::write(&path, text)
                    .map_err(|e| failed(format!("{}: {e}", path.display())))?,
                None => print!("{text}"),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
