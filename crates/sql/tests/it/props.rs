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
