//! `gatehouse evidence export|verify`: an evidence bundle for an ISO/IEC 27001:2022 audit, built
//! offline from the audit directory, and its offline check.
//!
//! The bundle: access summary per identity, approval records, masking records (rule and field,
//! never values), the session list with recording hashes, the audit-log verification result (with
//! the witness, when given, and the latest checkpoint it holds), the exact period covered, a
//! statement of what the egress guard checked (its patterns, sites and counters), what it found,
//! and what it cannot see, the exported audit lines themselves, a README mapping each artefact to
//! Annex A
//! controls, and `manifest.json` (SHA-256 of every file) signed with the gateway's audit key
//! (`manifest.sig`, ed25519).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};
use gatehouse_core::{ApprovalOutcome, Event, EventBody, Verdict};
use gatehouse_recorder::read::{ExportFilter, export_lines, list_sessions, records};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{CommandError, CommandResult};

/// Evidence subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Export an evidence bundle.
    Export {
        /// The audit directory (the gateway's data directory).
        #[arg(long)]
        dir: PathBuf,
        /// Output directory (created; must be empty if it exists).
        #[arg(long)]
        out: PathBuf,
        /// From (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Until (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// The gateway's signing key (default: `<dir>/audit-signing.key`).
        #[arg(long)]
        key: Option<PathBuf>,
        /// The audit witness (a directory, or `s3://<bucket>/<prefix>` as for `audit verify`):
        /// the log is verified against it, and the bundle carries the latest checkpoint it holds
        /// for each log.
        #[arg(long)]
        witness: Option<super::audit::WitnessSource>,
        /// The bucket the recorder writes recordings to, `s3://<bucket>` (as for `audit
        /// verify`): recordings sealed as objects are read back from it and checked.
        #[arg(long = "object-store")]
        object_store: Option<super::audit::RecordingBucket>,
    },
    /// Verify a bundle offline.
    Verify {
        /// The bundle directory.
        bundle: PathBuf,
        /// Expected signing public key (hex); default: the one named in the manifest.
        #[arg(long)]
        key: Option<String>,
    },
}

fn failed(msg: impl Into<String>) -> CommandError {
    CommandError::Failed(msg.into())
}

fn parse_time(
    s: &Option<String>,
    flag: &str,
) -> Result<Option<time::OffsetDateTime>, CommandError> {
    s.as_ref()
        .map(|s| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map_err(|e| CommandError::Usage(format!("{flag} {s}: {e} (use RFC 3339)")))
        })
        .transpose()
}

fn load_signing_key(path: &Path) -> Result<SigningKey, CommandError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| failed(format!("signing key {}: {e}", path.display())))?;
    let bytes = hex::decode(text.trim())
        .map_err(|e| failed(format!("signing key {}: {e}", path.display())))?;
    let seed: [u8; 32] = bytes.try_into().map_err(|_| {
        failed(format!(
            "signing key {}: expected 32 bytes of hex",
            path.display()
        ))
    })?;
    Ok(SigningKey::from_bytes(&seed))
}

const README: &str = "# Gatehouse evidence bundle

Produced by `gatehouse evidence export` from the gateway's tamper-evident audit log. Check it offline
with `gatehouse evidence verify <this directory> --key <the gateway's audit public key>`: every file's SHA-256 is listed in `manifest.json`,
which is signed (ed25519) by the gateway's audit key in `manifest.sig`.

| file | what it shows | ISO/IEC 27001:2022 Annex A |
| --- | --- | --- |
| `access-summary.json` | per identity: sessions, targets, time connected, operations, denials, reviews | 5.15 access control, 5.18 access rights, 8.2 privileged access rights |
| `sessions.json` | every session with identity, target, start/end, and its recordings' sealed SHA-256 (`recordings`: all of them, one per SSH channel; `recording`: the one the session end carries) | 8.15 logging, 8.16 monitoring activities |
| `approvals.json` | just-in-time approvals: who asked, for which exact operation, who decided, when, why | 5.18 access rights, 8.2 privileged access rights |
| `masking.json` | masking findings per rule and field (counts only, never values) | 8.11 data masking, 8.12 data leakage prevention |
| `credentials-statement.json` | what the egress guard checked (patterns, sites, byte counts), what it found and blocked, and what it cannot see (credentials a target transformed) | 5.17 authentication information, 8.5 secure authentication, 8.12 data leakage prevention |
| `audit-verify.json` | hash chain, sequence and checkpoint-signature verification of the audit log: sealed (closed), or verified up to its last signed checkpoint with the number of unsigned records after it; checked against the witness when one was given; every session recording checked against the hash sealed in the log (`recordings`), unsealed recording files named; `ok` is false and `failures` says what failed when the log or any recording did not verify | 8.15 logging, 8.16 monitoring activities |
| `witness-checkpoint.json` | the latest signed checkpoint (or seal) the witness holds for each log, if a witness was given | 8.15 logging |
| `audit-events.jsonl` | the exported audit records, byte-for-byte as stored (hash-chained) | 8.15 logging |
| `manifest.json`, `manifest.sig` | integrity and origin of this bundle | 8.15 logging |
";

/// Runs the command.
pub fn run(command: Command) -> CommandResult {
    match command {
        Command::Export {
            dir,
            out,
            since,
            until,
            key,
            witness,
            object_store,
        } => export(
            &dir,
            &out,
            Period { since, until },
            key,
            witness.as_ref(),
            object_store.as_ref(),
        ),
        Command::Verify { bundle, key } => verify_bundle(&bundle, key.as_deref()),
    }
}

#[derive(Default, serde::Serialize)]
struct AccessSummary {
    sessions: u64,
    targets: std::collections::BTreeSet<String>,
    connected_seconds: f64,
    operations: u64,
    denied: u64,
    reviewed: u64,
    approved: u64,
    login_failures: u64,
}

/// One approval-related audit event as the bundle lists it.
fn approval_entry(e: &Event) -> serde_json::Value {
    json!({
        "time": e.time.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        "session": e.session,
        "identity": e.identity.as_ref().map(|i| i.principal()),
        "target": e.target.as_ref().map(|t| t.name.clone()),
        "event": e.body,
    })
}

/// `--since` and `--until` as given.
struct Period {
    since: Option<String>,
    until: Option<String>,
}

fn export(
    dir: &Path,
    out: &Path,
    period: Period,
    key: Option<PathBuf>,
    witness: Option<&super::audit::WitnessSource>,
    bucket: Option<&super::audit::RecordingBucket>,
) -> CommandResult {
    let since = parse_time(&period.since, "--since")?;
    let until = parse_time(&period.until, "--until")?;
    let key_path = key.unwrap_or_else(|| dir.join("audit-signing.key"));
    let signing = load_signing_key(&key_path)?;
    // The moment the log is read: nothing after it is in the bundle.
    let read_at = gatehouse_core::now();
    let held = match witness.map(super::audit::WitnessSource::read_all) {
        None => None,
        Some(Ok(held)) => Some(held),
        Some(Err(
            super::audit::WitnessReadError::Tampered(m)
            | super::audit::WitnessReadError::Unreadable(m),
        )) => return Err(failed(m)),
    };
    // Checkpoints are checked against the gateway's own key (the one that signs the bundle),
    // never against a public key file in the audit directory, which its writer could replace.
    let own_key = hex::encode(signing.verifying_key().to_bytes());
    let (report, _) = super::audit::verify_dir(dir, &[own_key], held.as_deref())?;
    let (logs, _, recordings_dir) = super::audit::load_logs(dir)?;
    // The same recording checks as `audit verify`: every sealed recording against its seal, and
    // every recording file no seal covers. A recording that fails makes the whole result fail.
    let recordings = super::audit::check_recordings_of(&logs, &recordings_dir, bucket)?;
    let status = recordings.combined(&report);
    let verified = status != gatehouse_recorder::LogStatus::Failed;
    let witnessed = held.map(super::audit::latest_per_log);
    if out.exists()
        && std::fs::read_dir(out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    {
        return Err(failed(format!("{} exists and is not empty", out.display())));
    }
    std::fs::create_dir_all(out).map_err(|e| failed(format!("{}: {e}", out.display())))?;

    let in_range =
        |e: &Event| since.is_none_or(|t| e.time >= t) && until.is_none_or(|t| e.time < t);
    let events: Vec<Event> = logs
        .iter()
        .flat_map(records)
        .filter_map(|r| r.event)
        .filter(in_range)
        .collect();

    // Access summary per identity, sessions with recording hashes.
    let sessions: Vec<_> = list_sessions(&logs)
        .into_iter()
        .filter(|s| since.is_none_or(|t| s.first_event.is_some_and(|f| f >= t)))
        .filter(|s| until.is_none_or(|t| s.first_event.is_some_and(|f| f < t)))
        .collect();
    let mut access: BTreeMap<String, AccessSummary> = BTreeMap::new();
    for s in &sessions {
        let Some(p) = &s.principal else { continue };
        let a = access.entry(p.clone()).or_default();
        a.sessions += 1;
        if let Some(t) = &s.target {
            a.targets.insert(t.clone());
        }
        if let (Some(start), Some(end)) = (s.first_event, s.ended) {
            a.connected_seconds += (end - start).as_seconds_f64();
        }
        a.operations += s.operations;
        a.denied += s.denied;
        a.reviewed += s.reviewed;
    }
    let mut approvals = Vec::new();
    let mut masking: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut egress_total: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut egress_current = serde_json::Value::Null;
    let mut counters_as_of: Option<time::OffsetDateTime> = None;
    let mut egress_blocked_events = 0u64;
    let add_counters =
        |v: &serde_json::Value, total: &mut BTreeMap<String, BTreeMap<String, u64>>| {
            for field in ["bytes_checked", "hits"] {
                if let Some(map) = v.get(field).and_then(|m| m.as_object()) {
                    for (site, n) in map {
                        *total
                            .entry(field.into())
                            .or_default()
                            .entry(site.clone())
                            .or_default() += n.as_u64().unwrap_or(0);
                    }
                }
            }
        };
    for e in &events {
        let who = e.identity.as_ref().map(|i| i.principal());
        match &e.body {
            EventBody::LoginFailed { .. } => {
                access
                    .entry(who.unwrap_or_else(|| "(unauthenticated)".into()))
                    .or_default()
                    .login_failures += 1;
            }
            EventBody::ApprovalRequested { .. }
            | EventBody::ApprovalDecided { .. }
            | EventBody::ApprovalUsed { .. }
            | EventBody::ApprovalAbandoned { .. } => {
                approvals.push(approval_entry(e));
            }
            EventBody::ApprovalResolved { outcome, .. } => {
                if matches!(outcome, ApprovalOutcome::Approved { .. })
                    && let Some(p) = &who
                {
                    access.entry(p.clone()).or_default().approved += 1;
                }
                approvals.push(approval_entry(e));
            }
            EventBody::Operation { decision, .. } if decision.verdict == Verdict::Review => {}
            EventBody::OperationResult(r) => {
                for f in &r.findings {
                    *masking
                        .entry((f.rule.clone(), f.field.clone().unwrap_or_default()))
                        .or_default() += 1;
                }
            }
            EventBody::EgressBlocked { hits, .. } => egress_blocked_events += hits,
            EventBody::Other { name, details } if name == "egress_counters" => {
                egress_current = details.clone();
                counters_as_of = Some(e.time);
            }
            EventBody::Other { name, .. } if name == "gateway_started" => {
                add_counters(&egress_current, &mut egress_total);
                egress_current = serde_json::Value::Null;
            }
            _ => {}
        }
    }
    add_counters(&egress_current, &mut egress_total);
    let hits: u64 = egress_total
        .get("hits")
        .map(|m| m.values().sum())
        .unwrap_or(0);
    let checked: u64 = egress_total
        .get("bytes_checked")
        .map(|m| m.values().sum())
        .unwrap_or(0);
    let established = !egress_total.is_empty();
    let patterns = egress_patterns(&events);
    let sites: Vec<String> = egress_total
        .get("bytes_checked")
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let statement = json!({
        "established": established,
        "statement": credentials_statement(established, hits, egress_blocked_events, &sites),
        "what_was_checked": {
            "mechanism": "the gateway's egress guard: every byte the gateway sends to a caller (SQL results and errors, HTTP responses, SSH output, subsystems, file transfers and forwarded ports) or writes to a session recording, an audit record or a log line is searched for the target credentials the gateway holds",
            "patterns": "each held credential (database passwords, API keys and tokens, the SSH keys and passwords the gateway logs in to targets with) in its raw form, lower and upper-case hex, standard and URL-safe base64 at each of the three alignments, percent-encoded, with JSON escapes decoded, and as UTF-16 (little and big endian); each of these also written backwards, and for every window of 16 consecutive bytes of the credential",
            "patterns_watched": patterns,
            "sites_checked": sites,
        },
        "what_it_cannot_see": [
            "a credential a target transformed before sending it in other ways (split into pieces of 15 bytes or fewer, re-encoded otherwise, compressed or encrypted): the guard recognises only the forms listed above",
            "anything that left by a path that does not cross the gateway, for example a target that can itself read a credential and send it elsewhere",
            "credentials the gateway does not hold (for example the agent's own tokens)"
        ],
        "bytes_checked_per_site": egress_total.get("bytes_checked").cloned().unwrap_or_default(),
        "blocked_occurrences_per_site": egress_total.get("hits").cloned().unwrap_or_default(),
        "blocked_occurrences_recorded": egress_blocked_events,
        "bytes_checked_total": checked,
        "source": "egress_counters events in the audit log (recorded at start, within a second of each change, and at shutdown)",
    });
    let masking: Vec<_> = masking
        .into_iter()
        .map(|((rule, field), count)| json!({ "rule": rule, "field": field, "count": count }))
        .collect();
    let rfc3339 = |t: Option<time::OffsetDateTime>| {
        t.and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
    };
    // The exact period: what was asked for, and what the log held when it was read.
    let period = json!({
        "since": rfc3339(since),
        "until": rfc3339(until),
        "log_read_at": rfc3339(Some(read_at)),
        "first_event": rfc3339(events.iter().map(|e| e.time).min()),
        "last_event": rfc3339(events.iter().map(|e| e.time).max()),
        "egress_counters_as_of": rfc3339(counters_as_of),
        "logs": report.logs.iter().map(|l| json!({
            "log": l.log,
            "status": l.status(),
            "last_signed": l.last_signed,
            "unsigned_records_at_end": l.unsigned_after,
        })).collect::<Vec<_>>(),
        "note": "Events are counted up to the moment the log was read (log_read_at). A running gateway records egress counters within a second of each change; records after a log's last signed checkpoint are included but not yet vouched for by a signature.",
    });

    // What failed, in words: the log's first problem, then every recording that does not match.
    let failures: Vec<String> = report
        .logs
        .iter()
        .flat_map(|l| {
            l.problem
                .iter()
                .map(|p| format!("log {}: {p}", l.log))
                .chain(l.foreign.iter().map(|f| format!("log {}: {f}", l.log)))
                .collect::<Vec<_>>()
        })
        .chain(recordings.problems.iter().cloned())
        .collect();
    let write = |name: &str, bytes: &[u8]| -> Result<(), CommandError> {
        std::fs::write(out.join(name), bytes)
            .map_err(|e| failed(format!("{}: {e}", out.join(name).display())))
    };
    let pretty = |v: serde_json::Value| serde_json::to_vec_pretty(&v).unwrap_or_default();
    write("README.md", README.as_bytes())?;
    write(
        "access-summary.json",
        &pretty(json!({ "period": period, "identities": access })),
    )?;
    write(
        "sessions.json",
        &pretty(json!({ "period": period, "sessions": sessions })),
    )?;
    write(
        "approvals.json",
        &pretty(json!({ "period": period, "approvals": approvals })),
    )?;
    write(
        "masking.json",
        &pretty(json!({ "period": period, "findings": masking })),
    )?;
    write("credentials-statement.json", &pretty(statement))?;
    write(
        "audit-verify.json",
        &pretty(json!({
            "ok": verified,
            "status": status,
            "log_status": report.status(),
            "witness": witness.map(ToString::to_string),
            "period": period,
            "report": report,
            "recordings": recordings.to_json(),
            "failures": failures,
        })),
    )?;
    write(
        "witness-checkpoint.json",
        &pretty(match &witnessed {
            Some(latest) => {
                json!({ "witness": witness.map(ToString::to_string), "latest": latest })
            }
            None => json!({
                "witness": null,
                "latest": [],
                "note": "No witness was given to the export: a cut-off end of the log could not be checked.",
            }),
        }),
    )?;
    let filter = ExportFilter {
        since,
        until,
        include_signed_records: true,
        ..Default::default()
    };
    write("audit-events.jsonl", &export_lines(&logs, &filter))?;

    // Manifest over every file, signed.
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(out)
        .map_err(|e| failed(e.to_string()))?
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().to_string();
        let bytes = std::fs::read(entry.path()).map_err(|e| failed(e.to_string()))?;
        files.insert(name, hex::encode(Sha256::digest(&bytes)));
    }
    let public = hex::encode(signing.verifying_key().as_bytes());
    let manifest = serde_json::to_vec_pretty(&json!({
        "format": "gatehouse-evidence/1",
        "created": gatehouse_core::now().format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        "gatehouse_version": env!("CARGO_PKG_VERSION"),
        "signing_key": public,
        "audit_log_verified": verified,
        "audit_log_status": status,
        "recordings_verified": recordings.problems.is_empty(),
        "files": files,
    }))
    .unwrap_or_default();
    write("manifest.json", &manifest)?;
    let sig = signing.sign(&manifest);
    write(
        "manifest.sig",
        base64::engine::general_purpose::STANDARD
            .encode(sig.to_bytes())
            .as_bytes(),
    )?;
    println!(
        "evidence bundle written to {} ({} files; audit log and recordings {}; signed by key {public})",
        out.display(),
        files.len() + 2,
        match status {
            gatehouse_recorder::LogStatus::Sealed => "verified and sealed",
            gatehouse_recorder::LogStatus::Unsealed =>
                "verified up to the log's last signed checkpoint, not sealed (or a recording not sealed) — see audit-verify.json",
            gatehouse_recorder::LogStatus::Failed => "FAILED verification — see audit-verify.json",
        }
    );
    for f in &failures {
        eprintln!("gatehouse: evidence export: verification failed: {f}");
    }
    Ok(if verified {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn verify_bundle(bundle: &Path, pinned: Option<&str>) -> CommandResult {
    // Regular files only: a FIFO or device in a bundle must not hang the check, and a symlink
    // could point anywhere.
    let read = |name: &str| {
        gatehouse_recorder::storage::read_regular_file(&bundle.join(name))
            .map_err(|e| failed(format!("{}: {e}", bundle.join(name).display())))
    };
    let manifest_bytes = read("manifest.json")?;
    let sig_text = read("manifest.sig")?;
    let manifest: serde_json::Value = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| failed(format!("manifest.json: {e}")))?;
    let key_hex = pinned
        .map(str::to_string)
        .or_else(|| {
            manifest
                .get("signing_key")
                .and_then(|k| k.as_str())
                .map(str::to_string)
        })
        .ok_or_else(|| failed("manifest.json names no signing key"))?;
    if let Some(named) = manifest.get("signing_key").and_then(|k| k.as_str())
        && named != key_hex
    {
        return Err(failed(format!(
            "bundle was signed by key {named}, not the expected {key_hex}"
        )));
    }
    let key_bytes: [u8; 32] = hex::decode(&key_hex)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| failed(format!("signing key {key_hex} is not 32 bytes of hex")))?;
    let key =
        VerifyingKey::from_bytes(&key_bytes).map_err(|e| failed(format!("signing key: {e}")))?;
    let sig_bytes = base64::engine::general_purpose::STANDARD
        .decode(String::from_utf8_lossy(&sig_text).trim())
        .map_err(|e| failed(format!("manifest.sig: {e}")))?;
    let sig = ed25519_dalek::Signature::from_slice(&sig_bytes)
        .map_err(|e| failed(format!("manifest.sig: {e}")))?;
    if key.verify(&manifest_bytes, &sig).is_err() {
        println!("FAILED: manifest.json signature does not verify");
        return Ok(ExitCode::from(1));
    }
    let files = manifest
        .get("files")
        .and_then(|f| f.as_object())
        .ok_or_else(|| failed("manifest.json lists no files"))?;
    let mut problems = Vec::new();
    for (name, want) in files {
        match gatehouse_recorder::storage::read_regular_file(&bundle.join(name)) {
            Ok(bytes) => {
                if Some(hex::encode(Sha256::digest(&bytes)).as_str()) != want.as_str() {
                    problems.push(format!(
                        "{name}: SHA-256 does not match the manifest (altered)"
                    ));
                }
            }
            Err(e) => problems.push(format!("{name}: {e}")),
        }
    }
    for entry in std::fs::read_dir(bundle)
        .map_err(|e| failed(e.to_string()))?
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().to_string();
        if name != "manifest.json" && name != "manifest.sig" && !files.contains_key(&name) {
            problems.push(format!("{name}: not listed in the manifest (added)"));
        }
    }
    let audit_ok = manifest
        .get("audit_log_verified")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    if !audit_ok {
        problems.push(
            "the audit log or a session recording did not verify when the bundle was made (see the failures in audit-verify.json)".into(),
        );
    }
    if problems.is_empty() {
        let state = match manifest.get("audit_log_status").and_then(|v| v.as_str()) {
            Some("sealed") => "the audit log was sealed when it was exported",
            Some("unsealed") => {
                "the audit log was live (not sealed), or a recording was not sealed, when it was exported: see audit-verify.json for its last signed checkpoint, the unsigned records after it and the unsealed recordings"
            }
            _ => "the audit log's state is not stated (a bundle of an earlier version)",
        };
        if pinned.is_none() {
            // The bundle names its own key: anyone can make a bundle that verifies under the
            // key it names. Only the gateway's key, given by the checker, vouches for it.
            println!(
                "evidence bundle {}: NOT VOUCHED FOR ({} files, consistent and signed by the key the bundle itself names, {key_hex}); {state}. Anyone can produce such a bundle: check it with --key <the gateway's audit public key> (from the quickstart's printed command or the gateway's config)",
                bundle.display(),
                files.len()
            );
            return Ok(ExitCode::from(3));
        }
        println!(
            "evidence bundle {}: OK ({} files, signature by the pinned key {key_hex}); {state}",
            bundle.display(),
            files.len()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        for p in &problems {
            println!("FAILED: {p}");
        }
        Ok(ExitCode::from(1))
    }
}

/// The largest number of patterns the egress guard reported watching in the period.
fn egress_patterns(events: &[Event]) -> u64 {
    events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::Other { name, details } if name == "egress_counters" => {
                details.get("patterns").and_then(serde_json::Value::as_u64)
            }
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

/// The statement: what the egress guard checked and found, never more.
fn credentials_statement(established: bool, hits: u64, blocked: u64, sites: &[String]) -> String {
    if !established {
        return "No egress-guard counters were recorded in this period, so no statement about held credentials can be made from this log.".into();
    }
    let over = if sites.is_empty() {
        "no outbound bytes".to_string()
    } else {
        format!("the bytes bound for: {}", sites.join(", "))
    };
    let found = if hits == 0 && blocked == 0 {
        "It found none of the held target credentials in any of the forms it knows (see what_was_checked).".to_string()
    } else {
        format!(
            "It found held credential material {} time(s) and blocked each occurrence; every block is recorded in the audit log.",
            hits.max(blocked)
        )
    };
    format!(
        "The egress guard checked {over}. {found} It cannot recognise a credential a target transformed before sending it in a way it does not know (split into short pieces, re-encoded otherwise) or one that left without crossing the gateway, so this is a statement about those checks, not proof that no credential was exposed (see what_it_cannot_see)."
    )
}
