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
    let approver = approver_credentials(&printed, &stderr_lines.lock().unwrap(), &qs_dir);
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

    // The leak families an agent would try next: a masked column through an expression, and in
    // an error's text. None shows the data, not even reversed. (A notification's payload is
    // built with pg_notify or code, which the quickstart holds for review as opaque; the proxy's
    // own tests cover notifications under a policy that allows them.)
    let out = sh(
        &format!(
            "{psql_line} -XAt -c \"SELECT reverse(email), card_number || 'x' FROM customers\" \
             -c \"SELECT CAST(reverse(card_number) AS int) FROM customers\""
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
    assert!(
        rows.contains("the gateway withholds this message"),
        "{rows}"
    );

    // The free-text `notes` column (a `detect` rule): read plainly its card number was masked
    // by the detectors (above); transformed past them, the value is masked whole.
    let out = sh(
        &format!(
            "{psql_line} -XAt -F '|' \
             -c \"SELECT reverse(notes), translate(notes, '0123456789', 'abcdefghij') FROM customers WHERE id = 2\" \
             -c \"SELECT encode(convert_to(notes, 'UTF8'), 'base64') FROM customers WHERE id = 2\" \
             -c \"SELECT string_agg(substr(notes, i, 1), '' ORDER BY i) FROM customers, generate_series(1, 40) i WHERE id = 2\""
        ),
        &[],
    );
    let rows = text(&out);
    assert!(out.status.success(), "{rows}");
    for leaked in [
        "1881 8888 8888 2104",
        "eabc iiii iiii biib",
        // base64 of "card on file: 4012"
        "Y2FyZCBvbiBmaWxlOiA0MDEy",
        "4012888888881881",
        "4012 8888 8888 1881",
    ] {
        assert!(!rows.contains(leaked), "{leaked} leaked: {rows}");
    }
    assert_eq!(
        rows.lines().collect::<Vec<_>>(),
        ["[masked]|[masked]", "[masked]", "[masked]"],
        "{rows}"
    );

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
    let approver_env = |cmd: &str| format!(". {} && {cmd}", approver.file.display());
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
        &approver_env(&format!(
            "GATEHOUSE_TOKEN=\"$T\" {EXE} approvals approve {id} --reason mine"
        )),
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
    let admin_url = approver.admin_url.clone();
    let ca = approver.ca.clone();
    let approver_token = approver.token.clone();
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

    // An explicit table lock (which, held in an open transaction, blocks every other session)
    // waits for a human; while it waits the table stays usable, and denied, it never runs.
    let lock = {
        let line = psql_line.clone();
        std::thread::spawn(move || {
            sh(
                &format!(
                    "{line} -XAt -v ON_ERROR_STOP=1 -c 'BEGIN' -c 'LOCK TABLE customers IN ACCESS EXCLUSIVE MODE' -c 'SELECT pg_backend_pid()' -c 'COMMIT'"
                ),
                &[],
            )
        })
    };
    let lock_id = pending_approval(&approver_env, "LOCK TABLE customers")
        .expect("LOCK TABLE shows up as a pending approval");
    assert!(
        lock_id.1.contains("review-lock"),
        "held by another rule: {}",
        lock_id.1
    );
    let out = sh(
        &format!("{psql_line} -XAt -c 'SELECT count(*) FROM customers'"),
        &[],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "4",
        "{}",
        text(&out)
    );
    let out = sh(
        &approver_env(&format!(
            "{EXE} approvals deny {} --reason 'no locks today'",
            lock_id.0
        )),
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let locked = lock.join().unwrap();
    let t = text(&locked);
    assert_ne!(locked.status.code(), Some(0), "{t}");
    assert!(t.contains("denied") && t.contains("no locks today"), "{t}");
    // What the approver reads is what runs: terminal control characters in the statement
    // (a carriage return, cursor movement, a line break, a bidirectional override) are shown
    // escaped, on the statement's own line, and cannot redraw it as a harmless one.
    let disguised = {
        let line = psql_line.clone();
        std::thread::spawn(move || {
            sh(
                &format!("{line} -XAt -c \"$Q\""),
                &[(
                    "Q",
                    &format!(
                        "DELETE FROM customers /*\r\u{1b}[84CDELETE FROM customers WHERE id = 19\u{1b}[K\nx\u{202e}*/ /*{}\u{2028}\u{3164}*/ WHERE id > 0",
                        " ".repeat(300)
                    ),
                )],
            )
        })
    };
    let (id, shown) = pending_approval(&approver_env, "DELETE FROM customers /*")
        .expect("the disguised DELETE shows up as a pending approval");
    assert!(
        !shown.contains('\u{1b}') && !shown.contains('\r') && !shown.contains('\u{202e}'),
        "{shown:?}"
    );
    assert!(
        shown.contains("/*\\r\\u{1b}[84CDELETE") && shown.contains("\\nx\\u{202e}*/"),
        "{shown:?}"
    );
    // Nothing of it is cut or drawn blank: the tail after a long comment is on the line.
    assert!(
        shown.ends_with("\\u{2028}\\u{3164}*/ WHERE id > 0"),
        "{shown:?}"
    );
    let out = sh(
        &approver_env(&format!("{EXE} approvals deny {id} --reason 'disguised'")),
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = disguised.join().unwrap();
    assert!(text(&out).contains("disguised"), "{}", text(&out));
    // An opaque statement (code the gateway cannot see into) waits for an approval, as the
    // printed instructions say; denied, nothing of it runs.
    assert!(
        printed
            .iter()
            .any(|l| l.contains("DO $$ BEGIN DELETE FROM customers; END $$;  -- opaque")),
        "{printed:?}"
    );
    let opaque = {
        let line = psql_line.clone();
        std::thread::spawn(move || {
            sh(
                &format!("{line} -XAt -c \"$Q\""),
                &[("Q", "DO $$ BEGIN DELETE FROM customers; END $$")],
            )
        })
    };
    let (id, shown) = pending_approval(&approver_env, "DO $$ BEGIN DELETE")
        .expect("the DO block shows up as a pending approval");
    assert!(shown.contains("opaque"), "{shown}");
    let out = sh(
        &approver_env(&format!("{EXE} approvals deny {id} --reason 'not today'")),
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = opaque.join().unwrap();
    assert!(text(&out).contains("not today"), "{}", text(&out));
    let out = sh(
        &format!("{psql_line} -XAt -c 'SELECT count(*) FROM customers'"),
        &[],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "4",
        "{}",
        text(&out)
    );
    // Locks the policy lets through (row locks of an UPDATE left in an open transaction) end
    // with the transaction, which the database ends once left idle.
    let out = sh(
        &format!("{psql_line} -XAt -c 'SHOW idle_in_transaction_session_timeout'"),
        &[],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "15min",
        "{}",
        text(&out)
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
            let line = ssh_line
                .replace(" ssh -p ", " ssh -o ConnectTimeout=10 -p ")
                .replace("'uname -n'", &format!("'{remote}'"));
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
        masking_holds_with_the_default_allow_list(&qs_dir, &ssh, &approver_env);
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

        // The target never shares a trust domain with the gateway: as root, the gateway logs in
        // as an unprivileged user of the target's own, which can read none of the gateway's
        // files, in any form, by any tool; nor reach the quickstart's PostgreSQL directly.
        if nix::unistd::geteuid().is_root() {
            let out = ssh("id -un");
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                "gatehouse-box",
                "{}",
                text(&out)
            );
            let out = ssh(&format!("ls -la {}", qs_dir.display()));
            assert!(
                out.stdout.is_empty() && text(&out).contains("Permission denied"),
                "{}",
                text(&out)
            );
            let policy_path = qs_dir.join("policy.toml");
            let before = std::fs::read_to_string(&policy_path).unwrap();
            allow_sftp_for_agents(&policy_path, &qs);
            let sftp_get = |remote: &std::path::Path, local: &std::path::Path| {
                let line = sftp_line(ssh_line);
                sh(
                    &format!(
                        "{key_line} && echo 'get {} {}' | {line}",
                        remote.display(),
                        local.display()
                    ),
                    &[],
                )
            };
            // sftp works for files the target may read...
            let scratch = dir.path().join("scratch");
            std::fs::create_dir_all(&scratch).unwrap();
            let mut reloaded = false;
            for _ in 0..50 {
                let out = sftp_get(
                    std::path::Path::new("/etc/hostname"),
                    &scratch.join("hostname"),
                );
                if out.status.success() {
                    reloaded = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            assert!(
                reloaded,
                "sftp not allowed after the policy reload: {}",
                text(&sftp_get(
                    std::path::Path::new("/etc/hostname"),
                    &scratch.join("hostname")
                ))
            );
            // ...and for none of the gateway's.
            assert_target_reads_no_secret(&qs_dir, &ssh, &sftp_get, &scratch);
            let port = local_pg_port(&qs_dir);
            let out = ssh(&format!(
                "psql -X -w -h 127.0.0.1 -p {port} -U postgres -d demo -c \"SELECT 1\""
            ));
            assert_ne!(out.status.code(), Some(0), "{}", text(&out));
            assert!(!text(&out).contains("gatehouse: "), "{}", text(&out));
            assert_local_postgres_refuses("gatehouse-box", &root_pg_socket_dir(port), port);
            assert_local_postgres_refuses("nobody", &root_pg_socket_dir(port), port);
            std::fs::write(&policy_path, before).unwrap();
        }
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

    // As root its PostgreSQL lives in a temporary directory, which stopping removes.
    let pg_tmp = nix::unistd::geteuid()
        .is_root()
        .then(|| pg_temp_root(&qs_dir));

    // A DELETE still held when the gateway stops: its client gets an answer (no hang), and the
    // request is closed as abandoned and recorded before the log is sealed (checked below), so
    // approving it later runs nothing.
    let held_at_stop = {
        let line = psql_line.clone();
        std::thread::spawn(move || {
            sh(
                &format!("{line} -XAt -c 'DELETE FROM customers WHERE id = 4'"),
                &[],
            )
        })
    };
    let (held_id, _) = pending_approval(&approver_env, "WHERE id = 4")
        .expect("the DELETE held at shutdown shows up as a pending approval");

    // Stop the gateway (SIGTERM drains and flushes the audit log).
    qs.stop(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(30));
    let held_at_stop = held_at_stop.join().unwrap();
    assert!(
        !held_at_stop.status.success() && !text(&held_at_stop).contains("DELETE 1"),
        "{}",
        text(&held_at_stop)
    );
    if let Some(pg_tmp) = &pg_tmp {
        assert!(!pg_tmp.exists(), "{} left behind", pg_tmp.display());
    }

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
    // The DELETE held at shutdown was closed as abandoned, and that is in the sealed log.
    let abandoned = walk(&data.join("audit")).into_iter().any(|p| {
        std::fs::read_to_string(&p).is_ok_and(|s| {
            s.lines().any(|l| {
                l.contains("\"type\":\"approval_abandoned\"") && l.contains(held_id.as_str())
            })
        })
    });
    assert!(abandoned, "no approval_abandoned record for {held_id}");
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
    // The printed check pins the gateway's key; without a key the bundle is not vouched for
    // (anyone can sign a bundle with a key of their own and name it).
    let verify_bundle = printed
        .iter()
        .find(|l| l.contains(" evidence verify "))
        .expect("evidence verify command")
        .clone();
    assert!(verify_bundle.contains(" --key "), "{verify_bundle}");
    let out = sh(&verify_bundle, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let out = sh(
        &format!("{EXE} evidence verify {}", evidence.display()),
        &[],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("NOT VOUCHED FOR"), "{}", text(&out));
    let approvals = std::fs::read_to_string(evidence.join("approvals.json")).unwrap();
    assert!(
        approvals.contains(&id) && approvals.contains("alice"),
        "{approvals}"
    );
    let statement = std::fs::read_to_string(evidence.join("credentials-statement.json")).unwrap();
    assert!(statement.contains("\"established\": true"), "{statement}");
    // It says what was checked and what it cannot see, and claims no more.
    let parsed: serde_json::Value = serde_json::from_str(&statement).unwrap();
    let text_of = |k: &str| parsed[k].as_str().unwrap_or_default().to_string();
    assert!(
        text_of("statement").starts_with("The egress guard checked the bytes bound for: ")
            && text_of("statement").contains("transformed before sending it")
            && !text_of("statement").contains("checked every outbound path")
            && !text_of("statement").contains("Nothing it found left"),
        "{statement}"
    );
    assert!(
        parsed["what_was_checked"]["patterns_watched"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{statement}"
    );
    assert!(
        parsed["what_it_cannot_see"]
            .as_array()
            .is_some_and(|a| a.iter().any(|s| s
                .as_str()
                .unwrap_or("")
                .contains("pieces of 15 bytes or fewer"))),
        "{statement}"
    );
    // What it now watches (a key written backwards) is not listed as what it cannot see.
    assert!(!text_of("statement").contains("reversed"), "{statement}");
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

    // The printed verify command also checks each sealed session recording: one extended by a
    // forged line, or removed, fails verification (exit 1) and is named; restored, it passes.
    let out = sh(&verify_line, &[]);
    assert!(
        text(&out).contains("sealed recording(s), each matches"),
        "{}",
        text(&out)
    );
    let recordings: Vec<_> = walk(&data.join("recordings"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    assert!(!recordings.is_empty(), "no session recording");
    for (path, original) in &recordings {
        let mut forged = original.clone();
        forged.extend_from_slice(b"{\"t\":1,\"frame\":\"note\",\"data\":\"forged\"}\n");
        std::fs::write(path, &forged).unwrap();
    }
    let out = sh(&verify_line, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("was altered"), "{}", text(&out));
    for (path, _) in &recordings {
        std::fs::remove_file(path).unwrap();
    }
    let out = sh(&verify_line, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("cannot be read"), "{}", text(&out));
    for (path, original) in &recordings {
        std::fs::write(path, original).unwrap();
    }
    let out = sh(&verify_line, &[]);
    assert!(out.status.success(), "{}", text(&out));
    // The whole log removed while the witness holds its checkpoints: a failure (exit 1).
    let audit_dir = data.join("audit");
    let moved = qs_dir.join("audit-moved");
    std::fs::rename(&audit_dir, &moved).unwrap();
    std::fs::create_dir(&audit_dir).unwrap();
    let out = sh(&verify_line, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("the log was removed"), "{}", text(&out));
    std::fs::remove_dir(&audit_dir).unwrap();
    std::fs::rename(&moved, &audit_dir).unwrap();

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

/// With the quickstart's default allow-list, a file on the target holding a card number and an
/// AWS key comes back masked through `cat`; the transforms that would carry it past the masking
/// (`rev`, `base64`, `od`, `cut`) are not on the list, and the listed readers' slicing options
/// (`head -c`, `tail --bytes`, `grep -o`) are held: each waits for an approval, and denied,
/// prints nothing.
fn masking_holds_with_the_default_allow_list(
    qs_dir: &std::path::Path,
    ssh: &(dyn Fn(&str) -> std::process::Output + Sync),
    approver_env: &dyn Fn(&str) -> String,
) {
    use std::os::unix::fs::PermissionsExt as _;
    // The target's home: the dedicated user's as root, the sandbox's otherwise.
    let home = if nix::unistd::geteuid().is_root() {
        std::path::PathBuf::from("/var/lib/gatehouse-box")
    } else {
        qs_dir.join("box-home")
    };
    let probe = home.join("masking-probe.txt");
    std::fs::write(
        &probe,
        "card 4111 1111 1111 1111 key AKIAIOSFODNN7EXAMPLE\n",
    )
    .unwrap();
    std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = ssh("cat masking-probe.txt");
    let t = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        t.contains("[card]")
            && !t.contains("4111 1111 1111 1111")
            && !t.contains("AKIAIOSFODNN7EXAMPLE"),
        "{t}"
    );
    for (command, rule) in [
        ("rev masking-probe.txt", "default"),
        ("base64 masking-probe.txt", "default"),
        ("od -c masking-probe.txt", "default"),
        ("cut -c1-12 masking-probe.txt", "default"),
        ("head -c 14 masking-probe.txt", "review-slicing-bytes"),
        ("tail --bytes=30 masking-probe.txt", "review-slicing-bytes"),
        ("grep -o 4111 masking-probe.txt", "review-slicing-matches"),
    ] {
        let held = std::thread::scope(|scope| {
            let run = scope.spawn(|| ssh(command));
            let (id, line) = pending_approval(approver_env, command)
                .unwrap_or_else(|| panic!("`{command}` is not held for an approval"));
            assert!(line.contains(&format!("rule {rule} ")), "{line}");
            let out = sh(
                &approver_env(&format!(
                    "{EXE} approvals deny {id} --reason 'no transforms'"
                )),
                &[],
            );
            assert!(out.status.success(), "{}", text(&out));
            run.join().unwrap()
        });
        assert!(
            held.stdout.is_empty() && !held.status.success(),
            "`{command}` ran: {}",
            text(&held)
        );
    }
    std::fs::remove_file(&probe).unwrap();
}

/// The first pending approval whose line contains `needle` (its id and line), polled for up to
/// 20 s through `gatehouse approvals list`.
fn pending_approval(
    approver_env: &dyn Fn(&str) -> String,
    needle: &str,
) -> Option<(String, String)> {
    for _ in 0..100 {
        let out = sh(&approver_env(&format!("{EXE} approvals list")), &[]);
        assert!(out.status.success(), "{}", text(&out));
        if let Some(line) = text(&out).lines().find(|l| l.contains(needle)) {
            let id = line.split_whitespace().next()?.to_string();
            return Some((id, line.to_string()));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

/// The approver's credentials, as the quickstart hands them to the operator.
struct ApproverCredentials {
    file: std::path::PathBuf,
    admin_url: String,
    ca: String,
    token: String,
}

/// [`approver_credentials_of`] a quickstart run by this test's own user (who owns the file).
fn approver_credentials(
    printed: &[String],
    stderr: &[String],
    qs_dir: &std::path::Path,
) -> ApproverCredentials {
    use std::os::unix::fs::MetadataExt as _;
    let approver = approver_credentials_of(printed, stderr, qs_dir);
    let meta = std::fs::symlink_metadata(&approver.file).unwrap();
    assert_eq!(meta.uid(), nix::unistd::geteuid().as_raw());
    approver
}

/// The approver's credentials are in a file only the operator's user can read (0600, in the
/// quickstart directory), whose path the instructions print: what the quickstart prints (which
/// an agent reads) holds no approver token. The caller checks who owns the file.
fn approver_credentials_of(
    printed: &[String],
    stderr: &[String],
    qs_dir: &std::path::Path,
) -> ApproverCredentials {
    use std::os::unix::fs::MetadataExt as _;
    let file = qs_dir.canonicalize().unwrap().join("approver.env");
    let source_line = format!(". {}", file.display());
    assert!(
        printed.iter().any(|l| l.trim() == source_line),
        "the instructions do not say `{source_line}`: {printed:?}"
    );
    let meta = std::fs::symlink_metadata(&file)
        .unwrap_or_else(|e| panic!("{}: {e}; printed: {printed:?}", file.display()));
    assert!(meta.file_type().is_file());
    assert_eq!(meta.mode() & 0o777, 0o600, "{} mode", file.display());
    let body = std::fs::read_to_string(&file).unwrap();
    let value = |key: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("export {key}=")))
            .unwrap_or_else(|| panic!("{key} missing from {body}"))
            .trim_matches('\'')
            .to_string()
    };
    let token = value("GATEHOUSE_TOKEN");
    assert!(token.len() > 40, "{body}");
    for line in printed.iter().chain(stderr) {
        assert!(
            !line.contains(&token),
            "the approver's token is printed where the agent reads: {line}"
        );
    }
    ApproverCredentials {
        admin_url: value("GATEHOUSE_ADMIN_URL"),
        ca: value("GATEHOUSE_CA"),
        file,
        token,
    }
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

/// Appends rules letting group `agents` use sftp, psql and the transforms the quickstart's
/// allow-list leaves out (`rev`, `cut`, `od`, `base64`: the test reads the gateway's files
/// with them) to the quickstart policy and reloads it.
fn allow_sftp_for_agents(policy_path: &std::path::Path, qs: &ChildGuard) {
    let policy = std::fs::read_to_string(policy_path).unwrap();
    std::fs::write(
        policy_path,
        format!(
            "{policy}\n[[rules]]\nid = \"test-agents-transforms\"\nreason = \"the test reads files in every form\"\nverdict = \"allow\"\ngroups = [\"agents\"]\nexec = {{ program = [\"rev\", \"cut\", \"od\", \"base64\"] }}\n\n[[rules]]\nid = \"test-agents-sftp\"\nreason = \"the test fetches files\"\nverdict = \"allow\"\nbinary = \"raw\"\ngroups = [\"agents\"]\nssh = {{ channels = [\"subsystem\"], subsystems = [\"sftp\"] }}\n\n[[rules]]\nid = \"test-agents-psql\"\nreason = \"the test tries the quickstart's PostgreSQL from the target\"\nverdict = \"allow\"\ngroups = [\"agents\"]\nopaque = true\nexec = {{ program = [\"psql\"] }}\n"
        ),
    )
    .unwrap();
    qs.signal(nix::sys::signal::Signal::SIGHUP);
}

/// The printed `ssh … 'uname -n'` line as an `sftp -b -` batch run.
fn sftp_line(ssh_line: &str) -> String {
    ssh_line
        // sftp -b turns on ssh's BatchMode (no askpass) unless told otherwise first.
        .replace(
            " ssh -p ",
            " sftp -o BatchMode=no -b - -o ConnectTimeout=10 -P ",
        )
        .replace(" 'uname -n'", "")
}

/// The gateway's secret files in a quickstart directory: keys, held secrets, TLS key, and the
/// audit log and approvals journal under `data/`.
fn secret_files(qs_dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<std::path::PathBuf> = [
        "dev-issuer.key",
        "secrets/demo-db-password",
        "secrets/demo-api-key",
        "ssh/gateway_to_box_ed25519",
        "ssh/gateway_host_ed25519",
        "tls/server.key",
    ]
    .iter()
    .map(|f| qs_dir.join(f))
    .filter(|p| p.exists())
    .collect();
    files.extend(walk(&qs_dir.join("data")));
    assert!(files.len() >= 7, "{files:?}");
    files
}

/// Every 16-byte window of `secret`'s whitespace-free form, of its reverse and of its base64.
fn pieces(secret: &[u8]) -> std::collections::HashSet<Vec<u8>> {
    use base64::Engine as _;
    let squash = |b: &[u8]| -> Vec<u8> {
        b.iter()
            .copied()
            .filter(|c| !c.is_ascii_whitespace())
            .collect()
    };
    let plain = squash(secret);
    let reversed: Vec<u8> = plain.iter().rev().copied().collect();
    let b64 = base64::engine::general_purpose::STANDARD
        .encode(secret)
        .into_bytes();
    let mut out = std::collections::HashSet::new();
    for form in [plain, reversed, b64] {
        for w in form.windows(16) {
            out.insert(w.to_vec());
        }
    }
    out
}

/// Reads every secret file of a running quickstart through the gateway's SSH target with
/// `cat`, `rev`, `base64`, `od -c`, `cut` (two halves) and `sftp get`: nothing comes back (no
/// stdout at all; no 16-byte piece of a key or held secret, plain, reversed or base64, anywhere
/// in the output), and the target cannot even list the quickstart directory.
fn assert_target_reads_no_secret(
    qs_dir: &std::path::Path,
    ssh: &dyn Fn(&str) -> std::process::Output,
    sftp_get: &dyn Fn(&std::path::Path, &std::path::Path) -> std::process::Output,
    scratch: &std::path::Path,
) {
    let files = secret_files(qs_dir);
    let mut forbidden = std::collections::HashSet::new();
    for f in &files {
        let name = f.to_string_lossy();
        if !name.contains("/data/") {
            forbidden.extend(pieces(&std::fs::read(f).unwrap()));
        }
    }
    let list: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let all = list.join(" ");
    let mut commands = vec![
        format!("cat {all}"),
        format!("rev {all}"),
        format!("od -c {all}"),
        format!("cut -c1-20 {all}"),
        format!("cut -c21- {all}"),
    ];
    commands.extend(list.iter().map(|f| format!("base64 {f}")));
    let check = |what: &str, out: &[u8]| {
        let squashed: Vec<u8> = out
            .iter()
            .copied()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        assert!(
            !squashed.windows(16).any(|w| forbidden.contains(w)),
            "{what}: a piece of a gateway secret came back: {}",
            String::from_utf8_lossy(out)
        );
    };
    for command in &commands {
        let out = ssh(command);
        let t = text(&out);
        assert!(
            out.stdout.is_empty(),
            "`{command}` through the gateway printed something: {t}"
        );
        // ("Permission denied" after a path ending in `password` comes back masked.)
        assert!(
            t.contains(" denied") || t.contains("No such file"),
            "`{command}`: {t}"
        );
        assert!(
            !t.contains("gatehouse: "),
            "`{command}` was refused by the gateway, not the target: {t}"
        );
        check(command, &out.stdout);
        check(command, &out.stderr);
    }
    std::fs::create_dir_all(scratch).unwrap();
    for (i, f) in files.iter().enumerate() {
        let local = scratch.join(format!("got-{i}"));
        let out = sftp_get(f, &local);
        let t = text(&out);
        assert_ne!(out.status.code(), Some(0), "sftp get {}: {t}", f.display());
        assert!(
            !t.contains("denied by rule"),
            "sftp was refused by policy, not the target: {t}"
        );
        if let Ok(got) = std::fs::read(&local) {
            assert!(
                got.is_empty(),
                "sftp get {} copied {} bytes",
                f.display(),
                got.len()
            );
        }
        check("sftp get", &out.stdout);
        check("sftp get", &out.stderr);
    }
}

/// The quickstart's PostgreSQL port, from its config.
fn local_pg_port(qs_dir: &std::path::Path) -> u16 {
    let config = std::fs::read_to_string(qs_dir.join("gatehouse.toml")).unwrap();
    let start = config.find("name = \"demo\"").unwrap();
    config[start..]
        .split("address = \"127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .and_then(|p| p.parse().ok())
        .expect("demo target address")
}

/// A local user other than the gateway's cannot connect to the quickstart's PostgreSQL: not
/// over its Unix socket (as the superuser or any role), not over TCP without the password.
fn assert_local_postgres_refuses(user: &str, socket_dir: &std::path::Path, port: u16) {
    assert!(
        socket_dir.join(format!(".s.PGSQL.{port}")).exists(),
        "no socket in {}",
        socket_dir.display()
    );
    for (host, role) in [
        (socket_dir.display().to_string(), "postgres"),
        (socket_dir.display().to_string(), "gatehouse_app"),
        ("127.0.0.1".to_string(), "postgres"),
        ("127.0.0.1".to_string(), "gatehouse_app"),
    ] {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", user, "--", "psql", "-X", "-w", "-h", &host])
            .args([
                "-p",
                &port.to_string(),
                "-U",
                role,
                "-d",
                "demo",
                "-c",
                "SELECT 1",
            ])
            .env("PGCONNECT_TIMEOUT", "10")
            .env_remove("PGPASSWORD")
            .current_dir("/");
        let out = run_with_timeout(cmd, Duration::from_secs(30)).unwrap();
        assert_ne!(
            out.status.code(),
            Some(0),
            "{user} connected to the quickstart's PostgreSQL as {role} via {host}: {}",
            text(&out)
        );
    }
}

/// The quickstart's PostgreSQL socket directory as root (under the temp dir).
fn root_pg_socket_dir(port: u16) -> std::path::PathBuf {
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path().join("sock"))
        .find(|p| {
            p.parent()
                .and_then(|d| d.file_name())
                .is_some_and(|n| n.to_string_lossy().starts_with("gatehouse-quickstart-pg-"))
                && p.join(format!(".s.PGSQL.{port}")).exists()
        })
        .expect("the quickstart PostgreSQL's socket directory")
}

/// The running quickstart's temporary PostgreSQL directory (as root), checked to be the one
/// holding its cluster.
fn pg_temp_root(qs_dir: &std::path::Path) -> std::path::PathBuf {
    let root = root_pg_socket_dir(local_pg_port(qs_dir))
        .parent()
        .unwrap()
        .to_path_buf();
    assert!(root.join("data/PG_VERSION").exists(), "{}", root.display());
    root
}

/// A local user created for one test, removed (with its home) on drop.
struct TempUser {
    name: String,
    home: std::path::PathBuf,
    uid: u32,
    gid: u32,
}

impl TempUser {
    fn create() -> TempUser {
        let name = format!("ghqs{}", std::process::id());
        let out = Command::new("useradd")
            .args(["--create-home", "--shell", "/bin/sh", &name])
            .output()
            .unwrap();
        assert!(out.status.success(), "useradd: {}", text(&out));
        let user = nix::unistd::User::from_name(&name).unwrap().unwrap();
        TempUser {
            name,
            home: user.dir,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        }
    }
}

impl Drop for TempUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel")
            .args(["--force", "--remove", &self.name])
            .output();
    }
}

/// Starts `cmd` (a quickstart) and reads its printed instructions.
fn start_quickstart(
    cmd: Command,
) -> (
    ChildGuard,
    Vec<String>,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    let mut cmd = cmd;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut qs = ChildGuard::spawn_with_stdio("quickstart", cmd).unwrap();
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
    (qs, printed, stderr_lines)
}

/// Run as a normal user, the quickstart runs every SSH target session (and the sftp server) in
/// a sandbox that cannot see the gateway's directory; its PostgreSQL refuses other local users.
#[test]
fn quickstart_as_a_normal_user_sandboxes_the_ssh_target() {
    if !nix::unistd::geteuid().is_root() {
        // CI runs as root and creates the normal user below; as a normal user this is what
        // `quickstart_as_a_new_user` already runs as.
        eprintln!("skipped: needs root to create a normal user");
        return;
    }
    let user = TempUser::create();
    // A copy of the binary the user can run, and a quickstart directory in its home.
    let exe = user.home.join("gatehouse");
    std::fs::copy(EXE, &exe).unwrap();
    let qs_dir = user.home.join("qs");
    std::fs::create_dir_all(&qs_dir).unwrap();
    for p in [&exe, &qs_dir] {
        nix::unistd::chown(
            p.as_path(),
            Some(nix::unistd::Uid::from_raw(user.uid)),
            Some(nix::unistd::Gid::from_raw(user.gid)),
        )
        .unwrap();
    }
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid))
        .args(["--clear-groups", "--"])
        .arg(&exe)
        .args(["quickstart", "--dir"])
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
        .env("HOME", &user.home)
        .env("USER", &user.name)
        .env("LOGNAME", &user.name)
        .current_dir(&user.home);
    let (mut qs, printed, stderr_lines) = start_quickstart(cmd);
    // The approver's token: in a 0600 file of the quickstart's user, not in the output.
    {
        use std::os::unix::fs::MetadataExt as _;
        let approver = approver_credentials_of(&printed, &stderr_lines.lock().unwrap(), &qs_dir);
        let meta = std::fs::metadata(&approver.file).unwrap();
        assert_eq!(meta.uid(), user.uid, "{}", approver.file.display());
    }
    let said = stderr_lines.lock().unwrap().join("\n");
    assert!(
        said.contains("runs in a bwrap sandbox (user and mount namespaces)"),
        "{said}"
    );
    let key_line = printed
        .iter()
        .find(|l| l.starts_with("export GATEHOUSE_KEY="))
        .expect("gateway key line")
        .clone();
    let ssh_line = printed
        .iter()
        .find(|l| l.starts_with("SSH_ASKPASS="))
        .expect("ssh line")
        .clone();
    let ssh = |remote: &str| {
        let line = ssh_line
            .replace(" ssh -p ", " ssh -o ConnectTimeout=10 -p ")
            .replace("'uname -n'", &format!("'{remote}'"));
        sh(&format!("{key_line} && {line} </dev/null"), &[])
    };
    let out = ssh("id -un");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        user.name,
        "{}",
        text(&out)
    );
    // The target sees an empty directory where the gateway's is, and no other process.
    let out = ssh(&format!("ls -a {}", qs_dir.display()));
    let listing = text(&out);
    assert!(
        !listing.contains("secrets") && !listing.contains("dev-issuer.key"),
        "{listing}"
    );
    let out = ssh("ls /proc");
    let pids = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|w| w.chars().all(|c| c.is_ascii_digit()))
        .count();
    assert!(
        pids <= 8,
        "the sandbox sees other processes: {}",
        text(&out)
    );
    allow_sftp_for_agents(&qs_dir.join("policy.toml"), &qs);
    let scratch = user.home.join("scratch");
    let sftp_get = |remote: &std::path::Path, local: &std::path::Path| {
        let line = sftp_line(&ssh_line);
        sh(
            &format!(
                "{key_line} && echo 'get {} {}' | {line}",
                remote.display(),
                local.display()
            ),
            &[],
        )
    };
    std::fs::create_dir_all(&scratch).unwrap();
    let mut reloaded = false;
    for _ in 0..50 {
        if sftp_get(
            std::path::Path::new("/etc/hostname"),
            &scratch.join("hostname"),
        )
        .status
        .success()
        {
            reloaded = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        reloaded,
        "sftp not allowed after the policy reload: {}",
        text(&sftp_get(
            std::path::Path::new("/etc/hostname"),
            &scratch.join("hostname")
        ))
    );
    assert_target_reads_no_secret(&qs_dir, &ssh, &sftp_get, &scratch);
    let port = local_pg_port(&qs_dir);
    assert_local_postgres_refuses("nobody", &qs_dir.join("postgres/sock"), port);
    // The gateway's files are its own: no group or other bits anywhere in its directory.
    for f in walk(&qs_dir) {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::symlink_metadata(&f).unwrap().permissions().mode();
        let path = f.to_string_lossy();
        if !path.contains("/box-home/") && !path.contains("/postgres/sock/") {
            assert_eq!(mode & 0o077, 0, "{} is {:o}", f.display(), mode & 0o777);
        }
    }
    qs.stop(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(30));
}

/// The `box` target's sshd port, from a quickstart's config.
fn box_port(qs_dir: &std::path::Path) -> u16 {
    let config = std::fs::read_to_string(qs_dir.join("gatehouse.toml")).unwrap();
    let start = config.find("name = \"box\"").expect("a box target");
    config[start..]
        .split("address = \"127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .and_then(|p| p.parse().ok())
        .expect("box target address")
}

/// The quickstart command (all listeners on free ports) for `qs_dir`.
fn quickstart_command(qs_dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(EXE);
    cmd.args(["quickstart", "--dir"]).arg(qs_dir).args([
        "--pg-listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--ssh-listen",
        "127.0.0.1:0",
    ]);
    cmd
}

/// Two quickstarts started at the same time as root share the `gatehouse-box` user, never the
/// keys its targets trust: each target accepts its own gateway's key and refuses the other's
/// (real OpenSSH client straight to each sshd), both gateways still reach their own target,
/// and the target user can change neither keys file.
#[test]
fn two_quickstarts_as_root_trust_only_their_own_keys() {
    let sshd_installed = ["/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd"]
        .iter()
        .any(|p| std::path::Path::new(p).exists());
    if !nix::unistd::geteuid().is_root() || !sshd_installed {
        eprintln!("skipped: needs root (the dedicated target user) and sshd");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dirs = [dir.path().join("qs-a"), dir.path().join("qs-b")];
    let [(mut qs_a, printed_a, _), (mut qs_b, printed_b, _)] = std::thread::scope(|scope| {
        let started: Vec<_> = dirs
            .iter()
            .map(|d| scope.spawn(|| start_quickstart(quickstart_command(d))))
            .collect();
        let mut started = started.into_iter().map(|h| h.join().unwrap());
        [started.next().unwrap(), started.next().unwrap()]
    });
    // Straight to each target's sshd with each gateway's key.
    let direct = |key_of: &std::path::Path, target: &std::path::Path| {
        let mut cmd = Command::new("ssh");
        cmd.arg("-i")
            .arg(key_of.join("ssh/gateway_to_box_ed25519"))
            .args([
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=10",
                "-o",
                "StrictHostKeyChecking=yes",
                "-F",
                "/dev/null",
            ])
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                target.join("ssh/upstream_known_hosts").display()
            ))
            .args(["-p", &box_port(target).to_string()])
            .args(["gatehouse-box@127.0.0.1", "id -un"])
            .stdin(Stdio::null());
        run_with_timeout(cmd, Duration::from_secs(60)).unwrap()
    };
    for (own, other) in [(&dirs[0], &dirs[1]), (&dirs[1], &dirs[0])] {
        let out = direct(own, own);
        assert!(
            out.status.success(),
            "{}'s target refuses its own gateway's key: {}",
            own.display(),
            text(&out)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "gatehouse-box");
        let out = direct(other, own);
        assert_ne!(
            out.status.code(),
            Some(0),
            "{}'s target accepts {}'s key: {}",
            own.display(),
            other.display(),
            text(&out)
        );
        assert!(text(&out).contains("Permission denied"), "{}", text(&out));
    }
    // Each keys file is its own quickstart's, and the target user cannot write it.
    let keys_file = |qs_dir: &std::path::Path| {
        let config = std::fs::read_to_string(qs_dir.join("ssh/sshd_config")).unwrap();
        config
            .lines()
            .find_map(|l| l.strip_prefix("AuthorizedKeysFile "))
            .expect("AuthorizedKeysFile")
            .trim()
            .to_string()
    };
    let (file_a, file_b) = (keys_file(&dirs[0]), keys_file(&dirs[1]));
    assert_ne!(file_a, file_b);
    for (file, qs_dir) in [(&file_a, &dirs[0]), (&file_b, &dirs[1])] {
        let trusted = std::fs::read_to_string(file).unwrap();
        let own = std::fs::read_to_string(qs_dir.join("ssh/gateway_to_box_ed25519.pub")).unwrap();
        assert_eq!(trusted.trim(), own.trim(), "{file}");
        let parent = std::path::Path::new(file)
            .parent()
            .unwrap()
            .display()
            .to_string();
        for attempt in [
            format!("echo x >> {file}"),
            format!("rm -f {file}"),
            format!("mv {parent} {parent}.moved"),
            format!("touch {parent}/other"),
        ] {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "gatehouse-box", "--", "sh", "-c", &attempt])
                .current_dir("/");
            let out = run_with_timeout(cmd, Duration::from_secs(30)).unwrap();
            assert_ne!(out.status.code(), Some(0), "`{attempt}`: {}", text(&out));
        }
        assert_eq!(std::fs::read_to_string(file).unwrap(), trusted);
    }
    // Both gateways still reach their own target through their printed commands.
    for printed in [&printed_a, &printed_b] {
        let key_line = printed
            .iter()
            .find(|l| l.starts_with("export GATEHOUSE_KEY="))
            .unwrap();
        let ssh_line = printed
            .iter()
            .find(|l| l.starts_with("SSH_ASKPASS="))
            .unwrap()
            .replace(" ssh -p ", " ssh -o ConnectTimeout=10 -p ")
            .replace("'uname -n'", "'id -un'");
        let out = sh(&format!("{key_line} && {ssh_line} </dev/null"), &[]);
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "gatehouse-box",
            "{}",
            text(&out)
        );
    }
    // A stopped quickstart leaves no key trusted behind, and no PostgreSQL directory; the
    // other's target and database are unaffected.
    let (pg_a, pg_b) = (pg_temp_root(&dirs[0]), pg_temp_root(&dirs[1]));
    assert_ne!(pg_a, pg_b);
    qs_a.stop(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(30));
    assert!(
        !std::path::Path::new(&file_a).exists(),
        "{file_a} left behind"
    );
    assert!(!pg_a.exists(), "{} left behind", pg_a.display());
    assert!(pg_b.join("data/PG_VERSION").exists(), "{}", pg_b.display());
    let out = direct(&dirs[1], &dirs[1]);
    assert!(out.status.success(), "{}", text(&out));
    qs_b.stop(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(30));
    assert!(
        !std::path::Path::new(&file_b).exists(),
        "{file_b} left behind"
    );
    assert!(!pg_b.exists(), "{} left behind", pg_b.display());
}

/// A quickstart killed outright (SIGKILL: no cleanup of its own) still leaves no temporary
/// PostgreSQL directory behind: its watchdog stops the server, then removes it.
#[test]
fn a_killed_quickstart_leaves_no_temporary_postgres_directory() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: only a root quickstart keeps PostgreSQL in a temporary directory");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let qs_dir = dir.path().join("qs");
    let mut cmd = quickstart_command(&qs_dir);
    cmd.arg("--no-ssh");
    let (mut qs, _, _) = start_quickstart(cmd);
    let pg_tmp = pg_temp_root(&qs_dir);
    qs.stop(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(60);
    while pg_tmp.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!pg_tmp.exists(), "{} left behind", pg_tmp.display());
}
