//! Verified claims → [`gatehouse_core::Identity`] fields: dotted-path lookup, subject, groups,
//! numeric dates and audiences, each read defensively (claims are JSON an issuer chose).

use serde_json::{Map, Value};

/// Looks up a dotted path (`realm_access.roles`) in a claims object. A claim whose own name
/// contains dots (`https://example.com/groups`) is found too: the full path is tried first.
pub fn lookup<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(value) = claims.get(path) {
        return Some(value);
    }
    let mut segments = path.split('.');
    let mut current = claims.get(segments.next()?)?;
    for segment in segments {
        current = current.as_object()?.get(segment)?;
    }
    Some(current)
}

/// Groups at `path`: an array of strings (non-strings ignored) or one space-separated string.
pub fn groups(claims: &Map<String, Value>, path: &str) -> Vec<String> {
    match lookup(claims, path) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .filter(|g| !g.is_empty())
            .map(str::to_string)
            .collect(),
        Some(Value::String(text)) => text.split_whitespace().map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

/// A date claim that is present but not a usable number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotANumericDate;

/// A NumericDate claim (seconds since the epoch, integer or fraction) as whole seconds.
pub fn numeric_date(
    claims: &Map<String, Value>,
    name: &str,
) -> Result<Option<i64>, NotANumericDate> {
    match claims.get(name) {
        None => Ok(None),
        Some(value) => {
            if let Some(n) = value.as_i64() {
                return Ok(Some(n));
            }
            match value.as_f64() {
                // Bounded well inside what `time` can represent.
                Some(f) if f.is_finite() && f.abs() < 1e11 => Ok(Some(f.floor() as i64)),
                _ => Err(NotANumericDate),
            }
        }
    }
}

/// Whether the `aud` claim (a string or an array of strings) names one of `accepted`.
pub fn audience_matches(claims: &Map<String, Value>, accepted: &[String]) -> bool {
    match claims.get("aud") {
        Some(Value::String(aud)) => accepted.iter().any(|a| a == aud),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .any(|aud| accepted.iter().any(|a| a == aud)),
        _ => false,
    }
}

/// Whether the claims carry an OIDC ID-token marker (for issuers that do not stamp `typ`).
pub fn has_id_token_markers(claims: &Map<String, Value>) -> bool {
    ["nonce", "at_hash", "c_hash", "s_hash"]
        .iter()
        .any(|name| claims.contains_key(*name))
        || claims
            .get("typ")
            .and_then(Value::as_str)
            .is_some_and(|t| t.eq_ignore_ascii_case("id") || t.eq_ignore_ascii_case("id_token"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn dotted_paths_and_dotted_names() {
        let c = obj(json!({
            "realm_access": {"roles": ["a", "b", 3]},
            "https://example.com/groups": ["x"],
            "scope": "read write",
        }));
        assert_eq!(groups(&c, "realm_access.roles"), vec!["a", "b"]);
        assert_eq!(groups(&c, "https://example.com/groups"), vec!["x"]);
        assert_eq!(groups(&c, "scope"), vec!["read", "write"]);
        assert!(groups(&c, "realm_access.nothing").is_empty());
        assert!(groups(&c, "scope.deeper").is_empty());
    }

    #[test]
    fn numeric_dates() {
        let c = obj(json!({"a": 10, "b": 10.7, "c": "10", "d": 1e300}));
        assert_eq!(numeric_date(&c, "a"), Ok(Some(10)));
        assert_eq!(numeric_date(&c, "b"), Ok(Some(10)));
        assert_eq!(numeric_date(&c, "c"), Err(NotANumericDate));
        assert_eq!(numeric_date(&c, "d"), Err(NotANumericDate));
        assert_eq!(numeric_date(&c, "z"), Ok(None));
    }

    #[test]
    fn audiences() {
        let accepted = vec!["gw".to_string()];
        assert!(audience_matches(&obj(json!({"aud": "gw"})), &accepted));
        assert!(audience_matches(
            &obj(json!({"aud": ["x", "gw"]})),
            &accepted
        ));
        assert!(!audience_matches(&obj(json!({"aud": ["x"]})), &accepted));
        assert!(!audience_matches(&obj(json!({})), &accepted));
        assert!(!audience_matches(&obj(json!({"aud": 5})), &accepted));
    }
}
