//! The real OIDC provider (`oidc-provider` on node) as a child process: installed with `npm ci`
//! from the committed lock file, configured for client_credentials + resource indicators (RS256
//! JWT access tokens), listening on a port it picks itself and prints back. Restart keeps the
//! port and swaps the signing key.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use base64::Engine as _;
use gatehouse_testkit::process::{ChildGuard, run_with_timeout};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use nix::sys::signal::Signal;

/// The resource (audience) tokens are requested for.
pub const RESOURCE: &str = "https://gatehouse.test";

fn harness_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testkit/oidc")
}

/// Runs `npm ci` once when node_modules is missing; a file lock serialises parallel test
/// processes.
fn ensure_installed() {
    let dir = harness_dir();
    let lock_path = std::env::temp_dir().join("gatehouse-oidc-npm-ci.lock");
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap();
    // Bounded wait for the lock: a stuck holder must fail this test, not hang it.
    let deadline = std::time::Instant::now() + Duration::from_secs(360);
    let mut file = lock_file;
    let _lock = loop {
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => break lock,
            Err((f, _)) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "npm ci lock not released"
                );
                file = f;
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    if dir.join("node_modules/oidc-provider/package.json").exists() {
        return;
    }
    let mut cmd = Command::new("npm");
    cmd.args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir);
    let out = run_with_timeout(cmd, Duration::from_secs(300)).unwrap();
    assert!(
        out.status.success(),
        "npm ci failed in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A running provider.
pub struct OidcProvider {
    child: Option<ChildGuard>,
    port: u16,
    dir: tempfile::TempDir,
    groups: usize,
    /// The kid of the current signing key.
    pub kid: String,
}

fn node(args: &[&str]) -> Command {
    let mut cmd = Command::new("node");
    cmd.arg(harness_dir().join("provider.mjs"))
        .args(args)
        .current_dir(harness_dir())
        .stdin(Stdio::null());
    cmd
}

fn generate_jwks(path: &Path) -> String {
    let out = run_with_timeout(
        node(&["gen-jwks", path.to_str().unwrap()]),
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(
        out.status.success(),
        "gen-jwks: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Spawns `serve` and waits for `LISTENING <port>`; `Err` carries stderr (e.g. EADDRINUSE).
fn serve(jwks: &Path, port: u16, groups: usize) -> Result<(ChildGuard, u16), String> {
    let mut cmd = node(&[
        "serve",
        jwks.to_str().unwrap(),
        &port.to_string(),
        &groups.to_string(),
    ]);
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null());
    let mut child = ChildGuard::spawn_with_stdio("oidc-provider", cmd).unwrap();
    let stdout = child.child_mut().stdout.take().unwrap();
    let stderr = child.child_mut().stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(port) = line.strip_prefix("LISTENING ") {
                let _ = tx.send(Ok(port.trim().parse::<u16>().unwrap()));
                return;
            }
        }
        let mut err = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut err);
        let _ = tx.send(Err(err));
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Ok(port)) => Ok((child, port)),
        Ok(Err(stderr)) => Err(stderr),
        Err(_) => Err("oidc-provider did not print LISTENING within 30 s".into()),
    }
}

impl OidcProvider {
    /// Starts a provider whose tokens carry `groups` group names.
    pub fn start(groups: usize) -> Self {
        ensure_installed();
        let dir = tempfile::tempdir().unwrap();
        let jwks = dir.path().join("jwks.json");
        let kid = generate_jwks(&jwks);
        let (child, port) = serve(&jwks, 0, groups).expect("oidc-provider starts");
        OidcProvider {
            child: Some(child),
            port,
            dir,
            groups,
            kid,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops the provider and starts it again on the same port with a fresh signing key.
    pub fn restart_with_new_key(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.stop(Signal::SIGTERM, Duration::from_secs(5));
        }
        let jwks = self.dir.path().join("jwks.json");
        self.kid = generate_jwks(&jwks);
        let mut last = String::new();
        // The old socket may linger a moment; retry on EADDRINUSE only.
        for _ in 0..50 {
            match serve(&jwks, self.port, self.groups) {
                Ok((child, port)) => {
                    assert_eq!(port, self.port);
                    self.child = Some(child);
                    return;
                }
                Err(stderr) if stderr.contains("EADDRINUSE") => {
                    last = stderr;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(stderr) => panic!("oidc-provider restart failed: {stderr}"),
            }
        }
        panic!("port {} stayed busy: {last}", self.port);
    }

    /// A client_credentials access token for [`RESOURCE`] (a JWT signed with the current key).
    pub async fn client_credentials_token(&self) -> String {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        let driver = tokio::spawn(conn);
        let basic = base64::engine::general_purpose::STANDARD.encode("agent:agent-secret");
        let body = format!(
            "grant_type=client_credentials&scope=read&resource={}",
            RESOURCE.replace(':', "%3A").replace('/', "%2F")
        );
        let request = http::Request::post("/token")
            .header(http::header::HOST, format!("127.0.0.1:{}", self.port))
            .header(http::header::AUTHORIZATION, format!("Basic {basic}"))
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        driver.abort();
        assert_eq!(
            status,
            200,
            "token endpoint: {}",
            String::from_utf8_lossy(&bytes)
        );
        let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        doc["access_token"].as_str().unwrap().to_string()
    }
}
