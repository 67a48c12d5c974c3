//! An API-server stand-in speaking the real wire format, for tests only (no real kube-apiserver
//! can run on these machines). HTTPS with its own CA, bearer-token authentication, and:
//!
//! - discovery: `/version`, `/api`, `/apis`, `/api/v1` (APIResourceList), `/healthz`;
//! - namespaces, pods, secrets, configmaps: get, list (plain or `Table`, with `includeObject`),
//!   watch (`ADDED`/`DELETED` events, chunked, one JSON document per line), create, delete,
//!   `Status` errors (`NotFound`, `AlreadyExists`, `Unauthorized`);
//! - protobuf create bodies (`k8s\0` + `runtime.Unknown`) of config maps and secrets, decoded
//!   with the API's own message types; `PATCH` by merge patch, strategic merge patch (read as a
//!   merge patch) and server-side apply (`application/apply-patch+yaml`, creating what is
//!   missing); every request body kept in [`State::bodies`];
//! - `replicationcontrollers` with the `scale` subresource (`autoscaling/v1` `Scale`, GET and
//!   merge PATCH), for `kubectl scale`;
//! - `pods/log` with `follow=true` (the second line waits for [`State::release_logs`]);
//! - `pods/exec` over WebSocket (`v5.channel.k8s.io`, `v4.channel.k8s.io`), running the
//!   requested command as a local process (`tty=true` gives it a pty through `script`), with
//!   stdin, stdout, stderr, resize, v5 stdin close and the exit `Status` on channel 3;
//! - `pods/portforward` as kubectl 1.31+ asks for it: SPDY/3.1 tunnelled in WebSocket binary
//!   messages (`SPDY/3.1+portforward.k8s.io`), served like the kubelet's port-forward handler
//!   (every stream answered with SYN_REPLY; an `error` and a `data` stream with the same
//!   `requestID` make one forward to the pod's `port`, which the stand-in maps to a local TCP
//!   server on 127.0.0.1 through [`State::pod_ports`]; the error stream carries a failure text
//!   and both streams end with FIN);
//! - `Upgrade: SPDY/3.1` answered `400` with a `Status` (this stand-in speaks no SPDY) and
//!   counted, so tests can prove nobody fell back to it.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{Notify, broadcast};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

pub type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// One request as the stand-in saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
}

/// The stand-in's data and counters.
pub struct State {
    pub token: String,
    objects: Mutex<BTreeMap<(String, String, String), Value>>,
    pub log: Mutex<Vec<Seen>>,
    events: broadcast::Sender<(String, String, Value)>,
    log_gate: Notify,
    rv: AtomicU64,
    pub spdy_requests: AtomicU64,
    pub exec_requests: AtomicU64,
    pub resizes: Mutex<Vec<(u64, u64)>>,
    /// Request bodies as received: (path, content type, bytes).
    pub bodies: Mutex<Vec<(String, String, Bytes)>>,
    /// When set, a pod log's second part is these bytes (a container that writes binary).
    pub log_tail: Mutex<Option<Bytes>>,
    /// Replaces the first log line (with its line end) when set.
    pub log_head: Mutex<Option<Bytes>>,
    /// When set, the content type pod logs are served with (default `text/plain`).
    pub log_content_type: Mutex<Option<String>>,
    /// A pod's ports for port forwarding: port → the local (127.0.0.1) server behind it.
    pub pod_ports: Mutex<BTreeMap<u16, SocketAddr>>,
    /// Port-forward tunnels opened.
    pub portforward_requests: AtomicU64,
    /// The port of every port-forward stream opened, in order.
    pub portforward_ports: Mutex<Vec<u16>>,
}

impl State {
    /// Lets a following log stream send its second line.
    pub fn release_logs(&self) {
        self.log_gate.notify_waiters();
        self.log_gate.notify_one();
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }

    /// Creates an object (as a controller would) and tells the watchers.
    pub fn insert(&self, resource: &str, ns: &str, mut obj: Value) {
        let rv = self.rv.fetch_add(1, Ordering::SeqCst) + 1;
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        obj["metadata"]["namespace"] = json!(ns);
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        obj["metadata"]["uid"] = json!(format!("uid-{resource}-{name}"));
        obj["metadata"]["creationTimestamp"] = json!("2026-11-23T10:00:00Z");
        self.objects
            .lock()
            .unwrap()
            .insert((resource.to_string(), ns.to_string(), name), obj.clone());
        let _ = self.events.send((
            resource.to_string(),
            ns.to_string(),
            json!({"type": "ADDED", "object": obj}),
        ));
    }

    pub fn get(&self, resource: &str, ns: &str, name: &str) -> Option<Value> {
        self.objects
            .lock()
            .unwrap()
            .get(&(resource.to_string(), ns.to_string(), name.to_string()))
            .cloned()
    }
}

/// The running stand-in.
pub struct ApiServer {
    pub addr: SocketAddr,
    pub url: String,
    pub ca_file: PathBuf,
    pub state: Arc<State>,
    _dir: tempfile::TempDir,
    _task: tokio::task::JoinHandle<()>,
}

pub const SECRET_PASSWORD: &str = "hunter2-db-password";

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

impl ApiServer {
    pub async fn start(token: &str) -> ApiServer {
        let dir = tempfile::tempdir().unwrap();
        let ca = gatehouse_testkit::tls::TestCa::new("stand-in CA");
        let (cert, key) = ca.issue_server(&["127.0.0.1", "localhost"]);
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.cert_pem()).unwrap();
        // A client certificate the gateway may use instead of the token (next to ca.pem).
        let (client_cert, client_key) = ca.issue_client("gatehouse");
        std::fs::write(dir.path().join("client.pem"), client_cert).unwrap();
        std::fs::write(dir.path().join("client-key.pem"), client_key).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut ca.cert_pem().as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let certs = rustls_pemfile::certs(&mut cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls_pemfile::private_key(&mut key.as_bytes())
            .unwrap()
            .unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .unwrap();
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .unwrap();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

        let (events, _) = broadcast::channel(64);
        let state = Arc::new(State {
            token: token.to_string(),
            objects: Mutex::new(BTreeMap::new()),
            log: Mutex::new(Vec::new()),
            events,
            log_gate: Notify::new(),
            rv: AtomicU64::new(100),
            spdy_requests: AtomicU64::new(0),
            exec_requests: AtomicU64::new(0),
            resizes: Mutex::new(Vec::new()),
            bodies: Mutex::new(Vec::new()),
            log_tail: Mutex::new(None),
            log_head: Mutex::new(None),
            log_content_type: Mutex::new(None),
            pod_ports: Mutex::new(BTreeMap::new()),
            portforward_requests: AtomicU64::new(0),
            portforward_ports: Mutex::new(Vec::new()),
        });
        for ns in ["default", "kube-system"] {
            state.insert(
                "namespaces",
                "",
                json!({"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": ns},
                       "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}),
            );
        }
        for pod in ["web-0", "web-1"] {
            state.insert("pods", "default", pod_object(pod));
        }
        state.insert(
            "replicationcontrollers",
            "default",
            json!({"kind": "ReplicationController", "apiVersion": "v1", "metadata": {"name": "web"},
                "spec": {"replicas": 1, "selector": {"app": "web"}},
                "status": {"replicas": 1}}),
        );
        let applied = json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "db-creds", "namespace": "default"},
            "data": {"password": b64(SECRET_PASSWORD)}})
        .to_string();
        state.insert(
            "secrets",
            "default",
            json!({"kind": "Secret", "apiVersion": "v1",
                "metadata": {"name": "db-creds", "annotations": {
                    "kubectl.kubernetes.io/last-applied-configuration": applied}},
                "data": {"password": b64(SECRET_PASSWORD), "username": b64("app")},
                "type": "Opaque"}),
        );
        state.insert(
            "configmaps",
            "default",
            json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "settings"},
                "data": {"contact": "ops-lead@example.com", "mode": "fast"}}),
        );

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let st = st.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    // A verified client certificate authenticates like the token.
                    let has_cert = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .is_some_and(|c| !c.is_empty());
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(handle(st, req, has_cert).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        ApiServer {
            addr,
            url: format!("https://{addr}"),
            ca_file,
            state,
            _dir: dir,
            _task: task,
        }
    }
}

pub fn pod_object(name: &str) -> Value {
    json!({"kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "image": "busybox:1.36"}], "nodeName": "node-1"},
        "status": {"phase": "Running", "podIP": "10.1.0.7",
            "containerStatuses": [{"name": "app", "ready": true, "restartCount": 0,
                "image": "busybox:1.36", "imageID": "", "state": {"running": {}}}]}})
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

fn json_resp(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

fn status(code: u16, reason: &str, message: &str) -> Response<Body> {
    json_resp(
        StatusCode::from_u16(code).unwrap(),
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code}),
    )
}

fn query_params(q: &str) -> Vec<(String, String)> {
    gatehouse_k8s::request::parse_query(q).unwrap_or_default()
}

fn param<'a>(q: &'a [(String, String)], k: &str) -> Option<&'a str> {
    q.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str())
}

const KINDS: &[(&str, &str, bool, &[&str])] = &[
    ("namespaces", "Namespace", false, &["ns"]),
    ("pods", "Pod", true, &["po"]),
    ("secrets", "Secret", true, &[]),
    ("configmaps", "ConfigMap", true, &["cm"]),
    (
        "replicationcontrollers",
        "ReplicationController",
        true,
        &["rc"],
    ),
];

fn resource_list() -> Value {
    let verbs = json!([
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch"
    ]);
    let mut resources: Vec<Value> = KINDS
        .iter()
        .map(|(name, kind, namespaced, short)| {
            json!({"name": name, "singularName": kind.to_ascii_lowercase(), "namespaced": namespaced,
                   "kind": kind, "verbs": verbs, "shortNames": short})
        })
        .collect();
    for (sub, kind, verbs) in [
        ("pods/exec", "PodExecOptions", json!(["create", "get"])),
        ("pods/attach", "PodAttachOptions", json!(["create", "get"])),
        ("pods/log", "Pod", json!(["get"])),
        (
            "pods/portforward",
            "PodPortForwardOptions",
            json!(["create", "get"]),
        ),
        (
            "replicationcontrollers/scale",
            "Scale",
            json!(["get", "patch", "update"]),
        ),
        (
            "pods/ephemeralcontainers",
            "Pod",
            json!(["get", "patch", "update"]),
        ),
    ] {
        let mut r = json!({"name": sub, "singularName": "", "namespaced": true, "kind": kind, "verbs": verbs});
        if kind == "Scale" {
            r["group"] = json!("autoscaling");
            r["version"] = json!("v1");
        }
        resources.push(r);
    }
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1", "resources": resources})
}

fn table(resource: &str, objs: &[Value], include: Option<&str>) -> Value {
    let col = |name: &str, format: &str| json!({"name": name, "type": "string", "format": format, "description": name, "priority": 0});
    type Cells = Box<dyn Fn(&Value) -> Vec<Value>>;
    let (cols, cells): (Vec<Value>, Cells) = match resource {
        "pods" => (
            vec![
                col("Name", "name"),
                col("Ready", ""),
                col("Status", ""),
                col("Restarts", ""),
                col("Age", ""),
            ],
            Box::new(|o: &Value| {
                vec![
                    o["metadata"]["name"].clone(),
                    json!("1/1"),
                    o["status"]["phase"].clone(),
                    json!(0),
                    json!("5m"),
                ]
            }),
        ),
        "secrets" => (
            vec![
                col("Name", "name"),
                col("Type", ""),
                col("Data", ""),
                col("Age", ""),
            ],
            Box::new(|o: &Value| {
                let n = o["data"].as_object().map_or(0, |m| m.len());
                vec![
                    o["metadata"]["name"].clone(),
                    o["type"].clone(),
                    json!(n),
                    json!("5m"),
                ]
            }),
        ),
        "configmaps" => (
            vec![col("Name", "name"), col("Data", ""), col("Age", "")],
            Box::new(|o: &Value| {
                let n = o["data"].as_object().map_or(0, |m| m.len());
                vec![o["metadata"]["name"].clone(), json!(n), json!("5m")]
            }),
        ),
        _ => (
            vec![col("Name", "name"), col("Status", ""), col("Age", "")],
            Box::new(|o: &Value| vec![o["metadata"]["name"].clone(), json!("Active"), json!("5m")]),
        ),
    };
    let rows: Vec<Value> = objs
        .iter()
        .map(|o| {
            let mut row = json!({"cells": cells(o)});
            match include.unwrap_or("PartialObjectMetadata") {
                "None" => {}
                "Object" => row["object"] = o.clone(),
                _ => {
                    row["object"] = json!({"kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]})
                }
            }
            row
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": "200"},
           "columnDefinitions": cols, "rows": rows})
}

fn wants_table(h: &HeaderMap) -> bool {
    h.get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("as=Table"))
}

fn wants_protobuf(h: &HeaderMap) -> bool {
    h.get_all("accept")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("protobuf"))
}

fn kind_of(resource: &str) -> &'static str {
    KINDS
        .iter()
        .find(|k| k.0 == resource)
        .map_or("Unknown", |k| k.1)
}

async fn handle(st: Arc<State>, mut req: Request<Incoming>, has_cert: bool) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    st.log.lock().unwrap().push(Seen {
        method: req.method().to_string(),
        path: path.clone(),
        query: query.clone(),
        headers: req.headers().clone(),
    });
    let authorized = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some(format!("Bearer {}", st.token).as_str());
    if !authorized && !has_cert {
        return status(401, "Unauthorized", "Unauthorized");
    }
    let upgrade = req
        .headers()
        .get("upgrade")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if upgrade.contains("spdy") {
        st.spdy_requests.fetch_add(1, Ordering::SeqCst);
        return status(
            400,
            "BadRequest",
            "unable to upgrade connection: SPDY/3.1 is not spoken by this API server",
        );
    }
    let q = query_params(&query);
    let seg: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let method = req.method().clone();
    match seg.as_slice() {
        ["version"] => {
            return json_resp(
                StatusCode::OK,
                &json!({"major": "1", "minor": "32", "gitVersion": "v1.32.0-standin",
                    "gitCommit": "0000000", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
                    "goVersion": "go1.23", "compiler": "gc", "platform": "linux/amd64"}),
            );
        }
        ["healthz"] | ["readyz"] | ["livez"] => {
            let mut r = Response::new(full("ok"));
            r.headers_mut()
                .insert("content-type", "text/plain".parse().unwrap());
            return r;
        }
        ["api"] => {
            return json_resp(
                StatusCode::OK,
                &json!({"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}]}),
            );
        }
        ["apis"] => {
            return json_resp(
                StatusCode::OK,
                &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []}),
            );
        }
        ["api", "v1"] => return json_resp(StatusCode::OK, &resource_list()),
        _ => {}
    }
    // Resource paths.
    let rest: Vec<&str> = match seg.as_slice() {
        ["api", "v1", rest @ ..] => rest.to_vec(),
        _ => {
            return status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            );
        }
    };
    let (ns, rest): (Option<&str>, Vec<&str>) = match rest.as_slice() {
        ["namespaces"] => (None, vec!["namespaces"]),
        ["namespaces", name] => (None, vec!["namespaces", name]),
        ["namespaces", ns, more @ ..] => (Some(*ns), more.to_vec()),
        other => (None, other.to_vec()),
    };
    let (resource, name, sub) = match rest.as_slice() {
        [r] => (*r, None, None),
        [r, n] => (*r, Some(*n), None),
        [r, n, s] => (*r, Some(*n), Some(*s)),
        _ => {
            return status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            );
        }
    };
    if !KINDS.iter().any(|k| k.0 == resource) {
        return status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
    }
    let ns_key = if resource == "namespaces" {
        ""
    } else {
        ns.unwrap_or("")
    };
    if let (Some("scale"), Some(name), "replicationcontrollers") = (sub, name, resource) {
        return scale(st, &mut req, ns_key, name).await;
    }
    if let Some(sub) = sub {
        let name = name.unwrap_or_default();
        if resource != "pods" {
            return status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            );
        }
        if st.get("pods", ns_key, name).is_none() {
            return status(404, "NotFound", &format!("pods \"{name}\" not found"));
        }
        return match sub {
            "log" => logs(st, &q),
            "exec" => exec(st, req, &q).await,
            "portforward" => portforward(st, req).await,
            "attach" => status(400, "BadRequest", "Upgrade request required"),
            _ => status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        };
    }
    match (method.as_str(), name) {
        ("GET", Some(name)) => match st.get(resource, ns_key, name) {
            // Asked for protobuf, the stand-in answers protobuf (the object's JSON wrapped in
            // the `k8s\0` envelope bytes): unmaskable, so the gateway must never ask for it.
            Some(obj) if wants_protobuf(req.headers()) => {
                let mut body = b"k8s\0".to_vec();
                body.extend_from_slice(obj.to_string().as_bytes());
                let mut r = Response::new(full(body));
                r.headers_mut().insert(
                    "content-type",
                    "application/vnd.kubernetes.protobuf".parse().unwrap(),
                );
                r
            }
            Some(obj) if wants_table(req.headers()) => json_resp(
                StatusCode::OK,
                &table(resource, &[obj], param(&q, "includeObject")),
            ),
            Some(obj) => json_resp(StatusCode::OK, &obj),
            None => not_found(resource, name),
        },
        ("GET", None) => {
            let objs: Vec<Value> = st
                .objects
                .lock()
                .unwrap()
                .iter()
                .filter(|((r, n, _), _)| r == resource && (ns.is_none() || n == ns_key))
                .map(|(_, v)| v.clone())
                .collect();
            let field_name = param(&q, "fieldSelector")
                .and_then(|f| f.strip_prefix("metadata.name="))
                .map(str::to_string);
            let objs: Vec<Value> = objs
                .into_iter()
                .filter(|o| {
                    field_name
                        .as_deref()
                        .is_none_or(|n| o["metadata"]["name"] == n)
                })
                .collect();
            if matches!(param(&q, "watch"), Some("true" | "1")) {
                return watch(
                    st,
                    resource,
                    ns.map(str::to_string),
                    &q,
                    objs,
                    wants_table(req.headers()),
                );
            }
            if wants_table(req.headers()) {
                return json_resp(
                    StatusCode::OK,
                    &table(resource, &objs, param(&q, "includeObject")),
                );
            }
            json_resp(
                StatusCode::OK,
                &json!({"kind": format!("{}List", kind_of(resource)), "apiVersion": "v1",
                        "metadata": {"resourceVersion": "200"}, "items": objs}),
            )
        }
        ("POST", None) => {
            let ct = req
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let body = req
                .body_mut()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            st.bodies
                .lock()
                .unwrap()
                .push((path.clone(), ct.clone(), body.clone()));
            let decoded = if ct.starts_with("application/vnd.kubernetes.protobuf") {
                protobuf_object(&body)
            } else if ct.starts_with("application/json") {
                serde_json::from_slice::<Value>(&body).map_err(|_| "invalid JSON body".to_string())
            } else {
                // What a real API server says for a body it cannot decode.
                return status(
                    415,
                    "UnsupportedMediaType",
                    &format!(
                        "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {ct:?})"
                    ),
                );
            };
            let mut obj = match decoded {
                Ok(obj) => obj,
                Err(e) => return status(400, "BadRequest", &e),
            };
            let Some(n) = obj["metadata"]["name"].as_str().map(str::to_string) else {
                return status(422, "Invalid", "metadata.name: Required value");
            };
            if st.get(resource, ns_key, &n).is_some() {
                return status(
                    409,
                    "AlreadyExists",
                    &format!("{resource} \"{n}\" already exists"),
                );
            }
            obj["kind"] = json!(kind_of(resource));
            obj["apiVersion"] = json!("v1");
            st.insert(resource, ns_key, obj);
            let created = st.get(resource, ns_key, &n).unwrap();
            json_resp(StatusCode::CREATED, &created)
        }
        ("PATCH", Some(name)) => {
            let ct = req
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let body = req
                .body_mut()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            st.bodies
                .lock()
                .unwrap()
                .push((path.clone(), ct.clone(), body.clone()));
            let patch: Value = match ct.split(';').next().unwrap_or("").trim() {
                "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                    match serde_json::from_slice(&body) {
                        Ok(v) => v,
                        Err(_) => return status(400, "BadRequest", "invalid JSON patch body"),
                    }
                }
                "application/apply-patch+yaml" => {
                    let text = String::from_utf8_lossy(&body);
                    match serde_saphyr::from_str::<Value>(&text) {
                        Ok(v) => v,
                        Err(_) => return status(400, "BadRequest", "invalid apply body"),
                    }
                }
                other => {
                    return status(
                        415,
                        "UnsupportedMediaType",
                        &format!(
                            "the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml (got {other:?})"
                        ),
                    );
                }
            };
            let server_side_apply = ct.starts_with("application/apply-patch+yaml");
            let mut obj = match st.get(resource, ns_key, name) {
                Some(obj) => obj,
                // Server-side apply creates what does not exist.
                None if server_side_apply => json!({"kind": kind_of(resource), "apiVersion": "v1",
                    "metadata": {"name": name}}),
                None => return not_found(resource, name),
            };
            merge_patch(&mut obj, &patch);
            obj["kind"] = json!(kind_of(resource));
            obj["apiVersion"] = json!("v1");
            obj["metadata"]["name"] = json!(name);
            st.insert(resource, ns_key, obj);
            json_resp(StatusCode::OK, &st.get(resource, ns_key, name).unwrap())
        }
        ("DELETE", Some(name)) => {
            let removed = st.objects.lock().unwrap().remove(&(
                resource.to_string(),
                ns_key.to_string(),
                name.to_string(),
            ));
            match removed {
                Some(obj) => {
                    let _ = st.events.send((
                        resource.to_string(),
                        ns_key.to_string(),
                        json!({"type": "DELETED", "object": obj}),
                    ));
                    json_resp(StatusCode::OK, &obj)
                }
                None => not_found(resource, name),
            }
        }
        _ => status(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        ),
    }
}

fn not_found(resource: &str, name: &str) -> Response<Body> {
    json_resp(
        StatusCode::NOT_FOUND,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("{resource} \"{name}\" not found"), "reason": "NotFound",
            "details": {"name": name, "kind": resource}, "code": 404}),
    )
}

fn watch(
    st: Arc<State>,
    resource: &str,
    ns: Option<String>,
    q: &[(String, String)],
    initial: Vec<Value>,
    as_table: bool,
) -> Response<Body> {
    let mut rx = st.events.subscribe();
    let resource = resource.to_string();
    let send_initial = matches!(param(q, "resourceVersion"), None | Some("" | "0"));
    let (tx, body_rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(16);
    let render = move |resource: &str, ev: Value| -> Bytes {
        let mut ev = ev;
        if as_table {
            let obj = ev["object"].clone();
            ev["object"] = table(resource, &[obj], Some("Object"));
        }
        Bytes::from(format!("{ev}\n"))
    };
    tokio::spawn(async move {
        if send_initial {
            for obj in initial {
                let ev = json!({"type": "ADDED", "object": obj});
                if tx
                    .send(Ok(Frame::data(render(&resource, ev))))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        loop {
            tokio::select! {
                ev = rx.recv() => {
                    let Ok((r, n, ev)) = ev else { return };
                    if r != resource || ns.as_deref().is_some_and(|ns| ns != n) {
                        continue;
                    }
                    if tx.send(Ok(Frame::data(render(&resource, ev)))).await.is_err() {
                        return;
                    }
                }
                () = tx.closed() => return,
            }
        }
    });
    let body = BodyExt::boxed(StreamBody::new(tokio_stream_from(body_rx)));
    let mut r = Response::new(body);
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

pub const LOG_LINE_1: &str = "starting web server on :8080";
pub const LOG_LINE_2: &str = "request from jane.doe@example.com done";

fn logs(st: Arc<State>, q: &[(String, String)]) -> Response<Body> {
    let follow = matches!(param(q, "follow"), Some("true" | "1"));
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    let st2 = st.clone();
    tokio::spawn(async move {
        let head = st.log_head.lock().unwrap().clone();
        let head = head.unwrap_or_else(|| Bytes::from(format!("{LOG_LINE_1}\n")));
        let _ = tx.send(Ok(Frame::data(head))).await;
        if follow {
            st.log_gate.notified().await;
        }
        let tail = st.log_tail.lock().unwrap().clone();
        let second = tail.unwrap_or_else(|| Bytes::from(format!("{LOG_LINE_2}\n")));
        let _ = tx.send(Ok(Frame::data(second))).await;
    });
    let content_type = st2
        .log_content_type
        .lock()
        .unwrap()
        .clone()
        .unwrap_or_else(|| "text/plain".into());
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(tokio_stream_from(rx))));
    r.headers_mut()
        .insert("content-type", content_type.parse().unwrap());
    r
}

async fn exec(
    st: Arc<State>,
    mut req: Request<Incoming>,
    q: &[(String, String)],
) -> Response<Body> {
    st.exec_requests.fetch_add(1, Ordering::SeqCst);
    let is_ws = req
        .headers()
        .get("upgrade")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !is_ws {
        return status(400, "BadRequest", "Upgrade request required");
    }
    let offered: Vec<String> = req
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_string())
        .collect();
    let Some(protocol) = offered
        .iter()
        .find(|p| *p == "v5.channel.k8s.io" || *p == "v4.channel.k8s.io")
        .cloned()
    else {
        return status(400, "BadRequest", "no supported WebSocket subprotocol");
    };
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return status(400, "BadRequest", "missing Sec-WebSocket-Key");
    };
    let argv: Vec<String> = q
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    if argv.is_empty() {
        return status(400, "BadRequest", "you must specify at least 1 command");
    }
    let tty = matches!(param(q, "tty"), Some("true" | "1"));
    let stdin = matches!(param(q, "stdin"), Some("true" | "1"));
    let v5 = protocol == "v5.channel.k8s.io";
    let upgrade = hyper::upgrade::on(&mut req);
    let st2 = st.clone();
    tokio::spawn(async move {
        let Ok(io) = upgrade.await else { return };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, None).await;
        run_exec(st2, ws, argv, tty, stdin, v5).await;
    });
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert("connection", "Upgrade".parse().unwrap());
    h.insert("upgrade", "websocket".parse().unwrap());
    h.insert(
        "sec-websocket-accept",
        tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes())
            .parse()
            .unwrap(),
    );
    h.insert("sec-websocket-protocol", protocol.parse().unwrap());
    r
}

/// The WebSocket subprotocol of the SPDY port-forward tunnel.
const PORTFORWARD_TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";

async fn portforward(st: Arc<State>, mut req: Request<Incoming>) -> Response<Body> {
    let offered = req
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == PORTFORWARD_TUNNEL);
    let is_ws = req
        .headers()
        .get("upgrade")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return status(400, "BadRequest", "Upgrade request required");
    };
    if !is_ws || !offered {
        return status(400, "BadRequest", "Upgrade request required");
    }
    st.portforward_requests.fetch_add(1, Ordering::SeqCst);
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(io) = upgrade.await else { return };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, None).await;
        run_portforward(st, ws).await;
    });
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert("connection", "Upgrade".parse().unwrap());
    h.insert("upgrade", "websocket".parse().unwrap());
    h.insert(
        "sec-websocket-accept",
        tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes())
            .parse()
            .unwrap(),
    );
    h.insert(
        "sec-websocket-protocol",
        PORTFORWARD_TUNNEL.parse().unwrap(),
    );
    r
}

/// One forward being assembled: its error and data streams (by `requestID`).
#[derive(Default)]
struct PendingForward {
    port: u16,
    error: Option<u32>,
    data: Option<u32>,
}

/// The kubelet side of a port-forward SPDY connection.
async fn run_portforward<S>(st: Arc<State>, ws: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use gatehouse_k8s::spdy::{self, Frame, FrameReader, HeaderDeflater, HeaderInflater};
    use tokio::sync::mpsc;
    let (mut ws_tx, mut ws_rx) = ws.split();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer = tokio::spawn(async move {
        while let Some(b) = out_rx.recv().await {
            if ws_tx.send(Message::Binary(b.into())).await.is_err() {
                break;
            }
        }
        let _ = ws_tx.close().await;
    });
    let mut reader = FrameReader::new();
    let mut inflater = HeaderInflater::new();
    let mut deflater = HeaderDeflater::new().unwrap();
    let mut pending: BTreeMap<String, PendingForward> = BTreeMap::new();
    let mut to_pod: BTreeMap<u32, mpsc::UnboundedSender<Option<Bytes>>> = BTreeMap::new();
    'conn: while let Some(Ok(msg)) = ws_rx.next().await {
        let Message::Binary(b) = msg else {
            if matches!(msg, Message::Close(_)) {
                break;
            }
            continue;
        };
        reader.push(&b);
        loop {
            let (frame, raw) = match reader.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => break 'conn,
            };
            match &frame {
                Frame::Control {
                    kind: spdy::SYN_STREAM,
                    ..
                } => {
                    let id = frame.stream_id().unwrap();
                    let Ok(headers) = inflater.decode(frame.header_block().unwrap_or(&[])) else {
                        break 'conn;
                    };
                    let reply = deflater.encode(&[]).unwrap();
                    let _ = out_tx.send(Frame::syn_reply(id, &reply, false).encode());
                    let port = spdy::header(&headers, "port")
                        .and_then(|p| p.parse::<u16>().ok())
                        .unwrap_or(0);
                    st.portforward_ports.lock().unwrap().push(port);
                    let request = spdy::header(&headers, "requestid")
                        .unwrap_or("")
                        .to_string();
                    let p = pending.entry(request.clone()).or_default();
                    p.port = port;
                    match spdy::header(&headers, "streamtype") {
                        Some("error") => p.error = Some(id),
                        Some("data") => p.data = Some(id),
                        _ => {
                            let _ = out_tx.send(Frame::rst_stream(id, 1).encode());
                        }
                    }
                    if let (Some(error), Some(data)) = (p.error, p.data) {
                        let port = p.port;
                        pending.remove(&request);
                        let (tx, rx) = mpsc::unbounded_channel();
                        to_pod.insert(data, tx);
                        tokio::spawn(forward_to_pod(
                            st.clone(),
                            port,
                            error,
                            data,
                            rx,
                            out_tx.clone(),
                        ));
                    }
                }
                Frame::Control {
                    kind: spdy::PING, ..
                } => {
                    let _ = out_tx.send(raw.to_vec());
                }
                Frame::Control {
                    kind: spdy::RST_STREAM,
                    ..
                } => {
                    if let Some(tx) = frame.stream_id().and_then(|id| to_pod.remove(&id)) {
                        let _ = tx.send(None);
                    }
                }
                Frame::Control {
                    kind: spdy::GOAWAY, ..
                } => break 'conn,
                Frame::Control { .. } => {}
                Frame::Data {
                    stream_id, payload, ..
                } => {
                    if let Some(tx) = to_pod.get(stream_id) {
                        if !payload.is_empty() {
                            let _ = tx.send(Some(payload.clone()));
                        }
                        if frame.fin() {
                            let _ = tx.send(None);
                        }
                    }
                }
            }
        }
    }
    for (_, tx) in to_pod {
        let _ = tx.send(None);
    }
    drop(out_tx);
    let _ = writer.await;
}

/// One forward: the pod's port (a local server) ↔ the data stream; a failure is written on the
/// error stream; both streams end with FIN, as the kubelet's handler ends them.
async fn forward_to_pod(
    st: Arc<State>,
    port: u16,
    error: u32,
    data: u32,
    mut from_client: tokio::sync::mpsc::UnboundedReceiver<Option<Bytes>>,
    out: tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
) {
    use gatehouse_k8s::spdy::Frame;
    let target = st.pod_ports.lock().unwrap().get(&port).copied();
    let conn = match target {
        Some(addr) if addr.ip().is_loopback() => tokio::net::TcpStream::connect(addr).await.ok(),
        _ => None,
    };
    let Some(conn) = conn else {
        let msg = format!(
            "an error occurred forwarding {port} -> {port}: error forwarding port {port} to pod: connection refused"
        );
        let _ = out.send(Frame::data(error, msg.as_bytes(), false).encode());
        let _ = out.send(Frame::data(data, &[], true).encode());
        let _ = out.send(Frame::data(error, &[], true).encode());
        return;
    };
    let (mut rd, mut wr) = conn.into_split();
    let inbound = tokio::spawn(async move {
        while let Some(Some(b)) = from_client.recv().await {
            if wr.write_all(&b).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if out
                    .send(Frame::data(data, &buf[..n], false).encode())
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    let _ = out.send(Frame::data(data, &[], true).encode());
    inbound.abort();
    let _ = out.send(Frame::data(error, &[], true).encode());
}

async fn run_exec<S>(
    st: Arc<State>,
    ws: WebSocketStream<S>,
    argv: Vec<String>,
    tty: bool,
    stdin: bool,
    v5: bool,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use std::process::Stdio;
    let mut cmd = if tty {
        // `script` gives the command a pty, as the kubelet's container runtime would.
        let mut c = tokio::process::Command::new("script");
        c.args([
            "-q",
            "-e",
            "-f",
            "-c",
            &gatehouse_core::shell::join(&argv),
            "/dev/null",
        ]);
        c
    } else {
        let mut c = tokio::process::Command::new(&argv[0]);
        c.args(&argv[1..]);
        c
    };
    // The pod's environment holds a copy of the gateway's token (a leak the egress guard must
    // catch on the way out).
    cmd.env("LEAKY_TOKEN", &st.token);
    cmd.stdin(if stdin || tty {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true)
    .process_group(0);
    let (mut tx, mut rx) = ws.split();
    // With a tty, wait (briefly) for the caller's first window size before starting, as a
    // runtime sizes the terminal before the process runs.
    if tty {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(3), async {
            while let Some(Ok(Message::Binary(b))) = rx.next().await {
                if b.first() == Some(&4) {
                    if let Ok(v) = serde_json::from_slice::<Value>(&b[1..]) {
                        st.resizes.lock().unwrap().push((
                            v["Width"].as_u64().unwrap_or(0),
                            v["Height"].as_u64().unwrap_or(0),
                        ));
                    }
                    break;
                }
            }
        })
        .await;
    }
    let send_status = |v: Value| {
        Message::Binary({
            let mut b = vec![3u8];
            b.extend_from_slice(v.to_string().as_bytes());
            b.into()
        })
    };
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = tx
                .send(send_status(json!({"metadata": {}, "status": "Failure",
                    "message": format!("exec failed: {e}"), "reason": "InternalError", "code": 500})))
                .await;
            let _ = tx.close().await;
            return;
        }
    };
    let mut child_in = child.stdin.take();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let (otx, mut orx) = tokio::sync::mpsc::channel::<(u8, Vec<u8>)>(16);
    let o2 = otx.clone();
    let out_task = tokio::spawn(async move {
        let mut buf = vec![0u8; 8192];
        while let Ok(n) = out.read(&mut buf).await {
            if n == 0 || o2.send((1, buf[..n].to_vec())).await.is_err() {
                break;
            }
        }
    });
    let err_task = tokio::spawn(async move {
        let mut buf = vec![0u8; 8192];
        while let Ok(n) = err.read(&mut buf).await {
            if n == 0 || otx.send((2, buf[..n].to_vec())).await.is_err() {
                break;
            }
        }
    });
    let mut outputs_open = true;
    let exit = loop {
        tokio::select! {
            chunk = orx.recv(), if outputs_open => match chunk {
                Some((ch, data)) => {
                    let mut b = vec![ch];
                    b.extend_from_slice(&data);
                    if tx.send(Message::Binary(b.into())).await.is_err() {
                        break None;
                    }
                }
                None => outputs_open = false,
            },
            status = child.wait(), if !outputs_open => break status.ok(),
            msg = rx.next() => match msg {
                Some(Ok(Message::Binary(b))) => match b.first() {
                    Some(0) => {
                        if let Some(i) = child_in.as_mut() {
                            let _ = i.write_all(&b[1..]).await;
                            let _ = i.flush().await;
                        }
                    }
                    Some(4) => {
                        if let Ok(v) = serde_json::from_slice::<Value>(&b[1..]) {
                            st.resizes.lock().unwrap().push((
                                v["Width"].as_u64().unwrap_or(0),
                                v["Height"].as_u64().unwrap_or(0),
                            ));
                        }
                    }
                    Some(255) if v5 && b.get(1) == Some(&0) => {
                        child_in = None;
                    }
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break None,
                _ => {}
            },
        }
    };
    out_task.abort();
    err_task.abort();
    if exit.is_none() {
        let _ = child.start_kill();
    }
    let status = match exit.and_then(|s| s.code()) {
        Some(0) => json!({"metadata": {}, "status": "Success"}),
        Some(code) => json!({"metadata": {}, "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command [{}], exit code {code}", argv.join(" ")),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}}),
        None => return,
    };
    let _ = tx.send(send_status(status)).await;
    // A real API server ends the stream with a normal closure (1000).
    let _ = tx
        .send(Message::Close(Some(
            tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
                reason: "".into(),
            },
        )))
        .await;
    let _ = tx.close().await;
}

/// Decodes a protobuf body the way the API server's protobuf serializer does: the `k8s\0`
/// magic, a `runtime.Unknown` envelope naming the kind, the object's own message inside.
/// Config maps and secrets only (what kubectl's typed generators send here).
fn protobuf_object(body: &[u8]) -> Result<Value, String> {
    use k8s_pb::api::core::v1 as core;
    use prost::Message as _;
    let rest = body
        .strip_prefix(b"k8s\0".as_slice())
        .ok_or("protobuf body without the k8s magic")?;
    let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown::decode(rest)
        .map_err(|e| format!("protobuf envelope: {e}"))?;
    let tm = unknown.type_meta.unwrap_or_default();
    let raw = unknown.raw.unwrap_or_default();
    let meta = |m: Option<k8s_pb::apimachinery::pkg::apis::meta::v1::ObjectMeta>| {
        let m = m.unwrap_or_default();
        json!({"name": m.name, "namespace": m.namespace, "labels": m.labels,
               "annotations": m.annotations})
    };
    match (tm.api_version.as_deref(), tm.kind.as_deref()) {
        (Some("v1"), Some("ConfigMap")) => {
            let cm = core::ConfigMap::decode(raw.as_slice()).map_err(|e| e.to_string())?;
            let binary: BTreeMap<String, String> = cm
                .binary_data
                .iter()
                .map(|(k, v)| {
                    use base64::Engine as _;
                    (
                        k.clone(),
                        base64::engine::general_purpose::STANDARD.encode(v),
                    )
                })
                .collect();
            Ok(json!({"metadata": meta(cm.metadata), "data": cm.data, "binaryData": binary}))
        }
        (Some("v1"), Some("Secret")) => {
            let s = core::Secret::decode(raw.as_slice()).map_err(|e| e.to_string())?;
            let data: BTreeMap<String, String> = s
                .data
                .iter()
                .map(|(k, v)| {
                    use base64::Engine as _;
                    (
                        k.clone(),
                        base64::engine::general_purpose::STANDARD.encode(v),
                    )
                })
                .chain(s.string_data.iter().map(|(k, v)| (k.clone(), b64(v))))
                .collect();
            Ok(json!({"metadata": meta(s.metadata), "data": data, "type": s.r#type}))
        }
        (v, k) => Err(format!(
            "protobuf {}/{} is not served by this stand-in",
            v.unwrap_or(""),
            k.unwrap_or("")
        )),
    }
}

/// RFC 7386 JSON merge patch (also how this stand-in reads strategic merge patches and
/// server-side apply bodies: for the maps kubectl label/edit/apply change, they agree).
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if k.starts_with('$') {
                        continue;
                    }
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// `replicationcontrollers/{name}/scale`: GET and merge-PATCH an `autoscaling/v1` `Scale`.
async fn scale(
    st: Arc<State>,
    req: &mut Request<Incoming>,
    ns: &str,
    name: &str,
) -> Response<Body> {
    let Some(mut rc) = st.get("replicationcontrollers", ns, name) else {
        return not_found("replicationcontrollers", name);
    };
    let as_scale = |rc: &Value| {
        json!({"kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {"name": name, "namespace": ns,
                "resourceVersion": rc["metadata"]["resourceVersion"]},
            "spec": {"replicas": rc["spec"]["replicas"]},
            "status": {"replicas": rc["status"]["replicas"], "selector": "app=web"}})
    };
    match req.method().as_str() {
        "GET" => json_resp(StatusCode::OK, &as_scale(&rc)),
        "PATCH" => {
            let body = req
                .body_mut()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
                return status(400, "BadRequest", "invalid JSON patch body");
            };
            let Some(replicas) = patch["spec"]["replicas"].as_u64() else {
                return status(422, "Invalid", "spec.replicas: Required value");
            };
            rc["spec"]["replicas"] = json!(replicas);
            st.insert("replicationcontrollers", ns, rc);
            let rc = st.get("replicationcontrollers", ns, name).unwrap();
            json_resp(StatusCode::OK, &as_scale(&rc))
        }
        _ => status(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        ),
    }
}
