//! Signed statements about a chain: checkpoints (log, sequence, head hash, time) and retention
//! cuts (where the retained chain starts), signed with ed25519.
//!
//! A checkpoint is both a record inside the chain (so later hashes cover it) and a standalone
//! document pushed to witnesses (so that cutting off a whole tail of segments is detectable).
//! A **seal** is the checkpoint a log ends with when it is closed on purpose; its signature is over
//! a different message (`gatehouse-audit-seal-v1`), so a checkpoint cannot pass for a seal.
//! The signature covers a fixed text message built from the fields, never a JSON serialisation.
//! Since format 2 (`"format":2`) that message names every field of the checkpoint or seal,
//! `key_id` included; the verifier also requires the record in the chain to be exactly the
//! canonical encoding of those fields, so no byte of a checkpoint or seal record is unsigned.

use std::path::Path;

use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::RecorderError;

/// Signs checkpoints and retention cuts for one gateway instance.
#[derive(Clone)]
pub struct CheckpointSigner {
    key: SigningKey,
    key_id: String,
}

impl std::fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointSigner")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// The id of a verifying key: hex of the first 8 bytes of SHA-256 of the raw public key.
pub fn key_id(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    hex::encode(digest.get(..8).unwrap_or_default())
}

impl CheckpointSigner {
    /// A signer from a 32-byte ed25519 seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let key = SigningKey::from_bytes(seed);
        let key_id = key_id(&key.verifying_key());
        Self { key, key_id }
    }

    /// A fresh random key (from the operating system's generator).
    pub fn generate() -> Result<Self, RecorderError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| RecorderError::Key(e.to_string()))?;
        Ok(Self::from_seed(&seed))
    }

    /// Loads the seed (64 hex digits) from `path`, or creates the file with a fresh key (mode
    /// 0600) when it does not exist. An existing key file that its group or others may read or
    /// write is refused: whoever holds the key can sign checkpoints (see `docs/audit-schema.md`).
    pub fn load_or_create(path: &Path) -> Result<Self, RecorderError> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                use std::os::unix::fs::PermissionsExt as _;
                let mode = std::fs::metadata(path)
                    .map_err(|e| RecorderError::io(format!("stat {}", path.display()), e))?
                    .permissions()
                    .mode();
                if mode & 0o077 != 0 {
                    return Err(RecorderError::Key(format!(
                        "{} is accessible to other users (mode {:o}): the audit signing key must be readable only by the gateway's user (chmod 600)",
                        path.display(),
                        mode & 0o777
                    )));
                }
                let seed = crate::format::parse_hex32(text.trim().as_bytes()).ok_or_else(|| {
                    RecorderError::Key(format!(
                        "{} must hold a 32-byte ed25519 seed as 64 lower-case hex digits",
                        path.display()
                    ))
                })?;
                Ok(Self::from_seed(&seed))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let signer = Self::generate()?;
                use std::io::Write as _;
                use std::os::unix::fs::OpenOptionsExt as _;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| RecorderError::io(format!("create {}", path.display()), e))?;
                f.write_all(hex::encode(signer.key.to_bytes()).as_bytes())
                    .and_then(|()| f.sync_all())
                    .map_err(|e| RecorderError::io(format!("write {}", path.display()), e))?;
                Ok(signer)
            }
            Err(e) => Err(RecorderError::io(format!("read {}", path.display()), e)),
        }
    }

    /// The public half, for verifiers.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// This key's id.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    fn sign_message(&self, message: &[u8]) -> String {
        let sig: Signature = self.key.sign(message);
        base64::engine::general_purpose::STANDARD.encode(sig.to_bytes())
    }

    /// Signs a checkpoint over `head` (the hash of record `sequence`).
    pub fn checkpoint(
        &self,
        log: &str,
        sequence: u64,
        head: &[u8; 32],
        time: String,
    ) -> Checkpoint {
        self.sign_head(log, sequence, head, time, false)
    }

    /// Signs a seal over `head` (the hash of record `sequence`, the log's final checkpoint):
    /// "the log was closed here".
    pub fn seal(&self, log: &str, sequence: u64, head: &[u8; 32], time: String) -> Checkpoint {
        self.sign_head(log, sequence, head, time, true)
    }

    fn sign_head(
        &self,
        log: &str,
        sequence: u64,
        head: &[u8; 32],
        time: String,
        sealed: bool,
    ) -> Checkpoint {
        let mut cp = Checkpoint {
            log: log.to_owned(),
            sequence,
            head: hex::encode(head),
            time,
            key_id: self.key_id.clone(),
            signature: String::new(),
            sealed,
            format: CHECKPOINT_FORMAT,
        };
        cp.signature = self.sign_message(&cp.signed_message());
        cp
    }

    /// Signs a retention cut.
    pub fn retention_cut(
        &self,
        log: &str,
        first_retained_sequence: u64,
        first_retained_prev: &[u8; 32],
        dropped_segments: Vec<String>,
        time: String,
    ) -> RetentionCut {
        let mut cut = RetentionCut {
            log: log.to_owned(),
            first_retained_sequence,
            first_retained_prev: hex::encode(first_retained_prev),
            dropped_segments,
            time,
            key_id: self.key_id.clone(),
            signature: String::new(),
        };
        cut.signature = self.sign_message(&cut.signed_message());
        cut
    }
}

/// The keys a verifier trusts, by key id.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: Vec<(String, VerifyingKey)>,
}

impl TrustedKeys {
    /// No keys: every signature check fails (`UnknownKey`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a key.
    pub fn with(mut self, key: VerifyingKey) -> Self {
        self.keys.push((key_id(&key), key));
        self
    }

    /// Parses a public key given as 64 hex digits.
    pub fn parse_public_key(hex_text: &str) -> Result<VerifyingKey, RecorderError> {
        let bytes = crate::format::parse_hex32(hex_text.trim().as_bytes())
            .ok_or_else(|| RecorderError::Key("a public key is 64 lower-case hex digits".into()))?;
        VerifyingKey::from_bytes(&bytes).map_err(|e| RecorderError::Key(e.to_string()))
    }

    fn get(&self, id: &str) -> Option<&VerifyingKey> {
        self.keys.iter().find(|(k, _)| k == id).map(|(_, v)| v)
    }

    /// Whether no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn verify(
        &self,
        key_id: &str,
        message: &[u8],
        signature_b64: &str,
    ) -> Result<(), SignatureProblem> {
        let key = self.get(key_id).ok_or(SignatureProblem::UnknownKey)?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(signature_b64)
            .map_err(|_| SignatureProblem::Invalid)?;
        let bytes: [u8; 64] = raw.try_into().map_err(|_| SignatureProblem::Invalid)?;
        key.verify_strict(message, &Signature::from_bytes(&bytes))
            .map_err(|_| SignatureProblem::Invalid)
    }
}

/// Why a signature did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignatureProblem {
    /// The key id is not among the trusted keys.
    UnknownKey,
    /// The signature is malformed or does not match.
    Invalid,
}

/// The format of the checkpoints and seals this version signs (see [`Checkpoint::format`]).
pub const CHECKPOINT_FORMAT: u32 = 2;

fn format_1() -> u32 {
    1
}

fn is_format_1(v: &u32) -> bool {
    *v == 1
}

/// A signed checkpoint: "log `log` had record `sequence` with hash `head` at `time`" — or, with
/// `sealed`, a seal: "… and was closed there".
///
/// Unknown members are refused when it is read (in the chain, from a witness): nothing a
/// signature does not cover passes as part of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Log id.
    pub log: String,
    /// Sequence number of the record the checkpoint covers.
    pub sequence: u64,
    /// Hex hash of that record.
    pub head: String,
    /// RFC 3339 time of signing (kept as the exact signed text).
    pub time: String,
    /// Id of the signing key.
    pub key_id: String,
    /// Base64 ed25519 signature over [`Checkpoint::signed_message`].
    pub signature: String,
    /// A seal (the log was closed after record `sequence`), signed over a different message.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sealed: bool,
    /// What the signature covers: 1 (absent; written before format 2): log, sequence, head and
    /// time; 2: every member (`key_id` too). Any other value never verifies.
    #[serde(default = "format_1", skip_serializing_if = "is_format_1")]
    pub format: u32,
}

impl Checkpoint {
    /// The exact bytes the signature covers.
    pub fn signed_message(&self) -> Vec<u8> {
        let what = if self.sealed { "seal" } else { "checkpoint" };
        match self.format {
            1 => format!(
                "gatehouse-audit-{what}-v1\nlog={}\nsequence={}\nhead={}\ntime={}\n",
                self.log, self.sequence, self.head, self.time
            ),
            // Format 2, and any later number (which nothing signs, so it never verifies): every
            // member but the signature itself.
            v => format!(
                "gatehouse-audit-{what}-v{v}\nlog={}\nsequence={}\nhead={}\ntime={}\nkey_id={}\n",
                self.log, self.sequence, self.head, self.time, self.key_id
            ),
        }
        .into_bytes()
    }

    /// Checks the signature against the trusted keys.
    pub fn verify(&self, keys: &TrustedKeys) -> Result<(), SignatureProblem> {
        keys.verify(&self.key_id, &self.signed_message(), &self.signature)
    }
}

/// A signed retention cut: "segments before `first_retained_sequence` were dropped on purpose; the
/// retained chain starts with a record whose `prev` is `first_retained_prev`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionCut {
    /// Log id.
    pub log: String,
    /// First sequence kept.
    pub first_retained_sequence: u64,
    /// Hex `prev` of that record (the hash of the last dropped record).
    pub first_retained_prev: String,
    /// Names of the dropped segments.
    pub dropped_segments: Vec<String>,
    /// RFC 3339 time of the cut.
    pub time: String,
    /// Id of the signing key.
    pub key_id: String,
    /// Base64 ed25519 signature over [`RetentionCut::signed_message`].
    pub signature: String,
}

impl RetentionCut {
    /// The exact bytes the signature covers.
    pub fn signed_message(&self) -> Vec<u8> {
        format!(
            "gatehouse-audit-retention-v1\nlog={}\nfirst_retained_sequence={}\nfirst_retained_prev={}\ndropped={}\ntime={}\n",
            self.log,
            self.first_retained_sequence,
            self.first_retained_prev,
            self.dropped_segments.join(","),
            self.time
        )
        .into_bytes()
    }

    /// Checks the signature against the trusted keys.
    pub fn verify(&self, keys: &TrustedKeys) -> Result<(), SignatureProblem> {
        keys.verify(&self.key_id, &self.signed_message(), &self.signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_signature_binds_every_field() {
        let signer = CheckpointSigner::from_seed(&[3u8; 32]);
        let keys = TrustedKeys::new().with(signer.verifying_key());
        let cp = signer.checkpoint("gw", 10, &[9u8; 32], "2026-01-01T00:00:00Z".into());
        assert_eq!(cp.verify(&keys), Ok(()));
        let mut bad = cp.clone();
        bad.sequence = 11;
        assert_eq!(bad.verify(&keys), Err(SignatureProblem::Invalid));
        let mut bad = cp.clone();
        bad.head = hex::encode([8u8; 32]);
        assert_eq!(bad.verify(&keys), Err(SignatureProblem::Invalid));
        let mut bad = cp.clone();
        bad.log = "other".into();
        assert_eq!(bad.verify(&keys), Err(SignatureProblem::Invalid));
        let mut bad = cp.clone();
        bad.signature = "!!".into();
        assert_eq!(bad.verify(&keys), Err(SignatureProblem::Invalid));
        // A checkpoint cannot pass for a seal, nor a seal for a checkpoint.
        let mut bad = cp.clone();
        bad.sealed = true;
        assert_eq!(bad.verify(&keys), Err(SignatureProblem::Invalid));
        let seal = signer.seal("gw", 10, &[9u8; 32], "2026-01-01T00:00:00Z".into());
        assert_eq!(seal.verify(&keys), Ok(()));
        let mut bad = seal.clone();
        bad.sealed = false;
        assert_eq!(bad.verify(&keys), Err(SignatureProblem::Invalid));
        let other = CheckpointSigner::from_seed(&[4u8; 32]);
        let keys2 = TrustedKeys::new().with(other.verifying_key());
        assert_eq!(cp.verify(&keys2), Err(SignatureProblem::UnknownKey));
        // Format 2 signs the key id too, and the format cannot be changed either way.
        assert_eq!(seal.format, CHECKPOINT_FORMAT);
        let both = keys.clone().with(other.verifying_key());
        let mut bad = seal.clone();
        bad.key_id = other.key_id().to_owned();
        assert_eq!(bad.verify(&both), Err(SignatureProblem::Invalid));
        for f in [0, 1, 3] {
            let mut bad = seal.clone();
            bad.format = f;
            assert_eq!(bad.verify(&keys), Err(SignatureProblem::Invalid), "{f}");
        }
    }

    #[test]
    fn format_1_checkpoints_still_verify_and_unknown_members_are_refused() {
        let signer = CheckpointSigner::from_seed(&[3u8; 32]);
        let keys = TrustedKeys::new().with(signer.verifying_key());
        // A seal as earlier versions wrote it: no `format`, signed over the v1 message.
        let mut old = signer.seal("gw", 10, &[9u8; 32], "2026-01-01T00:00:00Z".into());
        old.format = 1;
        old.signature = signer.sign_message(&old.signed_message());
        let text = serde_json::to_string(&old).unwrap();
        assert!(!text.contains("format"), "{text}");
        let back: Checkpoint = serde_json::from_str(&text).unwrap();
        assert_eq!(back.verify(&keys), Ok(()));
        let new =
            serde_json::to_string(&signer.checkpoint("gw", 1, &[1u8; 32], "t".into())).unwrap();
        assert!(new.contains("\"format\":2"), "{new}");
        let extra = text.replacen('{', "{\"note\":\"added\",", 1);
        let e = serde_json::from_str::<Checkpoint>(&extra).unwrap_err();
        assert!(e.to_string().contains("unknown field `note`"), "{e}");
    }

    #[test]
    fn load_or_create_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let a = CheckpointSigner::load_or_create(&path).unwrap();
        let b = CheckpointSigner::load_or_create(&path).unwrap();
        assert_eq!(a.verifying_key(), b.verifying_key());
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // A key others may read is refused.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = CheckpointSigner::load_or_create(&path).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "not a key").unwrap();
        assert!(CheckpointSigner::load_or_create(&path).is_err());
    }
}
