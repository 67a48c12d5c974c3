//! Held-back output is never released on a timer without a pty: a value split across writes
//! with pauses between them (a script that sleeps, grep flushing mid-line) is masked whole, for
//! the agent and in the recording; a held secret's prefix never leaves before the guard sees
//! it whole; line-buffered output still arrives line by line.

use std::time::Duration;

use gatehouse_testkit::within;

use crate::common::*;

/// The pieces of a value that must never reach the agent or the recording.
const PIECES: &[&str] = &["alice", "exam", "ple.com", "41111111", "11111111"];

fn assert_nothing_of_the_values(what: &str, data: &[u8]) {
    for p in PIECES {
        assert!(
            !contains(data, p.as_bytes()),
            "{what}: {p:?} leaked: {:?}",
            String::from_utf8_lossy(data)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_split_across_paused_writes_are_masked_whole() {
    let gw = start(Options::default()).await;
    let script = gw.dir.path().join("pieces.sh");
    // Each printf is its own write; the sleeps are far longer than the idle flush (10 ms).
    write_script(
        &script,
        "#!/bin/sh\n\
         printf 'mail alice@exam'; sleep 0.3; printf 'ple.com card 41111111'; sleep 0.3\n\
         printf '11111111 end\\n'\n\
         printf 'err alice@exam' >&2; sleep 0.3; printf 'ple.com\\n' >&2\n",
    );
    let run = gw.ssh(&script.display().to_string(), b"").await;
    assert_eq!(run.status, Some(0), "{run:?}");
    assert_nothing_of_the_values("stdout", &run.stdout);
    assert_nothing_of_the_values("stderr", run.stderr.as_bytes());
    let out = run.stdout_text();
    assert!(
        out.starts_with("mail ") && out.ends_with(" end\n"),
        "{out:?}"
    );
    assert!(run.stderr.starts_with("err "), "{run:?}");

    // The stream ends while a value is held: it is masked as the final piece.
    let run = gw
        .ssh("printf 'to alice@exam'; sleep 0.3; printf 'ple.com'", b"")
        .await;
    assert_eq!(run.status, Some(0), "{run:?}");
    assert_nothing_of_the_values("stdout at EOF", &run.stdout);
    assert!(run.stdout_text().starts_with("to "), "{run:?}");

    let recorder = gw.shutdown().await;
    assert_nothing_of_the_values("recording", &recorded_output(&recorder));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_secrets_prefix_is_not_released_before_the_rest() {
    let gw = start(Options::default()).await;
    let key_text = std::fs::read_to_string(gw.sshd.client_key_path()).unwrap();
    let line = key_text
        .lines()
        .find(|l| !l.starts_with("-----") && l.len() >= 40)
        .unwrap()
        .to_string();
    let (head, tail) = line.split_at(20);
    let run = gw
        .ssh(
            &format!("printf 'k {head}'; sleep 0.3; printf '{tail}\\n'"),
            b"",
        )
        .await;
    assert!(
        !contains(&run.stdout, head.as_bytes()),
        "the secret's prefix reached the client: {run:?}"
    );
    assert!(run.stderr.contains("output withheld"), "{run:?}");
    let recorder = gw.shutdown().await;
    assert!(!contains(&recorded_output(&recorder), head.as_bytes()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn line_buffered_output_arrives_line_by_line() {
    let gw = start(Options::default()).await;
    let flag = gw.dir.path().join("go");
    let script = gw.dir.path().join("lines.sh");
    write_script(
        &script,
        &format!(
            "#!/bin/sh\necho line1\nwhile [ ! -e {f} ]; do sleep 0.05; done\necho line2\necho line3\n",
            f = flag.display()
        ),
    );
    let client = russh_login(&gw, TARGET).await;
    let mut ch = client.channel_open_session().await.unwrap();
    // The second line is printed only after the test has seen the first: were complete lines
    // held back too, this would never end (and the test time out).
    ch.exec(true, script.display().to_string()).await.unwrap();
    let mut seen = Vec::new();
    read_stdout_until(&mut ch, &mut seen, "line1\n").await;
    assert_eq!(String::from_utf8_lossy(&seen), "line1\n");
    std::fs::write(&flag, b"").unwrap();
    read_stdout_until(&mut ch, &mut seen, "line3\n").await;
    assert_eq!(String::from_utf8_lossy(&seen), "line1\nline2\nline3\n");
    let mut status = None;
    within(Duration::from_secs(20), async {
        while let Some(msg) = ch.wait().await {
            match msg {
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
}

/// Reads the channel's stdout until it contains `want`.
async fn read_stdout_until(
    ch: &mut russh::Channel<russh::client::Msg>,
    seen: &mut Vec<u8>,
    want: &str,
) {
    within(Duration::from_secs(20), async {
        while !String::from_utf8_lossy(seen).contains(want) {
            match ch.wait().await {
                Some(russh::ChannelMsg::Data { data }) => seen.extend_from_slice(&data),
                Some(_) => {}
                None => panic!("channel ended; saw {:?}", String::from_utf8_lossy(seen)),
            }
        }
    })
    .await;
}
