//! The JSON masker: byte-identical passthrough, path rules, secret keys, escapes, fallback.

use gatehouse_core::StreamMasker;
use gatehouse_masking::{JsonPathRule, MaskingConfig, MaskingEngine, ProfileConfig};

fn with_paths(paths: &[&str]) -> MaskingEngine {
    let mut p = ProfileConfig::default();
    for path in paths {
        p.json_paths.push(JsonPathRule {
            path: (*path).into(),
            strategy: None,
        });
    }
    let mut c = MaskingConfig::default();
    c.profiles.insert("api".into(), p);
    MaskingEngine::new(&c).unwrap()
}

#[test]
fn clean_documents_come_out_byte_identical() {
    let e = MaskingEngine::with_defaults().unwrap();
    let doc = br#" { "a" : [1, 2.5e3, -0, true, false, null, "x\"y\\z\u00e9"],
      "nested": {"deep": [[[]]], "s": "plain text 1.2.3"} }
    "#;
    let (out, f) = e.mask_json(None, doc);
    assert!(matches!(out, std::borrow::Cow::Borrowed(_)));
    assert!(f.is_empty());
}

#[test]
fn detection_inside_strings_and_numbers() {
    let e = MaskingEngine::with_defaults().unwrap();
    let (out, f) = e.mask_json(
        None,
        br#"{"note":"mail a@b.co","card":4111111111111111,"n":42}"#,
    );
    assert_eq!(&*out, br#"{"note":"mail [email]","card":null,"n":42}"#);
    assert_eq!(f.len(), 2);
}

#[test]
fn secret_keys_mask_their_values_whole() {
    let e = MaskingEngine::with_defaults().unwrap();
    let (out, _) = e.mask_json(
        None,
        br#"{"password":"hunter2","db":{"api_key":12345,"credentials":{"user":"u","pw":"x"}}}"#,
    );
    assert_eq!(&*out, br#"{"password":"[secret]","db":{"api_key":null,"credentials":{"user":"[secret]","pw":"[secret]"}}}"#);
}

#[test]
fn path_rules_select_values() {
    let e = with_paths(&["$.users[*].email", "$..token", "$.meta[1]"]);
    let doc = br#"{"users":[{"email":"not-an-email","name":"Jo"},{"email":"x"}],"a":{"b":{"token":{"v":"t","n":1}}},"meta":["keep","drop",3]}"#;
    let (out, f) = e.mask_json(Some("api"), doc);
    assert_eq!(
        String::from_utf8_lossy(&out),
        r#"{"users":[{"email":"[masked]","name":"Jo"},{"email":"[masked]"}],"a":{"b":{"token":{"v":"[masked]","n":null}}},"meta":["keep","[masked]",3]}"#
    );
    assert!(f.iter().all(|f| f.rule.starts_with("json_path:")), "{f:?}");
}

#[test]
fn escapes_are_never_split() {
    let e = MaskingEngine::with_defaults().unwrap();
    // The assignment value runs into an escaped quote: the mask must swallow the whole escape.
    let doc = br#"{"log":"password=abc\"def and a@b.co\u0041"}"#;
    let (out, _) = e.mask_json(None, doc);
    let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
    let s = v["log"].as_str().unwrap();
    assert!(!s.contains("abc") && !s.contains("a@b.co"), "{s}");
}

#[test]
fn malformed_or_too_deep_input_falls_back_to_text_masking() {
    let e = MaskingEngine::with_defaults().unwrap();
    let (out, _) = e.mask_json(None, b"{\"a\": oops a@b.co} ] password=hunter2");
    assert!(!String::from_utf8_lossy(&out).contains("a@b.co"));
    assert!(!String::from_utf8_lossy(&out).contains("hunter2"));
    let deep = format!("{}\"a@b.co\"{}", "[".repeat(500), "]".repeat(500));
    let mut m = e.json_stream(None, None);
    let mut out = Vec::new();
    m.push(deep.as_bytes(), &mut out);
    m.finish(&mut out);
    assert!(m.fell_back());
    assert!(!String::from_utf8_lossy(&out).contains("a@b.co"));
}

#[test]
fn long_strings_are_masked_in_bounded_pieces() {
    let e = MaskingEngine::with_defaults().unwrap();
    let mut doc = b"[\"".to_vec();
    for i in 0..20_000 {
        doc.extend_from_slice(format!("row {i} mail u{i}@example.com; ").as_bytes());
    }
    doc.extend_from_slice(b"\"]");
    let (out, f) = e.mask_json(None, &doc);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert!(!v[0].as_str().unwrap().contains("@example.com"));
    assert!(f.len() >= 19_990, "{}", f.len());
}

#[test]
fn json_lines_work() {
    let e = MaskingEngine::with_defaults().unwrap();
    let (out, _) = e.mask_json(None, b"{\"e\":\"a@b.co\"}\n{\"e\":\"c@d.co\"}\n");
    assert_eq!(&*out, b"{\"e\":\"[email]\"}\n{\"e\":\"[email]\"}\n");
}
