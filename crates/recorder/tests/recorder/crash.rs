//! Crash test: a child process (this test binary, re-executed) appends as fast as it can and
//! prints each acknowledged receipt; the parent SIGKILLs it at a seeded random point, reopens the
//! log (recovery), and checks that every acknowledged event is present and the log verifies.
//! Replay a run with `GATEHOUSE_CRASH_SEED=<seed>`.

use std::io::{BufRead as _, BufReader};
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse_core::SessionId;
use gatehouse_recorder::Durability;
use gatehouse_recorder::verify::verify_log;

use crate::common::*;

const LOG: &str = "gw-crash";
const DIR_ENV: &str = "GATEHOUSE_RECORDER_CRASH_DIR";
const DURABILITY_ENV: &str = "GATEHOUSE_RECORDER_CRASH_FSYNC";

fn crash_config(fsync: bool) -> gatehouse_recorder::AuditLogConfig {
    let mut c = config(LOG);
    c.durability = if fsync {
        Durability::Fsync
    } else {
        Durability::OsWrite
    };
    c.segment_max_bytes = 32 * 1024;
    c.checkpoint_every_records = 50;
    c
}

/// The child side. Ignored so that it only runs when the parent re-executes it.
#[test]
#[ignore = "child process of crash_at_random_points"]
fn crash_child() {
    let Ok(dir) = std::env::var(DIR_ENV) else {
        return;
    };
    let fsync = std::env::var(DURABILITY_ENV).is_ok();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let log = Arc::new(open_log(std::path::Path::new(&dir), crash_config(fsync)).await);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut tasks = Vec::new();
        for t in 0..16 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let s = SessionId::generate();
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let r = log
                        .append(&sql_event(&s, i, &format!("select {t}, {i}")))
                        .await
                        .unwrap();
                    println!("ACK {} {}", r.sequence, r.hash);
                    i += 1;
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

/// SplitMix64: enough randomness for kill points, reproducible from the printed seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_at_random_points() {
    let seed = std::env::var("GATEHOUSE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("crash test seed = {seed} (replay with GATEHOUSE_CRASH_SEED={seed})");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acked: Vec<(u64, String)> = Vec::new();
    for round in 0..6 {
        let fsync = round % 2 == 1;
        let kill_after = 1 + rng.next() % 1500;
        let extra_spin = rng.next() % 20_000;
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash::crash_child",
                "--ignored",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(DIR_ENV, dir.path())
            .envs(fsync.then_some((DURABILITY_ENV, "1")))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<(u64, String)>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut parts = line.split(' ');
                if parts.next() == Some("ACK")
                    && let (Some(seq), Some(hash)) = (parts.next(), parts.next())
                    && let Ok(seq) = seq.parse()
                {
                    let _ = tx.send((seq, hash.to_owned()));
                }
            }
        });
        let mut seen = 0u64;
        let deadline = Instant::now() + Duration::from_secs(60);
        while seen < kill_after {
            match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(a) => {
                    acked.push(a);
                    seen += 1;
                }
                Err(_) => assert!(
                    Instant::now() < deadline,
                    "child made no progress (seed {seed})"
                ),
            }
        }
        // Land somewhere in the middle of the next writes.
        let mut x = 0u64;
        for i in 0..extra_spin {
            x = x.wrapping_add(std::hint::black_box(i));
        }
        std::hint::black_box(x);
        nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success(), "the child was killed");
        reader.join().unwrap();
        acked.extend(rx.try_iter());
        eprintln!("round {round}: killed after {seen}+ acks (fsync={fsync})");

        // Restart: recovery, one more event, and every acknowledged event is there.
        let log = open_log(dir.path(), crash_config(fsync)).await;
        log.append(&sql_event(&SessionId::generate(), 0, "after restart"))
            .await
            .unwrap();
        log.close().await.unwrap();
        let data = load(dir.path(), LOG);
        let v = verify_log(&data, &options());
        assert!(v.ok(), "seed {seed} round {round}: {:?}", v.problem);
        eprintln!(
            "round {round}: {} acknowledged so far, log has {} records, {} torn tails cut so far",
            acked.len(),
            v.records,
            v.recovery_cuts
        );
        let stored: std::collections::HashMap<u64, String> =
            gatehouse_recorder::read::records(&data)
                .into_iter()
                .map(|r| (r.sequence, r.hash))
                .collect();
        for (seq, hash) in &acked {
            assert_eq!(
                stored.get(seq),
                Some(hash),
                "seed {seed} round {round}: acknowledged record {seq} lost"
            );
        }
    }
}
