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
