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
