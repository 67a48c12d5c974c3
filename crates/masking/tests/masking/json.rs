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

/// The string values and keys of a masked document, as a parser reads them.
fn decoded_strings(out: &[u8]) -> String {
    fn walk(v: &serde_json::Value, acc: &mut String) {
        match v {
            serde_json::Value::String(s) => acc.push_str(&format!("{s}\n")),
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, acc)),
            serde_json::Value::Object(m) => m.iter().for_each(|(k, x)| {
                acc.push_str(&format!("{k}\n"));
                walk(x, acc);
            }),
            other => acc.push_str(&format!("{other}\n")),
        }
    }
    let v: serde_json::Value = serde_json::from_slice(out)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(out)));
    let mut acc = String::new();
    walk(&v, &mut acc);
    acc
}

#[test]
fn escaped_values_are_detected_as_a_parser_reads_them() {
    let e = MaskingEngine::with_defaults().unwrap();
    let every_char =
        |s: &str| -> String { s.chars().map(|c| format!("\\u{:04x}", c as u32)).collect() };
    let cases = [
        // `\u` for the anchor only, for every character, upper-case hex.
        (r#"{"e":"mail a\u0040b.com now"}"#.to_string(), "a@b.com"),
        (
            format!(r#"{{"e":"{}"}}"#, every_char("jane.doe@example.com")),
            "jane.doe@example.com",
        ),
        (r#"{"e":"A\u0040B.COM"}"#.to_string(), "A@B.COM"),
        (
            format!(r#"{{"c":"{}"}}"#, every_char("4111111111111111")),
            "4111111111111111",
        ),
        (
            r#"{"c":"4111\u00201111\u00201111\u00201111"}"#.to_string(),
            "4111 1111 1111 1111",
        ),
        // `\/` inside a URL with credentials.
        (
            r#"{"u":"postgres:\/\/u:pw@h\/d"}"#.to_string(),
            "postgres://u:pw@h/d",
        ),
        // A key that is PII.
        (
            r#"{"jane\u002edoe\u0040example.com":1}"#.to_string(),
            "jane.doe@example.com",
        ),
        // Surrogate pairs around the value do not shift the mapping back to raw bytes.
        (
            r#"{"e":"\uD83D\uDE00a\u0040b.com\uD83D\uDE00"}"#.to_string(),
            "a@b.com",
        ),
    ];
    for (doc, value) in cases {
        let (out, f) = e.mask_json(None, doc.as_bytes());
        let text = decoded_strings(&out);
        assert!(
            !text.contains(value),
            "{doc} -> {}",
            String::from_utf8_lossy(&out)
        );
        assert!(!String::from_utf8_lossy(&out).contains(value));
        assert!(!f.is_empty(), "{doc}");
    }
    // The unaffected parts stay byte-identical, escapes included.
    let (out, _) = e.mask_json(None, br#"{"e":"\uD83D\uDE00 x a\u0040b.com \/ y"}"#);
    assert_eq!(&*out, br#"{"e":"\uD83D\uDE00 x [email] \/ y"}"#);
}

#[test]
fn escaped_keys_select_secret_values_and_path_rules() {
    let e = MaskingEngine::with_defaults().unwrap();
    let (out, _) = e.mask_json(
        None,
        br#"{"pass\u0077ord":"hunter2","api\u005fkey":"abcdef"}"#,
    );
    let text = decoded_strings(&out);
    assert!(
        !text.contains("hunter2") && !text.contains("abcdef"),
        "{text}"
    );
    let e = with_paths(&["$.users[*].name"]);
    let (out, _) = e.mask_json(Some("api"), br#"{"users":[{"n\u0061me":"Jo Doe"}]}"#);
    assert!(!decoded_strings(&out).contains("Jo Doe"));
}

#[test]
fn keyed_hashes_do_not_depend_on_the_escaping() {
    let mut c = MaskingConfig::default();
    c.profiles.insert(
        "h".into(),
        ProfileConfig {
            hmac_key: Some("k".into()),
            strategy: gatehouse_masking::Strategy::KeyedHash,
            ..ProfileConfig::default()
        },
    );
    let e = MaskingEngine::new(&c).unwrap();
    let (plain, _) = e.mask_json(Some("h"), br#"{"e":"a@b.com"}"#);
    let (escaped, _) = e.mask_json(Some("h"), br#"{"e":"a\u0040b\u002ecom"}"#);
    assert_eq!(plain, escaped);
}

#[test]
fn escapes_after_the_document_stops_being_json_are_decoded_before_text_masking() {
    let e = MaskingEngine::with_defaults().unwrap();
    let doc = br#"{"a": 1} ] "a\u0040b.com" \u0034\u0031\u0031\u0031\u0031\u0031\u0031\u0031\u0031\u0031\u0031\u0031\u0031\u0031\u0031\u0031"#;
    for cut in 0..doc.len() {
        let mut m = e.json_stream(None, None);
        let mut out = Vec::new();
        m.push(&doc[..cut], &mut out);
        m.push(&doc[cut..], &mut out);
        m.finish(&mut out);
        assert!(m.fell_back());
        let out = String::from_utf8_lossy(&out);
        assert!(
            !out.contains("a@b.com") && !out.contains("a\\u0040b"),
            "{out}"
        );
        assert!(
            !out.contains("4111111111111111") && !out.contains("\\u0034\\u0031"),
            "{out}"
        );
    }
}
