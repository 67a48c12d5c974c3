//! Durability and failure: group commit, rotation, torn-tail recovery, fail closed on a
//! fault-injecting store, on a real full filesystem and under a real file size limit, retention,
//! backlog, egress.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use gatehouse_core::{RecordError, Recorder as _, SessionId};
use gatehouse_recorder::format::parse_line;
use gatehouse_recorder::storage::{SegmentFile, SegmentStore};
use gatehouse_recorder::verify::verify_log;
use gatehouse_recorder::{
    AuditLog, AuditRecorder, Durability, LocalSegmentStore, LogHooks, ProblemKind, RecorderConfig,
};

use crate::common::*;

const LOG: &str = "gw-dur";

/// Every receipt names a record that is in the log with that hash.
fn assert_all_present(
    data: &gatehouse_recorder::LogData,
    receipts: &[gatehouse_core::EventReceipt],
) {
    let mut stored = std::collections::HashMap::new();
    for r in gatehouse_recorder::read::records(data) {
        stored.insert(r.sequence, r.hash);
    }
    for r in receipts {
        assert_eq!(
            stored.get(&r.sequence),
            Some(&r.hash),
            "acknowledged record {} missing or different",
            r.sequence
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_are_group_committed_and_all_present() {
    for durability in [Durability::OsWrite, Durability::Fsync] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(LOG);
        c.durability = durability;
        let log = Arc::new(open_log(dir.path(), c).await);
        let mut tasks = Vec::new();
        for t in 0..32u64 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let s = SessionId::generate();
                let mut r = Vec::new();
                for i in 0..50 {
                    r.push(
                        log.append(&sql_event(&s, i, &format!("select {t}, {i}")))
                            .await
                            .unwrap(),
                    );
                }
                r
            }));
        }
        let mut receipts = Vec::new();
        for t in tasks {
            receipts.extend(within(60, t).await.unwrap());
        }
        log.close().await.unwrap();
        let mut seqs: Vec<u64> = receipts.iter().map(|r| r.sequence).collect();
        seqs.sort();
        seqs.dedup();
        assert_eq!(seqs.len(), 1600, "every append got its own sequence");
        let data = load(dir.path(), LOG);
        assert_all_present(&data, &receipts);
        let v = verify_log(&data, &options());
        assert!(v.ok(), "{:?}", v.problem);
        // A checkpoint at the end of the batch that reaches 100 records (batches hold at most one
        // event per writer here: 32).
        let kinds: Vec<_> = gatehouse_recorder::read::records(&data)
            .into_iter()
            .map(|r| r.kind)
            .collect();
        let mut since = 0;
        for k in kinds {
            if k == gatehouse_recorder::format::RecordKind::Checkpoint {
                since = 0;
            } else {
                since += 1;
                assert!(since <= 100 + 32, "no checkpoint for {since} records");
            }
        }
        assert!(v.checkpoints >= 12, "checkpoints: {}", v.checkpoints);
        // After close, appends are refused.
        assert_eq!(
            log.append(&sql_event(&SessionId::generate(), 0, "x")).await,
            Err(RecordError::Closed)
        );
    }
}

#[tokio::test]
async fn segments_rotate_and_link() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(LOG);
    c.segment_max_bytes = 4096;
    let receipts = write_log(dir.path(), c.clone(), 200).await;
    let data = load(dir.path(), LOG);
    assert!(data.segments.len() > 5);
    for pair in data.segments.windows(2) {
        let last = pair[0]
            .bytes
            .split(|b| *b == b'\n')
            .rfind(|l| !l.is_empty())
            .unwrap();
        let first = pair[1].bytes.split(|b| *b == b'\n').next().unwrap();
        let (last, first) = (parse_line(last).unwrap(), parse_line(first).unwrap());
        assert_eq!(
            first.prev, last.stored_hash,
            "segment starts from the previous segment's last hash"
        );
        assert_eq!(first.sequence, last.sequence + 1);
    }
    assert!(verify_log(&data, &options()).ok());
    assert_all_present(&data, &receipts);
    // Reopening continues the chain.
    let more = write_log(dir.path(), c, 10).await;
    assert!(more[0].sequence > receipts.last().unwrap().sequence);
    let data = load(dir.path(), LOG);
    assert!(verify_log(&data, &options()).ok());
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_the_cut_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let receipts = write_log(dir.path(), config(LOG), 20).await;
    // A crash in the middle of a write leaves half a record.
    let data = load(dir.path(), LOG);
    let last = data.segments.last().unwrap();
    let path = dir.path().join(&last.name);
    let mut bytes = std::fs::read(&path).unwrap();
    let half = b"{\"schema_version\":1,\"log\":\"gw-dur\",\"sequence\":99,\"kind\":\"ev";
    bytes.extend_from_slice(half);
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(
        verify_log(&load(dir.path(), LOG), &options())
            .problem
            .unwrap()
            .kind,
        ProblemKind::TornTail
    );

    let after = write_log(dir.path(), config(LOG), 1).await;
    let data = load(dir.path(), LOG);
    let v = verify_log(&data, &options());
    assert!(v.ok(), "{:?}", v.problem);
    assert_eq!(v.recovery_cuts, 1);
    assert_all_present(&data, &receipts);
    assert_all_present(&data, &after);
    let cut = gatehouse_recorder::read::records(&data)
        .into_iter()
        .find(|r| r.kind == gatehouse_recorder::format::RecordKind::RecoveryCut)
        .unwrap();
    let text = String::from_utf8(cut.line).unwrap();
    assert!(
        text.contains(&format!("\"torn_bytes\":{}", half.len())),
        "{text}"
    );
}

#[tokio::test]
async fn a_damaged_middle_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), config(LOG), 20).await;
    let data = load(dir.path(), LOG);
    let path = dir.path().join(&data.segments[0].name);
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replacen("select 3 ", "select 4 ", 1);
    std::fs::write(&path, text).unwrap();
    let store = Arc::new(LocalSegmentStore::new(dir.path()).unwrap());
    let err = AuditLog::open(store, config(LOG), signer(), LogHooks::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("damaged"), "{err}");
}

/// What a [`WrappingStore`] does to each segment file it opens.
trait FileWrapper: Send + Sync + std::fmt::Debug {
    fn wrap(&self, file: Box<dyn SegmentFile>) -> Box<dyn SegmentFile>;
}

/// The local store with every segment file it opens wrapped: fault injection, stalls.
#[derive(Debug)]
struct WrappingStore<W> {
    inner: LocalSegmentStore,
    wrapper: W,
}

impl<W: FileWrapper> SegmentStore for WrappingStore<W> {
    fn list(&self) -> io::Result<Vec<String>> {
        self.inner.list()
    }
    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        self.inner.read(name)
    }
    fn open_append(&self, name: &str) -> io::Result<Box<dyn SegmentFile>> {
        Ok(self.wrapper.wrap(self.inner.open_append(name)?))
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        self.inner.remove(name)
    }
    fn sync_dir(&self) -> io::Result<()> {
        self.inner.sync_dir()
    }
}

/// Faults on demand: a write stores only part of its bytes and then fails (like ENOSPC
/// mid-write); a sync fails (like EIO).
#[derive(Debug)]
struct Faults {
    fail_writes: Arc<AtomicBool>,
    fail_syncs: Arc<AtomicBool>,
    partial: Arc<AtomicU64>,
}

impl FileWrapper for Faults {
    fn wrap(&self, inner: Box<dyn SegmentFile>) -> Box<dyn SegmentFile> {
        Box::new(FaultyFile {
            inner,
            fail_writes: self.fail_writes.clone(),
            fail_syncs: self.fail_syncs.clone(),
            partial: self.partial.clone(),
        })
    }
}

#[derive(Debug)]
struct FaultyFile {
    inner: Box<dyn SegmentFile>,
    fail_writes: Arc<AtomicBool>,
    fail_syncs: Arc<AtomicBool>,
    partial: Arc<AtomicU64>,
}

impl SegmentFile for FaultyFile {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        if self.fail_writes.load(Ordering::SeqCst) {
            let n = (self.partial.load(Ordering::SeqCst) as usize).min(data.len());
            self.inner.append(&data[..n])?;
            return Err(io::Error::from_raw_os_error(28)); // ENOSPC
        }
        self.inner.append(data)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        if self.fail_syncs.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(5)); // EIO
        }
        self.inner.sync_data()
    }
    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.inner.truncate(len)
    }
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
}

type FaultyStore = WrappingStore<Faults>;

fn faulty(dir: &std::path::Path) -> (Arc<FaultyStore>, Arc<AtomicBool>, Arc<AtomicBool>) {
    let fail_writes = Arc::new(AtomicBool::new(false));
    let fail_syncs = Arc::new(AtomicBool::new(false));
    let store = Arc::new(WrappingStore {
        inner: LocalSegmentStore::new(dir).unwrap(),
        wrapper: Faults {
            fail_writes: fail_writes.clone(),
            fail_syncs: fail_syncs.clone(),
            partial: Arc::new(AtomicU64::new(57)),
        },
    });
    (store, fail_writes, fail_syncs)
}

#[tokio::test]
async fn a_failed_write_fails_closed_and_leaves_no_partial_record() {
    let dir = tempfile::tempdir().unwrap();
    let (store, fail_writes, _) = faulty(dir.path());
    let log = AuditLog::open(store, config(LOG), signer(), LogHooks::default())
        .await
        .unwrap();
    let s = SessionId::generate();
    let mut receipts = Vec::new();
    for i in 0..10 {
        receipts.push(log.append(&sql_event(&s, i, "select 1")).await.unwrap());
    }
    fail_writes.store(true, Ordering::SeqCst);
    for i in 10..15 {
        let err = log.append(&sql_event(&s, i, "select 2")).await.unwrap_err();
        assert!(
            matches!(err, RecordError::Store(ref m) if m.contains("No space left")),
            "{err:?}"
        );
    }
    // What is on disk right now holds no partial record.
    let v = verify_log(&load(dir.path(), LOG), &options());
    assert!(v.ok(), "{:?}", v.problem);
    assert_eq!(v.last_sequence, Some(10));
    // Once space is back, the chain continues where it was.
    fail_writes.store(false, Ordering::SeqCst);
    let r = log.append(&sql_event(&s, 15, "select 3")).await.unwrap();
    assert_eq!(r.sequence, 11);
    receipts.push(r);
    log.close().await.unwrap();
    let data = load(dir.path(), LOG);
    assert!(verify_log(&data, &options()).ok());
    assert_all_present(&data, &receipts);
}

#[tokio::test]
async fn a_failed_fsync_disables_the_log_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _, fail_syncs) = faulty(dir.path());
    let log = AuditLog::open(store, config(LOG), signer(), LogHooks::default())
        .await
        .unwrap();
    let s = SessionId::generate();
    let ok = log.append(&sql_event(&s, 0, "select 1")).await.unwrap();
    fail_syncs.store(true, Ordering::SeqCst);
    assert!(matches!(
        log.append(&sql_event(&s, 1, "x")).await,
        Err(RecordError::Store(_))
    ));
    fail_syncs.store(false, Ordering::SeqCst);
    // The page cache can no longer be trusted: everything is refused from now on.
    assert!(
        matches!(log.append(&sql_event(&s, 2, "x")).await, Err(RecordError::Store(m)) if m.contains("disabled"))
    );
    drop(log);
    let data = load(dir.path(), LOG);
    assert_all_present(&data, &[ok]);
}

/// A real full filesystem: a 64 KiB tmpfs mounted by the test (CI runs as root).
#[tokio::test]
async fn a_full_filesystem_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&mnt)
        .status()
        .expect("run mount");
    assert!(
        status.success(),
        "mounting a tmpfs needs root (CI runs as root)"
    );
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(mnt.clone());

    let mut c = config(LOG);
    c.segment_max_bytes = 1 << 30;
    let log = open_log(&mnt, c.clone()).await;
    let s = SessionId::generate();
    let mut receipts = Vec::new();
    let mut failure = None;
    for i in 0..10_000 {
        match log
            .append(&sql_event(
                &s,
                i,
                &format!("select {i}, 'padding padding padding'"),
            ))
            .await
        {
            Ok(r) => receipts.push(r),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let failure = failure.expect("a 64 KiB filesystem fills up");
    assert!(
        matches!(&failure, RecordError::Store(m) if m.contains("No space left")),
        "{failure:?}"
    );
    assert!(receipts.len() > 20);
    // Still refused while the disk is full; nothing partial on disk.
    assert!(log.append(&sql_event(&s, 0, "again")).await.is_err());
    let data = load(&mnt, LOG);
    let v = verify_log(&data, &options());
    assert!(v.ok(), "{:?}", v.problem);
    assert_all_present(&data, &receipts);
    drop(log);
    // A restart on the full disk keeps every acknowledged record.
    let data = load(&mnt, LOG);
    assert_all_present(&data, &receipts);
}

const FSIZE_DIR_ENV: &str = "GATEHOUSE_RECORDER_FSIZE_DIR";
/// The file size limit the child runs under.
const FSIZE_LIMIT: u64 = 48 * 1024;

/// The child side of [`a_file_size_limit_fails_closed`]: under `RLIMIT_FSIZE`, appends until
/// the log refuses, printing `ACK <sequence> <hash>` per acknowledged event and `ERR <message>`
/// per refusal. Ignored so that it only runs when the parent re-executes it.
#[test]
#[ignore = "child process of a_file_size_limit_fails_closed"]
fn fsize_child() {
    use nix::sys::resource::{Resource, setrlimit};
    use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
    let Ok(dir) = std::env::var(FSIZE_DIR_ENV) else {
        return;
    };
    // Blocked (before any thread starts, so every thread inherits it), SIGXFSZ stays pending
    // instead of killing the process, and the write that crosses the limit fails with EFBIG.
    let mut set = SigSet::empty();
    set.add(Signal::SIGXFSZ);
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None).unwrap();
    setrlimit(Resource::RLIMIT_FSIZE, FSIZE_LIMIT, FSIZE_LIMIT).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut c = config(LOG);
        c.segment_max_bytes = 1 << 30;
        let log = open_log(std::path::Path::new(&dir), c).await;
        let s = SessionId::generate();
        let mut refused = 0;
        for i in 0..100_000 {
            match log
                .append(&sql_event(&s, i, &format!("select {i}, 'padding padding'")))
                .await
            {
                Ok(r) => println!("ACK {} {}", r.sequence, r.hash),
                Err(e) => {
                    println!("ERR {e}");
                    refused += 1;
                    if refused == 2 {
                        break;
                    }
                }
            }
        }
    });
}

/// A real limit the kernel enforces on root too (unlike chmod): `RLIMIT_FSIZE` in a child
/// process. The write that crosses the limit is partial (the kernel writes up to the limit, then
/// fails with EFBIG); the log must cut that partial record, refuse from then on, and keep every
/// acknowledged event.
#[tokio::test]
async fn a_file_size_limit_fails_closed() {
    use std::io::{BufRead as _, BufReader};
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "durability::fsize_child",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(FSIZE_DIR_ENV, dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let output = within(
        60,
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(output.status.success(), "child failed: {:?}", output.status);
    let mut receipts = Vec::new();
    let mut refusals = Vec::new();
    for line in BufReader::new(&output.stdout[..]).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("ACK ") {
            let (seq, hash) = rest.split_once(' ').unwrap();
            receipts.push(gatehouse_core::EventReceipt {
                sequence: seq.parse().unwrap(),
                hash: hash.to_owned(),
            });
        } else if let Some(msg) = line.strip_prefix("ERR ") {
            refusals.push(msg.to_owned());
        }
    }
    assert_eq!(refusals.len(), 2, "the child stops after two refusals");
    assert!(
        refusals[0].contains("File too large"),
        "EFBIG expected: {}",
        refusals[0]
    );
    assert!(receipts.len() > 20, "{} acknowledged", receipts.len());
    // The file stopped at or below the limit, and holds whole records only.
    let store = LocalSegmentStore::new(dir.path()).unwrap();
    let mut total = 0u64;
    for name in store.list().unwrap() {
        let len = std::fs::metadata(dir.path().join(&name)).unwrap().len();
        assert!(len <= FSIZE_LIMIT, "{name} is {len} bytes");
        total += len;
    }
    assert!(total > FSIZE_LIMIT / 2);
    let data = load(dir.path(), LOG);
    let v = verify_log(&data, &options());
    assert!(v.ok(), "{:?}", v.problem);
    assert_eq!(v.recovery_cuts, 0, "nothing partial was left behind");
    assert_all_present(&data, &receipts);
    // Without the limit, the log reopens and continues the same chain.
    let log = open_log(dir.path(), config(LOG)).await;
    let s = SessionId::generate();
    log.append(&sql_event(&s, 0, "after")).await.unwrap();
    log.close().await.unwrap();
    let data = load(dir.path(), LOG);
    let v = verify_log(&data, &options());
    assert!(v.ok(), "{:?}", v.problem);
    // Nothing torn was cut (the one recovery record says the refused run ended unsealed).
    assert!(
        v.recoveries.iter().all(|r| r.torn_bytes == 0),
        "{:?}",
        v.recoveries
    );
    assert_all_present(&data, &receipts);
}

#[tokio::test]
async fn retention_drops_old_segments_and_leaves_a_signed_cut() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(LOG);
    c.segment_max_bytes = 4096;
    c.max_batch = 1;
    let log = open_log(dir.path(), c).await;
    let s = SessionId::generate();
    let old = time::macros::datetime!(2020-01-01 0:00 UTC);
    for i in 0..60 {
        let mut e = sql_event(&s, i, "select old");
        e.time = old;
        log.append(&e).await.unwrap();
    }
    log.rotate().await.unwrap();
    let mut kept = Vec::new();
    for i in 0..20 {
        kept.push(log.append(&sql_event(&s, i, "select new")).await.unwrap());
    }
    let before = load(dir.path(), LOG).segments.len();
    let cut = log
        .retain(gatehouse_core::now() - time::Duration::days(30))
        .await
        .unwrap()
        .expect("old segments dropped");
    assert!(!cut.dropped_segments.is_empty());
    log.close().await.unwrap();
    let data = load(dir.path(), LOG);
    assert_eq!(data.segments.len(), before - cut.dropped_segments.len());
    let v = verify_log(&data, &options());
    assert!(v.ok(), "{:?}", v.problem);
    assert_eq!(v.retention_cuts, 1);
    assert_eq!(v.first_sequence, Some(cut.first_retained_sequence));
    assert_all_present(&data, &kept);
    // Dropping one segment more than the cut says is still caught.
    let mut more = data.clone();
    more.segments.remove(0);
    assert_eq!(
        verify_log(&more, &options()).problem.unwrap().kind,
        ProblemKind::MissingStart
    );
}

#[tokio::test]
async fn a_full_shipping_backlog_fails_closed() {
    use object_store::aws::AmazonS3Builder;
    // An S3 endpoint that accepts connections and never answers: shipments stay pending.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let store = AmazonS3Builder::new()
        .with_endpoint(format!("http://127.0.0.1:{port}"))
        .with_allow_http(true)
        .with_bucket_name("audit")
        .with_region("us-east-1")
        .with_access_key_id("k")
        .with_secret_access_key("s")
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(LOG);
    c.ship_backlog = 2;
    let hooks = LogHooks {
        witnesses: vec![],
        shipper: Some(gatehouse_recorder::objstore::SegmentShipper::new(
            Arc::new(store),
            "audit/gw-dur",
        )),
    };
    let log = open_log_with(dir.path(), c, hooks).await;
    let s = SessionId::generate();
    for i in 0..2 {
        log.append(&sql_event(&s, i, "select 1")).await.unwrap();
        log.rotate().await.unwrap();
    }
    assert_eq!(
        log.append(&sql_event(&s, 9, "select 1")).await,
        Err(RecordError::BacklogFull)
    );
    drop(listener);
}

#[tokio::test]
async fn the_egress_guard_refuses_records_with_held_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "hunter2-canary-9f8e7d";
    let guard = Arc::new(LiteralGuard {
        secret: secret.as_bytes().to_vec(),
    });
    let rec = AuditRecorder::open(dir.path(), RecorderConfig::new(LOG), signer(), Some(guard))
        .await
        .unwrap();
    let s = SessionId::generate();
    rec.record(sql_event(&s, 0, "select 1")).await.unwrap();
    let err = rec
        .record(sql_event(
            &s,
            1,
            &format!("alter role app password '{secret}'"),
        ))
        .await
        .unwrap_err();
    assert_eq!(err, RecordError::EgressBlocked);
    rec.log().close().await.unwrap();
    let logs = gatehouse_recorder::read::load_local_logs(&dir.path().join("audit")).unwrap();
    for seg in &logs[0].segments {
        let text = String::from_utf8_lossy(&seg.bytes);
        assert!(!text.contains(secret), "the secret reached the audit log");
    }
    let events = gatehouse_recorder::read::session_events(&logs, &s);
    assert!(events.iter().any(|e| matches!(
        e.body,
        gatehouse_core::EventBody::EgressBlocked { hits: 1, .. }
    )));
    assert!(gatehouse_recorder::verify(&logs, &options()).ok());
}

#[tokio::test]
async fn checkpoints_also_come_by_time() {
    // Under load: with a zero interval every group commit carries a checkpoint.
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(LOG);
    c.checkpoint_interval = std::time::Duration::ZERO;
    let log = open_log(dir.path(), c).await;
    let s = SessionId::generate();
    for i in 0..3 {
        log.append(&sql_event(&s, i, "select 1")).await.unwrap();
    }
    let data = load(dir.path(), LOG);
    assert_eq!(verify_log(&data, &options()).checkpoints, 3);
    drop(log);

    // Idle: a pending record gets its checkpoint from the timer, without further appends.
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(LOG);
    c.checkpoint_interval = std::time::Duration::from_millis(20);
    let log = open_log(dir.path(), c).await;
    let r = log.append(&sql_event(&s, 0, "select 1")).await.unwrap();
    let cp = within(10, async {
        loop {
            if let Some(cp) = log.latest_checkpoint() {
                return cp;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(cp.sequence, r.sequence);
    assert_eq!(cp.head, r.hash);
    log.close().await.unwrap();
}

/// `record_all` answers each event in order; an event the egress guard blocks is answered
/// `EgressBlocked` and replaced in the chain by the note of the block, the others are stored
/// around it; at both durability levels.
#[tokio::test]
async fn record_all_stores_a_batch_in_order_and_refuses_only_the_blocked_event() {
    for durability in [Durability::OsWrite, Durability::Fsync] {
        let dir = tempfile::tempdir().unwrap();
        let secret = "hunter2-canary-batch";
        let guard = Arc::new(LiteralGuard {
            secret: secret.as_bytes().to_vec(),
        });
        let mut cfg = RecorderConfig::new(LOG);
        cfg.log.durability = durability;
        let rec = AuditRecorder::open(dir.path(), cfg, signer(), Some(guard))
            .await
            .unwrap();
        let s = SessionId::generate();
        let events = (0..5)
            .map(|i| {
                let text = if i == 2 {
                    format!("alter role app password '{secret}'")
                } else {
                    format!("select {i}")
                };
                sql_event(&s, i, &text)
            })
            .collect();
        let results = rec.record_all(events).await;
        assert_eq!(results.len(), 5, "{durability:?}");
        assert_eq!(
            results[2],
            Err(RecordError::EgressBlocked),
            "{durability:?}"
        );
        let sequences: Vec<u64> = [0, 1, 3, 4]
            .iter()
            .map(|&i| results[i].as_ref().unwrap().sequence)
            .collect();
        assert!(
            sequences.windows(2).all(|w| w[0] < w[1]),
            "{durability:?}: {sequences:?}"
        );
        rec.log().close().await.unwrap();
        let logs = gatehouse_recorder::read::load_local_logs(&dir.path().join("audit")).unwrap();
        let text: String = logs[0]
            .segments
            .iter()
            .map(|seg| String::from_utf8_lossy(&seg.bytes).into_owned())
            .collect();
        assert!(!text.contains(secret), "the secret reached the audit log");
        let order: Vec<String> = gatehouse_recorder::read::session_events(&logs, &s)
            .iter()
            .map(|e| match &e.body {
                gatehouse_core::EventBody::Operation { index, .. } => index.to_string(),
                gatehouse_core::EventBody::EgressBlocked { .. } => "blocked".into(),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(order, ["0", "1", "blocked", "3", "4"], "{durability:?}");
        assert!(gatehouse_recorder::verify(&logs, &options()).ok());
    }
}

/// A batch is all or nothing: when its write fails, every event of it is answered with the
/// error and no byte of it stays in the segment; the chain continues afterwards.
#[tokio::test]
async fn a_failed_batch_write_fails_every_event_and_leaves_no_partial_record() {
    for durability in [Durability::OsWrite, Durability::Fsync] {
        let dir = tempfile::tempdir().unwrap();
        let (store, fail_writes, _) = faulty(dir.path());
        let mut cfg = config(LOG);
        cfg.durability = durability;
        let log = AuditLog::open(store, cfg, signer(), LogHooks::default())
            .await
            .unwrap();
        let s = SessionId::generate();
        let payload =
            |i: u64| gatehouse_recorder::log::event_payload(&sql_event(&s, i, "select 1"));
        let ok = log
            .append_payloads((0..3).map(|i| payload(i).unwrap()).collect())
            .await;
        assert!(ok.iter().all(Result::is_ok), "{durability:?}: {ok:?}");
        fail_writes.store(true, Ordering::SeqCst);
        let failed = log
            .append_payloads((3..7).map(|i| payload(i).unwrap()).collect())
            .await;
        assert_eq!(failed.len(), 4);
        assert!(
            failed
                .iter()
                .all(|r| matches!(r, Err(RecordError::Store(m)) if m.contains("No space left"))),
            "{durability:?}: {failed:?}"
        );
        let v = verify_log(&load(dir.path(), LOG), &options());
        assert!(v.ok(), "{durability:?}: {:?}", v.problem);
        assert_eq!(v.last_sequence, Some(3), "{durability:?}");
        fail_writes.store(false, Ordering::SeqCst);
        let after = log.append_payloads(vec![payload(7).unwrap()]).await;
        assert_eq!(after[0].as_ref().unwrap().sequence, 4, "{durability:?}");
        assert!(log.append_payloads(Vec::new()).await.is_empty());
        log.close().await.unwrap();
        assert!(verify_log(&load(dir.path(), LOG), &options()).ok());
    }
}

#[derive(Debug, Default)]
struct Gate {
    open: std::sync::Mutex<bool>,
    opened: std::sync::Condvar,
    /// Background sync handles handed out (each marks a sync about to start).
    handles: AtomicU64,
    entered: AtomicU64,
    /// Segments opened while a handed-out sync was not through.
    opened_during_sync: AtomicU64,
}

impl Gate {
    fn pass(&self) {
        self.entered.fetch_add(1, Ordering::SeqCst);
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.opened.wait(open).unwrap();
        }
    }
    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

#[derive(Debug)]
struct StallingFile {
    inner: Box<dyn SegmentFile>,
    gate: Arc<Gate>,
}

struct StallingSync {
    inner: Box<dyn gatehouse_recorder::storage::SegmentSync>,
    gate: Arc<Gate>,
}

impl gatehouse_recorder::storage::SegmentSync for StallingSync {
    fn sync_data(&self) -> io::Result<()> {
        self.gate.pass();
        self.inner.sync_data()
    }
}

/// Segment files whose background sync handles stall until the test opens the gate; the
/// files' own syncs (under the writer's lock) do not.
impl FileWrapper for Arc<Gate> {
    fn wrap(&self, inner: Box<dyn SegmentFile>) -> Box<dyn SegmentFile> {
        if self.handles.load(Ordering::SeqCst) > 0 && !*self.open.lock().unwrap() {
            self.opened_during_sync.fetch_add(1, Ordering::SeqCst);
        }
        Box::new(StallingFile {
            inner,
            gate: self.clone(),
        })
    }
}

impl SegmentFile for StallingFile {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.inner.append(data)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        self.inner.sync_data()
    }
    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.inner.truncate(len)
    }
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
    fn sync_handle(&self) -> io::Result<Option<Box<dyn gatehouse_recorder::storage::SegmentSync>>> {
        self.gate.handles.fetch_add(1, Ordering::SeqCst);
        Ok(self.inner.sync_handle()?.map(|inner| {
            Box::new(StallingSync {
                inner,
                gate: self.gate.clone(),
            }) as Box<dyn gatehouse_recorder::storage::SegmentSync>
        }))
    }
}

/// Opens the gate when dropped, so a failing assertion never leaves the upkeep thread stalled
/// and the test hanging in it.
struct OpenOnDrop(Arc<Gate>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

/// At `os-write`, a full segment is synced by the log's upkeep thread outside the writer's
/// lock: while that sync is stuck (a slow disk), appends go on, whether written by their
/// callers (`inline`) or queued for the writer thread, and the segment is closed once the sync
/// is through. (Before, the rotation's fdatasync of the whole segment ran under the lock in
/// whichever append found the segment full, and every append waited for it; then the sync ran
/// on the writer thread, and an append queued for it waited for the whole sync.)
async fn stalled_segment_sync_holds_up_no_append(inline: bool) {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let _release = OpenOnDrop(gate.clone());
    let store = Arc::new(WrappingStore {
        inner: LocalSegmentStore::new(dir.path()).unwrap(),
        wrapper: gate.clone(),
    });
    let mut c = config(LOG);
    c.durability = Durability::OsWrite;
    c.inline_os_write = inline;
    c.segment_max_bytes = 1 << 20;
    let log = AuditLog::open(store, c, signer(), LogHooks::default())
        .await
        .unwrap();
    let s = SessionId::generate();
    let text = "select ".to_string() + &"x".repeat(900);
    let limit = std::time::Duration::from_secs(120);
    // Fill the first segment until the upkeep thread takes its sync over, and stalls in it.
    let (mut receipts, i) = tokio::time::timeout(limit, async {
        let mut r = Vec::new();
        let mut i = 0;
        while gate.entered.load(Ordering::SeqCst) == 0 {
            r.push(log.append(&sql_event(&s, i, &text)).await.unwrap());
            i += 1;
            assert!(i < 100_000, "no background sync started");
            if i % 64 == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
        (r, i)
    })
    .await
    .expect("appends waited for the stalled segment sync as it began");
    let stalled_at = load(dir.path(), LOG).segments.len();
    // While it stalls, 3 000 more appends (about 3 MB) complete.
    let during = tokio::time::timeout(limit, async {
        let mut r = Vec::new();
        for j in 0..3000 {
            r.push(log.append(&sql_event(&s, i + j, &text)).await.unwrap());
        }
        r
    })
    .await
    .expect("appends waited for the stalled segment sync");
    assert_eq!(
        gate.entered.load(Ordering::SeqCst),
        1,
        "one sync, still stalled"
    );
    // A rotation now would fdatasync behind the stalled sync's writeback, under the lock.
    assert_eq!(
        gate.opened_during_sync.load(Ordering::SeqCst),
        0,
        "a segment was closed while its background sync was not through"
    );
    assert_eq!(load(dir.path(), LOG).segments.len(), stalled_at);
    receipts.extend(during);
    gate.open();
    log.close().await.unwrap();
    let data = load(dir.path(), LOG);
    assert!(
        data.segments.len() > stalled_at,
        "the full segment was closed after its sync"
    );
    let v = verify_log(&data, &options());
    assert!(v.ok(), "{:?}", v.problem);
    assert_all_present(&data, &receipts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_segment_sync_holds_up_no_append() {
    stalled_segment_sync_holds_up_no_append(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_segment_sync_holds_up_no_queued_append() {
    stalled_segment_sync_holds_up_no_append(false).await;
}
