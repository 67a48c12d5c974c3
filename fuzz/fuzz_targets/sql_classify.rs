#![no_main]
//! Classifier and lineage on arbitrary text under both `standard_conforming_strings` settings:
//! must never panic, spans must stay on char boundaries inside the text, and a statement is
//! unparseable exactly when it carries a reason.

use gatehouse_core::SqlSessionSettings;
use gatehouse_sql::{NoCatalog, classify, lineage};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let settings = SqlSessionSettings {
        standard_conforming_strings: flags & 1 == 0,
        client_encoding: if flags & 2 == 0 { "UTF8" } else { "LATIN1" }.into(),
    };
    let c = classify(text, &settings);
    for s in &c.statements {
        assert!(text.get(s.span.clone()).is_some());
        assert_eq!(s.unparseable_reason.is_some(), !s.is_parsed());
    }
    let _ = lineage(text, &settings, &NoCatalog);
});
