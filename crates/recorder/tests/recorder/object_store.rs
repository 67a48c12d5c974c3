//! Object storage against a real S3-compatible server: moto, installed into a venv under
//! `target/` on first use and started on a port of its own choosing (it prints it).

use std::io::{BufRead as _, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use gatehouse_core::{Recorder as _, RecordingFrame, RecordingKind, SessionId};
use gatehouse_recorder::recording::{check_seal, parse_recording, read_recording_bytes};
use gatehouse_recorder::witness::Witness as _;
use gatehouse_recorder::{
    AuditRecorder, LogStatus, ObjectStoreWitness, RecorderConfig, VerifyOptions,
};
use object_store::aws::AmazonS3Builder;
use object_store::{ObjectStore, ObjectStoreExt as _};

use crate::common::*;

const LOG: &str = "gw-s3";

struct Moto {
    child: Child,
    port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

fn venv() -> PathBuf {
    // crates/recorder -> workspace target dir.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let venv = target.join("recorder-moto/venv");
    let server = venv.join("bin/moto_server");
    if server.exists() {
        return venv;
    }
    let lock_dir = target.join("recorder-moto");
    std::fs::create_dir_all(&lock_dir).unwrap();
    let ok = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .stdin(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        && Command::new(venv.join("bin/pip"))
            .args([
                "install",
                "-q",
                "--disable-pip-version-check",
                "moto[server]",
            ])
            .stdin(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    assert!(
        ok && server.exists(),
        "\n\n*** could not install moto[server] into {} (pip failed): the object-store tests \
         cannot run without it ***\n",
        venv.display()
    );
    venv
}

fn start_moto() -> Moto {
    let venv = venv();
    let mut child = Command::new(venv.join("bin/moto_server"))
        .args(["-H", "127.0.0.1", "-p", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("start moto_server");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.split("Running on http://127.0.0.1:").nth(1) {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                let _ = tx.send(digits.parse::<u16>().ok());
            }
        }
    });
    let port = rx
        .recv_timeout(Duration::from_secs(60))
        .ok()
        .flatten()
        .expect("moto_server printed its port");
    Moto { child, port }
}

async fn bucket(moto: &Moto) -> Arc<dyn ObjectStore> {
    let endpoint = format!("http://127.0.0.1:{}", moto.port);
    // moto accepts any credentials; create the bucket with a plain PUT.
    let client = hyper_util_put(&endpoint, "/gatehouse").await;
    assert!(client, "bucket creation");
    Arc::new(
        AmazonS3Builder::new()
            .with_endpoint(&endpoint)
            .with_allow_http(true)
            .with_bucket_name("gatehouse")
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .with_virtual_hosted_style_request(false)
            .build()
            .unwrap(),
    )
}

/// `PUT <path>` with an empty body over a raw loopback connection (creates a moto bucket).
async fn hyper_util_put(endpoint: &str, path: &str) -> bool {
    raw(endpoint, "PUT", path, &[], b"").await.0 == 200
}

/// One raw HTTP/1.1 request to moto, which does not check signatures (but treats a request
/// without an `Authorization` header as anonymous): (status, head, body).
async fn raw(
    endpoint: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = endpoint.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\nAuthorization: AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await.unwrap();
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let status = resp
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or_default();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    (status, head.to_owned(), body.to_owned())
}

/// A header's value in a raw response head.
fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

/// A bucket created with object lock and a default retention (COMPLIANCE, one day), as the
/// operator sets it up for the witness; and a client for it with the gateway's credentials.
async fn locked_bucket(moto: &Moto, name: &str) -> Arc<dyn ObjectStore> {
    let endpoint = format!("http://127.0.0.1:{}", moto.port);
    let (status, _, body) = raw(
        &endpoint,
        "PUT",
        &format!("/{name}"),
        &[("x-amz-bucket-object-lock-enabled", "true")],
        b"",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let config = b"<ObjectLockConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><ObjectLockEnabled>Enabled</ObjectLockEnabled><Rule><DefaultRetention><Mode>COMPLIANCE</Mode><Days>1</Days></DefaultRetention></Rule></ObjectLockConfiguration>";
    let (status, _, body) = raw(
        &endpoint,
        "PUT",
        &format!("/{name}?object-lock"),
        &[],
        config,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_, _, body) = raw(&endpoint, "GET", &format!("/{name}?object-lock"), &[], b"").await;
    assert!(
        body.contains("<Mode>COMPLIANCE</Mode>") && body.contains("<Days>1</Days>"),
        "the bucket has a default retention: {body}"
    );
    Arc::new(
        ObjectStoreWitness::prepare_s3(AmazonS3Builder::new(), true)
            .with_endpoint(&endpoint)
            .with_bucket_name(name)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .with_virtual_hosted_style_request(false)
            .build()
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_and_recordings_go_to_s3_and_verify_from_there() {
    let moto = start_moto();
    let store = within(60, bucket(&moto)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = RecorderConfig::new(LOG);
    config.log.segment_max_bytes = 8 * 1024;
    config.object_store = Some(store.clone());
    let rec = AuditRecorder::open(dir.path(), config, signer(), None)
        .await
        .unwrap();
    let s = SessionId::generate();
    for i in 0..200 {
        rec.record(sql_event(&s, i, "select * from orders"))
            .await
            .unwrap();
    }
    let mut sink = rec
        .open_recording(&s, RecordingKind::Terminal { cols: 80, rows: 24 })
        .await
        .unwrap();
    let chunk = vec![b'x'; 100 * 1024];
    for _ in 0..80 {
        // 8 MB: a multipart upload.
        sink.write(RecordingFrame::Output {
            data: chunk.clone(),
        })
        .await
        .unwrap();
    }
    let seal = within(120, sink.seal()).await.unwrap();
    assert!(seal.location.starts_with("recordings/"));
    rec.log().rotate().await.unwrap();
    let local =
        gatehouse_recorder::read::load_local_log(&dir.path().join("audit").join(LOG), LOG).unwrap();
    let closed = local.segments.len() - 1;
    assert!(closed >= 3);

    // Shipping is asynchronous: wait until every closed segment is in the bucket.
    let remote = within(60, async {
        loop {
            let remote = gatehouse_recorder::objstore::load_log(
                store.as_ref(),
                &format!("audit/{LOG}"),
                LOG,
            )
            .await
            .unwrap();
            if remote.segments.len() >= closed {
                return remote;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    for (r, l) in remote.segments.iter().zip(&local.segments) {
        assert_eq!(r.name, l.name);
        assert_eq!(r.bytes, l.bytes, "shipped bytes are the stored bytes");
    }
    let v = gatehouse_recorder::verify::verify_log(&remote, &options());
    assert!(v.ok(), "{:?}", v.problem);

    let bytes = read_recording_bytes(rec.recording_store(), &seal.location)
        .await
        .unwrap();
    assert!(check_seal(&bytes, &seal));
    let replay = parse_recording(&bytes).unwrap();
    assert_eq!(replay.frames.len(), 80);
    rec.log().close().await.unwrap();
}

/// The object-storage witness: every checkpoint and the seal become objects of a bucket with a
/// default retention; a witnessed version can be neither deleted nor replaced in place; a log cut
/// behind a witnessed checkpoint fails verification against what the bucket holds; an object
/// replaced by a newer version holding another checkpoint makes the read fail, never skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_witnessed_in_a_locked_bucket_catch_a_cut_log() {
    let moto = start_moto();
    let endpoint = format!("http://127.0.0.1:{}", moto.port);
    let store = within(60, locked_bucket(&moto, "witness")).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = RecorderConfig::new(LOG);
    config.log.checkpoint_every_records = 20;
    config.log.checkpoint_interval = Duration::from_secs(3600);
    config.witnesses.push(Arc::new(ObjectStoreWitness::new(
        store.clone(),
        "gatehouse/witness",
    )));
    let rec = AuditRecorder::open(dir.path(), config, signer(), None)
        .await
        .unwrap();
    let s = SessionId::generate();
    for i in 0..90 {
        rec.record(sql_event(&s, i, "select * from orders"))
            .await
            .unwrap();
    }
    within(60, rec.log().close()).await.unwrap();

    let held = within(
        60,
        ObjectStoreWitness::read_all(store.as_ref(), "gatehouse/witness"),
    )
    .await
    .unwrap();
    // The opening checkpoint, one every 20 records, and the seal, each its own object.
    assert!(held.len() >= 5, "{held:?}");
    assert_eq!(held.iter().filter(|c| c.sealed).count(), 1);
    let log_dir = dir.path().join("audit").join(LOG);
    let data = gatehouse_recorder::read::load_local_log(&log_dir, LOG).unwrap();
    let with_witness = VerifyOptions {
        witnesses: held.clone(),
        ..options()
    };
    let v = gatehouse_recorder::verify::verify_log(&data, &with_witness);
    assert_eq!(v.status(), LogStatus::Sealed, "{:?}", v.problem);
    assert_eq!(v.witnesses_matched as usize, held.len());

    // Each object carries the bucket's default retention.
    let seal = held.iter().find(|c| c.sealed).unwrap();
    let key = format!(
        "/witness/gatehouse/witness/{LOG}/{}",
        gatehouse_recorder::witness::witness_file_name(seal.sequence)
    );
    let (status, head, _) = raw(&endpoint, "GET", &key, &[], b"").await;
    assert_eq!(status, 200, "{head}");
    assert_eq!(
        header(&head, "x-amz-object-lock-mode").as_deref(),
        Some("COMPLIANCE"),
        "{head}"
    );
    assert!(header(&head, "x-amz-object-lock-retain-until-date").is_some());
    let version = header(&head, "x-amz-version-id").unwrap();

    // The witnessed version cannot be deleted, not even by the credentials that wrote it.
    let (status, _, body) = raw(
        &endpoint,
        "DELETE",
        &format!("{key}?versionId={version}"),
        &[],
        b"",
    )
    .await;
    assert_eq!(status, 403, "deleting a locked version: {body}");
    // The writer never replaces an object: a different checkpoint for the same sequence fails.
    let witness = ObjectStoreWitness::new(store.clone(), "gatehouse/witness");
    let mut other = seal.clone();
    other.time = "2026-01-01T00:00:00Z".into();
    assert!(witness.push(&other).await.is_err());
    assert!(
        witness.push(seal).await.is_ok(),
        "the same one again is fine"
    );

    // A log cut behind the seal (the seal, or the seal and the last 30 records) fails.
    for cut in [1usize, 31] {
        let mut short = data.clone();
        let mut left = cut;
        while left > 0 {
            let seg = short.segments.last_mut().unwrap();
            let lines: Vec<&[u8]> = seg.bytes.split_inclusive(|b| *b == b'\n').collect();
            if lines.len() <= left {
                left -= lines.len();
                short.segments.pop();
            } else {
                let keep: usize = lines[..lines.len() - left].iter().map(|l| l.len()).sum();
                seg.bytes.truncate(keep);
                left = 0;
            }
        }
        let v = gatehouse_recorder::verify::verify_log(&short, &options());
        assert_ne!(v.status(), LogStatus::Sealed, "cut {cut}: never sealed");
        let v = gatehouse_recorder::verify::verify_log(&short, &with_witness);
        assert_eq!(v.status(), LogStatus::Failed, "cut {cut}");
        assert_eq!(
            v.problem.as_ref().unwrap().kind,
            gatehouse_recorder::ProblemKind::TruncatedTail,
            "cut {cut}: {:?}",
            v.problem
        );
    }

    // Someone with the gateway's credentials writes a newer version of the seal's object (an
    // earlier checkpoint, validly signed, to hide the seal): the locked version stays, and the
    // witness read fails instead of trusting the newer one.
    let earlier = held.iter().find(|c| !c.sealed).unwrap();
    store
        .put(
            &object_store::path::Path::from(key.trim_start_matches("/witness/")),
            serde_json::to_vec(earlier).unwrap().into(),
        )
        .await
        .unwrap();
    let err = ObjectStoreWitness::read_all(store.as_ref(), "gatehouse/witness")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("replaced"), "{err}");
    let (status, _, body) = raw(
        &endpoint,
        "GET",
        &format!("{key}?versionId={version}"),
        &[],
        b"",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<gatehouse_recorder::Checkpoint>(&body).unwrap(),
        *seal,
        "the witnessed version is still there"
    );
}
