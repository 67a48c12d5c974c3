//! The gateway's own host key: loaded from the configured file, or generated there (ed25519,
//! mode 0600) on first run so agents can pin its fingerprint.

use std::io::Write;
use std::path::Path;

use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{HashAlg, PrivateKey};

use crate::SshProxyError;

/// Loads the host key at `path`, creating it if the file does not exist.
pub fn load_or_generate(path: &Path) -> Result<PrivateKey, SshProxyError> {
    let err = |message: String| SshProxyError::HostKey {
        path: path.display().to_string(),
        message,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => PrivateKey::from_openssh(text.trim())
            .map_err(|e| err(format!("not an OpenSSH private key: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(|e| err(format!("no randomness: {e}")))?;
            let key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
            let text = key
                .to_openssh(LineEnding::LF)
                .map_err(|e| err(format!("encode: {e}")))?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
            }
            let mut file = open_private(path).map_err(|e| err(e.to_string()))?;
            file.write_all(text.as_bytes())
                .map_err(|e| err(e.to_string()))?;
            if let Ok(public) = key.public_key().to_openssh() {
                let _ = std::fs::write(path.with_extension("pub"), format!("{public} gatehouse\n"));
            }
            Ok(key)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

/// `SHA256:…` fingerprint of a key, as `ssh-keygen -lf` prints it.
pub fn fingerprint(key: &russh::keys::PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

#[cfg(unix)]
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_then_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/host_ed25519");
        let first = load_or_generate(&path).unwrap();
        let second = load_or_generate(&path).unwrap();
        assert_eq!(
            fingerprint(first.public_key()),
            fingerprint(second.public_key())
        );
        assert!(fingerprint(first.public_key()).starts_with("SHA256:"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host");
        std::fs::write(&path, "not a key").unwrap();
        let e = load_or_generate(&path).unwrap_err().to_string();
        assert!(e.contains("not an OpenSSH private key"), "{e}");
    }
}
