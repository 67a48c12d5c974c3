//! Classification: kinds, tables, functions and risks of the statement forms the policy relies on.

use gatehouse_core::SqlSessionSettings;
use gatehouse_sql::{Risk, StatementInfo, StatementKind as K, classify, encoding_is_supported};

fn one(sql: &str) -> StatementInfo {
    let c = classify(sql, &SqlSessionSettings::default());
    assert_eq!(c.statements.len(), 1, "{sql}: {:?}", c.statements);
    c.statements.into_iter().next().expect("one statement")
}

#[test]
fn kinds() {
    let cases: &[(&str, K)] = &[
        ("SELECT 1", K::Select),
        ("VALUES (1)", K::Select),
        ("INSERT INTO t VALUES (1)", K::Insert),
        ("UPDATE t SET a = 1 WHERE b", K::Update),
        ("DELETE FROM t WHERE b", K::Delete),
        (
            "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
            K::Merge,
        ),
        ("CREATE TABLE t (a int)", K::Ddl),
        ("ALTER TABLE t ADD COLUMN b int", K::Ddl),
        ("DROP TABLE t", K::Drop),
        ("TRUNCATE t", K::Truncate),
        ("COPY t TO STDOUT", K::Copy),
        ("GRANT SELECT ON t TO bob", K::Grant),
        ("REVOKE SELECT ON t FROM bob", K::Revoke),
        ("SET search_path = x", K::Set),
        ("RESET ALL", K::Set),
        ("SHOW search_path", K::Show),
        ("DO $$ BEGIN END $$", K::DoBlock),
        ("CALL p()", K::Call),
        ("PREPARE p AS SELECT 1", K::Prepare),
        ("EXECUTE p", K::Execute),
        ("DEALLOCATE p", K::Deallocate),
        ("BEGIN", K::Transaction),
        ("COMMIT", K::Transaction),
        ("ROLLBACK", K::Transaction),
        ("EXPLAIN SELECT 1", K::Explain),
        ("LOCK TABLE t", K::Lock),
        ("VACUUM t", K::Maintenance),
        ("LISTEN x", K::Notify),
        ("DECLARE c CURSOR FOR SELECT 1", K::Cursor),
        ("ALTER SYSTEM SET work_mem = '1GB'", K::AlterSystem),
        ("CHECKPOINT", K::Maintenance),
    ];
    for (sql, kind) in cases {
        assert_eq!(one(sql).kind, *kind, "{sql}");
    }
}

#[test]
fn tables_functions_and_risks() {
    let s =
        one("SELECT a.x, pg_catalog.lower(b.y) FROM Public.A a JOIN \"B\" b ON true WHERE f(1)");
    assert_eq!(s.tables.iter().collect::<Vec<_>>(), ["B", "public.a"]);
    assert_eq!(
        s.functions.iter().collect::<Vec<_>>(),
        ["f", "pg_catalog.lower"]
    );

    // PostgreSQL truncates identifiers to 63 bytes: so do we.
    let long = "s".repeat(70);
    let s = one(&format!("SELECT * FROM {long}"));
    assert_eq!(s.tables.iter().next().unwrap().len(), 63);

    assert!(one("DELETE FROM t").has(Risk::WriteWithoutWhere));
    assert!(one("UPDATE t SET a = 1").has(Risk::WriteWithoutWhere));
    assert!(!one("UPDATE t SET a = 1 WHERE id = 2").has(Risk::WriteWithoutWhere));
    assert!(one("COPY t TO PROGRAM 'x'").has(Risk::CopyProgram));
    assert!(one("COPY t FROM PROGRAM 'x'").has(Risk::CopyProgram));
    assert!(one("COPY t TO '/tmp/x'").has(Risk::CopyFile));
    let cte = one("WITH d AS (UPDATE t SET a = 1 RETURNING *) SELECT * FROM d");
    assert!(cte.has(Risk::WritableCte) && cte.has(Risk::WriteWithoutWhere));
    assert!(cte.kinds.contains(&K::Update) && cte.kinds.contains(&K::Select));
    assert!(one("SELECT * INTO x FROM t").has(Risk::SelectInto));
    assert!(one("CREATE TABLE x AS SELECT 1").has(Risk::CreateTableAs));
    assert!(one("SET standard_conforming_strings TO off").has(Risk::EncodingChange));
    assert!(one("SET client_encoding = 'BIG5'").has(Risk::EncodingChange));
    assert!(one("SET NAMES 'SJIS'").has(Risk::EncodingChange));
    assert!(one("RESET ALL").has(Risk::EncodingChange));
    assert!(one("SELECT set_config('client_encoding', 'SJIS', false)").has(Risk::EncodingChange));
    assert!(one("SELECT set_config(x, 'y', false) FROM t").has(Risk::EncodingChange));
    assert!(!one("SET search_path = x").has(Risk::EncodingChange));
    assert!(one("SET ROLE admin").has(Risk::RoleChange));
    assert!(one("SET SESSION AUTHORIZATION admin").has(Risk::RoleChange));
    let f = one("CREATE FUNCTION f() RETURNS int LANGUAGE plpython3u AS $$ return 1 $$");
    assert!(f.has(Risk::UntrustedLanguage));
    assert!(f.languages.contains("plpython3u"));
    assert!(
        !one("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ select 1 $$")
            .has(Risk::UntrustedLanguage)
    );
    assert!(one("DO $$ BEGIN END $$").has(Risk::OpaqueCode));
    let p = one("PREPARE p AS DELETE FROM t");
    assert!(p.kinds.contains(&K::Delete) && p.has(Risk::WriteWithoutWhere));
    assert!(
        one("EXPLAIN ANALYZE DELETE FROM t")
            .kinds
            .contains(&K::Delete)
    );
}

#[test]
fn splitting() {
    let s = SqlSessionSettings::default();
    let c = classify("BEGIN; DROP TABLE t; COMMIT;", &s);
    let kinds: Vec<K> = c.statements.iter().map(|s| s.kind).collect();
    assert_eq!(kinds, [K::Transaction, K::Drop, K::Transaction]);
    assert_eq!(
        &"BEGIN; DROP TABLE t; COMMIT;"[c.statements[1].span.clone()],
        " DROP TABLE t"
    );

    // A lexing failure keeps what came before and marks the rest.
    let c = classify("DROP TABLE t; SELECT 'open", &s);
    assert_eq!(c.statements.len(), 2);
    assert_eq!(c.statements[0].kind, K::Drop);
    assert_eq!(c.statements[1].kind, K::Unparseable);
    assert!(!c.is_fully_parsed());

    // Unsafe client encodings: nothing can be trusted.
    let sjis = SqlSessionSettings {
        client_encoding: "SJIS".into(),
        ..s.clone()
    };
    let c = classify("SELECT 1", &sjis);
    assert_eq!(c.statements[0].kind, K::Unparseable);
    assert!(
        c.statements[0]
            .unparseable_reason
            .as_deref()
            .unwrap()
            .contains("SJIS")
    );
    assert!(encoding_is_supported("utf-8") && !encoding_is_supported("GB18030"));

    // Where PostgreSQL versions could read differently, or PostgreSQL refuses: unparseable,
    // with a reason.
    for sql in [
        "SELECT\u{a0}1",
        "SELECT 1e'x'",
        "SELECT 1; SELECT 2 SELECT 3",
    ] {
        let c = classify(sql, &s);
        assert!(!c.is_fully_parsed(), "{sql}");
        assert!(
            c.statements.iter().any(|s| s.unparseable_reason.is_some()),
            "{sql}"
        );
    }
}
