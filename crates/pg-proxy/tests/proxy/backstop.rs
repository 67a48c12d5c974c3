//! The database-side backstop: a target whose upstream role can only read. Even with a policy
//! that allows everything (opaque code included), every write path is refused by PostgreSQL's
//! own privilege checks; and `gatehouse_pg::backstop::write_capabilities` tells a read-only
//! role from one that can write.

use gatehouse_pg::{Secret, UpstreamConfig};
use gatehouse_testkit::pg::PgCluster;
use gatehouse_testkit::within;

use crate::common::{Options, T, db_error, start};

/// Run as the harness's role (it owns the database and these objects).
const SETUP: &str = "
create table victims (id int primary key);
insert into victims select generate_series(1, 5);
create sequence counter;
create function public.wipe() returns int language plpgsql
  as $$ begin delete from victims; return 1; end $$;
";

/// Every way to write we know of; each must be refused by the server.
const WRITES: &[&str] = &[
    "insert into victims values (9)",
    "update victims set id = id + 100",
    "delete from victims",
    "truncate victims",
    "merge into victims v using (select 1 as id) s on v.id = s.id when matched then delete",
    "with d as (delete from victims returning id) select count(*) from d",
    "select public.wipe()",
    "do $$ begin execute 'delete from ' || 'victims'; end $$",
    "select query_to_xml('delete from victims returning id', true, false, '')",
    "set default_transaction_read_only = off; delete from victims",
    "begin; set transaction read write; delete from victims; commit",
    "copy victims from stdin",
    "drop table victims",
    "alter table victims add column x int",
    "create table victims2 (id int)",
    "create schema elsewhere",
    "select nextval('counter')",
    "select setval('counter', 42)",
    "begin; lock table victims in access exclusive mode; commit",
    "comment on table victims is 'x'",
    "create index on victims (id)",
    "reindex table victims",
];

fn read_only_role(cluster: &PgCluster, db: &str) -> (String, String) {
    let role = format!("gh_reader_{}_{}", std::process::id(), rand::random::<u32>());
    let password = format!("reader-{}", rand::random::<u64>());
    cluster.create_role(&role, &password);
    cluster
        .psql_in(db, &format!("grant pg_read_all_data to \"{role}\""))
        .unwrap();
    (role, password)
}

fn with_role(upstream: &UpstreamConfig, role: &str, password: &str) -> UpstreamConfig {
    let mut u = upstream.clone();
    u.user = role.to_string();
    u.password = Some(Secret::new(password.to_string()));
    u
}

#[tokio::test]
async fn a_read_only_role_refuses_every_write_whatever_the_policy() {
    within(T, async {
        // Roles are cluster-wide: the reader is created while the proxy is configured.
        let reader = std::sync::Arc::new(std::sync::Mutex::new(None::<(String, String)>));
        let slot = reader.clone();
        let h = start(Options {
            setup_sql: SETUP,
            configure: Box::new(move |config| {
                let (role, password) = {
                    let r = read_only_role(PgCluster::shared(), "postgres");
                    *slot.lock().unwrap() = Some(r.clone());
                    r
                };
                for t in config.targets.values_mut() {
                    t.upstream = with_role(&t.upstream, &role, &password);
                }
            }),
            ..Options::default()
        })
        .await;
        let c = h.connect().await;
        // Reads work.
        let rows = c.query("select count(*) from victims", &[]).await.unwrap();
        assert_eq!(rows[0].get::<_, i64>(0), 5);
        for sql in WRITES {
            let e = c
                .simple_query(sql)
                .await
                .expect_err(&format!("{sql} must be refused by the server"));
            let (code, message) = db_error(&e);
            // 42501: permission denied; 0A000: a write refused inside a read-only SPI query.
            assert!(
                code == "42501" || code == "0A000",
                "{sql}: {code} {message}"
            );
            // A failed statement may leave a transaction block open.
            c.simple_query("rollback").await.unwrap();
        }
        assert_eq!(
            h.db.psql("select count(*) || ':' || min(id) || ':' || max(id) from victims")
                .unwrap()
                .trim(),
            "5:1:5"
        );
        assert_eq!(
            h.db.psql("select last_value from counter").unwrap().trim(),
            "1"
        );
        let (role, password) = reader.lock().unwrap().clone().unwrap();
        // The capability check finds nothing for the reader (once TEMP, granted to PUBLIC by
        // default, is revoked), and the writer's ways to write.
        h.db.psql(&format!(
            "revoke temporary on database \"{}\" from public",
            h.db.name
        ))
        .unwrap();
        let upstream = h_upstream(&h);
        let found =
            gatehouse_pg::backstop::write_capabilities(&with_role(&upstream, &role, &password))
                .await
                .unwrap();
        assert!(found.is_empty(), "{found:?}");
        let found =
            gatehouse_pg::backstop::write_capabilities(&with_role(&upstream, &h.role, &h.password))
                .await
                .unwrap();
        let all = found.join("\n");
        assert!(
            all.contains("owns public.victims") || all.contains("owns victims"),
            "{all}"
        );
        assert!(all.contains("may CREATE in schema public"), "{all}");
        assert!(all.contains("may DELETE"), "{all}");
    })
    .await;
}

/// A SECURITY DEFINER function owned by a writer is a way to write the reader inherits.
#[tokio::test]
async fn a_security_definer_function_counts_as_a_way_to_write() {
    within(T, async {
        let h = start(Options {
            setup_sql: "create table t (x int);
                create function public.add_row() returns void language sql security definer
                  as $$ insert into t values (1) $$;",
            ..Options::default()
        })
        .await;
        let (role, password) = read_only_role(PgCluster::shared(), &h.db.name);
        let upstream = h_upstream(&h);
        let found =
            gatehouse_pg::backstop::write_capabilities(&with_role(&upstream, &role, &password))
                .await
                .unwrap();
        assert!(
            found
                .iter()
                .any(|f| f.contains("SECURITY DEFINER") && f.contains("add_row")),
            "{found:?}"
        );
    })
    .await;
}

fn h_upstream(h: &crate::common::Harness) -> UpstreamConfig {
    UpstreamConfig {
        address: gatehouse_pg::UpstreamAddress::Tcp {
            host: "127.0.0.1".into(),
            port: PgCluster::shared().port(),
        },
        user: h.role.clone(),
        database: h.db.name.clone(),
        password: Some(Secret::new(h.password.clone())),
        tls: crate::common::upstream_tls(PgCluster::shared()),
        connect_timeout: std::time::Duration::from_secs(10),
    }
}
