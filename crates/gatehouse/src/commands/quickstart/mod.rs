//! `gatehouse quickstart [--dir DIR]`: a complete local demo on a fresh machine — a dev issuer key,
//! a TLS CA and certificate, a throwaway PostgreSQL seeded with a `customers` table (names, emails,
//! card numbers, phone numbers), a policy that denies DROP/TRUNCATE, reviews DELETE and masks PII —
//! and the gateway in the foreground, with ready-to-paste client commands. Re-running re-uses the
//! directory (keys, database, audit log); ctrl-c stops everything and seals the audit log. As
//! root the database lives in a temporary directory, removed on stop (see `postgres_root`).

mod demo_api;
mod files;
mod postgres;
mod sshd;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use super::{CommandError, CommandResult};

/// Arguments of `quickstart`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to keep keys, certificates, the database and the audit log.
    #[arg(long, default_value = "gatehouse-quickstart")]
    pub dir: PathBuf,
    /// Address of the gateway's PostgreSQL listener.
    #[arg(long, default_value = "127.0.0.1:6432")]
    pub pg_listen: SocketAddr,
    /// Address of the admin API (approvals, metrics, token exchange).
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub admin_listen: SocketAddr,
    /// Address of the gateway's HTTPS listener (the `demo-api` target).
    #[arg(long, default_value = "127.0.0.1:8444")]
    pub http_listen: SocketAddr,
    /// Address of the gateway's SSH listener (the `box` target, when sshd is installed).
    #[arg(long, default_value = "127.0.0.1:2222")]
    pub ssh_listen: SocketAddr,
    /// Do not start the SSH target even when sshd is installed.
    #[arg(long)]
    pub no_ssh: bool,
    /// Lifetime of the printed tokens.
    #[arg(long, default_value = "8h")]
    pub token_ttl: String,
}

fn failed(msg: impl Into<String>) -> CommandError {
    CommandError::Failed(msg.into())
}

/// Where the quickstart's PostgreSQL lives: inside the quickstart directory, except as root, where
/// the `postgres` user must be able to reach it (home directories are often private, and the
/// quickstart directory is 0700): there it is a temporary directory, removed on stop.
fn postgres_root(dir: &Path) -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        std::env::temp_dir().join(format!("gatehouse-quickstart-pg-{}", dir_id(dir)))
    } else {
        dir.join("postgres")
    }
}

/// The quickstart's PostgreSQL directory when it is a temporary one (as root, under the temp
/// dir): removed when the quickstart stops — ctrl-c, SIGTERM, or an error after it was created —
/// once the server is down. (A quickstart killed outright cannot clean up; its PostgreSQL
/// watchdog then stops the server and removes the directory.)
struct TempPgRoot(Option<PathBuf>);

impl Drop for TempPgRoot {
    fn drop(&mut self) {
        if let Some(root) = self.0.take()
            && let Err(e) = std::fs::remove_dir_all(&root)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!(
                "gatehouse quickstart: could not remove {}: {e}",
                root.display()
            );
        }
    }
}

/// A short name for a quickstart directory (FNV-1a of its canonical path), for what must live
/// outside it: one quickstart's files never collide with another's.
fn dir_id(dir: &Path) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in dir.as_os_str().as_encoded_bytes() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Makes `dir` and everything in it the gateway's alone: no group or other permission bits
/// (directories 0700, files 0600 at most), also for files an earlier run wrote.
fn make_private(dir: &Path) -> Result<(), CommandError> {
    use std::os::unix::fs::PermissionsExt;
    let meta =
        std::fs::symlink_metadata(dir).map_err(|e| failed(format!("{}: {e}", dir.display())))?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o700))
            .map_err(|e| failed(format!("chmod {}: {e}", dir.display())))?;
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(dir)
            .map_err(|e| failed(format!("{}: {e}", dir.display())))?
            .flatten()
        {
            make_private(&entry.path())?;
        }
    }
    Ok(())
}

/// Runs the command.
pub fn run(args: Args) -> CommandResult {
    let ttl = crate::duration::parse_duration(&args.token_ttl).map_err(CommandError::Usage)?;
    // Everything the gateway writes (keys, secrets, audit log, approvals journal, TLS key) is
    // its own: files 0600, directories 0700, whatever the caller's umask.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| failed(format!("{}: {e}", args.dir.display())))?;
    let dir = args
        .dir
        .canonicalize()
        .map_err(|e| failed(format!("{}: {e}", args.dir.display())))?;
    eprintln!("gatehouse quickstart: setting up in {}", dir.display());
    make_private(&dir)?;

    let pg_root = postgres_root(&dir);
    // Declared before the server, so dropped after it: the directory goes once the server stopped.
    let pg_temporary = nix::unistd::geteuid().is_root();
    let _pg_root_cleanup = TempPgRoot(pg_temporary.then(|| pg_root.clone()));
    std::fs::create_dir_all(&pg_root).map_err(|e| failed(format!("{}: {e}", pg_root.display())))?;
    let pg = postgres::LocalPostgres::start(&pg_root, pg_temporary)?;
    files::seed_database(&dir, &pg)?;
    files::write_tls(&dir)?;
    files::write_policy(&dir)?;
    let runtime = crate::gateway::runtime().map_err(|e| failed(format!("tokio runtime: {e}")))?;
    let api_key = files::demo_api_key(&dir)?;
    let demo_api = runtime.block_on(demo_api::start(api_key))?;
    let sshd = match sshd::find_sshd() {
        Some(bin) if !args.no_ssh => match sshd::isolation(&dir) {
            Ok(isolation) => {
                let sshd = sshd::LocalSshd::start(&dir, &bin, isolation)?;
                match &sshd.isolation {
                    sshd::Isolation::DedicatedUser { name, home } => eprintln!(
                        "gatehouse quickstart: the SSH target `box` logs the gateway in as the \
                         unprivileged user {name} (home {}), which cannot read {}",
                        home.display(),
                        dir.display()
                    ),
                    sshd::Isolation::Sandbox { tool, .. } => eprintln!(
                        "gatehouse quickstart: every session of the SSH target `box` runs in a \
                         {tool} sandbox (user and mount namespaces) that cannot see {}",
                        dir.display()
                    ),
                }
                Some(sshd)
            }
            Err(why) => {
                eprintln!("gatehouse quickstart: no SSH target: {why}");
                None
            }
        },
        Some(_) => None,
        None => {
            eprintln!(
                "gatehouse quickstart: OpenSSH's sshd is not installed, so there is no SSH target \
                 (install openssh-server and run again to get one)"
            );
            None
        }
    };
    let config_path = files::write_config(
        &dir,
        &files::ConfigPorts {
            pg_listen: &args.pg_listen,
            admin_listen: &args.admin_listen,
            http_listen: &args.http_listen,
            ssh_listen: &args.ssh_listen,
            upstream_port: pg.port,
            demo_api,
            sshd: sshd.as_ref(),
        },
    )?;

    let loaded = crate::config::LoadedConfig::load(&config_path)?;
    files::move_old_audit_key(&dir)?;
    let audit = loaded.audit_paths()?;
    let audit_key = {
        use std::os::unix::fs::DirBuilderExt as _;
        if let Some(parent) = audit.signing_key.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|e| failed(format!("{}: {e}", parent.display())))?;
        }
        gatehouse_recorder::CheckpointSigner::load_or_create(&audit.signing_key)
            .map_err(|e| failed(format!("audit signing key: {e}")))?
    };
    let issuer_section = loaded
        .config
        .identity
        .dev_issuer
        .as_ref()
        .ok_or_else(|| failed("quickstart config lacks [identity.dev_issuer]"))?;
    let issuer = gatehouse_identity::DevIssuer::load_or_create(
        &loaded.resolve_path(&issuer_section.key),
        issuer_section.issuer.clone(),
        issuer_section.audience.clone(),
    )
    .map_err(|e| failed(format!("dev issuer: {e}")))?;
    let agent_token = issuer
        .mint("agent-1", &["agents".to_string()], ttl)
        .map_err(|e| failed(format!("minting: {e}")))?;
    let approver_token = issuer
        .mint("alice", &["approvers".to_string()], ttl)
        .map_err(|e| failed(format!("minting: {e}")))?;

    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "gatehouse".into());
    let data_dir = loaded.data_dir();
    runtime.block_on(async move {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let gateway = tokio::spawn(crate::gateway::run(loaded, Some(ready_tx)));
        let bound = match tokio::time::timeout(Duration::from_secs(60), ready_rx).await {
            Ok(Ok(bound)) => bound,
            _ => {
                return match gateway.await {
                    Ok(Err(e)) => Err(e),
                    _ => Err(failed("the gateway did not start")),
                };
            }
        };
        let pg_addr = bound.postgres.first().copied().unwrap_or(args.pg_listen);
        let admin_addr = bound.admin.unwrap_or(args.admin_listen);
        let http_addr = bound.http.first().copied().unwrap_or(args.http_listen);
        let ssh = match bound.ssh.first() {
            Some(s) => Some(write_ssh_client_files(&dir, s)?),
            None => None,
        };
        let approver_env =
            write_approver_env(&dir, admin_addr.port(), &approver_token, &operator_name())?;
        print_instructions(&Instructions {
            exe: &exe,
            dir: &dir,
            data_dir: &data_dir,
            pg_port: pg_addr.port(),
            admin_port: admin_addr.port(),
            http_port: http_addr.port(),
            ssh: ssh.as_ref(),
            agent_token: &agent_token,
            approver_env: &approver_env,
            audit_key: &audit.signing_key,
            audit_public_key: &hex::encode(audit_key.verifying_key().as_bytes()),
            witness: audit.witness_dir.as_deref(),
        });
        match gateway.await {
            Ok(result) => result,
            Err(e) => Err(failed(format!("gateway task: {e}"))),
        }
    })?;
    drop(sshd);
    drop(pg);
    Ok(ExitCode::SUCCESS)
}

/// The name of the user running the quickstart (for the banner), or its uid.
fn operator_name() -> String {
    let uid = nix::unistd::geteuid();
    nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// Writes the approver's credentials (admin URL, CA, token) as a shell file to source, mode 0600
/// in the quickstart directory, so that the printed instructions — which an agent reads — never
/// hold a token that can approve the agent's own held operations.
fn write_approver_env(
    dir: &Path,
    admin_port: u16,
    approver_token: &str,
    operator: &str,
) -> Result<PathBuf, CommandError> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let path = dir.join("approver.env");
    // A fresh file each run (never through a link an earlier run or someone else left).
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(failed(format!("{}: {e}", path.display()))),
    }
    let ca = dir.join("tls").join("ca.crt");
    let body = format!(
        "# Written by `gatehouse quickstart` on each run: the approver's credentials (group\n\
         # `approvers`; they can approve every held operation). Mode 0600, readable by {operator}\n\
         # only. Keep them from the agent: `. {path}` in the approver's own terminal.\n\
         export GATEHOUSE_ADMIN_URL=https://localhost:{admin_port}\n\
         export GATEHOUSE_CA='{ca}'\n\
         export GATEHOUSE_TOKEN='{approver_token}'\n",
        path = path.display(),
        ca = ca.display().to_string().replace('\'', "'\\''"),
    );
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| failed(format!("{}: {e}", path.display())))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| failed(format!("chmod {}: {e}", path.display())))?;
    f.write_all(body.as_bytes())
        .map_err(|e| failed(format!("{}: {e}", path.display())))?;
    Ok(path)
}

/// What an agent needs to reach the SSH target through the gateway.
struct SshClient {
    port: u16,
    known_hosts: PathBuf,
    askpass: PathBuf,
    fingerprint: String,
}

/// A known_hosts file pinning the gateway's SSH host key, and an askpass script that hands
/// `$GATEHOUSE_KEY` (a gateway key from `gatehouse login`) to ssh as the password.
fn write_ssh_client_files(
    dir: &Path,
    bound: &crate::listeners::ssh::SshBound,
) -> Result<SshClient, CommandError> {
    use std::os::unix::fs::PermissionsExt;
    let ssh_dir = dir.join("ssh");
    std::fs::create_dir_all(&ssh_dir).map_err(|e| failed(e.to_string()))?;
    let port = bound.addr.port();
    let known_hosts = ssh_dir.join("gateway_known_hosts");
    let key = bound.public_key.trim();
    std::fs::write(
        &known_hosts,
        format!("[localhost]:{port} {key}\n[127.0.0.1]:{port} {key}\n"),
    )
    .map_err(|e| failed(format!("{}: {e}", known_hosts.display())))?;
    let askpass = ssh_dir.join("askpass");
    std::fs::write(
        &askpass,
        "#!/bin/sh\n# ssh asks for a password: hand it the gateway key from `gatehouse login`.\n\
         if [ -z \"$GATEHOUSE_KEY\" ]; then echo 'askpass: GATEHOUSE_KEY is not set (run gatehouse login)' >&2; exit 1; fi\n\
         printf '%s\\n' \"$GATEHOUSE_KEY\"\n",
    )
    .map_err(|e| failed(format!("{}: {e}", askpass.display())))?;
    std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| failed(format!("{}: {e}", askpass.display())))?;
    Ok(SshClient {
        port,
        known_hosts,
        askpass,
        fingerprint: bound.fingerprint.clone(),
    })
}

struct Instructions<'a> {
    exe: &'a str,
    dir: &'a Path,
    data_dir: &'a Path,
    pg_port: u16,
    admin_port: u16,
    http_port: u16,
    ssh: Option<&'a SshClient>,
    agent_token: &'a str,
    approver_env: &'a Path,
    audit_key: &'a Path,
    audit_public_key: &'a str,
    witness: Option<&'a Path>,
}

fn print_instructions(i: &Instructions<'_>) {
    let ca = i.dir.join("tls").join("ca.crt");
    let evidence = i.dir.join("evidence");
    let (pg_port, admin_port, http_port, exe) = (i.pg_port, i.admin_port, i.http_port, i.exe);
    let data = i.data_dir.display();
    let witness = i
        .witness
        .map(|w| format!(" --witness {}", w.display()))
        .unwrap_or_default();
    let mut lines = vec![
        String::new(),
        "Gatehouse quickstart is running (ctrl-c to stop).".to_string(),
        format!("PostgreSQL target `demo` is behind the gateway on 127.0.0.1:{pg_port} (TLS; the agent never sees the"),
        format!("database password). Audit log: {data}"),
        String::new(),
        "1. As the agent (group `agents`), paste:".to_string(),
        String::new(),
        format!(
            "PGPASSWORD='{}' psql \"host=localhost port={pg_port} dbname=demo user=agent sslmode=verify-full sslrootcert={}\"",
            i.agent_token,
            ca.display()
        ),
        String::new(),
        "   then try:".to_string(),
        "     SELECT * FROM customers;             -- email, card_number and phone come back masked".to_string(),
        "     DROP TABLE customers;                -- denied by rule `no-drop` (SQLSTATE 42501)".to_string(),
        "     DELETE FROM customers WHERE id = 3;  -- waits for a human approval".to_string(),
        "     DO $$ BEGIN DELETE FROM customers; END $$;  -- opaque (code the gateway cannot see".to_string(),
        "                                          -- into): waits for a human approval too".to_string(),
        String::new(),
        "   The HTTP target `demo-api` (a JSON API holding users; only the gateway has its API key):".to_string(),
        String::new(),
        format!(
            "curl --cacert {} -H 'Authorization: Bearer {}' https://localhost:{http_port}/demo-api/users",
            ca.display(),
            i.agent_token
        ),
        String::new(),
        "   e-mail, card and phone fields come back masked; `curl -X DELETE …/demo-api/users/3` answers".to_string(),
        "   409 with an approval id — approve it (step 2), then repeat the DELETE.".to_string(),
        String::new(),
    ];
    if let Some(ssh) = i.ssh {
        lines.extend([
            format!(
                "   The SSH target `box` (sshd on this machine; host key {}). Log in with a gateway key:",
                ssh.fingerprint
            ),
            String::new(),
            format!(
                "export GATEHOUSE_KEY=$(GATEHOUSE_ADMIN_URL=https://localhost:{admin_port} GATEHOUSE_CA={} GATEHOUSE_TOKEN='{}' {exe} login)",
                ca.display(),
                i.agent_token
            ),
            format!(
                "SSH_ASKPASS={} SSH_ASKPASS_REQUIRE=force ssh -p {} -o UserKnownHostsFile={} -o PreferredAuthentications=keyboard-interactive,password box@localhost 'uname -n'",
                ssh.askpass.display(),
                ssh.port,
                ssh.known_hosts.display()
            ),
            String::new(),
            "   `rm -rf /tmp/x` (in any spelling rm reads as -r) is denied (exit 126); `systemctl restart cron`,".to_string(),
            "   commands outside the inspection allow-list, what the gateway cannot see into (`python3 -c …`,".to_string(),
            "   `find -exec`) wait for an approval; interactive shells, sftp/scp and port forwards are refused.".to_string(),
            String::new(),
        ]);
    }
    lines.extend([
        "2. As the approver (group `approvers`), in another terminal. The approver's token is not".to_string(),
        format!(
            "   printed here, where an agent reads: it is in {} (mode 0600, this user's alone):",
            i.approver_env.display()
        ),
        String::new(),
        format!(". {}", i.approver_env.display()),
        format!("{exe} approvals list"),
        format!("{exe} approvals approve <ID> --reason \"checked with the data owner\""),
        String::new(),
        "3. Check the audit trail (exit 0: sealed after ctrl-c; 3 while running: the records after the".to_string(),
        "   last signed checkpoint are unsigned; 1: tampered):".to_string(),
        String::new(),
        format!("{exe} audit verify {data}{witness} --key {}", i.audit_public_key),
        format!(
            "{exe} evidence export --dir {data}{witness} --key {} --out {}",
            i.audit_key.display(),
            evidence.display()
        ),
        format!(
            "{exe} evidence verify {} --key {}",
            evidence.display(),
            i.audit_public_key
        ),
    ]);
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for line in lines {
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
}
