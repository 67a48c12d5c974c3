//! Kubernetes request parsing: method + path + query → [`KubeOperation`], the same way the API
//! server's request-info resolver reads them. Sans-IO and total: hostile input gets an error,
//! never a panic (fuzzed by `fuzz/fuzz_targets/k8s_request.rs`).
//!
//! What it promises:
//! - The path is canonicalised with [`gatehouse_core::http_path`] and then encoded slashes
//!   (`%2F`) are decoded and the result canonicalised again, until stable — the API server (Go's
//!   `net/http`) routes on the *decoded* path, so `pods%2F..%2Fsecrets` must decide like
//!   `secrets`. The path that was decided is the path forwarded ([`ParsedRequest::path`]).
//! - exec, attach and portforward are classified by subresource whatever the HTTP method
//!   (WebSocket exec is a `GET`, the SPDY fallback a `POST`); `log` and `proxy` likewise.
//! - `watch=true`/`watch=1` and the legacy `/watch/` path prefix give verb `watch`.
//! - Non-resource URLs (`/version`, `/healthz`, `/openapi/v2`) and discovery (`/api`,
//!   `/apis/apps/v1`) have an empty resource, the lower-case HTTP method as verb and `path` set.
//! - For exec, every `command=` parameter becomes one argv word; the command line given to the
//!   policy is [`gatehouse_core::shell::join`] of it, parsed like an SSH exec.

use gatehouse_core::{ExecCommand, KubeOperation, http_path, shell};

/// How many rounds of `%2F` decoding are accepted before the path is refused as ambiguous.
const MAX_DECODE_ROUNDS: usize = 4;

/// Why a request could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The path is malformed (bad percent-encoding, control characters, ambiguous dot segments).
    #[error("request path refused: {0}")]
    Path(String),
    /// The query string is malformed.
    #[error("query string refused: {0}")]
    Query(String),
}

/// Stream options of an exec/attach request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamOptions {
    /// `container=`.
    pub container: Option<String>,
    /// `stdin=true`.
    pub stdin: bool,
    /// `stdout=true`.
    pub stdout: bool,
    /// `stderr=true`.
    pub stderr: bool,
    /// `tty=true`.
    pub tty: bool,
}

/// One request, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedRequest {
    /// The operation the policy decides.
    pub operation: KubeOperation,
    /// The canonical path: what was decided is what is forwarded.
    pub path: String,
    /// The query string as received (forwarded unchanged; its parameters were read for the
    /// operation).
    pub query: Option<String>,
    /// For exec/attach: the stream options.
    pub streams: Option<StreamOptions>,
}

impl ParsedRequest {
    /// Whether the request is a watch (a long-lived stream of events).
    pub fn is_watch(&self) -> bool {
        self.operation.verb == "watch"
    }

    /// Whether the request is a `log` with `follow=true`.
    pub fn is_follow(&self, query: &[(String, String)]) -> bool {
        self.operation.verb == "log" && query_flag(query, "follow")
    }
}

/// Decodes an `application/x-www-form-urlencoded` query the way Go's `url.ParseQuery` does
/// (`+` is a space; both `&` and `;`-free). Malformed escapes are an error, not a guess.
pub fn parse_query(query: &str) -> Result<Vec<(String, String)>, RequestError> {
    let mut out = Vec::new();
    for pair in query.split('&') {
        if pair.is_empty() {
            continue;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.push((form_decode(k)?, form_decode(v)?));
    }
    Ok(out)
}

fn form_decode(s: &str) -> Result<String, RequestError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| RequestError::Query(format!("invalid escape at byte {i}")))?;
                out.push(hex);
                i += 2;
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| RequestError::Query("not UTF-8".into()))
}

fn percent_decode_segment(s: &str) -> String {
    // Segments come from the canonical path: escapes there are well formed.
    form_decode(&s.replace('+', "%2B")).unwrap_or_else(|_| s.to_string())
}

fn query_value<'a>(query: &'a [(String, String)], key: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn query_flag(query: &[(String, String)], key: &str) -> bool {
    // Go's strconv.ParseBool, as the API server's parameter codec uses it.
    matches!(
        query_value(query, key),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True")
    )
}

/// Canonicalises `raw`, decoding `%2F` the way the API server will, until the path is stable.
pub fn canonical_kube_path(raw: &str) -> Result<String, RequestError> {
    let mut path = http_path::canonicalize(raw)
        .map_err(|e| RequestError::Path(e.to_string()))?
        .path;
    for _ in 0..MAX_DECODE_ROUNDS {
        if !path.contains("%2F") {
            return Ok(path);
        }
        let decoded = path.replace("%2F", "/");
        path = http_path::canonicalize(&decoded)
            .map_err(|e| RequestError::Path(e.to_string()))?
            .path;
    }
    if path.contains("%2F") {
        return Err(RequestError::Path("too many levels of encoded '/'".into()));
    }
    Ok(path)
}

/// Parses one request. `method` is the HTTP method (any case); `raw_path` the path as received;
/// `query` the raw query string without `?`.
pub fn parse_request(
    method: &str,
    raw_path: &str,
    query: Option<&str>,
) -> Result<ParsedRequest, RequestError> {
    let path = canonical_kube_path(raw_path)?;
    let params = match query {
        Some(q) => parse_query(q)?,
        None => Vec::new(),
    };
    let method_lc = method.to_ascii_lowercase();
    let segments: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode_segment)
        .collect();
    let non_resource = |method_lc: String| KubeOperation {
        verb: method_lc,
        path: Some(path.clone()),
        ..KubeOperation::default()
    };
    let (group, version, rest): (String, String, &[String]) = match segments.as_slice() {
        [api, version, rest @ ..] if api == "api" && !rest.is_empty() => {
            (String::new(), version.clone(), rest)
        }
        [apis, group, version, rest @ ..] if apis == "apis" && !rest.is_empty() => {
            (group.clone(), version.clone(), rest)
        }
        _ => {
            return Ok(ParsedRequest {
                operation: non_resource(method_lc),
                path,
                query: query.map(str::to_string),
                streams: None,
            });
        }
    };
    let mut op = KubeOperation {
        group,
        version,
        ..KubeOperation::default()
    };
    let mut parts: &[String] = rest;
    let mut legacy_watch = false;
    if let [first, tail @ ..] = parts
        && (first == "watch" || first == "proxy")
        && !tail.is_empty()
    {
        // Legacy `/api/v1/watch/…` and `/api/v1/proxy/…` prefixes.
        if first == "watch" {
            legacy_watch = true;
        } else {
            op.verb = "proxy".into();
        }
        parts = tail;
    }
    if let [ns_kw, ns, tail @ ..] = parts
        && ns_kw == "namespaces"
    {
        op.namespace = Some(ns.clone());
        match tail.first() {
            Some(next) if next != "status" && next != "finalize" => parts = tail,
            _ => {}
        }
    }
    match parts {
        [] => {
            return Ok(ParsedRequest {
                operation: non_resource(method_lc),
                path,
                query: query.map(str::to_string),
                streams: None,
            });
        }
        [resource] => op.resource = resource.clone(),
        [resource, name] => {
            op.resource = resource.clone();
            op.name = Some(name.clone());
        }
        [resource, name, sub, ..] => {
            op.resource = resource.clone();
            op.name = Some(name.clone());
            op.subresource = Some(sub.clone());
        }
    }
    // `/api/v1/namespaces/foo` names the namespace object itself: namespaced requests carry
    // their own namespace, a cluster-scoped namespace object carries its name.
    if op.resource == "namespaces" && op.subresource.is_none() && op.name.is_none() {
        op.namespace = None;
    }
    let watch_param = query_flag(&params, "watch");
    let verb = if !op.verb.is_empty() {
        op.verb.clone()
    } else {
        match op.subresource.as_deref() {
            Some(s @ ("exec" | "attach" | "portforward" | "proxy")) => s.to_string(),
            Some("log") => "log".into(),
            _ => match method_lc.as_str() {
                "get" | "head" => {
                    if legacy_watch || watch_param {
                        "watch".into()
                    } else if op.name.is_some() {
                        "get".into()
                    } else {
                        "list".into()
                    }
                }
                "post" => "create".into(),
                "put" => "update".into(),
                "patch" => "patch".into(),
                "delete" => {
                    if op.name.is_some() {
                        "delete".into()
                    } else {
                        "deletecollection".into()
                    }
                }
                other => other.to_string(),
            },
        }
    };
    op.verb = verb;
    // list/watch of one object by field selector (kubectl get pod x -w) names it.
    if matches!(op.verb.as_str(), "list" | "watch")
        && op.name.is_none()
        && let Some(sel) = query_value(&params, "fieldSelector")
    {
        for term in sel.split(',') {
            if let Some(name) = term
                .strip_prefix("metadata.name=")
                .or_else(|| term.strip_prefix("metadata.name=="))
            {
                op.name = Some(name.to_string());
            }
        }
    }
    let mut streams = None;
    if matches!(op.verb.as_str(), "exec" | "attach") {
        streams = Some(StreamOptions {
            container: query_value(&params, "container").map(str::to_string),
            stdin: query_flag(&params, "stdin"),
            stdout: query_flag(&params, "stdout"),
            stderr: query_flag(&params, "stderr"),
            tty: query_flag(&params, "tty"),
        });
    }
    if op.verb == "exec" {
        let argv: Vec<&str> = params
            .iter()
            .filter(|(k, _)| k == "command")
            .map(|(_, v)| v.as_str())
            .collect();
        op.command = Some(ExecCommand::parse(shell::join(&argv)));
    }
    Ok(ParsedRequest {
        operation: op,
        path,
        query: query.map(str::to_string),
        streams,
    })
}

/// What an approval of a reviewed request binds, as one line the approver reads:
/// `METHOD /path?query content-type=… body-sha256=…`. A request that differs in any of them
/// (another `dryRun`, `fieldManager`, `force`, patch type or body) is another operation and
/// opens its own approval.
pub fn review_binding(
    method: &str,
    parsed: &ParsedRequest,
    content_type: Option<&str>,
    body: &[u8],
) -> String {
    use sha2::Digest;
    let mut s = format!("{} {}", method.to_ascii_uppercase(), parsed.path);
    if let Some(q) = parsed.query.as_deref().filter(|q| !q.is_empty()) {
        s.push('?');
        s.push_str(q);
    }
    if let Some(ct) = content_type {
        s.push_str(" content-type=");
        s.push_str(ct.trim());
    }
    if !body.is_empty() {
        s.push_str(" body-sha256=");
        s.push_str(&hex::encode(sha2::Sha256::digest(body)));
    }
    s
}

/// Why an operation is sensitive enough that only an explicit rule may allow it (the policy's
/// default verdict never does): port forwarding, ephemeral containers (`kubectl debug`), node
/// and service proxies, and privileged pod specs.
pub fn sensitive_reason(op: &KubeOperation, body: Option<&serde_json::Value>) -> Option<String> {
    match op.verb.as_str() {
        "portforward" => return Some("port forwarding".into()),
        "proxy" => return Some("API server proxy to a pod, service or node".into()),
        _ => {}
    }
    if op.subresource.as_deref() == Some("ephemeralcontainers") {
        return Some("ephemeral (debug) containers".into());
    }
    if matches!(op.verb.as_str(), "create" | "update" | "patch")
        && let Some(body) = body
        && let Some(what) = privileged_spec(body)
    {
        return Some(format!("privileged pod spec ({what})"));
    }
    None
}

/// Finds a privileged setting anywhere in a pod, workload or patch document.
pub fn privileged_spec(v: &serde_json::Value) -> Option<&'static str> {
    use serde_json::Value;
    const HOST_FLAGS: &[(&str, &str)] = &[
        ("privileged", "securityContext.privileged"),
        ("hostPID", "hostPID"),
        ("hostNetwork", "hostNetwork"),
        ("hostIPC", "hostIPC"),
        ("allowPrivilegeEscalation", "allowPrivilegeEscalation"),
    ];
    fn walk(v: &Value, depth: usize) -> Option<&'static str> {
        if depth > 64 {
            return Some("document nested too deeply to check");
        }
        match v {
            Value::Object(map) => {
                for (key, label) in HOST_FLAGS {
                    if map.get(*key) == Some(&Value::Bool(true)) {
                        return Some(label);
                    }
                }
                if map.get("hostPath").is_some_and(|h| !h.is_null()) {
                    return Some("hostPath volume");
                }
                // JSON patch: {"op": "add", "path": "/spec/hostPID", "value": true}
                if let (Some(Value::String(path)), Some(value)) =
                    (map.get("path"), map.get("value"))
                {
                    for (key, label) in HOST_FLAGS {
                        if path.ends_with(&format!("/{key}")) && value == &Value::Bool(true) {
                            return Some(label);
                        }
                    }
                    if path.contains("hostPath") {
                        return Some("hostPath volume");
                    }
                }
                map.values().find_map(|x| walk(x, depth + 1))
            }
            Value::Array(items) => items.iter().find_map(|x| walk(x, depth + 1)),
            _ => None,
        }
    }
    walk(v, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(method: &str, path: &str, query: Option<&str>) -> KubeOperation {
        parse_request(method, path, query).unwrap().operation
    }

    #[test]
    fn resource_requests() {
        let o = op("GET", "/api/v1/namespaces/default/pods", Some("limit=500"));
        assert_eq!(o.verb, "list");
        assert_eq!(o.group, "");
        assert_eq!(o.version, "v1");
        assert_eq!(o.resource, "pods");
        assert_eq!(o.namespace.as_deref(), Some("default"));
        assert_eq!(o.name, None);

        let o = op("GET", "/api/v1/namespaces/default/pods/web-0", None);
        assert_eq!((o.verb.as_str(), o.name.as_deref()), ("get", Some("web-0")));

        let o = op("DELETE", "/api/v1/namespaces/default/pods/web-0", None);
        assert_eq!(o.verb, "delete");
        let o = op("DELETE", "/api/v1/namespaces/default/pods", None);
        assert_eq!(o.verb, "deletecollection");
        let o = op("POST", "/api/v1/namespaces/default/configmaps", None);
        assert_eq!(o.verb, "create");
        let o = op("PUT", "/api/v1/namespaces/default/configmaps/c", None);
        assert_eq!(o.verb, "update");
        let o = op(
            "PATCH",
            "/apis/apps/v1/namespaces/prod/deployments/api",
            None,
        );
        assert_eq!(
            (o.verb.as_str(), o.group.as_str(), o.resource.as_str()),
            ("patch", "apps", "deployments")
        );
        let o = op("GET", "/api/v1/pods", None);
        assert_eq!((o.verb.as_str(), o.namespace.as_deref()), ("list", None));
        let o = op("GET", "/api/v1/namespaces/default/pods/web-0/status", None);
        assert_eq!(o.subresource.as_deref(), Some("status"));
        assert_eq!(o.verb, "get");
    }

    #[test]
    fn namespaces_themselves() {
        let o = op("GET", "/api/v1/namespaces", None);
        assert_eq!(
            (o.verb.as_str(), o.resource.as_str(), o.namespace.as_deref()),
            ("list", "namespaces", None)
        );
        let o = op("GET", "/api/v1/namespaces/kube-system", None);
        assert_eq!(o.resource, "namespaces");
        assert_eq!(o.name.as_deref(), Some("kube-system"));
        assert_eq!(o.namespace.as_deref(), Some("kube-system"));
        let o = op("PUT", "/api/v1/namespaces/x/finalize", None);
        assert_eq!(
            (o.resource.as_str(), o.subresource.as_deref()),
            ("namespaces", Some("finalize"))
        );
        assert_eq!(o.verb, "update");
    }

    #[test]
    fn watches() {
        let o = op("GET", "/api/v1/namespaces/default/pods", Some("watch=true"));
        assert_eq!(o.verb, "watch");
        let o = op("GET", "/api/v1/namespaces/default/pods", Some("watch=1"));
        assert_eq!(o.verb, "watch");
        let o = op(
            "GET",
            "/api/v1/namespaces/default/pods",
            Some("watch=false"),
        );
        assert_eq!(o.verb, "list");
        let o = op("GET", "/api/v1/watch/namespaces/default/pods", None);
        assert_eq!((o.verb.as_str(), o.resource.as_str()), ("watch", "pods"));
        let o = op(
            "GET",
            "/api/v1/namespaces/default/pods",
            Some("fieldSelector=metadata.name%3Dweb-0&watch=true"),
        );
        assert_eq!(o.name.as_deref(), Some("web-0"));
    }

    #[test]
    fn exec_attach_portforward_whatever_the_method() {
        let q = "command=sh&command=-c&command=echo+hello+world&container=app&stdin=true&stdout=true&tty=true";
        for method in ["GET", "POST"] {
            let p = parse_request(
                method,
                "/api/v1/namespaces/default/pods/web-0/exec",
                Some(q),
            )
            .unwrap();
            assert_eq!(p.operation.verb, "exec");
            assert_eq!(p.operation.subresource.as_deref(), Some("exec"));
            let cmd = p.operation.command.as_ref().unwrap();
            assert_eq!(cmd.command_line, "sh -c 'echo hello world'");
            assert_eq!(cmd.parsed.argv, vec!["echo", "hello", "world"]);
            let s = p.streams.unwrap();
            assert!(s.stdin && s.stdout && s.tty && !s.stderr);
            assert_eq!(s.container.as_deref(), Some("app"));
        }
        let o = op("POST", "/api/v1/namespaces/default/pods/web-0/attach", None);
        assert_eq!(o.verb, "attach");
        assert!(o.command.is_none());
        let o = op(
            "GET",
            "/api/v1/namespaces/default/pods/web-0/portforward",
            None,
        );
        assert_eq!(o.verb, "portforward");
        let o = op(
            "GET",
            "/api/v1/namespaces/default/pods/web-0/log",
            Some("follow=true"),
        );
        assert_eq!(o.verb, "log");
        let o = op(
            "GET",
            "/api/v1/namespaces/default/pods/web-0/proxy/metrics",
            None,
        );
        assert_eq!(o.verb, "proxy");
        let o = op("GET", "/api/v1/proxy/namespaces/default/pods/web-0", None);
        assert_eq!(o.verb, "proxy");
    }

    #[test]
    fn discovery_and_non_resource() {
        for p in [
            "/api",
            "/api/v1",
            "/apis",
            "/apis/apps",
            "/apis/apps/v1",
            "/version",
            "/healthz",
            "/openapi/v2",
        ] {
            let o = op("GET", p, None);
            assert_eq!(o.verb, "get", "{p}");
            assert!(o.resource.is_empty(), "{p}");
            assert_eq!(o.path.as_deref(), Some(p));
        }
        let o = op("POST", "/version", None);
        assert_eq!(o.verb, "post");
    }

    #[test]
    fn path_tricks_decide_like_the_plain_path() {
        let plain = parse_request("GET", "/api/v1/namespaces/default/secrets", None).unwrap();
        for trick in [
            "/api/v1/namespaces/default/pods/../secrets",
            "/api/v1/namespaces/default/pods%2F..%2Fsecrets",
            "/api/v1/namespaces/default/pods%2f..%2fsecrets",
            "/api/v1/namespaces/default/pods/%2e%2e/secrets",
            "/api/v1/namespaces/default//secrets",
            "/api/v1/namespaces/default/./secrets",
            "/api/v1/namespaces/default%2Fsecrets",
            "/api/v1/namespaces/default/pods%252F..%252Fsecrets",
        ] {
            let p = parse_request("GET", trick, None);
            // A double-encoded slash stays a literal `%2F` in a name: never a separator.
            if trick.contains("%252F") {
                let p = p.unwrap();
                assert_eq!(p.operation.resource, "pods%2F..%2Fsecrets", "{trick}");
                continue;
            }
            let p = p.unwrap();
            assert_eq!(p.operation, plain.operation, "{trick}");
            assert_eq!(p.path, plain.path, "{trick}");
        }
        assert!(parse_request("GET", "/api/v1/namespaces/%00/pods", None).is_err());
        assert!(parse_request("GET", "/api/v1/pods", Some("watch=%zz")).is_err());
    }

    #[test]
    fn sensitive_operations() {
        let pf = op("GET", "/api/v1/namespaces/d/pods/p/portforward", None);
        assert!(sensitive_reason(&pf, None).is_some());
        let eph = op(
            "PATCH",
            "/api/v1/namespaces/d/pods/p/ephemeralcontainers",
            None,
        );
        assert!(sensitive_reason(&eph, None).is_some());
        let create = op("POST", "/api/v1/namespaces/d/pods", None);
        let plain = serde_json::json!({"spec": {"containers": [{"name": "a", "image": "x"}]}});
        assert!(sensitive_reason(&create, Some(&plain)).is_none());
        let privileged = serde_json::json!({"spec": {"containers": [
            {"name": "a", "image": "x", "securityContext": {"privileged": true}}]}});
        assert!(
            sensitive_reason(&create, Some(&privileged))
                .unwrap()
                .contains("privileged")
        );
        let host = serde_json::json!({"spec": {"template": {"spec": {"hostPID": true}}}});
        assert!(sensitive_reason(&create, Some(&host)).is_some());
        let patch = op("PATCH", "/apis/apps/v1/namespaces/d/deployments/x", None);
        let jp = serde_json::json!([{"op": "add", "path": "/spec/template/spec/hostNetwork", "value": true}]);
        assert!(sensitive_reason(&patch, Some(&jp)).is_some());
        let get = op("GET", "/api/v1/namespaces/d/pods/p", None);
        assert!(sensitive_reason(&get, Some(&privileged)).is_none());
    }

    #[test]
    fn hostile_input_never_panics() {
        for (m, p, q) in [
            ("GET", "", None),
            ("GET", "relative", None),
            ("", "/", Some("")),
            ("GET", "/api", Some("&&&=&")),
            ("GET", "/apis/a/b/c/d/e/f/g/h", Some("command")),
            ("GET", "/api/v1/namespaces", Some("%")),
            ("X", "/api/v1/namespaces/a/b/c/d/e", Some("%e2%82")),
        ] {
            let _ = parse_request(m, p, q);
        }
    }
}
