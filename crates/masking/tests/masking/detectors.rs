//! Each detector on positives, look-alikes and boundaries; strategies; idempotence; PEM cap.

use gatehouse_masking::{
    DetectorConfig, DetectorSetting, DictionaryConfig, MaskingConfig, MaskingEngine, ProfileConfig,
    RegexConfig, Strategy,
};

fn engine() -> MaskingEngine {
    MaskingEngine::with_defaults().unwrap()
}

fn mask(s: &str) -> String {
    let (out, _) = engine().mask_bytes(s.as_bytes());
    String::from_utf8(out.into_owned()).unwrap()
}

fn rules(s: &str) -> Vec<String> {
    engine()
        .mask_bytes(s.as_bytes())
        .1
        .into_iter()
        .map(|f| f.rule)
        .collect()
}

#[test]
fn positives_are_masked_with_their_rule() {
    let cases = [
        ("write to jane.doe+x@mail.example.com now", "email"),
        ("card 4111 1111 1111 1111.", "payment_card"),
        ("card 4111-1111-1111-1111", "payment_card"),
        ("card:4111111111111111", "payment_card"),
        ("amex 378282246310005", "payment_card"),
        ("iban DE89 3704 0044 0532 0130 00", "iban"),
        ("iban GB82WEST12345698765432", "iban"),
        ("ssn 536-22-1234", "us_ssn"),
        ("call +1 415 555 2671", "phone"),
        ("call (415) 555-2671", "phone"),
        ("call 415.555.2671", "phone"),
        ("call +442079460958", "phone"),
        ("call 020 7946 0958", "phone"),
        (
            "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            "jwt",
        ),
        ("id AKIAIOSFODNN7EXAMPLE end", "aws_access_key_id"),
        (
            "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "aws_secret_access_key",
        ),
        ("ghp_16C7e42F292c6912E7710c838347Ae178B4a", "github_token"),
        ("glpat-xXx9aB3cD4eF5gH6iJ7k", "gitlab_token"),
        ("xoxp-1234567890-abcdefghij", "slack_token"),
        (
            "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
            "slack_token",
        ),
        ("sk_live_4eC39HqLyjWDarjtT1zdp7dc", "stripe_key"),
        (
            "key=AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe",
            "google_api_key",
        ),
        ("postgres://app:pa55w0rd@db:5432/x", "url_password"),
        ("password=hunter2", "secret_assignment"),
        ("\"api_key\": \"abc123\"", "secret_assignment"),
        ("DB_PASSWORD='S3cr3t!'", "secret_assignment"),
        ("clientSecret: xyz", "secret_assignment"),
        ("Authorization: Basic dXNlcjpwYXNz", "secret_assignment"),
    ];
    for (input, rule) in cases {
        assert_eq!(
            rules(input),
            vec![rule.to_string()],
            "{input:?} -> {:?}",
            mask(input)
        );
    }
}

#[test]
fn look_alikes_are_left_alone() {
    let cases = [
        "version 1.2.3 and 10.0.19041.1234",
        "card 4111 1111 1111 1112 fails Luhn",
        "uuid 550e8400-e29b-41d4-a716-446655440000",
        "sha 9fceb02d0ae598e95dc970b74767f19372d61af8 and e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "2026-11-23T16:29:03.123Z took 00:14:32",
        "epoch 1700000000 and 1700000000123 ms",
        "ip 192.168.100.200:443 and 10.0.0.1",
        "ssn 000-12-3456 666-45-1234 900-12-3456 123-00-4567 123-45-0000",
        "iban DE89370400440532013001 fails mod-97",
        "order 1234-5678-9012 isbn 978-3-16-148410-0",
        "pi 3.14159265358979 big 299792458",
        "PWD=/home/deploy OLDPWD=/srv max_tokens=4096 token_count=12",
        "password_changed=true password: null secret = [secret]",
        "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----",
        "user@localhost and root@db-1",
        "AKIAIOSFODNN7EXAMPLEX is too long and xAKIAIOSFODNN7EXAMPLE glued",
        "https://example.com:8443/path?a=b",
    ];
    for input in cases {
        assert_eq!(mask(input), input, "{input:?} findings {:?}", rules(input));
    }
}

#[test]
fn tokens_and_boundaries() {
    assert_eq!(mask("a jane@example.com."), "a [email].");
    assert_eq!(mask("x=4111111111111111,y"), "x=[card],y");
    assert_eq!(
        mask("password=\"a b c\" next"),
        "password=\"[secret]\" next"
    );
    assert_eq!(
        mask("postgres://u:pw123456@h/db"),
        "postgres://u:[password]@h/db"
    );
    assert_eq!(mask("1 4111 1111 1111 1111 2"), "1 [card] 2");
}

#[test]
fn findings_carry_rule_offset_length_never_the_value() {
    let input = b"id 536-22-1234 mail a@b.co";
    let (out, findings) = engine().mask_bytes(input);
    assert_eq!(&*out, b"id [ssn] mail [email]");
    assert_eq!(findings.len(), 2);
    assert_eq!((findings[0].offset, findings[0].length), (3, 11));
    assert_eq!((findings[1].offset, findings[1].length), (20, 6));
    let json = serde_json::to_string(&findings).unwrap();
    assert!(
        !json.contains("536-22-1234") && !json.contains("a@b.co"),
        "{json}"
    );
}

#[test]
fn clean_input_is_borrowed_not_copied() {
    let input = b"nothing to see here, just prose and 42 numbers.";
    let (out, findings) = engine().mask_bytes(input);
    assert!(matches!(out, std::borrow::Cow::Borrowed(_)));
    assert!(findings.is_empty());
}

#[test]
fn pem_block_is_masked_whole_and_fails_closed_at_the_cap() {
    let key = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA0Z3VS5JJcds3xfn\nygWyF8PbnGy0AHB7MhgHcTz6sE2I2yPB\n-----END RSA PRIVATE KEY-----";
    assert_eq!(
        mask(&format!("before\n{key}\nafter")),
        "before\n[private-key]\nafter"
    );
    // No END: masked from BEGIN to the cap, not one byte of the body leaks.
    let body: String = (0..400)
        .map(|i| format!("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo{i:04}\n"))
        .collect();
    let open = format!("x\n-----BEGIN OPENSSH PRIVATE KEY-----\n{body}");
    let out = mask(&open);
    assert_eq!(out, "x\n[private-key]");
    // With a small cap: masked to the cap, scanning resumes after it.
    let cfg = profile_with(|p| {
        p.detectors.insert(
            "private_key".into(),
            DetectorSetting::Settings(DetectorConfig {
                enabled: true,
                strategy: None,
                max_len: Some(100),
            }),
        );
    });
    let (out, f) = cfg.mask_bytes(open.as_bytes());
    let out = String::from_utf8(out.into_owned()).unwrap();
    assert!(out.starts_with("x\n[private-key]"), "{out}");
    assert_eq!(f[0].length, 100);
    assert_eq!(out.len(), open.len() - 100 + "[private-key]".len());
}

fn profile_with(f: impl FnOnce(&mut ProfileConfig)) -> MaskingEngine {
    let mut p = ProfileConfig::default();
    f(&mut p);
    let mut c = MaskingConfig::default();
    c.profiles.insert("default".into(), p);
    MaskingEngine::new(&c).unwrap()
}

#[test]
fn switches_strategies_dictionaries_and_regexes() {
    let e = profile_with(|p| {
        p.detectors
            .insert("phone".into(), DetectorSetting::Switch(false));
        p.detectors.insert(
            "payment_card".into(),
            DetectorSetting::Settings(DetectorConfig {
                enabled: true,
                strategy: Some(Strategy::Partial),
                max_len: None,
            }),
        );
        p.detectors.insert(
            "email".into(),
            DetectorSetting::Settings(DetectorConfig {
                enabled: true,
                strategy: Some(Strategy::KeyedHash),
                max_len: None,
            }),
        );
        p.hmac_key = Some("test key".into());
        p.dictionaries.push(DictionaryConfig {
            name: "codename".into(),
            words: vec!["Bluebird".into(), "night jar".into()],
            case_insensitive: true,
            whole_words: true,
            strategy: Some(Strategy::Placeholder("<hidden>".into())),
        });
        p.regexes.push(RegexConfig {
            name: "employee".into(),
            pattern: "EMP-[0-9]{6}".into(),
            max_len: None,
            strategy: None,
        });
    });
    let input = "call +1 415 555 2671, card 4111111111111111, a@b.co twice a@b.co, project bluebird (not bluebirds), NIGHT JAR, EMP-123456";
    let (out, f) = e.mask_bytes(input.as_bytes());
    let out = String::from_utf8(out.into_owned()).unwrap();
    assert!(out.contains("+1 415 555 2671"), "phone switched off: {out}");
    assert!(out.contains("************1111"), "{out}");
    let tokens: Vec<&str> = out.matches("[email#").collect();
    assert_eq!(tokens.len(), 2);
    let first = &out[out.find("[email#").unwrap()..][..24];
    assert_eq!(
        out.matches(first).count(),
        2,
        "keyed hash is joinable: {out}"
    );
    assert!(
        out.contains("project <hidden> (not bluebirds), <hidden>"),
        "{out}"
    );
    assert!(out.contains("[employee]"), "{out}");
    let names: Vec<_> = f.iter().map(|f| f.rule.as_str()).collect();
    assert!(
        names.contains(&"dictionary:codename") && names.contains(&"regex:employee"),
        "{names:?}"
    );
}

#[test]
fn bad_configs_are_refused_with_a_reason() {
    let build = |f: fn(&mut ProfileConfig)| {
        let mut p = ProfileConfig::default();
        f(&mut p);
        let mut c = MaskingConfig::default();
        c.profiles.insert("p".into(), p);
        MaskingEngine::new(&c).unwrap_err().to_string()
    };
    assert!(
        build(|p| {
            p.detectors
                .insert("nope".into(), DetectorSetting::Switch(true));
        })
        .contains("unknown detector")
    );
    assert!(build(|p| p.strategy = Strategy::KeyedHash).contains("hmac_key"));
    assert!(build(|p| p.strategy = Strategy::Placeholder("x@y".into())).contains("placeholder"));
    assert!(
        build(|p| p.regexes.push(RegexConfig {
            name: "r".into(),
            pattern: "(".into(),
            max_len: None,
            strategy: None
        }))
        .contains("does not compile")
    );
    assert!(
        build(|p| p.json_paths.push(gatehouse_masking::JsonPathRule {
            path: "users".into(),
            strategy: None
        }))
        .contains("JSON path")
    );
    let c = MaskingConfig {
        default_profile: Some("missing".into()),
        ..MaskingConfig::default()
    };
    assert!(
        MaskingEngine::new(&c)
            .unwrap_err()
            .to_string()
            .contains("missing")
    );
}

#[test]
fn config_loads_from_toml_shaped_json() {
    // The binary loads TOML; serde_json exercises the same derive (untagged switches, strategies).
    let cfg: MaskingConfig = serde_json::from_str(
        r#"{"default_profile":"strict","profiles":{"strict":{"strategy":{"placeholder":"***"},
            "detectors":{"phone":false,"email":{"strategy":"partial"}},
            "columns":[{"pattern":"*password*"}],"json_paths":[{"path":"$..token"}]}}}"#,
    )
    .unwrap();
    let e = MaskingEngine::new(&cfg).unwrap();
    assert!(e.has_profile("strict") && e.has_profile("default"));
    let (out, _) = e.mask_bytes(b"jane@example.com 415-555-2671 536-22-1234");
    assert_eq!(&*out, b"************.com 415-555-2671 ***");
}

#[test]
fn masking_is_idempotent_on_every_strategy() {
    for strategy in [
        Strategy::Redact,
        Strategy::Partial,
        Strategy::KeyedHash,
        Strategy::Placeholder("XX".into()),
    ] {
        let e = profile_with(|p| {
            p.strategy = strategy.clone();
            p.hmac_key = Some("k".into());
        });
        let input = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/corpus/logs.txt"
        ))
        .unwrap();
        let (once, _) = e.mask_bytes(input.as_bytes());
        let (twice, f) = e.mask_bytes(&once);
        assert_eq!(
            String::from_utf8_lossy(&once),
            String::from_utf8_lossy(&twice),
            "{strategy:?} {f:?}"
        );
    }
}

#[test]
fn fuzz_found_idempotence_cases_stay_fixed() {
    // Each of these once changed on a second pass: a boundary byte next to a token read
    // differently from the byte the token replaced.
    let cases = [
        "+14155552671-+22111111@",
        "call +1 415 555 2671-+2211111",
        "jane.doe@example.com(415) 555-2671",
        "jane.doe@example.com.xoxb-123456789012-abcdefghijkl",
        "DE89 3704 0044 0532 0130 00-jane.doe@example.com+1 415 555 2671",
        "xoxb-123456789012-abcdefghijkl-----BEGIN PRIVATE KEY-----\nabc",
        "1 4111 1111 1111 1111 5057 7 057 7 7 028 7 5\0[",
        "Q.PP://:glpat-xXx9aB3cD4eF5gH6iJ7k@PPPP,.",
        "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 4111 1111 1111 1111 19 20",
    ];
    let e = engine();
    for input in cases {
        let (once, _) = e.mask_bytes(input.as_bytes());
        let (twice, _) = e.mask_bytes(&once);
        assert_eq!(
            String::from_utf8_lossy(&once),
            String::from_utf8_lossy(&twice),
            "{input:?}"
        );
    }
    // The card inside a long run of small numbers is still found (six-group window).
    assert!(mask(cases[8]).contains("[card]"), "{}", mask(cases[8]));
}
