//! The egress guard: held secrets in every encoding, across chunk boundaries, with counters.

use base64::Engine as _;
use gatehouse_core::{EgressGuard, EgressSite};
use gatehouse_masking::EgressGuardBuilder;
use proptest::prelude::*;

const SECRET: &[u8] = b"s3cr3t-P@ss/word+canary";

fn guard() -> gatehouse_masking::SecretEgressGuard {
    let mut b = EgressGuardBuilder::new();
    b.add_secret(SECRET).unwrap();
    b.add_secret(b"second-held-token").unwrap();
    b.build().unwrap()
}

fn lower_hex_escapes(pct: &str) -> String {
    let mut out = String::new();
    let mut rest = pct;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        out.push('%');
        out.push_str(&rest[i + 1..i + 3].to_lowercase());
        rest = &rest[i + 3..];
    }
    out + rest
}

fn encodings(prefix: &[u8]) -> Vec<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
    let mut with = prefix.to_vec();
    with.extend_from_slice(SECRET);
    with.extend_from_slice(b"!tail");
    let pct: String =
        percent_encoding::percent_encode(SECRET, percent_encoding::NON_ALPHANUMERIC).to_string();
    vec![
        SECRET.to_vec(),
        hex::encode(SECRET).into_bytes(),
        hex::encode_upper(SECRET).into_bytes(),
        STANDARD.encode(&with).into_bytes(),
        URL_SAFE.encode(&with).into_bytes(),
        URL_SAFE_NO_PAD.encode(&with).into_bytes(),
        pct.clone().into_bytes(),
        lower_hex_escapes(&pct).into_bytes(),
        format!(
            "Authorization: Basic {}",
            STANDARD.encode(format!("admin:{}", String::from_utf8_lossy(SECRET)))
        )
        .into_bytes(),
    ]
}

#[test]
fn every_encoding_is_blocked_and_counted_per_site() {
    let g = guard();
    for prefix in [&b""[..], b"a", b"ab"] {
        for enc in encodings(prefix) {
            let mut data = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
            data.extend_from_slice(&enc);
            let err = g.check(EgressSite::Client, &data).unwrap_err();
            assert!(err.hits >= 1);
            assert!(
                !err.to_string().contains("s3cr3t"),
                "errors never carry the secret"
            );
        }
    }
    assert!(
        g.check(
            EgressSite::Audit,
            b"nothing secret here, s3cr3t-P@ss alone is partial"
        )
        .is_ok()
    );
    let c = g.counters();
    assert!(c.patterns >= 10);
    assert_eq!(c.hits["client"], 27);
    assert_eq!(c.hits["audit"], 0);
    assert!(c.bytes_checked["audit"] > 0);
}

#[test]
fn too_short_secrets_are_refused() {
    assert!(EgressGuardBuilder::new().add_secret(b"pw").is_err());
}

#[test]
fn blocked_chunks_do_not_become_the_tail() {
    let g = guard();
    let mut s = g.stream(EgressSite::Recording);
    assert!(s.check(b"safe prefix ").is_ok());
    assert!(s.check(SECRET).is_err());
    assert!(s.check(b"safe suffix").is_ok());
    assert_eq!(g.counters().hits["recording"], 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(256)))]

    #[test]
    fn a_secret_split_across_any_chunks_is_caught(
        before in prop::collection::vec(any::<u8>(), 0..40),
        which in 0usize..9,
        cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let g = guard();
        let mut data = before.clone();
        data.extend_from_slice(&encodings(b"")[which]);
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (data.len() + 1)).collect();
        cuts.sort_unstable();
        let mut s = g.stream(EgressSite::Client);
        let mut pos = 0;
        let mut blocked = false;
        for c in cuts.into_iter().chain(std::iter::once(data.len())) {
            if c > pos {
                blocked |= s.check(&data[pos..c]).is_err();
                pos = c;
            }
        }
        prop_assert!(blocked);
    }
}

/// The secret as a JSON string would carry it: `\/` for the slash (PHP's `json_encode`), every
/// character as `\uXXXX`, or a mix.
fn json_escaped_forms() -> Vec<Vec<u8>> {
    let s = String::from_utf8(SECRET.to_vec()).unwrap();
    let every: String = s.chars().map(|c| format!("\\u{:04x}", c as u32)).collect();
    let mixed: String = s
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i % 2 == 0 {
                format!("\\u{:04X}", c as u32)
            } else if c == '/' {
                "\\/".to_string()
            } else {
                c.to_string()
            }
        })
        .collect();
    [s.replace('/', "\\/"), every, mixed]
        .into_iter()
        .map(|f| format!("{{\"echo\":\"{f}\"}}").into_bytes())
        .collect()
}

#[test]
fn json_escaped_secrets_are_blocked_one_shot_and_in_any_chunking() {
    let g = guard();
    for form in json_escaped_forms() {
        assert!(
            g.check(EgressSite::Client, &form).is_err(),
            "{}",
            String::from_utf8_lossy(&form)
        );
        for cut in 0..=form.len() {
            let mut s = g.stream(EgressSite::Client);
            let blocked = s.check(&form[..cut]).is_err() || s.check(&form[cut..]).is_err();
            assert!(blocked, "cut {cut}: {}", String::from_utf8_lossy(&form));
        }
        // A stream that had escapes-free traffic first still catches it.
        let mut s = g.stream(EgressSite::Client);
        s.check(b"{\"a\":\"plain text before\"}\n").unwrap();
        assert!(s.check(&form).is_err());
    }
    // Escapes that spell something else pass.
    let mut s = g.stream(EgressSite::Client);
    s.check(br#"{"a":"x\/y \u0041 \"q\""}"#).unwrap();
    g.check(EgressSite::Client, br#"{"a":"x\/y \u0041"}"#)
        .unwrap();
}

/// A 40-character API key, as the attacker's ssh `cat` / HTTP echo carried it.
const API_KEY: &str = "gh-Kx9vQ2mTz7LpW4rB8nY1cF6hJ3sD5aE0uVwX";

fn key_guard() -> gatehouse_masking::SecretEgressGuard {
    let mut b = EgressGuardBuilder::new();
    b.add_secret(API_KEY.as_bytes()).unwrap();
    b.build().unwrap()
}

fn utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

fn utf16be(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_be_bytes).collect()
}

fn rev(s: &str) -> String {
    s.chars().rev().collect()
}

/// The forms that passed the guard before: UTF-16 (Python's `'key='+k).encode('utf-16')`, BOM
/// and little endian; big endian with and without a BOM), the key reversed, and the key's first
/// and last 25 characters with other text between.
fn evasions() -> Vec<(&'static str, Vec<u8>)> {
    let line = format!("key={API_KEY}\n");
    let mut bom_le = vec![0xff, 0xfe];
    bom_le.extend(utf16le(&line));
    let mut bom_be = vec![0xfe, 0xff];
    bom_be.extend(utf16be(&line));
    let head = &API_KEY[..25];
    let tail = &API_KEY[API_KEY.len() - 25..];
    vec![
        ("utf-16 with BOM", bom_le),
        ("utf-16le", utf16le(&line)),
        ("utf-16be with BOM", bom_be),
        ("utf-16be", utf16be(&line)),
        ("reversed", format!("x={}\n", rev(API_KEY)).into_bytes()),
        ("reversed utf-16le", utf16le(&rev(API_KEY))),
        (
            "first and last 25",
            format!("a={head}\nb={tail}\n").into_bytes(),
        ),
        ("first 16", format!("p={}", &API_KEY[..16]).into_bytes()),
        ("middle 16 in utf-16be", utf16be(&API_KEY[12..28])),
        ("reversed middle 16", rev(&API_KEY[7..23]).into_bytes()),
        (
            "hex of 16",
            hex::encode(&API_KEY.as_bytes()[20..36]).into_bytes(),
        ),
        ("base64 of 16", {
            use base64::engine::general_purpose::STANDARD;
            STANDARD
                .encode(format!("p={}", &API_KEY[3..19]))
                .into_bytes()
        }),
    ]
}

#[test]
fn utf16_reversed_and_partial_keys_are_blocked() {
    let g = key_guard();
    for (what, data) in evasions() {
        let err = g.check(EgressSite::Client, &data);
        assert!(err.is_err(), "{what} passed the guard");
        // And in any two-chunk split of a stream.
        for cut in 0..=data.len() {
            let mut s = g.stream(EgressSite::Client);
            let blocked = s.check(&data[..cut]).is_err() || s.check(&data[cut..]).is_err();
            assert!(blocked, "{what} passed split at {cut}");
        }
    }
    // A whole key is one hit, not one per window it holds.
    let before = g.counters().hits["client"];
    g.check(EgressSite::Client, format!("k={API_KEY}").as_bytes())
        .unwrap_err();
    assert_eq!(g.counters().hits["client"], before + 1);
}

#[test]
fn pieces_shorter_than_the_window_pass() {
    let g = key_guard();
    // Fifteen characters of the key, in any form, are below the window and let through:
    // the documented limit of the guard.
    let piece = &API_KEY[5..20];
    for data in [
        piece.as_bytes().to_vec(),
        utf16le(piece),
        rev(piece).into_bytes(),
    ] {
        g.check(EgressSite::Client, &data).unwrap();
    }
    g.check(
        EgressSite::Client,
        "ordinary text, with a gh- prefix and Kx9 bits".as_bytes(),
    )
    .unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(256)))]

    /// Any window of at least 16 characters of the key, forwards or backwards, plain or UTF-16
    /// either way round, amid arbitrary bytes and cut into arbitrary chunks, is caught.
    #[test]
    fn any_window_of_the_key_in_any_form_is_caught(
        start in 0usize..=24,
        len in 16usize..=40,
        backwards in any::<bool>(),
        form in 0usize..3,
        before in prop::collection::vec(any::<u8>(), 0..20),
        after in prop::collection::vec(any::<u8>(), 0..20),
        cuts in prop::collection::vec(any::<usize>(), 0..5),
    ) {
        let end = (start + len).min(API_KEY.len());
        let mut piece = API_KEY[start..end].to_string();
        prop_assume!(piece.len() >= 16);
        if backwards {
            piece = rev(&piece);
        }
        let encoded = match form {
            0 => piece.into_bytes(),
            1 => utf16le(&piece),
            _ => utf16be(&piece),
        };
        let mut data = before;
        data.extend_from_slice(&encoded);
        data.extend_from_slice(&after);
        let g = key_guard();
        prop_assert!(g.check(EgressSite::Client, &data).is_err());
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (data.len() + 1)).collect();
        cuts.sort_unstable();
        let mut s = g.stream(EgressSite::Client);
        let mut pos = 0;
        let mut blocked = false;
        for c in cuts.into_iter().chain(std::iter::once(data.len())) {
            if c > pos {
                blocked |= s.check(&data[pos..c]).is_err();
                pos = c;
            }
        }
        prop_assert!(blocked);
    }
}
