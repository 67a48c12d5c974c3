//! The real psql binary through the gateway: queries, \d, COPY in and out, a denied DROP with the
//! session usable after, masking, TLS to the gateway, and psql's reconnect-after-prompt flow.

use std::process::{Command, Output};
use std::time::Duration;

use gatehouse_core::EventBody;
use gatehouse_testkit::layers::LiteralMasker;

use crate::common::*;

const SETUP: &str = "CREATE TABLE people (id int primary key, email text, bio text); \
     INSERT INTO people VALUES (1, 'ann@example.com', 'card 4111 1111 1111 1111 on file');";

fn psql(
    port: u16,
    password: Option<&str>,
    extra_env: &[(&str, &str)],
    args: &[&str],
    stdin: Option<&str>,
) -> Output {
    let mut cmd = Command::new(gatehouse_testkit::pg::psql_path());
    cmd.args([
        "-X",
        "-v",
        "ON_ERROR_STOP=0",
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-U",
        "agent",
        "-d",
        "app",
    ])
    .args(args)
    .env("PGCONNECT_TIMEOUT", "10")
    .env("PGSSLMODE", "disable")
    .env_remove("PGPASSWORD")
    .stdin(if stdin.is_some() {
        std::process::Stdio::piped()
    } else {
        std::process::Stdio::null()
    })
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let mut child = gatehouse_testkit::process::ChildGuard::spawn_with_stdio("psql", cmd).unwrap();
    if let Some(input) = stdin {
        use std::io::Write;
        let mut sin = child.child_mut().stdin.take().unwrap();
        sin.write_all(input.as_bytes()).unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(_status) = child.child_mut().try_wait().unwrap() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "psql hung");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut out = Output {
        status: child.child_mut().wait().unwrap(),
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    use std::io::Read;
    if let Some(mut s) = child.child_mut().stdout.take() {
        s.read_to_end(&mut out.stdout).unwrap();
    }
    if let Some(mut s) = child.child_mut().stderr.take() {
        s.read_to_end(&mut out.stderr).unwrap();
    }
    out
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn opts() -> Options {
    Options {
        masker: LiteralMasker::new()
            .column("public.people.email")
            .literal("4111 1111 1111 1111", "[card]"),
        policy: keyword_policy(&["drop table"], &[], 1000),
        setup_sql: SETUP,
        ..Options::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_queries_describe_copy_deny_and_mask() {
    let h = start(opts()).await;
    let port = h.port;
    let script = "select id, email, bio from people;\n\
                  \\d people\n\
                  drop table people;\n\
                  select 'still here' as alive;\n\
                  \\copy people (id, email, bio) from stdin\n\
                  2\tbob@example.com\tplain\n\
                  \\.\n\
                  select count(*) as n from people;\n\
                  \\copy (select id, bio from people order by id) to stdout\n";
    let out =
        tokio::task::spawn_blocking(move || psql(port, Some(TOKEN), &[], &["-A"], Some(script)))
            .await
            .unwrap();
    let (stdout, stderr) = text(&out);
    eprintln!("--- stdout\n{stdout}\n--- stderr\n{stderr}");
    assert!(
        !stdout.contains("ann@example.com"),
        "email masked: {stdout}"
    );
    assert!(
        stdout.contains("1|[masked]|card [card] on file"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Table \"public.people\""),
        "\\d works: {stdout}"
    );
    assert!(
        stderr.contains("no-ddl"),
        "denied DROP names the rule: {stderr}"
    );
    assert!(
        stderr.contains("42501") || stderr.contains("ERROR"),
        "{stderr}"
    );
    assert!(
        stdout.contains("still here"),
        "session usable after the denial: {stdout}"
    );
    assert!(
        stdout.contains("\n2\n") || stdout.contains("n\n2"),
        "COPY FROM stdin added a row: {stdout}"
    );
    assert!(
        stdout.contains("1\tcard [card] on file"),
        "COPY TO stdout masked: {stdout}"
    );
    assert_eq!(h.db.psql("select count(*) from people").unwrap(), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_reconnect_after_prompt_is_not_a_failed_login() {
    let h = start(opts()).await;
    let port = h.port;
    // -w: never prompt. psql connects, learns a password is needed, disconnects.
    let out =
        tokio::task::spawn_blocking(move || psql(port, None, &[], &["-w", "-c", "select 1"], None))
            .await
            .unwrap();
    assert!(!out.status.success());
    let (_, stderr) = text(&out);
    assert!(stderr.contains("password"), "{stderr}");
    // Then with the password, as after the prompt.
    let out = tokio::task::spawn_blocking(move || {
        psql(
            port,
            Some(TOKEN),
            &[],
            &["-A", "-t", "-c", "select 41 + 1"],
            None,
        )
    })
    .await
    .unwrap();
    assert_eq!(text(&out).0.trim(), "42");
    let failed =
        h.tp.recorder
            .events()
            .iter()
            .filter(|e| matches!(e.body, EventBody::LoginFailed { .. }))
            .count();
    assert_eq!(
        failed, 0,
        "the disconnect before the password is not a failed login"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_over_tls_to_the_gateway_with_verify_full() {
    let ca = gatehouse_testkit::tls::TestCa::new("gateway test CA");
    let (cert, key) = ca.issue_server(&["localhost", "127.0.0.1"]);
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.crt");
    std::fs::write(&ca_path, ca.cert_pem()).unwrap();
    let certs: Vec<_> = rustls_pemfile::certs(&mut cert.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    let key = rustls_pemfile::private_key(&mut key.as_bytes())
        .unwrap()
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let h = start(Options {
        configure: Box::new(move |c| {
            c.tls = Some(std::sync::Arc::new(server));
            c.allow_plaintext_password = false;
        }),
        ..opts()
    })
    .await;
    let port = h.port;
    let ca_str = ca_path.to_string_lossy().into_owned();
    let out = tokio::task::spawn_blocking(move || {
        psql(
            port,
            Some(TOKEN),
            &[("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", &ca_str)],
            &["-A", "-t", "-c", "select 'over tls'"],
            None,
        )
    })
    .await
    .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(stdout.trim(), "over tls", "{stderr}");
    // Without TLS the same gateway refuses the cleartext token.
    let out = tokio::task::spawn_blocking(move || {
        psql(port, Some(TOKEN), &[], &["-c", "select 1"], None)
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).1.contains("requires TLS"), "{}", text(&out).1);
}
