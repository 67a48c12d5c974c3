//! The quickstart's files: seeded database, TLS material, policy and config. Existing keys,
//! certificates, passwords and policy are kept on re-runs; the config is rewritten (ports change).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::postgres::LocalPostgres;
use crate::commands::CommandError;

fn failed(msg: impl Into<String>) -> CommandError {
    CommandError::Failed(msg.into())
}

fn write_private(path: &Path, contents: &str) -> Result<(), CommandError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| failed(format!("{}: {e}", path.display())))?;
    f.write_all(contents.as_bytes())
        .map_err(|e| failed(format!("{}: {e}", path.display())))
}

fn random_hex(bytes: usize) -> Result<String, CommandError> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
        .map_err(|e| failed(format!("/dev/urandom: {e}")))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

const SEED: &str = "
CREATE TABLE IF NOT EXISTS customers (
    id          integer PRIMARY KEY,
    name        text NOT NULL,
    email       text NOT NULL,
    card_number text NOT NULL,
    phone       text NOT NULL,
    notes       text
);
INSERT INTO customers VALUES
  (1, 'Ada Lovelace',   'ada@example.com',      '4111 1111 1111 1111', '+44 20 7946 0958', 'prefers email'),
  (2, 'Grace Hopper',   'grace@example.org',    '5500 0000 0000 0004', '+1 202 555 0143',  'card on file: 4012 8888 8888 1881'),
  (3, 'Alan Turing',    'alan@example.net',     '3400 000000 00009',   '+44 161 496 0123', 'VIP'),
  (4, 'Katherine Johnson', 'kj@example.com',    '6011 0000 0000 0004', '+1 757 555 0199',  'call after 5pm'),
  (5, 'Linus Torvalds', 'linus@example.fi',     '3530 1113 3330 0000', '+358 40 123 4567', 'reach me at linus.t@example.fi')
ON CONFLICT (id) DO NOTHING;
";

/// Creates the `demo` database, the gateway's role (its password kept in
/// `secrets/demo-db-password`, readable only by the owner) and the seeded `customers` table.
pub fn seed_database(dir: &Path, pg: &LocalPostgres) -> Result<String, CommandError> {
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets).map_err(|e| failed(e.to_string()))?;
    let pw_path = secrets.join("demo-db-password");
    let password = match std::fs::read_to_string(&pw_path) {
        Ok(p) if !p.trim().is_empty() => p.trim().to_string(),
        _ => {
            let p = random_hex(24)?;
            write_private(&pw_path, &p)?;
            p
        }
    };
    if pg.psql(
        "postgres",
        "SELECT 1 FROM pg_database WHERE datname = 'demo'",
    )? != "1"
    {
        pg.psql("postgres", "CREATE DATABASE demo")?;
    }
    let role_exists = pg.psql(
        "postgres",
        "SELECT 1 FROM pg_roles WHERE rolname = 'gatehouse_app'",
    )? == "1";
    let verb = if role_exists { "ALTER" } else { "CREATE" };
    pg.psql(
        "postgres",
        &format!("{verb} ROLE gatehouse_app LOGIN PASSWORD '{password}'"),
    )?;
    // A backstop for locks the policy lets through (an approved LOCK, the row locks of an
    // UPDATE or SELECT … FOR UPDATE): a transaction the agent leaves open ends after 15
    // minutes, longer than a review waits (10 minutes), so a held statement is not cut off.
    pg.psql(
        "postgres",
        "ALTER ROLE gatehouse_app SET idle_in_transaction_session_timeout = '15min'",
    )?;
    pg.psql("demo", SEED)?;
    pg.psql(
        "demo",
        "GRANT ALL ON ALL TABLES IN SCHEMA public TO gatehouse_app; GRANT CREATE, USAGE ON SCHEMA public TO gatehouse_app",
    )?;
    Ok(password)
}

/// A CA and a server certificate for `localhost` / `127.0.0.1` in `tls/`.
pub fn write_tls(dir: &Path) -> Result<(), CommandError> {
    let tls = dir.join("tls");
    if tls.join("server.key").exists() && tls.join("ca.crt").exists() {
        return Ok(());
    }
    std::fs::create_dir_all(&tls).map_err(|e| failed(e.to_string()))?;
    let err = |e: rcgen::Error| failed(format!("certificate: {e}"));
    let ca_key = rcgen::KeyPair::generate().map_err(err)?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Gatehouse quickstart CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(err)?;
    let ca_pem = ca_cert.pem();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).map_err(err)?;
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress(std::net::IpAddr::from([
            127, 0, 0, 1,
        ])));
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer).map_err(err)?;
    std::fs::write(tls.join("ca.crt"), ca_pem).map_err(|e| failed(e.to_string()))?;
    std::fs::write(tls.join("server.crt"), cert.pem()).map_err(|e| failed(e.to_string()))?;
    write_private(&tls.join("server.key"), &key.serialize_pem())
}

const POLICY: &str = r#"# Quickstart policy (written by `gatehouse quickstart`; edit freely, then send SIGHUP to reload).
# Rules are ordered: the first rule that matches a statement decides it; the strictest statement
# of a multi-statement string decides the whole string.

[defaults]
default = "allow"
# What the gateway cannot see into (a DO block, a function it cannot vet, `sh -c "$X"`,
# `python3 -c …`, `find -exec`, an interactive shell, …) is held for a human, never allowed by
# the default. See docs/policy.md, "Opaque operations".
opaque = "review"
masking = "pii"
review = { approvers = ["approvers"], approvals = 1, timeout = "10m" }

# The SSH target `box`: commands outside the allow-list below wait for an approval.
[[targets]]
name = "box"
default = "review"

[[rules]]
id = "no-drop"
reason = "DROP and TRUNCATE are forbidden on the demo database"
verdict = "deny"
sql = { kinds = ["drop", "truncate"] }

[[rules]]
id = "review-delete"
reason = "DELETE needs a human approval"
verdict = "review"
approvers = ["approvers"]
approvals = 1
timeout = "10m"
sql = { kinds = ["delete"] }

# An explicit lock (`LOCK TABLE`, in any mode) held in an open transaction blocks every other
# session's reads or writes of the table for as long as the agent keeps it: a human decides.
[[rules]]
id = "review-lock"
reason = "an explicit table lock can block every other session; it needs a human approval"
verdict = "review"
approvers = ["approvers"]
approvals = 1
timeout = "10m"
sql = { kinds = ["lock"] }

# The HTTP target `demo-api`: JSON responses are masked by the `pii` profile (e-mail, card and
# phone fields, and card numbers in free text); deleting a user needs a human approval.
[[rules]]
id = "review-api-delete"
reason = "deleting through the API needs a human approval"
verdict = "review"
approvers = ["approvers"]
approvals = 1
timeout = "10m"
# The agent's DELETE answers 409 with the approval id; once approved, the same DELETE from the
# same agent goes through within this window.
grant_window = "10m"
http = { methods = ["DELETE"] }

# The SSH target `box`. Commands are read as the programs read them (`rm --recur`, `rm -dr`,
# `env rm -rf`, `timeout 5 rm -rf` are all `rm -r`). A deny rule is still a tripwire, not a
# boundary: the boundary is the allow-list below, with everything else reviewed.
[[rules]]
id = "no-rm-rf"
reason = "recursive deletes are forbidden on the demo host"
verdict = "deny"
exec = { program = ["rm"], options = ["-r"] }

[[rules]]
id = "review-systemctl"
reason = "service changes need a human approval"
verdict = "review"
approvers = ["approvers"]
approvals = 1
timeout = "10m"
exec = { program = ["systemctl"] }

# Allow-listed readers can still cut output into pieces the masking cannot recognise (a card
# number a few bytes at a time): those options wait for an approval, in any spelling.
[[rules]]
id = "review-slicing-bytes"
reason = "output cut into byte ranges can carry data past the masking; it needs a human approval"
verdict = "review"
approvers = ["approvers"]
approvals = 1
timeout = "10m"
targets = ["box"]
exec = { program = ["head", "tail"], options = ["-c"] }

[[rules]]
id = "review-slicing-matches"
reason = "printing only the matched parts can carry data past the masking; it needs a human approval"
verdict = "review"
approvers = ["approvers"]
approvals = 1
timeout = "10m"
targets = ["box"]
exec = { program = ["grep"], options = ["-o"] }

[[rules]]
id = "review-escaping"
reason = "escaped output can carry data past the masking; it needs a human approval"
verdict = "review"
approvers = ["approvers"]
approvals = 1
timeout = "10m"
targets = ["box"]
exec = { program = ["cat"], options = ["-A", "-v", "-e", "-t", "-T"] }

[[rules]]
id = "review-decorated"
reason = "colour codes and hyperlinks split values so that the masking cannot recognise them; they need a human approval"
verdict = "review"
approvers = ["approvers"]
approvals = 1
timeout = "10m"
targets = ["box"]
exec = { program = ["grep", "ls"], options = ["--color", "--colour", "--hyperlink"] }

[[rules]]
id = "box-inspect"
reason = "read-only inspection of the demo host"
verdict = "allow"
targets = ["box"]
exec = { program = ["uname", "hostname", "uptime", "whoami", "id", "date", "echo", "ls", "df", "free", "ps", "cat", "head", "wc", "grep"] }
# `tail` is left out: its obsolete forms (`tail +58c`, `tail -3b`) slice bytes under spellings no
# option rule names, so every `tail` waits for an approval.
# Deliberately absent: transforms that turn content into a form the output masking cannot
# recognise (`rev`, `base64`, `base32`, `od`, `xxd`, `hexdump`, `cut`, `tr`, `sed`, `awk`, …).
# They wait for an approval like any other command outside the list. Masking hides values, not
# whether a file matches a pattern: `grep`'s exit status and counts answer that for any pattern
# the agent picks. Remove `grep` from the list where that matters.

# ---- SSH channels --------------------------------------------------------------------------
# A shell, sftp/scp, rsync, git, port forwards (`ssh -L`/`-D`) and env requests are refused
# unless a rule names them, whatever `default` says; `ssh -R`, `-A` and X11 always are. To let
# the `agents` group use sftp (and scp), uncomment (more in examples/ssh/policy.toml):
# [[rules]]
# id = "agents-sftp"
# reason = "agents may copy files over sftp"
# verdict = "allow"
# groups = ["agents"]
# ssh = { channels = ["subsystem"], subsystems = ["sftp"] }
"#;

/// Writes `policy.toml` unless it exists.
pub fn write_policy(dir: &Path) -> Result<(), CommandError> {
    let path = dir.join("policy.toml");
    if !path.exists() {
        std::fs::write(&path, POLICY).map_err(|e| failed(format!("{}: {e}", path.display())))?;
    }
    Ok(())
}

/// Writes `gatehouse.toml` for this run and returns its path.
/// The listeners and upstreams a quickstart config wires together.
pub struct ConfigPorts<'a> {
    /// The gateway's PostgreSQL listener.
    pub pg_listen: &'a SocketAddr,
    /// The admin API.
    pub admin_listen: &'a SocketAddr,
    /// The gateway's HTTP listener.
    pub http_listen: &'a SocketAddr,
    /// The gateway's SSH listener (when sshd is installed).
    pub ssh_listen: &'a SocketAddr,
    /// The quickstart PostgreSQL's port.
    pub upstream_port: u16,
    /// The demo API's address.
    pub demo_api: SocketAddr,
    /// The quickstart sshd, when running.
    pub sshd: Option<&'a super::sshd::LocalSshd>,
}

/// The demo API's key (kept in `secrets/demo-api-key`): only the gateway holds it.
pub fn demo_api_key(dir: &Path) -> Result<String, CommandError> {
    let path = dir.join("secrets").join("demo-api-key");
    std::fs::create_dir_all(dir.join("secrets")).map_err(|e| failed(e.to_string()))?;
    match std::fs::read_to_string(&path) {
        Ok(k) if !k.trim().is_empty() => Ok(k.trim().to_string()),
        _ => {
            let k = format!("demo-{}", random_hex(20)?);
            write_private(&path, &k)?;
            Ok(k)
        }
    }
}

/// Moves the audit signing key of an earlier quickstart (`data/audit-signing.key`, beside the
/// log) to `keys/`, where the config now expects it, so the existing log keeps verifying.
pub fn move_old_audit_key(dir: &Path) -> Result<(), CommandError> {
    let old = dir.join("data").join("audit-signing.key");
    let keys = dir.join("keys");
    let new = keys.join("audit-signing.key");
    if old.exists() && !new.exists() {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&keys)
            .map_err(|e| failed(format!("{}: {e}", keys.display())))?;
        std::fs::rename(&old, &new).map_err(|e| failed(format!("{}: {e}", old.display())))?;
    }
    Ok(())
}

/// Writes `gatehouse.toml` for this run and returns its path.
pub fn write_config(dir: &Path, ports: &ConfigPorts<'_>) -> Result<PathBuf, CommandError> {
    let ConfigPorts {
        pg_listen,
        admin_listen,
        http_listen,
        ssh_listen,
        upstream_port,
        demo_api,
        sshd,
    } = ports;
    let ssh = match sshd {
        Some(sshd) => format!(
            r#"
[[listeners.ssh]]
listen = "{ssh_listen}"
host_key = "ssh/gateway_host_ed25519"
# Every test and demo login comes from 127.0.0.1: allow more failures before refusing.
login_rate_limit = {{ max_failures = 50, window_secs = 60 }}

[[targets]]
name = "box"
protocol = "ssh"
address = "127.0.0.1:{port}"
user = "{user}"
private_key = {{ file = "{key}" }}
host_key = {{ kind = "known_hosts", path = "{known}" }}
tags = ["demo"]
"#,
            port = sshd.port,
            user = sshd.user,
            key = sshd.client_key.display(),
            known = sshd.known_hosts.display(),
        ),
        None => String::new(),
    };
    let config = format!(
        r#"# Written by `gatehouse quickstart` on each run. Paths are relative to this file.

[gateway]
data_dir = "data"

[admin]
listen = "{admin_listen}"
tls = {{ cert = "tls/server.crt", key = "tls/server.key" }}
operator_groups = ["approvers"]

[identity.dev_issuer]
key = "dev-issuer.key"

[policy]
file = "policy.toml"

[masking]
default_profile = "pii"

[masking.profiles.pii]
strategy = "redact"
# `notes` is free text: read plainly it passes the detectors (a card number in it is masked,
# the rest shown); anything computed from it (reverse, translate, base64, one character per
# row) is masked whole, since no detector recognises a transformed value.
columns = [{{ pattern = "email" }}, {{ pattern = "card_number" }}, {{ pattern = "phone" }}, {{ pattern = "notes", strategy = "detect" }}]

[audit]
durability = "fsync"
checkpoint_every_records = 100
checkpoint_interval_ms = 1000
# Kept apart from the audit log in data/: the signing key (mode 0600), and a witness that keeps
# every signed checkpoint and the seal. Production: a witness on other storage or a separate
# system (witness_url), see docs/audit-schema.md.
signing_key = "keys/audit-signing.key"
witness_dir = "witness"

[[listeners.postgres]]
listen = "{pg_listen}"
tls = {{ cert = "tls/server.crt", key = "tls/server.key" }}

[[targets]]
name = "demo"
protocol = "postgres"
address = "127.0.0.1:{upstream_port}"
user = "gatehouse_app"
database = "demo"
password = {{ file = "secrets/demo-db-password" }}
tls = "disable"
tags = ["demo", "pii"]

[[listeners.http]]
listen = "{http_listen}"
tls = {{ cert = "tls/server.crt", key = "tls/server.key" }}
review_hold_ms = 0

[[targets]]
name = "demo-api"
protocol = "http"
path_prefix = "/demo-api"
upstream = "http://{demo_api}"
credential = {{ kind = "header", name = "X-Api-Key", secret = {{ file = "secrets/demo-api-key" }} }}
tags = ["demo", "pii"]
{ssh}"#
    );
    let path = dir.join("gatehouse.toml");
    std::fs::write(&path, config).map_err(|e| failed(format!("{}: {e}", path.display())))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use gatehouse_core::{
        AuthMethod, ExecCommand, Identity, Operation, Policy, Protocol, SqlOperation, SshOperation,
        Target, Verdict,
    };
    use gatehouse_policy::CompiledPolicy;

    fn decide(op: Operation) -> (Verdict, String) {
        let policy = CompiledPolicy::from_toml(super::POLICY, "policy.toml").unwrap();
        let agent = Identity::new("agent", "quickstart", AuthMethod::Test).with_group("agents");
        let target = match &op {
            Operation::Sql(_) => Target::new("demo", Protocol::Postgres),
            _ => Target::new("box", Protocol::Ssh),
        };
        let d = policy.decide(&agent, &target, &op);
        (d.verdict, d.rule_id)
    }

    fn exec(line: &str) -> (Verdict, String) {
        decide(Operation::Ssh(SshOperation::Exec(ExecCommand::parse(line))))
    }

    /// What the banner and the policy comments claim about the SSH target.
    #[test]
    fn the_quickstart_policy_does_what_the_banner_says() {
        for line in [
            "rm -rf /tmp/x",
            "rm --recur /tmp/x",
            "rm -dr /tmp/x",
            "env rm -rf /tmp/x",
            "timeout 5 rm -rf /tmp/x",
            "sudo rm -rf /tmp/x",
        ] {
            assert_eq!(exec(line), (Verdict::Deny, "no-rm-rf".into()), "{line}");
        }
        assert_eq!(exec("systemctl restart cron").0, Verdict::Review);
        assert_eq!(exec("uname -n"), (Verdict::Allow, "box-inspect".into()));
        assert_eq!(exec("echo hi"), (Verdict::Allow, "box-inspect".into()));
        // Anything else and what the gateway cannot see into wait for an approval; interactive
        // shells are refused (no rule names the shell channel).
        assert_eq!(exec("touch /tmp/x"), (Verdict::Review, "default".into()));
        // Transforms that defeat output masking are not on the allow-list.
        for line in [
            "rev /etc/hostname",
            "base64 /etc/hostname",
            "od -c /etc/hostname",
            "cut -c1-20 /etc/hostname",
        ] {
            assert_eq!(exec(line), (Verdict::Review, "default".into()), "{line}");
        }
        for (line, rule) in [
            ("head -c 12 /etc/hostname", "review-slicing-bytes"),
            ("head --bytes=12 /etc/hostname", "review-slicing-bytes"),
            ("tail -qc5 /etc/hostname", "review-slicing-bytes"),
            (
                "grep --color=always -E [.@] /etc/hostname",
                "review-decorated",
            ),
            ("grep --colour=always x /etc/hostname", "review-decorated"),
            ("ls --hyperlink=always /tmp", "review-decorated"),
            ("ls --color=always /tmp", "review-decorated"),
            ("grep -o 1 /etc/hostname", "review-slicing-matches"),
            ("grep --only 1 /etc/hostname", "review-slicing-matches"),
            ("grep -io 1 /etc/hostname", "review-slicing-matches"),
            ("cat -A /etc/hostname", "review-escaping"),
            ("cat --show-nonprinting /etc/hostname", "review-escaping"),
        ] {
            assert_eq!(exec(line), (Verdict::Review, rule.into()), "{line}");
        }
        // Obsolete byte-slicing forms of `tail`: `tail` is not on the allow-list at all.
        for line in [
            "tail +58c /etc/hostname",
            "tail -3b /etc/hostname",
            "tail -n 3 /etc/hostname",
        ] {
            assert_eq!(exec(line), (Verdict::Review, "default".into()), "{line}");
        }
        for line in [
            "head -n 3 /etc/hostname",
            "grep -n x /etc/hostname",
            "cat -n /etc/hostname",
        ] {
            assert_eq!(exec(line), (Verdict::Allow, "box-inspect".into()), "{line}");
        }
        for line in [
            "python3 -c 'import shutil'",
            "find /tmp/x -delete",
            "sh -c \"$X\"",
            "bash",
        ] {
            assert_eq!(exec(line), (Verdict::Review, "opaque".into()), "{line}");
        }
        // An explicit table lock waits for an approval, in every spelling and mode.
        for sql in [
            "LOCK TABLE customers",
            "lock customers in access exclusive mode",
            "LOCK TABLE ONLY customers IN SHARE MODE NOWAIT",
            "BEGIN; LOCK TABLE customers IN ROW EXCLUSIVE MODE",
        ] {
            assert_eq!(
                decide(Operation::Sql(SqlOperation::simple(sql))),
                (Verdict::Review, "review-lock".into()),
                "{sql}"
            );
        }
        let shell = decide(Operation::Ssh(SshOperation::Shell { pty: true }));
        assert_eq!(shell, (Verdict::Deny, "ssh-channel-not-allowed".into()));
    }
}
