//! The binary's CLI shape: help and version for every command.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn gatehouse(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(args)
        .output()
        .expect("run gatehouse")
}

#[test]
fn version_prints_the_package_version() {
    let out = gatehouse(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("gatehouse {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn every_command_has_help() {
    let top = gatehouse(&["--help"]);
    assert!(top.status.success());
    let text = String::from_utf8_lossy(&top.stdout);
    let commands = [
        vec!["serve"],
        vec!["quickstart"],
        vec!["check-config"],
        vec!["token"],
        vec!["login"],
        vec!["policy", "explain"],
        vec!["approvals", "list"],
        vec!["approvals", "approve"],
        vec!["mask"],
        vec!["audit", "verify"],
        vec!["audit", "sessions"],
        vec!["audit", "replay"],
        vec!["evidence", "export"],
        vec!["evidence", "verify"],
    ];
    for cmd in commands {
        assert!(text.contains(cmd[0]), "top-level help lists {}", cmd[0]);
        let mut args = cmd.clone();
        args.push("--help");
        let out = gatehouse(&args);
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage: gatehouse"),
            "{args:?}"
        );
    }
}

#[test]
fn bad_arguments_are_refused_with_usage() {
    let out = gatehouse(&["serve"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));
    let out = gatehouse(&["no-such-command"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn mask_filters_stdin_and_reports_without_values() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["mask", "--report"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let input = "mail ada@example.com, card 4111 1111 1111 1111, build 1.2.3\n".repeat(2000);
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 2000);
    assert!(
        !stdout.contains("ada@example.com") && !stdout.contains("4111 1111 1111 1111"),
        "{}",
        &stdout[..200]
    );
    assert!(stdout.contains("build 1.2.3"), "look-alikes stay");
    let report = String::from_utf8_lossy(&out.stderr);
    assert_eq!(report.lines().count(), 4000, "one finding per value");
    assert!(
        !report.contains("ada@example.com") && !report.contains("4111"),
        "findings never carry values"
    );
    assert!(
        report
            .lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
    );
}

#[test]
fn token_and_policy_explain() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("dev.key");
    let out = gatehouse(&[
        "token",
        "--key",
        key.to_str().unwrap(),
        "--sub",
        "agent-1",
        "--group",
        "agents",
        "--ttl",
        "5m",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(token.split('.').count(), 3, "a JWT");
    let out = gatehouse(&[
        "token",
        "--key",
        key.to_str().unwrap(),
        "--sub",
        "x",
        "--ttl",
        "5w",
    ]);
    assert_eq!(out.status.code(), Some(2));

    std::fs::write(
        dir.path().join("policy.toml"),
        "[defaults]\ndefault = \"allow\"\n\n[[rules]]\nid = \"no-drop\"\nreason = \"no drops\"\nverdict = \"deny\"\nsql = { kinds = [\"drop\"] }\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("gatehouse.toml"),
        "[identity.dev_issuer]\nkey = \"dev.key\"\n\n[policy]\nfile = \"policy.toml\"\n\n[[targets]]\nname = \"db\"\nprotocol = \"postgres\"\naddress = \"127.0.0.1:5432\"\nuser = \"u\"\ndatabase = \"d\"\n",
    )
    .unwrap();
    let config = dir.path().join("gatehouse.toml");
    let out = gatehouse(&[
        "policy",
        "explain",
        "--config",
        config.to_str().unwrap(),
        "--as",
        "agent-1",
        "--target",
        "db",
        "--sql",
        "SELECT 1; DROP TABLE t",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("Deny by no-drop"), "{text}");
    let out = gatehouse(&[
        "policy",
        "explain",
        "--config",
        config.to_str().unwrap(),
        "--as",
        "agent-1",
        "--target",
        "nope",
        "--sql",
        "SELECT 1",
    ]);
    assert_eq!(out.status.code(), Some(2));
}
