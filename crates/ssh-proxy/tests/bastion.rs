#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The SSH bastion against a real OpenSSH sshd, driven by the real `ssh`, `sftp` and `rsync`
//! clients and by a russh client.

#[path = "channels/mod.rs"]
mod channels;
mod common;
mod corpus;
#[path = "outcomes/mod.rs"]
mod outcomes;
#[path = "streaming/mod.rs"]
mod streaming;
#[path = "transfers/mod.rs"]
mod transfers;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use gatehouse_core::*;
use gatehouse_ssh::{LoginRateLimit, UpstreamHostKey};
use gatehouse_testkit::within;
use sha2::{Digest, Sha256};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_output_and_exit_statuses_propagate() {
    let gw = start(Options::default()).await;
    let run = gw.ssh("echo hi", b"").await;
    assert_eq!(run.status, Some(0), "{run:?}");
    assert_eq!(run.stdout_text(), "hi\n");

    let run = gw.ssh("echo oops >&2; exit 3", b"").await;
    assert_eq!(run.status, Some(3), "{run:?}");
    assert!(run.stderr.contains("oops"), "{run:?}");

    // `login@TARGET` works for the configured login; another login is refused.
    let login = gw.sshd.user().to_string();
    let run = gw
        .ssh_with(
            &["-l", &format!("{login}@{TARGET}")],
            "127.0.0.1",
            "id -un",
            b"",
        )
        .await;
    assert_eq!(run.status, Some(0), "{run:?}");
    assert_eq!(run.stdout_text().trim(), login);
    let run = gw
        .ssh_with(&["-l", "nobody-else@web"], "127.0.0.1", "true", b"")
        .await;
    assert_eq!(run.status, Some(255), "{run:?}");

    let recorder = gw.shutdown().await;
    let ops = operations(&recorder);
    let Operation::Ssh(SshOperation::Exec(first)) = &ops[0].0 else {
        panic!("{ops:?}")
    };
    assert_eq!(first.parsed.argv, ["echo", "hi"]);
    let statuses: Vec<String> = results(&recorder).into_iter().map(|r| r.status).collect();
    assert_eq!(statuses, ["0", "3", "0"]);
    let events = recorder.events();
    let starts = events
        .iter()
        .filter(|e| matches!(e.body, EventBody::SessionStart { .. }))
        .count();
    let ends = events
        .iter()
        .filter(|e| matches!(e.body, EventBody::SessionEnd { .. }))
        .count();
    assert_eq!((starts, ends), (3, 3));
    assert!(
        events
            .iter()
            .filter(|e| matches!(e.body, EventBody::SessionStart { .. }))
            .all(|e| e.identity.as_ref().map(|i| i.subject.as_str()) == Some("agent-1"))
    );
}

/// Exit statuses through a shared connection (`ssh -M`, then `ssh -S`). The master closes a
/// multiplexed session channel as soon as both sides have sent EOF, without waiting for the
/// exit status; what it has not received by then, its client reports as 255. So the gateway
/// sends the exit status before the EOF, also when the target sends them the other way round
/// (a command that closes its output before it exits: the target's EOF, then a pause, then
/// the exit status).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_statuses_reach_a_multiplexed_client_also_when_the_output_ends_first() {
    let gw = start(Options::default()).await;
    let control = gw.dir.path().join("ctl.sock");
    let control_opt = format!("ControlPath={}", control.display());
    let mut master = tokio::process::Command::new("ssh");
    master
        .args(gw.ssh_options())
        .args(["-M", "-N", "-o", &control_opt, "-o", "ControlPersist=no"])
        .arg(format!("{TARGET}@127.0.0.1"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    gw.askpass_env(&mut master);
    let mut master = master.spawn().expect("ssh");
    // The master listens on its control socket once it is logged in.
    within(LIMIT, async {
        while !control.exists() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let mut runs = Vec::new();
    for command in [
        "echo out; exit 3",
        "echo out; exec >&- 2>&-; sleep 1; exit 4",
    ] {
        runs.push(
            gw.ssh_with(
                &["-o", &control_opt, "-o", "ControlMaster=no"],
                &format!("{TARGET}@127.0.0.1"),
                command,
                b"",
            )
            .await,
        );
    }
    let _ = master.start_kill();
    let _ = within(LIMIT, master.wait()).await;
    for (run, status) in runs.iter().zip([3, 4]) {
        assert_eq!(run.stdout_text(), "out\n", "{run:?}");
        assert_eq!(run.status, Some(status), "{run:?}");
    }
    let recorder = gw.shutdown().await;
    let statuses: Vec<String> = results(&recorder).into_iter().map(|r| r.status).collect();
    assert_eq!(statuses, ["3", "4"]);
    // Both ran through the master's one connection.
    let starts = recorder
        .events()
        .iter()
        .filter(|e| matches!(e.body, EventBody::SessionStart { .. }))
        .count();
    assert_eq!(starts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_is_piped_through() {
    let gw = start(Options::default()).await;
    let input: Vec<u8> = (0..300_000u32)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect();
    let run = gw.ssh("wc -c", &input).await;
    assert_eq!(run.status, Some(0), "{run:?}");
    assert_eq!(run.stdout_text().trim(), input.len().to_string());
    let run = gw.ssh("cat", &input).await;
    assert_eq!(run.status, Some(0));
    assert_eq!(Sha256::digest(&run.stdout), Sha256::digest(&input));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_cat_arrives_intact() {
    let gw = start(Options::default()).await;
    let path = gw.dir.path().join("big.txt");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        let mut i = 0u64;
        let mut written = 0usize;
        while written < 100 * 1024 * 1024 {
            let line = format!("line {i:09} the quick brown fox jumps over the lazy dog\n");
            f.write_all(line.as_bytes()).unwrap();
            written += line.len();
            i += 1;
        }
    }
    let expected = hex::encode(Sha256::digest(std::fs::read(&path).unwrap()));
    let mut cmd = tokio::process::Command::new("ssh");
    cmd.args(gw.ssh_options())
        .arg(format!("{TARGET}@127.0.0.1"))
        .arg(format!("cat {}", path.display()));
    let run = run_client(&gw, cmd, b"").await;
    assert_eq!(run.status, Some(0), "{}", run.stderr);
    assert_eq!(
        run.stdout.len() as u64,
        std::fs::metadata(&path).unwrap().len()
    );
    assert_eq!(hex::encode(Sha256::digest(&run.stdout)), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rm_and_its_shell_tricks_are_denied_with_126() {
    let gw = start(Options::default()).await;
    let canary = gw.dir.path().join("canary-dir");
    std::fs::create_dir(&canary).unwrap();
    let c = canary.display().to_string();
    // Every form targets `/` (GNU rm's preserve-root is the safety net should the gateway ever
    // fail) or the canary directory, which must survive.
    let forms = [
        "rm -rf /".to_string(),
        "r''m -rf /".to_string(),
        "\\rm -rf /".to_string(),
        "\"rm\" -rf /".to_string(),
        "/bin/rm -rf /".to_string(),
        "sh -c 'rm -rf /'".to_string(),
        "bash -c \"rm -rf /\"".to_string(),
        format!("ls; rm -rf {c}"),
        format!("true && rm -rf {c}"),
        format!("env rm -rf {c}"),
        format!("$(echo rm) -rf {c}"),
        format!("`echo rm` -rf {c}"),
        format!("find {c} -exec rm -rf {{}} +"),
    ];
    for form in &forms {
        let run = gw.ssh(form, b"").await;
        assert_eq!(run.status, Some(126), "{form}: {run:?}");
        assert!(
            run.stderr.contains("gatehouse: denied by rule"),
            "{form}: {}",
            run.stderr
        );
        assert!(run.stdout.is_empty(), "{form}");
        assert!(canary.exists(), "{form} removed the canary");
    }
    let recorder = gw.shutdown().await;
    let ops = operations(&recorder);
    assert_eq!(ops.len(), forms.len());
    assert!(ops.iter().all(|(_, d)| d.verdict == Verdict::Deny));
    assert!(results(&recorder).iter().all(|r| r.status == "denied"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviewed_command_waits_for_approval_then_runs() {
    let gw = start(Options::default()).await;
    let bin = gw.dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let marker = gw.dir.path().join("restarted");
    write_script(
        &bin.join("systemctl"),
        &format!(
            "#!/bin/sh\necho \"$@\" > {}\necho restarted \"$2\"\ncat\n",
            marker.display()
        ),
    );
    let systemctl = bin.join("systemctl").display().to_string();

    // Approve from "another person" as soon as the request shows up.
    let approvals = gw.approvals.clone();
    let approver_task = tokio::spawn(async move {
        let id = approvals.next_pending().await;
        approvals
            .decide(
                &id,
                &approver(),
                ApprovalDecision::Approve,
                "planned restart",
            )
            .await
            .unwrap();
        id
    });
    // The agent's stdin (sent at once, with EOF) is held while the command waits, then given to
    // it.
    let run = gw
        .ssh(&format!("{systemctl} restart x"), b"early input\n")
        .await;
    let id = within(LIMIT, approver_task).await.unwrap();
    assert_eq!(run.status, Some(0), "{run:?}");
    assert!(
        run.stderr.contains(&format!(
            "gatehouse: waiting for approval {id} (rule 'review-systemctl'"
        )),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains(&format!("gatehouse: approval {id} granted")),
        "{}",
        run.stderr
    );
    assert_eq!(run.stdout_text(), "restarted x\nearly input\n");
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "restart x\n");

    // A denial: refused with 126 and the approver's reason; the command never ran.
    std::fs::remove_file(&marker).unwrap();
    let approvals = gw.approvals.clone();
    let denier = tokio::spawn(async move {
        let id = approvals.next_pending().await;
        approvals
            .decide(
                &id,
                &approver(),
                ApprovalDecision::Deny,
                "not during business hours",
            )
            .await
            .unwrap();
    });
    let run = gw.ssh(&format!("{systemctl} restart x"), b"").await;
    within(LIMIT, denier).await.unwrap();
    assert_eq!(run.status, Some(126), "{run:?}");
    assert!(
        run.stderr.contains("not during business hours"),
        "{}",
        run.stderr
    );
    assert!(!marker.exists());

    let recorder = gw.shutdown().await;
    let events = recorder.events();
    let resolved: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::ApprovalResolved { outcome, .. } => Some(outcome.clone()),
            _ => None,
        })
        .collect();
    assert!(matches!(resolved[0], ApprovalOutcome::Approved { .. }));
    assert!(matches!(resolved[1], ApprovalOutcome::Denied { .. }));
    // One request per held command, recorded once (by the approvals layer), with the index of
    // the operation it holds.
    let held: Vec<u64> = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::Operation {
                index, decision, ..
            } if decision.verdict == Verdict::Review => Some(*index),
            _ => None,
        })
        .collect();
    let requested: Vec<u64> = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::ApprovalRequested { index, .. } => Some(*index),
            _ => None,
        })
        .collect();
    assert_eq!(held.len(), 2, "{}", recorder.dump());
    assert_eq!(requested, held, "{}", recorder.dump());
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e.body, EventBody::ApprovalUsed { .. }))
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_is_refused_by_default() {
    let gw = start(Options::default()).await;
    let mut cmd = tokio::process::Command::new("sftp");
    let mut opts = gw.ssh_options();
    opts[0] = "-P".into(); // sftp spells the port option differently
    cmd.args(opts).arg(format!("{TARGET}@127.0.0.1"));
    let run = run_client(&gw, cmd, b"").await;
    assert_ne!(run.status, Some(0), "{run:?}");
    // The request is accepted and the refusal explained on stderr (a failed request would only
    // say "subsystem request failed").
    assert!(
        run.stderr
            .contains("subsystem 'sftp' denied by rule 'no-subsystems'"),
        "{}",
        run.stderr
    );
    let recorder = gw.shutdown().await;
    let ops = operations(&recorder);
    assert_eq!(ops.len(), 1, "{ops:?}");
    assert!(matches!(
        &ops[0].0,
        Operation::Ssh(SshOperation::Subsystem { name }) if name == "sftp"
    ));
    assert_eq!(ops[0].1.verdict, Verdict::Deny);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_host_key_mismatch_is_refused_and_recorded() {
    let gw = start(Options {
        config: Box::new(|config, _| {
            // Pin some other key: the gateway must refuse the real one.
            let other =
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
            config.targets[0].host_key = UpstreamHostKey::PublicKey {
                openssh: other.into(),
            };
        }),
        ..Options::default()
    })
    .await;
    let run = gw.ssh("echo should-not-run", b"").await;
    assert_eq!(run.status, Some(255), "{run:?}");
    assert!(run.stdout.is_empty());
    assert!(
        run.stderr
            .contains("host key verification failed for target 'web'"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("expected SHA256:"), "{}", run.stderr);
    let recorder = gw.shutdown().await;
    assert!(recorder.events().iter().any(|e| matches!(
        &e.body,
        EventBody::Error { side: Side::Upstream, message } if message.contains("host key verification failed")
    )));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn card_numbers_and_aws_secrets_are_masked_for_client_and_recording() {
    let gw = start(Options::default()).await;
    let card = "4111 1111 1111 1111";
    let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    let file = gw.dir.path().join("leaky.txt");
    std::fs::write(
        &file,
        format!("customer card {card}\naws_secret_access_key = {secret}\n"),
    )
    .unwrap();
    let run = gw.ssh(&format!("cat {}", file.display()), b"").await;
    assert_eq!(run.status, Some(0), "{run:?}");
    let out = run.stdout_text();
    assert!(!out.contains(card), "{out}");
    assert!(!out.contains(secret), "{out}");
    assert!(out.contains("customer card "), "{out}");
    // stderr goes through its own masker.
    let run = gw.ssh(&format!("cat {} >&2", file.display()), b"").await;
    assert!(!run.stderr.contains(card) && !run.stderr.contains(secret));
    assert!(run.stderr.contains("customer card "), "{}", run.stderr);

    let recorder = gw.shutdown().await;
    let recorded = recorded_output(&recorder);
    assert!(contains(&recorded, b"customer card "));
    assert!(!contains(&recorded, card.as_bytes()));
    assert!(!contains(&recorded, secret.as_bytes()));
    let dump = recorder.dump();
    assert!(!dump.contains(card) && !dump.contains(secret));
    let findings: Vec<String> = results(&recorder)
        .into_iter()
        .flat_map(|r| r.findings)
        .map(|f| f.rule)
        .collect();
    assert!(findings.len() >= 4, "{findings:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_the_gateways_key_never_reaches_client_or_audit() {
    let gw = start(Options::default()).await;
    let key_path = gw.sshd.client_key_path();
    let key_text = std::fs::read_to_string(&key_path).unwrap();
    let body_lines: Vec<&str> = key_text
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .collect();
    assert!(!body_lines.is_empty());
    // The agent tries to read the key the gateway logs in with, plainly and encoded.
    for command in [
        format!("cat {}", key_path.display()),
        format!("grep -v -- ----- {}", key_path.display()),
        format!("base64 -w0 {}", key_path.display()),
        format!("od -An -tx1 {} | tr -d ' \\n'", key_path.display()),
    ] {
        let run = gw.ssh(&command, b"").await;
        let out = run.stdout_text();
        for line in &body_lines {
            assert!(
                !out.contains(line),
                "{command}: key material reached the client"
            );
            assert!(!run.stderr.contains(line));
        }
        let first_hex = hex::encode(body_lines[0]);
        assert!(
            !out.contains(&first_hex),
            "{command}: key material (hex) reached the client"
        );
        if command.starts_with("cat") {
            // The masker recognises a PEM private key first.
            assert!(
                out.contains("[private-key]") || run.stderr.contains("output withheld"),
                "{out}"
            );
        } else {
            // Without its armour only the egress guard knows it: the output is withheld.
            assert!(
                run.stderr.contains("output withheld"),
                "{command}: {} / {out}",
                run.stderr
            );
            assert_eq!(run.status, Some(255));
        }
    }
    let recorder = gw.shutdown().await;
    let dump = recorder.dump();
    for secret in &gw_secrets_text(&key_text) {
        assert!(
            !dump.contains(secret.as_str()),
            "key material in the audit log"
        );
    }
    assert!(recorder.events().iter().any(|e| matches!(
        e.body,
        EventBody::EgressBlocked { ref site, hits } if site == "client" && hits > 0
    )));
}

fn gw_secrets_text(key_text: &str) -> Vec<String> {
    key_text
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_recorded_and_rate_limited() {
    let gw = start(Options {
        config: Box::new(|config, _| {
            config.login_rate_limit = LoginRateLimit {
                max_failures: 2,
                window_secs: 3600,
            };
        }),
        ..Options::default()
    })
    .await;
    let wrong = gw.dir.path().join("wrong.sh");
    write_script(&wrong, "#!/bin/sh\necho wrong-token\n");
    for _ in 0..2 {
        let mut cmd = tokio::process::Command::new("ssh");
        cmd.args(gw.ssh_options()).arg("web@127.0.0.1").arg("true");
        cmd.env("SSH_ASKPASS", &wrong)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":0")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let out = within(LIMIT, cmd.output()).await.unwrap();
        assert_eq!(out.status.code(), Some(255));
    }
    // Now even the right token is refused from this address.
    let run = gw.ssh("echo hi", b"").await;
    assert_eq!(run.status, Some(255), "{run:?}");
    assert!(run.stdout.is_empty());
    let recorder = gw.shutdown().await;
    let reasons: Vec<AuthErrorKind> = recorder
        .events()
        .into_iter()
        .filter_map(|e| match e.body {
            EventBody::LoginFailed { reason, .. } => Some(reason),
            _ => None,
        })
        .collect();
    assert!(
        reasons.contains(&AuthErrorKind::UnknownCredential),
        "{reasons:?}"
    );
    assert!(reasons.contains(&AuthErrorKind::RateLimited), "{reasons:?}");
    assert!(!reasons.contains(&AuthErrorKind::Expired));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorder_failure_fails_closed() {
    let memory = Arc::new(gatehouse_testkit::layers::MemoryRecorder::new());
    memory.set_failing(true);
    let gw = start(Options {
        recorder: Some(memory.clone()),
        ..Options::default()
    })
    .await;
    let marker = gw.dir.path().join("ran");
    let run = gw.ssh(&format!("touch {}", marker.display()), b"").await;
    // Unavailable, not forbidden: EX_TEMPFAIL, retry later.
    assert_eq!(run.status, Some(75), "{run:?}");
    assert!(
        run.stderr.contains("audit log is unavailable"),
        "{}",
        run.stderr
    );
    assert!(!marker.exists(), "a command ran unrecorded");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsync_over_the_gateway_copies_a_directory() {
    if std::process::Command::new("rsync")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("rsync is not installed (.ci/packages installs it)");
    }
    let gw = start(Options::default()).await;
    let src = gw.dir.path().join("src");
    let dst = gw.dir.path().join("dst");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    for i in 0..20 {
        let body: String = (0..(i * 500)).map(|j| format!("{i}:{j}\n")).collect();
        std::fs::write(src.join(format!("f{i}.txt")), &body).unwrap();
        std::fs::write(src.join("sub").join(format!("g{i}.txt")), body.repeat(2)).unwrap();
    }
    let ssh_cmd = format!("ssh {}", gw.ssh_options().join(" "));
    let mut cmd = tokio::process::Command::new("rsync");
    cmd.arg("-a")
        .arg("-e")
        .arg(&ssh_cmd)
        .arg(format!("{}/", src.display()))
        .arg(format!("{TARGET}@127.0.0.1:{}/", dst.display()));
    let run = run_client(&gw, cmd, b"").await;
    assert_eq!(run.status, Some(0), "{run:?}");
    for i in 0..20 {
        for rel in [format!("f{i}.txt"), format!("sub/g{i}.txt")] {
            assert_eq!(
                std::fs::read(src.join(&rel)).unwrap(),
                std::fs::read(dst.join(&rel)).unwrap(),
                "{rel}"
            );
        }
    }
    let recorder = gw.shutdown().await;
    let ops = operations(&recorder);
    assert!(ops.iter().any(|(op, d)| matches!(
        op,
        Operation::Ssh(SshOperation::FileTransfer { tool, command })
            if tool == "rsync" && command.program() == Some("rsync")
    ) && d.verdict == Verdict::Allow));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsync_is_refused_when_no_rule_allows_it() {
    let gw = start(Options {
        policy: Some(gatehouse_testkit::layers::FnPolicy::new(
            |_, _, op| match op {
                Operation::Ssh(SshOperation::FileTransfer { tool, .. }) if tool == "rsync" => {
                    Decision::deny("no-rsync", "file transfer is not allowed here")
                }
                _ => Decision::allow("default", "allowed"),
            },
        )),
        ..Options::default()
    })
    .await;
    let src = gw.dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("a"), "a").unwrap();
    let dst = gw.dir.path().join("dst");
    let mut cmd = tokio::process::Command::new("rsync");
    cmd.arg("-a")
        .arg("-e")
        .arg(format!("ssh {}", gw.ssh_options().join(" ")))
        .arg(format!("{}/", src.display()))
        .arg(format!("{TARGET}@127.0.0.1:{}/", dst.display()));
    let run = run_client(&gw, cmd, b"").await;
    assert_ne!(run.status, Some(0));
    assert!(
        run.stderr.contains("denied by rule 'no-rsync'"),
        "{}",
        run.stderr
    );
    assert!(!dst.exists());
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_allow_list_and_several_channels_per_connection() {
    let gw = start(Options::default()).await;
    let client = russh_login(&gw, TARGET).await;
    // Three channels at once on one connection.
    let mut tasks = Vec::new();
    for i in 0..3 {
        let ch = client.channel_open_session().await.unwrap();
        tasks.push(tokio::spawn(async move {
            let mut ch = ch;
            ch.set_env(true, "LC_GATEHOUSE", format!("v{i}"))
                .await
                .unwrap();
            ch.set_env(true, "LD_PRELOAD", "/tmp/evil.so")
                .await
                .unwrap();
            ch.exec(
                true,
                format!("echo $LC_GATEHOUSE-${{LD_PRELOAD:-unset}}; exit {i}"),
            )
            .await
            .unwrap();
            let mut out = Vec::new();
            let mut status = None;
            let mut replies = Vec::new();
            while let Some(msg) = ch.wait().await {
                match msg {
                    russh::ChannelMsg::Data { data } => out.extend_from_slice(&data),
                    russh::ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                    russh::ChannelMsg::Success => replies.push(true),
                    russh::ChannelMsg::Failure => replies.push(false),
                    russh::ChannelMsg::Close => break,
                    _ => {}
                }
            }
            (
                i,
                String::from_utf8_lossy(&out).into_owned(),
                status,
                replies,
            )
        }));
    }
    for t in tasks {
        let (i, out, status, replies) = within(LIMIT, t).await.unwrap();
        // The command line has an expansion: the test policy refuses it...
        assert_eq!(status, Some(126), "{out}");
        // ...but the env replies came first and in order: allowed, refused, then exec accepted.
        assert_eq!(replies, [true, false, true], "channel {i}");
    }
    // A plain command on a fresh channel sees the allowed variable only.
    let mut ch = client.channel_open_session().await.unwrap();
    ch.set_env(false, "LC_GATEHOUSE", "yes").await.unwrap();
    ch.set_env(false, "LD_PRELOAD", "/tmp/evil.so")
        .await
        .unwrap();
    ch.exec(true, "env").await.unwrap();
    let mut out = Vec::new();
    while let Some(msg) = within(LIMIT, ch.wait()).await {
        match msg {
            russh::ChannelMsg::Data { data } => out.extend_from_slice(&data),
            russh::ChannelMsg::Close => break,
            _ => {}
        }
    }
    let env = String::from_utf8_lossy(&out);
    assert!(env.contains("LC_GATEHOUSE=yes"), "{env}");
    assert!(!env.contains("LD_PRELOAD"), "{env}");
    let _ = client
        .disconnect(russh::Disconnect::ByApplication, "", "en")
        .await;
    gw.shutdown().await;
}

/// Reads channel output until `pred` holds for everything read so far.
async fn read_until(
    ch: &mut russh::Channel<russh::client::Msg>,
    seen: &mut Vec<u8>,
    pred: impl Fn(&str) -> bool,
) {
    within(Duration::from_secs(20), async {
        while !pred(&String::from_utf8_lossy(seen)) {
            match ch.wait().await {
                Some(russh::ChannelMsg::Data { data }) => seen.extend_from_slice(&data),
                Some(russh::ChannelMsg::ExtendedData { data, .. }) => seen.extend_from_slice(&data),
                Some(_) => {}
                None => panic!("channel ended; saw {:?}", String::from_utf8_lossy(seen)),
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pty_shell_prompt_resize_exit_and_asciicast_replay() {
    let root = tempfile::tempdir().unwrap();
    let recorder = Arc::new(
        gatehouse_recorder::AuditRecorder::open(
            root.path(),
            gatehouse_recorder::RecorderConfig::new("ssh-test"),
            gatehouse_recorder::CheckpointSigner::generate().unwrap(),
            None,
        )
        .await
        .unwrap(),
    );
    let gw = start(Options {
        recorder: Some(recorder.clone()),
        ..Options::default()
    })
    .await;
    let client = russh_login(&gw, TARGET).await;
    let mut ch = client.channel_open_session().await.unwrap();
    ch.request_pty(true, "xterm", 80, 24, 0, 0, &[])
        .await
        .unwrap();
    ch.set_env(true, "LC_PS1_MARK", "x").await.unwrap();
    // A shell with a known prompt and no rc files, so the test can wait for it.
    ch.exec(true, "env PS1='gh-prompt> ' sh -i").await.unwrap();
    let mut seen = Vec::new();
    // The prompt has no newline after it: it appears only if the gateway's idle flush works.
    read_until(&mut ch, &mut seen, |s| s.contains("gh-prompt> ")).await;

    ch.data(&b"echo $((6*7))\n"[..]).await.unwrap();
    read_until(&mut ch, &mut seen, |s| s.contains("42\r\n")).await;
    ch.window_change(100, 40, 0, 0).await.unwrap();
    ch.data(&b"stty size\n"[..]).await.unwrap();
    read_until(&mut ch, &mut seen, |s| s.contains("40 100")).await;
    ch.data(&b"exit 0\n"[..]).await.unwrap();
    let mut status = None;
    within(Duration::from_secs(20), async {
        while let Some(msg) = ch.wait().await {
            match msg {
                russh::ChannelMsg::Data { data } => seen.extend_from_slice(&data),
                russh::ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                russh::ChannelMsg::Close => break,
                _ => {}
            }
        }
    })
    .await;
    assert_eq!(status, Some(0));
    let _ = client
        .disconnect(russh::Disconnect::ByApplication, "", "en")
        .await;
    gw.shutdown().await;

    // The recording replays as asciicast v2 with the same screen output, the input and the resize.
    let rec_dir = root.path().join("recordings");
    let session_dir = std::fs::read_dir(&rec_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let file = std::fs::read_dir(&session_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let recording =
        gatehouse_recorder::recording::parse_recording(&std::fs::read(file).unwrap()).unwrap();
    assert!(matches!(
        recording.header.kind,
        RecordingKind::Terminal { cols: 80, rows: 24 }
    ));
    let cast = gatehouse_recorder::replay::to_asciicast(&recording).unwrap();
    let mut lines = cast.lines();
    let header: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["version"], 2);
    let mut replayed = String::new();
    let mut inputs = String::new();
    let mut resizes = Vec::new();
    for line in lines {
        let ev: serde_json::Value = serde_json::from_str(line).unwrap();
        match ev[1].as_str().unwrap() {
            "o" => replayed.push_str(ev[2].as_str().unwrap()),
            "i" => inputs.push_str(ev[2].as_str().unwrap()),
            "r" => resizes.push(ev[2].as_str().unwrap().to_string()),
            _ => {}
        }
    }
    assert_eq!(replayed, String::from_utf8_lossy(&seen));
    assert!(inputs.contains("stty size\n"), "{inputs}");
    assert_eq!(resizes, ["100x40"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_expiry_ends_the_session() {
    let mut short_lived = agent();
    short_lived.expires_at = Some(now() + time::Duration::seconds(2));
    let gw = start(Options {
        authenticator: Some(
            gatehouse_testkit::layers::StaticAuthenticator::new().with_token(TOKEN, short_lived),
        ),
        ..Options::default()
    })
    .await;
    let client = russh_login(&gw, TARGET).await;
    let mut ch = client.channel_open_session().await.unwrap();
    ch.exec(true, "sleep 50").await.unwrap();
    // The channel ends long before `sleep 50` would, because the identity expires.
    within(Duration::from_secs(30), async {
        while ch.wait().await.is_some() {}
    })
    .await;
    within(Duration::from_secs(10), async {
        while !client.is_closed() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let recorder = gw.shutdown().await;
    let reasons: Vec<String> = recorder
        .events()
        .into_iter()
        .filter_map(|e| match e.body {
            EventBody::SessionEnd { reason, .. } => Some(reason),
            _ => None,
        })
        .collect();
    assert_eq!(reasons, ["token expired"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistered_keys_offered_first_do_not_use_up_the_login_limit() {
    let gw = start(Options {
        config: Box::new(|config, _| {
            config.login_rate_limit = LoginRateLimit {
                max_failures: 2,
                window_secs: 3600,
            };
        }),
        ..Options::default()
    })
    .await;
    // Like an agent whose ssh-agent holds several keys: each is offered (and signed) first.
    let key = russh::keys::load_secret_key(gw.sshd.client_key_path(), None).unwrap();
    for _ in 0..3 {
        let config = Arc::new(russh::client::Config::default());
        let mut handle = russh::client::connect(config, gw.addr, RusshClient)
            .await
            .unwrap();
        let r = handle
            .authenticate_publickey(
                TARGET,
                russh::keys::PrivateKeyWithHashAlg::new(Arc::new(key.clone()), None),
            )
            .await
            .unwrap();
        assert!(!r.success());
        let r = handle.authenticate_password(TARGET, TOKEN).await.unwrap();
        assert!(r.success(), "the token was refused after key offers");
    }
    let recorder = gw.shutdown().await;
    assert!(recorder.events().iter().any(|e| matches!(
        e.body,
        EventBody::LoginFailed {
            reason: AuthErrorKind::Unsupported,
            ..
        }
    )));
}

/// `ssh` with OpenSSH's default log level (INFO), so anything the gateway sends shows.
fn ssh_at_info(gw: &Gateway) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("ssh");
    cmd.args(gw.ssh_options().into_iter().map(|o| {
        if o == "LogLevel=ERROR" {
            "LogLevel=INFO".to_string()
        } else {
            o
        }
    }));
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stderr_is_empty_by_default_and_a_banner_only_when_configured() {
    let gw = start(Options::default()).await;
    let mut cmd = ssh_at_info(&gw);
    cmd.arg(format!("{TARGET}@127.0.0.1")).arg("true");
    let run = run_client(&gw, cmd, b"").await;
    assert_eq!(run.status, Some(0), "{run:?}");
    assert_eq!(run.stderr, "", "the gateway wrote to a client's stderr");
    gw.shutdown().await;

    let gw = start(Options {
        config: Box::new(|c, _| c.banner = Some("Authorised use only.".into())),
        ..Options::default()
    })
    .await;
    let mut cmd = ssh_at_info(&gw);
    cmd.arg(format!("{TARGET}@127.0.0.1")).arg("true");
    let run = run_client(&gw, cmd, b"").await;
    assert_eq!(run.status, Some(0), "{run:?}");
    assert_eq!(run.stderr.trim(), "Authorised use only.", "{run:?}");
    gw.shutdown().await;
}

/// PII in a command line, its argv and its environment reaches sshd and the policy as written,
/// while the audit log (`operation` events, the approval request) keeps it masked; the approval
/// binds the real command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_line_pii_is_masked_in_the_audit_log_only() {
    let policy = gatehouse_testkit::layers::FnPolicy::new(|_, _, op| match op {
        Operation::Ssh(SshOperation::Exec(cmd)) => {
            let words: Vec<&str> = cmd.parsed.argv.iter().map(String::as_str).collect();
            let env_seen = cmd
                .env
                .iter()
                .any(|(k, v)| k == "LC_NOTE" && v == "bob@example.org");
            if words.get(1..) != Some(&["alice@example.com", "4111111111111111"][..]) || !env_seen {
                return Decision::deny("masked-argv", "the policy saw a masked command");
            }
            Decision::review(
                "review-note",
                "notes need a human",
                ReviewRequirement {
                    approver_groups: vec!["ops".into()],
                    approvals_required: 1,
                    timeout_ms: 30_000,
                    grant_window_ms: None,
                },
            )
        }
        Operation::Ssh(SshOperation::Env { .. }) => Decision::allow("env", "env allowed"),
        _ => Decision::deny("default-deny", "not allowed"),
    });
    let gw = start(Options {
        policy: Some(policy),
        ..Options::default()
    })
    .await;
    let bin = gw.dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let marker = gw.dir.path().join("noted");
    write_script(
        &bin.join("note"),
        &format!(
            "#!/bin/sh\necho \"$@\" \"$LC_NOTE\" > {}\n",
            marker.display()
        ),
    );
    let note = bin.join("note").display().to_string();

    let approvals = gw.approvals.clone();
    let approver_task = tokio::spawn(async move {
        let id = approvals.next_pending().await;
        let record = approvals.get(&id).await.unwrap();
        approvals
            .decide(&id, &approver(), ApprovalDecision::Approve, "ok")
            .await
            .unwrap();
        record
    });
    let run = gw
        .ssh_with(
            &["-o", "SetEnv=LC_NOTE=bob@example.org"],
            &format!("{TARGET}@127.0.0.1"),
            &format!("{note} alice@example.com 4111111111111111"),
            b"",
        )
        .await;
    let record = within(LIMIT, approver_task).await.unwrap();
    assert_eq!(run.status, Some(0), "{run:?}");
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        "alice@example.com 4111111111111111 bob@example.org\n",
        "sshd ran the real command"
    );
    let Operation::Ssh(SshOperation::Exec(real)) = &record.request.operation else {
        panic!("{record:?}");
    };
    assert!(
        real.command_line
            .ends_with("alice@example.com 4111111111111111")
    );
    let Operation::Ssh(SshOperation::Exec(shown)) = record.request.shown() else {
        panic!("{record:?}");
    };
    let shown_text = serde_json::to_string(shown).unwrap();
    assert!(
        !shown_text.contains("alice@example.com") && !shown_text.contains("bob@example.org"),
        "{shown_text}"
    );
    assert!(shown.command_line.starts_with(&note), "{shown:?}");

    let recorder = gw.shutdown().await;
    let ops = operations(&recorder);
    assert!(
        ops.iter().any(|(_, d)| d.rule_id == "review-note"),
        "{ops:?}"
    );
    let dump = recorder.dump();
    assert!(dump.contains("LC_NOTE"), "the variable is recorded");
    for pii in ["alice@example.com", "4111111111111111", "bob@example.org"] {
        assert!(
            !dump.contains(pii),
            "{pii} in the audit log or recording: {dump}"
        );
    }
}
