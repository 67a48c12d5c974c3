//! The quickstart's own PostgreSQL: a persistent cluster under the quickstart directory (re-used on
//! the next run), listening on 127.0.0.1 only with SCRAM passwords. PostgreSQL refuses to run as
//! root, so as root the server runs as the `postgres` user (`runuser`) in a directory it owns.
//!
//! No local user other than the gateway's reaches it: the socket directory is 0700, the
//! superuser logs in over the socket by peer authentication mapped from the gateway's user only,
//! and TCP accepts only the gateway's role with its SCRAM password (no `trust` anywhere).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::commands::CommandError;

fn failed(msg: impl Into<String>) -> CommandError {
    CommandError::Failed(msg.into())
}

/// A running quickstart PostgreSQL; stopped (fast shutdown) on drop.
pub struct LocalPostgres {
    child: Option<Child>,
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// Directory of the Unix socket (superuser access for setup).
    pub socket_dir: PathBuf,
    bin_dir: PathBuf,
    /// The cluster's data directory (its `postmaster.pid` says whether the server still runs).
    data: PathBuf,
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Finds `initdb`/`postgres`: `/usr/lib/postgresql/<major>/bin` (Debian), `pg_config`, or PATH.
pub fn find_bin_dir() -> Result<PathBuf, CommandError> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let bin = e.path().join("bin");
            let major = e.file_name().to_string_lossy().parse().unwrap_or(0);
            bin.join("initdb").exists().then_some((major, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return Ok(bin);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    Err(failed(
        "PostgreSQL server binaries (initdb, postgres) not found: install the `postgresql` package \
         (e.g. `apt-get install -y postgresql`)",
    ))
}

/// On a fresh Debian machine, as root, installs the PostgreSQL server package (the quickstart's
/// one system dependency) and says so; otherwise explains what to install.
fn install_postgres() -> Result<(), CommandError> {
    let apt = Path::new("/usr/bin/apt-get");
    if !is_root() || !apt.exists() {
        return Err(failed(
            "PostgreSQL server binaries (initdb, postgres) not found: install the `postgresql` package \
             (e.g. `sudo apt-get install -y postgresql`) and run the quickstart again",
        ));
    }
    eprintln!(
        "gatehouse quickstart: PostgreSQL is not installed; installing it: apt-get install -y postgresql"
    );
    let run = |args: &[&str]| {
        Command::new(apt)
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .status()
            .map_err(|e| failed(format!("apt-get: {e}")))
    };
    let updated = run(&["update", "-q"])?;
    let installed = run(&[
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "postgresql",
    ])?;
    if !updated.success() || !installed.success() {
        return Err(failed(
            "installing PostgreSQL with apt-get failed (see above)",
        ));
    }
    Ok(())
}

fn as_server_user(bin: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

fn chown_to_postgres(path: &Path) -> Result<(), CommandError> {
    if !is_root() {
        return Ok(());
    }
    let user = nix::unistd::User::from_name("postgres")
        .ok()
        .flatten()
        .ok_or_else(|| {
            failed("running as root needs the `postgres` system user (from the postgresql package)")
        })?;
    let walk = |p: &Path| nix::unistd::chown(p, Some(user.uid), Some(user.gid));
    walk(path).map_err(|e| failed(format!("chown {}: {e}", path.display())))?;
    if path.is_dir() {
        for entry in std::fs::read_dir(path)
            .map_err(|e| failed(e.to_string()))?
            .flatten()
        {
            chown_to_postgres(&entry.path())?;
        }
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<(), CommandError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| failed(format!("chmod {}: {e}", path.display())))
}

/// `pg_hba.conf` and `pg_ident.conf`, rewritten on every start (an older quickstart trusted
/// every local connection): the superuser only by peer authentication from the gateway's own
/// user, the gateway's role only with its SCRAM password over loopback, nothing else.
fn write_auth_config(data: &Path) -> Result<(), CommandError> {
    let me = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .ok_or_else(|| failed("the current user has no name in the user database"))?;
    let hba = "# Written by `gatehouse quickstart` on every start.\n\
               local all postgres peer map=gateway\n\
               host all gatehouse_app 127.0.0.1/32 scram-sha-256\n\
               host all gatehouse_app ::1/128 scram-sha-256\n";
    let ident =
        format!("# Written by `gatehouse quickstart` on every start.\ngateway {me} postgres\n");
    for (name, body) in [("pg_hba.conf", hba.to_string()), ("pg_ident.conf", ident)] {
        let path = data.join(name);
        std::fs::write(&path, body).map_err(|e| failed(format!("{}: {e}", path.display())))?;
        set_mode(&path, 0o600)?;
    }
    Ok(())
}

impl LocalPostgres {
    /// Starts (initialising on first use) the cluster in `root`. A `temporary` root is removed
    /// by the watchdog once the server stopped, should this process die without cleaning up.
    pub fn start(root: &Path, temporary: bool) -> Result<LocalPostgres, CommandError> {
        let bin_dir = match find_bin_dir() {
            Ok(dir) => dir,
            Err(e) => {
                install_postgres()?;
                find_bin_dir().map_err(|_| e)?
            }
        };
        let data = root.join("data");
        let socket_dir = root.join("sock");
        std::fs::create_dir_all(&socket_dir).map_err(|e| failed(e.to_string()))?;
        // The server user (as root: `postgres`) must traverse `root`; nobody else needs to list it.
        set_mode(root, if is_root() { 0o711 } else { 0o700 })?;
        set_mode(&socket_dir, 0o700)?;
        if !data.join("PG_VERSION").exists() {
            std::fs::create_dir_all(&data).map_err(|e| failed(e.to_string()))?;
            set_mode(&data, 0o700)?;
            chown_to_postgres(&data)?;
            let out = as_server_user(&bin_dir.join("initdb"))
                .arg("-D")
                .arg(&data)
                .args([
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ])
                .stdin(Stdio::null())
                .output()
                .map_err(|e| failed(format!("initdb: {e}")))?;
            if !out.status.success() {
                return Err(failed(format!(
                    "initdb failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                )));
            }
        }
        write_auth_config(&data)?;
        chown_to_postgres(&socket_dir)?;
        chown_to_postgres(&data)?;
        let port = {
            let l =
                std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| failed(e.to_string()))?;
            l.local_addr().map_err(|e| failed(e.to_string()))?.port()
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(root.join("server.log"))
            .map_err(|e| failed(e.to_string()))?;
        let log2 = log.try_clone().map_err(|e| failed(e.to_string()))?;
        // A small watchdog shell owns the server: if this process dies without cleaning up (even
        // SIGKILL), the server is stopped too instead of lingering, and a temporary root is
        // removed once it has stopped. (When this process stops it, the shell ends at once and
        // the caller removes the root.)
        let run_as = if is_root() {
            "runuser -u postgres -- "
        } else {
            ""
        };
        let cleanup = if temporary {
            "trap '' INT\nkill -INT 0\nwait \"$server\"\nrm -rf -- \"$4\"\n"
        } else {
            "kill -INT 0\n"
        };
        let script = format!(
            "{run_as}\"$1\" -D \"$2\" -c listen_addresses=127.0.0.1 -c port={port} \
             -c unix_socket_directories=\"$3\" -c password_encryption=scram-sha-256 &\n\
             server=$!\n\
             while kill -0 {parent} 2>/dev/null; do sleep 0.5; done\n\
             {cleanup}",
            parent = std::process::id()
        );
        let child = {
            use std::os::unix::process::CommandExt;
            Command::new("sh")
                .arg("-c")
                .arg(script)
                .arg("gatehouse-quickstart-postgres")
                .arg(bin_dir.join("postgres"))
                .arg(&data)
                .arg(&socket_dir)
                .arg(root)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log2)
                .process_group(0)
                .spawn()
                .map_err(|e| failed(format!("starting postgres: {e}")))?
        };
        let mut pg = LocalPostgres {
            child: Some(child),
            port,
            socket_dir,
            bin_dir,
            data: data.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if pg.psql("postgres", "SELECT 1").is_ok() {
                return Ok(pg);
            }
            if let Some(c) = pg.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                let log = std::fs::read_to_string(root.join("server.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(10).collect();
                return Err(failed(format!(
                    "postgres exited ({status}):\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )));
            }
            if Instant::now() > deadline {
                return Err(failed("postgres did not become ready within 60 s"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs SQL as the superuser over the Unix socket.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, CommandError> {
        let psql = if self.bin_dir.join("psql").exists() {
            self.bin_dir.join("psql")
        } else {
            PathBuf::from("psql")
        };
        let out = Command::new(psql)
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.socket_dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-c",
                sql,
            ])
            .env("PGCONNECT_TIMEOUT", "5")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| failed(format!("psql: {e}")))?;
        if !out.status.success() {
            return Err(failed(format!(
                "psql: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pgid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGINT);
            let deadline = Instant::now() + Duration::from_secs(20);
            // The watchdog shell ends at once; the server has stopped when it has removed its
            // `postmaster.pid` (so its directory can be removed after this).
            let pid_file = self.data.join("postmaster.pid");
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) && !pid_file.exists() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
        }
    }
}
