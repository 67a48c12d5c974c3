//! Tamper tests: every kind of edit to a real log written by the real writer is detected, and
//! reported with its segment and sequence.

use gatehouse_recorder::Durability;
use gatehouse_recorder::format::{RecordKind, encode_line, parse_line};
use gatehouse_recorder::verify::verify_log;
use gatehouse_recorder::{
    Checkpoint, CheckpointSigner, FileWitness, LogData, ProblemKind, SegmentData, TrustedKeys,
    VerifyOptions,
};

use crate::common::*;

const LOG: &str = "gw-tamper";

/// A log of 250 events over several segments, with checkpoints every 100 records, and the final
/// checkpoint (as a witness would hold it).
async fn sample() -> (tempfile::TempDir, LogData, Checkpoint) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(LOG);
    c.segment_max_bytes = 16 * 1024;
    c.max_batch = 1; // one record per batch, so rotation points are deterministic
    let log = open_log(dir.path(), c).await;
    let session = gatehouse_core::SessionId::generate();
    for i in 0..250 {
        log.append(&sql_event(&session, i, &format!("select {i} from orders")))
            .await
            .unwrap();
    }
    log.close().await.unwrap();
    let cp = log.latest_checkpoint().expect("close writes a checkpoint");
    let data = load(dir.path(), LOG);
    assert!(
        data.segments.len() >= 4,
        "want several segments, got {}",
        data.segments.len()
    );
    (dir, data, cp)
}

/// All lines, flattened, with their segment index.
fn lines(data: &LogData) -> Vec<(usize, Vec<u8>)> {
    let mut out = Vec::new();
    for (i, s) in data.segments.iter().enumerate() {
        for l in s.bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            out.push((i, l.to_vec()));
        }
    }
    out
}

fn rebuild(data: &LogData, lines: &[(usize, Vec<u8>)]) -> LogData {
    let mut segments: Vec<SegmentData> = data
        .segments
        .iter()
        .map(|s| SegmentData {
            name: s.name.clone(),
            bytes: Vec::new(),
        })
        .collect();
    for (i, l) in lines {
        segments[*i].bytes.extend_from_slice(l);
        segments[*i].bytes.push(b'\n');
    }
    LogData {
        log: data.log.clone(),
        segments,
    }
}

fn seq_of(line: &[u8]) -> u64 {
    parse_line(line).unwrap().sequence
}

/// Recomputes `prev`/`hash` of every line from `from` on, as an attacker with write access would.
fn rechain(lines: &mut [(usize, Vec<u8>)], from: usize, renumber: bool) {
    let mut prev = parse_line(&lines[from - 1].1).unwrap().stored_hash;
    let mut seq = seq_of(&lines[from - 1].1);
    for (_, line) in lines[from..].iter_mut() {
        let p = parse_line(line).unwrap();
        seq = if renumber { seq + 1 } else { p.sequence };
        let mut out = Vec::new();
        prev = encode_line(&mut out, p.log, seq, p.kind, &prev, p.payload);
        out.pop();
        *line = out;
    }
}

fn with_witness(cp: &Checkpoint) -> VerifyOptions {
    VerifyOptions {
        witnesses: vec![cp.clone()],
        ..options()
    }
}

#[tokio::test]
async fn untouched_log_verifies() {
    let (_dir, data, cp) = sample().await;
    let v = verify_log(&data, &with_witness(&cp));
    assert!(v.ok(), "{:?}", v.problem);
    assert_eq!(v.first_sequence, Some(1));
    assert_eq!(v.last_sequence, Some(v.records));
    assert!(v.checkpoints >= 3, "checkpoints: {}", v.checkpoints);
    assert_eq!(v.witnesses_matched, 1);
    assert_eq!(v.seals, 1, "close seals the log");
    assert_eq!(v.records, 250 + v.checkpoints + v.seals);
    assert_eq!(v.status(), gatehouse_recorder::LogStatus::Sealed);
}

#[tokio::test]
async fn an_edited_record_is_found() {
    let (_dir, data, _) = sample().await;
    let mut l = lines(&data);
    let target = 120;
    let text = String::from_utf8(l[target].1.clone()).unwrap();
    l[target].1 = text.replace("from orders", "from orderz").into_bytes();
    let v = verify_log(&rebuild(&data, &l), &options());
    let p = v.problem.expect("edit detected");
    assert_eq!(p.kind, ProblemKind::HashMismatch);
    assert_eq!(p.sequence, Some(seq_of(&l[target].1)));
    assert_eq!(p.segment, data.segments[l[target].0].name);
    assert_eq!(v.last_sequence, Some(seq_of(&l[target].1) - 1));
}

#[tokio::test]
async fn reordered_records_are_found() {
    let (_dir, data, _) = sample().await;
    let mut l = lines(&data);
    // Two adjacent records in the same segment.
    let i = (60..l.len()).find(|&i| l[i].0 == l[i + 1].0).unwrap();
    let first_seq = seq_of(&l[i].1);
    let (a, b) = (l[i].1.clone(), l[i + 1].1.clone());
    l[i].1 = b;
    l[i + 1].1 = a;
    let p = verify_log(&rebuild(&data, &l), &options())
        .problem
        .expect("reorder detected");
    assert!(
        matches!(p.kind, ProblemKind::SequenceGap | ProblemKind::BrokenLink),
        "{p:?}"
    );
    assert_eq!(p.sequence, Some(first_seq + 1), "{p}");
}

#[tokio::test]
async fn a_deleted_record_is_found() {
    let (_dir, data, _) = sample().await;
    let mut l = lines(&data);
    let removed = seq_of(&l[77].1);
    l.remove(77);
    let p = verify_log(&rebuild(&data, &l), &options())
        .problem
        .expect("deletion detected");
    assert_eq!(p.kind, ProblemKind::SequenceGap);
    assert_eq!(p.sequence, Some(removed + 1));
}

#[tokio::test]
async fn inserted_records_are_found() {
    let (_dir, data, _) = sample().await;
    // A replayed (duplicated) record.
    let mut l = lines(&data);
    let dup = l[40].clone();
    l.insert(41, dup);
    let p = verify_log(&rebuild(&data, &l), &options())
        .problem
        .expect("duplicate detected");
    assert_eq!(p.kind, ProblemKind::SequenceGap);

    // A forged record that links correctly to its predecessor: the next one no longer does.
    let mut l = lines(&data);
    let line40 = l[40].1.clone();
    let before = parse_line(&line40).unwrap();
    let mut forged = Vec::new();
    encode_line(
        &mut forged,
        LOG,
        before.sequence + 1,
        RecordKind::Event,
        &before.stored_hash,
        b"\"time\":\"2026-01-01T00:00:00Z\",\"session\":\"x\",\"body\":{\"type\":\"other\",\"name\":\"forged\",\"details\":null}",
    );
    forged.pop();
    let seg = l[40].0;
    l.insert(41, (seg, forged));
    let p = verify_log(&rebuild(&data, &l), &options())
        .problem
        .expect("insertion detected");
    assert_eq!(p.kind, ProblemKind::SequenceGap);
    assert_eq!(p.sequence, Some(before.sequence + 1));
}

#[tokio::test]
async fn a_truncated_tail_is_found_against_the_witness() {
    let (_dir, data, cp) = sample().await;
    let mut l = lines(&data);
    l.truncate(l.len() - 30);
    let cut = rebuild(&data, &l);
    // Without a witness a clean cut at a line boundary looks like a shorter log: that is what
    // witnesses are for.
    assert!(verify_log(&cut, &options()).ok());
    assert_eq!(
        verify_log(&cut, &options()).status(),
        gatehouse_recorder::LogStatus::Unsealed,
        "but never sealed"
    );
    let p = verify_log(&cut, &with_witness(&cp))
        .problem
        .expect("truncation detected");
    assert_eq!(p.kind, ProblemKind::TruncatedTail);

    // Dropping whole segments at the end is the same.
    let mut short = data.clone();
    short.segments.pop();
    short.segments.pop();
    let p = verify_log(&short, &with_witness(&cp))
        .problem
        .expect("truncation detected");
    assert_eq!(p.kind, ProblemKind::TruncatedTail);
}

#[tokio::test]
async fn the_file_witness_catches_a_cut_tail() {
    let dir = tempfile::tempdir().unwrap();
    let wdir = tempfile::tempdir().unwrap();
    let witness = std::sync::Arc::new(FileWitness::new(wdir.path()).unwrap());
    let hooks = gatehouse_recorder::LogHooks {
        witnesses: vec![witness],
        shipper: None,
    };
    let log = open_log_with(dir.path(), config(LOG), hooks).await;
    let s = gatehouse_core::SessionId::generate();
    for i in 0..150 {
        log.append(&sql_event(&s, i, "select 1")).await.unwrap();
    }
    let cp = log.checkpoint().await.unwrap().unwrap();
    log.close().await.unwrap();
    let held = within(10, async {
        loop {
            let all = FileWitness::read_all(wdir.path()).unwrap();
            if all.iter().any(|c| c.sequence >= cp.sequence) {
                return all;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let data = load(dir.path(), LOG);
    let opts = VerifyOptions {
        witnesses: held,
        ..options()
    };
    assert!(verify_log(&data, &opts).ok());
    let mut l = lines(&data);
    l.truncate(l.len() - 5);
    let p = verify_log(&rebuild(&data, &l), &opts).problem.unwrap();
    assert_eq!(p.kind, ProblemKind::TruncatedTail);
}

#[tokio::test]
async fn missing_segments_are_found() {
    let (_dir, data, _) = sample().await;
    // A middle segment.
    let mut gap = data.clone();
    let removed = gap.segments.remove(1);
    let p = verify_log(&gap, &options()).problem.expect("gap detected");
    assert_eq!(p.kind, ProblemKind::SequenceGap);
    assert_eq!(p.segment, data.segments[2].name);
    assert!(!removed.bytes.is_empty());
    // The first segment, with no retention cut to explain it.
    let mut head = data.clone();
    head.segments.remove(0);
    let p = verify_log(&head, &options())
        .problem
        .expect("missing start detected");
    assert_eq!(p.kind, ProblemKind::MissingStart);
    assert_eq!(p.segment, data.segments[1].name);
}

#[tokio::test]
async fn a_rewrite_with_recomputed_hashes_is_found() {
    let (_dir, data, cp) = sample().await;
    let mut l = lines(&data);
    let target = 50;
    let text = String::from_utf8(l[target].1.clone()).unwrap();
    l[target].1 = text.replace("from orders", "from orderz").into_bytes();
    rechain(&mut l, target, false);
    // Every hash and link is consistent again; the next checkpoint is not.
    let p = verify_log(&rebuild(&data, &l), &options())
        .problem
        .expect("rewrite detected");
    assert_eq!(p.kind, ProblemKind::CheckpointMismatch, "{p}");

    // An attacker who also removes every checkpoint and renumbers gets past the chain checks,
    // but not past the witness.
    let mut l = lines(&data);
    let text = String::from_utf8(l[target].1.clone()).unwrap();
    l[target].1 = text.replace("from orders", "from orderz").into_bytes();
    l.retain(|(_, line)| {
        !matches!(
            parse_line(line).unwrap().kind,
            RecordKind::Checkpoint | RecordKind::Seal
        )
    });
    rechain(&mut l, target, true);
    let forged = rebuild(&data, &l);
    assert!(verify_log(&forged, &options()).ok());
    let p = verify_log(&forged, &with_witness(&cp))
        .problem
        .expect("rewrite detected");
    assert!(
        matches!(
            p.kind,
            ProblemKind::TruncatedTail | ProblemKind::WitnessMismatch
        ),
        "{p}"
    );
}

#[tokio::test]
async fn checkpoint_signatures_are_checked() {
    let (_dir, data, cp) = sample().await;
    // Untrusted key.
    let other = TrustedKeys::new().with(CheckpointSigner::from_seed(&[1u8; 32]).verifying_key());
    let opts = VerifyOptions {
        keys: other.clone(),
        ..Default::default()
    };
    assert_eq!(
        verify_log(&data, &opts).problem.unwrap().kind,
        ProblemKind::UnknownKey
    );
    // No key at all is not a pass either.
    assert_eq!(
        verify_log(&data, &VerifyOptions::default())
            .problem
            .unwrap()
            .kind,
        ProblemKind::UnknownKey
    );
    // A checkpoint re-signed by an attacker's key over a rewritten chain.
    let mut l = lines(&data);
    let i = l
        .iter()
        .position(|(_, line)| parse_line(line).unwrap().kind == RecordKind::Checkpoint)
        .unwrap();
    let text = String::from_utf8(l[i].1.clone()).unwrap();
    let sig_start = text.find("\"signature\":\"").unwrap() + 13;
    let mut bytes = text.into_bytes();
    bytes[sig_start] = if bytes[sig_start] == b'A' { b'B' } else { b'A' };
    l[i].1 = bytes;
    rechain(&mut l, i, false);
    let p = verify_log(&rebuild(&data, &l), &options()).problem.unwrap();
    assert_eq!(p.kind, ProblemKind::BadSignature);
    // A forged witness checkpoint.
    let mut bad = cp.clone();
    bad.sequence += 1;
    let p = verify_log(&data, &with_witness(&bad)).problem.unwrap();
    assert_eq!(p.kind, ProblemKind::BadSignature);
}

#[tokio::test]
async fn a_record_moved_between_logs_is_found() {
    let (_dir, data, _) = sample().await;
    let mut other = data.clone();
    other.log = "gw-other".into();
    let p = verify_log(&other, &options()).problem.unwrap();
    assert_eq!(p.kind, ProblemKind::WrongLog);
}

#[tokio::test]
async fn verify_takes_a_set_of_logs() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    write_log(a.path(), config("gw-a"), 10).await;
    write_log(b.path(), config("gw-b"), 10).await;
    let logs = vec![load(a.path(), "gw-a"), load(b.path(), "gw-b")];
    let report = gatehouse_recorder::verify(&logs, &options());
    assert!(report.ok(), "{:?}", report.first_problem());
    let mut bad = logs.clone();
    let seg = &mut bad[1].segments[0].bytes;
    let n = seg.len();
    seg.truncate(n - 10);
    let report = gatehouse_recorder::verify(&bad, &options());
    assert!(report.logs[0].ok());
    assert_eq!(report.first_problem().unwrap().kind, ProblemKind::TornTail);
}

/// The 1M-record verify of the issue, with baselines over the same bytes. Debug builds take a
/// while: run with `cargo nextest run -p gatehouse-recorder --release --run-ignored ignored-only
/// -E 'test(verify_a_million)' --no-capture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "1M records: run in release (see docs/BENCHMARKS.md)"]
async fn verify_a_million_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(LOG);
    c.durability = gatehouse_recorder::Durability::OsWrite;
    c.checkpoint_every_records = 10_000;
    let log = std::sync::Arc::new(open_log(dir.path(), c).await);
    let mut tasks = Vec::new();
    for t in 0..64u64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let s = gatehouse_core::SessionId::generate();
            for i in 0..(1_000_000 / 64 + 1) {
                log.append(&sql_event(&s, i, &format!("select {t} {i}")))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    log.close().await.unwrap();
    let data = load(dir.path(), LOG);
    let start = std::time::Instant::now();
    let v = verify_log(&data, &options());
    let took = start.elapsed();
    assert!(v.ok(), "{:?}", v.problem);
    assert!(v.records >= 1_000_000);
    let rate = v.records as f64 / took.as_secs_f64();
    // Baselines over the same bytes, in the same run: a bare line count, and SHA-256 of every
    // line on one thread (what any verifier must at least do).
    let start = std::time::Instant::now();
    let mut lines = 0u64;
    for seg in &data.segments {
        lines += memchr::memchr_iter(b'\n', &seg.bytes).count() as u64;
    }
    let count_took = start.elapsed();
    let start = std::time::Instant::now();
    let mut acc = 0u8;
    for seg in &data.segments {
        for line in seg.bytes.split(|b| *b == b'\n') {
            acc ^= <sha2::Sha256 as sha2::Digest>::digest(line)[0];
        }
    }
    let sha_took = start.elapsed();
    let bytes: usize = data.segments.iter().map(|s| s.bytes.len()).sum();
    let sha_rate = lines as f64 / sha_took.as_secs_f64();
    eprintln!(
        "verified {} records ({} bytes, {} segments) in {:?}: {:.0} records/s; \
         baselines: line count {:?} ({:.0} lines/s), SHA-256 per line on 1 thread {:?} \
         ({:.0} lines/s, {acc}); verify / sha256 = {:.2}",
        v.records,
        bytes,
        data.segments.len(),
        took,
        rate,
        count_took,
        lines as f64 / count_took.as_secs_f64(),
        sha_took,
        sha_rate,
        rate / sha_rate,
    );
}

#[tokio::test]
async fn parallel_and_sequential_verification_agree() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(LOG);
    c.durability = gatehouse_recorder::Durability::OsWrite;
    c.checkpoint_every_records = 1000;
    write_log(dir.path(), c, 6000).await;
    let data = load(dir.path(), LOG);
    let mut l = lines(&data);
    let text = String::from_utf8(l[4321].1.clone()).unwrap();
    l[4321].1 = text.replace("from orders", "from orderz").into_bytes();
    let bad = rebuild(&data, &l);
    for log in [&data, &bad] {
        let one = verify_log(
            log,
            &VerifyOptions {
                threads: 1,
                ..options()
            },
        );
        let two = verify_log(
            log,
            &VerifyOptions {
                threads: 2,
                ..options()
            },
        );
        let four = verify_log(
            log,
            &VerifyOptions {
                threads: 4,
                ..options()
            },
        );
        assert_eq!(one, two);
        assert_eq!(one, four);
    }
    assert!(verify_log(&data, &options()).ok());
    assert_eq!(
        verify_log(&bad, &options()).problem.unwrap().sequence,
        Some(seq_of(&l[4321].1))
    );
}

/// Two made-up records chaining onto the live log's head with valid hashes, as someone with
/// write access to the directory would append them.
fn forge_two(dir: &std::path::Path) -> (String, u64, Vec<u8>, Vec<u8>) {
    let data = load(dir, LOG);
    let seg = data
        .segments
        .iter()
        .max_by(|a, b| a.name.cmp(&b.name))
        .unwrap();
    let last = seg
        .bytes
        .split(|b| *b == b'\n')
        .rfind(|l| !l.is_empty())
        .unwrap();
    let p = parse_line(last).unwrap();
    let mut forged = Vec::new();
    let payload = b"\"time\":\"2026-01-01T00:00:00Z\",\"session\":\"forged\",\"body\":{\"type\":\"other\",\"name\":\"forged\",\"details\":{}}";
    let h = encode_line(
        &mut forged,
        LOG,
        p.sequence + 1,
        RecordKind::Event,
        &p.stored_hash,
        payload,
    );
    encode_line(
        &mut forged,
        LOG,
        p.sequence + 2,
        RecordKind::Event,
        &h,
        payload,
    );
    (seg.name.clone(), p.sequence + 1, seg.bytes.clone(), forged)
}

/// The running writer notices records appended to its segment behind its back: it does not
/// chain onto them, keeps them aside, cuts them, and records what it found (then a signed
/// checkpoint); verify fails naming the segment, the offset, the lines and the sequences they
/// claimed, while the chain around them verifies to the seal.
async fn foreign_records_appended_to_a_live_log_are_found(durability: Durability) {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(LOG);
    c.durability = durability;
    let log = open_log(dir.path(), c).await;
    let session = gatehouse_core::SessionId::generate();
    for i in 0..5 {
        log.append(&sql_event(&session, i, "select 1"))
            .await
            .unwrap();
    }
    let (segment, claimed, before, forged) = forge_two(dir.path());
    std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join(&segment))
        .unwrap()
        .write_all(&forged)
        .unwrap();
    for i in 5..8 {
        log.append(&sql_event(&session, i, "select 2"))
            .await
            .unwrap();
    }
    within(30, log.close()).await.unwrap();

    let v = verify_log(&load(dir.path(), LOG), &options());
    assert_eq!(v.problem, None, "{v:?}");
    assert!(v.sealed, "{v:?}");
    assert_eq!(v.status(), gatehouse_recorder::LogStatus::Failed, "{v:?}");
    assert!(!v.ok());
    assert_eq!(v.foreign.len(), 1, "{v:?}");
    let note = &v.foreign[0];
    // The gateway's record takes the place the forged records claimed.
    assert_eq!(note.sequence, claimed);
    let f = &note.found;
    assert_eq!(f.segment, segment);
    assert_eq!(f.written_bytes, before.len() as u64);
    assert_eq!(f.found_bytes, (before.len() + forged.len()) as u64);
    assert_eq!(f.foreign_bytes, forged.len() as u64);
    assert_eq!(f.foreign_lines, 2);
    assert_eq!(f.claimed_sequences, Some((claimed, claimed + 1)));
    let kept = f.kept_as.as_ref().unwrap();
    assert_eq!(std::fs::read(dir.path().join(kept)).unwrap(), forged);
    let text = note.to_string();
    assert!(
        text.contains(&format!(
            "2 line(s), claiming sequences {claimed}..{}) were appended to segment {segment} after byte {}",
            claimed + 1,
            before.len()
        )),
        "{text}"
    );
    // Nothing of the forged records is left in the chain.
    let records = gatehouse_recorder::read::records(&load(dir.path(), LOG));
    assert!(
        records
            .iter()
            .all(|r| !r.line.windows(6).any(|w| w == b"forged"))
    );
    assert_eq!(
        records
            .iter()
            .find(|r| r.sequence == claimed + 1)
            .unwrap()
            .kind,
        RecordKind::Checkpoint
    );
}

#[tokio::test]
async fn foreign_records_appended_to_a_live_log_are_found_fsync() {
    foreign_records_appended_to_a_live_log_are_found(Durability::Fsync).await;
}

#[tokio::test]
async fn foreign_records_appended_to_a_live_log_are_found_os_write() {
    foreign_records_appended_to_a_live_log_are_found(Durability::OsWrite).await;
}

/// A live segment cut behind the writer's back: it continues in a new segment after recording
/// what it found, and verify fails where the chain breaks, saying what the gateway recorded.
#[tokio::test]
async fn a_live_segment_cut_behind_the_writer_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path(), config(LOG)).await;
    let session = gatehouse_core::SessionId::generate();
    for i in 0..5 {
        log.append(&sql_event(&session, i, "select 1"))
            .await
            .unwrap();
    }
    let (segment, _, before, _) = forge_two(dir.path());
    let trimmed = before.strip_suffix(b"\n").unwrap();
    let cut = memchr_last_newline(trimmed) + 1;
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join(&segment))
        .unwrap()
        .set_len(cut as u64)
        .unwrap();
    for i in 5..8 {
        log.append(&sql_event(&session, i, "select 2"))
            .await
            .unwrap();
    }
    within(30, log.close()).await.unwrap();
    let data = load(dir.path(), LOG);
    assert_eq!(data.segments.len(), 2, "a new segment after the cut");
    let v = verify_log(&data, &options());
    let p = v.problem.as_ref().unwrap();
    assert_eq!(p.segment, data.segments[1].name, "{p}");
    assert_eq!(p.line, 1, "{p}");
    assert!(
        p.detail.contains(&format!(
            "segment {segment} was cut behind the gateway's back from {} to {cut} bytes",
            before.len()
        )),
        "{p}"
    );
}

fn memchr_last_newline(b: &[u8]) -> usize {
    b.iter().rposition(|c| *c == b'\n').unwrap()
}

/// When the foreign bytes cannot be kept aside, the writer neither chains onto them nor drops
/// them: it refuses this and every later record (fail closed).
#[tokio::test]
async fn foreign_records_that_cannot_be_set_aside_close_the_log() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path(), config(LOG)).await;
    let session = gatehouse_core::SessionId::generate();
    for i in 0..3 {
        log.append(&sql_event(&session, i, "select 1"))
            .await
            .unwrap();
    }
    let (segment, _, before, forged) = forge_two(dir.path());
    // Every name the writer would keep them under is taken.
    let base = format!("{segment}.foreign-{:020}", before.len());
    std::fs::write(dir.path().join(&base), b"").unwrap();
    for n in 1..1000 {
        std::fs::write(dir.path().join(format!("{base}.{n}")), b"").unwrap();
    }
    std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join(&segment))
        .unwrap()
        .write_all(&forged)
        .unwrap();
    for i in 3..5 {
        let e = log
            .append(&sql_event(&session, i, "select 2"))
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("changed behind the gateway's back"),
            "{e}"
        );
    }
    // The forged bytes are where they were put; nothing was chained after them.
    let now = std::fs::read(dir.path().join(&segment)).unwrap();
    assert_eq!(now, [before, forged].concat());
}

/// A live segment replaced by a rename (a forged file renamed over the one the writer holds
/// open): the writer notices that the name no longer leads to its file and refuses this and
/// every later record (fail closed), instead of appending to a file no longer in the log.
/// At `fsync` durability at the very next write; at `os-write` at the next checkpoint.
async fn a_live_segment_replaced_by_a_rename_closes_the_log(durability: Durability) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(LOG);
    c.durability = durability;
    let log = open_log(dir.path(), c).await;
    let session = gatehouse_core::SessionId::generate();
    for i in 0..5 {
        log.append(&sql_event(&session, i, "select 1"))
            .await
            .unwrap();
    }
    let (segment, _, before, forged) = forge_two(dir.path());
    let path = dir.path().join(&segment);
    let replacement = dir.path().join("replacement.tmp");
    std::fs::write(&replacement, [before.clone(), forged.clone()].concat()).unwrap();
    std::fs::rename(&replacement, &path).unwrap();
    let e = match durability {
        Durability::Fsync => log
            .append(&sql_event(&session, 5, "select 2"))
            .await
            .unwrap_err(),
        _ => log.checkpoint().await.unwrap_err(),
    };
    let text = e.to_string();
    assert!(
        text.contains(&format!(
            "segment {segment} was replaced behind the gateway's back"
        )) && text.contains("a file was renamed over it"),
        "{text}"
    );
    // Every later record is refused too, and closing says so.
    for i in 6..8 {
        let e = log
            .append(&sql_event(&session, i, "select 3"))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("audit log disabled"), "{e}");
    }
    assert!(within(30, log.close()).await.is_err());
    // Nothing was chained onto the forged file, nor written into it; the gateway's own file
    // was kept beside it (not under a segment name).
    assert_eq!(
        std::fs::read(&path).unwrap(),
        [before.clone(), forged].concat()
    );
    let kept = format!("{segment}.displaced");
    assert!(
        text.contains(&format!("the gateway's own file was kept as {kept}")),
        "{text}"
    );
    assert_eq!(std::fs::read(dir.path().join(&kept)).unwrap(), before);
}

#[tokio::test]
async fn a_live_segment_replaced_by_a_rename_closes_the_log_fsync() {
    a_live_segment_replaced_by_a_rename_closes_the_log(Durability::Fsync).await;
}

#[tokio::test]
async fn a_live_segment_replaced_by_a_rename_closes_the_log_os_write() {
    a_live_segment_replaced_by_a_rename_closes_the_log(Durability::OsWrite).await;
}

/// The segment's name removed while the writer holds it open: the same.
#[tokio::test]
async fn a_live_segment_renamed_away_closes_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path(), config(LOG)).await;
    let session = gatehouse_core::SessionId::generate();
    log.append(&sql_event(&session, 0, "select 1"))
        .await
        .unwrap();
    let (segment, _, _, _) = forge_two(dir.path());
    std::fs::rename(dir.path().join(&segment), dir.path().join("elsewhere")).unwrap();
    let e = log
        .append(&sql_event(&session, 1, "select 2"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no longer exists"), "{e}");
    assert!(!dir.path().join(&segment).exists());
}
