//! A throwaway S3-compatible server (moto), installed into a venv under the workspace's `target/`
//! on first use and started on a port of its own choosing (it prints it); killed as a process
//! group on drop. moto supports versioning and object lock (default retention, COMPLIANCE and
//! GOVERNANCE modes); it does not check signatures, but treats a request without an
//! `Authorization` header as anonymous.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running moto server.
#[derive(Debug)]
pub struct Moto {
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
    // crates/testkit -> workspace target dir.
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
    // Tests run as separate processes: one installs, the others wait for it on this lock.
    let lock = std::fs::File::create(lock_dir.join("install.lock")).unwrap();
    let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("lock the moto install");
    if server.exists() {
        return venv;
    }
    let _ = std::fs::remove_dir_all(&venv);
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

impl Moto {
    /// Starts moto on 127.0.0.1 (waits up to 60 s for it to print its port).
    pub fn start() -> Moto {
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
        let port = rx.recv_timeout(Duration::from_secs(60)).ok().flatten();
        let mut moto = Moto { child, port: 0 };
        moto.port = port.expect("moto_server printed its port");
        moto
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// One raw HTTP/1.1 request (with a dummy `Authorization`, so it is not anonymous):
    /// (status, response head, response body).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String, String) {
        let addr = format!("127.0.0.1:{}", self.port);
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\nAuthorization: AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        let mut resp = Vec::new();
        let _ = s.read_to_end(&mut resp);
        let resp = String::from_utf8_lossy(&resp).into_owned();
        let status = resp
            .get(9..12)
            .and_then(|c| c.parse().ok())
            .unwrap_or_default();
        let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
        (status, head.to_owned(), body.to_owned())
    }

    /// Creates a plain bucket.
    pub fn create_bucket(&self, name: &str) {
        let (status, _, body) = self.request("PUT", &format!("/{name}"), &[], b"");
        assert_eq!(status, 200, "create bucket {name}: {body}");
    }

    /// Creates a bucket with object lock and a default retention of `days` in `mode`
    /// (`COMPLIANCE` or `GOVERNANCE`), as an operator sets up a witness bucket.
    pub fn create_locked_bucket(&self, name: &str, mode: &str, days: u32) {
        let (status, _, body) = self.request(
            "PUT",
            &format!("/{name}"),
            &[("x-amz-bucket-object-lock-enabled", "true")],
            b"",
        );
        assert_eq!(status, 200, "create bucket {name}: {body}");
        let config = format!(
            "<ObjectLockConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><ObjectLockEnabled>Enabled</ObjectLockEnabled><Rule><DefaultRetention><Mode>{mode}</Mode><Days>{days}</Days></DefaultRetention></Rule></ObjectLockConfiguration>"
        );
        let (status, _, body) = self.request(
            "PUT",
            &format!("/{name}?object-lock"),
            &[],
            config.as_bytes(),
        );
        assert_eq!(status, 200, "object lock on {name}: {body}");
    }
}

/// A header's value in a raw response head.
pub fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}
