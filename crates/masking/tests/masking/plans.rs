//! Field plans: resolved once per shape, applied per value into a caller buffer.

use gatehouse_core::{FieldDesc, FieldKind, MaskOutcome, Masker};
use gatehouse_masking::{ColumnRule, MaskingConfig, MaskingEngine, ProfileConfig, Strategy};

fn engine() -> MaskingEngine {
    let mut p = ProfileConfig::default();
    p.columns.push(ColumnRule {
        pattern: "email".into(),
        strategy: None,
    });
    p.columns.push(ColumnRule {
        pattern: "public.customers.ssn".into(),
        strategy: Some(Strategy::Partial),
    });
    p.columns.push(ColumnRule {
        pattern: "*.salary".into(),
        strategy: None,
    });
    let mut c = MaskingConfig::default();
    c.profiles.insert("pii".into(), p);
    MaskingEngine::new(&c).unwrap()
}

#[test]
fn columns_by_name_source_and_glob() {
    let e = engine();
    let fields = vec![
        FieldDesc::text("EMAIL"),
        FieldDesc {
            name: "x".into(),
            sources: vec!["public.customers.ssn".into()],
            kind: FieldKind::Text,
        },
        FieldDesc {
            name: "s".into(),
            sources: vec!["hr.staff.salary".into()],
            kind: FieldKind::NonText,
        },
        FieldDesc::text("notes"),
        FieldDesc {
            name: "n".into(),
            sources: vec![],
            kind: FieldKind::NonText,
        },
        FieldDesc::text("db_password"),
        FieldDesc {
            name: "doc".into(),
            sources: vec![],
            kind: FieldKind::Json,
        },
    ];
    let plan = e.plan(&fields, Some("pii"));
    assert!(
        plan.masks_whole(0) && plan.masks_whole(1) && plan.masks_whole(2) && plan.masks_whole(5)
    );
    assert!(!plan.masks_whole(3) && !plan.masks_whole(4) && !plan.masks_whole(6));

    let mut out = b"garbage".to_vec();
    let mut f = Vec::new();
    assert_eq!(
        plan.apply(0, b"not even an email", &mut out, &mut f),
        MaskOutcome::Masked
    );
    assert_eq!(out, b"[masked]");
    assert_eq!(
        plan.apply(1, b"536-22-1234", &mut out, &mut f),
        MaskOutcome::Masked
    );
    assert_eq!(out, b"*******1234");
    assert_eq!(
        plan.apply(2, b"120000", &mut out, &mut f),
        MaskOutcome::MustNull
    );
    assert_eq!(
        plan.apply(5, b"hunter2", &mut out, &mut f),
        MaskOutcome::Masked
    );
    assert_eq!(out, b"[secret]");

    // Content detection; untouched buffer when nothing matches.
    let mut untouched = b"sentinel".to_vec();
    assert_eq!(
        plan.apply(3, b"just a note", &mut untouched, &mut f),
        MaskOutcome::Unchanged
    );
    assert_eq!(untouched, b"sentinel");
    assert_eq!(
        plan.apply(3, b"ring 415-555-2671", &mut out, &mut f),
        MaskOutcome::Masked
    );
    assert_eq!(out, b"ring [phone]");
    // A non-text value holding a card number must be nulled, not turned into a string.
    assert_eq!(
        plan.apply(4, b"4111111111111111", &mut untouched, &mut f),
        MaskOutcome::MustNull
    );
    assert_eq!(
        plan.apply(4, b"42", &mut untouched, &mut f),
        MaskOutcome::Unchanged
    );
    assert_eq!(untouched, b"sentinel");
    // JSON column.
    assert_eq!(
        plan.apply(6, br#"{"a":"a@b.co"}"#, &mut out, &mut f),
        MaskOutcome::Masked
    );
    assert_eq!(out, br#"{"a":"[email]"}"#);
    assert_eq!(
        plan.apply(6, br#"{"a":1}"#, &mut untouched, &mut f),
        MaskOutcome::Unchanged
    );
    // An index outside the shape still gets detection.
    assert_eq!(
        plan.apply(99, b"a@b.co", &mut out, &mut f),
        MaskOutcome::Masked
    );
    assert!(f.iter().all(|f| f.field.is_some() || f.rule == "email"));
    assert_eq!(f[0].rule, "column:email");
    assert_eq!(f[0].field.as_deref(), Some("EMAIL"));
}

#[test]
fn unknown_profile_falls_back_to_the_default_detectors() {
    let e = engine();
    let plan = e.plan(&[FieldDesc::text("c")], Some("no-such-profile"));
    let (mut out, mut f) = (Vec::new(), Vec::new());
    assert_eq!(
        plan.apply(0, b"a@b.co", &mut out, &mut f),
        MaskOutcome::Masked
    );
    assert!(!e.has_profile("no-such-profile"));
}

#[test]
fn engine_and_guard_plug_into_the_pipeline_as_trait_objects() {
    use std::sync::Arc;

    use gatehouse_core::{EgressGuard, EgressSite, StreamContext};
    let masker: Arc<dyn Masker + Send + Sync> = Arc::new(engine());
    let mut b = gatehouse_masking::EgressGuardBuilder::new();
    b.add_secret(b"upstream-db-password").unwrap();
    let egress: Arc<dyn EgressGuard + Send + Sync> = Arc::new(b.build().unwrap());
    // Mask first, then the egress guard: a held secret that no detector knows is still blocked.
    let mut s = masker.stream(&StreamContext::default());
    let mut out = Vec::new();
    s.push(b"ok a@b.co\nleaked upstream-db-password\n", &mut out);
    s.finish(&mut out);
    assert!(egress.check(EgressSite::Client, &out).is_err());
    assert!(egress.check(EgressSite::Client, b"ok [email]\n").is_ok());
    assert_eq!(egress.counters().hits["client"], 1);
}

/// A rule matches a source however either side writes it: the column alone, `table.column`, or
/// the catalog's `schema.table.column`, quoted or not (the quickstart's `email` rule never
/// matched `public.customers.email` before).
#[test]
fn column_rules_match_qualified_sources_by_suffix_and_ignore_quotes() {
    let mut p = ProfileConfig::default();
    for pattern in [
        "email",
        "customers.card_number",
        "\"Public\".\"Staff\".\"Phone\"",
    ] {
        p.columns.push(ColumnRule {
            pattern: pattern.into(),
            strategy: None,
        });
    }
    let mut c = MaskingConfig::default();
    c.profiles.insert("pii".into(), p);
    let e = MaskingEngine::new(&c).unwrap();
    let derived = |source: &str| FieldDesc {
        name: "?column?".into(),
        sources: vec![source.into()],
        kind: FieldKind::Text,
    };
    let fields = vec![
        derived("public.customers.email"),
        derived("?.email"),
        derived("public.customers.card_number"),
        derived("public.staff.phone"),
        derived("public.customers.emailx"),
        derived("public.orders.card_number_hint"),
    ];
    let plan = e.plan(&fields, Some("pii"));
    for i in 0..4 {
        assert!(plan.masks_whole(i), "field {i} must be masked");
    }
    assert!(!plan.masks_whole(4) && !plan.masks_whole(5));
}

/// A `detect` column rule: the column's plain values get the detectors only, a value derived
/// from it is masked whole, and the rule counts as protecting the column.
#[test]
fn a_detect_rule_shows_plain_values_through_the_detectors_and_hides_derived_ones() {
    let mut p = ProfileConfig::default();
    p.columns.push(ColumnRule {
        pattern: "customers.notes".into(),
        strategy: Some(Strategy::Detect),
    });
    let mut c = MaskingConfig::default();
    c.profiles.insert("pii".into(), p);
    let e = MaskingEngine::new(&c).unwrap();
    let fields = vec![
        FieldDesc {
            name: "notes".into(),
            sources: vec!["public.customers.notes".into()],
            kind: FieldKind::Text,
        },
        FieldDesc {
            name: "other".into(),
            sources: vec!["public.customers.other".into()],
            kind: FieldKind::Text,
        },
    ];
    let plan = e.plan(&fields, Some("pii"));
    assert!(!plan.masks_whole(0), "a plain value is not replaced whole");
    assert!(plan.masks_derived(0), "a derived value is");
    assert!(!plan.masks_whole(1) && !plan.masks_derived(1));

    let mut out = Vec::new();
    let mut f = Vec::new();
    let v = b"card on file: 4012 8888 8888 1881";
    assert_eq!(plan.apply(0, v, &mut out, &mut f), MaskOutcome::Masked);
    assert_eq!(out, b"card on file: [card]");
    assert_eq!(
        plan.apply(0, b"prefers email", &mut out, &mut f),
        MaskOutcome::Unchanged
    );

    // Reversed, no detector recognises the card; derived, the value is hidden whole.
    let reversed: Vec<u8> = v.iter().rev().copied().collect();
    assert_eq!(
        plan.apply(0, &reversed, &mut out, &mut f),
        MaskOutcome::Unchanged,
        "the detectors alone cannot see through a transformation"
    );
    let mut f = Vec::new();
    assert_eq!(
        plan.apply_derived(0, &reversed, &mut out, &mut f),
        MaskOutcome::Masked
    );
    assert_eq!(out, b"[masked]");
    assert!(
        f.iter().any(|x| x.rule == "column:customers.notes"),
        "{f:?}"
    );
    // A field no rule hides has no constant: the caller NULLs it.
    assert_eq!(
        plan.apply_derived(1, &reversed, &mut out, &mut f),
        MaskOutcome::MustNull
    );
}

#[test]
fn detect_is_a_strategy_for_column_rules_only() {
    for bad in [
        ProfileConfig {
            strategy: Strategy::Detect,
            ..Default::default()
        },
        {
            let mut p = ProfileConfig::default();
            p.json_paths.push(gatehouse_masking::JsonPathRule {
                path: "$.notes".into(),
                strategy: Some(Strategy::Detect),
            });
            p
        },
        {
            let mut p = ProfileConfig::default();
            p.detectors.insert(
                "email".into(),
                gatehouse_masking::DetectorSetting::Settings(gatehouse_masking::DetectorConfig {
                    enabled: true,
                    strategy: Some(Strategy::Detect),
                    max_len: None,
                }),
            );
            p
        },
    ] {
        let mut c = MaskingConfig::default();
        c.profiles.insert("pii".into(), bad);
        let err = MaskingEngine::new(&c).unwrap_err().to_string();
        assert!(err.contains("detect"), "{err}");
    }
    let parsed: ProfileConfig =
        serde_json::from_str(r#"{"columns": [{"pattern": "notes", "strategy": "detect"}]}"#)
            .unwrap();
    assert_eq!(parsed.columns[0].strategy, Some(Strategy::Detect));
}
