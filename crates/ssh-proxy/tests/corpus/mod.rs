//! The exec corpus (`crates/core/tests/data/exec-corpus.txt`) through the real `ssh` client and a
//! real sshd, under the real policy engine: every spelling that deletes the directory when run
//! directly is refused through the gateway and leaves it in place; the controls run. One gateway
//! and one sshd serve every line.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use gatehouse_core::Policy;
use gatehouse_testkit::exec_corpus::{self, CorpusLine};
use gatehouse_testkit::layers::FnPolicy;

use crate::common::*;

/// Runs `line` with bash directly (no gateway), as the target's login shell would.
async fn run_directly(line: &str) -> Option<i32> {
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg("-c")
        .arg(line)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    let status = gatehouse_testkit::within(Duration::from_secs(30), cmd.status())
        .await
        .expect("run directly");
    status.code()
}

fn dir_for(root: &Path, n: usize) -> String {
    exec_corpus::make_dir(root, n).display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_corpus_every_refused_spelling_leaves_the_directory() {
    let lines: Vec<CorpusLine> = exec_corpus::lines();
    assert!(lines.len() >= 100, "{}", lines.len());

    // First, without the gateway: each `deletes` line really deletes (so a directory still
    // there afterwards is the gateway's doing), and each control leaves it.
    let direct = tempfile::tempdir().unwrap();
    for (n, line) in lines.iter().enumerate() {
        let d = dir_for(direct.path(), n);
        let cmd = line.with_dir(&d);
        let _ = run_directly(&cmd).await;
        assert_eq!(
            Path::new(&d).exists(),
            !line.deletes,
            "run directly, `{cmd}` should {}delete {d}",
            if line.deletes { "" } else { "not " }
        );
    }

    let compiled =
        gatehouse_policy::CompiledPolicy::from_toml(exec_corpus::POLICY, "corpus.toml").unwrap();
    let policy = FnPolicy::new(move |i, t, op| compiled.decide(i, t, op));
    let gw = start(Options {
        policy: Some(policy),
        ..Options::default()
    })
    .await;

    let root = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let d = dir_for(root.path(), n);
        let cmd = line.with_dir(&d);
        let run = gw.ssh(&cmd, b"").await;
        let present = Path::new(&d).exists();
        let ok = if line.deletes {
            present && run.status == Some(126)
        } else {
            present && run.status == Some(0)
        };
        if !ok {
            failures.push(format!(
                "`{cmd}`: status {:?}, directory {}, stderr {:?}",
                run.status,
                if present { "kept" } else { "DELETED" },
                run.stderr
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} lines:\n{}",
        failures.len(),
        lines.len(),
        failures.join("\n")
    );
    gw.shutdown().await;
}

/// Opens a pty shell channel and types `input`; returns (exit status, everything seen).
async fn typed_shell(gw: &Gateway, input: &str) -> (Option<u32>, String) {
    let client = russh_login(gw, TARGET).await;
    let mut ch = client.channel_open_session().await.unwrap();
    ch.request_pty(true, "xterm", 80, 24, 0, 0, &[])
        .await
        .unwrap();
    ch.request_shell(true).await.unwrap();
    ch.data(input.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut status = None;
    gatehouse_testkit::within(Duration::from_secs(30), async {
        while let Some(msg) = ch.wait().await {
            match msg {
                russh::ChannelMsg::Data { data } | russh::ChannelMsg::ExtendedData { data, .. } => {
                    seen.extend_from_slice(&data)
                }
                russh::ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                russh::ChannelMsg::Close | russh::ChannelMsg::Eof if status.is_some() => break,
                russh::ChannelMsg::Close => break,
                _ => {}
            }
        }
    })
    .await;
    let _ = client
        .disconnect(russh::Disconnect::ByApplication, "", "en")
        .await;
    (status, String::from_utf8_lossy(&seen).into_owned())
}

/// docs/policy.md, "Interactive shells": a shell is refused unless a rule names the shell
/// channel; where a rule allows shells, typed lines are recorded but not decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_shells_are_opaque_and_typed_lines_are_not_decided() {
    let root = tempfile::tempdir().unwrap();
    let d = dir_for(root.path(), 0);
    let compiled =
        gatehouse_policy::CompiledPolicy::from_toml(exec_corpus::POLICY, "corpus.toml").unwrap();
    let gw = start(Options {
        policy: Some(FnPolicy::new(move |i, t, op| compiled.decide(i, t, op))),
        ..Options::default()
    })
    .await;
    let (status, seen) = typed_shell(&gw, &format!("rm -rf {d}; exit 0\n")).await;
    assert_eq!(status, Some(126), "{seen}");
    assert!(Path::new(&d).exists());
    let recorder = gw.shutdown().await;
    assert!(
        operations(&recorder).iter().any(|(op, dec)| matches!(
            op,
            gatehouse_core::Operation::Ssh(gatehouse_core::SshOperation::Shell { pty: true })
        ) && dec.rule_id == "ssh-channel-not-allowed"),
        "the shell was refused: no rule names the shell channel"
    );

    let allowing = format!(
        "{}\n[[rules]]\nid = \"shells\"\nreason = \"this caller may use a shell\"\nverdict = \"allow\"\nssh = {{ channels = [\"shell\"] }}\n",
        exec_corpus::POLICY
    );
    let compiled = gatehouse_policy::CompiledPolicy::from_toml(&allowing, "corpus.toml").unwrap();
    let gw = start(Options {
        policy: Some(FnPolicy::new(move |i, t, op| compiled.decide(i, t, op))),
        ..Options::default()
    })
    .await;
    let (status, seen) = typed_shell(&gw, &format!("rm -rf {d}; exit 0\n")).await;
    assert_eq!(status, Some(0), "{seen}");
    assert!(!Path::new(&d).exists(), "a typed line is not decided");
    let recorder = gw.shutdown().await;
    let recorded = String::from_utf8_lossy(&recorded_output(&recorder)).into_owned();
    assert!(
        recorded.contains("rm -rf"),
        "typed lines are recorded: {recorded:?}"
    );
}
