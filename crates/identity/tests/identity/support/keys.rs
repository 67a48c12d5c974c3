//! Signing keys generated per test process with the `openssl` CLI, and a builder for tokens with
//! any header and claims (including the broken ones the refusal tests need).

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};

/// A private key with its public JWK.
pub struct TestKey {
    pub kid: String,
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    pub public_jwk: Value,
    /// The public key as PEM text (the HMAC secret of the key-confusion attack).
    pub public_pem: String,
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let mut cmd = Command::new("openssl");
    cmd.args(args);
    let out = gatehouse_testkit::process::run_with_timeout(cmd, std::time::Duration::from_secs(60))
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn generate(dir: &Path, kind: &str, kid: &str, alg: Algorithm) -> TestKey {
    let private = dir.join(format!("{kid}.pem"));
    let private_s = private.to_str().unwrap();
    match kind {
        "rsa" => openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            private_s,
        ]),
        "ec" => openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            private_s,
        ]),
        other => panic!("unknown key kind {other}"),
    };
    let pem = std::fs::read(&private).unwrap();
    let public_pem = String::from_utf8(openssl(&["pkey", "-in", private_s, "-pubout"])).unwrap();
    let encoding = match kind {
        "rsa" => EncodingKey::from_rsa_pem(&pem).unwrap(),
        _ => EncodingKey::from_ec_pem(&pem).unwrap(),
    };
    let jwk = Jwk::from_encoding_key(&encoding, alg).unwrap();
    let mut public_jwk = serde_json::to_value(&jwk).unwrap();
    let obj = public_jwk.as_object_mut().unwrap();
    obj.insert("kid".into(), json!(kid));
    obj.insert("use".into(), json!("sig"));
    TestKey {
        kid: kid.to_string(),
        alg,
        encoding,
        public_jwk,
        public_pem,
    }
}

struct Keys {
    _dir: tempfile::TempDir,
    rsa: TestKey,
    rsa_other: TestKey,
    ec: TestKey,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let rsa = generate(dir.path(), "rsa", "rsa-1", Algorithm::RS256);
        let rsa_other = generate(dir.path(), "rsa", "rsa-2", Algorithm::RS256);
        let ec = generate(dir.path(), "ec", "ec-1", Algorithm::ES256);
        Keys {
            _dir: dir,
            rsa,
            rsa_other,
            ec,
        }
    })
}

/// The RSA key the test issuer publishes.
pub fn rsa() -> &'static TestKey {
    &keys().rsa
}

/// An RSA key nobody publishes (for forged signatures and unknown kids).
pub fn rsa_unpublished() -> &'static TestKey {
    &keys().rsa_other
}

/// The P-256 key the test issuer publishes.
pub fn ec() -> &'static TestKey {
    &keys().ec
}

/// A JWKS document with the public halves of `keys`.
pub fn jwks(keys: &[&TestKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.public_jwk.clone()).collect::<Vec<_>>()}).to_string()
}

pub const ISSUER: &str = "https://issuer.test";
pub const AUDIENCE: &str = "gatehouse";

pub fn now() -> i64 {
    gatehouse_core::now().unix_timestamp()
}

/// Claims of a valid access token from [`ISSUER`].
pub fn valid_claims() -> Value {
    let now = now();
    json!({
        "iss": ISSUER,
        "sub": "agent-7",
        "aud": AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "client_id": "agent",
        "groups": ["dba", "oncall"],
        "realm_access": {"roles": ["reader"]},
        "tenant": "acme",
    })
}

/// Header of a valid access token signed by `key`.
pub fn valid_header(key: &TestKey) -> Value {
    let alg = serde_json::to_value(key.alg).unwrap();
    json!({"alg": alg, "typ": "at+jwt", "kid": key.kid})
}

fn b64_json(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

/// Signs `header.claims` with `key` using `alg` (whatever the header claims).
pub fn sign_raw(header: &Value, claims: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    let input = format!("{}.{}", b64_json(header), b64_json(claims));
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), key, alg).unwrap();
    format!("{input}.{sig}")
}

/// A token with `header` and `claims`, correctly signed by `key`.
pub fn mint(key: &TestKey, header: &Value, claims: &Value) -> String {
    sign_raw(header, claims, &key.encoding, key.alg)
}

/// A valid access token signed by the published RSA key.
pub fn valid_token() -> String {
    mint(rsa(), &valid_header(rsa()), &valid_claims())
}

/// `header.payload.` without a signature.
pub fn unsigned(header: &Value, claims: &Value) -> String {
    format!("{}.{}.", b64_json(header), b64_json(claims))
}
