//! PostgreSQL's own grammar: every statement sqlparser refused is read with its proper kind;
//! tables and functions are found wherever they are written; MERGE counts every action it can
//! take; and every construct whose effect cannot be seen from the text is opaque, with a reason.

use gatehouse_core::SqlSessionSettings;
use gatehouse_sql::{Risk, StatementInfo, StatementKind as K, classify, is_safe_function};

fn one(sql: &str) -> StatementInfo {
    let c = classify(sql, &SqlSessionSettings::default());
    assert_eq!(c.statements.len(), 1, "{sql}: {:?}", c.statements);
    c.statements.into_iter().next().expect("one statement")
}

/// The statements the sqlparser-based classifier refused (psycopg's test suite, pgbench).
#[test]
fn valid_sql_that_was_refused_is_read_with_its_kind() {
    let cases: &[(&str, K)] = &[
        ("PREPARE TRANSACTION 'tx1'", K::Transaction),
        ("COMMIT PREPARED 'tx1'", K::Transaction),
        ("ROLLBACK PREPARED 'tx1'", K::Transaction),
        ("MOVE 5 IN c", K::Cursor),
        ("MOVE FORWARD ALL FROM c", K::Cursor),
        (
            "BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE",
            K::Transaction,
        ),
        (
            "BEGIN TRANSACTION ISOLATION LEVEL REPEATABLE READ",
            K::Transaction,
        ),
        (
            "START TRANSACTION READ WRITE, NOT DEFERRABLE",
            K::Transaction,
        ),
        ("SAVEPOINT s1", K::Transaction),
        ("ROLLBACK TO SAVEPOINT s1", K::Transaction),
        ("RELEASE s1", K::Transaction),
        ("SELECT", K::Select),
        ("VACUUM ANALYZE", K::Maintenance),
        ("vacuum analyze pgbench_branches", K::Maintenance),
        ("VACUUM (ANALYZE, VERBOSE) t", K::Maintenance),
        ("ANALYZE t", K::Maintenance),
        ("REINDEX TABLE t", K::Maintenance),
        ("REINDEX INDEX CONCURRENTLY i", K::Maintenance),
        ("CLUSTER t USING i", K::Maintenance),
        ("CLUSTER", K::Maintenance),
        ("REFRESH MATERIALIZED VIEW CONCURRENTLY mv", K::Maintenance),
        ("CHECKPOINT", K::Maintenance),
        ("TABLE t", K::Select),
        ("copy pgbench_accounts from stdin with (freeze on)", K::Copy),
        ("COPY t FROM STDIN (FORMAT csv, FREEZE ON)", K::Copy),
        ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", K::Set),
        (
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
            K::Set,
        ),
        ("SET CONSTRAINTS ALL DEFERRED", K::Set),
        ("SHOW ALL", K::Show),
        ("NOTIFY ch, 'payload'", K::Notify),
        ("UNLISTEN *", K::Notify),
        ("DECLARE c BINARY CURSOR WITH HOLD FOR SELECT 1", K::Cursor),
        ("FETCH ALL FROM c", K::Cursor),
        ("CLOSE ALL", K::Cursor),
        ("DEALLOCATE ALL", K::Deallocate),
        (
            "drop table if exists pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers",
            K::Drop,
        ),
        (
            "create table pgbench_history(tid int,bid int,aid    int,delta int,mtime timestamp,filler char(22))",
            K::Ddl,
        ),
        (
            "create unlogged table t (a int) with (fillfactor=100)",
            K::Ddl,
        ),
        (
            "truncate table pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers",
            K::Truncate,
        ),
        ("alter table pgbench_branches add primary key (bid)", K::Ddl),
        (
            "insert into pgbench_branches(bid,bbalance) select bid, 0 from generate_series(1, 1) as bid",
            K::Insert,
        ),
        ("EXPLAIN (ANALYZE, BUFFERS) SELECT 1", K::Explain),
        ("LOCK TABLE t IN SHARE ROW EXCLUSIVE MODE", K::Lock),
        ("SELECT 1::float(24), 2::numeric(10, 2)", K::Select),
        ("SELECT * FROM t FOR UPDATE SKIP LOCKED", K::Select),
        ("CREATE TEMP TABLE x (a int) ON COMMIT DROP", K::Ddl),
        ("ALTER SYSTEM SET work_mem = '1GB'", K::AlterSystem),
        ("COMMENT ON TABLE t IS 'x'", K::Ddl),
        ("GRANT SELECT ON t TO bob", K::Grant),
        ("REVOKE bob FROM alice", K::Revoke),
        ("DROP ROLE bob", K::Drop),
        ("(SELECT 1) UNION (SELECT 2)", K::Select),
        ("/* lead */ -- more\n  (VALUES (1))", K::Select),
        (
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT n FROM r",
            K::Select,
        ),
        ("SELECT $1::int, $2 FROM t WHERE a = ANY($3)", K::Select),
        (
            "SELECT B'0101', X'1F', U&'d\\0061t' UESCAPE '\\', U&\"c\" FROM t",
            K::Select,
        ),
        ("SELECT a$b FROM t", K::Select),
    ];
    let mut failures = Vec::new();
    for (sql, kind) in cases {
        let c = classify(sql, &SqlSessionSettings::default());
        let got: Vec<_> = c.statements.iter().map(|s| s.kind).collect();
        if got != [*kind] {
            failures.push(format!(
                "{sql}: {got:?} {:?}",
                c.statements[0].unparseable_reason
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn tables_and_functions_are_found_wherever_written() {
    let cases: &[(&str, &[&str], &[&str])] = &[
        (
            "WITH a AS (SELECT x FROM Public.Src WHERE lower(y) = 'z') SELECT * FROM a",
            &["a", "public.src"],
            &["lower"],
        ),
        (
            "SELECT (SELECT max(v) FROM \"Inner\") FROM outer_t WHERE id IN (SELECT id FROM s.deep)",
            &["Inner", "outer_t", "s.deep"],
            &["max"],
        ),
        (
            "MERGE INTO target t USING source s ON t.id = s.id WHEN MATCHED THEN UPDATE SET v = upper(s.v)",
            &["source", "target"],
            &["upper"],
        ),
        (
            "WITH d AS (DELETE FROM gone RETURNING *) INSERT INTO archive SELECT * FROM d",
            &["archive", "d", "gone"],
            &[],
        ),
        (
            "EXPLAIN ANALYZE UPDATE acc SET b = abs(b) WHERE id = 1",
            &["acc"],
            &["abs"],
        ),
        (
            "PREPARE p (int) AS DELETE FROM users WHERE id = $1",
            &["users"],
            &[],
        ),
        (
            "CREATE TABLE copy1 AS SELECT md5(email) FROM users",
            &["copy1", "users"],
            &["md5"],
        ),
        ("COPY (SELECT email FROM users) TO STDOUT", &["users"], &[]),
        (
            "SELECT * FROM a JOIN b USING (id) LEFT JOIN LATERAL generate_series(1, a.n) g ON true",
            &["a", "b"],
            &["generate_series"],
        ),
        ("TRUNCATE one, two.three", &["one", "two.three"], &[]),
        ("DROP TABLE x, s.y", &["s.y", "x"], &[]),
        ("DROP TRIGGER tr ON s.t", &["s.t"], &[]),
    ];
    for (sql, tables, functions) in cases {
        let s = one(sql);
        assert!(s.is_parsed(), "{sql}: {:?}", s.unparseable_reason);
        let t: Vec<&str> = s.tables.iter().map(String::as_str).collect();
        assert_eq!(t, *tables, "{sql}");
        let f: Vec<&str> = s.functions.iter().map(String::as_str).collect();
        assert_eq!(f, *functions, "{sql}");
    }
    // Nested statements add their kinds.
    assert!(
        one("WITH d AS (DELETE FROM gone RETURNING *) INSERT INTO archive SELECT * FROM d")
            .kinds
            .contains(&K::Delete)
    );
    assert!(
        one("EXPLAIN ANALYZE UPDATE acc SET b = 1 WHERE id = 1")
            .kinds
            .contains(&K::Update)
    );
    assert!(
        one("PREPARE p (int) AS DELETE FROM users WHERE id = $1")
            .kinds
            .contains(&K::Delete)
    );
    assert!(
        one("COPY (DELETE FROM users RETURNING *) TO STDOUT")
            .kinds
            .contains(&K::Delete)
    );
    let ctas = one("CREATE TABLE copy1 AS SELECT 1");
    assert!(ctas.kinds.contains(&K::Select) && ctas.has(Risk::CreateTableAs));
    // A subquery is not a statement of its own: an allow rule for deletes keeps matching.
    let d = one("DELETE FROM t WHERE id IN (SELECT id FROM s)");
    assert_eq!(d.kinds.iter().copied().collect::<Vec<_>>(), [K::Delete]);
}

/// MERGE is classified by every action it can take, so a rule on `delete` sees the delete.
#[test]
fn merge_reports_every_action() {
    let m = one("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE");
    assert_eq!(m.kind, K::Merge);
    assert!(m.kinds.contains(&K::Delete), "{:?}", m.kinds);
    assert!(!m.kinds.contains(&K::Update) && !m.kinds.contains(&K::Insert));
    let m = one("MERGE INTO t USING s ON t.id = s.id \
         WHEN MATCHED AND s.gone THEN DELETE \
         WHEN MATCHED THEN UPDATE SET v = s.v \
         WHEN NOT MATCHED THEN INSERT (id, v) VALUES (s.id, s.v)");
    for k in [K::Merge, K::Delete, K::Update, K::Insert] {
        assert!(m.kinds.contains(&k), "{k}: {:?}", m.kinds);
    }
    let m = one("MERGE INTO t USING s ON t.id = s.id WHEN NOT MATCHED BY SOURCE THEN DELETE");
    assert!(m.kinds.contains(&K::Delete));
    let m = one("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DO NOTHING");
    assert_eq!(m.kinds.iter().copied().collect::<Vec<_>>(), [K::Merge]);
    // Nested in a CTE (PostgreSQL 17+) and behind PREPARE/EXPLAIN, too.
    for sql in [
        "WITH m AS (MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE RETURNING *) SELECT * FROM m",
        "PREPARE p AS MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
        "EXPLAIN ANALYZE MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
    ] {
        let m = one(sql);
        assert!(m.kinds.contains(&K::Delete), "{sql}: {:?}", m.kinds);
    }
}

#[test]
fn opaque_constructs_are_marked_with_a_reason() {
    let opaque = [
        "DO $$ BEGIN EXECUTE 'TRUNC' || 'ATE customers'; END $$",
        "CALL p()",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ DELETE FROM t RETURNING 1 $$",
        "CREATE OR REPLACE PROCEDURE p() LANGUAGE plpgsql AS $$ BEGIN END $$",
        "CREATE TRIGGER tr AFTER UPDATE ON t FOR EACH ROW EXECUTE FUNCTION f()",
        "CREATE RULE r AS ON UPDATE TO t DO INSTEAD DELETE FROM t",
        "CREATE EVENT TRIGGER et ON ddl_command_start EXECUTE FUNCTION f()",
        "CREATE POLICY pol ON t USING (f(owner))",
        "ALTER FUNCTION f() SECURITY DEFINER",
        "ALTER POLICY pol ON t USING (true)",
        "ALTER TABLE t DISABLE TRIGGER ALL",
        "ALTER TABLE t ENABLE RULE r",
        "CREATE EXTENSION dblink",
        "ALTER FUNCTION f() OWNER TO postgres",
        "ALTER PROCEDURE p() OWNER TO postgres",
        "CREATE OPERATOR === (LEFTARG = int, RIGHTARG = int, FUNCTION = f)",
        "CREATE AGGREGATE agg(int) (SFUNC = f, STYPE = int)",
        "CREATE LANGUAGE plsample HANDLER plsample_call_handler",
        "CREATE ACCESS METHOD am TYPE TABLE HANDLER h",
        "CREATE FOREIGN DATA WRAPPER w HANDLER h",
        "LOAD 'plugin'",
        // The target's own credential and who may do what (the gateway's login among them).
        "ALTER ROLE current_user PASSWORD 'x'",
        "ALTER USER gatehouse_app WITH ENCRYPTED PASSWORD 'x'",
        "CREATE ROLE r LOGIN PASSWORD 'y'",
        "DROP ROLE r",
        "GRANT pg_write_all_data TO current_user",
        "ALTER ROLE r SET search_path = evil",
        "ALTER ROLE r RENAME TO s",
        // The database's backstops (locks held by an idle transaction, statements that run or
        // wait forever), now or as later sessions' defaults.
        "SET idle_in_transaction_session_timeout = 0",
        "SET statement_timeout = 5000",
        "SET LOCAL lock_timeout = 0",
        "RESET transaction_timeout",
        "SELECT set_config('idle_in_transaction_session_timeout', '0', false)",
        "ALTER DATABASE d SET idle_in_transaction_session_timeout = 0",
        "ALTER DATABASE d RESET ALL",
        "EXECUTE p(1)",
        "CREATE TABLE x AS EXECUTE p",
        "SELECT f()",
        "SELECT public.lower('x')",
        "SELECT * FROM f()",
        "INSERT INTO t VALUES (f())",
        "WITH x AS (SELECT f()) SELECT 1",
        "EXPLAIN ANALYZE SELECT f()",
        "PREPARE q AS SELECT f()",
        "CREATE INDEX ON t (f(a))",
        "SELECT query_to_xml('select * from secrets', true, false, '')",
        "SELECT cursor_to_xml('c', 1, true, false, '')",
        "SELECT table_to_xml('secrets', true, false, '')",
        "SELECT dblink_exec('x', 'delete from t')",
        "SELECT set_config('standard_conforming_strings', 'off', false)",
        "SELECT pg_advisory_lock(1)",
        "SELECT lo_import('/etc/passwd')",
        "SELECT pg_read_file('/etc/passwd')",
        "SELECT nextval(seq_name) FROM t",
        "SELECT setval(seq_name, 1) FROM t",
        "SET search_path = evil, public",
        "SET LOCAL search_path TO evil",
        "RESET search_path",
        "SET ROLE admin",
        "RESET ROLE",
        "SET SESSION AUTHORIZATION admin",
        "SET session_replication_role = replica",
        "SET standard_conforming_strings = off",
        "SET client_encoding = 'SJIS'",
        "SET NAMES 'SJIS'",
        "SET backslash_quote = on",
        "RESET ALL",
        "DISCARD ALL",
        // Outside attacker: a range type's subtype_diff ran a deleting function inside GiST
        // page splits, ANALYZE and planning of allowed statements; renaming a routine swaps
        // which code such hooks reach.
        "CREATE TYPE span3 AS RANGE (subtype = float8, subtype_diff = span_diff3)",
        "CREATE TYPE r2 AS RANGE (subtype = int4)",
        "ALTER ROUTINE f(int) RENAME TO g",
        "ALTER FUNCTION f() RENAME TO abs",
        "ALTER PROCEDURE p() RENAME TO q",
        "ALTER FUNCTION f() SET SCHEMA pg_temp",
        "ALTER ROUTINE f() SET SCHEMA s",
        // An operator class's support functions run inside index builds and index writes.
        "CREATE OPERATOR CLASS my_ops FOR TYPE int USING btree AS FUNCTION 1 mycmp(int, int)",
        "CREATE OPERATOR FAMILY my_fam USING btree",
        "ALTER OPERATOR FAMILY my_fam USING btree ADD FUNCTION 1 mycmp(int, int)",
    ];
    let mut failures = Vec::new();
    for sql in opaque {
        let c = classify(sql, &SqlSessionSettings::default());
        let s = &c.statements[0];
        if c.statements.len() != 1
            || !s.is_parsed()
            || !s.has(Risk::OpaqueCode)
            || s.opaque_reasons.is_empty()
        {
            failures.push(format!("{sql}: {:?}", s));
        }
    }
    assert!(failures.is_empty(), "not opaque:\n{}", failures.join("\n"));

    let clear = [
        "SELECT lower(email), count(*), now(), pg_catalog.upper('x') FROM users",
        "SELECT EXTRACT(year FROM now()), substring('abc' FROM 1 FOR 2), trim(both ' ' FROM 'x')",
        "SELECT coalesce(a, 1), greatest(a, b), nullif(a, b), a IS NULL FROM t",
        "SELECT row_to_json(u), json_agg(u.email) FROM users u GROUP BY u",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 1",
        "UPDATE pgbench_accounts SET abalance = abalance + 5 WHERE aid = 7",
        "ALTER TABLE t RENAME TO u",
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, 1, 1, CURRENT_TIMESTAMP)",
        "SET work_mem = '8MB'",
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "SHOW search_path",
        "BEGIN",
        "CREATE TABLE t (a int DEFAULT 0, b text)",
        "DELETE FROM t WHERE id = 1",
        "ALTER TABLE t OWNER TO bob",
        "CREATE TYPE mood AS ENUM ('sad', 'ok')",
        "CREATE VIEW v AS SELECT lower(email) FROM users",
    ];
    for sql in clear {
        let s = one(sql);
        assert!(s.is_parsed(), "{sql}: {:?}", s.unparseable_reason);
        assert!(!s.has(Risk::OpaqueCode), "{sql}: {:?}", s.opaque_reasons);
    }

    // The reason names the construct.
    let s = one("SELECT query_to_xml('select 1', true, false, '')");
    assert!(
        s.opaque_reasons.iter().any(|r| r.contains("query_to_xml")),
        "{:?}",
        s.opaque_reasons
    );
    let s = one("EXECUTE stmt_1(5)");
    assert_eq!(s.prepared_name.as_deref(), Some("stmt_1"));
    assert_eq!(
        one("PREPARE Stmt_2 AS SELECT 1").prepared_name.as_deref(),
        Some("stmt_2")
    );
    assert_eq!(
        one("DEALLOCATE \"S3\"").prepared_name.as_deref(),
        Some("S3")
    );
    assert_eq!(one("DEALLOCATE ALL").prepared_name, None);
    for sql in [
        "EXPLAIN ANALYZE EXECUTE q1(1)",
        "CREATE TABLE t2 AS EXECUTE q1(1)",
    ] {
        let s = one(sql);
        assert_eq!(s.prepared_name.as_deref(), Some("q1"), "{sql}");
        assert!(
            s.kinds.contains(&K::Execute) && s.has(Risk::OpaqueCode),
            "{sql}"
        );
    }

    assert!(is_safe_function("pg_catalog.lower") && is_safe_function("lower"));
    assert!(!is_safe_function("public.lower") && !is_safe_function("x.pg_catalog.lower"));
}

/// An update whose SET list takes values from columns or subqueries can copy one column into
/// another (the proxy refuses it over masked columns); one that sets constants cannot.
#[test]
fn updates_that_set_from_columns_are_marked() {
    let settings = SqlSessionSettings::default();
    for sql in [
        "UPDATE customers SET notes = encode(convert_to(phone, 'UTF8'), 'hex') WHERE id = 3",
        "UPDATE t SET a = (SELECT email FROM customers LIMIT 1)",
        "UPDATE t SET a = b",
        "INSERT INTO t (id, a) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET a = t.b",
        "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = s.email",
        "MERGE INTO t USING s ON false WHEN NOT MATCHED THEN INSERT (id, a) VALUES (s.id, reverse(s.email))",
        "MERGE INTO t USING s ON false WHEN NOT MATCHED THEN INSERT VALUES (1, (SELECT email FROM c))",
        "WITH u AS (UPDATE t SET a = b RETURNING 1) SELECT 1",
    ] {
        let c = classify(sql, &settings);
        assert!(c.statements[0].has(Risk::WriteFromColumns), "{sql}");
    }
    for sql in [
        "UPDATE t SET a = 1, b = 'x' WHERE id = 7",
        "UPDATE t SET a = $1 WHERE id = $2",
        "INSERT INTO t (id, a) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET a = 'y'",
        "DELETE FROM t WHERE a = b",
        "MERGE INTO t USING s ON t.id = s.id WHEN NOT MATCHED THEN INSERT (id, a) VALUES (7, 'x')",
        "MERGE INTO t USING s ON t.id = s.id WHEN NOT MATCHED THEN INSERT DEFAULT VALUES",
        "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
    ] {
        let c = classify(sql, &settings);
        assert!(!c.statements[0].has(Risk::WriteFromColumns), "{sql}");
    }
}

/// Settings are read as PostgreSQL reads them, including `set_config` and `SET NAMES`.
#[test]
fn settings_changed() {
    let s = one("SELECT set_config('Search_Path', 'x', false)");
    assert!(
        s.settings_changed.contains("search_path"),
        "{:?}",
        s.settings_changed
    );
    let s = one("SET NAMES 'LATIN1'");
    assert!(s.settings_changed.contains("client_encoding") && s.has(Risk::EncodingChange));
    let s = one("DISCARD ALL");
    assert!(s.settings_changed.contains("all") && s.has(Risk::RoleChange));
    let s = one("ALTER ROLE bob SET standard_conforming_strings = off");
    assert!(s.has(Risk::EncodingChange));
    // A function's own SET clause changes nothing in the session.
    let s = one("CREATE FUNCTION f() RETURNS int LANGUAGE sql SET search_path = x AS 'select 1'");
    assert!(s.settings_changed.is_empty(), "{:?}", s.settings_changed);
}

/// Where the splitter and PostgreSQL's parser would disagree, the statement is unparseable.
#[test]
fn the_splitter_and_the_parser_must_agree() {
    let s = SqlSessionSettings::default();
    // A multi-action rule has `;` inside parentheses: like psql, the splitter does not cut
    // there, and the parser reads one (opaque) statement.
    let c = classify(
        "CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); DELETE FROM b)",
        &s,
    );
    assert!(c.is_fully_parsed());
    assert_eq!(c.statements.len(), 1);
    assert!(c.statements[0].has(Risk::OpaqueCode));
    // A `)` too many does not let a later `;` be skipped: the pieces still end there.
    let c = classify("SELECT 1); DELETE FROM b", &s);
    assert_eq!(c.statements.len(), 2, "{:?}", c.statements);
    assert!(!c.is_fully_parsed());
    // Syntax errors are unparseable with PostgreSQL's message.
    let c = classify("SELEC 1", &s);
    assert!(
        c.statements[0]
            .unparseable_reason
            .as_deref()
            .is_some_and(|r| r.contains("syntax error"))
    );
    // The classic: the backslash hides the closing quote only under scs=off.
    let off = SqlSessionSettings {
        standard_conforming_strings: false,
        ..s.clone()
    };
    let c = classify(r"SELECT 'x\'; DROP TABLE t; --'", &off);
    assert_eq!(c.statements.len(), 1);
    assert_eq!(c.statements[0].kind, K::Select);
    let c = classify(r"SELECT 'x\'; DROP TABLE t; --'", &s);
    assert_eq!(
        c.statements.iter().map(|s| s.kind).collect::<Vec<_>>(),
        [K::Select, K::Drop]
    );
}

/// Deeply nested statements are refused (unparseable), never a crash: the parse tree's depth is
/// bounded before it is walked.
#[test]
fn deep_statements_fail_closed() {
    // Parsed on the thread's own stack (a thread with the recommended stack), and on a stack
    // allocated per parse (threads with less: the test harness's, a small one).
    for stack in [gatehouse_sql::PARSER_THREAD_STACK, 2 << 20, 512 << 10] {
        std::thread::Builder::new()
            .stack_size(stack)
            .spawn(deep_statements_fail_closed_on_this_thread)
            .unwrap()
            .join()
            .unwrap_or_else(|_| panic!("failed on a thread with {stack} bytes of stack"));
    }
}

fn deep_statements_fail_closed_on_this_thread() {
    let s = SqlSessionSettings::default();
    // Up to 40 chained operators are read; 60 are beyond the tree decoder's nesting limit.
    let chain = |n: usize| format!("SELECT {}", vec!["a"; n].join(" || "));
    assert!(classify(&chain(40), &s).is_fully_parsed());
    assert!(!classify(&chain(60), &s).is_fully_parsed());
    for depth in [10usize, 200, 5000] {
        let sum = format!("SELECT {}", vec!["1"; depth].join(" + "));
        let c = classify(&sum, &s);
        assert_eq!(c.statements.len(), 1, "{depth}");
        if depth == 10 {
            assert!(c.is_fully_parsed());
        }
        let parens = format!("SELECT {}1{}", "(".repeat(depth), ")".repeat(depth));
        assert_eq!(classify(&parens, &s).statements.len(), 1, "{depth}");
        let sub = format!("SELECT {}1{}", "(SELECT ".repeat(depth), ")".repeat(depth));
        assert_eq!(classify(&sub, &s).statements.len(), 1, "{depth}");
    }
}

/// `nextval`/`setval` of a literal sequence are built-ins with a known effect (the sequence
/// advances or is set): not opaque, the sequence is a table of the statement, and a statement
/// that writes nothing else counts as an update. Anything else about them stays opaque.
#[test]
fn sequence_functions_have_a_known_effect() {
    for (sql, sequence) in [
        ("INSERT INTO t (id, x) VALUES (nextval('s'), 1)", "s"),
        ("INSERT INTO t SELECT nextval('public.s'), 2", "public.s"),
        ("SELECT nextval('S')", "s"),
        ("SELECT pg_catalog.nextval('\"Seq\"'::regclass)", "Seq"),
        ("SELECT setval('s', 10)", "s"),
        ("CREATE TABLE t (id int DEFAULT nextval('s'))", "s"),
        (
            "ALTER TABLE t ALTER COLUMN id SET DEFAULT nextval('s')",
            "s",
        ),
    ] {
        let info = one(sql);
        assert!(
            !info.has(Risk::OpaqueCode),
            "{sql}: {:?}",
            info.opaque_reasons
        );
        assert!(info.tables.contains(sequence), "{sql}: {:?}", info.tables);
        assert!(info.functions.iter().any(|f| f.ends_with("val")), "{sql}");
    }
    assert!(one("SELECT nextval('s')").kinds.contains(&K::Update));
    assert!(one("SELECT setval('s', 1)").kinds.contains(&K::Update));
    let insert = one("INSERT INTO t VALUES (nextval('s'))");
    assert!(!insert.kinds.contains(&K::Update));
    let ddl = one("CREATE TABLE t (id int DEFAULT nextval('s'))");
    assert!(!ddl.kinds.contains(&K::Update));
    for sql in [
        "SELECT nextval(name) FROM seqs",
        "SELECT nextval('s' || 'x')",
        "SELECT public.nextval('s')",
        "SELECT nextval('a.b.c.d')",
        "SELECT nextval('s x')",
        // A view's query runs when the view is read: there it would be hidden.
        "CREATE VIEW v AS SELECT nextval('s')",
    ] {
        assert!(one(sql).has(Risk::OpaqueCode), "{sql} must stay opaque");
    }
}

/// Types in casts, column and domain definitions are collected for the catalog lookup.
#[test]
fn types_in_casts_and_definitions_are_collected() {
    let info = one("SELECT '[1,2]'::span, CAST(x AS public.other[]) FROM t");
    assert!(info.types.contains("span"), "{:?}", info.types);
    assert!(info.types.contains("public.other"), "{:?}", info.types);
    let info = one("CREATE TABLE t (a int, b text, c span_d, d serial)");
    for t in ["pg_catalog.int4", "text", "span_d", "serial"] {
        assert!(info.types.contains(t), "{t}: {:?}", info.types);
    }
    assert!(one("CREATE DOMAIN d AS span").types.contains("span"));
    assert!(one("SELECT 1 FROM t").types.is_empty());
}

/// DDL that cannot attach code for later statements, and DDL that can.
#[test]
fn plain_ddl_is_told_from_ddl_that_can_attach_code() {
    for sql in [
        "CREATE TABLE t (id serial PRIMARY KEY, name text NOT NULL DEFAULT 'x', n int CHECK (n > 0))",
        "CREATE TABLE t (a int, b int REFERENCES u (id) ON DELETE CASCADE, UNIQUE (a, b))",
        "CREATE TEMP TABLE t (a int)",
        "CREATE SEQUENCE s START 5",
        "ALTER SEQUENCE s RESTART",
        "CREATE INDEX ON t (a)",
        "CREATE UNIQUE INDEX i ON t USING hash (lower(b))",
        "ALTER TABLE t ADD COLUMN c int DEFAULT 0",
        "ALTER TABLE t ALTER COLUMN c SET DEFAULT 1, ALTER COLUMN c SET NOT NULL",
        "ALTER TABLE t ADD CONSTRAINT c CHECK (a > 0)",
        "ALTER TABLE t DROP COLUMN c",
        "ALTER TABLE t ADD CONSTRAINT f FOREIGN KEY (a) REFERENCES u (id)",
        "ALTER TABLE t ADD COLUMN p int REFERENCES u ON DELETE RESTRICT",
        "CREATE TABLE t (p int REFERENCES u ON DELETE CASCADE)",
    ] {
        assert!(one(sql).plain_ddl, "{sql} is plain DDL");
    }
    for sql in [
        "CREATE TABLE t (LIKE u INCLUDING ALL)",
        "CREATE TABLE t () INHERITS (u)",
        "CREATE TABLE t PARTITION OF u FOR VALUES FROM (1) TO (2)",
        "CREATE TABLE t (a int) PARTITION BY RANGE (a)",
        "CREATE TABLE t OF some_type",
        "CREATE TABLE t (a int) USING some_am",
        "CREATE TABLE t (r int4range, EXCLUDE USING gist (r WITH &&))",
        "CREATE INDEX ON t USING gist (r)",
        "CREATE INDEX ON t (a my_ops)",
        "ALTER TABLE t ALTER COLUMN a TYPE span USING a::span",
        "ALTER TABLE t ATTACH PARTITION u FOR VALUES FROM (1) TO (2)",
        "ALTER TABLE t INHERIT u",
        "ALTER TABLE t ENABLE TRIGGER ALL",
        // A cascade from u would now reach t's triggers, which the lookup cannot see yet.
        "ALTER TABLE t ADD CONSTRAINT f FOREIGN KEY (a) REFERENCES u (id) ON DELETE CASCADE",
        "ALTER TABLE t ADD COLUMN p int REFERENCES u ON UPDATE SET NULL",
        "CREATE TABLE t AS SELECT 1",
        "CREATE VIEW v AS SELECT 1",
        "CREATE TYPE e AS ENUM ('a')",
        "SELECT 1",
    ] {
        assert!(!one(sql).plain_ddl, "{sql} is not plain DDL");
    }
}

/// Operators written in a statement are collected for the catalog lookup.
#[test]
fn operators_are_collected() {
    let info = one("SELECT a === b, c OPERATOR(public.@@) d FROM t \
         WHERE x = ANY (SELECT y FROM u) AND name LIKE 'a%' AND a > 1");
    for op in ["===", "public.@@", "=", "~~", ">"] {
        assert!(info.operators.contains(op), "{op}: {:?}", info.operators);
    }
    let info = one("CREATE TABLE t (n int CHECK (n <<< 0))");
    assert!(info.operators.contains("<<<"), "{:?}", info.operators);
}

/// Operator classes and index access methods are collected for the catalog lookup.
#[test]
fn operator_classes_are_collected() {
    let info = one("CREATE INDEX ON t USING gin (name gin_trgm_ops, (lower(x)) public.my_ops)");
    for o in ["gin_trgm_ops", "public.my_ops", "@gin"] {
        assert!(info.opclasses.contains(o), "{o}: {:?}", info.opclasses);
    }
    assert!(one("CREATE INDEX ON t (a)").opclasses.contains("@btree"));
    let info = one("CREATE TABLE t (r int4range, EXCLUDE USING gist (r WITH &&))");
    assert!(info.opclasses.contains("@gist"), "{:?}", info.opclasses);
    let info = one("CREATE TABLE t (a int) PARTITION BY RANGE (a my_ops)");
    assert!(info.opclasses.contains("my_ops"), "{:?}", info.opclasses);
    assert!(one("SELECT 1 FROM t").opclasses.is_empty());
}

/// psql's `\d table` reads extended statistics, triggers, rules and partition keys through the
/// catalog deparsers: those calls change nothing and must not be held as opaque.
#[test]
fn psql_describe_queries_are_not_opaque() {
    for sql in [
        "SELECT oid, stxrelid::pg_catalog.regclass, stxnamespace::pg_catalog.regnamespace::pg_catalog.text AS nsp, stxname,\n  pg_catalog.pg_get_statisticsobjdef_columns(oid) AS columns,\n  'd' = any(stxkind) AS ndist_enabled\nFROM pg_catalog.pg_statistic_ext\nWHERE stxrelid = '16385'\nORDER BY nsp, stxname;",
        "SELECT t.tgname, pg_catalog.pg_get_triggerdef(t.oid, true), t.tgenabled FROM pg_catalog.pg_trigger t WHERE t.tgrelid = '16385'",
        "SELECT pg_catalog.pg_get_partkeydef('16385'::pg_catalog.oid)",
        "SELECT r.rulename, trim(trailing ';' from pg_catalog.pg_get_ruledef(r.oid, true)) FROM pg_catalog.pg_rewrite r WHERE r.ev_class = '16385'",
        "SELECT pg_catalog.pg_get_function_result(p.oid), pg_catalog.pg_get_function_arguments(p.oid) FROM pg_catalog.pg_proc p",
    ] {
        let s = one(sql);
        assert!(!s.has(Risk::OpaqueCode), "{sql}: {:?}", s.opaque_reasons);
    }
    // Still opaque: anything not reviewed as side-effect-free.
    assert!(!is_safe_function("pg_notify"));
    assert!(one("SELECT pg_catalog.pg_notify('c', 'x')").has(Risk::OpaqueCode));
}

/// A SQL-standard routine body (`BEGIN ATOMIC … END`) holds `;`s that end nothing: the splitter
/// follows psql's rule and PostgreSQL's parser confirms one statement; what follows it is a
/// statement of its own.
#[test]
fn begin_atomic_bodies_are_one_statement() {
    let s = one("CREATE FUNCTION f1() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END");
    assert!(s.is_parsed(), "{:?}", s.unparseable_reason);
    assert!(s.has(Risk::OpaqueCode), "{:?}", s.opaque_reasons);
    let s = one(
        "create or replace procedure p(n int) language sql begin atomic \
         insert into t values (n); select case when n > 0 then 1 else 0 end; delete from t; end",
    );
    assert!(s.is_parsed(), "{:?}", s.unparseable_reason);
    assert!(s.has(Risk::OpaqueCode), "{:?}", s.opaque_reasons);
    let c = classify(
        "CREATE FUNCTION f2() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END; DELETE FROM t",
        &SqlSessionSettings::default(),
    );
    assert_eq!(c.statements.len(), 2, "{:?}", c.statements);
    assert_eq!(c.statements[1].kind, K::Delete);
    // Outside a routine definition, BEGIN is a transaction start and `;` ends it.
    let c = classify("BEGIN; DELETE FROM t; END", &SqlSessionSettings::default());
    assert_eq!(c.statements.len(), 3, "{:?}", c.statements);
    // A body that never ends is one unparseable statement, never a guess.
    let s =
        one("CREATE FUNCTION f3() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; DELETE FROM t");
    assert!(!s.is_parsed());
}
