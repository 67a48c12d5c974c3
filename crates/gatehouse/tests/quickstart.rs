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
            "--http-listen",
            "127.0.0.1:0",
            "--ssh-listen",
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

    // The leak families an agent would try next: a masked column through an expression, in an
    // error's text, and in a notification's payload. None shows the data, not even reversed.
    let out = sh(
        &format!(
            "{psql_line} -XAt -c \"SELECT reverse(email), card_number || 'x' FROM customers\" \
             -c \"SELECT CAST(reverse(card_number) AS int) FROM customers\" \
             -c \"LISTEN q\" \
             -c \"SELECT pg_notify('q', string_agg(reverse(card_number), ',')) FROM customers\""
        ),
        &[],
    );
    let rows = text(&out);
    for reversed in [
        "gro.elpmaxe@ecarg",
        "1111 1111 1111 1114",
        "4000 0000 0000 0055",
    ] {
        assert!(!rows.contains(reversed), "{reversed} leaked: {rows}");
    }
    assert!(rows.contains("withheld"), "{rows}");

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

    // The HTTP target: the printed curl command returns users with PII masked; the gateway
    // injected the API key the agent never saw; a DELETE answers 409 until approved.
    let curl_line = printed
        .iter()
        .find(|l| l.starts_with("curl "))
        .expect("curl command")
        .clone();
    let curl = |extra: &str, path_suffix: &str| {
        let line = curl_line.replacen("curl ", &format!("curl -sS --max-time 20 {extra} "), 1);
        let line = line.replace("/demo-api/users", &format!("/demo-api/users{path_suffix}"));
        let out = sh(&line, &[]);
        text(&out)
    };
    let users = curl("", "");
    assert!(users.contains("Ada Lovelace"), "{users}");
    for leaked in [
        "grace@example.org",
        "4111 1111 1111 1111",
        "4012 8888 8888 1881",
        "+1 202 555 0143",
    ] {
        assert!(
            !users.contains(leaked),
            "{leaked} leaked through the HTTP target: {users}"
        );
    }
    assert!(users.contains("card on file: "), "{users}");
    let no_token = sh(
        &format!(
            "curl -sS --max-time 20 -w ' status=%{{http_code}}' --cacert {} https://localhost:{}/demo-api/users",
            qs_dir.join("tls/ca.crt").display(),
            curl_line
                .split("https://localhost:")
                .nth(1)
                .unwrap()
                .split('/')
                .next()
                .unwrap()
        ),
        &[],
    );
    assert!(
        text(&no_token).contains("status=401") && text(&no_token).contains("\"unauthenticated\""),
        "{}",
        text(&no_token)
    );
    let held = curl("-X DELETE", "/3");
    assert!(
        held.contains("approval_pending") && held.contains("review-api-delete"),
        "{held}"
    );
    let http_id = held
        .split("\"approval_id\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("approval id in the 409 body")
        .to_string();
    let out = sh(
        &approver_env(&format!(
            "{EXE} approvals approve {http_id} --reason 'ok to delete'"
        )),
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let deleted = curl("-X DELETE", "/3");
    assert!(
        deleted.contains("\"deleted\":3"),
        "the approved retry did not go through: {deleted}"
    );
    let users = curl("", "");
    assert!(!users.contains("Alan Turing"), "{users}");

    // The SSH target (when sshd is installed, as in CI): the printed login works; `rm -rf` is
    // denied with exit 126; output is masked; systemctl is held for an approval.
    let sshd_installed = ["/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd"]
        .iter()
        .any(|p| std::path::Path::new(p).exists());
    let key_line = printed
        .iter()
        .find(|l| l.starts_with("export GATEHOUSE_KEY="));
    let ssh_line = printed.iter().find(|l| l.starts_with("SSH_ASKPASS="));
    assert_eq!(
        sshd_installed,
        ssh_line.is_some(),
        "SSH target printed iff sshd is installed: {printed:?}"
    );
    if let (Some(key_line), Some(ssh_line)) = (key_line, ssh_line) {
        let ssh = |remote: &str| {
            let line = ssh_line.replace("'uname -n'", &format!("'{remote}'"));
            sh(&format!("{key_line} && {line} </dev/null"), &[])
        };
        let out = ssh("uname -n");
        let host =
            String::from_utf8_lossy(&Command::new("uname").arg("-n").output().unwrap().stdout)
                .trim()
                .to_string();
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            host,
            "{}",
            text(&out)
        );
        let out = ssh("rm -rf /tmp/gatehouse-qs-nothing");
        assert_eq!(out.status.code(), Some(126), "{}", text(&out));
        assert!(text(&out).contains("no-rm-rf"), "{}", text(&out));
        let out = ssh("echo 4111 1111 1111 1111 AKIAIOSFODNN7EXAMPLE");
        let t = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            !t.contains("4111 1111 1111 1111") && !t.contains("AKIAIOSFODNN7EXAMPLE"),
            "{t}"
        );
        assert!(t.contains("[card]"), "{t}");
        let held = {
            let key_line = key_line.clone();
            let line = ssh_line.replace("'uname -n'", "'systemctl --version'");
            std::thread::spawn(move || sh(&format!("{key_line} && {line} </dev/null"), &[]))
        };
        let mut ssh_id = None;
        for _ in 0..100 {
            let out = sh(&approver_env(&format!("{EXE} approvals list")), &[]);
            if let Some(line) = text(&out).lines().find(|l| l.contains("review-systemctl")) {
                ssh_id = line.split_whitespace().next().map(str::to_string);
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let ssh_id = ssh_id.expect("systemctl shows up as a pending approval");
        let out = sh(
            &approver_env(&format!(
                "{EXE} approvals approve {ssh_id} --reason 'read-only'"
            )),
            &[],
        );
        assert!(out.status.success(), "{}", text(&out));
        let out = held.join().unwrap();
        let t = text(&out);
        assert!(t.contains("waiting for approval"), "{t}");
        assert!(
            !matches!(out.status.code(), Some(126 | 255)),
            "the approved command did not run: {t}"
        );
    }

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

    // The printed verify command (witness and pinned key) finds the log sealed: exit 0.
    let data = qs_dir.join("data");
    let verify_line = printed
        .iter()
        .find(|l| l.contains(" audit verify "))
        .expect("verify command")
        .clone();
    assert!(
        verify_line.contains(" --witness ") && verify_line.contains(" --key "),
        "{verify_line}"
    );
    let out = sh(&verify_line, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(": SEALED"), "{}", text(&out));
    let export_line = printed
        .iter()
        .find(|l| l.contains(" evidence export "))
        .expect("export command")
        .clone();
    let evidence = qs_dir.join("evidence");
    let out = sh(&export_line, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let held = std::fs::read_to_string(evidence.join("witness-checkpoint.json")).unwrap();
    assert!(held.contains("\"sealed\": true"), "{held}");
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
    // No upstream credential (database password, API key, the SSH key the gateway logs in with)
    // reached the audit log or the evidence.
    let mut secrets = vec![
        std::fs::read_to_string(qs_dir.join("secrets/demo-db-password"))
            .unwrap()
            .trim()
            .to_string(),
        std::fs::read_to_string(qs_dir.join("secrets/demo-api-key"))
            .unwrap()
            .trim()
            .to_string(),
    ];
    if let Ok(key) = std::fs::read_to_string(qs_dir.join("ssh/gateway_to_box_ed25519")) {
        secrets.extend(
            key.lines()
                .filter(|l| !l.starts_with("-----") && l.len() >= 16)
                .map(str::to_string),
        );
    }
    for entry in walk(&data).into_iter().chain(walk(&evidence)) {
        let bytes = std::fs::read(&entry).unwrap();
        for secret in &secrets {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "an upstream credential appears in {}",
                entry.display()
            );
        }
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
    let out = sh(&verify_line, &[]);
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
