//! The end of the audit log, through the real binary: `gatehouse serve` seals the log on SIGTERM;
//! `gatehouse audit verify --witness … --key …` (the command the quickstart prints) answers 0 for
//! the untouched closed log, and fails naming what it found for every edit of its end; on a live
//! log it reports the records after the last signature as unsigned (exit 3, never a bare OK), a
//! cut behind a witnessed checkpoint fails, and made-up records fail once the gateway signs on.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use gatehouse_recorder::format::{RecordKind, encode_line, parse_line};
use gatehouse_testkit::process::{ChildGuard, run_with_timeout};
use nix::sys::signal::Signal;

const EXE: &str = env!("CARGO_BIN_EXE_gatehouse");

/// Writes a gateway config (an HTTP listener on loopback; every unauthenticated request is a
/// recorded failed login) with the key and the witness apart from `data/`, as the quickstart does.
fn setup(dir: &Path) -> PathBuf {
    std::fs::write(dir.join("policy.toml"), "[defaults]\ndefault = \"allow\"\n").unwrap();
    let config = dir.join("gatehouse.toml");
    std::fs::write(
        &config,
        r#"[gateway]
data_dir = "data"
shutdown_grace_secs = 2

[identity.dev_issuer]
key = "dev.key"

[policy]
file = "policy.toml"

[audit]
durability = "fsync"
checkpoint_every_records = 20
checkpoint_interval_ms = 200
segment_max_bytes = 4096
signing_key = "keys/audit-signing.key"
witness_dir = "witness"

[[listeners.http]]
listen = "127.0.0.1:0"
review_hold_ms = 0
threads = 1

[[targets]]
name = "api"
protocol = "http"
path_prefix = "/api"
upstream = "http://127.0.0.1:9"
"#,
    )
    .unwrap();
    config
}

struct Gateway {
    guard: ChildGuard,
    http: SocketAddr,
    stderr: Arc<Mutex<Vec<String>>>,
}

fn start(config: &Path) -> Gateway {
    start_with_env(config, &[])
}

fn start_with_env(config: &Path, env: &[(&str, &str)]) -> Gateway {
    let mut cmd = Command::new(EXE);
    cmd.envs(env.iter().copied());
    cmd.args(["serve", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut guard = ChildGuard::spawn_with_stdio("gatehouse serve", cmd).unwrap();
    let stderr = guard.child_mut().stderr.take().unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel::<String>();
    {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let http = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("gateway did not start: {:?}", lines.lock().unwrap()));
        if let Some(rest) = line.split("http ").nth(1)
            && line.contains("listening:")
        {
            let addr = rest.split([',', ' ']).next().unwrap();
            break addr.parse().unwrap();
        }
    };
    Gateway {
        guard,
        http,
        stderr: lines,
    }
}

impl Gateway {
    /// `n` requests without a token: each is refused and recorded as a failed login.
    fn knock(&self, n: usize) {
        for _ in 0..n {
            let mut s = TcpStream::connect(self.http).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(b"GET /api/x HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
                .unwrap();
            let mut resp = String::new();
            let _ = s.read_to_string(&mut resp);
            assert!(resp.starts_with("HTTP/1.1 401"), "{resp}");
        }
    }

    fn stop(mut self) -> Vec<String> {
        self.guard.stop(Signal::SIGTERM, Duration::from_secs(30));
        self.stderr.lock().unwrap().clone()
    }
}

fn public_key(dir: &Path) -> String {
    let signer =
        gatehouse_recorder::CheckpointSigner::load_or_create(&dir.join("keys/audit-signing.key"))
            .unwrap();
    hex::encode(signer.verifying_key().as_bytes())
}

/// `gatehouse audit verify <data> [--witness <dir>] --key <hex>`: (exit code, stdout + stderr).
fn verify(data: &Path, witness: Option<&Path>, key: &str) -> (i32, String) {
    let mut cmd = Command::new(EXE);
    cmd.args(["audit", "verify"]).arg(data);
    if let Some(w) = witness {
        cmd.arg("--witness").arg(w);
    }
    cmd.args(["--key", key]);
    let out = run_with_timeout(cmd, Duration::from_secs(60)).unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// The segment files of the only log, in order.
fn segments(data: &Path) -> Vec<PathBuf> {
    let log = data.join("audit/gw1");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&log)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    v.sort();
    v
}

fn all_lines(data: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for seg in segments(data) {
        for l in std::fs::read(&seg).unwrap().split(|b| *b == b'\n') {
            if !l.is_empty() {
                out.push((seg.clone(), l.to_vec()));
            }
        }
    }
    out
}

/// Removes the last `n` records (rewriting the segments they are in; files stay, maybe empty).
fn remove_last(data: &Path, n: usize) {
    let lines = all_lines(data);
    let keep = lines.len() - n;
    for seg in segments(data) {
        let mut bytes = Vec::new();
        for (s, l) in lines.iter().take(keep) {
            if *s == seg {
                bytes.extend_from_slice(l);
                bytes.push(b'\n');
            }
        }
        std::fs::write(&seg, bytes).unwrap();
    }
}

/// Appends `n` made-up event records with valid hashes after the last record.
fn forge(data: &Path, n: u64) {
    let lines = all_lines(data);
    let (seg, last) = lines.last().unwrap();
    let last = parse_line(last).unwrap();
    let mut bytes = std::fs::read(seg).unwrap();
    let mut prev = last.stored_hash;
    for k in 1..=n {
        let payload = format!(
            "\"time\":\"2026-12-06T00:00:0{k}Z\",\"session\":\"forged\",\"body\":{{\"type\":\"other\",\"name\":\"forged\",\"details\":null}}"
        );
        prev = encode_line(
            &mut bytes,
            "gw1",
            last.sequence + k,
            RecordKind::Event,
            &prev,
            payload.as_bytes(),
        );
    }
    std::fs::write(seg, bytes).unwrap();
}

/// The last record is a checkpoint the witness holds.
fn witnessed_to_the_end(data: &Path, witness: &Path) -> bool {
    let lines = all_lines(data);
    let Some((_, last)) = lines.last() else {
        return false;
    };
    let last = parse_line(last).unwrap();
    last.kind == RecordKind::Checkpoint
        && gatehouse_recorder::FileWitness::read_all(witness)
            .unwrap_or_default()
            .iter()
            .any(|c| c.sequence + 1 == last.sequence)
}

/// Polls `verify` until `done` holds for its answer (the gateway signs and witnesses in the
/// background); panics with the last answer after 60 s.
fn verify_until(
    data: &Path,
    witness: &Path,
    key: &str,
    done: impl Fn(i32, &str) -> bool,
) -> (i32, String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, text) = verify(data, Some(witness), key);
        if done(code, &text) {
            return (code, text);
        }
        assert!(Instant::now() < deadline, "gave up waiting: {code} {text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_closed_log_is_sealed_and_every_edit_of_its_end_fails() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let gw = start(&config);
    gw.knock(80);
    let stderr = gw.stop();
    assert!(
        stderr
            .iter()
            .any(|l| l.contains("audit log sealed at sequence")),
        "{stderr:?}"
    );
    let data = dir.path().join("data");
    let witness = dir.path().join("witness");
    let key = public_key(dir.path());
    assert!(
        stderr
            .iter()
            .any(|l| l.contains("signed by public key") && l.contains(&key)),
        "serve names the key to pin: {stderr:?}"
    );
    // The key lives apart from the log, readable by its owner only.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(dir.path().join("keys/audit-signing.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(!data.join("audit-signing.key").exists());

    let (code, text) = verify(&data, Some(&witness), &key);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("SEALED") && !text.contains("NOT SEALED"),
        "{text}"
    );
    assert!(segments(&data).len() >= 3, "{:?}", segments(&data));

    type Edit = fn(&Path);
    let edits: [(&str, Edit, &[&str]); 5] = [
        (
            "the last record removed",
            |d| remove_last(d, 1),
            &["TruncatedTail"],
        ),
        (
            "the last 50 records removed",
            |d| remove_last(d, 50),
            &["TruncatedTail"],
        ),
        (
            "the newest segment deleted",
            |d| std::fs::remove_file(segments(d).pop().unwrap()).unwrap(),
            &["TruncatedTail"],
        ),
        (
            "the newest segment emptied",
            |d| std::fs::write(segments(d).pop().unwrap(), b"").unwrap(),
            &["TruncatedTail"],
        ),
        (
            "the newest segment cut to its first half",
            |d| {
                let seg = segments(d).pop().unwrap();
                let bytes = std::fs::read(&seg).unwrap();
                std::fs::write(&seg, &bytes[..bytes.len() / 2]).unwrap();
            },
            &["TruncatedTail", "TornTail"],
        ),
    ];
    for (what, edit, found) in edits {
        let copy = tempfile::tempdir().unwrap();
        copy_dir(&data, copy.path());
        edit(copy.path());
        // With the witness (the quickstart's command): a failure naming what it found.
        let (code, text) = verify(copy.path(), Some(&witness), &key);
        assert_eq!(code, 1, "{what}: {text}");
        assert!(text.contains("FAILED"), "{what}: {text}");
        assert!(found.iter().any(|f| text.contains(f)), "{what}: {text}");
        // Without it: never sealed, never exit 0.
        let (code, text) = verify(copy.path(), None, &key);
        assert!(code == 1 || code == 3, "{what}: {code} {text}");
        assert!(!text.contains(": SEALED"), "{what}: {text}");
    }

    // Three made-up records after the seal, with valid hashes: found with and without a witness.
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&data, copy.path());
    forge(copy.path(), 3);
    for w in [Some(witness.as_path()), None] {
        let (code, text) = verify(copy.path(), w, &key);
        assert_eq!(code, 1, "{text}");
        assert!(text.contains("UnsignedAfterSeal"), "{text}");
    }

    // The seal record itself, edited and re-hashed: every byte of it is signed.
    type PayloadEdit = fn(&str) -> String;
    let seal_edits: [(&str, PayloadEdit, &str); 3] = [
        (
            "a member added to the seal's body",
            |p| {
                p.replacen(
                    "\"sealed\":true",
                    "\"sealed\":true,\"closed_by\":\"ops\"",
                    1,
                )
            },
            "unknown field `closed_by`",
        ),
        (
            "a member added to the seal record",
            |p| format!("{p},\"reason\":\"maintenance\""),
            "unknown field `reason`",
        ),
        (
            "the seal record's time changed",
            |p| {
                let start = p.find("\"time\":\"").unwrap() + 8;
                let end = start + p[start..].find('"').unwrap();
                format!("{}2020-01-01T00:00:00Z{}", &p[..start], &p[end..])
            },
            "is not the signed time",
        ),
    ];
    for (what, edit, says) in seal_edits {
        let copy = tempfile::tempdir().unwrap();
        copy_dir(&data, copy.path());
        edit_last_record(copy.path(), edit);
        for w in [Some(witness.as_path()), None] {
            let (code, text) = verify(copy.path(), w, &key);
            assert_eq!(code, 1, "{what}: {text}");
            assert!(text.contains("UnsignedContent"), "{what}: {text}");
            assert!(text.contains(says), "{what}: {text}");
        }
    }
}

/// Replaces the last record's payload by `edit(payload)` and recomputes its hash, as someone
/// holding the audit directory (not the key) can.
fn edit_last_record(data: &Path, edit: impl Fn(&str) -> String) {
    let lines = all_lines(data);
    let (seg, last) = lines.last().unwrap();
    let p = parse_line(last).unwrap();
    assert_eq!(p.kind, RecordKind::Seal);
    let payload = edit(std::str::from_utf8(p.payload).unwrap());
    let bytes = std::fs::read(seg).unwrap();
    let mut out = bytes[..bytes.len() - last.len() - 1].to_vec();
    encode_line(
        &mut out,
        "gw1",
        p.sequence,
        p.kind,
        &p.prev,
        payload.as_bytes(),
    );
    std::fs::write(seg, out).unwrap();
}

#[test]
fn a_live_log_is_never_reported_clean_past_its_last_signature() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let gw = start(&config);
    let data = dir.path().join("data");
    let witness = dir.path().join("witness");
    let key = public_key(dir.path());
    gw.knock(30);
    // Running: exit 3 and the unsigned count, never exit 0; wait until everything is signed and
    // witnessed (the gateway checkpoints every 200 ms of activity).
    let (code, text) = verify_until(&data, &witness, &key, |code, text| {
        code == 3
            && text.contains("every record is signed")
            && witnessed_to_the_end(&data, &witness)
    });
    assert!(
        text.contains("NOT SEALED") && !text.contains(" OK"),
        "{code} {text}"
    );

    // A cut behind the last witnessed checkpoint fails (on a copy: the gateway keeps writing).
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&data, copy.path());
    remove_last(copy.path(), 3);
    let (code, text) = verify(copy.path(), Some(&witness), &key);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("TruncatedTail"), "{text}");

    // Three made-up records after the last signature: reported unsigned, never OK (on a copy:
    // the running gateway notices them at its next write, below).
    let forged = tempfile::tempdir().unwrap();
    copy_dir(&data, forged.path());
    forge(forged.path(), 3);
    let (code, text) = verify(forged.path(), Some(&witness), &key);
    assert_eq!(code, 3, "{text}");
    assert!(text.contains("3 record(s) after it are UNSIGNED"), "{text}");
    // Appended to the live log: the writer notices them at its next write, does not chain onto
    // them, and records what it found; verify fails naming them, while the chain around them
    // verifies.
    let seg = segments(&data).pop().unwrap();
    let mut bytes = Vec::new();
    {
        let lines = all_lines(&data);
        let last = parse_line(&lines.last().unwrap().1).unwrap();
        let mut prev = last.stored_hash;
        for k in 1..=3 {
            prev = encode_line(
                &mut bytes,
                "gw1",
                last.sequence + k,
                RecordKind::Event,
                &prev,
                b"\"time\":\"2026-12-06T00:00:00Z\",\"session\":\"forged\",\"body\":{\"type\":\"other\",\"name\":\"forged\",\"details\":null}",
            );
        }
    }
    std::fs::OpenOptions::new()
        .append(true)
        .open(&seg)
        .unwrap()
        .write_all(&bytes)
        .unwrap();
    gw.knock(5);
    let (_, text) = verify_until(&data, &witness, &key, |code, _| code == 1);
    assert!(
        text.contains("FAILED — written to by someone other than the gateway")
            && text.contains("FOREIGN DATA: ")
            && text.contains("(3 line(s), claiming sequences ")
            && text.contains(".foreign-"),
        "{text}"
    );
    let stderr = gw.stop();
    // After the stop the log is sealed, and still fails for what was written into it.
    let (code, text) = verify(&data, Some(&witness), &key);
    assert_eq!(code, 1, "{text} {stderr:?}");
    assert!(text.contains("(3 line(s), claiming sequences "), "{text}");
}

#[test]
fn a_crash_is_reported_as_the_recovery_cut_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let mut gw = start(&config);
    let data = dir.path().join("data");
    let witness = dir.path().join("witness");
    let key = public_key(dir.path());
    gw.knock(10);
    // SIGKILL, and the half-written record a crash mid-write leaves behind.
    gw.guard.stop(Signal::SIGKILL, Duration::from_secs(10));
    let seg = segments(&data).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes.extend_from_slice(b"{\"schema_version\":1,\"log\":\"gw1\",\"sequence\":9");
    std::fs::write(&seg, bytes).unwrap();
    let (code, text) = verify(&data, Some(&witness), &key);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("TornTail") && text.contains("crash"),
        "{text}"
    );
    // The next start cuts the torn line and records the cut; verify names it.
    let gw = start(&config);
    let _ = gw.stop();
    let (code, text) = verify(&data, Some(&witness), &key);
    // Records the crashed run had not signed yet keep the log from verifying as sealed.
    let never_signed = text.contains("never signed by the run that wrote them");
    assert_eq!(code, if never_signed { 3 } else { 0 }, "{text}");
    assert!(
        text.contains("crash recovery at sequence") && text.contains("torn byte(s)"),
        "{text}"
    );

    // Killed between two writes: no torn line; not sealed until the next start records it.
    let mut gw = start(&config);
    gw.knock(3);
    gw.guard.stop(Signal::SIGKILL, Duration::from_secs(10));
    let (code, text) = verify(&data, Some(&witness), &key);
    assert_eq!(code, 3, "{text}");
    let unsigned_at_crash = text.contains("UNSIGNED");
    let gw = start(&config);
    let _ = gw.stop();
    let (code, text) = verify(&data, Some(&witness), &key);
    assert!(text.contains("unsealed end before sequence"), "{text}");
    // Records the crashed run wrote after its last signature were signed by the restart as it
    // found them (anyone with write access could have changed them in between): they never
    // verify as sealed.
    if unsigned_at_crash {
        assert_eq!(code, 3, "{text}");
        assert!(
            text.contains("never signed by the run that wrote them"),
            "{text}"
        );
    } else {
        assert_eq!(code, 0, "{text}");
    }
}

/// The records a crashed run never signed, rewritten before the restart, are never reported
/// as sealed (outside attacker: the restart's checkpoint used to sign them and verify said 0).
#[test]
fn records_a_crashed_run_never_signed_do_not_verify_as_sealed_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let data = dir.path().join("data");
    let witness = dir.path().join("witness");
    // Retry until the kill leaves unsigned records (checkpoints come every second).
    for _ in 0..5 {
        let mut gw = start(&config);
        let key = public_key(dir.path());
        gw.knock(20);
        gw.guard.stop(Signal::SIGKILL, Duration::from_secs(10));
        let (code, text) = verify(&data, Some(&witness), &key);
        if code == 3 && text.contains("UNSIGNED") {
            let gw = start(&config);
            let _ = gw.stop();
            let (code, text) = verify(&data, Some(&witness), &key);
            assert_eq!(code, 3, "{text}");
            assert!(text.contains("NOTHING VOUCHES"), "{text}");
            return;
        }
        let gw = start(&config);
        let _ = gw.stop();
    }
    panic!("no kill left unsigned records in 5 tries");
}

#[test]
fn the_key_and_the_witness_are_kept_apart_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let text = std::fs::read_to_string(&config).unwrap();
    let check = |text: &str| {
        std::fs::write(&config, text).unwrap();
        let mut cmd = Command::new(EXE);
        cmd.arg("check-config").arg(&config);
        let out = run_with_timeout(cmd, Duration::from_secs(60)).unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    // As configured: no warning.
    let (code, stderr) = check(&text);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
    // A key inside the audit log directory, or a witness there, is refused.
    let (code, stderr) =
        check(&text.replace("keys/audit-signing.key", "data/audit/gw1/audit-signing.key"));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("inside the audit log directory"),
        "{stderr}"
    );
    let (code, stderr) = check(&text.replace(
        "witness_dir = \"witness\"",
        "witness_dir = \"data/audit/witness\"",
    ));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("overlaps the audit log directory"),
        "{stderr}"
    );
    // The old default (beside the log in the data directory) and no witness: warnings.
    let (code, stderr) = check(
        &text
            .replace("signing_key = \"keys/audit-signing.key\"\n", "")
            .replace("witness_dir = \"witness\"\n", ""),
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("signing key") && stderr.contains("no audit witness configured"),
        "{stderr}"
    );
    // A key file others may read is refused at start.
    std::fs::write(&config, &text).unwrap();
    std::fs::create_dir_all(dir.path().join("keys")).unwrap();
    std::fs::write(dir.path().join("keys/audit-signing.key"), "11".repeat(32)).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(
        dir.path().join("keys/audit-signing.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let mut cmd = Command::new(EXE);
    cmd.args(["serve", "--config"]).arg(&config);
    let out = run_with_timeout(cmd, Duration::from_secs(60)).unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("chmod 600"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `gatehouse evidence export` as the quickstart prints it, into `out`.
fn export(dir: &Path, out: &Path) -> serde_json::Map<String, serde_json::Value> {
    let mut cmd = Command::new(EXE);
    cmd.args(["evidence", "export", "--dir"])
        .arg(dir.join("data"))
        .arg("--witness")
        .arg(dir.join("witness"))
        .arg("--key")
        .arg(dir.join("keys/audit-signing.key"))
        .arg("--out")
        .arg(out);
    let res = run_with_timeout(cmd, Duration::from_secs(60)).unwrap();
    assert!(
        res.status.success(),
        "{}{}",
        String::from_utf8_lossy(&res.stdout),
        String::from_utf8_lossy(&res.stderr)
    );
    let mut files = serde_json::Map::new();
    for name in [
        "access-summary.json",
        "audit-verify.json",
        "credentials-statement.json",
        "witness-checkpoint.json",
    ] {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join(name)).unwrap()).unwrap();
        files.insert(name.into(), v);
    }
    files
}

#[test]
fn an_export_from_a_running_gateway_covers_up_to_the_export() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let gw = start(&config);
    gw.knock(7);
    let outs = tempfile::tempdir().unwrap();
    // Taken right away: every failed login is there (each is recorded before it is answered),
    // and the bundle says the log is live and where its last signature is.
    let e = export(dir.path(), &outs.path().join("now"));
    assert_eq!(
        e["access-summary.json"]["identities"]["(unauthenticated)"]["login_failures"], 7,
        "{e:?}"
    );
    let verified = &e["audit-verify.json"];
    assert_eq!(verified["status"], "unsealed", "{verified}");
    let period = &verified["period"];
    assert!(period["log_read_at"].is_string(), "{period}");
    assert!(
        period["logs"][0]["unsigned_records_at_end"].is_u64(),
        "{period}"
    );
    assert_eq!(
        e["credentials-statement.json"]["established"], true,
        "{e:?}"
    );
    // The egress counters follow within a second of the last change: an export soon after
    // covers them up to its last event; it carries the witness's latest checkpoint.
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0.. {
        let e = export(dir.path(), &outs.path().join(format!("later-{i}")));
        let period = &e["audit-verify.json"]["period"];
        let witnessed = &e["witness-checkpoint.json"]["latest"][0];
        if period["egress_counters_as_of"] == period["last_event"] && witnessed["log"] == "gw1" {
            break;
        }
        assert!(Instant::now() < deadline, "{e:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // After the stop, the bundle says sealed and carries the witnessed seal.
    let _ = gw.stop();
    let e = export(dir.path(), &outs.path().join("after"));
    assert_eq!(e["audit-verify.json"]["status"], "sealed");
    assert_eq!(e["witness-checkpoint.json"]["latest"][0]["sealed"], true);
    // `evidence verify` says which it was.
    for (bundle, said) in [("now", "was live (not sealed)"), ("after", "was sealed")] {
        // The key the gateway signed with (here read from the bundle; a checker has it from the
        // gateway's config): only a pinned key vouches for a bundle.
        let manifest: serde_json::Value = serde_json::from_slice(
            &std::fs::read(outs.path().join(bundle).join("manifest.json")).unwrap(),
        )
        .unwrap();
        let key = manifest["signing_key"].as_str().unwrap().to_string();
        let mut cmd = Command::new(EXE);
        cmd.args(["evidence", "verify"])
            .arg(outs.path().join(bundle))
            .args(["--key", &key]);
        let out = run_with_timeout(cmd, Duration::from_secs(60)).unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains(said),
            "{bundle}: {text}"
        );
    }
}

/// A token of the dev issuer the config names (the gateway creates its key at start).
fn token(dir: &Path) -> String {
    let mut mint = Command::new(EXE);
    mint.current_dir(dir).args([
        "token", "--key", "dev.key", "--sub", "agent-1", "--ttl", "10m",
    ]);
    let out = run_with_timeout(mint, Duration::from_secs(30)).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Every file under the recordings directory.
fn recording_files(data: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&data.join("recordings"), &mut out);
    out.sort();
    out
}

#[test]
fn one_forged_byte_in_any_recording_fails_verification_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let gw = start(&config);
    let token = token(dir.path());
    // Three authenticated connections: three sessions, each with its HTTP recording (the
    // upstream is unreachable: each request is recorded with its 502).
    for _ in 0..3 {
        let mut s = TcpStream::connect(gw.http).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET /api/x HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n"
        )
        .unwrap();
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        assert!(resp.starts_with("HTTP/1.1 "), "{resp}");
        assert!(!resp.starts_with("HTTP/1.1 401"), "{resp}");
    }
    gw.stop();
    let data = dir.path().join("data");
    let witness = dir.path().join("witness");
    let key = public_key(dir.path());
    let (code, text) = verify(&data, Some(&witness), &key);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("recordings: 3 sealed recording(s)"), "{text}");

    let files = recording_files(&data);
    assert_eq!(files.len(), 3, "{files:?}");
    for f in &files {
        let good = std::fs::read(f).unwrap();
        for at in [0, good.len() / 2, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            std::fs::write(f, &bad).unwrap();
            let (code, text) = verify(&data, Some(&witness), &key);
            assert_eq!(code, 1, "byte {at} of {}: {text}", f.display());
            assert!(
                text.contains(&f.display().to_string()) && text.contains("altered"),
                "{text}"
            );
        }
        std::fs::write(f, &good).unwrap();
    }
    let (code, text) = verify(&data, Some(&witness), &key);
    assert_eq!(code, 0, "{text}");

    // A recording file no seal covers is named, and the answer is never OK.
    let planted = data.join("recordings/planted/0.jsonl");
    std::fs::create_dir_all(planted.parent().unwrap()).unwrap();
    std::fs::write(&planted, b"{}\n").unwrap();
    let (code, text) = verify(&data, Some(&witness), &key);
    assert_eq!(code, 3, "{text}");
    assert!(
        text.contains("UNSEALED") && text.contains(&planted.display().to_string()),
        "{text}"
    );
}

/// A session with several recordings (an SSH connection with two channels: each channel's seal
/// is recorded on its own, the session end carries none), and a session still open, written by
/// the recorder exactly as the gateway writes them and verified through the binary.
#[test]
fn recordings_sealed_per_channel_and_of_open_sessions_are_checked() {
    use gatehouse_core::{EventBody, Recorder as _, RecordingFrame, RecordingKind, SessionId};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let signer = gatehouse_recorder::CheckpointSigner::from_seed(&[7u8; 32]);
    let key = hex::encode(signer.verifying_key().as_bytes());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let open = rt.block_on(async {
        let rec = gatehouse_recorder::AuditRecorder::open(
            &data,
            gatehouse_recorder::RecorderConfig::new("gw1"),
            signer,
            None,
        )
        .await
        .unwrap();
        let event = |s: &SessionId, body| gatehouse_core::Event::now(s.clone(), None, None, body);
        let ssh = SessionId::generate();
        rec.record(event(
            &ssh,
            EventBody::SessionStart {
                client_addr: "127.0.0.1:1".into(),
                details: serde_json::json!({ "protocol": "ssh" }),
            },
        ))
        .await
        .unwrap();
        for index in 0..2u64 {
            let mut sink = rec
                .open_recording(&ssh, RecordingKind::Terminal { cols: 80, rows: 24 })
                .await
                .unwrap();
            sink.write(RecordingFrame::Output {
                data: format!("channel {index} output\r\n").into_bytes(),
            })
            .await
            .unwrap();
            let seal = sink.seal().await.unwrap();
            rec.record(event(
                &ssh,
                EventBody::Other {
                    name: "ssh_recording_sealed".into(),
                    details: serde_json::json!({ "index": index, "seal": seal }),
                },
            ))
            .await
            .unwrap();
        }
        rec.record(event(
            &ssh,
            EventBody::SessionEnd {
                reason: "client closed".into(),
                recording: None,
                operations: 2,
            },
        ))
        .await
        .unwrap();
        // A session still open when the log was closed: its recording has no seal yet.
        let open = SessionId::generate();
        let mut sink = rec.open_recording(&open, RecordingKind::Sql).await.unwrap();
        sink.write(RecordingFrame::Output {
            data: b"select 1".to_vec(),
        })
        .await
        .unwrap();
        drop(sink);
        rec.log().close().await.unwrap();
        open
    });
    let files = recording_files(&data);
    assert_eq!(files.len(), 3, "{files:?}");
    let open_file = files
        .iter()
        .find(|f| f.parent().unwrap().ends_with(&open.0))
        .unwrap()
        .clone();
    let (code, text) = verify(&data, None, &key);
    assert_eq!(code, 3, "the open session's recording is unsealed: {text}");
    assert!(
        text.contains("recordings: 2 sealed recording(s)")
            && text.contains(&format!("UNSEALED: recording {}", open_file.display())),
        "{text}"
    );
    std::fs::remove_file(&open_file).unwrap();
    let (code, text) = verify(&data, None, &key);
    assert_eq!(code, 0, "{text}");
    // The evidence bundle lists both recordings of the SSH session with their hashes.
    let bundle = dir.path().join("bundle");
    let key_file = dir.path().join("signing.key");
    std::fs::write(&key_file, hex::encode([7u8; 32])).unwrap();
    let mut cmd = Command::new(EXE);
    cmd.args(["evidence", "export", "--dir"])
        .arg(&data)
        .arg("--key")
        .arg(&key_file)
        .arg("--out")
        .arg(&bundle);
    let out = run_with_timeout(cmd, Duration::from_secs(60)).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sessions: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("sessions.json")).unwrap()).unwrap();
    let ssh_session = sessions["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["end_reason"] == "client closed")
        .unwrap();
    assert_eq!(
        ssh_session["recordings"].as_array().unwrap().len(),
        2,
        "{ssh_session}"
    );
    for f in files.iter().filter(|f| **f != open_file) {
        let good = std::fs::read(f).unwrap();
        let mut bad = good.clone();
        let last = bad.len() - 2;
        bad[last] ^= 0x20;
        std::fs::write(f, &bad).unwrap();
        let (code, text) = verify(&data, None, &key);
        assert_eq!(code, 1, "{}: {text}", f.display());
        assert!(text.contains(&f.display().to_string()), "{text}");
        std::fs::write(f, &good).unwrap();
    }
}

/// A closed log with one session and its sealed SQL recording, written by the recorder exactly
/// as the gateway writes them (signing seed `[9; 32]`, also written to `<dir>/signing.key`).
/// Returns (data directory, public key hex, the recording file).
fn closed_log_with_a_recording(dir: &Path) -> (PathBuf, String, PathBuf) {
    use gatehouse_core::{EventBody, Recorder as _, RecordingFrame, RecordingKind, SessionId};
    let data = dir.join("data");
    let signer = gatehouse_recorder::CheckpointSigner::from_seed(&[9u8; 32]);
    let key = hex::encode(signer.verifying_key().as_bytes());
    std::fs::write(dir.join("signing.key"), hex::encode([9u8; 32])).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let rec = gatehouse_recorder::AuditRecorder::open(
            &data,
            gatehouse_recorder::RecorderConfig::new("gw1"),
            signer,
            None,
        )
        .await
        .unwrap();
        let s = SessionId::generate();
        let event = |body| gatehouse_core::Event::now(s.clone(), None, None, body);
        rec.record(event(EventBody::SessionStart {
            client_addr: "127.0.0.1:1".into(),
            details: serde_json::json!({ "protocol": "postgres" }),
        }))
        .await
        .unwrap();
        let mut sink = rec.open_recording(&s, RecordingKind::Sql).await.unwrap();
        sink.write(RecordingFrame::Output {
            data: b"select secret from t".to_vec(),
        })
        .await
        .unwrap();
        let seal = sink.seal().await.unwrap();
        rec.record(event(EventBody::SessionEnd {
            reason: "client closed".into(),
            recording: Some(seal),
            operations: 1,
        }))
        .await
        .unwrap();
        rec.log().close().await.unwrap();
    });
    let files = recording_files(&data);
    assert_eq!(files.len(), 1, "{files:?}");
    (data, key, files[0].clone())
}

/// `gatehouse evidence export --dir <data> --key <dir>/signing.key --out <out>`: (exit code,
/// output, audit-verify.json, manifest.json).
fn export_bundle(
    dir: &Path,
    data: &Path,
    out: &Path,
) -> (i32, String, serde_json::Value, serde_json::Value) {
    let mut cmd = Command::new(EXE);
    cmd.args(["evidence", "export", "--dir"])
        .arg(data)
        .arg("--key")
        .arg(dir.join("signing.key"))
        .arg("--out")
        .arg(out);
    let res = run_with_timeout(cmd, Duration::from_secs(60)).unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&res.stdout),
        String::from_utf8_lossy(&res.stderr)
    );
    let read = |name: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(out.join(name)).unwrap()).unwrap()
    };
    (
        res.status.code().unwrap_or(-1),
        text,
        read("audit-verify.json"),
        read("manifest.json"),
    )
}

/// The evidence bundle runs the recording checks `audit verify` runs: a recording changed after
/// its seal makes the export fail (exit 1), and the bundle says what failed instead of
/// "verified"; `evidence verify` refuses the bundle.
#[test]
fn an_export_of_a_log_whose_recording_was_altered_is_not_verified() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _, recording) = closed_log_with_a_recording(dir.path());
    let (code, text, verified, manifest) =
        export_bundle(dir.path(), &data, &dir.path().join("good"));
    assert_eq!(code, 0, "{text}");
    assert_eq!(verified["ok"], true, "{verified}");
    assert_eq!(verified["status"], "sealed", "{verified}");
    assert_eq!(verified["recordings"]["checked"], 1, "{verified}");
    assert_eq!(manifest["audit_log_verified"], true, "{manifest}");

    let good = std::fs::read(&recording).unwrap();
    let mut bad = good.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0x01;
    std::fs::write(&recording, &bad).unwrap();
    let bundle = dir.path().join("bad");
    let (code, text, verified, manifest) = export_bundle(dir.path(), &data, &bundle);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("FAILED verification") && !text.contains("verified and sealed"),
        "{text}"
    );
    assert_eq!(verified["ok"], false, "{verified}");
    assert_eq!(verified["status"], "failed", "{verified}");
    assert_eq!(verified["log_status"], "sealed", "{verified}");
    let failures = verified["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{verified}");
    let failure = failures[0].as_str().unwrap();
    assert!(
        failure.contains(&recording.display().to_string()) && failure.contains("altered"),
        "{failure}"
    );
    assert_eq!(manifest["audit_log_verified"], false, "{manifest}");
    assert_eq!(manifest["audit_log_status"], "failed", "{manifest}");
    assert_eq!(manifest["recordings_verified"], false, "{manifest}");
    let mut cmd = Command::new(EXE);
    cmd.args(["evidence", "verify"]).arg(&bundle);
    let out = run_with_timeout(cmd, Duration::from_secs(60)).unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("session recording did not verify"), "{said}");
}

/// A FIFO (or any file that is not a regular file) put in place of a sealed recording is
/// reported as a failure without being opened for reading: `audit verify` and `evidence export`
/// finish (within the test's timeout) and fail naming it.
#[test]
fn a_recording_replaced_by_a_fifo_fails_verification_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let (data, key, recording) = closed_log_with_a_recording(dir.path());
    let (code, text) = verify(&data, None, &key);
    assert_eq!(code, 0, "{text}");
    std::fs::remove_file(&recording).unwrap();
    nix::unistd::mkfifo(&recording, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let (code, text) = verify(&data, None, &key);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(&recording.display().to_string())
            && text.contains("not a regular file (a FIFO)"),
        "{text}"
    );
    let (code, text, verified, _) = export_bundle(dir.path(), &data, &dir.path().join("bundle"));
    assert_eq!(code, 1, "{text}");
    assert!(
        verified["failures"][0]
            .as_str()
            .unwrap()
            .contains("not a regular file"),
        "{verified}"
    );
    // A directory in its place, too.
    std::fs::remove_file(&recording).unwrap();
    std::fs::create_dir(&recording).unwrap();
    let (code, text) = verify(&data, None, &key);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("not a regular file (a directory)"), "{text}");
    // A segment replaced by a FIFO stops the run (exit 2), naming it; a witnessed checkpoint
    // replaced by one fails verification (exit 1: the witness was tampered with), naming it.
    let segment = segments(&data).pop().unwrap();
    std::fs::remove_file(&segment).unwrap();
    nix::unistd::mkfifo(&segment, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let (code, text) = verify(&data, None, &key);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("not a regular file (a FIFO)"), "{text}");
    let witness = dir.path().join("witness/gw1");
    std::fs::create_dir_all(&witness).unwrap();
    nix::unistd::mkfifo(
        &witness.join("00000000000000000001.checkpoint.json"),
        nix::sys::stat::Mode::S_IRWXU,
    )
    .unwrap();
    let (code, text) = verify(&data, Some(&dir.path().join("witness")), &key);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("00000000000000000001.checkpoint.json is not a regular file (a FIFO)"),
        "{text}"
    );
}

/// The object-storage witness through the binary: the gateway writes every checkpoint and the
/// seal into a bucket with a default retention; `audit verify --witness s3://…` verifies the
/// closed log against it (exit 0), fails on a cut behind a witnessed checkpoint, and fails when
/// an object was replaced by a newer version hiding the witnessed one.
#[test]
fn an_object_storage_witness_catches_a_cut_log_through_the_binary() {
    use gatehouse_testkit::moto::Moto;
    use sha2::Digest as _;
    let moto = Moto::start();
    moto.create_locked_bucket("witness", "COMPLIANCE", 1);
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[audit.witness_s3]\nbucket = \"witness\"\nprefix = \"gatehouse\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\nallow_http = true\n",
        moto.endpoint()
    ));
    std::fs::write(&config, text).unwrap();
    let env = [
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
    ];
    let gw = start_with_env(&config, &env);
    gw.knock(60);
    let stderr = gw.stop();
    assert!(
        stderr
            .iter()
            .any(|l| l.contains("witnessed in s3://witness/gatehouse")),
        "{stderr:?}"
    );
    let data = dir.path().join("data");
    let key = public_key(dir.path());
    let endpoint = moto.endpoint();
    let verify_s3 = |data: &Path| -> (i32, String) {
        let mut cmd = Command::new(EXE);
        cmd.envs(env.iter().copied())
            .env("AWS_ENDPOINT", &endpoint)
            .env("AWS_ALLOW_HTTP", "true")
            .args(["audit", "verify"])
            .arg(data)
            .args(["--witness", "s3://witness/gatehouse", "--key", &key]);
        let out = run_with_timeout(cmd, Duration::from_secs(60)).unwrap();
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (code, text) = verify_s3(&data);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("SEALED") && text.contains("checkpoint(s) matched"),
        "{text}"
    );
    assert!(
        !text.contains("witness: 0 checkpoint") && !text.contains("holds no checkpoint"),
        "{text}"
    );

    // The evidence bundle carries the latest checkpoint the bucket holds: the seal.
    let bundle = dir.path().join("bundle");
    let mut cmd = Command::new(EXE);
    cmd.envs(env.iter().copied())
        .env("AWS_ENDPOINT", &endpoint)
        .env("AWS_ALLOW_HTTP", "true")
        .args(["evidence", "export", "--dir"])
        .arg(&data)
        .args(["--witness", "s3://witness/gatehouse", "--key"])
        .arg(dir.path().join("keys/audit-signing.key"))
        .arg("--out")
        .arg(&bundle);
    let out = run_with_timeout(cmd, Duration::from_secs(60)).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let witnessed: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("witness-checkpoint.json")).unwrap())
            .unwrap();
    assert_eq!(
        witnessed["witness"], "s3://witness/gatehouse",
        "{witnessed}"
    );
    assert_eq!(witnessed["latest"][0]["sealed"], true, "{witnessed}");
    assert_eq!(witnessed["latest"][0]["log"], "gw1", "{witnessed}");

    // Cuts behind the seal and behind earlier witnessed checkpoints fail.
    for n in [1, 2, 25] {
        let cut = dir.path().join(format!("cut-{n}"));
        copy_dir(&data, &cut);
        remove_last(&cut, n);
        let (code, text) = verify(&cut, None, &key);
        assert_ne!(code, 0, "cut {n}, without the witness: {text}");
        let (code, text) = verify_s3(&cut);
        assert_eq!(code, 1, "cut {n}: {text}");
        assert!(text.contains("TruncatedTail"), "cut {n}: {text}");
    }

    // Someone allowed `s3:DeleteObject` hides the seal's object behind a delete marker and cuts
    // the seal off the log: verify reads every version and still fails.
    let lines = all_lines(&data);
    let seal = parse_line(&lines.last().unwrap().1).unwrap();
    assert_eq!(seal.kind, RecordKind::Seal);
    let seal_key = format!(
        "/witness/gatehouse/gw1/{}",
        gatehouse_recorder::witness::witness_file_name(seal.sequence - 1)
    );
    let (status, head, _) = moto.request("DELETE", &seal_key, &[], b"");
    assert_eq!(status, 204, "{head}");
    let cut = dir.path().join("cut-hidden");
    copy_dir(&data, &cut);
    remove_last(&cut, 1);
    let (code, text) = verify_s3(&cut);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("TruncatedTail"), "{text}");

    // Someone with the gateway's bucket credentials writes a newer version of the seal's object
    // (an earlier checkpoint, validly signed): the read fails, naming the replaced object.
    let first_checkpoint = gatehouse_recorder::witness::witness_file_name(0);
    let (status, _, earlier) = moto.request(
        "GET",
        "/witness?list-type=2&prefix=gatehouse/gw1/",
        &[],
        b"",
    );
    assert_eq!(status, 200, "{earlier}");
    let earlier_key = earlier
        .split("<Key>")
        .skip(1)
        .filter_map(|k| k.split("</Key>").next())
        .find(|k| !k.ends_with(&first_checkpoint))
        .unwrap()
        .to_owned();
    let (_, _, earlier_body) = moto.request("GET", &format!("/witness/{earlier_key}"), &[], b"");
    let checksum = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        sha2::Sha256::digest(earlier_body.as_bytes()),
    );
    let (status, _, body) = moto.request(
        "PUT",
        &seal_key,
        &[
            ("x-amz-sdk-checksum-algorithm", "SHA256"),
            ("x-amz-checksum-sha256", &checksum),
        ],
        earlier_body.as_bytes(),
    );
    assert_eq!(status, 200, "{body}");
    let (code, text) = verify_s3(&data);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("replaced"), "{text}");
}

/// A directory with several logs, one of them removed whole: the witness still holds that log's
/// checkpoints, and verify fails naming it (the other logs verifying says nothing about it).
#[test]
fn a_witnessed_log_removed_whole_fails_even_beside_other_logs() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let gw = start(&config);
    gw.knock(5);
    gw.stop();
    let data = dir.path().join("data");
    let witness = dir.path().join("witness");
    let key = public_key(dir.path());
    // A second gateway's log, with its checkpoints in the same witness (as a restart of this one
    // under another log id writes it).
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[audit]\n", "[audit]\nlog_id = \"gw2\"\n");
    std::fs::write(&config, text).unwrap();
    let gw = start(&config);
    gw.knock(5);
    gw.stop();
    assert!(data.join("audit/gw2").is_dir());
    let (code, text) = verify(&data, Some(&witness), &key);
    assert_eq!(code, 0, "{text}");
    std::fs::remove_dir_all(data.join("audit/gw2")).unwrap();
    let (code, text) = verify(&data, Some(&witness), &key);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("log gw2") && text.contains("removed"),
        "{text}"
    );
}

/// Recordings the recorder writes to its object store (the S3 stand-in) are read back by
/// `audit verify --object-store s3://<bucket>` and `evidence export --object-store …`: checked
/// against their seals, a changed object fails naming it, an object no seal covers is named as
/// unsealed; without the bucket such a recording cannot be checked and verification fails.
#[test]
fn recordings_in_object_storage_are_read_back_and_checked() {
    use gatehouse_core::{EventBody, Recorder as _, RecordingFrame, RecordingKind, SessionId};
    use gatehouse_testkit::moto::Moto;
    use object_store::ObjectStoreExt as _;
    let moto = Moto::start();
    moto.create_bucket("gatehouse");
    let store: std::sync::Arc<dyn object_store::ObjectStore> = std::sync::Arc::new(
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(moto.endpoint())
            .with_allow_http(true)
            .with_bucket_name("gatehouse")
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .with_virtual_hosted_style_request(false)
            .build()
            .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let signer = gatehouse_recorder::CheckpointSigner::from_seed(&[5u8; 32]);
    let key = hex::encode(signer.verifying_key().as_bytes());
    std::fs::write(dir.path().join("signing.key"), hex::encode([5u8; 32])).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let location = rt.block_on(async {
        let mut config = gatehouse_recorder::RecorderConfig::new("gw1");
        config.object_store = Some(store.clone());
        let rec = gatehouse_recorder::AuditRecorder::open(&data, config, signer, None)
            .await
            .unwrap();
        let s = SessionId::generate();
        let event = |body| gatehouse_core::Event::now(s.clone(), None, None, body);
        rec.record(event(EventBody::SessionStart {
            client_addr: "127.0.0.1:1".into(),
            details: serde_json::json!({ "protocol": "postgres" }),
        }))
        .await
        .unwrap();
        let mut sink = rec.open_recording(&s, RecordingKind::Sql).await.unwrap();
        sink.write(RecordingFrame::Output {
            data: b"select 1".to_vec(),
        })
        .await
        .unwrap();
        let seal = sink.seal().await.unwrap();
        let location = seal.location.clone();
        rec.record(event(EventBody::SessionEnd {
            reason: "client closed".into(),
            recording: Some(seal),
            operations: 1,
        }))
        .await
        .unwrap();
        rec.log().close().await.unwrap();
        location
    });
    assert!(location.starts_with("recordings/"), "{location}");
    assert!(!data.join("recordings").exists(), "nothing written locally");
    let run = |args: &[&str]| -> (i32, String) {
        let mut cmd = Command::new(EXE);
        cmd.env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT", moto.endpoint())
            .env("AWS_ALLOW_HTTP", "true")
            .args(args);
        let out = run_with_timeout(cmd, Duration::from_secs(60)).unwrap();
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let data_arg = data.to_str().unwrap();
    let verify_s3 = || {
        run(&[
            "audit",
            "verify",
            data_arg,
            "--key",
            &key,
            "--object-store",
            "s3://gatehouse",
        ])
    };
    let object = format!("s3://gatehouse/{location}");

    // Without the bucket the recording cannot be checked: never a pass.
    let (code, text) = run(&["audit", "verify", data_arg, "--key", &key]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("pass --object-store"), "{text}");
    // Read back from the bucket: verified and sealed.
    let (code, text) = verify_s3();
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("recordings: 1 sealed recording(s)"), "{text}");
    let bundle = dir.path().join("bundle");
    let key_file = dir.path().join("signing.key");
    let (code, text) = run(&[
        "evidence",
        "export",
        "--dir",
        data_arg,
        "--key",
        key_file.to_str().unwrap(),
        "--object-store",
        "s3://gatehouse",
        "--out",
        bundle.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{text}");

    // One byte changed in the object: fails, naming it.
    let path = object_store::path::Path::from(location.as_str());
    let good = rt
        .block_on(async { store.get(&path).await.unwrap().bytes().await.unwrap() })
        .to_vec();
    let mut bad = good.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0x01;
    rt.block_on(store.put(&path, bad.into())).unwrap();
    let (code, text) = verify_s3();
    assert_eq!(code, 1, "{text}");
    assert!(text.contains(&object) && text.contains("altered"), "{text}");
    let bundle = dir.path().join("bundle-bad");
    let (code, text) = run(&[
        "evidence",
        "export",
        "--dir",
        data_arg,
        "--key",
        key_file.to_str().unwrap(),
        "--object-store",
        "s3://gatehouse",
        "--out",
        bundle.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains(&object), "{text}");
    rt.block_on(store.put(&path, good.into())).unwrap();
    let (code, text) = verify_s3();
    assert_eq!(code, 0, "{text}");

    // An object no seal covers: named as unsealed, never exit 0.
    let planted = object_store::path::Path::from("recordings/planted/0.jsonl");
    rt.block_on(store.put(&planted, b"{}\n".to_vec().into()))
        .unwrap();
    let (code, text) = verify_s3();
    assert_eq!(code, 3, "{text}");
    assert!(
        text.contains("UNSEALED: recording s3://gatehouse/recordings/planted/0.jsonl"),
        "{text}"
    );
}

/// `gatehouse audit verify --witness`: a witness directory holding anything the witness does not
/// write (a FIFO, a symbolic link, a misnamed or unexpected entry) fails verification (exit 1)
/// naming it, never answers 0 and never hangs; and each exit status means what the CLI help and
/// `docs/audit-schema.md` say: 0 verified and sealed, 3 verified up to a checkpoint, 1 failed,
/// 2 could not run.
#[test]
fn a_witness_with_entries_it_never_writes_fails_and_every_exit_status_is_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let gw = start(&config);
    gw.knock(30);
    gw.stop();
    let data = dir.path().join("data");
    let witness = dir.path().join("witness");
    let key = public_key(dir.path());
    let (code, text) = verify(&data, Some(&witness), &key);
    assert_eq!(code, 0, "{text}");
    let mut held: Vec<PathBuf> = std::fs::read_dir(witness.join("gw1"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    held.sort();
    assert!(held.len() >= 2, "{held:?}");
    let first = held[0].file_name().unwrap().to_str().unwrap().to_owned();
    let fifo = |p: &Path| nix::unistd::mkfifo(p, nix::sys::stat::Mode::S_IRWXU).unwrap();

    type Edit = Box<dyn Fn(&Path)>;
    let f = first.clone();
    let g = first.clone();
    let h = first.clone();
    let original = witness.join("gw1");
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "the log's directory replaced by a FIFO",
            Box::new(move |w: &Path| {
                std::fs::remove_dir_all(w.join("gw1")).unwrap();
                fifo(&w.join("gw1"));
            }),
            "unexpected entry",
        ),
        (
            "a checkpoint file replaced by a FIFO",
            Box::new(move |w: &Path| {
                let p = w.join("gw1").join(&f);
                std::fs::remove_file(&p).unwrap();
                fifo(&p);
            }),
            "not a regular file (a FIFO)",
        ),
        (
            "a checkpoint file renamed out of the witness's names",
            Box::new(move |w: &Path| {
                let p = w.join("gw1").join(&g);
                std::fs::rename(&p, p.with_extension("json.bak")).unwrap();
            }),
            "unexpected entry",
        ),
        (
            "a checkpoint file renamed to another sequence",
            Box::new(move |w: &Path| {
                let p = w.join("gw1").join(&h);
                std::fs::rename(&p, w.join("gw1/00000000000000099999.checkpoint.json")).unwrap();
            }),
            "misnamed",
        ),
        (
            "the log's directory renamed",
            Box::new(|w: &Path| std::fs::rename(w.join("gw1"), w.join("gw1-old")).unwrap()),
            "misnamed",
        ),
        (
            "the log's directory replaced by a symbolic link",
            Box::new(move |w: &Path| {
                std::fs::remove_dir_all(w.join("gw1")).unwrap();
                std::os::unix::fs::symlink(&original, w.join("gw1")).unwrap();
            }),
            "a symbolic link",
        ),
    ];
    for (what, edit, says) in cases {
        let copy = tempfile::tempdir().unwrap();
        copy_dir(&witness, copy.path());
        edit(copy.path());
        let (code, text) = verify(&data, Some(copy.path()), &key);
        assert_eq!(code, 1, "{what}: {text}");
        assert!(text.contains("audit verification failed"), "{what}: {text}");
        assert!(text.contains(says), "{what}: {text}");
    }
    // The temporary file of an interrupted witness write is passed over.
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&witness, copy.path());
    std::fs::write(copy.path().join(format!("gw1/.{first}.tmp")), b"{").unwrap();
    let (code, text) = verify(&data, Some(copy.path()), &key);
    assert_eq!(code, 0, "{text}");

    // 3: verified up to the last checkpoint, not sealed (the seal cut off, no witness).
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&data, copy.path());
    remove_last(copy.path(), 1);
    let (code, text) = verify(copy.path(), None, &key);
    assert_eq!(code, 3, "{text}");
    assert!(text.contains("NOT SEALED"), "{text}");
    // 1: failed (the same cut, against the witness).
    let (code, text) = verify(copy.path(), Some(&witness), &key);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("TruncatedTail"), "{text}");

    // 2: could not run — a directory that does not exist (with or without a witness), a
    // witness that is not a directory, a bad key.
    let missing = dir.path().join("no-such-dir");
    for w in [None, Some(witness.as_path())] {
        let (code, text) = verify(&missing, w, &key);
        assert_eq!(code, 2, "{text}");
        assert!(text.contains("No such file or directory"), "{text}");
    }
    let pipe = dir.path().join("witness-fifo");
    fifo(&pipe);
    let (code, text) = verify(&data, Some(&pipe), &key);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("not a directory (a FIFO)"), "{text}");
    let (code, text) = verify(&data, Some(&witness), "not-a-key");
    assert_eq!(code, 2, "{text}");
}

/// One authenticated request: the response's status line and body.
fn request(gw: &Gateway, token: &str) -> String {
    let mut s = TcpStream::connect(gw.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /api/x HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    resp
}

/// A forged file renamed over the segment the running gateway writes: the gateway notices at
/// its next write, refuses operations as audit unavailable (503) saying why, keeps its own file
/// beside the forged one, and does not seal the log on shutdown.
#[test]
fn a_live_segment_replaced_by_a_rename_makes_the_gateway_refuse_as_audit_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let gw = start(&config);
    let token = token(dir.path());
    let resp = request(&gw, &token);
    assert!(
        resp.starts_with("HTTP/1.1 ") && !resp.starts_with("HTTP/1.1 401"),
        "{resp}"
    );
    let data = dir.path().join("data");
    let witness = dir.path().join("witness");
    // Wait until the gateway is quiet: everything signed and witnessed (no rotation pending).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !witnessed_to_the_end(&data, &witness) {
        assert!(Instant::now() < deadline, "the log never went quiet");
        std::thread::sleep(Duration::from_millis(50));
    }
    let live = segments(&data).pop().unwrap();
    let own = std::fs::read(&live).unwrap();
    let forged = live.with_extension("forged");
    std::fs::write(&forged, &own).unwrap();
    std::fs::rename(&forged, &live).unwrap();

    let resp = request(&gw, &token);
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    assert!(resp.contains("audit_unavailable"), "{resp}");
    // Every later operation too.
    let resp = request(&gw, &token);
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    let stderr = gw.stop();
    let name = live.file_name().unwrap().to_str().unwrap().to_owned();
    assert!(
        stderr.iter().any(|l| l.contains(&format!(
            "segment {name} was replaced behind the gateway's back"
        )) && l.contains("a file was renamed over it")
            && l.contains(&format!("kept as {name}.displaced"))),
        "{stderr:?}"
    );
    assert!(
        !stderr
            .iter()
            .any(|l| l.contains("audit log sealed at sequence")),
        "{stderr:?}"
    );
    let kept = std::fs::read(live.with_file_name(format!("{name}.displaced"))).unwrap();
    assert!(kept.starts_with(&own), "the gateway's own records are kept");
    // The forged file is what the directory holds; the log is not sealed.
    assert_eq!(std::fs::read(&live).unwrap(), own);
    let (code, text) = verify(&data, Some(&witness), &public_key(dir.path()));
    assert_ne!(code, 0, "{text}");
    assert!(!text.contains(": SEALED"), "{text}");
}
