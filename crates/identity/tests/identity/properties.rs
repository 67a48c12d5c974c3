//! Properties: random bytes and random mutations of a valid token never panic and never verify.

use gatehouse_identity::{JwksSource, OidcAuthenticator, OidcProviderConfig, UnverifiedJwt};
use proptest::prelude::*;

use crate::support::keys::{AUDIENCE, ISSUER, jwks, rsa, valid_token};

fn verifier() -> OidcAuthenticator {
    let mut config = OidcProviderConfig::new(ISSUER, AUDIENCE);
    config.jwks = JwksSource::Inline {
        jwks: jwks(&[rsa()]),
    };
    OidcAuthenticator::new(vec![config]).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn random_bytes_never_verify(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let _ = UnverifiedJwt::parse(&text, 16 * 1024);
        let v = verifier();
        prop_assert!(runtime().block_on(v.verify(&text)).is_err());
    }

    #[test]
    fn random_jwt_shaped_text_never_verifies(
        header in "eyJ[A-Za-z0-9_-]{0,80}",
        payload in "[A-Za-z0-9_-]{0,200}",
        signature in "[A-Za-z0-9_-]{0,400}",
    ) {
        let v = verifier();
        let token = format!("{header}.{payload}.{signature}");
        prop_assert!(runtime().block_on(v.verify(&token)).is_err());
    }

    #[test]
    fn mutations_of_a_valid_token_never_verify(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6)
    ) {
        let token = valid_token();
        let mut bytes = token.clone().into_bytes();
        for (index, byte, op) in edits {
            match op {
                0 if !bytes.is_empty() => { let i = index.index(bytes.len()); bytes[i] = byte; }
                1 => { let i = index.index(bytes.len() + 1); bytes.insert(i, byte); }
                _ if !bytes.is_empty() => { let i = index.index(bytes.len()); bytes.remove(i); }
                _ => {}
            }
        }
        let mutated = String::from_utf8_lossy(&bytes).into_owned();
        prop_assume!(mutated != token);
        let v = verifier();
        prop_assert!(runtime().block_on(v.verify(&mutated)).is_err());
    }
}
