//! A throwaway OpenSSH `sshd` on a listener the test already bound.
//!
//! No port race: the kit accepts connections on its own bound listener and hands each one to
//! `sshd -i` (inetd mode) as stdin/stdout. Host key, client key, `authorized_keys` and the config
//! live in a temp dir; `StrictModes no` lets them live there. As root, sshd needs its absolute path
//! and `/run/sshd`; the kit creates the latter if missing. The login user is the current user
//! (`root` in CI, with `PermitRootLogin prohibit-password`); authentication is by the generated
//! client key.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::TestkitError;
use crate::process::{ChildGuard, run_with_timeout};

/// Options for [`Sshd::start`].
#[derive(Debug, Clone, Default)]
pub struct SshdOptions {
    /// Extra `sshd_config` lines (e.g. `AllowTcpForwarding no`).
    pub extra_config: Vec<String>,
}

/// A running throwaway sshd.
#[derive(Debug)]
pub struct Sshd {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    user: String,
    stop: Arc<AtomicBool>,
    children: Arc<Mutex<Vec<ChildGuard>>>,
    accept_thread: Option<std::thread::JoinHandle<()>>,
}

/// Absolute path of the OpenSSH server.
pub fn sshd_path() -> Result<PathBuf, TestkitError> {
    for p in ["/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd"] {
        if Path::new(p).exists() {
            return Ok(PathBuf::from(p));
        }
    }
    Err(TestkitError::Missing(
        "sshd".into(),
        "install openssh-server (.ci/run does)".into(),
    ))
}

impl Sshd {
    /// Starts sshd behind a fresh listener on 127.0.0.1.
    pub fn start(options: SshdOptions) -> Result<Sshd, TestkitError> {
        Self::start_on(crate::net::bind_loopback(), options)
    }

    /// Starts sshd behind `listener`.
    pub fn start_on(listener: TcpListener, options: SshdOptions) -> Result<Sshd, TestkitError> {
        let sshd = sshd_path()?;
        let dir = tempfile::Builder::new()
            .prefix("gatehouse-sshd-")
            .tempdir()?;
        if crate::running_as_root() {
            std::fs::create_dir_all("/run/sshd")?;
        }
        keygen(&dir.path().join("host_ed25519"))?;
        keygen(&dir.path().join("client_ed25519"))?;
        std::fs::copy(
            dir.path().join("client_ed25519.pub"),
            dir.path().join("authorized_keys"),
        )?;
        let user = nix::unistd::User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| "root".into());
        let mut config = format!(
            "HostKey {d}/host_ed25519\n\
             PidFile none\n\
             AuthorizedKeysFile {d}/authorized_keys\n\
             StrictModes no\n\
             PermitRootLogin prohibit-password\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             UsePAM no\n\
             AllowTcpForwarding yes\n\
             X11Forwarding no\n\
             PrintMotd no\n\
             AcceptEnv LANG LC_* GATEHOUSE_*\n\
             Subsystem sftp internal-sftp\n\
             LogLevel VERBOSE\n",
            d = dir.path().display()
        );
        for line in &options.extra_config {
            config.push_str(line);
            config.push('\n');
        }
        std::fs::write(dir.path().join("sshd_config"), config)?;
        // Validate the config once, so a bad one fails here with sshd's own message.
        let mut check = Command::new(&sshd);
        check
            .arg("-t")
            .arg("-f")
            .arg(dir.path().join("sshd_config"));
        let out = run_with_timeout(check, Duration::from_secs(20))?;
        if !out.status.success() {
            return Err(TestkitError::Command {
                program: "sshd -t".into(),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).into(),
            });
        }
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let children = Arc::new(Mutex::new(Vec::new()));
        let accept_thread = {
            let stop = stop.clone();
            let children = children.clone();
            let config = dir.path().join("sshd_config");
            let log = dir.path().join("sshd.log");
            std::thread::spawn(move || accept_loop(listener, sshd, config, log, stop, children))
        };
        Ok(Sshd {
            dir,
            addr,
            user,
            stop,
            children,
            accept_thread: Some(accept_thread),
        })
    }

    /// Where sshd is reachable.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The login user.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The client private key authorised to log in.
    pub fn client_key_path(&self) -> PathBuf {
        self.dir.path().join("client_ed25519")
    }

    /// The host public key, OpenSSH format (`ssh-ed25519 AAAA…`).
    pub fn host_public_key(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("host_ed25519.pub"))
            .map(|s| s.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    }

    /// A `known_hosts` line for this server (`[127.0.0.1]:port ssh-ed25519 AAAA…`).
    pub fn known_hosts_line(&self) -> String {
        format!(
            "[{}]:{} {}",
            self.addr.ip(),
            self.addr.port(),
            self.host_public_key()
        )
    }

    /// Writes a known_hosts file for this server and returns its path.
    pub fn known_hosts_file(&self) -> PathBuf {
        let path = self.dir.path().join("known_hosts");
        let _ = std::fs::write(&path, format!("{}\n", self.known_hosts_line()));
        path
    }

    /// The sshd log (stderr of every `sshd -i`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// Arguments for the real `ssh` client to reach this server directly, non-interactively.
    pub fn ssh_args(&self) -> Vec<String> {
        vec![
            "-p".into(),
            self.addr.port().to_string(),
            "-i".into(),
            self.client_key_path().display().to_string(),
            "-o".into(),
            format!("UserKnownHostsFile={}", self.known_hosts_file().display()),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "ConnectTimeout=10".into(),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-l".into(),
            self.user.clone(),
            self.addr.ip().to_string(),
        ]
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.accept_thread.take() {
            let _ = t.join();
        }
        if let Ok(mut children) = self.children.lock() {
            children.clear();
        }
    }
}

fn keygen(path: &Path) -> Result<(), TestkitError> {
    let mut cmd = Command::new("ssh-keygen");
    cmd.args([
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-C",
        "gatehouse-test",
        "-f",
    ])
    .arg(path);
    let out = run_with_timeout(cmd, Duration::from_secs(20))
        .map_err(|e| TestkitError::Missing("ssh-keygen".into(), e.to_string()))?;
    if !out.status.success() {
        return Err(TestkitError::Command {
            program: "ssh-keygen".into(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into(),
        });
    }
    Ok(())
}

fn accept_loop(
    listener: TcpListener,
    sshd: PathBuf,
    config: PathBuf,
    log: PathBuf,
    stop: Arc<AtomicBool>,
    children: Arc<Mutex<Vec<ChildGuard>>>,
) {
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        let _ = stream.set_nodelay(true);
        let (Ok(input), Ok(output)) = (stream.try_clone(), stream.try_clone()) else {
            continue;
        };
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log);
        let mut cmd = Command::new(&sshd);
        cmd.arg("-i").arg("-e").arg("-f").arg(&config);
        cmd.stdin(Stdio::from(std::os::fd::OwnedFd::from(input)));
        cmd.stdout(Stdio::from(std::os::fd::OwnedFd::from(output)));
        match log_file {
            Ok(f) => cmd.stderr(Stdio::from(f)),
            Err(_) => cmd.stderr(Stdio::null()),
        };
        if let Ok(guard) = ChildGuard::spawn_with_stdio("sshd -i", cmd)
            && let Ok(mut c) = children.lock()
        {
            // Reap finished sessions so the list stays small.
            c.retain_mut(|g| !g.has_exited());
            c.push(guard);
        }
        drop(stream);
    }
}
