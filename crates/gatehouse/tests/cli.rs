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
