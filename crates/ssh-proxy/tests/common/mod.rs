#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Harness for the SSH bastion tests: a real OpenSSH sshd (testkit) as the target, the gateway on
//! a bound loopback listener, the real `ssh` client (askpass with the token) and a russh client.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_core::*;
use gatehouse_masking::{EgressGuardBuilder, MaskingEngine};
use gatehouse_ssh::{
    SshProxy, SshProxyConfig, SshTargetConfig, UpstreamCredential, UpstreamHostKey,
};
use gatehouse_testkit::layers::{FnPolicy, MemoryApprovals, MemoryRecorder, StaticAuthenticator};
use gatehouse_testkit::sshd::{Sshd, SshdOptions};

pub const TOKEN: &str = "agent-token-0123456789";
pub const TARGET: &str = "web";
pub const LIMIT: Duration = Duration::from_secs(60);

pub fn agent() -> Identity {
    Identity::new("agent-1", "test", AuthMethod::Test).with_group("agents")
}

pub fn approver() -> Identity {
    Identity::new("alice", "test", AuthMethod::Test).with_group("ops")
}

fn basename(word: &str) -> &str {
    word.rsplit('/').next().unwrap_or(word)
}

/// The policy the tests run under: no `rm` anywhere in a command line (any word, any simple
/// command, after one level of `sh -c`), no expansions, `systemctl` reviewed by `ops`,
/// subsystems and forwarding denied, transfers and env allowed, other exec allowed.
pub fn test_policy() -> FnPolicy {
    FnPolicy::new(|_, _, op| match op {
        Operation::Ssh(SshOperation::Exec(cmd)) => {
            let p = &cmd.parsed;
            if p.commands.iter().flatten().any(|w| basename(w) == "rm") {
                return Decision::deny("no-rm", "rm is not allowed on this host");
            }
            if p.has_expansions || p.incomplete {
                return Decision::deny(
                    "no-expansions",
                    "command lines with shell expansions are not allowed",
                );
            }
            if p.program().map(basename) == Some("systemctl") {
                return Decision::review(
                    "review-systemctl",
                    "service changes need a second pair of eyes",
                    ReviewRequirement {
                        approver_groups: vec!["ops".into()],
                        approvals_required: 1,
                        timeout_ms: 30_000,
                        grant_window_ms: None,
                    },
                );
            }
            Decision::allow("default-allow", "allowed")
        }
        Operation::Ssh(SshOperation::Shell { .. }) => Decision::allow("shell", "shells allowed"),
        Operation::Ssh(SshOperation::FileTransfer { .. }) => {
            Decision::allow("transfers", "file transfers allowed").with_binary(BinaryHandling::Raw)
        }
        // The listener's allow-list decides which variables.
        Operation::Ssh(SshOperation::Env { .. }) => Decision::allow("env", "env allowed"),
        Operation::Ssh(SshOperation::Subsystem { name }) => {
            Decision::deny("no-subsystems", format!("subsystem {name} is not allowed"))
        }
        _ => Decision::deny("default-deny", "not allowed"),
    })
}

pub type ConfigEdit = Box<dyn FnOnce(&mut SshProxyConfig, &Sshd)>;

pub struct Options {
    pub config: ConfigEdit,
    pub recorder: Option<Arc<dyn Recorder + Send + Sync>>,
    pub authenticator: Option<StaticAuthenticator>,
    pub policy: Option<FnPolicy>,
    /// Replaces the in-memory approvals (which the tests decide through `Gateway::approvals`).
    pub approvals: Option<Arc<dyn Approvals + Send + Sync>>,
    pub hooks: Option<Arc<dyn GateHooks + Send + Sync>>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            config: Box::new(|_, _| {}),
            recorder: None,
            authenticator: None,
            policy: None,
            approvals: None,
            hooks: None,
        }
    }
}

pub struct Gateway {
    pub sshd: Sshd,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub known_hosts: PathBuf,
    pub askpass: PathBuf,
    pub recorder: Arc<MemoryRecorder>,
    pub approvals: Arc<MemoryApprovals>,
    pub proxy: SshProxy,
    pub held_secrets: Vec<Vec<u8>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub fn target_for(sshd: &Sshd) -> SshTargetConfig {
    let fp = russh::keys::PublicKey::from_openssh(&sshd.host_public_key())
        .unwrap()
        .fingerprint(russh::keys::HashAlg::Sha256)
        .to_string();
    SshTargetConfig {
        name: TARGET.into(),
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

pub async fn start(options: Options) -> Gateway {
    let sshd = Sshd::start(SshdOptions::default()).expect("sshd");
    let dir = tempfile::tempdir().unwrap();
    let mut config = SshProxyConfig::new(dir.path().join("gateway_host_ed25519"));
    config.auth_rejection_time_ms = 5;
    config.idle_flush_ms = 10;
    config.targets.push(target_for(&sshd));
    (options.config)(&mut config, &sshd);
    let held_secrets = config.held_secrets();

    let mut egress = EgressGuardBuilder::new();
    for s in &held_secrets {
        let _ = egress.add_secret(s);
    }
    let egress = Arc::new(egress.build().unwrap());
    let memory = Arc::new(MemoryRecorder::new());
    let recorder: Arc<dyn Recorder + Send + Sync> = match options.recorder {
        Some(r) => r,
        None => memory.clone(),
    };
    // Like the broker, the approvals layer records each request's life itself.
    let approvals = Arc::new(MemoryApprovals::with_recorder(recorder.clone()));
    let authenticator = options
        .authenticator
        .unwrap_or_else(|| StaticAuthenticator::new().with_token(TOKEN, agent()));
    let pipeline = Pipeline {
        authenticator: Arc::new(authenticator),
        policy: Arc::new(options.policy.unwrap_or_else(test_policy)),
        approvals: match options.approvals {
            Some(a) => a,
            None => approvals.clone(),
        },
        masker: Arc::new(MaskingEngine::with_defaults().unwrap()),
        egress,
        recorder,
        hooks: options.hooks.unwrap_or_else(Pipeline::no_hooks),
    };
    let proxy = SshProxy::new(config, pipeline).expect("proxy");
    let listener = gatehouse_testkit::net::bind_loopback_tokio().await;
    let addr = listener.local_addr().unwrap();
    let known_hosts = dir.path().join("known_hosts");
    std::fs::write(
        &known_hosts,
        format!("[127.0.0.1]:{} {}\n", addr.port(), proxy.host_public_key()),
    )
    .unwrap();
    let askpass = dir.path().join("askpass.sh");
    write_script(&askpass, &format!("#!/bin/sh\necho '{TOKEN}'\n"));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = proxy.clone();
    let task = tokio::spawn(async move {
        let _ = serving
            .serve(listener, async {
                let _ = stop_rx.await;
            })
            .await;
    });
    Gateway {
        sshd,
        addr,
        dir,
        known_hosts,
        askpass,
        recorder: memory,
        approvals,
        proxy,
        held_secrets,
        stop: Some(stop_tx),
        task: Some(task),
    }
}

pub fn write_script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, body).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Output of one client run.
#[derive(Debug)]
pub struct Run {
    pub status: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Run {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

impl Gateway {
    /// Stops the listener and waits for open sessions to be recorded as ended.
    pub async fn shutdown(mut self) -> Arc<MemoryRecorder> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = gatehouse_testkit::within(LIMIT, t).await;
        }
        self.recorder.clone()
    }

    /// `ssh` options for the gateway: its pinned host key, token via askpass, nothing
    /// interactive.
    pub fn ssh_options(&self) -> Vec<String> {
        [
            "-p".to_string(),
            self.addr.port().to_string(),
            "-F".into(),
            "/dev/null".into(),
            "-o".into(),
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            "PubkeyAuthentication=no".into(),
            "-o".into(),
            "PreferredAuthentications=keyboard-interactive,password".into(),
            "-o".into(),
            "NumberOfPasswordPrompts=1".into(),
            "-o".into(),
            "ConnectTimeout=10".into(),
            "-o".into(),
            "LogLevel=ERROR".into(),
        ]
        .to_vec()
    }

    pub fn askpass_env(&self, cmd: &mut tokio::process::Command) {
        cmd.env("SSH_ASKPASS", &self.askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":0");
    }

    /// Runs `ssh TARGET@gateway COMMAND` with `stdin` piped in.
    pub async fn ssh(&self, command: &str, stdin: &[u8]) -> Run {
        self.ssh_with(&[], &format!("{TARGET}@127.0.0.1"), command, stdin)
            .await
    }

    pub async fn ssh_with(&self, extra: &[&str], dest: &str, command: &str, stdin: &[u8]) -> Run {
        let mut cmd = tokio::process::Command::new("ssh");
        cmd.args(self.ssh_options())
            .args(extra)
            .arg(dest)
            .arg(command);
        run_client(self, cmd, stdin).await
    }
}

pub async fn run_client(gw: &Gateway, mut cmd: tokio::process::Command, stdin: &[u8]) -> Run {
    gw.askpass_env(&mut cmd);
    run_prepared(cmd, stdin).await
}

/// Runs a client whose askpass the caller already set.
pub async fn run_prepared(mut cmd: tokio::process::Command, stdin: &[u8]) -> Run {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn client");
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let _ = input.write_all(&data).await;
        let _ = input.shutdown().await;
    });
    let out = gatehouse_testkit::within(LIMIT, child.wait_with_output())
        .await
        .unwrap();
    let _ = writer.await;
    Run {
        status: out.status.code(),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Events of one kind.
pub fn operations(recorder: &MemoryRecorder) -> Vec<(Operation, Decision)> {
    recorder
        .events()
        .into_iter()
        .filter_map(|e| match e.body {
            EventBody::Operation {
                operation,
                decision,
                ..
            } => Some((operation, decision)),
            _ => None,
        })
        .collect()
}

pub fn results(recorder: &MemoryRecorder) -> Vec<OperationResult> {
    recorder
        .events()
        .into_iter()
        .filter_map(|e| match e.body {
            EventBody::OperationResult(r) => Some(r),
            _ => None,
        })
        .collect()
}

/// All recorded output bytes (every session).
pub fn recorded_output(recorder: &MemoryRecorder) -> Vec<u8> {
    let mut sessions: Vec<SessionId> = recorder.events().into_iter().map(|e| e.session).collect();
    sessions.sort();
    sessions.dedup();
    let mut out = Vec::new();
    for s in sessions {
        for f in recorder.recording(&s) {
            if let RecordingFrame::Output { data } | RecordingFrame::ErrorOutput { data } = f {
                out.extend_from_slice(&data);
            }
        }
    }
    out
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// A russh client logged in to the gateway with the token.
pub struct RusshClient;

impl russh::client::Handler for RusshClient {
    type Error = russh::Error;
    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        // The tests that use this client check the gateway's key through `ssh` elsewhere.
        Ok(true)
    }
}

pub async fn russh_login(gw: &Gateway, user: &str) -> russh::client::Handle<RusshClient> {
    let config = Arc::new(russh::client::Config {
        nodelay: true,
        ..Default::default()
    });
    let mut handle = russh::client::connect(config, gw.addr, RusshClient)
        .await
        .expect("connect");
    let auth = handle
        .authenticate_password(user, TOKEN)
        .await
        .expect("auth");
    assert!(auth.success(), "token login refused");
    handle
}
