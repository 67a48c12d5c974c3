//! Catalog opacity through the gateway against a real PostgreSQL: code stored in the database
//! (user functions under built-in names, triggers, rules) makes an ordinary-looking statement
//! opaque, decided by the policy's `opaque` verdict; plain built-ins and plain DML on tables
//! without stored code stay allowed.

use std::sync::Arc;

use gatehouse_testkit::within;

use crate::common::{Options, T, TOKEN, db_error, start};

/// Everything is allowed except what the gateway cannot see into, which is refused (so a test
/// sees the opaque verdict as an error instead of a held request). One rule lets the agent
/// create code, to test what the session itself creates.
const POLICY: &str = r#"
version = 1

[defaults]
default = "allow"
opaque = "deny"

[[rules]]
id = "agents-create-code"
reason = "the agent may define functions in these tests"
verdict = "allow"
opaque = true
sql = { kinds = ["ddl"] }
"#;

/// Run as the upstream role: every function here is owned by a non-bootstrap role.
const SETUP: &str = "
create table victims (id int);
insert into victims select generate_series(1, 5);
create function public.wipe() returns int language plpgsql volatile
  as $$ begin delete from victims; return 1; end $$;
-- declared IMMUTABLE, deletes through a volatile helper
create function public.length(int) returns int language plpgsql immutable
  as $$ begin perform public.wipe(); return $1; end $$;
create table accounts (id int primary key, bal int);
insert into accounts select g, 100 from generate_series(1, 3) g;
create function public.on_update() returns trigger language plpgsql
  as $$ begin delete from victims; return new; end $$;
create trigger wipe_on_update before update on accounts
  for each row execute function public.on_update();
create table inbox (x int);
create rule wipe_on_insert as on insert to inbox do also delete from victims;
create view wiping_view as select public.wipe() as w;
create table defaults_code (id int, n int default public.length(1));
create table parent (id int primary key);
create table child (pid int references parent on delete cascade);
create trigger wipe_on_child_delete before delete on child
  for each row execute function public.on_update();
insert into parent values (1); insert into child values (1);
create table logs (x int) partition by range (x);
create table logs_1 partition of logs for values from (0) to (100);
create trigger wipe_on_log before insert on logs_1
  for each row execute function public.on_update();
create schema evil;
create function evil.upper(text) returns text language plpgsql
  as $$ begin delete from victims; return $1; end $$;
create table pgbench_branches (bid int not null primary key, bbalance int, filler char(88));
create table pgbench_tellers (tid int not null primary key, bid int, tbalance int, filler char(84));
create table pgbench_accounts (aid int not null primary key, bid int, abalance int, filler char(84));
create table pgbench_history (tid int, bid int, aid int, delta int, mtime timestamp, filler char(22));
insert into pgbench_branches values (1, 0, null);
insert into pgbench_tellers select g, 1, 0, null from generate_series(1, 10) g;
insert into pgbench_accounts select g, 1, 0, '' from generate_series(1, 1000) g;
";

fn options() -> Options {
    Options {
        policy: Arc::new(
            gatehouse_policy::CompiledPolicy::from_toml(POLICY, "policy.toml").unwrap(),
        ),
        setup_sql: SETUP,
        ..Options::default()
    }
}

fn victims(h: &crate::common::Harness) -> String {
    h.db.psql("select count(*) from victims")
        .unwrap()
        .trim()
        .to_string()
}

async fn refused_as_opaque(c: &tokio_postgres::Client, sql: &str) -> String {
    let e = c
        .simple_query(sql)
        .await
        .expect_err(&format!("{sql} must be refused"));
    let (code, message) = db_error(&e);
    assert_eq!(code, "42501", "{sql}: {message}");
    assert!(message.contains("opaque"), "{sql}: {message}");
    message
}

#[tokio::test]
async fn stored_code_makes_ordinary_statements_opaque() {
    within(T, async {
        let h = start(options()).await;
        let c = h.connect().await;
        // A user overload of a built-in name, declared IMMUTABLE, that deletes.
        let m = refused_as_opaque(&c, "select length(3)").await;
        assert!(m.contains("public.length(integer)"), "{m}");
        // Also through the extended protocol.
        let e = c
            .query("select length($1::int)", &[&3i32])
            .await
            .unwrap_err();
        assert_eq!(db_error(&e).0, "42501");
        // A trigger fired by an ordinary UPDATE.
        let m = refused_as_opaque(&c, "update accounts set bal = bal + 1 where id = 1").await;
        assert!(m.contains("wipe_on_update"), "{m}");
        // A rule on the table an INSERT writes.
        let m = refused_as_opaque(&c, "insert into inbox values (1)").await;
        assert!(m.contains("wipe_on_insert"), "{m}");
        // A view that calls user code, read by a plain SELECT.
        let m = refused_as_opaque(&c, "select * from wiping_view").await;
        assert!(m.contains("wipe()"), "{m}");
        // A column default that calls user code.
        let m = refused_as_opaque(&c, "insert into defaults_code (id) values (1)").await;
        assert!(m.contains("length(integer)"), "{m}");
        // A delete that cascades to a table with a trigger.
        let m = refused_as_opaque(&c, "delete from parent").await;
        assert!(m.contains("wipe_on_child_delete"), "{m}");
        // An insert routed to a partition with a trigger.
        let m = refused_as_opaque(&c, "insert into logs values (5)").await;
        assert!(m.contains("wipe_on_log"), "{m}");
        // A schema-qualified or quoted spelling changes nothing.
        refused_as_opaque(&c, "update public.accounts set bal = 0").await;
        refused_as_opaque(&c, "update \"accounts\" set bal = 0").await;
        // Hidden in a multi-statement string after a harmless statement.
        refused_as_opaque(&c, "select 1; update accounts set bal = 0 where id = 2").await;
        assert_eq!(victims(&h), "5");
        // Reading the table with the trigger runs no code: allowed.
        let rows = c
            .simple_query("select count(*) from accounts")
            .await
            .unwrap();
        assert!(!rows.is_empty());
        // The information schema's views call functions created with the cluster: not opaque.
        c.simple_query("select count(*) from information_schema.columns")
            .await
            .unwrap();
        // Plain built-ins stay allowed.
        c.simple_query("select abs(-1), char_length('abc'), now(), coalesce(null, 1)")
            .await
            .unwrap();
        assert_eq!(victims(&h), "5");
    })
    .await;
}

#[tokio::test]
async fn a_function_earlier_on_the_search_path_is_opaque() {
    within(T, async {
        let h = start(options()).await;
        // The administrator's role setting puts a schema with a look-alike before pg_catalog.
        h.db.psql(&format!(
            "alter role \"{}\" set search_path = evil, pg_catalog, public",
            h.role
        ))
        .unwrap();
        let c = h.connect().await;
        let m = refused_as_opaque(&c, "select upper('x')").await;
        assert!(m.contains("evil.upper(text)"), "{m}");
        refused_as_opaque(&c, "select pg_catalog.lower('x'), upper('y')").await;
        assert_eq!(victims(&h), "5");
        // A function the (bootstrap) superuser added to pg_catalog later is not a built-in.
        h.db.psql(
            "create function pg_catalog.split_part(int, int, int) returns int language sql \
             as $$ select 1 $$",
        )
        .unwrap();
        let m = refused_as_opaque(&c, "select split_part('a,b', ',', 1)").await;
        assert!(
            m.contains("pg_catalog.split_part(integer, integer, integer)"),
            "{m}"
        );
        // Unaffected built-ins pass.
        c.simple_query("select lower('X')").await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn code_the_session_creates_is_opaque_at_once_and_after_commit() {
    within(T, async {
        let h = start(options()).await;
        h.db.psql(&format!(
            "alter role \"{}\" set search_path = pg_temp, pg_catalog, public",
            h.role
        ))
        .unwrap();
        let c = h.connect().await;
        // Inside a transaction the catalog connection cannot see the new function yet.
        c.simple_query("begin").await.unwrap();
        c.simple_query(
            "create function pg_temp.initcap(text) returns text language plpgsql \
             as $$ begin delete from victims; return $1; end $$",
        )
        .await
        .unwrap();
        let m = refused_as_opaque(&c, "select initcap('x') /* in the transaction */").await;
        assert!(m.contains("has not ended"), "{m}");
        // The refusal aborted the transaction; create it again and commit.
        c.simple_query("rollback").await.unwrap();
        c.simple_query("begin").await.unwrap();
        c.simple_query(
            "create function pg_temp.initcap(text) returns text language plpgsql \
             as $$ begin delete from victims; return $1; end $$",
        )
        .await
        .unwrap();
        c.simple_query("commit").await.unwrap();
        // Committed: the catalog shows it.
        let m = refused_as_opaque(&c, "select initcap('x')").await;
        assert!(m.contains(".initcap(text)"), "{m}");
        // In the same string as its creation.
        let m = refused_as_opaque(
            &c,
            "create function pg_temp.md5(text) returns text language sql as $$ select $1 $$; \
             select md5('x')",
        )
        .await;
        assert!(m.contains("has not ended"), "{m}");
        assert_eq!(victims(&h), "5");
        // A trigger created in an open transaction, fired by a plain UPDATE.
        c.simple_query("begin").await.unwrap();
        c.simple_query(
            "create trigger again before update on pgbench_branches \
             for each row execute function public.on_update()",
        )
        .await
        .unwrap();
        refused_as_opaque(&c, "update pgbench_branches set bbalance = 1").await;
        c.simple_query("rollback").await.unwrap();
        // Rolled back and settled: the table is plain again.
        c.simple_query("update pgbench_branches set bbalance = 0")
            .await
            .unwrap();
        assert_eq!(victims(&h), "5");
    })
    .await;
}

#[tokio::test]
async fn lookups_leave_the_client_transaction_alone() {
    within(T, async {
        let h = start(options()).await;
        let c = h.connect().await;
        c.simple_query("begin").await.unwrap();
        c.simple_query("insert into pgbench_history values (1, 1, 1, 1, now(), '')")
            .await
            .unwrap();
        // An aborted transaction: the server refuses, the gateway's lookups do not break it.
        let e = c.simple_query("select 1/0").await.unwrap_err();
        assert_eq!(db_error(&e).0, "22012");
        let e = c.simple_query("select abs(-1)").await.unwrap_err();
        assert_eq!(db_error(&e).0, "25P02", "the server's own error");
        c.simple_query("rollback").await.unwrap();
        let n = h.db.psql("select count(*) from pgbench_history").unwrap();
        assert_eq!(n.trim(), "0", "the rolled-back insert stays rolled back");
        c.simple_query("select abs(-1)").await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_failed_lookup_is_opaque() {
    within(T, async {
        let h = start(options()).await;
        let c = h.connect().await;
        // Opens the gateway's catalog connection.
        c.simple_query("select abs(-1)").await.unwrap();
        h.db.psql(
            "select pg_terminate_backend(pid) from pg_stat_activity \
             where application_name = 'gatehouse-catalog' and datname = current_database()",
        )
        .unwrap();
        let m = refused_as_opaque(&c, "select lower('a')").await;
        assert!(m.contains("failed"), "{m}");
        // The next lookup reconnects.
        c.simple_query("select initcap('a')").await.unwrap();
    })
    .await;
}

/// The real pgbench through the gateway: its tables carry no stored code, so nothing is opaque.
#[tokio::test]
async fn pgbench_runs_without_false_opacity() {
    within(T, async {
        let h = start(options()).await;
        let bin = gatehouse_testkit::pg::PgCluster::shared()
            .bin_dir()
            .join("pgbench");
        let port = h.port.to_string();
        let out = tokio::process::Command::new(bin)
            .args(["-n", "-t", "20", "-c", "2", "-h", "127.0.0.1", "-p", &port])
            .args(["-U", "agent", "app"])
            .env("PGPASSWORD", TOKEN)
            .env("PGCONNECT_TIMEOUT", "10")
            .kill_on_drop(true)
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "pgbench failed: {stdout}\n{stderr}");
        assert!(
            stdout.contains("number of failed transactions: 0"),
            "{stdout}"
        );
        // The extended protocol too.
        let out = tokio::process::Command::new(
            gatehouse_testkit::pg::PgCluster::shared()
                .bin_dir()
                .join("pgbench"),
        )
        .args([
            "-n",
            "-t",
            "10",
            "-M",
            "prepared",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
        ])
        .args(["-U", "agent", "app"])
        .env("PGPASSWORD", TOKEN)
        .env("PGCONNECT_TIMEOUT", "10")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "pgbench -M prepared failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let n = h.db.psql("select count(*) from pgbench_history").unwrap();
        assert_eq!(n.trim(), "50");
        assert_eq!(victims(&h), "5");
    })
    .await;
}

/// A trigger created by a statement parsed earlier and executed inside a transaction: the
/// execution (Bind) makes the session unsettled like the parse did.
#[tokio::test]
async fn code_created_by_an_earlier_parsed_statement_is_opaque() {
    within(T, async {
        let h = start(options()).await;
        let c = h.connect().await;
        let create = c
            .prepare(
                "create trigger later before update on pgbench_tellers \
                 for each row execute function public.on_update()",
            )
            .await
            .unwrap();
        // Settled again: the session is idle outside a transaction.
        c.simple_query("select abs(-1)").await.unwrap();
        c.simple_query("update pgbench_tellers set tbalance = 0")
            .await
            .unwrap();
        c.simple_query("begin").await.unwrap();
        c.execute(&create, &[]).await.unwrap();
        let m = refused_as_opaque(&c, "update pgbench_tellers set tbalance = 1").await;
        assert!(m.contains("has not ended"), "{m}");
        c.simple_query("rollback").await.unwrap();
        assert_eq!(victims(&h), "5");
    })
    .await;
}

/// A statement parsed before a trigger existed is decided again when it is executed after.
#[tokio::test]
async fn a_statement_parsed_before_a_trigger_is_created_is_decided_again() {
    within(T, async {
        let h = start(options()).await;
        let c = h.connect().await;
        let update = c
            .prepare("update pgbench_tellers set tbalance = tbalance + 1")
            .await
            .unwrap();
        c.execute(&update, &[]).await.unwrap();
        c.simple_query(
            "create trigger later before update on pgbench_tellers \
             for each row execute function public.on_update()",
        )
        .await
        .unwrap();
        let e = c.execute(&update, &[]).await.unwrap_err();
        let (code, message) = db_error(&e);
        assert_eq!(code, "42501", "{message}");
        assert!(message.contains("opaque"), "{message}");
        assert_eq!(victims(&h), "5");
    })
    .await;
}

/// Types whose support code is a user's, created directly on the server before the gateway saw
/// them: a range type with a subtype_diff function (it runs in GiST builds, ANALYZE and
/// planning), a domain over it in an array, a domain whose check calls a function, and an
/// index with a user operator class. Each function deletes.
const USER_TYPES: &str = "
create function public.span_diff(float8, float8) returns float8 language plpgsql immutable
  as $$ begin delete from victims; return $1 - $2; end $$;
create type span as range (subtype = float8, subtype_diff = public.span_diff);
create domain span_d as span;
create table spans (id int, r span);
create table span_lists (id int, rs span_d[]);
create function public.positive(int) returns bool language plpgsql immutable
  as $$ begin delete from victims; return $1 > 0; end $$;
create domain positive_int as int check (public.positive(value));
create table checked (x positive_int);
create table plain_ranges (id int, r numrange, t text);
";

/// Operator classes need a superuser: created as one.
const USER_OPCLASS: &str = "
create function public.int_cmp(int, int) returns int language plpgsql immutable
  as $$ begin delete from victims; return btint4cmp($1, $2); end $$;
create operator class int_ops_by_user for type int using btree as
  operator 1 <, operator 2 <=, operator 3 =, operator 4 >=, operator 5 >,
  function 1 public.int_cmp(int, int);
create table sorted (x int);
create index on sorted (x int_ops_by_user);
grant all on sorted to public;
";

#[tokio::test]
async fn columns_of_types_with_user_support_code_are_opaque() {
    within(T, async {
        let h = start(options()).await;
        h.db.psql(&format!("SET ROLE \"{}\"; {USER_TYPES}", h.role))
            .unwrap();
        h.db.psql(USER_OPCLASS).unwrap();
        let c = h.connect().await;
        let m = refused_as_opaque(&c, "insert into spans values (1, '[1,2]')").await;
        assert!(m.contains("span_diff"), "{m}");
        assert!(m.contains("type span"), "{m}");
        // ANALYZE and a read of the column run it too (an index build as well, but this
        // policy lets DDL run opaque code).
        refused_as_opaque(&c, "analyze spans").await;
        refused_as_opaque(&c, "select r from spans").await;
        // Through a domain in an array.
        let m = refused_as_opaque(&c, "insert into span_lists values (1, null)").await;
        assert!(m.contains("span_diff"), "{m}");
        // A domain whose check calls user code.
        let m = refused_as_opaque(&c, "insert into checked values (1)").await;
        assert!(m.contains("positive(integer)"), "{m}");
        // An index with a user operator class.
        let m = refused_as_opaque(&c, "insert into sorted values (1)").await;
        assert!(m.contains("int_cmp"), "{m}");
        refused_as_opaque(&c, "reindex table sorted").await;
        // Built-in range and text columns: allowed.
        c.simple_query("insert into plain_ranges values (1, '[1,2]', 'a')")
            .await
            .unwrap();
        c.simple_query("select r from plain_ranges").await.unwrap();
        c.simple_query("create index on plain_ranges using gist (r)")
            .await
            .unwrap();
        assert_eq!(victims(&h), "5");
    })
    .await;
}

/// No rule for opaque DDL: whatever the gateway cannot see into is refused, DDL included.
const STRICT: &str = r#"
version = 1

[defaults]
default = "allow"
opaque = "deny"
"#;

fn strict() -> Options {
    Options {
        policy: Arc::new(
            gatehouse_policy::CompiledPolicy::from_toml(STRICT, "policy.toml").unwrap(),
        ),
        setup_sql: SETUP,
        ..Options::default()
    }
}

/// `nextval`/`setval` resolve to the built-ins: a known effect (the sequence advances), not
/// opaque, in VALUES, in a SELECT and in a column default; a user's function of that name
/// anywhere makes them opaque again.
#[tokio::test]
async fn sequence_functions_are_not_opaque_unless_shadowed() {
    within(T, async {
        let h = start(strict()).await;
        h.db.psql(&format!(
            "SET ROLE \"{}\"; create sequence ids_seq; create table ids (id int, x int);",
            h.role
        ))
        .unwrap();
        let c = h.connect().await;
        c.simple_query("insert into ids values (nextval('ids_seq'), 1)")
            .await
            .unwrap();
        c.simple_query("select nextval('ids_seq'), setval('ids_seq', 10)")
            .await
            .unwrap();
        c.simple_query(
            "create table numbered (id int default nextval('ids_seq'), x int); \
             insert into numbered (x) values (1)",
        )
        .await
        .unwrap();
        let n = h.db.psql("select id from numbered").unwrap();
        assert_eq!(n.trim(), "11");
        // Extended protocol too.
        c.execute("insert into ids values (nextval('ids_seq'), $1)", &[&2i32])
            .await
            .unwrap();
        // A sequence name that is not a literal: which sequence is unknown.
        refused_as_opaque(&c, "select nextval(x::text) from ids").await;
        // A user's nextval in any schema: the call may reach it.
        h.db.psql(&format!(
            "SET ROLE \"{}\"; create function public.nextval(regclass) returns bigint \
             language plpgsql as $$ begin delete from victims; return 1; end $$;",
            h.role
        ))
        .unwrap();
        let c = h.connect().await;
        let m = refused_as_opaque(&c, "insert into ids values (nextval('ids_seq'), 3)").await;
        assert!(m.contains("public.nextval(regclass)"), "{m}");
        assert_eq!(victims(&h), "5");
    })
    .await;
}

/// A migration's own tables: DDL that cannot attach code (a table of vetted column types, a
/// sequence, a btree index, a constant default) does not make its later statements in the same
/// transaction opaque; DDL that can (a table copying another's defaults, which call user code)
/// still does, and a column of a type with user support code is opaque at once.
#[tokio::test]
async fn a_migration_writes_the_tables_it_just_created() {
    within(T, async {
        let h = start(strict()).await;
        h.db.psql(&format!("SET ROLE \"{}\"; {USER_TYPES}", h.role))
            .unwrap();
        let c = h.connect().await;
        c.simple_query("begin").await.unwrap();
        c.simple_query(
            "create table migrated (id serial primary key, name text not null default 'x', \
               n int check (n > 0), at timestamptz default now())",
        )
        .await
        .unwrap();
        c.simple_query("insert into migrated (name, n) values ('a', 1)")
            .await
            .unwrap();
        c.simple_query(
            "create index on migrated (name); create sequence migrated_seq; \
             alter table migrated add column m int default 0",
        )
        .await
        .unwrap();
        c.simple_query("update migrated set m = nextval('migrated_seq') where id = 1")
            .await
            .unwrap();
        c.execute("insert into migrated (name, n) values ($1, 2)", &[&"b"])
            .await
            .unwrap();
        c.simple_query("commit").await.unwrap();
        let n = h.db.psql("select count(*) from migrated").unwrap();
        assert_eq!(n.trim(), "2");
        // A table that takes another's defaults may carry user code the gateway cannot see yet.
        c.simple_query("begin").await.unwrap();
        c.simple_query("create table copied (like defaults_code including defaults)")
            .await
            .unwrap();
        let m = refused_as_opaque(&c, "insert into copied (id) values (1)").await;
        assert!(m.contains("has not ended"), "{m}");
        c.simple_query("rollback").await.unwrap();
        // A cascading foreign key added to a table with a trigger: a delete on the referenced
        // table would now fire it, which the catalog connection cannot see yet.
        h.db.psql(&format!(
            "SET ROLE \"{}\"; create table roots (id int primary key); \
             insert into roots values (1); create table leaves (pid int); \
             insert into leaves values (1); \
             create trigger wipe_on_leaf before delete on leaves \
               for each row execute function public.on_update();",
            h.role
        ))
        .unwrap();
        c.simple_query("begin").await.unwrap();
        c.simple_query(
            "alter table leaves add foreign key (pid) references roots on delete cascade",
        )
        .await
        .unwrap();
        let m = refused_as_opaque(&c, "delete from roots").await;
        assert!(m.contains("has not ended"), "{m}");
        c.simple_query("rollback").await.unwrap();
        // A column of a type whose support code is a user's.
        let m = refused_as_opaque(&c, "create table spans2 (r span)").await;
        assert!(m.contains("span_diff"), "{m}");
        // So is a literal of that type, with no table involved.
        let m = refused_as_opaque(&c, "select '[1,2]'::span").await;
        assert!(m.contains("span_diff"), "{m}");
        c.simple_query("select '[1,2]'::numrange, 1::int, 'a'::text")
            .await
            .unwrap();
        assert_eq!(victims(&h), "5");
    })
    .await;
}

/// A statement that copies data (`CREATE VIEW/TABLE … AS`, `SELECT … INTO`, `INSERT … SELECT`)
/// is refused as `masked-column-copy` only when its query outputs a masked column (through `*`,
/// a whole row, an expression, a subquery, or its nullness), not when it merely names the
/// table that has one.
#[tokio::test]
async fn copies_count_the_columns_their_query_outputs() {
    within(T, async {
        let h = start(Options {
            masker: gatehouse_testkit::layers::LiteralMasker::new()
                .column("public.customers.email"),
            policy: crate::common::keyword_policy(&["drop "], &[], 1000),
            setup_sql: "create table customers (id int primary key, email text, note text); \
                        insert into customers values (1, 'ann@example.com', 'n');",
            ..Options::default()
        })
        .await;
        let c = h.connect().await;
        for sql in [
            "create view ids as select id from customers",
            "create view named as select c.id as n, c.note from customers c where c.email <> ''",
            "create table ids2 as select id, note from customers where email like '%@%'",
            "create table ids3 (id int); insert into ids3 select id from customers",
            "select id into ids4 from customers",
            "insert into ids3 values (1)",
            // A sequence is a table of the statement; its value is no masked column.
            "create sequence n_seq; \
             insert into customers values (nextval('n_seq') + 10, 'x@example.com', 'n') \
             on conflict (id) do nothing",
            "insert into customers values (nextval('n_seq') + 10, 'y@example.com', 'n')",
        ] {
            c.simple_query(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        }
        for sql in [
            "create view v1 as select * from customers",
            "create view v2 as select c.* from customers c",
            "create view v3 as select row_to_json(c) from customers c",
            "create view v4 as select id, (select email from customers limit 1) from customers",
            "create table t5 as select lower(email) as e from customers",
            "create table t6 as select s.e from (select email as e from customers) s",
            "insert into ids3 select length(email) from customers",
            "select email into t7 from customers",
            "create view v8 as select count(email) from customers",
            "with x as (select email from customers) insert into ids3 select length(e) from x",
            "create view v9 as select id from customers union select length(email) from customers",
        ] {
            let e = c
                .simple_query(sql)
                .await
                .expect_err(&format!("{sql} must be refused"));
            let (code, message) = db_error(&e);
            assert_eq!(code, "42501", "{sql}: {message}");
            assert!(message.contains("masked-column-copy"), "{sql}: {message}");
        }
        let made =
            h.db.psql("select count(*) from pg_class where relname ~ '^(v|t)[0-9]$'")
                .unwrap();
        assert_eq!(made.trim(), "0");
    })
    .await;
}

/// An integrity-constraint error on a table with a masked column keeps its SQLSTATE, severity
/// and message when the message names only schemas, relations, columns and constraints of the
/// database; its detail (the key, the failing row) is withheld. Any other error of such a
/// statement is withheld whole, as before.
#[tokio::test]
async fn constraint_errors_keep_their_names_and_withhold_their_values() {
    within(T, async {
        let h = start(Options {
            masker: gatehouse_testkit::layers::LiteralMasker::new()
                .column("public.customers.email"),
            policy: crate::common::keyword_policy(&["drop "], &[], 1000),
            setup_sql: "create table customers (id int primary key, \
                          email text not null unique, age int check (age > 0)); \
                        insert into customers values (1, 'ann@example.com', 30);",
            ..Options::default()
        })
        .await;
        let c = h.connect().await;
        for (sql, code, names) in [
            (
                "insert into customers values (2, 'ann@example.com', 5)",
                "23505",
                &["customers_email_key"][..],
            ),
            (
                "insert into customers values (1, 'bob@example.com', 5)",
                "23505",
                &["customers_pkey"][..],
            ),
            (
                "insert into customers (id, age) values (3, 5)",
                "23502",
                &["email", "customers"][..],
            ),
            (
                "update customers set age = -1 where email = 'ann@example.com'",
                "23514",
                &["customers", "customers_age_check"][..],
            ),
        ] {
            let e = c.simple_query(sql).await.expect_err(sql);
            let db = e.as_db_error().expect("a server error");
            assert_eq!(db.code().code(), code, "{sql}");
            for n in names {
                assert!(db.message().contains(&format!("\"{n}\"")), "{sql}: {db:?}");
            }
            let detail = db.detail().unwrap_or_default();
            assert!(detail.contains("withholds"), "{sql}: {db:?}");
            assert!(!format!("{db:?}").contains("ann@"), "{sql}: {db:?}");
            assert!(!format!("{db:?}").contains("bob@"), "{sql}: {db:?}");
        }
        // A cast error carries the value in its message: withheld whole.
        let e = c
            .simple_query("select cast(email as int) from customers")
            .await
            .expect_err("cast");
        let db = e.as_db_error().expect("a server error");
        assert_eq!(db.code().code(), "22P02");
        assert!(db.message().contains("withholds"), "{db:?}");
        assert!(!format!("{db:?}").contains("ann@"), "{db:?}");
    })
    .await;
}

/// An operator whose function is a user's, created directly on the server: a statement that
/// writes it is opaque, in a query or in a constraint a new table would carry, and so is one
/// that writes a table whose constraint uses it or reads a view that does.
#[tokio::test]
async fn operators_with_user_code_are_opaque() {
    within(T, async {
        let h = start(strict()).await;
        h.db.psql(&format!(
            "SET ROLE \"{}\"; create function public.wipe_eq(int, int) returns bool \
             language plpgsql immutable as $$ begin delete from victims; return $1 = $2; end $$; \
             create operator public.=== (leftarg = int, rightarg = int, function = public.wipe_eq); \
             create table guarded_before (n int check (n === 1)); \
             create view compares as select id === 1 as one from victims;",
            h.role
        ))
        .unwrap();
        let c = h.connect().await;
        let m = refused_as_opaque(&c, "select 1 === 2").await;
        assert!(m.contains("wipe_eq"), "{m}");
        refused_as_opaque(&c, "select id from victims where id operator(public.===) 1").await;
        refused_as_opaque(&c, "create table guarded (n int check (n === 1))").await;
        // Stored in a constraint or a view before the gateway saw them.
        let m = refused_as_opaque(&c, "insert into guarded_before values (1)").await;
        assert!(m.contains("wipe_eq"), "{m}");
        let m = refused_as_opaque(&c, "select * from compares").await;
        assert!(m.contains("wipe_eq"), "{m}");
        c.simple_query("select 1 = 1, 2 > 1, 'a' like 'a%'")
            .await
            .unwrap();
        // An index build with a user operator class.
        h.db.psql(USER_OPCLASS).unwrap();
        let m = refused_as_opaque(&c, "create index on victims (id int_ops_by_user)").await;
        assert!(m.contains("int_cmp"), "{m}");
        c.simple_query("create index on victims (id); create index on victims using hash (id)")
            .await
            .unwrap();
        assert_eq!(victims(&h), "5");
    })
    .await;
}

/// A refused statement that may change stored code, with the next statement pipelined behind
/// it in the same write: the next one waits for the server's answer to the first (which ends
/// it, idle) instead of being decided as if the first were still running. (A client that sends
/// its next statement as soon as it reads an error races the same way.) Inside a transaction
/// block the next statement stays opaque until the block ends.
#[tokio::test]
async fn a_statement_pipelined_behind_refused_ddl_waits_for_its_answer() {
    use crate::raw::{Message, RawClient, query, tags};
    fn texts(m: &[Message]) -> Vec<String> {
        m.iter()
            .filter(|m| m.tag == b'E')
            .filter_map(|m| m.field(b'M'))
            .collect()
    }
    within(T, async {
        let h = start(strict()).await;
        h.db.psql(&format!("SET ROLE \"{}\"; {USER_TYPES}", h.role))
            .unwrap();
        let mut c = RawClient::connect(h.port).await;
        let mut both = query("create table spans3 (r span)");
        both.extend(query("select '[1,2]'::numrange, 1::int, 'a'::text"));
        c.send(&both).await;
        let first = texts(&c.until_ready().await);
        assert_eq!(first.len(), 1, "{first:?}");
        assert!(first[0].contains("span_diff"), "{first:?}");
        let second = c.until_ready().await;
        assert!(texts(&second).is_empty(), "{:?}", texts(&second));
        assert!(
            tags(&second).iter().any(|t| t == "SELECT 1"),
            "{:?}",
            tags(&second)
        );
        // In a transaction block: DDL that may attach code runs, and the statement pipelined
        // behind it is opaque, whatever the answer's timing: the block has not ended.
        let mut block =
            query("begin; create table copied2 (like defaults_code including defaults)");
        block.extend(query("insert into copied2 (id) values (1)"));
        c.send(&block).await;
        let first = c.until_ready().await;
        assert!(texts(&first).is_empty(), "{:?}", texts(&first));
        let second = texts(&c.until_ready().await);
        assert!(
            second.len() == 1 && second[0].contains("has not ended"),
            "{second:?}"
        );
        c.send(&query("rollback")).await;
        c.until_ready().await;
        assert_eq!(victims(&h), "5");
    })
    .await;
}

/// The settings that are the database's backstops (a lock held by an idle transaction, a
/// statement that waits or runs forever) cannot be changed without the `opaque` verdict: by
/// `SET`, `RESET`, `set_config`, or as a role's or database's default. Other settings stay
/// plain.
#[tokio::test]
async fn changing_a_backstop_setting_is_opaque() {
    const NO_DDL_RULE: &str = r#"
version = 1

[defaults]
default = "allow"
opaque = "deny"
"#;
    within(T, async {
        let h = start(Options {
            policy: Arc::new(
                gatehouse_policy::CompiledPolicy::from_toml(NO_DDL_RULE, "policy.toml").unwrap(),
            ),
            ..Options::default()
        })
        .await;
        let c = h.connect().await;
        let db = h.db.name.clone();
        for sql in [
            "set idle_in_transaction_session_timeout = 0".to_string(),
            "set session idle_in_transaction_session_timeout to 0".to_string(),
            "reset idle_in_transaction_session_timeout".to_string(),
            "select set_config('idle_in_transaction_session_timeout', '0', false)".to_string(),
            "set statement_timeout = 0".to_string(),
            "set lock_timeout = 0".to_string(),
            "select set_config('lock_timeout', '0', false)".to_string(),
            "alter role current_user set idle_in_transaction_session_timeout = 0".to_string(),
            format!("alter database \"{db}\" set idle_in_transaction_session_timeout = 0"),
            format!("alter database \"{db}\" reset all"),
        ] {
            refused_as_opaque(&c, &sql).await;
        }
        c.simple_query("set work_mem = '8MB'").await.unwrap();
        c.simple_query("select 1").await.unwrap();
    })
    .await;
}

/// A SQL-standard function body (`BEGIN ATOMIC … END`, with `;` inside) is one statement,
/// decided as the opaque creation of a function (it was refused as unparseable, 42601).
#[tokio::test]
async fn a_begin_atomic_function_is_created_as_opaque_code() {
    within(T, async {
        let h = start(options()).await;
        let c = h.connect().await;
        // The test policy lets the agent create code (rule `agents-create-code`, opaque ddl).
        c.simple_query("create function f1() returns int language sql begin atomic select 1; end")
            .await
            .unwrap();
        // Calling it is opaque (a function owned by the agent's role).
        refused_as_opaque(&c, "select f1()").await;
        assert_eq!(
            h.db.psql("select count(*) from pg_proc where proname = 'f1'")
                .unwrap()
                .trim(),
            "1"
        );
    })
    .await;
}
