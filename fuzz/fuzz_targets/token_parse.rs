#![no_main]
//! Token parsing on hostile input: the JWT parser, the JWKS parser and the opaque key formats must
//! never panic, whatever the bytes.

use std::sync::OnceLock;
use std::time::Duration;

use gatehouse_identity::jwks::KeySet;
use gatehouse_identity::{
    DEFAULT_MAX_TOKEN_BYTES, GatewayKeyIssuer, ServiceAccountKeys, UnverifiedJwt,
    generate_service_account_key,
};

fn stores() -> &'static (ServiceAccountKeys, GatewayKeyIssuer) {
    static STORES: OnceLock<(ServiceAccountKeys, GatewayKeyIssuer)> = OnceLock::new();
    STORES.get_or_init(|| {
        let sa = generate_service_account_key("fuzz", vec![], None);
        (
            ServiceAccountKeys::new(vec![sa.config]).unwrap(),
            GatewayKeyIssuer::new(Duration::from_secs(60)),
        )
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = KeySet::from_jwks_json(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(jwt) = UnverifiedJwt::parse(text, DEFAULT_MAX_TOKEN_BYTES) {
        // Whatever parsed must describe the input it came from.
        assert!(text.starts_with(jwt.signing_input));
        assert!(text.ends_with(jwt.signature_b64));
        let _ = jwt.issuer();
        for path in ["groups", "realm_access.roles", "a.b.c"] {
            let _ = gatehouse_identity::claims::groups(&jwt.claims, path);
        }
        let _ = gatehouse_identity::claims::numeric_date(&jwt.claims, "exp");
    }
    let (service_accounts, gateway) = stores();
    assert!(service_accounts.verify(text).is_err());
    assert!(gateway.verify(text).is_err());
});
