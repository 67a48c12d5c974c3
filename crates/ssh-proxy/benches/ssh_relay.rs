#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Criterion: one exec channel round trip (`true` on an already open connection) and a 16 MiB
//! `cat`, with a russh client straight to a throwaway OpenSSH sshd (the baseline) and through the
//! gateway (real masking engine, egress guard, recording discarded), in the same run.

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gatehouse_core::*;
use gatehouse_masking::{EgressGuardBuilder, MaskingEngine};
use gatehouse_ssh::{
    SshProxy, SshProxyConfig, SshTargetConfig, UpstreamCredential, UpstreamHostKey,
};
use gatehouse_testkit::layers::{FnPolicy, MemoryApprovals, StaticAuthenticator};
use gatehouse_testkit::sshd::{Sshd, SshdOptions};

const TOKEN: &str = "bench-token-0123456789";
const CAT_BYTES: usize = 16 * 1024 * 1024;

struct AcceptAny;
impl russh::client::Handler for AcceptAny {
    type Error = russh::Error;
    async fn check_server_key(
        &mut self,
        _: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

struct DiscardRecorder;
struct DiscardSink;
impl RecordingSink for DiscardSink {
    fn write(&mut self, _: RecordingFrame) -> BoxFuture<'_, Result<(), RecordError>> {
        Box::pin(async { Ok(()) })
    }
    fn seal(self: Box<Self>) -> BoxFuture<'static, Result<RecordingSeal, RecordError>> {
        Box::pin(async {
            Ok(RecordingSeal {
                location: String::new(),
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

async fn exec(client: &russh::client::Handle<AcceptAny>, command: &str) -> usize {
    let mut ch = client.channel_open_session().await.unwrap();
    ch.exec(true, command).await.unwrap();
    let mut n = 0;
    while let Some(msg) = ch.wait().await {
        match msg {
            russh::ChannelMsg::Data { data } => n += data.len(),
            russh::ChannelMsg::Close => break,
            _ => {}
        }
    }
    n
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(SshdOptions::default()).unwrap();
    let file = dir.path().join("data.txt");
    let line = "lorem ipsum dolor sit amet, consectetur adipiscing elit 0123456789\n";
    std::fs::write(&file, line.repeat(CAT_BYTES / line.len())).unwrap();
    let cat = format!("cat {}", file.display());

    let fp = russh::keys::PublicKey::from_openssh(&sshd.host_public_key())
        .unwrap()
        .fingerprint(russh::keys::HashAlg::Sha256)
        .to_string();
    let mut config = SshProxyConfig::new(dir.path().join("gw_host"));
    config.targets.push(SshTargetConfig {
        name: "bench".into(),
        address: sshd.addr().to_string(),
        login: sshd.user().into(),
        extra_logins: Vec::new(),
        credential: UpstreamCredential::PrivateKeyFile {
            path: sshd.client_key_path(),
        },
        host_key: UpstreamHostKey::Fingerprint { sha256: fp },
        tags: Default::default(),
    });
    let mut egress = EgressGuardBuilder::new();
    for s in config.held_secrets() {
        let _ = egress.add_secret(&s);
    }
    let pipeline = Pipeline {
        authenticator: Arc::new(
            StaticAuthenticator::new()
                .with_token(TOKEN, Identity::new("bench", "bench", AuthMethod::Test)),
        ),
        policy: Arc::new(FnPolicy::allow_all()),
        approvals: Arc::new(MemoryApprovals::new()),
        masker: Arc::new(MaskingEngine::with_defaults().unwrap()),
        egress: Arc::new(egress.build().unwrap()),
        recorder: Arc::new(DiscardRecorder),
        hooks: gatehouse_core::Pipeline::no_hooks(),
    };
    let proxy = SshProxy::new(config, pipeline).unwrap();
    let (gateway_addr, direct, through) = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(proxy.serve(listener, std::future::pending()));
        let cfg = Arc::new(russh::client::Config {
            nodelay: true,
            ..Default::default()
        });
        let mut direct = russh::client::connect(cfg.clone(), sshd.addr(), AcceptAny)
            .await
            .unwrap();
        let key = russh::keys::load_secret_key(sshd.client_key_path(), None).unwrap();
        let ok = direct
            .authenticate_publickey(
                sshd.user(),
                russh::keys::PrivateKeyWithHashAlg::new(Arc::new(key), None),
            )
            .await
            .unwrap();
        assert!(ok.success());
        let mut through = russh::client::connect(cfg, addr, AcceptAny).await.unwrap();
        assert!(
            through
                .authenticate_password("bench", TOKEN)
                .await
                .unwrap()
                .success()
        );
        (addr, direct, through)
    });
    let _ = gateway_addr;

    let mut g = c.benchmark_group("exec_true_round_trip");
    g.measurement_time(Duration::from_secs(10));
    g.bench_function("direct", |b| b.iter(|| rt.block_on(exec(&direct, "true"))));
    g.bench_function("gateway", |b| {
        b.iter(|| rt.block_on(exec(&through, "true")))
    });
    g.finish();

    let mut g = c.benchmark_group("cat_16MiB");
    g.throughput(Throughput::Bytes(std::fs::metadata(&file).unwrap().len()));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.bench_function("direct", |b| b.iter(|| rt.block_on(exec(&direct, &cat))));
    g.bench_function("gateway", |b| b.iter(|| rt.block_on(exec(&through, &cat))));
    g.finish();
    drop(sshd);
}

criterion_group!(benches, bench);
criterion_main!(benches);
