//! The gateway's side of upstream password authentication: a sans-IO SCRAM-SHA-256 client (with
//! `-PLUS` channel binding `tls-server-end-point`) and the md5 response.
//!
//! The server's final signature is verified: a server that cannot prove it knows the password is
//! treated as an impostor and the login fails.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = hmac::Hmac<Sha256>;

/// Upper bound on the iteration count a server may ask for (protects the gateway's CPU from a
/// hostile upstream; PostgreSQL's default is 4096).
pub const MAX_ITERATIONS: u32 = 1_000_000;

/// Why a SCRAM exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScramError {
    /// A server message is not valid SCRAM syntax.
    #[error("malformed SCRAM server message")]
    Malformed,
    /// The server's nonce does not extend the client's.
    #[error("SCRAM server nonce does not extend the client nonce")]
    NonceMismatch,
    /// The iteration count is zero or above [`MAX_ITERATIONS`].
    #[error("SCRAM iteration count out of range")]
    Iterations,
    /// The server's signature does not verify: it does not know the password.
    #[error("SCRAM server signature mismatch")]
    ServerSignature,
    /// The server reported an error (`e=`).
    #[error("SCRAM server error: {0}")]
    Server(String),
}

/// How the client binds the exchange to the TLS channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelBinding {
    /// No TLS: `n,,`.
    None,
    /// TLS but the server did not offer `-PLUS`: `y,,`.
    SupportedNotUsed,
    /// `tls-server-end-point` with the hash of the server's certificate.
    TlsServerEndPoint(Vec<u8>),
}

impl ChannelBinding {
    fn gs2_header(&self) -> &'static str {
        match self {
            ChannelBinding::None => "n,,",
            ChannelBinding::SupportedNotUsed => "y,,",
            ChannelBinding::TlsServerEndPoint(_) => "p=tls-server-end-point,,",
        }
    }

    /// The SASL mechanism name to announce.
    pub fn mechanism(&self) -> &'static str {
        match self {
            ChannelBinding::TlsServerEndPoint(_) => "SCRAM-SHA-256-PLUS",
            _ => "SCRAM-SHA-256",
        }
    }
}

/// The tls-server-end-point hash of a DER certificate (RFC 5929: SHA-256 for certificates signed
/// with SHA-1, MD5 or SHA-256; certificates signed with SHA-384/512 are not distinguished here).
pub fn tls_server_end_point(cert_der: &[u8]) -> Vec<u8> {
    Sha256::digest(cert_der).to_vec()
}

/// A SCRAM-SHA-256 client exchange, driven step by step.
#[derive(Debug)]
pub struct ScramClient {
    password: Vec<u8>,
    binding: ChannelBinding,
    client_nonce: String,
    client_first_bare: String,
    server_signature: Option<Vec<u8>>,
}

impl ScramClient {
    /// Starts an exchange with a fresh random nonce.
    pub fn new(password: &str, binding: ChannelBinding) -> Self {
        let nonce: [u8; 18] = rand::random();
        Self::with_nonce(password, binding, &B64.encode(nonce))
    }

    /// Starts an exchange with a given nonce (tests).
    pub fn with_nonce(password: &str, binding: ChannelBinding, nonce: &str) -> Self {
        Self {
            password: password.as_bytes().to_vec(),
            binding,
            client_nonce: nonce.to_string(),
            client_first_bare: format!("n=,r={nonce}"),
            server_signature: None,
        }
    }

    /// The SASL mechanism to name in SASLInitialResponse.
    pub fn mechanism(&self) -> &'static str {
        self.binding.mechanism()
    }

    /// The client-first message.
    pub fn client_first(&self) -> Vec<u8> {
        format!("{}{}", self.binding.gs2_header(), self.client_first_bare).into_bytes()
    }

    /// Consumes server-first, returns client-final.
    pub fn client_final(&mut self, server_first: &[u8]) -> Result<Vec<u8>, ScramError> {
        let server_first = std::str::from_utf8(server_first).map_err(|_| ScramError::Malformed)?;
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for attr in server_first.split(',') {
            match attr.split_once('=') {
                Some(("r", v)) => nonce = Some(v),
                Some(("s", v)) => salt = Some(B64.decode(v).map_err(|_| ScramError::Malformed)?),
                Some(("i", v)) => {
                    iterations = Some(v.parse::<u32>().map_err(|_| ScramError::Malformed)?)
                }
                Some(("e", v)) => return Err(ScramError::Server(v.to_string())),
                _ => {}
            }
        }
        let (Some(nonce), Some(salt), Some(iterations)) = (nonce, salt, iterations) else {
            return Err(ScramError::Malformed);
        };
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err(ScramError::NonceMismatch);
        }
        if iterations == 0 || iterations > MAX_ITERATIONS {
            return Err(ScramError::Iterations);
        }
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(&self.password, &salt, iterations, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key = Sha256::digest(&client_key);
        let mut cbind = self.binding.gs2_header().as_bytes().to_vec();
        if let ChannelBinding::TlsServerEndPoint(hash) = &self.binding {
            cbind.extend_from_slice(hash);
        }
        let without_proof = format!("c={},r={}", B64.encode(&cbind), nonce);
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, server_first, without_proof
        );
        let client_signature = hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(client_signature.iter())
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = hmac(&salted, b"Server Key");
        self.server_signature = Some(hmac(&server_key, auth_message.as_bytes()));
        Ok(format!("{},p={}", without_proof, B64.encode(proof)).into_bytes())
    }

    /// Verifies server-final.
    pub fn verify_server_final(&self, server_final: &[u8]) -> Result<(), ScramError> {
        let text = std::str::from_utf8(server_final).map_err(|_| ScramError::Malformed)?;
        if let Some(e) = text.strip_prefix("e=") {
            return Err(ScramError::Server(e.to_string()));
        }
        let v = text
            .split(',')
            .find_map(|a| a.strip_prefix("v="))
            .ok_or(ScramError::Malformed)?;
        let got = B64.decode(v).map_err(|_| ScramError::Malformed)?;
        let expected = self
            .server_signature
            .as_ref()
            .ok_or(ScramError::Malformed)?;
        if subtle_eq(&got, expected) {
            Ok(())
        } else {
            Err(ScramError::ServerSignature)
        }
    }
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so this cannot fail; an empty MAC would fail verification.
    match HmacSha256::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

fn subtle_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// PostgreSQL's md5 password response: `"md5" + md5(md5(password + user) + salt)`.
pub fn md5_response(user: &str, password: &str, salt: [u8; 4]) -> String {
    use md5::Digest as _;
    let inner = md5::Md5::new()
        .chain_update(password.as_bytes())
        .chain_update(user.as_bytes())
        .finalize();
    let inner_hex = hex_lower(&inner);
    let outer = md5::Md5::new()
        .chain_update(inner_hex.as_bytes())
        .chain_update(salt)
        .finalize();
    format!("md5{}", hex_lower(&outer))
}

fn hex_lower(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7677 test vector (user "user", password "pencil"). PostgreSQL ignores the user name,
    // so the client-first-bare differs; we recompute the vector's flow with `n=user` semantics
    // by checking our own server-side computation instead.
    fn server_side(
        password: &str,
        salt: &[u8],
        iters: u32,
        auth_message: &str,
    ) -> (Vec<u8>, Vec<u8>) {
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iters, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key = Sha256::digest(&client_key).to_vec();
        let server_key = hmac(&salted, b"Server Key");
        (stored_key, hmac(&server_key, auth_message.as_bytes()))
    }

    #[test]
    fn full_exchange_verifies_both_ways() {
        let mut c = ScramClient::with_nonce("pencil", ChannelBinding::None, "rOprNGfwEbeRWgbNEkqO");
        assert_eq!(c.client_first(), b"n,,n=,r=rOprNGfwEbeRWgbNEkqO");
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let final_msg =
            String::from_utf8(c.client_final(server_first.as_bytes()).unwrap()).unwrap();
        let (without_proof, proof_b64) = final_msg.rsplit_once(",p=").unwrap();
        assert_eq!(
            without_proof,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
        );
        let auth = format!("n=,r=rOprNGfwEbeRWgbNEkqO,{server_first},{without_proof}");
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let (stored_key, server_sig) = server_side("pencil", &salt, 4096, &auth);
        // Server-side proof check: H(proof XOR HMAC(StoredKey, auth)) == StoredKey.
        let proof = B64.decode(proof_b64).unwrap();
        let sig = hmac(&stored_key, auth.as_bytes());
        let client_key: Vec<u8> = proof.iter().zip(sig).map(|(a, b)| a ^ b).collect();
        assert_eq!(Sha256::digest(&client_key).to_vec(), stored_key);
        let server_final = format!("v={}", B64.encode(&server_sig));
        assert!(c.verify_server_final(server_final.as_bytes()).is_ok());
        let forged = format!("v={}", B64.encode([0u8; 32]));
        assert_eq!(
            c.verify_server_final(forged.as_bytes()),
            Err(ScramError::ServerSignature)
        );
    }

    #[test]
    fn channel_binding_goes_into_the_c_attribute() {
        let mut c = ScramClient::with_nonce(
            "pw",
            ChannelBinding::TlsServerEndPoint(vec![1, 2, 3]),
            "abc",
        );
        assert_eq!(c.mechanism(), "SCRAM-SHA-256-PLUS");
        assert!(
            c.client_first()
                .starts_with(b"p=tls-server-end-point,,n=,r=abc")
        );
        let out = c.client_final(b"r=abcdef,s=AAAA,i=1").unwrap();
        let expected_c = B64.encode(b"p=tls-server-end-point,,\x01\x02\x03");
        assert!(
            String::from_utf8(out)
                .unwrap()
                .starts_with(&format!("c={expected_c},r=abcdef"))
        );
    }

    #[test]
    fn hostile_server_first_is_refused() {
        let mut c = ScramClient::with_nonce("pw", ChannelBinding::None, "abc");
        assert_eq!(
            c.client_final(b"r=xyz,s=AAAA,i=1"),
            Err(ScramError::NonceMismatch)
        );
        assert_eq!(
            c.client_final(b"r=abc,s=AAAA,i=1"),
            Err(ScramError::NonceMismatch)
        );
        assert_eq!(
            c.client_final(b"r=abcd,s=AAAA,i=0"),
            Err(ScramError::Iterations)
        );
        assert_eq!(
            c.client_final(b"r=abcd,s=AAAA,i=99999999"),
            Err(ScramError::Iterations)
        );
        assert_eq!(
            c.client_final(b"r=abcd,s=!!!,i=1"),
            Err(ScramError::Malformed)
        );
        assert_eq!(c.client_final(b"\xff"), Err(ScramError::Malformed));
        assert!(matches!(
            c.client_final(b"e=invalid-proof"),
            Err(ScramError::Server(_))
        ));
        // verify before client_final: no expected signature, never Ok.
        assert!(c.verify_server_final(b"v=AAAA").is_err());
    }

    #[test]
    fn md5_matches_postgres() {
        // Computed independently with Python's hashlib:
        // md5(md5('secretalice').hexdigest().encode() + b'\x01\x02\x03\x04').hexdigest()
        let r = md5_response("alice", "secret", [1, 2, 3, 4]);
        assert_eq!(r, "md598a0412b9c31436fc53776e863350083");
        assert_ne!(r, md5_response("alice", "secret", [1, 2, 3, 5]));
    }
}
