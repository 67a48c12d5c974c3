//! Reads the one context the gateway uses out of a kubeconfig file: the cluster's `server` and
//! CA, and the user's token or client certificate. Exec plugins and auth providers are refused
//! (the gateway never runs a program named by a config file).

use std::path::Path;

use serde::Deserialize;

use crate::config::{ResolvedTarget, b64};

#[derive(Deserialize)]
struct Kubeconfig {
    #[serde(default, rename = "current-context")]
    current_context: Option<String>,
    #[serde(default)]
    clusters: Vec<Named<Cluster>>,
    #[serde(default)]
    users: Vec<Named<User>>,
    #[serde(default)]
    contexts: Vec<Named<Context>>,
}

#[derive(Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "cluster", alias = "user", alias = "context")]
    value: Option<T>,
}

#[derive(Deserialize)]
struct Cluster {
    server: String,
    #[serde(default, rename = "certificate-authority")]
    ca_file: Option<String>,
    #[serde(default, rename = "certificate-authority-data")]
    ca_data: Option<String>,
}

#[derive(Deserialize)]
struct User {
    #[serde(default)]
    token: Option<String>,
    #[serde(default, rename = "tokenFile")]
    token_file: Option<String>,
    #[serde(default, rename = "client-certificate")]
    cert_file: Option<String>,
    #[serde(default, rename = "client-certificate-data")]
    cert_data: Option<String>,
    #[serde(default, rename = "client-key")]
    key_file: Option<String>,
    #[serde(default, rename = "client-key-data")]
    key_data: Option<String>,
    #[serde(default)]
    exec: Option<serde_json::Value>,
    #[serde(default, rename = "auth-provider")]
    auth_provider: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Context {
    cluster: String,
    user: String,
}

/// Resolves `context` (or the current context) of the kubeconfig `text` read from `path`
/// (relative file references are relative to it).
pub(crate) fn resolve(
    text: &[u8],
    path: &Path,
    context: Option<&str>,
) -> Result<ResolvedTarget, String> {
    let text = std::str::from_utf8(text).map_err(|_| "kubeconfig is not UTF-8".to_string())?;
    let kc: Kubeconfig =
        serde_saphyr::from_str(text).map_err(|e| format!("kubeconfig {}: {e}", path.display()))?;
    let ctx_name = context
        .map(str::to_string)
        .or(kc.current_context.clone())
        .ok_or("kubeconfig has no current-context; name one with `context`")?;
    let ctx = kc
        .contexts
        .iter()
        .find(|c| c.name == ctx_name)
        .and_then(|c| c.value.as_ref())
        .ok_or_else(|| format!("kubeconfig has no context {ctx_name:?}"))?;
    let cluster = kc
        .clusters
        .iter()
        .find(|c| c.name == ctx.cluster)
        .and_then(|c| c.value.as_ref())
        .ok_or_else(|| format!("kubeconfig has no cluster {:?}", ctx.cluster))?;
    let user = kc
        .users
        .iter()
        .find(|c| c.name == ctx.user)
        .and_then(|c| c.value.as_ref())
        .ok_or_else(|| format!("kubeconfig has no user {:?}", ctx.user))?;
    if user.exec.is_some() || user.auth_provider.is_some() {
        return Err(
            "kubeconfig users with exec plugins or auth providers are not supported".into(),
        );
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let read = |p: &str| -> Result<Vec<u8>, String> {
        let full = base.join(p);
        std::fs::read(&full).map_err(|e| format!("{}: {e}", full.display()))
    };
    let ca_pem = match (&cluster.ca_data, &cluster.ca_file) {
        (Some(d), _) => Some(b64("certificate-authority-data", d)?),
        (None, Some(f)) => Some(read(f)?),
        (None, None) => None,
    };
    let bearer = match (&user.token, &user.token_file) {
        (Some(t), _) => Some(t.trim().to_string()),
        (None, Some(f)) => Some(String::from_utf8_lossy(&read(f)?).trim().to_string()),
        (None, None) => None,
    };
    let cert = match (&user.cert_data, &user.cert_file) {
        (Some(d), _) => Some(b64("client-certificate-data", d)?),
        (None, Some(f)) => Some(read(f)?),
        (None, None) => None,
    };
    let key = match (&user.key_data, &user.key_file) {
        (Some(d), _) => Some(b64("client-key-data", d)?),
        (None, Some(f)) => Some(read(f)?),
        (None, None) => None,
    };
    let client_cert = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => return Err("kubeconfig user has a client certificate without its key".into()),
    };
    if bearer.is_none() && client_cert.is_none() {
        return Err("kubeconfig user has neither a token nor a client certificate".into());
    }
    Ok(ResolvedTarget {
        server: cluster.server.clone(),
        ca_pem,
        bearer,
        client_cert,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_context() {
        let dir = std::env::temp_dir();
        let text = r#"
apiVersion: v1
kind: Config
current-context: a
clusters:
- name: c
  cluster:
    server: https://127.0.0.1:6443
    certificate-authority-data: LS0tLS1CRUdJTg==
users:
- name: u
  user:
    token: sa-token-xyz
contexts:
- name: a
  context: {cluster: c, user: u}
"#;
        let r = resolve(text.as_bytes(), &dir.join("kc"), None).unwrap();
        assert_eq!(r.server, "https://127.0.0.1:6443");
        assert_eq!(r.bearer.as_deref(), Some("sa-token-xyz"));
        assert_eq!(r.ca_pem.as_deref(), Some(&b"-----BEGIN"[..]));
        assert!(resolve(text.as_bytes(), &dir.join("kc"), Some("nope")).is_err());
        let exec = text.replace("token: sa-token-xyz", "exec: {command: evil}");
        assert!(resolve(exec.as_bytes(), &dir.join("kc"), None).is_err());
    }
}
