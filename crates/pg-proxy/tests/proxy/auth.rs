//! Connection phase: token → identity, upstream login with held credentials, errors.

use gatehouse_core::EventBody;

use crate::common::*;

#[tokio::test]
async fn tokio_postgres_connects_through_scram_plus_and_runs_queries() {
    gatehouse_testkit::within(T, async {
        let h = start(Options::default()).await;
        let c = h.connect().await;
        let who: String = c
            .query_one("select current_user::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(who, h.role, "upstream user comes from the target config");
        // Over TLS to the upstream the gateway must have used channel binding.
        let ssl: bool = c
            .query_one(
                "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(ssl, "upstream connection is TLS");
        let events = h.tp.recorder.events();
        assert!(
            events
                .iter()
                .any(|e| matches!(e.body, EventBody::SessionStart { .. }))
        );
    })
    .await;
}

#[tokio::test]
async fn plain_upstream_scram_works_too() {
    gatehouse_testkit::within(T, async {
        let h = start(Options {
            tls_upstream: false,
            ..Options::default()
        })
        .await;
        let c = h.connect().await;
        let ssl: bool = c
            .query_one(
                "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(!ssl);
    })
    .await;
}

#[tokio::test]
async fn bad_token_is_28p01_with_the_reason_and_never_the_token() {
    gatehouse_testkit::within(T, async {
        let h = start(Options::default()).await;
        let bad = "not-a-valid-token-0xdeadbeef";
        let err = h
            .try_connect(bad)
            .await
            .err()
            .unwrap_or_else(|| panic!("refused"));
        let (code, msg) = db_error(&err);
        assert_eq!(code, "28P01");
        assert!(msg.contains("unknown or revoked key"), "{msg}");
        assert!(!msg.contains(bad));
        let failed: Vec<_> =
            h.tp.recorder
                .events()
                .into_iter()
                .filter(|e| matches!(e.body, EventBody::LoginFailed { .. }))
                .collect();
        assert_eq!(failed.len(), 1);
        assert!(!h.audit_dump().contains(bad), "the token is never recorded");
    })
    .await;
}

#[tokio::test]
async fn unknown_target_and_missing_database_are_3d000() {
    gatehouse_testkit::within(T, async {
        let h = start(Options::default()).await;
        let s = format!(
            "host=127.0.0.1 port={} user=agent dbname=nope password={TOKEN}",
            h.port
        );
        let err = tokio_postgres::connect(&s, tokio_postgres::NoTls)
            .await
            .err()
            .unwrap();
        let (code, msg) = db_error(&err);
        assert_eq!(code, "3D000");
        assert!(msg.contains("nope"));
    })
    .await;
}

#[tokio::test]
async fn plaintext_password_without_tls_is_refused_unless_allowed() {
    gatehouse_testkit::within(T, async {
        let h = start(Options {
            configure: Box::new(|c| c.allow_plaintext_password = false),
            ..Options::default()
        })
        .await;
        let err = h.try_connect(TOKEN).await.err().unwrap();
        let (code, msg) = db_error(&err);
        assert_eq!(code, "28000");
        assert!(msg.contains("TLS"), "{msg}");
    })
    .await;
}

#[tokio::test]
async fn identity_provider_down_fails_closed() {
    gatehouse_testkit::within(T, async {
        let h = start(Options::default()).await;
        // A second listener on the same target whose identity provider is down.
        let auth = gatehouse_testkit::layers::StaticAuthenticator::new();
        auth.set_unavailable(true);
        let mut pipeline = h.tp.pipeline.clone();
        pipeline.authenticator = std::sync::Arc::new(auth);
        let upstream = gatehouse_pg::UpstreamConfig {
            address: gatehouse_pg::UpstreamAddress::Tcp {
                host: "127.0.0.1".into(),
                port: gatehouse_testkit::pg::PgCluster::shared().port(),
            },
            user: h.role.clone(),
            database: h.db.name.clone(),
            password: Some(gatehouse_pg::Secret::new(h.password.clone())),
            tls: gatehouse_pg::UpstreamTls::Disable,
            connect_timeout: std::time::Duration::from_secs(5),
        };
        let mut config = gatehouse_pg::PgProxyConfig::new([gatehouse_pg::PgTarget {
            target: gatehouse_core::Target::new("app", gatehouse_core::Protocol::Postgres),
            upstream,
        }]);
        config.allow_plaintext_password = true;
        let proxy = gatehouse_pg::PgProxy::new(config, pipeline);
        let listener = gatehouse_testkit::net::bind_loopback_tokio().await;
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(proxy.serve(listener));
        let s = format!("host=127.0.0.1 port={port} user=agent dbname=app password={TOKEN}");
        let err = tokio_postgres::connect(&s, tokio_postgres::NoTls)
            .await
            .err()
            .unwrap_or_else(|| panic!("refused"));
        task.abort();
        let (code, msg) = db_error(&err);
        assert_eq!(code, "28P01");
        assert!(msg.contains("identity provider unavailable"), "{msg}");
    })
    .await;
}

#[tokio::test]
async fn recorder_down_at_start_refuses_the_session() {
    gatehouse_testkit::within(T, async {
        let h = start(Options::default()).await;
        h.tp.recorder.set_failing(true);
        let err = h
            .try_connect(TOKEN)
            .await
            .err()
            .unwrap_or_else(|| panic!("refused"));
        let (code, _) = db_error(&err);
        assert_eq!(code, "58030");
    })
    .await;
}

#[tokio::test]
async fn expired_token_ends_the_session() {
    gatehouse_testkit::within(T, async {
        let h = start(Options {
            identity_expiry: Some(time::OffsetDateTime::now_utc() + time::Duration::seconds(8)),
            ..Options::default()
        })
        .await;
        let c = h.connect().await;
        c.simple_query("select 1").await.unwrap();
        // Wait (bounded by `within`) until the gateway ends the session.
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            if c.simple_query("select 1").await.is_err() {
                break;
            }
        }
        assert!(c.is_closed());
        let ended = h.tp.recorder.events().into_iter().any(|e| {
            matches!(&e.body, EventBody::SessionEnd { reason, .. } if reason == "token expired")
        });
        assert!(ended);
    })
    .await;
}
