//! Binary data is never silently altered: file transfers (scp over SFTP, `scp -O`, sftp, rsync,
//! git) and `ssh cat` of random binary files — with bytes that look like e-mail addresses and card
//! numbers — end byte-exact (SHA-256) when the policy passes them raw, and are refused with a
//! reason otherwise; never a different file, never a hang (every client runs under a timeout).

use std::path::{Path, PathBuf};

use gatehouse_core::*;
use gatehouse_testkit::layers::{FnPolicy, MemoryRecorder};
use sha2::{Digest, Sha256};

use crate::common::*;

/// Exec allowed (binary output refused, the default), `cat` and `printf` of binary allowed raw
/// only when `raw_exec`; transfers and sftp allowed, raw only when `raw_transfers`.
fn policy(raw_transfers: bool, raw_exec: bool) -> FnPolicy {
    let transfers = if raw_transfers {
        BinaryHandling::Raw
    } else {
        BinaryHandling::Refuse
    };
    let exec = if raw_exec {
        BinaryHandling::Raw
    } else {
        BinaryHandling::Refuse
    };
    FnPolicy::new(move |_, _, op| match op {
        Operation::Ssh(SshOperation::FileTransfer { .. }) => {
            Decision::allow("transfers", "file transfers allowed").with_binary(transfers)
        }
        Operation::Ssh(SshOperation::Subsystem { name }) if name == "sftp" => {
            Decision::allow("sftp", "sftp allowed").with_binary(transfers)
        }
        Operation::Ssh(SshOperation::Exec(_)) => {
            Decision::allow("exec", "commands allowed").with_binary(exec)
        }
        _ => Decision::deny("default-deny", "not allowed"),
    })
}

/// Deterministic random bytes (xorshift), with strings the masker would rewrite in text planted
/// at odd offsets.
fn binary_file(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect();
    let plants: [&[u8]; 4] = [
        b"z@v.Oe",
        b"alice@example.com",
        b"4111 1111 1111 1111",
        b"AKIAIOSFODNN7EXAMPLE",
    ];
    for (i, p) in plants.iter().enumerate() {
        let at = (len / 5) * (i + 1) + 3;
        if at + p.len() < len {
            data[at..at + p.len()].copy_from_slice(p);
        }
    }
    data
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Random binary files of several sizes (one empty), and a text file with PII.
fn fill(dir: &Path) -> Vec<(String, Vec<u8>)> {
    std::fs::create_dir_all(dir).unwrap();
    let mut files = vec![
        ("empty.bin".to_string(), Vec::new()),
        ("tiny.bin".to_string(), binary_file(1, 7)),
        ("mid.bin".to_string(), binary_file(2, 70_001)),
        ("big.bin".to_string(), binary_file(3, 1_500_000)),
    ];
    files.push((
        "pii.txt".to_string(),
        b"name,email,card\nAlice,alice@example.com,4111 1111 1111 1111\n".to_vec(),
    ));
    for (name, data) in &files {
        std::fs::write(dir.join(name), data).unwrap();
    }
    files
}

fn assert_same(files: &[(String, Vec<u8>)], dir: &Path, how: &str) {
    for (name, data) in files {
        let got = std::fs::read(dir.join(name))
            .unwrap_or_else(|e| panic!("{how}: {name} missing in {}: {e}", dir.display()));
        assert_eq!(sha(&got), sha(data), "{how}: {name} differs");
    }
}

/// Nothing arrived, or only what arrived whole: a refused transfer never leaves a different file.
fn assert_nothing_different(files: &[(String, Vec<u8>)], dir: &Path, how: &str) {
    for (name, data) in files {
        if let Ok(got) = std::fs::read(dir.join(name)) {
            assert!(
                got.is_empty() || sha(&got) == sha(data),
                "{how}: {name} arrived altered ({} bytes)",
                got.len()
            );
        }
    }
}

struct Client<'a> {
    gw: &'a Gateway,
}

impl Client<'_> {
    fn remote(&self, path: &Path) -> String {
        format!("{TARGET}@127.0.0.1:{}", path.display())
    }

    /// Options for scp and sftp (`-P` for the port).
    fn upper_p(&self) -> Vec<String> {
        let mut o = self.gw.ssh_options();
        o[0] = "-P".into();
        o
    }

    async fn scp(&self, legacy: bool, from: &str, to: &str) -> Run {
        let mut cmd = tokio::process::Command::new("scp");
        cmd.args(self.upper_p());
        if legacy {
            cmd.arg("-O");
        }
        cmd.arg("-r").arg(from).arg(to);
        run_client(self.gw, cmd, b"").await
    }

    async fn sftp(&self, batch: &str) -> Run {
        let mut cmd = tokio::process::Command::new("sftp");
        cmd.args(self.upper_p())
            .args(["-o", "BatchMode=no", "-b", "-"]) // `-b` implies BatchMode: no askpass
            .arg(format!("{TARGET}@127.0.0.1"));
        run_client(self.gw, cmd, batch.as_bytes()).await
    }

    async fn rsync(&self, from: &str, to: &str) -> Run {
        let mut cmd = tokio::process::Command::new("rsync");
        cmd.arg("-a")
            .arg("-e")
            .arg(format!("ssh {}", self.gw.ssh_options().join(" ")))
            .arg(from)
            .arg(to);
        run_client(self.gw, cmd, b"").await
    }

    async fn git(&self, args: &[&str]) -> Run {
        let mut cmd = tokio::process::Command::new("git");
        // The port is in the URL: drop `-p` from the ssh options git passes.
        let opts: Vec<String> = self.gw.ssh_options().into_iter().skip(2).collect();
        cmd.env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_SSH_COMMAND", format!("ssh {}", opts.join(" ")))
            .args(args);
        run_client(self.gw, cmd, b"").await
    }

    fn git_url(&self, repo: &Path) -> String {
        format!(
            "ssh://{TARGET}@127.0.0.1:{}{}",
            self.gw.addr.port(),
            repo.display()
        )
    }
}

fn git_local(args: &[&str]) {
    let out = std::process::Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {out:?}");
}

fn raw_digests(recorder: &MemoryRecorder) -> Vec<serde_json::Value> {
    recorder
        .events()
        .into_iter()
        .filter_map(|e| match e.body {
            EventBody::Other { name, details } if name == "ssh_raw_output" => Some(details),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_are_byte_exact_both_ways_when_the_policy_passes_them_raw() {
    let gw = start(Options {
        policy: Some(policy(true, false)),
        ..Options::default()
    })
    .await;
    let c = Client { gw: &gw };
    let root = gw.dir.path().to_path_buf();
    let src = root.join("src");
    let files = fill(&src);
    let out = |name: &str| -> PathBuf {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    };

    // scp, both protocols, both directions ("remote" is the target's view of the same disk).
    for legacy in [false, true] {
        let down = out(&format!("scp-down-{legacy}"));
        let run = c
            .scp(legacy, &c.remote(&src), &down.display().to_string())
            .await;
        assert_eq!(run.status, Some(0), "scp -O={legacy} download: {run:?}");
        assert_same(
            &files,
            &down.join("src"),
            &format!("scp -O={legacy} download"),
        );
        let up = out(&format!("scp-up-{legacy}"));
        let run = c
            .scp(legacy, &src.display().to_string(), &c.remote(&up))
            .await;
        assert_eq!(run.status, Some(0), "scp -O={legacy} upload: {run:?}");
        assert_same(&files, &up.join("src"), &format!("scp -O={legacy} upload"));
    }

    // sftp get and put.
    let down = out("sftp-down");
    let up = out("sftp-up");
    let mut batch = String::new();
    for (name, _) in &files {
        batch += &format!(
            "get {} {}\n",
            src.join(name).display(),
            down.join(name).display()
        );
        batch += &format!(
            "put {} {}\n",
            src.join(name).display(),
            up.join(name).display()
        );
    }
    let run = c.sftp(&batch).await;
    assert_eq!(run.status, Some(0), "sftp: {run:?}");
    assert_same(&files, &down, "sftp get");
    assert_same(&files, &up, "sftp put");

    // rsync, both directions.
    let down = out("rsync-down");
    let run = c
        .rsync(
            &format!("{}/", c.remote(&src)),
            &format!("{}/", down.display()),
        )
        .await;
    assert_eq!(run.status, Some(0), "rsync download: {run:?}");
    assert_same(&files, &down, "rsync download");
    let up = out("rsync-up");
    let run = c
        .rsync(
            &format!("{}/", src.display()),
            &format!("{}/", c.remote(&up)),
        )
        .await;
    assert_eq!(run.status, Some(0), "rsync upload: {run:?}");
    assert_same(&files, &up, "rsync upload");

    // git: push a commit of the files to a bare repository on the target, clone it back.
    let work = root.join("git-work");
    let bare = root.join("git-bare.git");
    git_local(&["init", "-q", "--bare", bare.to_str().unwrap()]);
    git_local(&["init", "-q", work.to_str().unwrap()]);
    for (name, data) in &files {
        std::fs::write(work.join(name), data).unwrap();
    }
    git_local(&["-C", work.to_str().unwrap(), "add", "-A"]);
    git_local(&["-C", work.to_str().unwrap(), "commit", "-q", "-m", "binary"]);
    let run = c
        .git(&[
            "-C",
            work.to_str().unwrap(),
            "push",
            "-q",
            &c.git_url(&bare),
            "HEAD:refs/heads/main",
        ])
        .await;
    assert_eq!(run.status, Some(0), "git push: {run:?}");
    let clone = root.join("git-clone");
    let run = c
        .git(&["clone", "-q", &c.git_url(&bare), clone.to_str().unwrap()])
        .await;
    assert_eq!(run.status, Some(0), "git clone: {run:?}");
    assert_same(&files, &clone, "git clone");

    let recorder = gw.shutdown().await;
    // Every transfer was passed raw by an explicit rule, and its digest recorded.
    let digests = raw_digests(&recorder);
    assert!(!digests.is_empty());
    assert!(
        digests
            .iter()
            .all(|d| d["rule_id"] == "transfers" || d["rule_id"] == "sftp"),
        "{digests:?}"
    );
    assert!(
        digests
            .iter()
            .all(|d| d["why"] == "file transfer"
                && d["sha256"].as_str().is_some_and(|s| s.len() == 64)),
        "{digests:?}"
    );
    // Unmasked bytes stay out of the recording.
    assert!(!contains(&recorded_output(&recorder), b"alice@example.com"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_are_refused_with_a_reason_unless_the_policy_passes_them_raw() {
    let gw = start(Options {
        policy: Some(policy(false, false)),
        ..Options::default()
    })
    .await;
    let c = Client { gw: &gw };
    let root = gw.dir.path().to_path_buf();
    let src = root.join("src");
    let files = fill(&src);
    let reason = "does not pass it unmasked (binary = \"raw\")";
    let fresh = |name: &str| -> PathBuf {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    };

    for legacy in [false, true] {
        let down = fresh(&format!("scp-down-{legacy}"));
        let run = c
            .scp(legacy, &c.remote(&src), &down.display().to_string())
            .await;
        assert_ne!(run.status, Some(0), "scp -O={legacy}: {run:?}");
        assert!(run.stderr.contains(reason), "scp -O={legacy}: {run:?}");
        assert_nothing_different(&files, &down.join("src"), "scp download");
        let up = fresh(&format!("scp-up-{legacy}"));
        let run = c
            .scp(legacy, &src.display().to_string(), &c.remote(&up))
            .await;
        assert_ne!(run.status, Some(0), "scp -O={legacy} upload: {run:?}");
        assert!(
            run.stderr.contains(reason),
            "scp -O={legacy} upload: {run:?}"
        );
        assert_nothing_different(&files, &up.join("src"), "scp upload");
    }

    let down = fresh("sftp-down");
    let run = c
        .sftp(&format!(
            "get {} {}\n",
            src.join("mid.bin").display(),
            down.join("mid.bin").display()
        ))
        .await;
    assert_ne!(run.status, Some(0), "sftp: {run:?}");
    assert!(run.stderr.contains(reason), "sftp: {run:?}");
    assert_nothing_different(&files, &down, "sftp");

    let down = fresh("rsync-down");
    let run = c
        .rsync(
            &format!("{}/", c.remote(&src)),
            &format!("{}/", down.display()),
        )
        .await;
    assert_ne!(run.status, Some(0), "rsync: {run:?}");
    assert!(run.stderr.contains(reason), "rsync: {run:?}");
    assert_nothing_different(&files, &down, "rsync");

    let bare = root.join("git-bare.git");
    git_local(&["init", "-q", "--bare", bare.to_str().unwrap()]);
    let run = c
        .git(&[
            "clone",
            "-q",
            &c.git_url(&bare),
            root.join("clone").to_str().unwrap(),
        ])
        .await;
    assert_ne!(run.status, Some(0), "git: {run:?}");
    assert!(run.stderr.contains(reason), "git: {run:?}");

    let recorder = gw.shutdown().await;
    assert!(raw_digests(&recorder).is_empty());
    assert!(
        results(&recorder)
            .iter()
            .any(|r| r.status == "refused: binary"),
        "{:?}",
        results(&recorder)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_exec_output_is_refused_never_rewritten() {
    let gw = start(Options {
        policy: Some(policy(true, false)),
        ..Options::default()
    })
    .await;
    let root = gw.dir.path().to_path_buf();
    let files = fill(&root.join("src"));
    let reason = "carries binary data";

    // A random binary file: refused at once, nothing of it (rewritten or not) arrives.
    for (name, data) in files
        .iter()
        .filter(|(n, d)| n.ends_with(".bin") && !d.is_empty())
    {
        let run = gw
            .ssh(
                &format!("cat {}", root.join("src").join(name).display()),
                b"",
            )
            .await;
        assert_eq!(run.status, Some(126), "{name}: {run:?}");
        assert!(run.stderr.contains(reason), "{name}: {run:?}");
        assert!(
            data.starts_with(&run.stdout),
            "{name}: what arrived is not a prefix of the file"
        );
    }

    // Text first (masked), binary later: the text is masked, then the stream is refused.
    let big = root.join("src").join("big.bin");
    let run = gw
        .ssh(
            &format!(
                "echo mail alice@example.com; sleep 0.3; cat {}",
                big.display()
            ),
            b"",
        )
        .await;
    assert_eq!(run.status, Some(126), "{run:?}");
    assert!(run.stderr.contains(reason), "{run:?}");
    assert!(!contains(&run.stdout, b"alice@example.com"), "{run:?}");
    assert!(run.stdout.len() < 100, "binary data arrived: {run:?}");

    // A character split across chunks is text; a stream that ends inside one is not.
    let run = gw
        .ssh("printf 'caf\\303'; sleep 0.3; printf '\\251 ok\\n'", b"")
        .await;
    assert_eq!(run.status, Some(0), "{run:?}");
    assert_eq!(run.stdout_text(), "café ok\n");
    let run = gw.ssh("printf 'tail \\303'", b"").await;
    assert_eq!(run.status, Some(126), "{run:?}");
    assert!(run.stderr.contains(reason), "{run:?}");
    // A NUL byte on stderr counts too.
    let run = gw.ssh("printf 'x\\000y' >&2", b"").await;
    assert_eq!(run.status, Some(126), "{run:?}");
    assert!(run.stderr.contains("stderr carries binary data"), "{run:?}");

    // Text with PII is masked as ever.
    let run = gw
        .ssh(
            &format!("cat {}", root.join("src").join("pii.txt").display()),
            b"",
        )
        .await;
    assert_eq!(run.status, Some(0), "{run:?}");
    assert!(!contains(&run.stdout, b"alice@example.com"), "{run:?}");

    let recorder = gw.shutdown().await;
    assert!(raw_digests(&recorder).is_empty());
    assert!(
        results(&recorder)
            .iter()
            .any(|r| r.status == "refused: binary output")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_exec_output_passes_raw_only_by_rule_and_is_recorded_with_its_digest() {
    let gw = start(Options {
        policy: Some(policy(false, true)),
        ..Options::default()
    })
    .await;
    let root = gw.dir.path().to_path_buf();
    let files = fill(&root.join("src"));
    let (_, big) = files.iter().find(|(n, _)| n == "big.bin").unwrap();
    let run = gw
        .ssh(&format!("cat {}", root.join("src/big.bin").display()), b"")
        .await;
    assert_eq!(run.status, Some(0), "{}", run.stderr);
    assert_eq!(sha(&run.stdout), sha(big), "raw output altered");

    // Text stays masked under a raw rule; what follows a NUL byte is raw, and recorded so.
    let pii = root.join("src/pii.txt");
    let run = gw.ssh(&format!("cat {}", pii.display()), b"").await;
    assert_eq!(run.status, Some(0), "{run:?}");
    assert!(!contains(&run.stdout, b"alice@example.com"), "{run:?}");
    let run = gw
        .ssh(&format!("printf '\\000'; cat {}", pii.display()), b"")
        .await;
    assert_eq!(run.status, Some(0), "{run:?}");
    assert!(contains(&run.stdout, b"alice@example.com"), "{run:?}");

    let recorder = gw.shutdown().await;
    let digests = raw_digests(&recorder);
    assert!(
        digests.iter().any(|d| d["sha256"] == sha(big)
            && d["bytes"] == big.len()
            && d["rule_id"] == "exec"
            && d["why"] == "binary output"
            && d["stream"] == "stdout"),
        "{digests:?}"
    );
    assert_eq!(digests.len(), 2, "{digests:?}");
    // The raw bytes are not in the recording.
    assert!(!contains(&recorded_output(&recorder), b"alice@example.com"));
    assert!(!contains(&recorded_output(&recorder), &big[..64]));
}

/// Under `binary = "raw"`, a stream that turns binary after text is never silently altered:
/// if masking changed any of its text (also text in the same write as the first binary byte),
/// it ends with a refusal; if masking changed nothing, it continues raw, byte-exact, and the
/// recorded digest covers the whole stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_turning_binary_after_masked_text_is_refused_not_altered() {
    let gw = start(Options {
        policy: Some(policy(false, true)),
        ..Options::default()
    })
    .await;
    let reason = "turned binary after text that masking changed";
    // PII, then binary, in one write.
    let run = gw
        .ssh("printf 'mail alice@example.com\\n\\000\\001bin'", b"")
        .await;
    assert_eq!(run.status, Some(126), "{run:?}");
    assert!(run.stderr.contains(reason), "{run:?}");
    assert!(!contains(&run.stdout, b"alice@example.com"), "{run:?}");
    assert!(!contains(&run.stdout, b"bin"), "{run:?}");
    // PII right before the binary byte, no line break: masked like any text, then refused.
    let run = gw.ssh("printf 'mail alice@example.com\\000'", b"").await;
    assert_eq!(run.status, Some(126), "{run:?}");
    assert!(!contains(&run.stdout, b"alice@example.com"), "{run:?}");
    // PII in an earlier write, binary later.
    let run = gw
        .ssh(
            "printf 'card 4111111111111111\\n'; sleep 0.3; printf 'x\\377y'",
            b"",
        )
        .await;
    assert_eq!(run.status, Some(126), "{run:?}");
    assert!(run.stderr.contains(reason), "{run:?}");
    assert!(!contains(&run.stdout, b"4111111111111111"), "{run:?}");
    assert!(!contains(&run.stdout, b"x\xffy"), "{run:?}");

    // Text that masking leaves alone, then binary: passed on byte-exact.
    let expected = b"plain text\nmore\x00\x01\xffend".to_vec();
    let run = gw
        .ssh(
            "printf 'plain text\\n'; sleep 0.3; printf 'more\\000\\001\\377end'",
            b"",
        )
        .await;
    assert_eq!(run.status, Some(0), "{run:?}");
    assert_eq!(run.stdout, expected);

    let recorder = gw.shutdown().await;
    assert!(!contains(&recorded_output(&recorder), b"alice@example.com"));
    assert!(!contains(&recorded_output(&recorder), b"4111111111111111"));
    let digests = raw_digests(&recorder);
    assert_eq!(digests.len(), 1, "{digests:?}");
    assert_eq!(digests[0]["sha256"], sha(&expected), "{digests:?}");
    assert_eq!(digests[0]["bytes"], expected.len(), "{digests:?}");
    assert_eq!(
        digests[0]["text_bytes"],
        "plain text\nmore".len(),
        "{digests:?}"
    );
    assert!(
        results(&recorder)
            .iter()
            .filter(|r| r.status == "refused: binary output after masked text")
            .count()
            == 3
    );
}

/// Without a raw rule, a stream that ends inside a character, or pauses there, lets none of
/// that character out before it is refused, and the text before it is masked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_character_at_the_end_is_refused_without_leaking() {
    let gw = start(Options::default()).await;
    for command in [
        "printf 'mail alice@example.com\\n\\342\\202'",
        "printf 'card 4111111111111111\\342'; sleep 0.3",
    ] {
        let run = gw.ssh(command, b"").await;
        assert_eq!(run.status, Some(126), "{command}: {run:?}");
        assert!(run.stderr.contains("carries binary data"), "{run:?}");
        assert!(!contains(&run.stdout, b"\xe2"), "{command}: {run:?}");
        assert!(!contains(&run.stdout, b"alice@example.com"), "{run:?}");
        assert!(!contains(&run.stdout, b"4111111111111111"), "{run:?}");
    }
    gw.shutdown().await;
}
