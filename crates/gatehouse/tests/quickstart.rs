//! The quickstart driven as a new user would: start it, run the printed psql command, see masked
//! columns and a masked card number in free text, a denied DROP, a DELETE held until the approver
//! approves it through the CLI; then `audit verify` passes, `evidence export` + `evidence verify`
//! succeed, and flipping one byte of the audit log makes verify fail.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gatehouse_testkit::process::{ChildGuard, run_with_timeout};

const EXE: &str = env!("CARGO_BIN_EXE_gatehouse");

fn sh(line: &str, extra_env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(line).env("PGCONNECT_TIMEOUT", "10");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    run_with_timeout(cmd, Duration::from_secs(120)).unwrap()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn quickstart_as_a_new_user() {
    let dir = tempfile::tempdir().unwrap();
    let qs_dir = dir.path().join("qs");
    let mut cmd = Command::new(EXE);
    cmd.args(["quickstart", "--dir"])
        .arg(&qs_dir)
        .args([
            "--pg-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut qs = ChildGuard::spawn_with_stdio("quickstart", {
        cmd.stdin(Stdio::null());
        cmd
    })
    .unwrap();
    let stdout = qs.child_mut().stdout.take().unwrap();
    let stderr = qs.child_mut().stderr.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let stderr_lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    {
        let lines = stderr_lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
    }
    // Read the printed instructions.
    let mut printed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    while !printed
        .iter()
        .any(|l: &String| l.contains("evidence verify"))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => printed.push(line),
            Err(_) => panic!(
                "quickstart did not print its instructions; stdout: {printed:?}\nstderr: {:?}",
                stderr_lines.lock().unwrap()
            ),
        }
    }
    let psql_line = printed
        .iter()
        .find(|l| l.starts_with("PGPASSWORD="))
        .expect("psql command")
        .clone();
    let export_line = printed
        .iter()
        .find(|l| l.starts_with("export GATEHOUSE_ADMIN_URL="))
        .expect("approver env")
        .clone();
    assert!(psql_line.contains("sslmode=verify-full"), "{psql_line}");

    // The agent reads: PII columns masked, a card number inside free text masked.
    let out = sh(
        &format!(
            "{psql_line} -XAt -F '|' -c 'SELECT id, email, card_number, phone, notes FROM customers ORDER BY id'"
        ),
        &[],
    );
    let rows = text(&out);
    assert!(out.status.success(), "{rows}");
    assert!(!rows.contains("grace@example.org"), "email leaked: {rows}");
    assert!(!rows.contains("4111 1111 1111 1111"), "card leaked: {rows}");
    assert!(
        !rows.contains("4012 8888 8888 1881"),
        "card in free text leaked: {rows}"
    );
    assert!(rows.contains("card on file: "), "{rows}");
    assert_eq!(rows.lines().count(), 5, "{rows}");

    // A DROP is denied with the rule named; the session stays usable afterwards.
    let out = sh(
        &format!(
            "{psql_line} -XAt -v VERBOSITY=verbose -c 'DROP TABLE customers' -c 'SELECT count(*) FROM customers'"
        ),
        &[],
    );
    let t = text(&out);
    assert!(t.contains("42501") && t.contains("no-drop"), "{t}");
    assert!(
        t.lines().any(|l| l.trim() == "5"),
        "session unusable after the denial: {t}"
    );

    // A DELETE waits for an approval; the approver approves it through the CLI.
    let delete = {
        let line = psql_line.clone();
        std::thread::spawn(move || {
            sh(
                &format!("{line} -XAt -c 'DELETE FROM customers WHERE id = 3'"),
                &[],
            )
        })
    };
    let env_line = export_line.trim_start_matches("export ");
    let approver_env = |cmd: &str| format!("env {env_line} {cmd}");
    let mut id = None;
    for _ in 0..100 {
        let out = sh(&approver_env(&format!("{EXE} approvals list")), &[]);
        let t = text(&out);
        assert!(out.status.success(), "{t}");
        if let Some(line) = t.lines().find(|l| l.contains("review-delete")) {
            id = line.split_whitespace().next().map(str::to_string);
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let id = id.expect("the DELETE shows up as a pending approval");
    // The agent cannot approve its own request.
    let agent_token = psql_line
        .trim_start_matches("PGPASSWORD='")
        .split('\'')
        .next()
        .unwrap()
        .to_string();
    let out = sh(
        &format!(
            "env {env_line} GATEHOUSE_TOKEN=\"$T\" {EXE} approvals approve {id} --reason mine"
        ),
        &[("T", agent_token.as_str())],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("separation of duties"),
        "{}",
        text(&out)
    );
    // The approver approves it.
    let out = sh(
        &approver_env(&format!(
            "{EXE} approvals approve {id} --reason 'checked with the data owner'"
        )),
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let deleted = delete.join().unwrap();
    assert!(text(&deleted).contains("DELETE 1"), "{}", text(&deleted));
    let out = sh(
        &format!("{psql_line} -XAt -c 'SELECT count(*) FROM customers'"),
        &[],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "4");

    // The admin API: health without a token, metrics only with an operator's token.
    let admin_url = env_line
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("GATEHOUSE_ADMIN_URL="))
        .unwrap()
        .to_string();
    let ca = env_line
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("GATEHOUSE_CA="))
        .unwrap()
        .to_string();
    let approver_token = env_line
        .split("GATEHOUSE_TOKEN='")
        .nth(1)
        .unwrap()
        .trim_end_matches('\'')
        .to_string();
    let out = sh(
        &format!("curl -sS --max-time 20 --cacert {ca} {admin_url}/healthz"),
        &[],
    );
    assert!(text(&out).contains("\"ok\""), "{}", text(&out));
    let out = sh(
        &format!(
            "curl -sS --max-time 20 --cacert {ca} -o /dev/null -w '%{{http_code}}' {admin_url}/metrics"
        ),
        &[],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401");
    let out = sh(
        &format!(
            "curl -sS --max-time 20 --cacert {ca} -H \"Authorization: Bearer $T\" {admin_url}/metrics"
        ),
        &[("T", approver_token.as_str())],
    );
    let metrics = text(&out);
    assert!(
        metrics.contains("gatehouse_operations_total{verdict=\"deny\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gatehouse_operations_total{verdict=\"review\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gatehouse_approvals_pending 0"),
        "{metrics}"
    );
    let out = sh(
        &format!(
            "curl -sS --max-time 20 --cacert {ca} -o /dev/null -w '%{{http_code}}' -H \"Authorization: Bearer $T\" {admin_url}/metrics"
        ),
        &[("T", agent_token.as_str())],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "403",
        "an agent may not read metrics"
    );

    // SIGHUP reloads the policy atomically: a broken file keeps the running policy; a fixed one
    // takes effect for the next statement.
    let policy_path = qs_dir.join("policy.toml");
    let original = std::fs::read_to_string(&policy_path).unwrap();
    std::fs::write(&policy_path, "[[rules]]\nverdict = \"sometimes\"\n").unwrap();
    qs.signal(nix::sys::signal::Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    let out = sh(
        &format!("{psql_line} -XAt -c 'SELECT count(*) FROM customers'"),
        &[],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "4",
        "a broken policy must not replace the running one: {}",
        text(&out)
    );
    std::fs::write(
        &policy_path,
        format!("{original}\n[[rules]]\nid = \"no-count\"\nreason = \"counting is off today\"\nverdict = \"deny\"\nsql = {{ functions = [\"count\"] }}\n"),
    )
    .unwrap();
    qs.signal(nix::sys::signal::Signal::SIGHUP);
    let mut reloaded = false;
    for _ in 0..50 {
        let out = sh(
            &format!("{psql_line} -XAt -c 'SELECT count(*) FROM customers'"),
            &[],
        );
        if text(&out).contains("no-count") {
            reloaded = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(reloaded, "SIGHUP did not load the new policy");

    // Stop the gateway (SIGTERM drains and flushes the audit log).
    qs.stop(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(30));

    let data = qs_dir.join("data");
    let out = sh(&format!("{EXE} audit verify {}", data.display()), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("OK"));
    let evidence = dir.path().join("evidence");
    let out = sh(
        &format!(
            "{EXE} evidence export --dir {} --out {}",
            data.display(),
            evidence.display()
        ),
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = sh(
        &format!("{EXE} evidence verify {}", evidence.display()),
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let approvals = std::fs::read_to_string(evidence.join("approvals.json")).unwrap();
    assert!(
        approvals.contains(&id) && approvals.contains("alice"),
        "{approvals}"
    );
    let statement = std::fs::read_to_string(evidence.join("credentials-statement.json")).unwrap();
    assert!(statement.contains("\"established\": true"), "{statement}");
    // The database password never reached the caller-visible outputs or the audit log.
    let password = std::fs::read_to_string(qs_dir.join("secrets/demo-db-password")).unwrap();
    for entry in walk(&data).into_iter().chain(walk(&evidence)) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !bytes
                .windows(password.trim().len())
                .any(|w| w == password.trim().as_bytes()),
            "the upstream password appears in {}",
            entry.display()
        );
    }

    // Flip one byte of the audit log: verify fails and names the record.
    let segment = walk(&data.join("audit"))
        .into_iter()
        .find(|p| {
            std::fs::read_to_string(p)
                .map(|s| s.contains("DELETE FROM customers"))
                .unwrap_or(false)
        })
        .expect("the segment holding the DELETE");
    let mut bytes = std::fs::read(&segment).unwrap();
    let at = bytes.windows(6).position(|w| w == b"DELETE").unwrap();
    bytes[at] = b'X';
    std::fs::write(&segment, bytes).unwrap();
    let out = sh(&format!("{EXE} audit verify {}", data.display()), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("FAILED"), "{}", text(&out));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
