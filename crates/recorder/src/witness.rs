//! Witnesses: places outside the log's own storage that keep every signed checkpoint (and the
//! seal), so that deleting a whole tail of segments (checkpoints included), or rewriting the chain,
//! is still detected by `verify`.
//!
//! Pushes happen in order on a background task and never delay `append`; closing the log waits
//! (bounded) until the seal has been pushed.

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gatehouse_core::BoxFuture;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::sync::mpsc;

use crate::RecorderError;
use crate::checkpoint::Checkpoint;

/// Somewhere to push checkpoints.
pub trait Witness: Send + Sync + Debug {
    /// Stores `checkpoint` (every checkpoint is pushed, in order, the seal last).
    fn push<'a>(&'a self, checkpoint: &'a Checkpoint) -> BoxFuture<'a, Result<(), RecorderError>>;
}

/// A directory (on other storage than the audit log) keeping every checkpoint as its own file,
/// `<log>/<sequence, 20 digits>.checkpoint.json`; a file once written is never replaced.
///
/// It protects against someone who can write the audit directory but not this one. Whoever can
/// write here too can delete checkpoints: production deployments use a [`WebhookWitness`] to a
/// separate system that keeps what it is sent (see `docs/audit-schema.md`).
#[derive(Debug, Clone)]
pub struct FileWitness {
    dir: PathBuf,
}

/// Name of the file holding the checkpoint over record `sequence`.
pub fn witness_file_name(sequence: u64) -> String {
    format!("{sequence:020}.checkpoint.json")
}

impl FileWitness {
    /// A witness writing into `dir` (created if missing).
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, RecorderError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)
            .map_err(|e| RecorderError::io(format!("create {}", dir.display()), e))?;
        Ok(Self { dir })
    }

    /// Reads every checkpoint a file witness directory holds: the per-log sub-directories, and
    /// `<log>.checkpoint.json` files at the top (the layout of earlier versions, latest only).
    ///
    /// Strict, because whoever can write the witness directory could otherwise hide a
    /// checkpoint from the verifier: anything that is not what the witness writes is an error
    /// ([`RecorderError::Witness`], naming it), never skipped — a FIFO, socket, device or
    /// symbolic link in place of a log directory or a checkpoint file (never opened), a file or
    /// directory under any other name, a checkpoint file holding another log's checkpoint or
    /// another sequence than its name says, or one that is not a checkpoint. Only the temporary
    /// files of a write that was interrupted (`.<name>.tmp`, regular files) are passed over.
    /// `dir` itself may be a symbolic link to the directory; it must be a directory
    /// ([`RecorderError::Io`] otherwise, as when it is missing: nothing was read).
    pub fn read_all(dir: &Path) -> Result<Vec<Checkpoint>, RecorderError> {
        let meta = std::fs::metadata(dir)
            .map_err(|e| RecorderError::io(format!("read {}", dir.display()), e))?;
        if !meta.is_dir() {
            return Err(RecorderError::io(
                format!("read {}", dir.display()),
                std::io::Error::new(
                    std::io::ErrorKind::NotADirectory,
                    format!(
                        "not a directory ({})",
                        crate::storage::file_kind(meta.file_type())
                    ),
                ),
            ));
        }
        let mut out = Vec::new();
        for (name, path, kind) in Self::entries(dir)? {
            if kind.is_dir() && crate::format::valid_log_id(&name) {
                for (file, path, kind) in Self::entries(&path)? {
                    let is_tmp = file.starts_with('.') && file.ends_with(".checkpoint.json.tmp");
                    if is_tmp && kind.is_file() {
                        continue;
                    }
                    out.push(Self::read_file(&path, &name, &file, kind, false)?);
                }
            } else if let Some(log) = name.strip_suffix(".checkpoint.json")
                && crate::format::valid_log_id(log)
            {
                out.push(Self::read_file(&path, log, &name, kind, true)?);
            } else {
                return Err(unexpected(&path, kind, "a directory named by a log id"));
            }
        }
        Ok(out)
    }

    /// The entries of a witness directory: (name, path, type, not following symbolic links).
    fn entries(dir: &Path) -> Result<Vec<(String, PathBuf, std::fs::FileType)>, RecorderError> {
        let read = |e| RecorderError::io(format!("read {}", dir.display()), e);
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(read)? {
            let entry = entry.map_err(read)?;
            let path = entry.path();
            let kind = entry.file_type().map_err(read)?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                return Err(unexpected(&path, kind, "a name in UTF-8"));
            };
            out.push((name, path, kind));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// One checkpoint file, which must be a regular file holding the checkpoint its name (and
    /// its directory's) says: `<sequence>.checkpoint.json` in `<log>/`, or (`legacy`) the
    /// latest checkpoint of `<log>` as `<log>.checkpoint.json`.
    fn read_file(
        path: &Path,
        log: &str,
        name: &str,
        kind: std::fs::FileType,
        legacy: bool,
    ) -> Result<Checkpoint, RecorderError> {
        let named = legacy
            || name
                .strip_suffix(".checkpoint.json")
                .is_some_and(|d| d.len() == 20 && d.bytes().all(|b| b.is_ascii_digit()));
        if !named {
            return Err(unexpected(
                path,
                kind,
                "<sequence, 20 digits>.checkpoint.json",
            ));
        }
        if !kind.is_file() {
            return Err(RecorderError::Witness(format!(
                "witness file {} is not a regular file ({}): it was replaced",
                path.display(),
                crate::storage::file_kind(kind)
            )));
        }
        let bytes = crate::storage::read_regular_file(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::InvalidData {
                RecorderError::Witness(format!("witness file {}: {e}", path.display()))
            } else {
                RecorderError::io(format!("read {}", path.display()), e)
            }
        })?;
        let cp: Checkpoint = serde_json::from_slice(&bytes).map_err(|e| {
            RecorderError::Witness(format!(
                "witness file {} is not a checkpoint ({e}): it was replaced",
                path.display()
            ))
        })?;
        if cp.log != log || (!legacy && witness_file_name(cp.sequence) != name) {
            return Err(RecorderError::Witness(format!(
                "witness file {} holds the checkpoint of log {:?} at sequence {}: misnamed (moved or replaced)",
                path.display(),
                cp.log,
                cp.sequence
            )));
        }
        Ok(cp)
    }

    /// The latest checkpoint (highest sequence) a witness directory holds for each log.
    pub fn latest(dir: &Path) -> Result<Vec<Checkpoint>, RecorderError> {
        let mut latest: std::collections::BTreeMap<String, Checkpoint> = Default::default();
        for cp in Self::read_all(dir)? {
            match latest.get(&cp.log) {
                Some(have) if have.sequence >= cp.sequence => {}
                _ => {
                    latest.insert(cp.log.clone(), cp);
                }
            }
        }
        Ok(latest.into_values().collect())
    }
}

impl Witness for FileWitness {
    fn push<'a>(&'a self, checkpoint: &'a Checkpoint) -> BoxFuture<'a, Result<(), RecorderError>> {
        let dir = self.dir.clone();
        let cp = checkpoint.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || write_atomically(&dir, &cp))
                .await
                .map_err(|e| RecorderError::Config(format!("witness task: {e}")))?
        })
    }
}

/// An entry a file witness never writes.
fn unexpected(path: &Path, kind: std::fs::FileType, expected: &str) -> RecorderError {
    RecorderError::Witness(format!(
        "unexpected entry {} in the witness ({}; the witness holds only {expected} there)",
        path.display(),
        crate::storage::file_kind(kind)
    ))
}

/// Writes the checkpoint's own file durably; never replaces a file already there (the same
/// checkpoint pushed again is fine, a different one for the same sequence is an error).
fn write_atomically(dir: &Path, cp: &Checkpoint) -> Result<(), RecorderError> {
    use std::io::Write as _;
    if !crate::format::valid_log_id(&cp.log) {
        return Err(RecorderError::Config("invalid log id in checkpoint".into()));
    }
    let log_dir = dir.join(&cp.log);
    let path = log_dir.join(witness_file_name(cp.sequence));
    let tmp = log_dir.join(format!(".{}.tmp", witness_file_name(cp.sequence)));
    let body = serde_json::to_vec_pretty(cp).map_err(|e| RecorderError::Config(e.to_string()))?;
    let io = |e| RecorderError::io(format!("write {}", path.display()), e);
    std::fs::create_dir_all(&log_dir).map_err(io)?;
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&body).and_then(|()| f.sync_all()).map_err(io)?;
    // A hard link fails when the name exists: a witnessed checkpoint is never overwritten.
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let have = std::fs::read(&path).map_err(io)?;
            let same = serde_json::from_slice::<Checkpoint>(&have).is_ok_and(|h| h == *cp);
            if !same {
                return Err(RecorderError::Witness(format!(
                    "{} already holds a different checkpoint",
                    path.display()
                )));
            }
        }
        Err(e) => return Err(io(e)),
    }
    std::fs::File::open(&log_dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(())
}

/// An object-storage bucket (S3-compatible) keeping every checkpoint and the seal as its own
/// object, `<prefix>/<log>/<sequence, 20 digits>.checkpoint.json`, written only if absent.
///
/// What protects the objects is the bucket, not this writer: the operator creates it with object
/// lock and a default retention, so no one (the gateway's credentials included) can delete or
/// replace a stored version before the retention ends. See `docs/audit-schema.md` for what someone
/// holding the gateway's bucket credentials can still do (hide a checkpoint behind a newer version
/// or a delete marker where the credentials allow it) and how [`ObjectStoreWitness::read_all`]
/// answers it.
#[derive(Debug, Clone)]
pub struct ObjectStoreWitness {
    store: Arc<dyn object_store::ObjectStore>,
    prefix: String,
}

impl ObjectStoreWitness {
    /// A witness writing into `store` under `prefix` (e.g. `witness`; may be empty).
    pub fn new(store: Arc<dyn object_store::ObjectStore>, prefix: impl Into<String>) -> Self {
        Self {
            store,
            prefix: prefix.into().trim_matches('/').to_owned(),
        }
    }

    /// Sets `builder` up for a bucket with object lock: every upload carries a SHA-256
    /// checksum and names its algorithm (`x-amz-sdk-checksum-algorithm`), which S3 requires of
    /// uploads into a bucket with a default retention. `allow_http` permits an `http://`
    /// endpoint (loopback stand-ins only). Call it before other client options.
    pub fn prepare_s3(
        builder: object_store::aws::AmazonS3Builder,
        allow_http: bool,
    ) -> object_store::aws::AmazonS3Builder {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::HeaderName::from_static("x-amz-sdk-checksum-algorithm"),
            http::HeaderValue::from_static("SHA256"),
        );
        builder
            .with_client_options(
                object_store::ClientOptions::new()
                    .with_default_headers(headers)
                    .with_allow_http(allow_http),
            )
            .with_checksum_algorithm(object_store::aws::Checksum::SHA256)
    }

    fn key(prefix: &str, log: &str, sequence: u64) -> object_store::path::Path {
        let name = witness_file_name(sequence);
        if prefix.is_empty() {
            object_store::path::Path::from(format!("{log}/{name}"))
        } else {
            object_store::path::Path::from(format!("{prefix}/{log}/{name}"))
        }
    }

    /// Reads every checkpoint the bucket holds under `prefix`, in no particular order.
    ///
    /// Every object must be the checkpoint its name says (its log and sequence), with a body that
    /// parses: an object replaced by another checkpoint (an earlier one, copied over a later one
    /// to hide it) or by anything else is an error, never skipped. Signatures are checked by
    /// [`verify`](fn@crate::verify) against the trusted keys.
    pub async fn read_all(
        store: &dyn object_store::ObjectStore,
        prefix: &str,
    ) -> Result<Vec<Checkpoint>, RecorderError> {
        use futures::TryStreamExt as _;
        use object_store::ObjectStoreExt as _;
        let prefix = prefix.trim_matches('/');
        let list_prefix = (!prefix.is_empty()).then(|| object_store::path::Path::from(prefix));
        let metas: Vec<_> = store.list(list_prefix.as_ref()).try_collect().await?;
        let mut out = Vec::new();
        for meta in metas {
            let location = meta.location.as_ref().to_owned();
            let rel = match prefix.is_empty() {
                true => location.as_str(),
                false => location
                    .strip_prefix(prefix)
                    .and_then(|r| r.strip_prefix('/'))
                    .unwrap_or(location.as_str()),
            };
            let Some((log, name)) = rel.split_once('/') else {
                continue;
            };
            if !name.ends_with(".checkpoint.json") || name.contains('/') {
                continue;
            }
            let bytes = store.get(&meta.location).await?.bytes().await?;
            out.push(checked_checkpoint(&bytes, log, name, &location)?);
        }
        Ok(out)
    }
}

/// Percent-encodes a query value (everything but RFC 3986 unreserved characters).
fn query_encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The text of the first `<tag>…</tag>` in `xml`, with the five XML entities decoded.
fn xml_text<'a>(xml: &'a str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let len = xml.get(start..)?.find(&close)?;
    let raw: &'a str = xml.get(start..start + len)?;
    Some(
        raw.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

impl ObjectStoreWitness {
    /// Reads every checkpoint an S3 bucket holds under `prefix`, in **every stored version** of
    /// every object (`ListObjectVersions`): a checkpoint hidden behind a newer version or a
    /// delete marker (which anyone allowed `s3:DeleteObject` can place without a version id,
    /// object lock or not) is still read. Each version must be the checkpoint its name says, as
    /// for [`ObjectStoreWitness::read_all`]. `builder` names the bucket, endpoint, region and
    /// credentials, as for writing; `allow_http` permits an `http://` endpoint.
    pub async fn read_all_versions(
        builder: object_store::aws::AmazonS3Builder,
        allow_http: bool,
        prefix: &str,
    ) -> Result<Vec<Checkpoint>, RecorderError> {
        use object_store::ObjectStore as _;
        use object_store::aws::AmazonS3ConfigKey as Key;
        use object_store::client::HttpConnector as _;
        let config = |k: Key| builder.get_config_value(&k).filter(|v| !v.is_empty());
        let bucket = config(Key::Bucket)
            .ok_or_else(|| RecorderError::Config("witness bucket not set".into()))?;
        let region = config(Key::Region).unwrap_or_else(|| "us-east-1".into());
        let endpoint = config(Key::S3Endpoint)
            .or_else(|| config(Key::Endpoint))
            .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        let endpoint = endpoint.trim_end_matches('/').to_owned();
        let store = builder.build()?;
        let client = object_store::client::ReqwestConnector::default()
            .connect(&object_store::ClientOptions::new().with_allow_http(allow_http))?;
        let prefix = prefix.trim_matches('/');
        let list_prefix = match prefix.is_empty() {
            true => String::new(),
            false => format!("{prefix}/"),
        };
        let fail = |what: String| RecorderError::Witness(format!("list versions: {what}"));
        let mut versions: Vec<(String, String)> = Vec::new();
        let mut marker: Option<(String, String)> = None;
        loop {
            let mut url = format!(
                "{endpoint}/{bucket}?prefix={}&versions=",
                query_encode(&list_prefix)
            );
            if let Some((k, v)) = &marker {
                url.push_str(&format!(
                    "&key-marker={}&version-id-marker={}",
                    query_encode(k),
                    query_encode(v)
                ));
            }
            let mut req = http::Request::get(url.as_str())
                .body(object_store::client::HttpRequestBody::empty())
                .map_err(|e| fail(e.to_string()))?;
            let credential = store.credentials().get_credential().await?;
            object_store::aws::AwsAuthorizer::new(&credential, "s3", &region)
                .try_authorize(&mut req, None)?;
            let resp = client.execute(req).await.map_err(|e| fail(e.to_string()))?;
            let status = resp.status();
            let body = resp
                .into_body()
                .bytes()
                .await
                .map_err(|e| fail(e.to_string()))?;
            let body = String::from_utf8_lossy(&body).into_owned();
            if !status.is_success() {
                return Err(RecorderError::Config(format!(
                    "witness bucket {bucket}: list versions answered {status}: {body}"
                )));
            }
            // `<Version>` entries only: delete markers (`<DeleteMarker>`) hide nothing here.
            for entry in body.split("<Version>").skip(1) {
                let entry = entry.split("</Version>").next().unwrap_or_default();
                if let (Some(key), Some(version)) =
                    (xml_text(entry, "Key"), xml_text(entry, "VersionId"))
                {
                    versions.push((key, version));
                }
            }
            if xml_text(&body, "IsTruncated").as_deref() != Some("true") {
                break;
            }
            let next = (
                xml_text(&body, "NextKeyMarker").unwrap_or_default(),
                xml_text(&body, "NextVersionIdMarker").unwrap_or_default(),
            );
            if next.0.is_empty() || marker.as_ref() == Some(&next) {
                return Err(fail("a truncated listing without a new marker".into()));
            }
            marker = Some(next);
        }
        let mut out: Vec<Checkpoint> = Vec::new();
        for (key, version) in versions {
            let rel = key.strip_prefix(&list_prefix).unwrap_or(key.as_str());
            let Some((log, name)) = rel.split_once('/') else {
                continue;
            };
            if !name.ends_with(".checkpoint.json") || name.contains('/') {
                continue;
            }
            let location = object_store::path::Path::from(key.as_str());
            let opts = object_store::GetOptions {
                version: Some(version.clone()),
                ..Default::default()
            };
            let bytes = store.get_opts(&location, opts).await?.bytes().await?;
            let cp = checked_checkpoint(&bytes, log, name, &format!("{key} (version {version})"))?;
            if !out.contains(&cp) {
                out.push(cp);
            }
        }
        Ok(out)
    }
}

/// Parses a witness object's bytes: it must be the checkpoint of log `log` whose file name is
/// `name`; anything else was put there by someone else.
fn checked_checkpoint(
    bytes: &[u8],
    log: &str,
    name: &str,
    location: &str,
) -> Result<Checkpoint, RecorderError> {
    let cp: Checkpoint = serde_json::from_slice(bytes).map_err(|e| {
        RecorderError::Witness(format!(
            "witness object {location} is not a checkpoint ({e}): it was replaced"
        ))
    })?;
    if cp.log != log || witness_file_name(cp.sequence) != name {
        return Err(RecorderError::Witness(format!(
            "witness object {location} holds the checkpoint of log {:?} at sequence {}: it was replaced",
            cp.log, cp.sequence
        )));
    }
    Ok(cp)
}

impl Witness for ObjectStoreWitness {
    fn push<'a>(&'a self, checkpoint: &'a Checkpoint) -> BoxFuture<'a, Result<(), RecorderError>> {
        Box::pin(async move {
            use object_store::ObjectStoreExt as _;
            if !crate::format::valid_log_id(&checkpoint.log) {
                return Err(RecorderError::Config("invalid log id in checkpoint".into()));
            }
            let key = Self::key(&self.prefix, &checkpoint.log, checkpoint.sequence);
            let body = serde_json::to_vec_pretty(checkpoint)
                .map_err(|e| RecorderError::Config(e.to_string()))?;
            let opts = object_store::PutOptions {
                mode: object_store::PutMode::Create,
                ..Default::default()
            };
            match self
                .store
                .put_opts(&key, object_store::PutPayload::from(body), opts)
                .await
            {
                Ok(_) => Ok(()),
                // Never replaced: the same checkpoint pushed again is fine (a retry whose answer
                // was lost), a different one is an error.
                Err(
                    object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. },
                ) => {
                    let have = self.store.get(&key).await?.bytes().await?;
                    match serde_json::from_slice::<Checkpoint>(&have) {
                        Ok(h) if h == *checkpoint => Ok(()),
                        _ => Err(RecorderError::Witness(format!(
                            "witness object {key} already holds a different checkpoint"
                        ))),
                    }
                }
                Err(e) => Err(RecorderError::Witness(format!("put {key}: {e}"))),
            }
        })
    }
}

/// An HTTP(S) endpoint that receives each checkpoint as a JSON `POST`.
///
/// `http://` URLs use a pooled plain client (for a witness on loopback or a private network).
/// `https://` URLs need [`WebhookWitness::with_pinned_ca`]: the server's certificate must chain to
/// the CA given there and nothing else (no system or web roots), so a witness cannot be swapped by
/// anyone holding some public certificate for its name. TLS is rustls on the aws-lc-rs provider;
/// each push opens one connection (pushes come once per checkpoint, not per record).
#[derive(Debug, Clone)]
pub struct WebhookWitness {
    uri: http::Uri,
    transport: Transport,
    timeout: Duration,
}

#[derive(Clone)]
enum Transport {
    Http(Box<Client<HttpConnector, Full<Bytes>>>),
    Https(Box<HttpsTarget>),
}

#[derive(Clone)]
struct HttpsTarget {
    tls: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
    host: String,
    port: u16,
}

impl Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Http(_) => f.write_str("Http"),
            Transport::Https(t) => write!(f, "Https({}:{}, pinned CA)", t.host, t.port),
        }
    }
}

fn parse_url(url: &str) -> Result<http::Uri, RecorderError> {
    url.parse()
        .map_err(|e| RecorderError::Config(format!("witness url {url:?}: {e}")))
}

impl WebhookWitness {
    /// A webhook witness at an `http://` URL. For `https://`, use
    /// [`WebhookWitness::with_pinned_ca`].
    pub fn new(url: &str) -> Result<Self, RecorderError> {
        let uri = parse_url(url)?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(RecorderError::Config(
                    "an https:// webhook witness needs a pinned CA (WebhookWitness::with_pinned_ca)"
                        .into(),
                ));
            }
            _ => {
                return Err(RecorderError::Config(
                    "webhook witness urls are http:// or https://".into(),
                ));
            }
        }
        let client = Client::builder(TokioExecutor::new()).build_http();
        Ok(Self {
            uri,
            transport: Transport::Http(Box::new(client)),
            timeout: Duration::from_secs(5),
        })
    }

    /// A webhook witness at an `https://` URL whose server certificate must chain to one of the
    /// CA certificates in `ca_pem` (PEM, one or more `CERTIFICATE` blocks) and name the URL's host.
    pub fn with_pinned_ca(url: &str, ca_pem: &[u8]) -> Result<Self, RecorderError> {
        let uri = parse_url(url)?;
        if uri.scheme_str() != Some("https") {
            return Err(RecorderError::Config(
                "a pinned CA applies to https:// witness urls only".into(),
            ));
        }
        let host = uri
            .host()
            .ok_or_else(|| RecorderError::Config(format!("witness url {url:?} has no host")))?;
        // `http::Uri` keeps IPv6 literals in brackets; names and addresses are checked bare.
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let server_name = ServerName::try_from(host.clone())
            .map_err(|e| RecorderError::Config(format!("witness host {host:?}: {e}")))?;

        let mut roots = rustls::RootCertStore::empty();
        let mut found = 0usize;
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            let cert =
                cert.map_err(|e| RecorderError::Config(format!("witness CA: not PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| RecorderError::Config(format!("witness CA: {e}")))?;
            found += 1;
        }
        if found == 0 {
            return Err(RecorderError::Config(
                "witness CA: no CERTIFICATE block in the PEM".into(),
            ));
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| RecorderError::Config(format!("witness TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            uri,
            transport: Transport::Https(Box::new(HttpsTarget {
                tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
                server_name,
                host,
                port,
            })),
            timeout: Duration::from_secs(5),
        })
    }

    /// How long one push may take (connect, TLS, request, answer); 5 s unless set.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn send(
        &self,
        req: http::Request<Full<Bytes>>,
    ) -> Result<http::StatusCode, RecorderError> {
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            RecorderError::Witness(format!("webhook {what}: {e}"))
        };
        let resp = match &self.transport {
            Transport::Http(client) => client
                .request(req)
                .await
                .map_err(|e| failed("request", &e))?,
            Transport::Https(t) => {
                let HttpsTarget {
                    tls,
                    server_name,
                    host,
                    port,
                } = &**t;
                let tcp = tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(|e| failed("connect", &e))?;
                let _ = tcp.set_nodelay(true);
                let stream = tls
                    .connect(server_name.clone(), tcp)
                    .await
                    .map_err(|e| failed("TLS", &e))?;
                // The connection-level client sends the URI as given: use the origin form.
                let path = self
                    .uri
                    .path_and_query()
                    .map_or("/", http::uri::PathAndQuery::as_str);
                let mut req = req;
                *req.uri_mut() = http::Uri::try_from(path).map_err(|e| failed("path", &e))?;
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .map_err(|e| failed("handshake", &e))?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                sender
                    .send_request(req)
                    .await
                    .map_err(|e| failed("request", &e))?
            }
        };
        let status = resp.status();
        // Drain the body so the connection can be reused (or closed cleanly).
        let _ = resp.into_body().collect().await;
        Ok(status)
    }
}

impl Witness for WebhookWitness {
    fn push<'a>(&'a self, checkpoint: &'a Checkpoint) -> BoxFuture<'a, Result<(), RecorderError>> {
        Box::pin(async move {
            let body =
                serde_json::to_vec(checkpoint).map_err(|e| RecorderError::Config(e.to_string()))?;
            let mut req = http::Request::post(self.uri.clone())
                .header(http::header::CONTENT_TYPE, "application/json");
            if let Some(authority) = self.uri.authority() {
                // hyper's connection-level client does not add Host by itself.
                req = req.header(http::header::HOST, authority.as_str());
            }
            let req = req
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| RecorderError::Witness(e.to_string()))?;
            let status = tokio::time::timeout(self.timeout, self.send(req))
                .await
                .map_err(|_| RecorderError::Witness("webhook timed out".into()))??;
            if status.is_success() {
                Ok(())
            } else {
                Err(RecorderError::Witness(format!("webhook answered {status}")))
            }
        })
    }
}

/// Pushes every checkpoint, in order, to every witness until the log closes (the sender is
/// dropped) and the queue is empty.
pub(crate) fn spawn_pusher(
    witnesses: Vec<Arc<dyn Witness>>,
    mut queue: mpsc::UnboundedReceiver<Checkpoint>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(cp) = queue.recv().await {
            for w in &witnesses {
                let mut delay = Duration::from_millis(50);
                for attempt in 0..4 {
                    match w.push(&cp).await {
                        Ok(()) => break,
                        Err(e) => {
                            tracing::warn!(witness = ?w, attempt, sequence = cp.sequence, error = %e, "checkpoint push failed");
                            if attempt < 3 {
                                tokio::time::sleep(delay).await;
                                delay *= 4;
                            }
                        }
                    }
                }
            }
        }
    })
}
