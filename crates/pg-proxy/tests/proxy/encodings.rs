//! Client encodings other than UTF-8, with the real psql: statements are decoded exactly before
//! they are read (an SJIS character whose second byte is `\` cannot hide a statement), values and
//! errors come back in the session's encoding, and an encoding the gateway cannot decode exactly
//! is refused at startup.

use std::process::{Command, Output};
use std::time::Duration;

use gatehouse_sql::StatementKind as K;

use crate::common::*;

fn psql_file(port: u16, encoding: &str, sql: &[u8]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("input.sql");
    std::fs::write(&file, sql).unwrap();
    let mut cmd = Command::new(gatehouse_testkit::pg::psql_path());
    cmd.args([
        "-X",
        "-At",
        "-v",
        "ON_ERROR_STOP=0",
        "-h",
        "127.0.0.1",
        "-p",
    ])
    .arg(port.to_string())
    .args(["-U", "agent", "-d", "app", "-f"])
    .arg(&file)
    .env("PGCONNECT_TIMEOUT", "10")
    .env("PGSSLMODE", "disable")
    .env("PGPASSWORD", TOKEN)
    .env("PGCLIENTENCODING", encoding);
    gatehouse_testkit::process::run_with_timeout(cmd, Duration::from_secs(60))
        .expect("psql finishes within 60 s")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn opts() -> Options {
    Options {
        policy: kind_policy(&[K::Drop], &[], 1000),
        setup_sql: "CREATE TABLE victim (id int); INSERT INTO victim VALUES (1);",
        ..Options::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latin9_session_reads_and_gets_back_latin9_text() {
    let h = start(opts()).await;
    let port = h.port;
    let out = tokio::task::spawn_blocking(move || {
        psql_file(
            port,
            "LATIN9",
            b"select 'caf\xe9 \xa4' as v;\nselect 'x\xe9'::int;\n",
        )
    })
    .await
    .unwrap();
    assert!(contains(&out.stdout, b"caf\xe9 \xa4"), "{out:?}");
    // The server's error, masked by the gateway, still in LATIN9 (not UTF-8, not U+FFFD).
    assert!(contains(&out.stderr, b"\"x\xe9\""), "{out:?}");
    assert!(!contains(&out.stderr, "\u{FFFD}".as_bytes()), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sjis_trail_byte_that_is_a_backslash_hides_nothing() {
    let h = start(opts()).await;
    let port = h.port;
    // 0x95 0x5C is one SJIS character (表). Read as bytes, its 0x5C would escape the quote after
    // it inside E'…', and the DROP would look like part of the string; the server decodes first
    // and runs the DROP. The gateway must see it.
    let out = tokio::task::spawn_blocking(move || {
        psql_file(
            port,
            "SJIS",
            b"select E'\x95\x5c' as k; drop table victim; --';\nselect '\x95\x5c' || 'ok';\n",
        )
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no-truncate") || stderr.contains("denied"),
        "{out:?}"
    );
    assert_eq!(
        h.db.psql("select count(*) from victim").unwrap(),
        "1",
        "the DROP must not run"
    );
    // Statements without a DROP run, and SJIS text comes back as SJIS.
    assert!(contains(&out.stdout, b"\x95\x5cok"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encoding_the_gateway_cannot_decode_exactly_is_refused_at_startup() {
    let h = start(opts()).await;
    let port = h.port;
    let out = tokio::task::spawn_blocking(move || psql_file(port, "EUC_TW", b"select 1;\n"))
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        stderr.contains("EUC_TW") && stderr.contains("not supported by the gateway"),
        "{stderr}"
    );
}

/// Values are masked as text, whatever the session's encoding: decoded before the masker reads
/// them, and its output encoded back, so a replacement is valid LATIN9.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_are_masked_as_text_in_the_sessions_encoding() {
    let h = start(Options {
        masker: gatehouse_testkit::layers::LiteralMasker::new()
            .literal("café", "[drink]")
            .literal("secret", "§"),
        ..opts()
    })
    .await;
    let port = h.port;
    let out = tokio::task::spawn_blocking(move || {
        psql_file(
            port,
            "LATIN9",
            b"select 'a caf\xe9 here';\nselect 'my secret \xa4';\ncopy (select 'caf\xe9 secret') to stdout;\n",
        )
    })
    .await
    .unwrap();
    assert!(contains(&out.stdout, b"a [drink] here"), "{out:?}");
    assert!(contains(&out.stdout, b"my \xa7 \xa4"), "{out:?}");
    assert!(contains(&out.stdout, b"[drink] \xa7"), "{out:?}");
    assert!(!contains(&out.stdout, b"caf\xe9"), "{out:?}");
}
