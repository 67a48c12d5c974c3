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

#[test]
fn the_postgres_example_is_valid() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/postgres/gatehouse.toml"
    );
    let dir = tempfile::tempdir().unwrap();
    // The example names absolute paths of a real installation; check it from a copy whose
    // relative files exist, with the secret in the environment as the example expects.
    let text = std::fs::read_to_string(example).unwrap();
    std::fs::write(
        dir.path().join("gatehouse.toml"),
        text.replace(
            "\ntls = { cert = \"tls/gateway.crt\", key = \"tls/gateway.key\" }",
            "",
        ),
    )
    .unwrap();
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/postgres/policy.toml"
        ),
        dir.path().join("policy.toml"),
    )
    .unwrap();
    let out = Command::new(EXE)
        .arg("check-config")
        .arg(dir.path().join("gatehouse.toml"))
        .env("ORDERS_DB_PASSWORD", "an-example-password")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
