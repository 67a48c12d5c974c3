//! Property tests: streaming == one-shot for any chunking, no detected value survives, masking is
//! idempotent, the JSON masker keeps the structure. Case count: PROPTEST_CASES (default 256).

use gatehouse_core::StreamMasker;
use gatehouse_masking::MaskingEngine;
use proptest::prelude::*;

const PIECES: &[&str] = &[
    "jane.doe@example.com",
    "4111 1111 1111 1111",
    "4111111111111111",
    "5500-0055-5555-5559",
    "DE89 3704 0044 0532 0130 00",
    "GB82WEST12345698765432",
    "536-22-1234",
    "+1 415 555 2671",
    "(415) 555-2671",
    "020 7946 0958",
    "AKIAIOSFODNN7EXAMPLE",
    "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
    "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
    "xoxb-123456789012-abcdefghijkl",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "password=hunter2",
    "\"api_key\": \"abc\"",
    "postgres://u:pw@h/d",
    "1.2.3",
    "2026-11-23T16:29:03Z",
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----",
    "-----BEGIN PRIVATE KEY-----\nabc",
    " ",
    "\n",
    "\r\n",
    ",",
    ":",
    "=",
    "@",
    "-",
    ".",
    "+",
    "(",
    ")",
    "\"",
    "[card]",
    "é",
    "\u{0}",
];

fn text() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            3 => prop::sample::select(PIECES).prop_map(|s| s.as_bytes().to_vec()),
            2 => "[a-zA-Z0-9 @.:=+_-]{0,12}".prop_map(String::into_bytes),
            1 => prop::collection::vec(any::<u8>(), 0..8),
        ],
        0..24,
    )
    .prop_map(|v| v.concat())
}

fn cases() -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    ProptestConfig::with_cases(n)
}

fn chunked(input: &[u8], cuts: &[usize], json: bool) -> Vec<u8> {
    let e = MaskingEngine::with_defaults().unwrap();
    let mut s: Box<dyn StreamMasker> = if json {
        Box::new(e.json_stream(None, None))
    } else {
        Box::new(e.text_stream(None, None))
    };
    let mut out = Vec::new();
    let mut pos = 0;
    for &c in cuts {
        let c = c % (input.len() + 1);
        if c > pos {
            s.push(&input[pos..c], &mut out);
            pos = c;
        }
    }
    s.push(&input[pos..], &mut out);
    s.finish(&mut out);
    out
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn streaming_equals_one_shot_for_any_chunking(input in text(), mut cuts in prop::collection::vec(any::<usize>(), 0..12)) {
        cuts.sort_unstable_by_key(|c| c % (input.len() + 1));
        let e = MaskingEngine::with_defaults().unwrap();
        let (once, _) = e.mask_bytes(&input);
        let streamed = chunked(&input, &cuts, false);
        prop_assert_eq!(String::from_utf8_lossy(&streamed), String::from_utf8_lossy(&once));
    }

    #[test]
    fn no_detected_value_survives_and_masking_is_idempotent(input in text()) {
        let e = MaskingEngine::with_defaults().unwrap();
        let (once, findings) = e.mask_bytes(&input);
        // Each detected value may survive only as often as it also occurs in the input at a
        // place no finding covers (an identical string in a context that is not a match).
        let count = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).filter(|w| *w == needle).count();
        for f in &findings {
            let value = &input[f.offset as usize..(f.offset + f.length) as usize];
            if value.len() >= 6 {
                let undetected = (0..=input.len() - value.len())
                    .filter(|&i| &input[i..i + value.len()] == value)
                    .filter(|&i| !findings.iter().any(|g| (g.offset as usize) < i + value.len() && i < (g.offset + g.length) as usize))
                    .count();
                prop_assert!(count(&once, value) <= undetected,
                    "{} value survived in {:?}", f.rule, String::from_utf8_lossy(&once));
            }
        }
        let (twice, _) = e.mask_bytes(&once);
        prop_assert_eq!(String::from_utf8_lossy(&twice), String::from_utf8_lossy(&once));
    }
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i32>().prop_map(|n| serde_json::Value::Number(n.into())),
        text().prop_map(|b| serde_json::Value::String(String::from_utf8_lossy(&b).into_owned())),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(serde_json::Value::Array),
            prop::collection::btree_map("[a-z_]{1,10}", inner, 0..5)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Same shape; strings equal unless the original has something to mask.
fn same_structure(
    e: &MaskingEngine,
    orig: &serde_json::Value,
    masked: &serde_json::Value,
    under_secret: bool,
) -> Result<(), String> {
    use serde_json::Value as V;
    match (orig, masked) {
        (V::Object(a), V::Object(b)) => {
            if a.len() != b.len() {
                return Err(format!("key count {} != {}", a.len(), b.len()));
            }
            for ((ka, va), (kb, vb)) in a.iter().zip(b.iter()) {
                if ka != kb {
                    return Err(format!("key {ka} became {kb}"));
                }
                let secret = ["password", "secret", "token", "api_key"]
                    .iter()
                    .any(|s| ka.ends_with(s));
                same_structure(e, va, vb, under_secret || secret)?;
            }
            Ok(())
        }
        (V::Array(a), V::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .try_for_each(|(x, y)| same_structure(e, x, y, under_secret)),
        (V::String(a), V::String(b)) => {
            let raw = serde_json::to_string(a).unwrap();
            let inner = &raw.as_bytes()[1..raw.len() - 1];
            // Detectors read the decoded string (what a JSON parser sees); the escaped form is
            // checked too, for matches that span an escape.
            let changed_by_detection =
                e.mask_bytes(inner).0 != inner || e.mask_bytes(a.as_bytes()).0 != a.as_bytes();
            if a == b || under_secret || changed_by_detection {
                Ok(())
            } else {
                Err(format!("{a:?} changed to {b:?} with nothing to mask"))
            }
        }
        (a, V::Null) if under_secret || !a.is_string() => Ok(()),
        (a, b) if a == b => Ok(()),
        (a, b) => Err(format!("{a} became {b}")),
    }
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn json_masker_keeps_the_structure_and_equals_one_shot(v in json_value(), mut cuts in prop::collection::vec(any::<usize>(), 0..8), pretty in any::<bool>()) {
        let input = if pretty { serde_json::to_vec_pretty(&v).unwrap() } else { serde_json::to_vec(&v).unwrap() };
        let e = MaskingEngine::with_defaults().unwrap();
        let (once, _) = e.mask_json(None, &input);
        cuts.sort_unstable_by_key(|c| c % (input.len() + 1));
        let streamed = chunked(&input, &cuts, true);
        prop_assert_eq!(String::from_utf8_lossy(&streamed), String::from_utf8_lossy(&once));
        let parsed: serde_json::Value = serde_json::from_slice(&once)
            .map_err(|err| TestCaseError::fail(format!("{err}: {}", String::from_utf8_lossy(&once))))?;
        if let Err(msg) = same_structure(&e, &v, &parsed, false) {
            return Err(TestCaseError::fail(msg));
        }
        let (twice, _) = e.mask_json(None, &once);
        prop_assert_eq!(String::from_utf8_lossy(&twice), String::from_utf8_lossy(&once));
    }
}

/// Values each detector finds on their own (as a whole JSON string).
const DETECTED: &[&str] = &[
    "jane.doe@example.com",
    "4111 1111 1111 1111",
    "4111111111111111",
    "5500-0055-5555-5559",
    "DE89 3704 0044 0532 0130 00",
    "GB82WEST12345698765432",
    "536-22-1234",
    "+1 415 555 2671",
    "AKIAIOSFODNN7EXAMPLE",
    "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
    "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
    "xoxb-123456789012-abcdefghijkl",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "password=hunter2",
    "postgres://u:pw@h/d",
];

/// `value` written as a JSON string body, each character in a form chosen by `forms`: as is,
/// `\uXXXX` (lower or upper hex; a surrogate pair beyond the BMP), or a short escape (`\/`).
fn escape_json(value: &str, forms: &[u8]) -> String {
    let mut s = String::new();
    for (i, c) in value.chars().enumerate() {
        let form = forms.get(i % forms.len().max(1)).copied().unwrap_or(0) % 4;
        let mut units = [0u16; 2];
        let units = c.encode_utf16(&mut units);
        match form {
            1 => units
                .iter()
                .for_each(|u| s.push_str(&format!("\\u{u:04x}"))),
            2 => units
                .iter()
                .for_each(|u| s.push_str(&format!("\\u{u:04X}"))),
            3 if c == '/' => s.push_str("\\/"),
            _ => match c {
                '"' => s.push_str("\\\""),
                '\\' => s.push_str("\\\\"),
                c => s.push(c),
            },
        }
    }
    s
}

proptest! {
    #![proptest_config(cases())]

    /// However a detected value is escaped, as a string value or as an object key, in any
    /// chunking, no form of it comes out of the JSON masker, and the output stays valid JSON.
    #[test]
    fn escaping_a_detected_value_never_lets_it_through_the_json_masker(
        value in prop::sample::select(DETECTED),
        forms in prop::collection::vec(any::<u8>(), 1..16),
        as_key in any::<bool>(),
        before in "[a-z \u{e9}\u{1F600}]{0,6}",
        mut cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let escaped = escape_json(value, &forms);
        // Characters beyond the BMP (surrogate pairs when escaped) before the value.
        let body = format!("{} {escaped} end", escape_json(before.trim_end(), &forms));
        let doc = if as_key {
            format!(r#"{{"{body}": 1, "k": "v"}}"#)
        } else {
            format!(r#"{{"k": ["{body}"]}}"#)
        };
        // The document is what a client would parse: the value is really in it.
        let parsed: serde_json::Value = serde_json::from_str(&doc).unwrap();
        let mut strings = Vec::new();
        collect_strings(&parsed, &mut strings);
        prop_assert!(strings.iter().any(|s| s.contains(value)), "{doc}");
        cuts.sort_unstable_by_key(|c| c % (doc.len() + 1));
        let out = chunked(doc.as_bytes(), &cuts, true);
        let out_text = String::from_utf8_lossy(&out).into_owned();
        let masked: serde_json::Value = serde_json::from_slice(&out)
            .map_err(|err| TestCaseError::fail(format!("{err}: {out_text}")))?;
        let mut strings = Vec::new();
        collect_strings(&masked, &mut strings);
        for s in &strings {
            prop_assert!(!s.contains(value), "{value:?} survived as {s:?} in {out_text}");
        }
        prop_assert!(!out_text.contains(&escaped), "escaped form survived in {out_text}");
    }
}

fn collect_strings(v: &serde_json::Value, acc: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => acc.push(s.clone()),
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_strings(x, acc)),
        serde_json::Value::Object(m) => m.iter().for_each(|(k, x)| {
            acc.push(k.clone());
            collect_strings(x, acc);
        }),
        _ => {}
    }
}
