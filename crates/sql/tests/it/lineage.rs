//! Lineage: every way of getting a masked column (`users.email`) into the output is attributed
//! to its source.

use std::collections::BTreeSet;

use gatehouse_core::SqlSessionSettings;
use gatehouse_sql::{Lineage, NoCatalog, Source, lineage};

fn email() -> Source {
    Source::Column {
        table: "users".into(),
        column: "email".into(),
    }
}

fn all_users() -> Source {
    Source::AllColumns {
        table: "users".into(),
    }
}

fn catalog(table: &str) -> Option<Vec<String>> {
    match table {
        "users" | "public.users" => Some(vec!["id".into(), "name".into(), "email".into()]),
        "orders" => Some(vec!["id".into(), "user_id".into(), "total".into()]),
        _ => None,
    }
}

fn trace(sql: &str) -> Lineage {
    lineage(sql, &SqlSessionSettings::default(), &NoCatalog)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn trace_with_catalog(sql: &str) -> Lineage {
    lineage(sql, &SqlSessionSettings::default(), &catalog).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The output column at `index` may carry users.email (directly or as part of a whole row);
/// the table may be written schema-qualified.
fn carries_email(l: &Lineage, index: usize) -> bool {
    let is_users = |t: &str| t == "users" || t.ends_with(".users");
    l.columns[index].sources.iter().any(|s| match s {
        Source::Column { table, column } => is_users(table) && column == "email",
        Source::AllColumns { table } => is_users(table),
        _ => false,
    })
}

#[test]
fn every_bypass_form_is_attributed() {
    let forms = [
        "SELECT email FROM users",
        "SELECT EMAIL FROM USERS",
        "SELECT \"email\" FROM \"users\"",
        "SELECT u.email FROM users u",
        "SELECT u.email FROM users AS u",
        "SELECT users.email FROM users",
        "SELECT public.users.email FROM public.users",
        "SELECT email AS e FROM users",
        "SELECT email || '' FROM users",
        "SELECT lower(email) FROM users",
        "SELECT substr(email, 1, 3) FROM users",
        "SELECT md5(email) FROM users",
        "SELECT encode(convert_to(email, 'UTF8'), 'base64') FROM users",
        "SELECT email::text FROM users",
        "SELECT CAST(email AS varchar(200)) FROM users",
        "SELECT coalesce(email, 'none') FROM users",
        "SELECT CASE WHEN id > 0 THEN email ELSE 'x' END FROM users",
        "SELECT format('%s', email) FROM users",
        "SELECT string_agg(email, ',') FROM users",
        "SELECT array_agg(email) FROM users",
        "SELECT max(email) FROM users GROUP BY id",
        "SELECT first_value(email) OVER (ORDER BY id) FROM users",
        "SELECT ARRAY[email] FROM users",
        "SELECT ROW(id, email) FROM users",
        "SELECT row_to_json(u) FROM users u",
        "SELECT to_jsonb(users) FROM users",
        "SELECT json_agg(u) FROM users u",
        "SELECT row_to_json(u.*) FROM users u",
        "SELECT u FROM users u",
        "SELECT (u).email FROM users u",
        "SELECT * FROM users",
        "SELECT u.* FROM users u",
        "SELECT x FROM (SELECT email AS x FROM users) s",
        "SELECT s.x FROM (SELECT email AS x FROM users) AS s",
        "SELECT * FROM (SELECT email FROM users) s",
        "SELECT a FROM (SELECT email FROM users) s(a)",
        "WITH c AS (SELECT email FROM users) SELECT email FROM c",
        "WITH c(a) AS (SELECT email FROM users) SELECT a FROM c",
        "WITH c AS (SELECT * FROM users) SELECT c.email FROM c",
        "WITH RECURSIVE r(e) AS (SELECT email FROM users UNION ALL SELECT e FROM r) SELECT e FROM r",
        "SELECT (SELECT email FROM users LIMIT 1)",
        "SELECT (SELECT max(email) FROM users u2 WHERE u2.id = o.user_id) FROM orders o",
        "SELECT name FROM orders UNION SELECT email FROM users",
        "SELECT x.e FROM orders o JOIN LATERAL (SELECT email AS e FROM users u WHERE u.id = o.user_id) x ON true",
        "SELECT email FROM orders o JOIN users u ON u.id = o.user_id",
        "SELECT t.v FROM users u, LATERAL (VALUES (u.email)) t(v)",
        "SELECT to_json(u)->>'email' FROM users u",
        "SELECT /* comment */ email -- trailing\nFROM users",
        "SELECT $$x$$ || email FROM users",
        "SELECT email FROM users WHERE id = $1",
        "SELECT e FROM unnest(ARRAY(SELECT email FROM users)) AS t(e)",
        "SELECT v FROM (VALUES (1)) x(v) UNION ALL SELECT email FROM users",
        "SELECT DISTINCT ON (id) email FROM users",
    ];
    let mut failures = Vec::new();
    for sql in forms {
        let l = trace(sql);
        if l.columns.is_empty() || !carries_email(&l, 0) {
            failures.push(format!("{sql}: {:?}", l.columns));
        }
    }
    assert!(
        failures.is_empty(),
        "not attributed:\n{}",
        failures.join("\n")
    );
}

#[test]
fn dml_returning_is_attributed() {
    for sql in [
        "UPDATE users SET name = 'x' WHERE id = 1 RETURNING email",
        "DELETE FROM users WHERE id = 1 RETURNING email",
        "INSERT INTO users (id) VALUES (1) RETURNING email",
        "UPDATE users u SET name = 'x' RETURNING u.email",
    ] {
        let l = trace(sql);
        assert!(carries_email(&l, 0), "{sql}: {:?}", l.columns);
    }
    assert!(trace("DELETE FROM users").columns.is_empty());
}

#[test]
fn names_and_positions() {
    let l = trace(
        "SELECT id, email AS e, lower(name), 1, email::text, CASE WHEN true THEN 1 END FROM users",
    );
    let names: Vec<&str> = l.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["id", "e", "lower", "?column?", "email", "case"]);
    assert!(l.columns[3].sources.is_empty(), "a constant has no source");
    assert_eq!(
        l.columns[0].sources,
        BTreeSet::from([Source::Column {
            table: "users".into(),
            column: "id".into()
        }])
    );
    // A column that does not derive from email is not attributed to it.
    assert!(!carries_email(&l, 0));
    assert!(l.is_positional());
}

#[test]
fn star_without_catalog_is_one_entry_for_all_columns() {
    let l = trace("SELECT * FROM users u JOIN orders o ON o.user_id = u.id");
    assert!(!l.is_positional());
    assert_eq!(l.columns.len(), 2);
    assert!(l.columns.iter().all(|c| c.star));
    assert!(l.columns[0].sources.contains(&all_users()));
}

#[test]
fn catalog_expands_star_and_disambiguates() {
    let l = trace_with_catalog("SELECT * FROM users u JOIN orders o ON o.user_id = u.id");
    assert!(l.is_positional());
    let names: Vec<&str> = l.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["id", "name", "email", "id", "user_id", "total"]);
    assert_eq!(l.columns[2].sources, BTreeSet::from([email()]));
    // `total` exists only in orders: with a catalog it is not attributed to users.
    let l = trace_with_catalog("SELECT total FROM users u JOIN orders o ON o.user_id = u.id");
    assert_eq!(
        l.columns[0].sources,
        BTreeSet::from([Source::Column {
            table: "orders".into(),
            column: "total".into()
        }])
    );
    // Without a catalog, an unqualified name in a join may come from either table.
    let l = trace("SELECT total FROM users u JOIN orders o ON o.user_id = u.id");
    assert_eq!(l.columns[0].sources.len(), 2);
    // Renamed columns map to the real ones by position.
    let l = trace_with_catalog("SELECT c FROM users AS x(a, b, c)");
    assert_eq!(l.columns[0].sources, BTreeSet::from([email()]));
}

#[test]
fn unresolved_names_are_reported_not_dropped() {
    let l = trace("SELECT nosuch FROM (SELECT 1 AS a) s");
    assert_eq!(
        l.columns[0].sources,
        BTreeSet::from([Source::Unresolved {
            name: "nosuch".into()
        }])
    );
}

#[test]
fn errors() {
    let s = SqlSessionSettings::default();
    assert!(lineage("SELECT 1; SELECT 2", &s, &NoCatalog).is_err());
    assert!(lineage("", &s, &NoCatalog).is_err());
    assert!(lineage("SELECT 'abc", &s, &NoCatalog).is_err());
    assert!(lineage("SELEC email FROM users", &s, &NoCatalog).is_err());
    // Under scs=off the literal swallows the rest: one statement, and no email in it.
    let off = SqlSessionSettings {
        standard_conforming_strings: false,
        ..s.clone()
    };
    let l = lineage(r"SELECT 'a\', email FROM users --'", &off, &NoCatalog).unwrap();
    assert_eq!(l.columns.len(), 1);
    assert!(l.columns[0].sources.is_empty());
    let l = lineage(r"SELECT 'a\', email FROM users --'", &s, &NoCatalog).unwrap();
    assert_eq!(l.columns.len(), 2);
    assert!(carries_email(&l, 1));
}

/// A statement PostgreSQL reads but the lineage parser does not: every output may derive from
/// every column of every table it names (the proxy then masks as for an unexpanded `*`).
#[test]
fn statements_only_postgresql_reads_get_conservative_lineage() {
    let l = trace("TABLE users");
    assert!(!l.is_positional());
    assert!(carries_email(&l, 0), "{:?}", l.columns);
    let l = trace("SELECT lower(email) FROM users FOR UPDATE OF users SKIP LOCKED");
    assert!(carries_email(&l, 0), "{:?}", l.columns);
}

/// An output that is a column itself is not derived; one computed from it is, through any
/// number of aliases, subqueries, CTEs and set operations.
#[test]
fn derived_outputs_are_marked() {
    let plain = [
        "SELECT email FROM users",
        "SELECT u.email AS e FROM users u",
        "SELECT (email) FROM users",
        "SELECT public.users.email FROM public.users",
        "SELECT x FROM (SELECT email AS x FROM users) s",
        "SELECT s.x FROM (SELECT u.email AS x FROM users u) AS s",
        "WITH c AS (SELECT email FROM users) SELECT email FROM c",
        "WITH c(a) AS (SELECT email FROM users) SELECT c.a FROM c",
        "SELECT email FROM users UNION SELECT name FROM users",
        "SELECT * FROM users",
        "DELETE FROM users WHERE id = 1 RETURNING email",
    ];
    for sql in plain {
        let l = trace(sql);
        assert!(carries_email(&l, 0), "{sql}: {:?}", l.columns);
        assert!(!l.columns[0].derived, "{sql}: {:?}", l.columns);
    }
    let derived = [
        "SELECT lower(email) FROM users",
        "SELECT email || '' FROM users",
        "SELECT email::text FROM users",
        "SELECT substr(email, 1, 3) AS e FROM users",
        "SELECT x FROM (SELECT lower(email) AS x FROM users) s",
        "WITH c AS (SELECT md5(email) AS email FROM users) SELECT email FROM c",
        "SELECT * FROM (SELECT lower(email) AS e FROM users) s",
        "SELECT email FROM users UNION SELECT lower(name) FROM users",
        "SELECT u FROM users u",
        "SELECT row_to_json(u) FROM users u",
        "SELECT e FROM unnest(ARRAY(SELECT email FROM users)) AS t(e)",
        "SELECT CASE WHEN id > 0 THEN email END FROM users",
        "TABLE users",
    ];
    for sql in derived {
        let l = trace(sql);
        assert!(carries_email(&l, 0), "{sql}: {:?}", l.columns);
        assert!(l.columns[0].derived, "{sql}: {:?}", l.columns);
    }
    let l = trace_with_catalog("SELECT * FROM users u JOIN orders o ON o.user_id = u.id");
    assert!(l.columns.iter().all(|c| !c.derived));
    let l = trace("SELECT 1");
    assert!(l.columns[0].derived, "a constant is computed");
}

fn email_nullness() -> Source {
    Source::Nullness {
        table: "users".into(),
        column: "email".into(),
    }
}

/// The reviewed list of derivations that reveal nothing but nullness: their output carries no
/// column source, only a nullness source; every other derivation keeps the column.
#[test]
fn the_reveals_nothing_list_keeps_only_nullness() {
    for sql in [
        "SELECT count(email) FROM users",
        "SELECT count(ALL u.email) FROM users u",
        "SELECT pg_catalog.count(email) FROM users",
        "SELECT email IS NULL FROM users",
        "SELECT (email) IS NOT NULL FROM users",
        "SELECT NOT (users.email IS NULL) FROM users",
        "SELECT n FROM (SELECT count(email) AS n FROM users) s",
    ] {
        let l = trace(sql);
        assert!(!carries_email(&l, 0), "{sql}: {:?}", l.columns);
        assert!(
            l.columns[0].sources.contains(&email_nullness()),
            "{sql}: {:?}",
            l.columns
        );
    }
    for sql in [
        "SELECT count(DISTINCT email) FROM users",
        "SELECT length(email) FROM users",
        "SELECT count(email) FILTER (WHERE email LIKE 'a%') FROM users",
        "SELECT count(email) OVER (ORDER BY email) FROM users",
        "SELECT count(email ORDER BY email) FROM users",
        "SELECT count(lower(email)) FROM users",
        "SELECT lower(email) IS NULL FROM users",
        "SELECT public.count(email) FROM users",
        "SELECT count(u) FROM users u",
        "SELECT count(e) FROM (SELECT NULLIF(email, 'a@b.c') AS e FROM users) s",
        "WITH x AS (SELECT CASE WHEN email LIKE 'a%' THEN 1 END AS e FROM users) \
         SELECT count(e) FROM x",
        "SELECT count(email), email FROM users GROUP BY email",
    ] {
        let l = trace(sql);
        assert!(
            (0..l.columns.len()).any(|i| carries_email(&l, i)),
            "{sql}: {:?}",
            l.columns
        );
    }
}
