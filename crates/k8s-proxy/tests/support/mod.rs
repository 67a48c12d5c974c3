//! Test harness: the API-server stand-in ([`apiserver`]), a gateway in front of it built from the
//! real policy engine and masking engine (approvals, recorder and egress guard from the test
//! kit), kubeconfig files, and a bounded `kubectl` runner.

#![allow(dead_code)]

pub mod apiserver;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_core::*;
use gatehouse_k8s::{K8sProxy, K8sProxyConfig, K8sTargetConfig, UpstreamCredential};
use gatehouse_masking::MaskingEngine;
use gatehouse_policy::CompiledPolicy;
use gatehouse_testkit::layers::{StaticAuthenticator, TestPipeline};

pub use apiserver::ApiServer;

/// The token the gateway holds for the cluster. It must appear in no response byte and no record.
pub const UPSTREAM_TOKEN: &str = "UPSTREAM-SA-CANARY-5e1f0c9a7b3d";
/// The agent's token (what its kubeconfig carries).
pub const AGENT_TOKEN: &str = "agent-token-k8s-0001";

pub const KUBECTL: &str = "/usr/bin/kubectl";

/// The policy most tests use.
pub const POLICY: &str = r#"
[defaults]
default = "deny"

[[rules]]
id = "no-pod-delete"
reason = "agents never delete pods"
verdict = "deny"
kubernetes = { verbs = ["delete", "deletecollection"], resources = ["pods"] }

[[rules]]
id = "no-secret-list"
reason = "secrets are read one by one"
verdict = "deny"
kubernetes = { verbs = ["list", "watch"], resources = ["secrets"] }

[[rules]]
id = "no-rm"
reason = "no file deletion in pods"
verdict = "deny"
kubernetes = { verbs = ["exec"] }
exec = { program = ["rm"] }

[[rules]]
id = "agents-read"
reason = "agents read the cluster"
verdict = "allow"
groups = ["agents"]
kubernetes = { verbs = ["get", "list", "watch", "log"] }

[[rules]]
id = "agents-configmaps"
reason = "agents manage config maps"
verdict = "allow"
groups = ["agents"]
kubernetes = { verbs = ["create", "delete"], resources = ["configmaps"] }

[[rules]]
id = "exec-web-0"
reason = "harmless commands in web-0"
verdict = "allow"
kubernetes = { verbs = ["exec"], names = ["web-0"] }
exec = { program = ["echo", "tty", "cat", "printf", "id", "printenv"] }

[[rules]]
id = "exec-web-1-reviewed"
reason = "web-1 is production: a human approves"
verdict = "review"
approvers = ["admins"]
timeout = "60s"
kubernetes = { verbs = ["exec"], names = ["web-1"] }
exec = { program = ["echo"] }
"#;

/// A stand-in plus a gateway in front of it.
pub struct Rig {
    pub api: ApiServer,
    pub tls_addr: std::net::SocketAddr,
    pub ca_file: PathBuf,
    pub layers: TestPipeline,
    pub gateway: std::net::SocketAddr,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    _stop: tokio::sync::oneshot::Sender<()>,
}

pub fn agent() -> Identity {
    Identity::new("agent-7", "https://idp.test", AuthMethod::Test).with_group("agents")
}

pub fn approver() -> Identity {
    Identity::new("alice", "https://idp.test", AuthMethod::Test).with_group("admins")
}

impl Rig {
    pub async fn start() -> Rig {
        Rig::start_with(POLICY, |_| {}).await
    }

    pub async fn start_with(policy: &str, tweak: impl FnOnce(&mut K8sProxyConfig)) -> Rig {
        Rig::start_full(policy, tweak, |_| {}).await
    }

    /// Like [`Rig::start_with`], with some of the gateway's layers replaced.
    pub async fn start_full(
        policy: &str,
        tweak: impl FnOnce(&mut K8sProxyConfig),
        layers_tweak: impl FnOnce(&mut gatehouse_core::Pipeline),
    ) -> Rig {
        let api = ApiServer::start(UPSTREAM_TOKEN).await;
        let target = |name: &str, impersonate: bool| K8sTargetConfig {
            name: name.into(),
            tags: vec!["env:test".into()],
            server: Some(api.url.clone()),
            ca_file: Some(api.ca_file.clone()),
            credential: UpstreamCredential::Bearer {
                secret: UPSTREAM_TOKEN.into(),
            },
            impersonate,
        };
        let mut config =
            K8sProxyConfig::with_targets(vec![target("dev", false), target("imp", true)]);
        config.default_target = Some("dev".into());
        config.review_hold_ms = 500;
        tweak(&mut config);
        let held = config.held_secrets();
        assert!(!held.is_empty());
        let held: Vec<&str> = held.iter().map(String::as_str).collect();
        let auth = StaticAuthenticator::new().with_token(AGENT_TOKEN, agent());
        let policy = CompiledPolicy::from_toml(policy, "policy.toml").unwrap();
        let masker = MaskingEngine::with_defaults().unwrap();
        let layers = TestPipeline::new(auth, policy, masker, &held);
        let mut pipeline = layers.pipeline.clone();
        layers_tweak(&mut pipeline);
        let proxy = K8sProxy::new(config, pipeline).unwrap();
        // kubectl sends a token over TLS only: one TLS listener for it, one plain listener for
        // the raw HTTP checks and kube-rs.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway = listener.local_addr().unwrap();
        let tls_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tls_addr = tls_listener.local_addr().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca = gatehouse_testkit::tls::TestCa::new("gateway CA");
        let ca_file = dir.path().join("gateway-ca.pem");
        std::fs::write(&ca_file, ca.cert_pem()).unwrap();
        let (cert, key) = ca.issue_server(&["127.0.0.1"]);
        let certs = rustls_pemfile::certs(&mut cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls_pemfile::private_key(&mut key.as_bytes())
            .unwrap()
            .unwrap();
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let stop_rx = Arc::new(tokio::sync::Mutex::new(Some(stop_rx)));
        let plain = proxy.clone();
        tokio::spawn(async move {
            let _ = plain
                .serve(listener, None, async {
                    if let Some(rx) = stop_rx.lock().await.take() {
                        let _ = rx.await;
                    }
                })
                .await;
        });
        tokio::spawn(async move {
            let _ = proxy
                .serve(tls_listener, Some(tls), std::future::pending::<()>())
                .await;
        });
        let kubeconfig = dir.path().join("gateway.kubeconfig");
        write_kubeconfig(
            &kubeconfig,
            &format!("https://{tls_addr}/k8s/dev"),
            AGENT_TOKEN,
            Some(&ca_file),
        );
        Rig {
            api,
            tls_addr,
            ca_file,
            layers,
            gateway,
            dir,
            kubeconfig,
            _stop: stop_tx,
        }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.gateway)
    }

    pub async fn kubectl(&self, args: &[&str]) -> KubectlOutput {
        kubectl(&self.kubeconfig, self.dir.path(), args).await
    }

    /// Operations the gateway recorded.
    pub fn operations(&self) -> Vec<(KubeOperation, Decision)> {
        self.layers
            .recorder
            .events()
            .into_iter()
            .filter_map(|e| match e.body {
                EventBody::Operation {
                    operation: Operation::Kubernetes(op),
                    decision,
                    ..
                } => Some((op, decision)),
                _ => None,
            })
            .collect()
    }

    pub fn results(&self) -> Vec<OperationResult> {
        self.layers
            .recorder
            .events()
            .into_iter()
            .filter_map(|e| match e.body {
                EventBody::OperationResult(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    /// Approves the next pending request as `alice`.
    pub async fn approve_next(&self) -> ApprovalId {
        let id = gatehouse_testkit::within(
            Duration::from_secs(30),
            self.layers.approvals.next_pending(),
        )
        .await;
        self.layers
            .approvals
            .decide(&id, &approver(), ApprovalDecision::Approve, "looked at it")
            .await
            .unwrap();
        id
    }
}

pub fn write_kubeconfig(path: &Path, server: &str, token: &str, ca: Option<&Path>) {
    let ca_line = match ca {
        Some(ca) => format!("    certificate-authority: {}\n", ca.display()),
        None => String::new(),
    };
    let text = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: test\nclusters:\n- name: test\n  cluster:\n    server: {server}\n{ca_line}users:\n- name: test\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    namespace: default\n"
    );
    std::fs::write(path, text).unwrap();
}

#[derive(Debug)]
pub struct KubectlOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// stdout as it came, byte for byte.
    pub stdout_bytes: Vec<u8>,
}

impl KubectlOutput {
    pub fn ok(&self) -> &Self {
        assert_eq!(self.code, Some(0), "kubectl failed: {self:#?}");
        self
    }
}

pub fn kubectl_command(kubeconfig: &Path, home: &Path, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(KUBECTL);
    cmd.arg("--request-timeout=30s")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", home)
        .env("KUBECACHEDIR", home.join("cache"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    cmd
}

/// Runs kubectl (bounded to 60 s) and collects its output.
pub async fn kubectl(kubeconfig: &Path, home: &Path, args: &[&str]) -> KubectlOutput {
    let child = kubectl_command(kubeconfig, home, args).spawn().unwrap();
    let out = gatehouse_testkit::within(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap();
    KubectlOutput {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        stdout_bytes: out.stdout,
    }
}

/// A plain HTTP/1.1 request to the gateway; (status, headers, body).
pub async fn raw(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, http::HeaderMap, String) {
    use http_body_util::BodyExt as _;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("{base}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = gatehouse_testkit::within(Duration::from_secs(30), client.request(req))
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

pub fn bearer() -> String {
    format!("Bearer {AGENT_TOKEN}")
}

pub fn shared<T>(v: T) -> Arc<T> {
    Arc::new(v)
}
