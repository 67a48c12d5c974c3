#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Whole-system SSH benchmark (not in CI; run by `benches/ssh/run.sh`): the real `ssh` client
//! against a throwaway OpenSSH sshd, directly and through the gateway, in the same run.
//!
//! 1. Throughput: `ssh HOST cat FILE > /dev/null` of a text file (default 1 GiB).
//! 2. Latency: `ssh HOST true`, sequentially (default 100 times): a full connection each time.
//!
//! Two gateway set-ups: `full` (the real masking engine, the egress guard over the target key,
//! the audit recorder writing recordings to disk) and `relay` (pass-through masker, recording
//! discarded) to separate the protocol cost from the layers' cost.
//!
//! Environment: `GH_BENCH_BYTES` (default 1073741824), `GH_BENCH_ROUNDS` (default 100).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse_core::*;
use gatehouse_masking::{EgressGuardBuilder, MaskingEngine};
use gatehouse_ssh::{
    SshProxy, SshProxyConfig, SshTargetConfig, UpstreamCredential, UpstreamHostKey,
};
use gatehouse_testkit::layers::{FnPolicy, MemoryApprovals, StaticAuthenticator};
use gatehouse_testkit::sshd::{Sshd, SshdOptions};

const TOKEN: &str = "bench-token-0123456789";

/// Masks nothing: the baseline for the masking cost.
struct PassThrough;
struct PassThroughStream;
struct NoPlan;

impl FieldPlan for NoPlan {
    fn apply(&self, _: usize, _: &[u8], _: &mut Vec<u8>, _: &mut Vec<Finding>) -> MaskOutcome {
        MaskOutcome::Unchanged
    }
    fn masks_whole(&self, _: usize) -> bool {
        false
    }
}
impl StreamMasker for PassThroughStream {
    fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(chunk);
    }
    fn flush(&mut self, _: &mut Vec<u8>) {}
    fn finish(&mut self, _: &mut Vec<u8>) {}
    fn take_findings(&mut self) -> Vec<Finding> {
        Vec::new()
    }
}
impl Masker for PassThrough {
    fn plan(&self, _: &[FieldDesc], _: Option<&str>) -> Box<dyn FieldPlan> {
        Box::new(NoPlan)
    }
    fn stream(&self, _: &StreamContext) -> Box<dyn StreamMasker> {
        Box::new(PassThroughStream)
    }
}

/// Keeps control events, discards recording data.
struct DiscardRecorder;
struct DiscardSink;
impl RecordingSink for DiscardSink {
    fn write(&mut self, _: RecordingFrame) -> BoxFuture<'_, Result<(), RecordError>> {
        Box::pin(async { Ok(()) })
    }
    fn seal(self: Box<Self>) -> BoxFuture<'static, Result<RecordingSeal, RecordError>> {
        Box::pin(async {
            Ok(RecordingSeal {
                location: "discarded".into(),
                sha256: String::new(),
                bytes: 0,
                frames: 0,
            })
        })
    }
}
impl Recorder for DiscardRecorder {
    fn record(&self, _: Event) -> BoxFuture<'_, Result<EventReceipt, RecordError>> {
        Box::pin(async {
            Ok(EventReceipt {
                sequence: 0,
                hash: String::new(),
            })
        })
    }
    fn open_recording<'a>(
        &'a self,
        _: &'a SessionId,
        _: RecordingKind,
    ) -> BoxFuture<'a, Result<Box<dyn RecordingSink>, RecordError>> {
        Box::pin(async { Ok(Box::new(DiscardSink) as Box<dyn RecordingSink>) })
    }
}

fn target_for(sshd: &Sshd) -> SshTargetConfig {
    let fp = russh::keys::PublicKey::from_openssh(&sshd.host_public_key())
        .unwrap()
        .fingerprint(russh::keys::HashAlg::Sha256)
        .to_string();
    SshTargetConfig {
        name: "bench".into(),
        address: sshd.addr().to_string(),
        login: sshd.user().into(),
        extra_logins: Vec::new(),
        credential: UpstreamCredential::PrivateKeyFile {
            path: sshd.client_key_path(),
        },
        host_key: UpstreamHostKey::Fingerprint { sha256: fp },
        tags: Default::default(),
    }
}

struct Gateway {
    port: u16,
    known_hosts: std::path::PathBuf,
    askpass: std::path::PathBuf,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start_gateway(sshd: &Sshd, dir: &Path, full: bool) -> Gateway {
    let name = if full { "full" } else { "relay" };
    let mut config = SshProxyConfig::new(dir.join(format!("gw-{name}")));
    config.targets.push(target_for(sshd));
    config.login_rate_limit.max_failures = 0;
    let mut egress = EgressGuardBuilder::new();
    for s in config.held_secrets() {
        let _ = egress.add_secret(&s);
    }
    let (masker, recorder): (
        Arc<dyn Masker + Send + Sync>,
        Arc<dyn Recorder + Send + Sync>,
    ) = if full {
        let root = dir.join("audit");
        let rec = gatehouse_recorder::AuditRecorder::open(
            &root,
            gatehouse_recorder::RecorderConfig::new("bench"),
            gatehouse_recorder::CheckpointSigner::generate().unwrap(),
            None,
        )
        .await
        .unwrap();
        (
            Arc::new(MaskingEngine::with_defaults().unwrap()),
            Arc::new(rec),
        )
    } else {
        (Arc::new(PassThrough), Arc::new(DiscardRecorder))
    };
    let pipeline = Pipeline {
        authenticator: Arc::new(
            StaticAuthenticator::new()
                .with_token(TOKEN, Identity::new("bench", "bench", AuthMethod::Test)),
        ),
        policy: Arc::new(FnPolicy::allow_all()),
        approvals: Arc::new(MemoryApprovals::new()),
        masker,
        egress: Arc::new(egress.build().unwrap()),
        recorder,
        hooks: gatehouse_core::Pipeline::no_hooks(),
    };
    let proxy = SshProxy::new(config, pipeline).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let known_hosts = dir.join(format!("known_hosts_{name}"));
    std::fs::write(
        &known_hosts,
        format!("[127.0.0.1]:{port} {}\n", proxy.host_public_key()),
    )
    .unwrap();
    let askpass = dir.join("askpass.sh");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(&askpass, format!("#!/bin/sh\necho {TOKEN}\n")).unwrap();
        std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = proxy
            .serve(listener, async {
                let _ = stop_rx.await;
            })
            .await;
    });
    Gateway {
        port,
        known_hosts,
        askpass,
        _stop: stop,
    }
}

fn gateway_command(gw: &Gateway, remote: &str) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.args(["-p", &gw.port.to_string(), "-F", "/dev/null"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", gw.known_hosts.display()))
        .args([
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "PreferredAuthentications=keyboard-interactive,password",
            "-o",
            "LogLevel=ERROR",
            "bench@127.0.0.1",
            remote,
        ])
        .env("SSH_ASKPASS", &gw.askpass)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("DISPLAY", ":0");
    cmd
}

fn direct_command(sshd: &Sshd, remote: &str) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.arg("-F")
        .arg("/dev/null")
        .args(sshd.ssh_args())
        .arg(remote);
    cmd
}

/// Runs `cmd` with stdout to /dev/null; returns the wall time.
fn timed(mut cmd: Command) -> Duration {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let t = Instant::now();
    let out = cmd.output().expect("run ssh");
    let elapsed = t.elapsed();
    assert!(
        out.status.success(),
        "ssh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    elapsed
}

fn main() {
    let bytes: u64 = std::env::var("GH_BENCH_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 30);
    let rounds: u32 = std::env::var("GH_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let dir = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(SshdOptions::default()).unwrap();
    let full = rt.block_on(start_gateway(&sshd, dir.path(), true));
    let relay = rt.block_on(start_gateway(&sshd, dir.path(), false));

    let file = dir.path().join("data.txt");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        let mut written = 0u64;
        let mut i = 0u64;
        while written < bytes {
            let line = format!("{i:012} lorem ipsum dolor sit amet, consectetur adipiscing elit\n");
            f.write_all(line.as_bytes()).unwrap();
            written += line.len() as u64;
            i += 1;
        }
    }
    let size = std::fs::metadata(&file).unwrap().len();
    let cat = format!("cat {}", file.display());
    let mib = size as f64 / (1024.0 * 1024.0);
    println!("# gatehouse-ssh whole-system benchmark");
    println!("cat of {mib:.0} MiB text to /dev/null (one run each):");
    let direct = timed(direct_command(&sshd, &cat));
    let through_relay = timed(gateway_command(&relay, &cat));
    let through_full = timed(gateway_command(&full, &cat));
    let rate = |d: Duration| mib / d.as_secs_f64();
    println!(
        "  direct        {:8.1} MiB/s  ({:.2} s)",
        rate(direct),
        direct.as_secs_f64()
    );
    println!(
        "  gateway relay {:8.1} MiB/s  ({:.2} s)  ratio {:.2}x direct",
        rate(through_relay),
        through_relay.as_secs_f64(),
        direct.as_secs_f64() / through_relay.as_secs_f64()
    );
    println!(
        "  gateway full  {:8.1} MiB/s  ({:.2} s)  ratio {:.2}x direct",
        rate(through_full),
        through_full.as_secs_f64(),
        direct.as_secs_f64() / through_full.as_secs_f64()
    );

    println!(
        "`ssh HOST true`, {rounds} sequential connections each (interleaved: direct, relay, full):"
    );
    let (mut d, mut r, mut f) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        d.push(timed(direct_command(&sshd, "true")));
        r.push(timed(gateway_command(&relay, "true")));
        f.push(timed(gateway_command(&full, "true")));
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let stats = |v: &mut Vec<Duration>| {
        v.sort();
        let mean = v.iter().sum::<Duration>() / (v.len().max(1) as u32);
        (
            ms(mean),
            ms(v.get(v.len() / 2).copied().unwrap_or_default()),
        )
    };
    let (dm, dmed) = stats(&mut d);
    let (rm, rmed) = stats(&mut r);
    let (fm, fmed) = stats(&mut f);
    println!("  direct        mean {dm:7.1} ms  median {dmed:7.1} ms");
    println!(
        "  gateway relay mean {rm:7.1} ms  median {rmed:7.1} ms  (median {:+.1} ms vs direct)",
        rmed - dmed
    );
    println!(
        "  gateway full  mean {fm:7.1} ms  median {fmed:7.1} ms  (median {:+.1} ms vs direct)",
        fmed - dmed
    );
    drop(full);
    drop(relay);
    drop(sshd);
}
