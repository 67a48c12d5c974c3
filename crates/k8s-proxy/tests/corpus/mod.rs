//! The exec corpus (`crates/core/tests/data/exec-corpus.txt`) through the real `kubectl exec`
//! against the API-server stand-in (which runs the command on this machine, as a container
//! runtime would): every spelling that deletes the directory is refused and leaves it in place;
//! the controls run. A line that is one plain command goes as its words; any other line as
//! `bash -c LINE`. The SSH bastion runs the same corpus (crates/ssh-proxy/tests/corpus).

use std::path::Path;

use gatehouse_core::Verdict;
use gatehouse_core::shell;
use gatehouse_testkit::exec_corpus;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_corpus_through_kubectl_exec() {
    let lines = exec_corpus::lines();
    assert!(lines.len() >= 100, "{}", lines.len());
    let rig = Rig::start_with(exec_corpus::POLICY, |_| {}).await;
    let root = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let d = exec_corpus::make_dir(root.path(), n).display().to_string();
        let cmd = line.with_dir(&d);
        let parsed = shell::parse(&cmd);
        let words: Vec<String> = if parsed.is_plain() && parsed.commands.len() == 1 {
            parsed.argv.clone()
        } else {
            vec!["bash".into(), "-c".into(), cmd.clone()]
        };
        let mut args: Vec<&str> = vec!["exec", "web-0", "--"];
        args.extend(words.iter().map(String::as_str));
        let mut before = rig.operations().len();
        let mut out = rig.kubectl(&args).await;
        // kubectl v1.32 sometimes tears down a finished websocket exec with "Unknown stream id 3
        // … closed all streams" (seen once under heavy load, on a control line that ran). The
        // corpus is about decisions, so a control line gets one more try; a second failure is
        // reported as any other.
        if !line.deletes && out.code != Some(0) && out.stderr.contains("closed all streams") {
            before = rig.operations().len();
            out = rig.kubectl(&args).await;
        }
        let present = Path::new(&d).exists();
        let decided: Vec<Verdict> = rig
            .operations()
            .into_iter()
            .skip(before)
            .filter(|(op, _)| op.verb == "exec")
            .map(|(_, d)| d.verdict)
            .collect();
        let ok = if line.deletes {
            present && out.code != Some(0) && decided == [Verdict::Deny]
        } else {
            present && out.code == Some(0) && decided == [Verdict::Allow]
        };
        if !ok {
            failures.push(format!(
                "{words:?}: exit {:?}, decided {decided:?}, directory {}, stderr {:?}",
                out.code,
                if present { "kept" } else { "DELETED" },
                out.stderr
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
}
