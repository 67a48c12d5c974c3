//! A throwaway PostgreSQL: `initdb` + `postgres` in a temp dir, one cluster per test binary
//! ([`PgCluster::shared`]), a fresh database per test ([`PgCluster::create_database`]).
//!
//! PostgreSQL refuses to run as root and CI runs as root, so as root every server command goes
//! through `runuser -u postgres` in a temp dir that user owns. On Debian the server binaries live
//! in `/usr/lib/postgresql/<major>/bin`, not on PATH; `GATEHOUSE_PG_BINDIR` overrides the search.
//!
//! Listening: a Unix socket (preferred by tests) and `127.0.0.1:<port>` (for password and TLS
//! tests). Authentication (pg_hba): local trust; TCP `postgres` trust; members of `md5_users` md5;
//! members of `trust_users` trust; everyone else SCRAM-SHA-256. With TLS on, TCP connections may
//! use TLS (or must, with `require_tls`), and the CA certificate is at [`PgCluster::ca_cert_path`].
//!
//! The server runs under a small shell watchdog in its own process group: it is stopped when the
//! cluster is dropped, and — for the shared cluster, which lives in a `static` — as soon as the
//! test process exits, so no server outlives its test binary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::TestkitError;
use crate::process::{ChildGuard, run_with_timeout};

/// Options for a private cluster.
#[derive(Debug, Clone, Default)]
pub struct PgOptions {
    /// Serve TLS on TCP with a fresh CA and server certificate (`localhost`, `127.0.0.1`).
    pub tls: bool,
    /// Refuse non-TLS TCP connections (implies `tls`).
    pub require_tls: bool,
    /// Extra `postgresql.conf` lines.
    pub extra_conf: Vec<String>,
}

/// A running throwaway PostgreSQL cluster.
#[derive(Debug)]
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin_dir: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    ca_cert_path: Option<PathBuf>,
    guard: Option<ChildGuard>,
}

/// A database created for one test.
#[derive(Debug, Clone)]
pub struct TestDb {
    /// Database name.
    pub name: String,
    socket_dir: PathBuf,
    port: u16,
}

static SHARED: OnceLock<PgCluster> = OnceLock::new();
static COUNTER: AtomicU64 = AtomicU64::new(0);

const PSQL_TIMEOUT: Duration = Duration::from_secs(120);

impl PgCluster {
    /// The cluster shared by every test of this test binary, started on first use. Panics with
    /// the reason if PostgreSQL cannot start (missing packages, …): a test that needs a real
    /// database must not silently pass without one.
    pub fn shared() -> &'static PgCluster {
        SHARED.get_or_init(|| {
            match PgCluster::start(PgOptions {
                tls: true,
                ..PgOptions::default()
            }) {
                Ok(cluster) => cluster,
                Err(e) => panic!("cannot start the throwaway PostgreSQL: {e}"),
            }
        })
    }

    /// Starts a private cluster (stopped on drop).
    pub fn start(options: PgOptions) -> Result<PgCluster, TestkitError> {
        let bin_dir = find_bin_dir()?;
        let as_root = crate::running_as_root();
        let mut dir = tempfile::Builder::new().prefix("gatehouse-pg-").tempdir()?;
        set_mode(dir.path(), 0o755)?;
        let data = dir.path().join("data");
        let socket_dir = dir.path().join("sock");
        std::fs::create_dir(&data)?;
        std::fs::create_dir(&socket_dir)?;
        set_mode(&data, 0o700)?;
        set_mode(&socket_dir, 0o755)?;
        if as_root {
            chown_postgres(&data)?;
            chown_postgres(&socket_dir)?;
        }
        let mut initdb = server_command(&bin_dir, "initdb", as_root);
        initdb.args(["-D"]).arg(&data).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        let out = run_with_timeout(initdb, Duration::from_secs(120))?;
        if !out.status.success() {
            return Err(command_error("initdb", &out));
        }
        let tls = options.tls || options.require_tls;
        let mut ca_cert_path = None;
        if tls {
            let files = write_tls_files(dir.path(), &data, as_root)?;
            ca_cert_path = Some(files);
        }
        write_hba(&data, options.require_tls)?;
        let mut last_err = None;
        for _attempt in 0..5 {
            let port = crate::net::ephemeral_port_hint();
            write_conf(&data, &socket_dir, port, tls, &options.extra_conf)?;
            if as_root {
                chown_postgres_recursive(&data)?;
            }
            let guard = spawn_server(&bin_dir, &data, dir.path(), as_root)?;
            let mut cluster = PgCluster {
                dir,
                bin_dir: bin_dir.clone(),
                socket_dir: socket_dir.clone(),
                port,
                ca_cert_path: ca_cert_path.clone(),
                guard: Some(guard),
            };
            match cluster.wait_ready(Duration::from_secs(60)) {
                Ok(()) => {
                    cluster.psql_in(
                        "postgres",
                        "CREATE ROLE md5_users NOLOGIN; CREATE ROLE trust_users NOLOGIN;",
                    )?;
                    return Ok(cluster);
                }
                Err(e) => {
                    last_err = Some(e);
                    if let Some(mut g) = cluster.guard.take() {
                        g.stop(Signal::SIGKILL, Duration::from_secs(2));
                    }
                    // Reuse the directory for the next attempt (a port clash is the usual cause).
                    dir = std::mem::replace(&mut cluster.dir, tempfile::tempdir()?);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| {
            TestkitError::NotReady(
                "postgres".into(),
                Duration::from_secs(60),
                "no attempt".into(),
            )
        }))
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<(), TestkitError> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(g) = self.guard.as_mut()
                && g.has_exited()
            {
                return Err(TestkitError::NotReady(
                    "postgres".into(),
                    limit,
                    self.server_log_tail(),
                ));
            }
            if self.psql_in("postgres", "SELECT 1").is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(TestkitError::NotReady(
                    "postgres".into(),
                    limit,
                    self.server_log_tail(),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last lines of the server log (for error messages).
    pub fn server_log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Directory holding the Unix socket (`.s.PGSQL.<port>`).
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// PEM file of the CA that signed the server certificate (when TLS is on).
    pub fn ca_cert_path(&self) -> Option<&Path> {
        self.ca_cert_path.as_deref()
    }

    /// The directory of the PostgreSQL server binaries in use.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// Process group of the server (for tests that check cleanup).
    pub fn pgid(&self) -> Option<i32> {
        self.guard.as_ref().map(ChildGuard::pgid)
    }

    /// Creates a fresh database named `<prefix>_<n>_<pid>`.
    pub fn create_database(&self, prefix: &str) -> TestDb {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let clean: String = prefix
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(40)
            .collect();
        let name = format!("{clean}_{n}_{}", std::process::id());
        if let Err(e) = self.psql_in("postgres", &format!("CREATE DATABASE \"{name}\"")) {
            panic!("CREATE DATABASE {name}: {e}");
        }
        TestDb {
            name,
            socket_dir: self.socket_dir.clone(),
            port: self.port,
        }
    }

    /// Creates a LOGIN role with a SCRAM-SHA-256 password.
    pub fn create_role(&self, name: &str, password: &str) {
        let sql = format!(
            "SET password_encryption = 'scram-sha-256'; CREATE ROLE \"{name}\" LOGIN PASSWORD '{}'",
            password.replace('\'', "''")
        );
        if let Err(e) = self.psql_in("postgres", &sql) {
            panic!("CREATE ROLE {name}: {e}");
        }
    }

    /// Creates a LOGIN role with an md5 password, authenticated with md5 over TCP.
    pub fn create_md5_role(&self, name: &str, password: &str) {
        let sql = format!(
            "SET password_encryption = 'md5'; CREATE ROLE \"{name}\" LOGIN PASSWORD '{}' IN ROLE md5_users",
            password.replace('\'', "''")
        );
        if let Err(e) = self.psql_in("postgres", &sql) {
            panic!("CREATE ROLE {name}: {e}");
        }
    }

    /// Creates a LOGIN role authenticated with `trust` over TCP.
    pub fn create_trust_role(&self, name: &str) {
        let sql = format!("CREATE ROLE \"{name}\" LOGIN IN ROLE trust_users");
        if let Err(e) = self.psql_in("postgres", &sql) {
            panic!("CREATE ROLE {name}: {e}");
        }
    }

    /// Runs SQL as the superuser in database `db` with `psql -XAtq`; returns stdout (trimmed).
    pub fn psql_in(&self, db: &str, sql: &str) -> Result<String, TestkitError> {
        psql(&self.socket_dir, self.port, db, sql)
    }

    /// Stops the server now (fast shutdown).
    pub fn stop(&mut self) {
        if let Some(mut g) = self.guard.take() {
            g.stop(Signal::SIGINT, Duration::from_secs(20));
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

impl TestDb {
    /// A libpq/tokio-postgres connection string over the Unix socket, as the superuser.
    pub fn conn_str(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname={}",
            self.socket_dir.display(),
            self.port,
            self.name
        )
    }

    /// TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Directory holding the Unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// Runs SQL as the superuser in this database; returns stdout (trimmed).
    pub fn psql(&self, sql: &str) -> Result<String, TestkitError> {
        psql(&self.socket_dir, self.port, &self.name, sql)
    }
}

fn psql(socket_dir: &Path, port: u16, db: &str, sql: &str) -> Result<String, TestkitError> {
    let mut cmd = Command::new(psql_path());
    cmd.arg("-X")
        .args(["-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
        .arg(socket_dir)
        .args([
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-d",
            db,
            "-c",
            sql,
        ])
        .env("PGCONNECT_TIMEOUT", "5")
        .env_remove("PGPASSWORD");
    let out = run_with_timeout(cmd, PSQL_TIMEOUT)?;
    if !out.status.success() {
        return Err(command_error("psql", &out));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The `psql` client: on PATH, or beside the server binaries.
pub fn psql_path() -> PathBuf {
    if let Ok(dir) = find_bin_dir() {
        let p = dir.join("psql");
        if p.exists() {
            return p;
        }
    }
    PathBuf::from("psql")
}

/// Finds the PostgreSQL server binaries (`initdb`, `postgres`).
pub fn find_bin_dir() -> Result<PathBuf, TestkitError> {
    if let Ok(dir) = std::env::var("GATEHOUSE_PG_BINDIR") {
        return Ok(PathBuf::from(dir));
    }
    let mut candidates: Vec<(u32, PathBuf)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        for entry in entries.flatten() {
            let bin = entry.path().join("bin");
            let major = entry
                .file_name()
                .to_string_lossy()
                .parse::<u32>()
                .unwrap_or(0);
            if bin.join("postgres").exists() && bin.join("initdb").exists() {
                candidates.push((major, bin));
            }
        }
    }
    candidates.sort();
    if let Some((_, bin)) = candidates.pop() {
        return Ok(bin);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    Err(TestkitError::Missing(
        "PostgreSQL server (initdb, postgres)".into(),
        "install the postgresql package (.ci/run does) or set GATEHOUSE_PG_BINDIR".into(),
    ))
}

fn server_command(bin_dir: &Path, program: &str, as_root: bool) -> Command {
    if as_root {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"])
            .arg(bin_dir.join(program));
        cmd
    } else {
        Command::new(bin_dir.join(program))
    }
}

fn spawn_server(
    bin_dir: &Path,
    data: &Path,
    dir: &Path,
    as_root: bool,
) -> Result<ChildGuard, TestkitError> {
    // The watchdog: start postgres in the background; when the test process is gone, send SIGINT
    // (fast shutdown) to the whole process group, wait for postgres to exit, then remove the
    // cluster's directory; a stop signal from the test (a private cluster's drop) does the same. The shared cluster lives in a static that is never dropped, and
    // nextest runs every test in its own process: without the removal each test leaked its
    // cluster (46 MB) in the temp directory.
    let run_as = if as_root {
        "runuser -u postgres -- "
    } else {
        ""
    };
    let script = format!(
        "dir=\"$4\"\n\
         cleanup() {{ trap '' INT TERM; kill -INT 0; wait; rm -rf \"$dir\"; exit 0; }}\n\
         trap cleanup INT TERM\n\
         {run_as}\"$1\" -D \"$2\" >> \"$3\" 2>&1 &\n\
         while kill -0 {test_pid} 2>/dev/null; do sleep 0.3; done\n\
         cleanup\n",
        test_pid = std::process::id()
    );
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .arg("gatehouse-pg-watchdog")
        .arg(bin_dir.join("postgres"))
        .arg(data)
        .arg(dir.join("server.log"))
        .arg(dir)
        // The watchdog outlives the test by up to one poll; holding the test's stdout/stderr
        // would make the test runner wait for it (and report the test as leaking a process).
        // postgres writes to its own log file.
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    Ok(ChildGuard::spawn_with_stdio("postgres", cmd)?)
}

fn write_conf(
    data: &Path,
    socket_dir: &Path,
    port: u16,
    tls: bool,
    extra: &[String],
) -> Result<(), TestkitError> {
    let base = data.join("postgresql.conf");
    let mut conf = std::fs::read_to_string(&base)?;
    if let Some(idx) = conf.find("\n# gatehouse-testkit\n") {
        conf.truncate(idx);
    }
    conf.push_str("\n# gatehouse-testkit\n");
    conf.push_str(&format!(
        "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
         max_connections = 200\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n\
         password_encryption = 'scram-sha-256'\nlog_min_messages = warning\n",
        socket_dir.display()
    ));
    if tls {
        conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
    }
    for line in extra {
        conf.push_str(line);
        conf.push('\n');
    }
    std::fs::write(base, conf)?;
    Ok(())
}

fn write_hba(data: &Path, require_tls: bool) -> Result<(), TestkitError> {
    let host = if require_tls { "hostssl" } else { "host" };
    let hba = format!(
        "local all all trust\n\
         {host} all postgres 127.0.0.1/32 trust\n\
         {host} all +trust_users 127.0.0.1/32 trust\n\
         {host} all +md5_users 127.0.0.1/32 md5\n\
         {host} all all 127.0.0.1/32 scram-sha-256\n\
         {host} all all ::1/128 scram-sha-256\n"
    );
    std::fs::write(data.join("pg_hba.conf"), hba)?;
    Ok(())
}

/// Writes a CA and a server certificate; returns the CA certificate path.
fn write_tls_files(dir: &Path, data: &Path, as_root: bool) -> Result<PathBuf, TestkitError> {
    let tls = crate::tls::TestCa::new("Gatehouse test CA");
    let (cert_pem, key_pem) = tls.issue_server(&["localhost", "127.0.0.1"]);
    std::fs::write(data.join("server.crt"), cert_pem)?;
    std::fs::write(data.join("server.key"), key_pem)?;
    set_mode(&data.join("server.key"), 0o600)?;
    if as_root {
        chown_postgres(&data.join("server.crt"))?;
        chown_postgres(&data.join("server.key"))?;
    }
    let ca_path = dir.join("ca.crt");
    std::fs::write(&ca_path, tls.cert_pem())?;
    set_mode(&ca_path, 0o644)?;
    Ok(ca_path)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), TestkitError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn postgres_user() -> Result<nix::unistd::User, TestkitError> {
    nix::unistd::User::from_name("postgres")
        .ok()
        .flatten()
        .ok_or_else(|| {
            TestkitError::Missing(
            "user 'postgres'".into(),
            "running as root needs the postgres system user (the postgresql package creates it)"
                .into(),
        )
        })
}

fn chown_postgres(path: &Path) -> Result<(), TestkitError> {
    let user = postgres_user()?;
    nix::unistd::chown(path, Some(user.uid), Some(user.gid)).map_err(std::io::Error::from)?;
    Ok(())
}

fn chown_postgres_recursive(path: &Path) -> Result<(), TestkitError> {
    chown_postgres(path)?;
    if path.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_postgres_recursive(&entry?.path())?;
        }
    }
    Ok(())
}

fn command_error(program: &str, out: &std::process::Output) -> TestkitError {
    TestkitError::Command {
        program: program.into(),
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    }
}
