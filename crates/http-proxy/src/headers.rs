//! Header rules: hop-by-hop headers (RFC 9110 §7.6.1) stop at the gateway, the caller's token
//! never reaches the upstream, the target's credential is added, `Accept-Encoding` is narrowed to
//! what the gateway can decode, and recorded headers have their secrets redacted.

use base64::Engine as _;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use gatehouse_core::{Masker, StreamContext};

use crate::body::DECODABLE;
use crate::config::InjectedCredential;

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1, plus the
/// de-facto `Proxy-Connection` and `Keep-Alive`).
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including every header the `Connection` header names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// Response headers the gateway itself manages (message framing): never rewritten by masking.
const FRAMING: &[HeaderName] = &[
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
    header::CONTENT_RANGE,
    header::TRANSFER_ENCODING,
];

/// Masks every response header value but the framing ones with the text masker, as a body of
/// text would be (`Location: /?e=jane@example.com`, `X-Card: 4111…`), before the caller or the
/// recording sees them. A value the masker makes unusable as a header value is dropped.
pub(crate) fn mask_response_headers(
    headers: &mut HeaderMap,
    masker: &dyn Masker,
    profile: Option<&str>,
) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| !FRAMING.contains(n))
        .cloned()
        .collect();
    for name in names {
        let values: Vec<HeaderValue> = headers.get_all(&name).iter().cloned().collect();
        let mut masked = Vec::with_capacity(values.len());
        let mut changed = false;
        for v in values {
            let mut m = masker.stream(&StreamContext {
                profile: profile.map(str::to_string),
                field: Some(format!("header {name}")),
                json: false,
            });
            let mut out = Vec::with_capacity(v.len());
            m.push(v.as_bytes(), &mut out);
            m.finish(&mut out);
            if out.as_slice() == v.as_bytes() {
                masked.push(v);
                continue;
            }
            changed = true;
            if let Ok(new) = HeaderValue::from_bytes(&out) {
                masked.push(new);
            }
        }
        if changed {
            headers.remove(&name);
            for v in masked {
                headers.append(name.clone(), v);
            }
        }
    }
}

/// The bearer token of an `Authorization: Bearer …` header (scheme case-insensitive).
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

/// Narrows the caller's `Accept-Encoding` to the encodings the gateway can decode (the gateway
/// decodes them to mask, so the caller always gets identity).
pub(crate) fn restrict_accept_encoding(headers: &mut HeaderMap) {
    let wanted: Vec<String> = headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| {
            let t = t.trim();
            let name = t
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            let refused = t.replace(' ', "").ends_with(";q=0");
            (DECODABLE.contains(&name.as_str()) && !refused).then_some(name)
        })
        .collect();
    headers.remove(header::ACCEPT_ENCODING);
    let value = if wanted.is_empty() {
        "identity".to_string()
    } else {
        wanted.join(", ")
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(header::ACCEPT_ENCODING, v);
    }
}

/// Adds the target's credential to the outgoing headers; returns the extra query parameter for
/// the query kind (already percent-encoded). The caller's own copies of the header or parameter
/// are removed first, so the upstream sees exactly one, the gateway's.
pub(crate) fn inject_credential(
    cred: &InjectedCredential,
    headers: &mut HeaderMap,
) -> Option<(String, String)> {
    headers.remove(header::AUTHORIZATION);
    let sensitive = |s: &str| {
        HeaderValue::from_str(s).ok().map(|mut v| {
            v.set_sensitive(true);
            v
        })
    };
    match cred {
        InjectedCredential::Bearer { secret } => {
            if let Some(v) = sensitive(&format!("Bearer {secret}")) {
                headers.insert(header::AUTHORIZATION, v);
            }
            None
        }
        InjectedCredential::Basic { username, secret } => {
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{secret}"));
            if let Some(v) = sensitive(&format!("Basic {encoded}")) {
                headers.insert(header::AUTHORIZATION, v);
            }
            None
        }
        InjectedCredential::Header { name, secret } => {
            if let (Ok(n), Some(v)) = (HeaderName::from_bytes(name.as_bytes()), sensitive(secret)) {
                headers.remove(&n);
                headers.insert(n, v);
            }
            None
        }
        InjectedCredential::Query { param, secret } => {
            let enc = |s: &str| percent_encoding::utf8_percent_encode(s, QUERY_VALUE).to_string();
            Some((enc(param), enc(secret)))
        }
    }
}

/// Characters escaped in a query parameter name or value.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The query the upstream gets: the caller's query without any parameter of the credential's
/// name, plus the credential.
pub(crate) fn query_with_credential(query: Option<&str>, param: &(String, String)) -> String {
    let mut parts: Vec<&str> = query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let name = p.split('=').next().unwrap_or("");
            let decoded = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
            let ours = percent_encoding::percent_decode_str(&param.0).decode_utf8_lossy();
            decoded != ours
        })
        .collect();
    let cred = format!("{}={}", param.0, param.1);
    parts.push(&cred);
    parts.join("&")
}

/// Headers whose values the recording never keeps.
const REDACTED: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "api-key",
    "x-auth-token",
];

/// Headers as the recording keeps them: secrets redacted (plus the injected header's name).
pub(crate) fn recorded_headers(
    headers: &HeaderMap,
    also_redact: Option<&str>,
) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for (name, value) in headers {
        let n = name.as_str();
        let redact =
            REDACTED.contains(&n) || also_redact.is_some_and(|a| a.eq_ignore_ascii_case(n));
        let v = if redact {
            "[redacted]".to_string()
        } else {
            String::from_utf8_lossy(value.as_bytes()).into_owned()
        };
        match map.get_mut(n) {
            Some(serde_json::Value::Array(a)) => a.push(v.into()),
            Some(other) => {
                let prev = other.take();
                *other = serde_json::Value::Array(vec![prev, v.into()]);
            }
            None => {
                map.insert(n.to_string(), v.into());
            }
        }
    }
    serde_json::Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic abc"),
            ("x-keep", "yes"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-keep"], "yes");
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(
            bearer_token(&map(&[("authorization", "Bearer abc")])),
            Some("abc")
        );
        assert_eq!(
            bearer_token(&map(&[("authorization", "bearer  abc ")])),
            Some("abc")
        );
        assert_eq!(bearer_token(&map(&[("authorization", "Basic abc")])), None);
        assert_eq!(bearer_token(&map(&[("authorization", "Bearer ")])), None);
        assert_eq!(bearer_token(&map(&[])), None);
    }

    #[test]
    fn accept_encoding_is_narrowed() {
        let mut h = map(&[("accept-encoding", "br, gzip;q=0.8, zstd, deflate;q=0")]);
        restrict_accept_encoding(&mut h);
        assert_eq!(h["accept-encoding"], "gzip");
        let mut h = map(&[("accept-encoding", "br")]);
        restrict_accept_encoding(&mut h);
        assert_eq!(h["accept-encoding"], "identity");
    }

    #[test]
    fn credentials_replace_the_callers() {
        let mut h = map(&[
            ("authorization", "Bearer caller-token"),
            ("x-api-key", "caller"),
        ]);
        let q = inject_credential(
            &InjectedCredential::Header {
                name: "X-Api-Key".into(),
                secret: "target-secret".into(),
            },
            &mut h,
        );
        assert!(q.is_none());
        assert!(h.get("authorization").is_none());
        assert_eq!(h.get_all("x-api-key").iter().count(), 1);
        assert_eq!(h["x-api-key"], "target-secret");

        let mut h = map(&[]);
        inject_credential(
            &InjectedCredential::Basic {
                username: "svc".into(),
                secret: "pw".into(),
            },
            &mut h,
        );
        assert_eq!(h["authorization"], "Basic c3ZjOnB3");

        let q = inject_credential(
            &InjectedCredential::Query {
                param: "api_key".into(),
                secret: "a b&c".into(),
            },
            &mut h,
        )
        .unwrap();
        assert_eq!(
            query_with_credential(Some("x=1&api_key=mine&api%5Fkey=also"), &q),
            "x=1&api_key=a%20b%26c"
        );
        assert_eq!(query_with_credential(None, &q), "api_key=a%20b%26c");
    }

    #[test]
    fn recorded_headers_redact_secrets() {
        let h = map(&[
            ("authorization", "Bearer x"),
            ("cookie", "sid=1"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("x-custom-key", "k"),
            ("accept", "*/*"),
        ]);
        let v = recorded_headers(&h, Some("X-Custom-Key"));
        assert_eq!(v["authorization"], "[redacted]");
        assert_eq!(v["cookie"], "[redacted]");
        assert_eq!(v["set-cookie"][1], "[redacted]");
        assert_eq!(v["x-custom-key"], "[redacted]");
        assert_eq!(v["accept"], "*/*");
    }
}
