//! Recorder benchmarks: control events/s at each durability level (with a no-group-commit
//! baseline), recording throughput (against a raw file write of the same bytes), and verify
//! records/s (against bare SHA-256 of the same bytes).
//!
//! `cargo bench -p gatehouse-recorder --bench recorder` (release). Results: docs/BENCHMARKS.md.

// A benchmark has nobody to report an error to: a failed setup step aborts the run.
#![allow(clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gatehouse_core::{
    AuthMethod, Decision, Event, EventBody, Identity, Operation, Protocol, RecordingFrame,
    RecordingKind, RecordingSink as _, SessionId, SqlOperation, Target,
};
use gatehouse_recorder::format::{RecordKind, encode_line};
use gatehouse_recorder::verify::verify_log;
use gatehouse_recorder::{
    AuditLog, AuditLogConfig, CheckpointSigner, Durability, LocalSegmentStore, LogData, LogHooks,
    RecordingConfig, RecordingStore, SegmentData, SessionRecording, TrustedKeys, VerifyOptions,
};
use sha2::Digest as _;

fn event(session: &SessionId, i: u64) -> Event {
    Event::now(
        session.clone(),
        Some(
            Identity::new("agent-7", "https://idp.example", AuthMethod::Oidc).with_group("agents"),
        ),
        Some(Target::new("orders-db", Protocol::Postgres).with_tag("prod")),
        EventBody::Operation {
            index: i,
            operation: Operation::Sql(SqlOperation::simple(format!(
                "SELECT id, status FROM orders WHERE customer_id = {i} LIMIT 10"
            ))),
            decision: Decision::allow("read-orders", "agents may read orders"),
        },
    )
}

const WRITERS: u64 = 256;

/// Appends `n` events from `WRITERS` concurrent tasks; returns the wall time.
async fn append_many(log: Arc<AuditLog>, n: u64) -> Duration {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        // Exactly `n` events in all: criterion divides the time by `n`.
        let per = n / WRITERS + u64::from(w < n % WRITERS);
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let s = SessionId::generate();
            for i in 0..per {
                log.append(&event(&s, i)).await.expect("append");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    start.elapsed()
}

fn control_events(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("control_events");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(8));
    for (name, durability, max_batch) in [
        ("os_write_group_commit", Durability::OsWrite, 4096),
        ("fsync_group_commit", Durability::Fsync, 4096),
        ("fsync_per_event_baseline", Durability::Fsync, 1),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = AuditLogConfig::new("bench");
        config.durability = durability;
        config.max_batch = max_batch;
        let log = rt.block_on(async {
            let store = Arc::new(LocalSegmentStore::new(dir.path()).expect("store"));
            Arc::new(
                AuditLog::open(
                    store,
                    config,
                    CheckpointSigner::from_seed(&[1; 32]),
                    LogHooks::default(),
                )
                .await
                .expect("open"),
            )
        });
        g.bench_function(name, |b| {
            b.iter_custom(|iters| rt.block_on(append_many(log.clone(), iters)))
        });
        rt.block_on(log.close()).expect("close");
    }
    g.finish();
}

/// One session's worth of control events: a single task appending one event at a time, each
/// awaited before the next (what a proxy does per statement or request). Measures the latency
/// of one append, where group commit cannot help: the inline os-write path against the writer
/// thread hand-off (`inline_os_write = false`, the baseline) in the same run.
fn control_events_one_writer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("control_events_one_writer");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(6));
    for (name, durability, inline) in [
        ("os_write_inline", Durability::OsWrite, true),
        ("os_write_thread_baseline", Durability::OsWrite, false),
        ("fsync", Durability::Fsync, false),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = AuditLogConfig::new("bench");
        config.durability = durability;
        config.inline_os_write = inline;
        let log = rt.block_on(async {
            let store = Arc::new(LocalSegmentStore::new(dir.path()).expect("store"));
            Arc::new(
                AuditLog::open(
                    store,
                    config,
                    CheckpointSigner::from_seed(&[1; 32]),
                    LogHooks::default(),
                )
                .await
                .expect("open"),
            )
        });
        let s = SessionId::generate();
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let log = log.clone();
                let s = s.clone();
                rt.block_on(async move {
                    tokio::spawn(async move {
                        let start = Instant::now();
                        for i in 0..iters {
                            log.append(&event(&s, i)).await.expect("append");
                        }
                        start.elapsed()
                    })
                    .await
                    .expect("task")
                })
            })
        });
        rt.block_on(log.close()).expect("close");
    }
    g.finish();
}

fn recording(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    const FRAME: usize = 16 * 1024;
    const FRAMES: usize = 1024; // 16 MiB per iteration
    let dir = tempfile::tempdir().expect("tempdir");
    let store = RecordingStore::Local(dir.path().to_owned());
    let frame = vec![b'a'; FRAME];
    let mut g = c.benchmark_group("recording");
    g.throughput(Throughput::Bytes((FRAME * FRAMES) as u64));
    g.sample_size(20);
    g.bench_function("session_recording_16KiB_frames", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut sink = SessionRecording::open(
                    &store,
                    &SessionId::generate(),
                    RecordingKind::Exec,
                    &RecordingConfig::default(),
                    None,
                )
                .await
                .expect("open");
                for _ in 0..FRAMES {
                    sink.write(RecordingFrame::Output {
                        data: frame.clone(),
                    })
                    .await
                    .expect("write");
                }
                Box::new(sink).seal().await.expect("seal")
            })
        })
    });
    g.bench_function("raw_file_write_baseline", |b| {
        b.iter(|| {
            rt.block_on(async {
                use tokio::io::AsyncWriteExt as _;
                let path = dir.path().join(format!("raw-{}", uuid::Uuid::now_v7()));
                let mut f = tokio::fs::File::create(&path).await.expect("create");
                for _ in 0..FRAMES {
                    f.write_all(&frame).await.expect("write");
                }
                f.sync_all().await.expect("sync");
            })
        })
    });
    g.finish();
}

fn sample_log(records: u64, signer: &CheckpointSigner) -> LogData {
    let session = SessionId::generate();
    let mut bytes = Vec::new();
    let mut prev = [0u8; 32];
    let mut seq = 1;
    for i in 0..records {
        let mut payload = serde_json::to_vec(&event(&session, i)).expect("json");
        payload.pop();
        payload.remove(0);
        prev = encode_line(&mut bytes, "bench", seq, RecordKind::Event, &prev, &payload);
        seq += 1;
        if i % 10_000 == 9_999 {
            let cp = signer.checkpoint("bench", seq - 1, &prev, "2026-11-23T00:00:00Z".into());
            let payload = format!(
                "\"time\":\"2026-11-23T00:00:00Z\",\"body\":{}",
                serde_json::to_string(&cp).expect("json")
            );
            prev = encode_line(
                &mut bytes,
                "bench",
                seq,
                RecordKind::Checkpoint,
                &prev,
                payload.as_bytes(),
            );
            seq += 1;
        }
    }
    LogData {
        log: "bench".into(),
        segments: vec![SegmentData {
            name: "seg-00000000000000000001.jsonl".into(),
            bytes,
        }],
    }
}

fn verify(c: &mut Criterion) {
    let signer = CheckpointSigner::from_seed(&[1; 32]);
    let log = sample_log(100_000, &signer);
    let records = log.segments[0]
        .bytes
        .iter()
        .filter(|b| **b == b'\n')
        .count() as u64;
    eprintln!(
        "verify sample: {records} records, {} bytes ({} bytes/record)",
        log.segments[0].bytes.len(),
        log.segments[0].bytes.len() as u64 / records
    );
    let keys = TrustedKeys::new().with(signer.verifying_key());
    let mut g = c.benchmark_group("verify");
    g.throughput(Throughput::Elements(records));
    g.sample_size(20);
    for (name, check_json, threads) in [
        ("verify_hash_chain_1_thread", false, 1),
        ("verify_hash_chain_and_json_1_thread", true, 1),
        ("verify_hash_chain_2_threads", false, 2),
        ("verify_hash_chain_and_json_2_threads", true, 2),
    ] {
        let opts = VerifyOptions {
            keys: keys.clone(),
            witnesses: vec![],
            check_json,
            threads,
        };
        g.bench_function(name, |b| {
            b.iter(|| {
                let v = verify_log(&log, &opts);
                assert!(v.ok());
                v.records
            })
        });
    }
    g.bench_function("sha256_lines_1_thread_baseline", |b| {
        b.iter(|| {
            let mut n = 0u64;
            let bytes = &log.segments[0].bytes;
            let mut pos = 0;
            while let Some(nl) = memchr::memchr(b'\n', &bytes[pos..]) {
                n = n.wrapping_add(u64::from(sha2::Sha256::digest(&bytes[pos..pos + nl])[0]));
                pos += nl + 1;
            }
            n
        })
    });
    // The JSON well-formedness check alone: verify's scanner against serde_json skipping a value.
    for (name, check) in [
        (
            "json_check_lines_1_thread",
            gatehouse_recorder::json_check::is_valid_json as fn(&[u8]) -> bool,
        ),
        (
            "serde_json_ignored_any_lines_1_thread",
            gatehouse_recorder::json_check::reference_is_valid_json,
        ),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let bytes = &log.segments[0].bytes;
                let mut ok = 0u64;
                for line in bytes.split(|b| *b == b'\n') {
                    ok += u64::from(check(line));
                }
                ok
            })
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    control_events,
    control_events_one_writer,
    recording,
    verify
);
criterion_main!(benches);
