//! Property tests: classify and lineage never panic; classification is deterministic and its
//! spans stay inside the text.

use gatehouse_core::SqlSessionSettings;
use gatehouse_sql::{NoCatalog, classify, lineage};
use proptest::prelude::*;

fn sqlish() -> impl Strategy<Value = String> {
    let atoms = prop::sample::select(vec![
        "SELECT",
        " ",
        "*",
        "FROM",
        "t",
        "u.x",
        ";",
        "'",
        "''",
        "\\",
        "E'",
        "$$",
        "$a$",
        "--",
        "\n",
        "/*",
        "*/",
        "\"",
        "(",
        ")",
        ",",
        "WITH",
        "AS",
        "DELETE",
        "UNION",
        "row_to_json",
        "1",
        "$1",
        "é",
        "N'",
        "X'",
        "U&'",
        "\u{c}",
    ]);
    prop::collection::vec(atoms, 0..30).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
    ))]

    #[test]
    fn never_panics(text in prop_oneof![sqlish(), any::<String>()], scs in any::<bool>()) {
        let settings = SqlSessionSettings { standard_conforming_strings: scs, ..SqlSessionSettings::default() };
        let c = classify(&text, &settings);
        for s in &c.statements {
            prop_assert!(s.span.start <= s.span.end && s.span.end <= text.len());
            prop_assert!(text.get(s.span.clone()).is_some(), "span on a char boundary");
            prop_assert_eq!(s.unparseable_reason.is_some(), !s.is_parsed());
            prop_assert!(s.kinds.contains(&s.kind));
        }
        prop_assert_eq!(classify(&text, &settings), c);
        let _ = lineage(&text, &settings, &NoCatalog);
    }
}

/// A string literal body made of the characters whose reading depends on the settings.
fn body() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec![
            "a", ";", "\\", "\\'", "''", "'", "--", "/*", "*/", "$$", "\n", " ", "\"",
        ]),
        0..6,
    )
    .prop_map(|v| v.concat())
}

fn literal() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["'", "E'", "$$", "$q$", "N'"]),
        body(),
    )
        .prop_map(|(open, b)| {
            let close = match open {
                "$$" => "$$",
                "$q$" => "$q$",
                _ => "'",
            };
            format!("{open}{b}{close}")
        })
}

fn statement() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec![
            "SELECT ",
            "DELETE FROM t WHERE a = ",
            "INSERT INTO t VALUES (",
            "SET application_name = ",
        ]),
        prop::collection::vec(literal(), 1..3),
        prop::sample::select(vec!["", " -- c;'\n", " /* ; ' */"]),
    )
        .prop_map(|(head, lits, tail)| {
            let closing = if head.ends_with('(') { ")" } else { "" };
            format!("{head}{}{closing}{tail}", lits.join(" || "))
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
    ))]

    /// Under generated settings, the statements the classifier reports are exactly those that
    /// PostgreSQL's own parser reads in the whole string: when every statement was read, the
    /// parser reads the whole string too, with the same number of statements, each ending
    /// where the classifier's does; and when the parser reads the whole string, so does the
    /// classifier.
    #[test]
    fn the_split_agrees_with_postgresql(
        statements in prop::collection::vec(statement(), 1..4),
        scs in any::<bool>(),
    ) {
        let text = statements.join(";");
        let settings = SqlSessionSettings { standard_conforming_strings: scs, ..SqlSessionSettings::default() };
        let c = classify(&text, &settings);
        let mut options = pg_query::ParserOptions::DISABLE_ESCAPE_STRING_WARNING;
        if !scs {
            options |= pg_query::ParserOptions::DISABLE_STANDARD_CONFORMING_STRINGS;
        }
        let whole = pg_query::parse(&text, options);
        prop_assert_eq!(c.is_fully_parsed(), whole.is_ok(), "{:?} {:?}", c, whole.as_ref().err());
        if let Ok(whole) = whole {
            let raw = &whole.protobuf.stmts;
            prop_assert_eq!(raw.len(), c.statements.len());
            for (r, s) in raw.iter().zip(&c.statements) {
                let start = usize::try_from(r.stmt_location).unwrap();
                let end = if r.stmt_len == 0 { text.len() } else { start + usize::try_from(r.stmt_len).unwrap() };
                prop_assert!(s.span.start <= start && start < s.span.end, "{:?} {}", s.span, start);
                prop_assert_eq!(end, s.span.end);
            }
        }
    }
}
