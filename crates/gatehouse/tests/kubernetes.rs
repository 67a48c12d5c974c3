//! The binary's Kubernetes listener, driven as an operator would: a `gatehouse.toml` with a
//! `[[listeners.kubernetes]]` (TLS) and a `kubernetes` target whose bearer token comes from a
//! file, `gatehouse serve`, a dev token from `gatehouse token`, and the real `kubectl` through the
//! gateway to the API-server stand-in of gatehouse-k8s's tests. Secrets come back masked, a pod
//! delete is refused with the rule named, an exec runs, the audit log verifies, and the token the
//! gateway holds appears in no byte kubectl received and nothing the gateway wrote.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
#[path = "../../k8s-proxy/tests/support/apiserver.rs"]
mod apiserver;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gatehouse_testkit::process::{ChildGuard, run_with_timeout};

const EXE: &str = env!("CARGO_BIN_EXE_gatehouse");
const KUBECTL: &str = "/usr/bin/kubectl";
/// The token the gateway holds for the cluster (never shown to the agent).
const UPSTREAM_TOKEN: &str = "UPSTREAM-BINARY-CANARY-8c2d41f07a";

const POLICY: &str = r#"
[defaults]
default = "deny"

[[rules]]
id = "no-pod-delete"
reason = "agents never delete pods"
verdict = "deny"
kubernetes = { verbs = ["delete", "deletecollection"], resources = ["pods"] }

[[rules]]
id = "agents-read"
reason = "agents read the cluster"
verdict = "allow"
groups = ["agents"]
kubernetes = { verbs = ["get", "list", "watch", "log"] }

[[rules]]
id = "exec-echo"
reason = "harmless commands"
verdict = "allow"
groups = ["agents"]
kubernetes = { verbs = ["exec"], names = ["web-0"] }
exec = { program = ["echo", "sh"] }
"#;

fn run(cmd: Command) -> std::process::Output {
    run_with_timeout(cmd, Duration::from_secs(90)).unwrap()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn kubectl(kubeconfig: &Path, home: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(KUBECTL);
    cmd.arg("--request-timeout=30s")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", home)
        .env("KUBECACHEDIR", home.join("cache"))
        .env_remove("KUBERNETES_SERVICE_HOST");
    run(cmd)
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn write_config(dir: &Path, api: &apiserver::ApiServer) -> PathBuf {
    let ca = gatehouse_testkit::tls::TestCa::new("gateway test CA");
    let (cert, key) = ca.issue_server(&["127.0.0.1", "localhost"]);
    std::fs::write(dir.join("ca.crt"), ca.cert_pem()).unwrap();
    std::fs::write(dir.join("server.crt"), cert).unwrap();
    std::fs::write(dir.join("server.key"), key).unwrap();
    std::fs::create_dir_all(dir.join("secrets")).unwrap();
    std::fs::write(
        dir.join("secrets/cluster-token"),
        format!("{UPSTREAM_TOKEN}\n"),
    )
    .unwrap();
    std::fs::write(dir.join("policy.toml"), POLICY).unwrap();
    let config = format!(
        r#"[gateway]
data_dir = "data"

[identity.dev_issuer]
key = "dev.key"

[policy]
file = "policy.toml"

[audit]
durability = "fsync"

[[listeners.kubernetes]]
listen = "127.0.0.1:0"
tls = {{ cert = "server.crt", key = "server.key" }}

[[targets]]
name = "cluster1"
protocol = "kubernetes"
server = "{server}"
ca_file = "{api_ca}"
credential = {{ kind = "bearer", secret = {{ file = "secrets/cluster-token" }} }}
tags = ["test"]
"#,
        server = api.url,
        api_ca = api.ca_file.display(),
    );
    let path = dir.join("gatehouse.toml");
    std::fs::write(&path, config).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_through_the_binary() {
    if !Path::new(KUBECTL).exists() {
        panic!("{KUBECTL} is missing: it comes with the machine image (.ci/deps checks it)");
    }
    let api = apiserver::ApiServer::start(UPSTREAM_TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &api);

    // The config is accepted as written.
    let mut check = Command::new(EXE);
    check.arg("check-config").arg(&config);
    let out = tokio::task::spawn_blocking(move || run(check))
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    let mut serve = Command::new(EXE);
    serve
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut gateway = ChildGuard::spawn_with_stdio("gatehouse serve", {
        serve.stdin(Stdio::null());
        serve
    })
    .unwrap();
    let stderr = gateway.child_mut().stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    let addr = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("gatehouse serve did not start: {seen:?}"));
        if let Some(rest) = line.split("kubernetes ").nth(1)
            && line.contains("listening:")
        {
            break rest
                .split([',', ' '])
                .next()
                .unwrap()
                .parse::<std::net::SocketAddr>()
                .unwrap();
        }
        seen.push(line);
    };

    // The agent's token, minted by the dev issuer the config names.
    let mut mint = Command::new(EXE);
    mint.args(["token", "--key"])
        .arg(dir.path().join("dev.key"))
        .args(["--sub", "agent-9", "--group", "agents", "--ttl", "10m"]);
    let out = tokio::task::spawn_blocking(move || run(mint))
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!token.is_empty());

    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: gw\nclusters:\n- name: gw\n  cluster:\n    server: https://localhost:{port}/k8s/cluster1\n    certificate-authority: {ca}\nusers:\n- name: agent\n  user:\n    token: {token}\ncontexts:\n- name: gw\n  context:\n    cluster: gw\n    user: agent\n    namespace: default\n",
            port = addr.port(),
            ca = dir.path().join("ca.crt").display()
        ),
    )
    .unwrap();

    let k = |args: &'static [&'static str]| {
        let (kubeconfig, home) = (kubeconfig.clone(), home.clone());
        tokio::task::spawn_blocking(move || kubectl(&kubeconfig, &home, args))
    };
    let mut received = Vec::new();

    let pods = k(&["get", "pods"]).await.unwrap();
    assert!(pods.status.success(), "{}", text(&pods));
    assert!(text(&pods).contains("web-0"), "{}", text(&pods));
    received.push(text(&pods));

    let secret = k(&["get", "secret", "db-creds", "-o", "yaml"])
        .await
        .unwrap();
    assert!(secret.status.success(), "{}", text(&secret));
    let yaml = text(&secret);
    {
        use base64::Engine as _;
        let encoded = base64::engine::general_purpose::STANDARD.encode(apiserver::SECRET_PASSWORD);
        assert!(
            !yaml.contains(apiserver::SECRET_PASSWORD) && !yaml.contains(&encoded),
            "the Secret's data came through unmasked: {yaml}"
        );
    }
    assert!(yaml.contains("password:"), "{yaml}");
    received.push(yaml);

    let delete = k(&["delete", "pod", "web-0"]).await.unwrap();
    assert!(!delete.status.success(), "{}", text(&delete));
    assert!(
        text(&delete).contains("Forbidden") && text(&delete).contains("no-pod-delete"),
        "{}",
        text(&delete)
    );
    assert!(
        api.state.get("pods", "default", "web-0").is_some(),
        "the denied delete reached the API server"
    );
    received.push(text(&delete));

    // A plain command (no expansions: those get the policy's own `non_plain_exec` verdict).
    let exec = k(&["exec", "web-0", "--", "sh", "-c", "echo via the binary"])
        .await
        .unwrap();
    assert!(exec.status.success(), "{}", text(&exec));
    assert_eq!(
        String::from_utf8_lossy(&exec.stdout).trim(),
        "via the binary",
        "{}",
        text(&exec)
    );
    received.push(text(&exec));

    // The API server saw the gateway's token, never the agent's.
    let seen = api.state.seen();
    let held = format!("Bearer {UPSTREAM_TOKEN}");
    assert!(
        seen.iter()
            .any(|s| s.headers.get("authorization").map(|v| v.as_bytes()) == Some(held.as_bytes())),
        "the gateway did not inject the cluster token: {seen:?}"
    );
    for s in &seen {
        assert!(
            !format!("{s:?}").contains(&token),
            "the agent's token was forwarded upstream: {s:?}"
        );
    }

    // Stop the gateway (SIGTERM drains and flushes the audit log), then check what it wrote.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(gateway.pgid()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let exited = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = gateway.child_mut().try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    })
    .await
    .unwrap();
    assert!(exited.is_some(), "gatehouse serve did not stop on SIGTERM");

    let data = dir.path().join("data");
    let mut verify = Command::new(EXE);
    verify.args(["audit", "verify"]).arg(&data);
    let out = tokio::task::spawn_blocking(move || run(verify))
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    let files = walk(&data);
    let audit: String = files
        .iter()
        .filter_map(|f| std::fs::read(f).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .collect();
    assert!(
        audit.contains("no-pod-delete") && audit.contains("exec-echo"),
        "the decisions are not in the audit log"
    );
    for (what, bytes) in files
        .iter()
        .map(|f| (f.display().to_string(), std::fs::read(f).unwrap()))
        .chain(
            received
                .iter()
                .map(|r| ("kubectl output".to_string(), r.clone().into_bytes())),
        )
    {
        assert!(
            !bytes
                .windows(UPSTREAM_TOKEN.len())
                .any(|w| w == UPSTREAM_TOKEN.as_bytes()),
            "the cluster token the gateway holds appears in {what}"
        );
    }
}
