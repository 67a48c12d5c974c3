//! `gatehouse check-config`: a good config passes; each kind of bad config gets an error naming
//! file, line and column.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

const EXE: &str = env!("CARGO_BIN_EXE_gatehouse");

const POLICY: &str = "[defaults]\ndefault = \"allow\"\n";

fn base(extra_target: &str) -> String {
    format!(
        r#"[gateway]
data_dir = "data"

[identity.dev_issuer]
key = "dev.key"

[policy]
file = "policy.toml"

[[listeners.postgres]]
listen = "127.0.0.1:0"
allow_plaintext_password = true

[[targets]]
name = "db"
protocol = "postgres"
address = "127.0.0.1:5432"
user = "app"
database = "app"
password = {{ env = "GATEHOUSE_TEST_DB_PASSWORD" }}
{extra_target}"#
    )
}

fn check(config: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policy.toml"), POLICY).unwrap();
    let path = dir.path().join("gatehouse.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(EXE)
        .args(["check-config"])
        .arg(&path)
        .env("GATEHOUSE_TEST_DB_PASSWORD", "s3cret-value")
        .env_remove("GATEHOUSE_MISSING")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_good_config_passes() {
    let (code, stdout, stderr) = check(&base(""));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("OK"), "{stdout}");
    assert!(!stdout.contains("s3cret-value") && !stderr.contains("s3cret-value"));
}

/// (what is wrong, config, text on the line the error must name, expected text in the message)
fn bad_configs() -> Vec<(&'static str, String, &'static str, &'static str)> {
    vec![
        (
            "unknown top-level key",
            format!("{}\n[surprise]\nx = 1\n", base("")),
            "[surprise]",
            "unknown field `surprise`",
        ),
        (
            "unknown key in a target",
            base("colour = \"blue\"\n"),
            "colour",
            "unknown field `colour`",
        ),
        (
            "wrong type",
            base("").replace(
                "allow_plaintext_password = true",
                "allow_plaintext_password = \"yes\"",
            ),
            "allow_plaintext_password",
            "invalid type",
        ),
        (
            "bad address",
            base("").replace("listen = \"127.0.0.1:0\"", "listen = \"not-an-address\""),
            "not-an-address",
            "invalid socket address",
        ),
        (
            "syntax error",
            base("").replace("[policy]", "[policy"),
            "[policy",
            "",
        ),
        (
            "inline secret",
            base("").replace(
                "password = { env = \"GATEHOUSE_TEST_DB_PASSWORD\" }",
                "password = { value = \"hunter2hunter2\" }",
            ),
            "password = {",
            "inline secrets are refused",
        ),
        (
            "missing env secret",
            base("").replace("GATEHOUSE_TEST_DB_PASSWORD", "GATEHOUSE_MISSING"),
            "password = {",
            "GATEHOUSE_MISSING",
        ),
        (
            "duplicate target",
            format!(
                "{}\n[[targets]]\nname = \"db\"\nprotocol = \"postgres\"\naddress = \"h:1\"\nuser = \"u\"\ndatabase = \"d\"\n",
                base("")
            ),
            "@second-targets",
            "duplicate target name",
        ),
        (
            "unknown protocol",
            base("").replace("protocol = \"postgres\"", "protocol = \"gopher\""),
            "@first-targets",
            "unknown protocol",
        ),
        (
            "kubernetes target without a credential",
            base(
                "\n[[targets]]\nname = \"k\"\nprotocol = \"kubernetes\"\nserver = \"https://127.0.0.1:6443\"\n",
            ),
            "@second-targets",
            "needs `credential`",
        ),
        (
            "http credential kind on a kubernetes target",
            base(
                "\n[[targets]]\nname = \"k\"\nprotocol = \"kubernetes\"\nserver = \"https://127.0.0.1:6443\"\ncredential = { kind = \"header\", name = \"X-Key\", secret = { env = \"GATEHOUSE_TEST_DB_PASSWORD\" } }\n",
            ),
            "credential = {",
            "is for http targets",
        ),
        (
            "kubernetes target without a server",
            base(
                "\n[[targets]]\nname = \"k\"\nprotocol = \"kubernetes\"\ncredential = { kind = \"bearer\", secret = { env = \"GATEHOUSE_TEST_DB_PASSWORD\" } }\n",
            ),
            "@second-targets",
            "needs `server`",
        ),
        (
            "ssh field on a kubernetes target",
            base(
                "\n[[targets]]\nname = \"k\"\nprotocol = \"kubernetes\"\nserver = \"https://127.0.0.1:6443\"\nhost_key = { kind = \"fingerprint\", sha256 = \"SHA256:x\" }\ncredential = { kind = \"bearer\", secret = { env = \"GATEHOUSE_TEST_DB_PASSWORD\" } }\n",
            ),
            "@second-targets",
            "`host_key` is not used by kubernetes targets",
        ),
        (
            "http listener on a public address without TLS",
            base("\n[[listeners.http]]\nlisten = \"0.0.0.0:18080\"\n"),
            "[[listeners.http]]",
            "plain HTTP is only allowed on loopback",
        ),
        (
            "a target's CA file is missing",
            base(
                "\n[[targets]]\nname = \"api\"\nprotocol = \"http\"\nupstream = \"https://127.0.0.1:1\"\npath_prefix = \"/api\"\nca_file = \"no-such-ca.crt\"\n",
            ),
            "@second-targets",
            "ca_file",
        ),
        (
            "an ssh target's known_hosts is missing",
            base(
                "\n[[targets]]\nname = \"box\"\nprotocol = \"ssh\"\naddress = \"127.0.0.1:22\"\nuser = \"u\"\npassword = { env = \"GATEHOUSE_TEST_DB_PASSWORD\" }\nhost_key = { kind = \"known_hosts\", path = \"no-such-known-hosts\" }\n",
            ),
            "@second-targets",
            "no-such-known-hosts",
        ),
        (
            "a listener certificate that is not PEM",
            base(
                "\n[[listeners.http]]\nlisten = \"127.0.0.1:0\"\ntls = { cert = \"policy.toml\", key = \"policy.toml\" }\n",
            ),
            "[[listeners.http]]",
            "no certificate found",
        ),
        (
            "an http listener with no serving thread",
            base("\n[[listeners.http]]\nlisten = \"127.0.0.1:0\"\nthreads = 0\n"),
            "[[listeners.http]]",
            "threads = 0: must be 1 to 256",
        ),
        (
            "missing policy section",
            base("").replace("[policy]\nfile = \"policy.toml\"\n", ""),
            "@line-1",
            "missing field `policy`",
        ),
    ]
}

/// The 1-based lines the error may point at: the first line containing `marker`; for a whole
/// `[[targets]]` table, its header or the line after it (where the table's span starts); or line 1.
fn expected_lines(config: &str, marker: &str) -> Vec<usize> {
    let lines: Vec<&str> = config.lines().collect();
    let headers: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.trim() == "[[targets]]")
        .map(|(i, _)| i + 1)
        .collect();
    match marker {
        "@line-1" => vec![1],
        "@first-targets" => vec![headers[0], headers[0] + 1],
        "@second-targets" => vec![headers[1], headers[1] + 1],
        m => vec![lines.iter().position(|l| l.contains(m)).unwrap() + 1],
    }
}

#[test]
fn each_kind_of_bad_config_names_its_line() {
    for (what, config, marker, needle) in bad_configs() {
        let (code, _stdout, stderr) = check(&config);
        assert_eq!(code, 2, "{what}: {stderr}");
        let lines = expected_lines(&config, marker);
        assert!(
            lines
                .iter()
                .any(|line| stderr.contains(&format!("gatehouse.toml:{line}:"))),
            "{what}: expected gatehouse.toml:{lines:?} in: {stderr}"
        );
        assert!(
            stderr.contains(needle),
            "{what}: expected `{needle}` in: {stderr}"
        );
        assert!(
            !stderr.contains("hunter2hunter2"),
            "{what}: the secret was echoed: {stderr}"
        );
    }
}

#[test]
fn a_bad_policy_file_names_its_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("policy.toml"),
        "[defaults]\ndefault = \"allow\"\n\n[[rules]]\nid = \"x\"\nverdict = \"maybe\"\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("gatehouse.toml"), base("")).unwrap();
    let out = Command::new(EXE)
        .arg("check-config")
        .arg(dir.path().join("gatehouse.toml"))
        .env("GATEHOUSE_TEST_DB_PASSWORD", "s3cret-value")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("policy.toml") && stderr.contains(":6"),
        "{stderr}"
    );
}

/// Copies `examples/<name>` into a temp dir where every file it names exists (absolute paths of
/// a real installation made relative; certificates from a test CA, secrets in files and the
/// environment), then runs `check-config` on it.
fn check_example(name: &str, env: &[(&str, &str)]) -> std::process::Output {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = std::fs::read_to_string(root.join(name).join("gatehouse.toml")).unwrap();
    let text = text
        .replace("\"/run/secrets/", "\"secrets/")
        .replace("\"/etc/gatehouse/", "\"")
        .replace("\"/var/lib/gatehouse\"", "\"data\"")
        .replace("\"/mnt/audit-witness\"", "\"witness\"");
    std::fs::write(d.join("gatehouse.toml"), &text).unwrap();
    std::fs::copy(root.join(name).join("policy.toml"), d.join("policy.toml")).unwrap();
    let ca = gatehouse_testkit::tls::TestCa::new("example CA");
    let (cert, key) = ca.issue_server(&["localhost"]);
    for dir in ["tls", "secrets", "ssh"] {
        std::fs::create_dir_all(d.join(dir)).unwrap();
    }
    std::fs::write(d.join("tls/gateway.crt"), cert).unwrap();
    std::fs::write(d.join("tls/gateway.key"), key).unwrap();
    for f in ["tls/db-ca.crt", "tls/internal-ca.crt", "tls/cluster-ca.crt"] {
        std::fs::write(d.join(f), ca.cert_pem()).unwrap();
    }
    std::fs::write(d.join("secrets/crm-api-key"), "crm-key-for-the-example\n").unwrap();
    std::fs::write(d.join("secrets/build1_ed25519"), "an OpenSSH key\n").unwrap();
    std::fs::write(d.join("ssh/known_hosts"), "").unwrap();
    std::fs::write(
        d.join("staging.kubeconfig"),
        "apiVersion: v1\nkind: Config\ncurrent-context: gatehouse\nclusters:\n- name: staging\n  cluster:\n    server: https://kube.staging.internal:6443\n    certificate-authority: tls/cluster-ca.crt\ncontexts:\n- name: gatehouse\n  context:\n    cluster: staging\n    user: gatehouse\nusers:\n- name: gatehouse\n  user:\n    token: staging-token-for-the-example\n",
    )
    .unwrap();
    let mut cmd = Command::new(EXE);
    cmd.arg("check-config").arg(d.join("gatehouse.toml"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn assert_ok(name: &str, out: &std::process::Output, summary: &str) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(summary), "{name}: {stdout}");
    // The audit key and the witness are configured apart from the data directory.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("warning"), "{name}: {stderr}");
}

#[test]
fn the_examples_are_valid() {
    let out = check_example("postgres", &[("ORDERS_DB_PASSWORD", "an-example-password")]);
    assert_ok(
        "postgres",
        &out,
        "1 target(s) (1 postgres), listener(s): 1 postgres",
    );
    let out = check_example("http", &[("BILLING_API_TOKEN", "an-example-token")]);
    assert_ok("http", &out, "2 target(s) (2 http), listener(s): 1 http");
    let out = check_example("ssh", &[("WEB1_SSH_KEY", "an OpenSSH key")]);
    assert_ok("ssh", &out, "2 target(s) (2 ssh), listener(s): 1 ssh");
    let out = check_example("kubernetes", &[("PROD_CLUSTER_TOKEN", "an-example-token")]);
    assert_ok(
        "kubernetes",
        &out,
        "2 target(s) (2 kubernetes), listener(s): 1 kubernetes",
    );
}

#[test]
fn an_example_without_its_secret_names_the_variable() {
    for (name, var) in [
        ("postgres", "ORDERS_DB_PASSWORD"),
        ("http", "BILLING_API_TOKEN"),
        ("ssh", "WEB1_SSH_KEY"),
        ("kubernetes", "PROD_CLUSTER_TOKEN"),
    ] {
        let out = check_example(name, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}");
        assert!(
            stderr.contains(var) && stderr.contains("gatehouse.toml:"),
            "{name}: {stderr}"
        );
    }
}

#[test]
fn a_policy_with_the_old_floors_loads_with_a_deprecation_warning() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("policy.toml"),
        "[defaults]\ndefault = \"deny\"\nnon_plain_exec = \"review\"\nunparseable_sql = \"review\"\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("gatehouse.toml"), base("")).unwrap();
    let out = Command::new(EXE)
        .arg("check-config")
        .arg(dir.path().join("gatehouse.toml"))
        .env("GATEHOUSE_TEST_DB_PASSWORD", "s3cret-value")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("warning:") && stderr.contains("`non_plain_exec` is deprecated"),
        "{stderr}"
    );
    assert!(
        stderr.contains("`unparseable_sql` is deprecated"),
        "{stderr}"
    );
}

/// A `read_only` postgres target is checked against the upstream's catalog: a role that can
/// write gets one warning per way it can; a role with only `pg_read_all_data` gets none; the
/// config still passes (the warnings do not stop the gateway).
#[test]
fn read_only_targets_are_checked_against_the_catalog() {
    let cluster = gatehouse_testkit::pg::PgCluster::shared();
    let db = cluster.create_database("readonly");
    let suffix = format!("{}_{}", std::process::id(), db.name.len());
    let writer = format!("gh_writer_{suffix}");
    let reader = format!("gh_reader_{suffix}");
    cluster.create_role(&writer, "writer-pw");
    cluster.create_role(&reader, "reader-pw");
    db.psql(&format!(
        "grant all on schema public to \"{writer}\"; \
         set role \"{writer}\"; create table t (x int); reset role; \
         grant pg_read_all_data to \"{reader}\"; \
         revoke temporary on database \"{db}\" from public; \
         create table u (x int primary key); \
         grant trigger, references on u to \"{writer}\"; \
         grant temporary on database \"{db}\" to \"{writer}\"",
        db = db.name
    ))
    .unwrap();
    let target = |name: &str, role: &str, password: &str| {
        format!(
            r#"
[[targets]]
name = "{name}"
protocol = "postgres"
address = "127.0.0.1:{port}"
tls = "disable"
user = "{role}"
database = "{db}"
password = {{ env = "GATEHOUSE_TEST_{password}" }}
read_only = true
"#,
            port = cluster.port(),
            db = db.name,
        )
    };
    let config = format!(
        "{}{}{}",
        base(""),
        target("writes", &writer, "WRITER"),
        target("reads", &reader, "READER")
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policy.toml"), POLICY).unwrap();
    let path = dir.path().join("gatehouse.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(EXE)
        .args(["check-config"])
        .arg(&path)
        .env("GATEHOUSE_TEST_DB_PASSWORD", "s3cret-value")
        .env("GATEHOUSE_TEST_WRITER", "writer-pw")
        .env("GATEHOUSE_TEST_READER", "reader-pw")
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let prefix =
        format!("target `writes` is read_only but its upstream role `{writer}` can write:");
    assert!(
        stderr.contains(&format!("{prefix} owns public.t"))
            || stderr.contains(&format!("{prefix} owns t")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{prefix} may CREATE in schema public")),
        "{stderr}"
    );
    for what in [
        "may TRIGGER public.u",
        "may REFERENCES public.u",
        "may create TEMP tables in database",
    ] {
        assert!(
            stderr.contains(&format!("{prefix} {what}"))
                || stderr.contains(&format!("{prefix} {}", what.replace("public.", ""))),
            "{what}: {stderr}"
        );
    }
    assert!(!stderr.contains("target `reads`"), "{stderr}");
    // A read_only flag on another protocol is an error.
    let (code, _, stderr) = check(&base("").replace(
        "[[targets]]\nname = \"db\"",
        "[[targets]]\nname = \"web\"\nprotocol = \"http\"\nupstream = \"http://127.0.0.1:1\"\nread_only = true\n\n[[targets]]\nname = \"db\"",
    ));
    assert_ne!(code, 0);
    assert!(stderr.contains("read_only"), "{stderr}");
}
