//! The shape shared by service-account keys and gateway keys: `<prefix><id>_<secret>`, where the
//! prefix says what the key is (and lets secret scanners find leaked ones), the id is public and
//! indexes the store, and only the SHA-256 of the 256-bit random secret is ever stored.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// Hex characters in a key id.
pub(crate) const ID_LEN: usize = 16;
/// base64url characters of a 32-byte secret.
pub(crate) const SECRET_LEN: usize = 43;

/// The id and secret halves of a presented key.
pub(crate) struct OpaqueKey<'a> {
    pub(crate) id: &'a str,
    pub(crate) secret: &'a str,
}

/// Splits `text` if it has exactly the shape `<prefix><16 hex>_<43 base64url>`.
pub(crate) fn parse<'a>(prefix: &str, text: &'a str) -> Option<OpaqueKey<'a>> {
    let rest = text.strip_prefix(prefix)?;
    if rest.len() != ID_LEN + 1 + SECRET_LEN {
        return None;
    }
    let id = rest.get(..ID_LEN)?;
    let separator = rest.get(ID_LEN..=ID_LEN)?;
    let secret = rest.get(ID_LEN + 1..)?;
    let id_ok = id
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let secret_ok = secret
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (id_ok && separator == "_" && secret_ok).then_some(OpaqueKey { id, secret })
}

/// A fresh key: (full key text, id, SHA-256 of the secret).
pub(crate) fn generate(prefix: &str) -> (String, String, [u8; 32]) {
    let mut rng = rand::rng();
    let mut id_bytes = [0u8; ID_LEN / 2];
    rng.fill_bytes(&mut id_bytes);
    let mut secret_bytes = [0u8; 32];
    rng.fill_bytes(&mut secret_bytes);
    let id = hex::encode(id_bytes);
    let secret = URL_SAFE_NO_PAD.encode(secret_bytes);
    let hash = hash_secret(&secret);
    (format!("{prefix}{id}_{secret}"), id, hash)
}

/// SHA-256 of the secret half. A fast hash is right here: the secret is 256 random bits, so
/// there is nothing for a slow password hash to protect.
pub(crate) fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Constant-time comparison of two digests.
pub(crate) fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_hash_back() {
        let (key, id, hash) = generate("gatehouse_sa_");
        assert!(key.len() < 100);
        let parsed = parse("gatehouse_sa_", &key).unwrap();
        assert_eq!(parsed.id, id);
        assert!(digests_equal(&hash_secret(parsed.secret), &hash));
        assert!(parse("gatehouse_gk_", &key).is_none());
        assert!(parse("gatehouse_sa_", &key[..key.len() - 1]).is_none());
        let mut wrong_sep = key.clone().into_bytes();
        wrong_sep["gatehouse_sa_".len() + ID_LEN] = b'-';
        assert!(parse("gatehouse_sa_", std::str::from_utf8(&wrong_sep).unwrap()).is_none());
        assert!(parse("gatehouse_sa_", "gatehouse_sa_ééé").is_none());
    }
}
