//! The quickstart's SSH target: when OpenSSH's `sshd` is installed, a throwaway sshd (its own
//! config and keys under `<dir>/ssh`, listening on a free loopback port) that accepts only the
//! key the gateway holds. The caller's login is the current user. A watchdog shell stops sshd if
//! the quickstart dies without cleaning up.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::commands::CommandError;

fn failed(msg: impl Into<String>) -> CommandError {
    CommandError::Failed(msg.into())
}

/// `sshd`'s absolute path, when installed (sshd refuses to run from a relative path).
pub fn find_sshd() -> Option<PathBuf> {
    ["/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// A running quickstart sshd; stopped on drop.
pub struct LocalSshd {
    child: Option<Child>,
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// The account the gateway logs in as.
    pub user: String,
    /// The gateway's private key for this host (relative to the quickstart dir).
    pub client_key: PathBuf,
    /// A known_hosts file pinning this sshd's host key (relative to the quickstart dir).
    pub known_hosts: PathBuf,
}

fn keygen(path: &Path, comment: &str) -> Result<(), CommandError> {
    if path.exists() {
        return Ok(());
    }
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| failed(format!("ssh-keygen (from openssh-client): {e}")))?;
    if !out.status.success() {
        return Err(failed(format!(
            "ssh-keygen: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn read(path: &Path) -> Result<String, CommandError> {
    std::fs::read_to_string(path).map_err(|e| failed(format!("{}: {e}", path.display())))
}

impl LocalSshd {
    /// Starts sshd from `sshd_bin` with keys and config in `<dir>/ssh`.
    pub fn start(dir: &Path, sshd_bin: &Path) -> Result<LocalSshd, CommandError> {
        let ssh_dir = dir.join("ssh");
        std::fs::create_dir_all(&ssh_dir)
            .map_err(|e| failed(format!("{}: {e}", ssh_dir.display())))?;
        if nix::unistd::geteuid().is_root() {
            // Privilege separation needs it; Debian creates it only when the service runs.
            std::fs::create_dir_all("/run/sshd").map_err(|e| failed(format!("/run/sshd: {e}")))?;
        }
        let host_key = ssh_dir.join("upstream_host_ed25519");
        let client_key = ssh_dir.join("gateway_to_box_ed25519");
        keygen(&host_key, "gatehouse-quickstart-box")?;
        keygen(&client_key, "gatehouse-quickstart-gateway")?;
        let authorized = ssh_dir.join("authorized_keys");
        std::fs::write(&authorized, read(&client_key.with_extension("pub"))?)
            .map_err(|e| failed(format!("{}: {e}", authorized.display())))?;
        let user = nix::unistd::User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| "root".into());
        let port = {
            let l =
                std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| failed(e.to_string()))?;
            l.local_addr().map_err(|e| failed(e.to_string()))?.port()
        };
        let known_hosts = ssh_dir.join("upstream_known_hosts");
        let host_pub = read(&host_key.with_extension("pub"))?;
        let mut fields = host_pub.split_whitespace();
        let (Some(kind), Some(key)) = (fields.next(), fields.next()) else {
            return Err(failed(format!(
                "{}: not an OpenSSH public key",
                host_key.display()
            )));
        };
        std::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {kind} {key}\n"))
            .map_err(|e| failed(format!("{}: {e}", known_hosts.display())))?;
        let d = ssh_dir.display();
        let config = format!(
            "# Written by `gatehouse quickstart`: a throwaway sshd on loopback for the `box` target.\n\
             ListenAddress 127.0.0.1:{port}\n\
             HostKey {d}/upstream_host_ed25519\n\
             PidFile none\n\
             AuthorizedKeysFile {d}/authorized_keys\n\
             AllowUsers {user}\n\
             StrictModes no\n\
             PermitRootLogin prohibit-password\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             UsePAM no\n\
             X11Forwarding no\n\
             PrintMotd no\n\
             AcceptEnv LANG LC_*\n\
             Subsystem sftp internal-sftp\n"
        );
        let config_path = ssh_dir.join("sshd_config");
        std::fs::write(&config_path, config)
            .map_err(|e| failed(format!("{}: {e}", config_path.display())))?;
        let check = Command::new(sshd_bin)
            .arg("-t")
            .arg("-f")
            .arg(&config_path)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| failed(format!("sshd -t: {e}")))?;
        if !check.status.success() {
            return Err(failed(format!(
                "sshd rejected the quickstart config: {}",
                String::from_utf8_lossy(&check.stderr).trim()
            )));
        }
        let log_path = ssh_dir.join("sshd.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| failed(e.to_string()))?;
        let log2 = log.try_clone().map_err(|e| failed(e.to_string()))?;
        let script = format!(
            "\"$1\" -D -e -f \"$2\" &\n\
             while kill -0 {parent} 2>/dev/null; do sleep 0.5; done\n\
             kill -TERM 0\n",
            parent = std::process::id()
        );
        let child = {
            use std::os::unix::process::CommandExt;
            Command::new("sh")
                .arg("-c")
                .arg(script)
                .arg("gatehouse-quickstart-sshd")
                .arg(sshd_bin)
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log2)
                .process_group(0)
                .spawn()
                .map_err(|e| failed(format!("starting sshd: {e}")))?
        };
        let mut sshd = LocalSshd {
            child: Some(child),
            port,
            user,
            client_key: PathBuf::from("ssh/gateway_to_box_ed25519"),
            known_hosts: PathBuf::from("ssh/upstream_known_hosts"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(sshd);
            }
            if let Some(c) = sshd.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                return Err(failed(format!(
                    "sshd exited ({status}); see {}",
                    log_path.display()
                )));
            }
            if Instant::now() > deadline {
                return Err(failed(format!(
                    "sshd did not listen within 20 s; see {}",
                    log_path.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for LocalSshd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pgid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
        }
    }
}
