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
use gatehouse_recorder::{AuditRecorder, RecorderConfig};
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;

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
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = endpoint.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await.unwrap();
    resp.starts_with(b"HTTP/1.1 200") || resp.starts_with(b"HTTP/1.0 200")
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
