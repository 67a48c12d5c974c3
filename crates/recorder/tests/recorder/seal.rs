//! Sealed close and the end of the log: a closed log ends with a signed seal; every cut or
//! extension of its end is found (a cut back exactly to an earlier run's seal only with a
//! witness); a live log is never reported clean past its last signature; the file witness keeps
//! every checkpoint and the seal, and `close` returns only once the seal is there.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use gatehouse_core::SessionId;
use gatehouse_recorder::format::{RecordKind, encode_line, parse_line};
use gatehouse_recorder::verify::verify_log;
use gatehouse_recorder::{
    Checkpoint, CheckpointSigner, FileWitness, LogData, LogHooks, LogStatus, LogVerdict,
    ProblemKind, SegmentData, VerifyOptions,
};
use proptest::prelude::*;

use crate::common::*;

const LOG: &str = "gw-seal";

fn small_segments() -> gatehouse_recorder::AuditLogConfig {
    let mut c = config(LOG);
    c.segment_max_bytes = 16 * 1024;
    c.max_batch = 1;
    c
}

fn witness_hooks(wdir: &Path) -> LogHooks {
    LogHooks {
        witnesses: vec![Arc::new(FileWitness::new(wdir).unwrap())],
        shipper: None,
    }
}

/// One run of the gateway: opens the log, appends `n` events, closes (seals) it.
async fn run(dir: &Path, wdir: Option<&Path>, n: u64) {
    let hooks = wdir.map(witness_hooks).unwrap_or_default();
    let log = open_log_with(dir, small_segments(), hooks).await;
    let s = SessionId::generate();
    for i in 0..n {
        log.append(&sql_event(&s, i, &format!("select {i} from orders")))
            .await
            .unwrap();
    }
    within(30, log.close()).await.unwrap();
}

fn with(witnesses: &[Checkpoint]) -> VerifyOptions {
    VerifyOptions {
        witnesses: witnesses.to_vec(),
        ..options()
    }
}

/// The log's lines in order, each with its segment index.
fn lines(data: &LogData) -> Vec<(usize, Vec<u8>)> {
    let mut out = Vec::new();
    for (i, s) in data.segments.iter().enumerate() {
        for l in s.bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            out.push((i, l.to_vec()));
        }
    }
    out
}

/// The log with only its first `keep` lines (segments keep their files, possibly empty).
fn keep_lines(data: &LogData, keep: usize) -> LogData {
    let mut out = LogData {
        log: data.log.clone(),
        segments: data
            .segments
            .iter()
            .map(|s| SegmentData {
                name: s.name.clone(),
                bytes: Vec::new(),
            })
            .collect(),
    };
    for (i, l) in lines(data).into_iter().take(keep) {
        out.segments[i].bytes.extend_from_slice(&l);
        out.segments[i].bytes.push(b'\n');
    }
    out
}

/// Appends `n` made-up event records with valid hashes and links after the last record, as
/// someone holding the audit directory but not the key would.
fn forge_events(data: &LogData, n: u64) -> LogData {
    let all = lines(data);
    let last = parse_line(&all.last().unwrap().1).unwrap();
    let event = all
        .iter()
        .map(|(_, l)| parse_line(l).unwrap())
        .find(|p| p.kind == RecordKind::Event)
        .unwrap();
    let payload = String::from_utf8(event.payload.to_vec())
        .unwrap()
        .replace("from orders", "from forged");
    let mut out = data.clone();
    let seg = &mut out.segments.last_mut().unwrap().bytes;
    let mut prev = last.stored_hash;
    for k in 1..=n {
        prev = encode_line(
            seg,
            LOG,
            last.sequence + k,
            RecordKind::Event,
            &prev,
            payload.as_bytes(),
        );
    }
    out
}

fn status(v: &LogVerdict) -> LogStatus {
    v.status()
}

#[tokio::test]
async fn a_closed_log_ends_with_a_seal_over_its_final_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    run(dir.path(), None, 250).await;
    let data = load(dir.path(), LOG);
    let v = verify_log(&data, &options());
    assert_eq!(status(&v), LogStatus::Sealed, "{:?}", v.problem);
    assert_eq!(v.seals, 1);
    assert_eq!(v.unsigned_after, 0);
    let head = v.last_signed.clone().unwrap();
    assert!(head.seal);
    assert_eq!(Some(head.sequence), v.last_sequence);
    let l = lines(&data);
    let kinds: Vec<RecordKind> = l[l.len() - 2..]
        .iter()
        .map(|(_, line)| parse_line(line).unwrap().kind)
        .collect();
    assert_eq!(kinds, [RecordKind::Checkpoint, RecordKind::Seal]);
}

#[tokio::test]
async fn every_edit_of_the_end_of_a_sealed_log_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let wdir = tempfile::tempdir().unwrap();
    run(dir.path(), Some(wdir.path()), 250).await;
    let held = FileWitness::read_all(wdir.path()).unwrap();
    let data = load(dir.path(), LOG);
    assert!(data.segments.len() >= 4, "{}", data.segments.len());
    assert_eq!(status(&verify_log(&data, &with(&held))), LogStatus::Sealed);
    let n = lines(&data).len();

    let mut cuts: Vec<(&str, LogData)> = vec![
        ("the last record removed", keep_lines(&data, n - 1)),
        ("the last 50 records removed", keep_lines(&data, n - 50)),
    ];
    let mut deleted = data.clone();
    deleted.segments.pop();
    cuts.push(("the newest segment deleted", deleted));
    let mut emptied = data.clone();
    emptied.segments.last_mut().unwrap().bytes.clear();
    cuts.push(("the newest segment emptied", emptied));
    let mut halved = data.clone();
    let newest = &mut halved.segments.last_mut().unwrap().bytes;
    newest.truncate(newest.len() / 2);
    cuts.push(("the newest segment cut to its first half", halved));
    for (what, cut) in &cuts {
        // Without a witness: never reported sealed (the unsigned records are counted).
        let v = verify_log(cut, &options());
        assert_ne!(status(&v), LogStatus::Sealed, "{what}: {v:?}");
        // With the witness: a failure naming the cut.
        let v = verify_log(cut, &with(&held));
        let p = v.problem.expect(what);
        assert!(
            matches!(p.kind, ProblemKind::TruncatedTail | ProblemKind::TornTail),
            "{what}: {p}"
        );
    }

    // Three made-up records after the seal, with valid hashes: found without a witness.
    let forged = forge_events(&data, 3);
    let v = verify_log(&forged, &options());
    let p = v.problem.expect("records after the seal");
    assert_eq!(p.kind, ProblemKind::UnsignedAfterSeal, "{p}");
    assert_eq!(p.sequence, Some(n as u64 + 1));
    // A made-up checkpoint after the seal is signed by an unknown key.
    let mut forged = data.clone();
    let all = lines(&data);
    let last = parse_line(&all.last().unwrap().1).unwrap();
    let other = CheckpointSigner::from_seed(&[9u8; 32]);
    let cp = other.checkpoint(
        LOG,
        last.sequence,
        &last.stored_hash,
        "2026-01-01T00:00:00Z".into(),
    );
    let payload = format!(
        "\"time\":\"2026-01-01T00:00:00Z\",\"body\":{}",
        serde_json::to_string(&cp).unwrap()
    );
    encode_line(
        &mut forged.segments.last_mut().unwrap().bytes,
        LOG,
        last.sequence + 1,
        RecordKind::Checkpoint,
        &last.stored_hash,
        payload.as_bytes(),
    );
    let forged = forge_events(&forged, 3);
    let p = verify_log(&forged, &options())
        .problem
        .expect("forged checkpoint");
    assert_eq!(p.kind, ProblemKind::UnknownKey, "{p}");
}

#[tokio::test]
async fn a_new_run_continues_after_the_seal_and_only_a_witness_catches_a_cut_to_the_old_seal() {
    let dir = tempfile::tempdir().unwrap();
    let wdir = tempfile::tempdir().unwrap();
    run(dir.path(), Some(wdir.path()), 120).await;
    let first = lines(&load(dir.path(), LOG)).len();
    run(dir.path(), Some(wdir.path()), 80).await;
    let data = load(dir.path(), LOG);
    let held = FileWitness::read_all(wdir.path()).unwrap();
    let v = verify_log(&data, &with(&held));
    assert_eq!(status(&v), LogStatus::Sealed, "{:?}", v.problem);
    assert_eq!(v.seals, 2);
    // The second run starts with a signed checkpoint over the first run's seal.
    let l = lines(&data);
    assert_eq!(parse_line(&l[first - 1].1).unwrap().kind, RecordKind::Seal);
    assert_eq!(
        parse_line(&l[first].1).unwrap().kind,
        RecordKind::Checkpoint
    );

    // Cut back exactly to the first run's seal: without a witness it looks like a log that
    // ended there (the documented limit); the witness holds the second run's checkpoints.
    let cut = keep_lines(&data, first);
    assert_eq!(status(&verify_log(&cut, &options())), LogStatus::Sealed);
    let p = verify_log(&cut, &with(&held)).problem.expect("cut caught");
    assert_eq!(p.kind, ProblemKind::TruncatedTail, "{p}");

    // The writer refuses to continue a log whose seal is followed by made-up records, in the
    // seal's segment or in a new one after it.
    let mut cut = cut;
    cut.segments.retain(|s| !s.bytes.is_empty());
    let in_place = forge_events(&cut, 2);
    let mut in_new = cut.clone();
    let seal_seq = parse_line(&lines(&cut).last().unwrap().1).unwrap().sequence;
    in_new.segments.push(SegmentData {
        name: gatehouse_recorder::storage::segment_name(seal_seq + 1),
        bytes: Vec::new(),
    });
    let in_new = forge_events(&in_new, 2);
    for forged in [in_place, in_new] {
        let other = tempfile::tempdir().unwrap();
        for s in &forged.segments {
            std::fs::write(other.path().join(&s.name), &s.bytes).unwrap();
        }
        let store = Arc::new(gatehouse_recorder::LocalSegmentStore::new(other.path()).unwrap());
        let err = gatehouse_recorder::AuditLog::open(
            store,
            small_segments(),
            signer(),
            LogHooks::default(),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("follows the seal"), "{err}");
    }
}

#[tokio::test]
async fn the_file_witness_keeps_every_checkpoint_and_close_waits_for_the_seal() {
    let dir = tempfile::tempdir().unwrap();
    let wdir = tempfile::tempdir().unwrap();
    run(dir.path(), Some(wdir.path()), 350).await;
    // No polling: `close` returned only once the witness held the seal.
    let held = FileWitness::read_all(wdir.path()).unwrap();
    let data = load(dir.path(), LOG);
    let v = verify_log(&data, &with(&held));
    assert_eq!(status(&v), LogStatus::Sealed, "{:?}", v.problem);
    assert_eq!(held.len() as u64, v.checkpoints + v.seals, "{held:?}");
    assert!(v.checkpoints >= 4);
    assert_eq!(v.witnesses_matched, held.len() as u64);
    let latest = FileWitness::latest(wdir.path()).unwrap();
    assert_eq!(latest.len(), 1);
    assert!(latest[0].sealed);
    assert_eq!(Some(latest[0].sequence + 1), v.last_sequence);
    // One file per checkpoint, named by the record it covers.
    let files = std::fs::read_dir(wdir.path().join(LOG)).unwrap().count();
    assert_eq!(files, held.len());
    // A witnessed checkpoint is never replaced by a different one.
    let w = FileWitness::new(wdir.path()).unwrap();
    let mut other = latest[0].clone();
    other.time = "2030-01-01T00:00:00Z".into();
    use gatehouse_recorder::Witness as _;
    assert!(
        w.push(&latest[0]).await.is_ok(),
        "the same checkpoint again"
    );
    assert!(w.push(&other).await.is_err());
}

#[tokio::test]
async fn a_live_log_is_never_clean_past_its_last_signature() {
    let dir = tempfile::tempdir().unwrap();
    let wdir = tempfile::tempdir().unwrap();
    let log = open_log_with(dir.path(), config(LOG), witness_hooks(wdir.path())).await;
    let s = SessionId::generate();
    for i in 0..150 {
        log.append(&sql_event(&s, i, "select 1")).await.unwrap();
    }
    let data = load(dir.path(), LOG);
    let v = verify_log(&data, &options());
    assert_eq!(status(&v), LogStatus::Unsealed, "{:?}", v.problem);
    // A checkpoint every 100 records: record 101 signs the first 100; 50 follow it.
    assert_eq!(v.last_signed.as_ref().map(|h| h.sequence), Some(101));
    assert_eq!(v.unsigned_after, 50);

    // Once the witness holds that checkpoint, a cut behind it fails with the witness (and is
    // still reported unsigned, never sealed, without it).
    let held = within(20, async {
        loop {
            let held = FileWitness::read_all(wdir.path()).unwrap();
            if held.iter().any(|c| c.sequence == 100) {
                return held;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let cut = keep_lines(&data, 100);
    assert_eq!(status(&verify_log(&cut, &options())), LogStatus::Unsealed);
    let p = verify_log(&cut, &with(&held)).problem.expect("cut caught");
    assert_eq!(p.kind, ProblemKind::TruncatedTail, "{p}");

    // Three made-up records appended to the live segment: unsigned, never sealed.
    let forged = forge_events(&data, 3);
    let seg = forged.segments.last().unwrap();
    std::fs::write(dir.path().join(&seg.name), &seg.bytes).unwrap();
    let v = verify_log(&load(dir.path(), LOG), &options());
    assert_eq!(status(&v), LogStatus::Unsealed, "{:?}", v.problem);
    assert_eq!(v.unsigned_after, 53);

    // The writer goes on and signs its next checkpoint: the forged records no longer fit.
    for i in 150..250 {
        log.append(&sql_event(&s, i, "select 2")).await.unwrap();
    }
    within(30, log.close()).await.unwrap();
    let held = FileWitness::read_all(wdir.path()).unwrap();
    let data = load(dir.path(), LOG);
    for opts in [options(), with(&held)] {
        let v = verify_log(&data, &opts);
        assert_eq!(status(&v), LogStatus::Failed, "{v:?}");
    }
}

/// A sealed log of two runs, its witness checkpoints, and the byte offset just past the first
/// run's seal (written once for the property tests).
fn two_runs() -> &'static (LogData, Vec<Checkpoint>, usize) {
    static TWO_RUNS: OnceLock<(LogData, Vec<Checkpoint>, usize)> = OnceLock::new();
    TWO_RUNS.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let wdir = tempfile::tempdir().unwrap();
            run(dir.path(), Some(wdir.path()), 60).await;
            let first: usize = load(dir.path(), LOG)
                .segments
                .iter()
                .map(|s| s.bytes.len())
                .sum();
            run(dir.path(), Some(wdir.path()), 90).await;
            let data = load(dir.path(), LOG);
            let held = FileWitness::read_all(wdir.path()).unwrap();
            (data, held, first)
        })
    })
}

/// The log cut at byte `cut` of its segments laid end to end; segments wholly after the cut are
/// deleted, or kept empty.
fn cut_at(data: &LogData, cut: usize, keep_empty: bool) -> LogData {
    let mut out = LogData {
        log: data.log.clone(),
        segments: Vec::new(),
    };
    let mut at = 0usize;
    for s in &data.segments {
        let take = cut.saturating_sub(at).min(s.bytes.len());
        at += s.bytes.len();
        if take == 0 && !keep_empty {
            continue;
        }
        out.segments.push(SegmentData {
            name: s.name.clone(),
            bytes: s.bytes[..take].to_vec(),
        });
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any cut of a sealed log's end is found: never reported sealed without a witness (except a
    /// cut exactly back to the earlier run's seal), always a failure with it.
    #[test]
    fn any_truncation_of_a_sealed_log_is_detected(frac in 0.0f64..1.0, keep_empty in any::<bool>()) {
        let (data, held, first_seal_end) = two_runs();
        prop_assert_eq!(verify_log(data, &with(held)).status(), LogStatus::Sealed);
        let total: usize = data.segments.iter().map(|s| s.bytes.len()).sum();
        let cut = ((total as f64) * frac) as usize;
        prop_assume!(cut < total);
        let short = cut_at(data, cut, keep_empty);
        let v = verify_log(&short, &options());
        if cut != *first_seal_end {
            prop_assert_ne!(v.status(), LogStatus::Sealed, "cut at {} of {}", cut, total);
        }
        let v = verify_log(&short, &with(held));
        prop_assert_eq!(v.status(), LogStatus::Failed, "cut at {} of {}", cut, total);
    }

    /// Any extension of a sealed log (made-up records with valid hashes: events, recovery cuts,
    /// checkpoints and seals signed by another key) fails, with or without a witness.
    #[test]
    fn any_extension_of_a_sealed_log_is_detected(kinds in proptest::collection::vec(0u8..4, 1..6), new_segment in any::<bool>()) {
        let (data, held, _) = two_runs();
        prop_assert_eq!(verify_log(data, &with(held)).status(), LogStatus::Sealed);
        let all = lines(data);
        let last = parse_line(&all.last().unwrap().1).unwrap();
        let mut out = data.clone();
        let mut bytes = Vec::new();
        let mut prev = last.stored_hash;
        let attacker = CheckpointSigner::from_seed(&[1u8; 32]);
        for (k, kind) in kinds.iter().enumerate() {
            let seq = last.sequence + 1 + k as u64;
            let time = "2026-01-01T00:00:00Z";
            let (kind, payload) = match kind {
                0 => (RecordKind::Event, format!("\"time\":\"{time}\",\"session\":\"s\",\"body\":{{\"type\":\"other\",\"name\":\"forged\",\"details\":null}}")),
                1 => (RecordKind::RecoveryCut, format!("\"time\":\"{time}\",\"body\":{{\"segment\":\"x\",\"offset\":0,\"torn_bytes\":1,\"torn_sha256\":\"00\"}}")),
                2 => (RecordKind::Checkpoint, format!("\"time\":\"{time}\",\"body\":{}", serde_json::to_string(&attacker.checkpoint(LOG, seq - 1, &prev, time.into())).unwrap())),
                _ => (RecordKind::Seal, format!("\"time\":\"{time}\",\"body\":{}", serde_json::to_string(&attacker.seal(LOG, seq - 1, &prev, time.into())).unwrap())),
            };
            prev = encode_line(&mut bytes, LOG, seq, kind, &prev, payload.as_bytes());
        }
        if new_segment {
            out.segments.push(SegmentData {
                name: gatehouse_recorder::storage::segment_name(last.sequence + 1),
                bytes,
            });
        } else {
            out.segments.last_mut().unwrap().bytes.extend_from_slice(&bytes);
        }
        prop_assert_eq!(verify_log(&out, &options()).status(), LogStatus::Failed);
        prop_assert_eq!(verify_log(&out, &with(held)).status(), LogStatus::Failed);
    }
}

#[tokio::test]
async fn a_run_that_ended_without_a_seal_is_recorded_at_the_next_start() {
    let live = tempfile::tempdir().unwrap();
    let log = open_log(live.path(), small_segments()).await;
    let s = SessionId::generate();
    for i in 0..30 {
        log.append(&sql_event(&s, i, "select 1")).await.unwrap();
    }
    // What a gateway killed between two writes leaves: the files as they are now.
    let dir = tempfile::tempdir().unwrap();
    for seg in load(live.path(), LOG).segments {
        std::fs::write(dir.path().join(&seg.name), &seg.bytes).unwrap();
    }
    log.close().await.unwrap();
    let data = load(dir.path(), LOG);
    let before = verify_log(&data, &options());
    assert_eq!(status(&before), LogStatus::Unsealed);
    run(dir.path(), None, 5).await;
    let v = verify_log(&load(dir.path(), LOG), &options());
    assert!(v.problem.is_none(), "{:?}", v.problem);
    assert!(v.sealed, "the restart's run ends with its seal");
    assert_eq!(v.recoveries.len(), 1, "{:?}", v.recoveries);
    assert_eq!(v.recoveries[0].torn_bytes, 0);
    assert_eq!(
        Some(v.recoveries[0].sequence),
        before.last_sequence.map(|s| s + 1)
    );
    // What the killed run wrote after its last signature was never signed by it: the log does
    // not verify as sealed, and the count is the unsigned tail verify saw before the restart.
    assert_eq!(v.recoveries[0].unsigned_before, before.unsigned_after);
    assert_eq!(v.unsigned_before_recovery, before.unsigned_after);
    let expected = if before.unsigned_after > 0 {
        LogStatus::Unsealed
    } else {
        LogStatus::Sealed
    };
    assert_eq!(status(&v), expected);
}

/// The log with its last record replaced by `edit(payload)`, re-hashed (the hash chain is
/// public: anyone holding the audit directory can do this).
fn edit_last_record(data: &LogData, edit: impl Fn(&str) -> String) -> LogData {
    let all = lines(data);
    let last = parse_line(&all.last().unwrap().1).unwrap();
    let payload = edit(std::str::from_utf8(last.payload).unwrap());
    let mut out = keep_lines(data, all.len() - 1);
    let seg = all.last().unwrap().0;
    encode_line(
        &mut out.segments[seg].bytes,
        LOG,
        last.sequence,
        last.kind,
        &last.prev,
        payload.as_bytes(),
    );
    out
}

#[tokio::test]
async fn no_byte_of_the_seal_record_is_unsigned() {
    let dir = tempfile::tempdir().unwrap();
    run(dir.path(), None, 30).await;
    let data = load(dir.path(), LOG);
    assert_eq!(status(&verify_log(&data, &options())), LogStatus::Sealed);
    let last = lines(&data).last().unwrap().1.clone();
    let text = String::from_utf8(last).unwrap();
    assert!(text.contains("\"format\":2"), "{text}");

    type Edit = fn(&str) -> String;
    let edits: [(&str, Edit, ProblemKind, &str); 7] = [
        (
            "a member added to the seal's body",
            |p| {
                p.replacen(
                    "\"sealed\":true",
                    "\"sealed\":true,\"note\":\"closed by ops\"",
                    1,
                )
            },
            ProblemKind::UnsignedContent,
            "unknown field `note`",
        ),
        (
            "a member added to the record",
            |p| format!("{p},\"reason\":\"maintenance\""),
            ProblemKind::UnsignedContent,
            "unknown field `reason`",
        ),
        (
            "the record's time changed",
            |p| {
                let start = p.find("\"time\":\"").unwrap() + 8;
                format!(
                    "{}2020-01-01T00:00:00Z{}",
                    &p[..start],
                    &p[p[start..].find('"').unwrap() + start..]
                )
            },
            ProblemKind::UnsignedContent,
            "is not the signed time",
        ),
        (
            "whitespace added inside the body",
            |p| p.replacen("\"sealed\":true", "\"sealed\": true", 1),
            ProblemKind::UnsignedContent,
            "canonical encoding",
        ),
        (
            "the body's members reordered",
            |p| {
                p.replacen(",\"sealed\":true", "", 1).replacen(
                    "\"body\":{",
                    "\"body\":{\"sealed\":true,",
                    1,
                )
            },
            ProblemKind::UnsignedContent,
            "canonical encoding",
        ),
        (
            "the format member removed (a downgrade to format 1)",
            |p| p.replacen(",\"format\":2", "", 1),
            ProblemKind::BadSignature,
            "signature does not verify",
        ),
        (
            "the key id changed",
            |p| {
                let start = p.find("\"key_id\":\"").unwrap() + 10;
                format!("{}0000000000000000{}", &p[..start], &p[start + 16..])
            },
            ProblemKind::UnknownKey,
            "untrusted key",
        ),
    ];
    for (what, edit, kind, says) in edits {
        let edited = edit_last_record(&data, edit);
        let v = verify_log(&edited, &options());
        assert_ne!(status(&v), LogStatus::Sealed, "{what}");
        let p = v.problem.unwrap_or_else(|| panic!("{what}: no problem"));
        assert_eq!(p.kind, kind, "{what}: {p}");
        assert!(p.detail.contains(says), "{what}: {p}");
        assert_eq!(
            p.sequence,
            parse_line(&lines(&data).last().unwrap().1)
                .ok()
                .map(|l| l.sequence)
        );
    }
}

#[tokio::test]
async fn a_seal_of_format_1_written_by_earlier_versions_still_verifies() {
    use ed25519_dalek::Signer as _;
    let dir = tempfile::tempdir().unwrap();
    run(dir.path(), None, 30).await;
    let data = load(dir.path(), LOG);
    // The seal as earlier versions wrote it: no `format` member, signed over the v1 message.
    let all = lines(&data);
    let last = parse_line(&all.last().unwrap().1).unwrap();
    let env: serde_json::Value = serde_json::from_slice(&last.payload_object()).unwrap();
    let mut seal: Checkpoint = serde_json::from_value(env["body"].clone()).unwrap();
    seal.format = 1;
    let key = ed25519_dalek::SigningKey::from_bytes(&SEED);
    use base64::Engine as _;
    seal.signature = base64::engine::general_purpose::STANDARD
        .encode(key.sign(&seal.signed_message()).to_bytes());
    let old = edit_last_record(&data, |_| {
        format!(
            "\"time\":\"{}\",\"body\":{}",
            seal.time,
            serde_json::to_string(&seal).unwrap()
        )
    });
    assert!(
        !lines(&old)
            .last()
            .unwrap()
            .1
            .windows(8)
            .any(|w| w == b"\"format\"")
    );
    let v = verify_log(&old, &options());
    assert_eq!(status(&v), LogStatus::Sealed, "{:?}", v.problem);
    // Its unsigned bytes are held to the canonical encoding too.
    let edited = edit_last_record(&old, |p| {
        p.replacen("\"sealed\":true", "\"sealed\":true,\"x\":1", 1)
    });
    let p = verify_log(&edited, &options())
        .problem
        .expect("member added");
    assert_eq!(p.kind, ProblemKind::UnsignedContent, "{p}");
}
