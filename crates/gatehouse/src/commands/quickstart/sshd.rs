//! The quickstart's SSH target: when OpenSSH's `sshd` is installed, a throwaway sshd (its own
//! config and keys under `<dir>/ssh`, listening on a free loopback port) that accepts only the
//! key the gateway holds. A watchdog shell stops sshd if the quickstart dies without cleaning up.
//!
//! The target never shares a trust domain with the gateway ([`Isolation`]): as root, the gateway
//! logs in as a dedicated unprivileged system user (`gatehouse-box`) with its own home, and the
//! quickstart directory is the gateway's alone (0700); as a normal user, every session (and the
//! sftp server) runs in a user, pid, ipc, network and mount namespace where the gateway's
//! directory, `/home`, `/tmp` and `/run` are empty. When neither is possible no target starts.
//!
//! Each quickstart's target trusts its own gateway's key only: the keys file named by its sshd
//! config is the quickstart's own (in its directory as a normal user; as root, in a root-owned
//! directory per quickstart, since all of them share `gatehouse-box`), and the target user
//! cannot write it.

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

/// The account the quickstart's target gives the gateway when the quickstart runs as root.
pub const BOX_USER: &str = "gatehouse-box";
const BOX_HOME: &str = "/var/lib/gatehouse-box";
/// Root's directory of per-quickstart keys files the target trusts (see [`own_authorized_keys`]).
pub const BOX_KEYS: &str = "/var/lib/gatehouse-box-keys";

/// How the SSH target is kept apart from the gateway.
#[derive(Debug, Clone)]
pub enum Isolation {
    /// Running as root: the gateway logs in as this unprivileged system user.
    DedicatedUser {
        /// Account name.
        name: String,
        /// Its home directory.
        home: PathBuf,
    },
    /// Running as a normal user: every session runs through this script (sshd's
    /// `ForceCommand`), which enters a sandbox that cannot see the gateway's directory.
    Sandbox {
        /// The sandbox tool (`bwrap`).
        tool: &'static str,
        /// The sandbox script.
        script: PathBuf,
    },
}

fn first_existing(paths: &[&str]) -> Option<PathBuf> {
    paths.iter().map(PathBuf::from).find(|p| p.exists())
}

/// Single-quotes `s` for sh.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Decides how to isolate the target, creating the dedicated user or the sandbox script.
/// `Err` says why no SSH target can be started safely.
pub fn isolation(dir: &Path) -> Result<Isolation, String> {
    if nix::unistd::geteuid().is_root() {
        dedicated_user().map(|(name, home)| Isolation::DedicatedUser { name, home })
    } else {
        sandbox(dir)
    }
}

fn dedicated_user() -> Result<(String, PathBuf), String> {
    let lookup = || nix::unistd::User::from_name(BOX_USER).ok().flatten();
    let user = match lookup() {
        Some(u) => u,
        None => {
            let useradd = first_existing(&["/usr/sbin/useradd", "/sbin/useradd"])
                .ok_or("`useradd` (package passwd) is not installed, so the target cannot get a user of its own")?;
            // Another quickstart starting at the same time may be creating it (useradd then
            // fails, or cannot lock /etc/passwd): look again, and retry a few times.
            let mut attempt = 0;
            loop {
                let out = Command::new(&useradd)
                    .args([
                        "--system",
                        "--user-group",
                        "--create-home",
                        "--home-dir",
                        BOX_HOME,
                    ])
                    .args([
                        "--shell",
                        "/bin/sh",
                        "--comment",
                        "Gatehouse quickstart SSH target",
                    ])
                    // No password, but not locked: sshd without PAM refuses locked (`!`) accounts.
                    .args(["--password", "*"])
                    .arg(BOX_USER)
                    .stdin(Stdio::null())
                    .output()
                    .map_err(|e| format!("useradd: {e}"))?;
                if let Some(u) = lookup() {
                    break u;
                }
                attempt += 1;
                if out.status.success() || attempt == 5 {
                    return Err(format!(
                        "useradd {BOX_USER} created no user: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    };
    if user.uid.is_root() || user.gid.as_raw() == 0 {
        return Err(format!(
            "the account {BOX_USER} is privileged (uid or gid 0); refusing to use it"
        ));
    }
    let home = user.dir.clone();
    if !home.is_dir() {
        std::fs::create_dir_all(&home).map_err(|e| format!("{}: {e}", home.display()))?;
        nix::unistd::chown(&home, Some(user.uid), Some(user.gid))
            .map_err(|e| format!("chown {}: {e}", home.display()))?;
    }
    set_mode(&home, 0o700).map_err(|e| e.to_string())?;
    Ok((user.name, home))
}

/// Writes the bubblewrap sandbox script and checks that it isolates.
fn sandbox(dir: &Path) -> Result<Isolation, String> {
    let ssh_dir = dir.join("ssh");
    std::fs::create_dir_all(&ssh_dir).map_err(|e| format!("{}: {e}", ssh_dir.display()))?;
    let box_home = dir.join("box-home");
    std::fs::create_dir_all(&box_home).map_err(|e| format!("{}: {e}", box_home.display()))?;
    let script = ssh_dir.join("box-session");
    let d = sh_quote(&dir.display().to_string());
    let h = sh_quote(&box_home.display().to_string());
    // The caller's own home may hold the gateway's directory or other secrets of theirs.
    let own_home = std::env::var("HOME")
        .ok()
        .filter(|h| {
            h.starts_with('/') && h != "/" && !h.starts_with("/home/") && !h.starts_with("/tmp/")
        })
        .map(|h| format!(" --tmpfs {}", sh_quote(&h)))
        .unwrap_or_default();
    let run = "${SSH_ORIGINAL_COMMAND:-exec /bin/sh -l}";
    let header = "#!/bin/sh\n# Written by `gatehouse quickstart`: sshd runs every session of the `box` target through\n\
                  # this script (ForceCommand; sftp too), in its own user, pid, ipc, network and mount\n\
                  # namespaces, where the gateway's directory, /home, /tmp and /run are empty.\n";
    let mut errors = Vec::new();
    if let Some(bwrap) = first_existing(&["/usr/bin/bwrap", "/usr/local/bin/bwrap"]) {
        let args = format!(
            "--unshare-user --unshare-pid --unshare-ipc --unshare-net --unshare-cgroup-try \
             --die-with-parent --ro-bind / / --dev /dev --proc /proc --tmpfs /tmp --tmpfs /var/tmp \
             --tmpfs /run --tmpfs /home{own_home} --tmpfs {d} --bind {h} /home/box \
             --setenv HOME /home/box --chdir /home/box"
        );
        let body = format!(
            "{header}exec {} {args} -- /bin/sh -c \"{run}\"\n",
            sh_quote(&bwrap.display().to_string())
        );
        match install_and_probe(&script, &body, dir) {
            Ok(()) => {
                return Ok(Isolation::Sandbox {
                    tool: "bwrap",
                    script,
                });
            }
            Err(e) => errors.push(format!("bubblewrap: {e}")),
        }
    } else {
        errors.push("bubblewrap (bwrap) is not installed".into());
    }
    let _ = std::fs::remove_file(&script);
    Err(format!(
        "running as a normal user, the SSH target must run in a user and mount namespace that \
         cannot see {}, and none could be made ({}); install bubblewrap (Debian: bubblewrap) and \
         allow unprivileged user namespaces, or run the quickstart as root (the target then gets \
         a user of its own)",
        dir.display(),
        errors.join("; ")
    ))
}

/// Writes the sandbox script and checks, by running it, that the gateway's directory is not
/// visible inside.
fn install_and_probe(script: &Path, body: &str, dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(script, body).map_err(|e| format!("{}: {e}", script.display()))?;
    std::fs::set_permissions(script, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("{}: {e}", script.display()))?;
    let probe = dir.join("ssh").join(".sandbox-probe");
    std::fs::write(&probe, "visible").map_err(|e| e.to_string())?;
    let check = format!(
        "test ! -e {} && test ! -e /proc/1/root{} && echo isolated",
        sh_quote(&probe.display().to_string()),
        sh_quote(&probe.display().to_string()),
    );
    let out = Command::new(script)
        .env("SSH_ORIGINAL_COMMAND", check)
        .stdin(Stdio::null())
        .output();
    let _ = std::fs::remove_file(&probe);
    let out = out.map_err(|e| e.to_string())?;
    if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "isolated" {
        Ok(())
    } else {
        Err(format!(
            "the sandbox did not start or could see the gateway's directory ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Where the target trusts the gateway's key of the quickstart in `dir` as root, and nothing
/// else: `/var/lib/gatehouse-box-keys/<id of dir>/authorized_keys`. sshd reads it as the target
/// user, so it cannot sit in the gateway's directory (0700); it is root's, read-only to
/// others, in root's directories, so neither the target user nor another quickstart can
/// change what a target trusts. Two quickstarts share the user, never the keys file.
fn own_authorized_keys(dir: &Path, client_pub: &str) -> Result<PathBuf, CommandError> {
    let base = Path::new(BOX_KEYS);
    let own = base.join(super::dir_id(dir));
    for d in [base, own.as_path()] {
        root_only_dir(d)?;
    }
    let authorized = own.join("authorized_keys");
    match std::fs::remove_file(&authorized) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(failed(format!("{}: {e}", authorized.display()))),
    }
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&authorized)
            .map_err(|e| failed(format!("{}: {e}", authorized.display())))?;
        f.write_all(client_pub.as_bytes())
            .map_err(|e| failed(format!("{}: {e}", authorized.display())))?;
    }
    // The process umask (077) took the read bits: the target user must read it.
    set_mode(&authorized, 0o644)?;
    Ok(authorized)
}

/// Creates `d` (0755) when missing and checks that it is a real directory that only root owns
/// and writes.
fn root_only_dir(d: &Path) -> Result<(), CommandError> {
    use std::os::unix::fs::MetadataExt as _;
    match std::fs::create_dir(d) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(failed(format!("{}: {e}", d.display()))),
    }
    let meta = std::fs::symlink_metadata(d).map_err(|e| failed(format!("{}: {e}", d.display())))?;
    if !meta.file_type().is_dir() || meta.uid() != 0 {
        return Err(failed(format!(
            "{} is not a directory owned by root; refusing to keep the SSH target's trusted keys there",
            d.display()
        )));
    }
    set_mode(d, 0o755)
}

/// Removes `~gatehouse-box/.ssh/authorized_keys` when an earlier quickstart wrote it (every key
/// in it is a quickstart gateway's): every quickstart's target shared it, and the machine's own
/// sshd would honour it too.
fn forget_shared_authorized_keys(home: &Path) {
    let shared = home.join(".ssh").join("authorized_keys");
    if let Ok(text) = std::fs::read_to_string(&shared) {
        let ours = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .all(|l| l.trim_end().ends_with(" gatehouse-quickstart-gateway"));
        if ours {
            let _ = std::fs::remove_file(&shared);
        }
    }
    // Root's `.ssh` an earlier quickstart made, once empty.
    let _ = std::fs::remove_dir(home.join(".ssh"));
}

fn set_mode(path: &Path, mode: u32) -> Result<(), CommandError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| failed(format!("chmod {}: {e}", path.display())))
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
    /// How the target is kept apart from the gateway.
    pub isolation: Isolation,
    /// The keys file the target trusts, when it lives outside the quickstart directory
    /// (removed, with its directory, when the target stops).
    own_keys: Option<PathBuf>,
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
    /// Starts sshd from `sshd_bin` with keys and config in `<dir>/ssh`, isolated by `isolation`.
    pub fn start(
        dir: &Path,
        sshd_bin: &Path,
        isolation: Isolation,
    ) -> Result<LocalSshd, CommandError> {
        let ssh_dir = dir.join("ssh");
        std::fs::create_dir_all(&ssh_dir)
            .map_err(|e| failed(format!("{}: {e}", ssh_dir.display())))?;
        if nix::unistd::geteuid().is_root() {
            // Privilege separation needs it; Debian creates it only when the service runs.
            std::fs::create_dir_all("/run/sshd").map_err(|e| failed(format!("/run/sshd: {e}")))?;
            set_mode(Path::new("/run/sshd"), 0o755)?;
        }
        let host_key = ssh_dir.join("upstream_host_ed25519");
        let client_key = ssh_dir.join("gateway_to_box_ed25519");
        keygen(&host_key, "gatehouse-quickstart-box")?;
        keygen(&client_key, "gatehouse-quickstart-gateway")?;
        let client_pub = read(&client_key.with_extension("pub"))?;
        let sftp_server = first_existing(&[
            "/usr/lib/openssh/sftp-server",
            "/usr/libexec/openssh/sftp-server",
            "/usr/libexec/sftp-server",
            "/usr/lib/ssh/sftp-server",
        ]);
        // Where sshd finds the gateway's key, who may log in, and what runs a session.
        let (user, authorized, session_lines) = match &isolation {
            Isolation::DedicatedUser { name, home } => {
                forget_shared_authorized_keys(home);
                let authorized = own_authorized_keys(dir, &client_pub)?;
                (
                    name.clone(),
                    authorized,
                    // The keys file and every directory above it are root's and written by
                    // nobody else: sshd checks it (StrictModes) before trusting the key.
                    "PermitRootLogin no\nStrictModes yes\nSubsystem sftp internal-sftp\n"
                        .to_string(),
                )
            }
            Isolation::Sandbox { script, .. } => {
                let authorized = ssh_dir.join("authorized_keys");
                std::fs::write(&authorized, &client_pub)
                    .map_err(|e| failed(format!("{}: {e}", authorized.display())))?;
                let sftp = sftp_server.ok_or_else(|| {
                    failed("OpenSSH's sftp-server is not installed (it runs inside the sandbox)")
                })?;
                let user = nix::unistd::User::from_uid(nix::unistd::geteuid())
                    .ok()
                    .flatten()
                    .map(|u| u.name)
                    .ok_or_else(|| failed("the current user has no name in the user database"))?;
                (
                    user,
                    authorized,
                    format!(
                        "StrictModes no\nForceCommand {}\nSubsystem sftp {}\n",
                        sh_quote(&script.display().to_string()),
                        sftp.display()
                    ),
                )
            }
        };
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
        let a = authorized.display();
        let config = format!(
            "# Written by `gatehouse quickstart`: a throwaway sshd on loopback for the `box` target.\n\
             ListenAddress 127.0.0.1:{port}\n\
             HostKey {d}/upstream_host_ed25519\n\
             PidFile none\n\
             AuthorizedKeysFile {a}\n\
             AllowUsers {user}\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             UsePAM no\n\
             X11Forwarding no\n\
             AllowAgentForwarding no\n\
             AllowStreamLocalForwarding no\n\
             PermitTunnel no\n\
             PermitUserEnvironment no\n\
             PrintMotd no\n\
             AcceptEnv LANG LC_*\n\
             {session_lines}"
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
            own_keys: matches!(isolation, Isolation::DedicatedUser { .. }).then_some(authorized),
            isolation,
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
        self.stop();
        // Nothing trusts this quickstart's key once its target is gone.
        if let Some(keys) = self.own_keys.take() {
            let _ = std::fs::remove_file(&keys);
            if let Some(dir) = keys.parent() {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

impl LocalSshd {
    fn stop(&mut self) {
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
