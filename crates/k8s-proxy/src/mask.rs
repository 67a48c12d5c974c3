//! Kubernetes-aware masking of API responses, applied before the masking profile: `Secret`
//! values never leave the gateway, whatever the profile says.
//!
//! What it promises, for any JSON document the API server returns (object, list, `Table`,
//! watch event, `Status`):
//! - every value of a Secret's `data` becomes [`MASKED_DATA`] (valid base64, so typed clients
//!   such as kube-rs still decode it) and every value of `stringData` becomes [`MASKED_TEXT`];
//! - a Secret's `kubectl.kubernetes.io/last-applied-configuration` annotation (a full copy of
//!   the object as applied, data included) and `managedFields` are replaced;
//! - Secrets are found in lists (`items`), in `Table` rows (`object`, `includeObject=Object`),
//!   and in watch events (`object`); a response to a request on resource `secrets` treats every
//!   object as a Secret even where the API omits `kind` (list items do).
//!
//! Findings name the JSON path and the length of the masked value, never the value.

use gatehouse_core::Finding;
use serde_json::Value;

/// What a Secret `data` value becomes: base64 of `[masked]`.
pub const MASKED_DATA: &str = "W21hc2tlZF0=";
/// What a Secret `stringData` value or annotation becomes.
pub const MASKED_TEXT: &str = "[masked]";
/// The annotation `kubectl apply` stores a copy of the object in.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Masks Secret material in `doc` in place. `secrets_context`: the request was about resource
/// `secrets`, so objects without a `kind` are Secrets.
/// Returns whether any Secret was found (its `data` must be restored to [`MASKED_DATA`] after
/// a masking profile ran over the document, so that typed clients can still decode it).
pub fn mask_document(doc: &mut Value, secrets_context: bool, findings: &mut Vec<Finding>) -> bool {
    let before = findings.len();
    walk(doc, secrets_context, "$", findings, 0);
    findings.len() > before
}

fn kind_of(v: &Value) -> Option<&str> {
    v.get("kind").and_then(Value::as_str)
}

fn walk(v: &mut Value, secrets: bool, path: &str, findings: &mut Vec<Finding>, depth: usize) {
    if depth > 32 {
        return;
    }
    let Value::Object(_) = v else { return };
    let kind = kind_of(v).map(str::to_string);
    match kind.as_deref() {
        Some("Secret") => mask_secret(v, path, findings),
        Some("SecretList") => walk_items(v, true, path, findings, depth),
        Some("Table") => {
            if let Some(Value::Array(rows)) = v.get_mut("rows") {
                for (i, row) in rows.iter_mut().enumerate() {
                    if let Some(obj) = row.get_mut("object") {
                        walk(
                            obj,
                            secrets,
                            &format!("{path}.rows[{i}].object"),
                            findings,
                            depth + 1,
                        );
                    }
                }
            }
        }
        Some("Status") => {}
        Some(k) if k.ends_with("List") || k == "List" => {
            walk_items(v, secrets || k == "SecretList", path, findings, depth)
        }
        None if v.get("type").is_some() && v.get("object").is_some() => {
            // A watch event.
            if let Some(obj) = v.get_mut("object") {
                walk(obj, secrets, &format!("{path}.object"), findings, depth + 1);
            }
        }
        None if v.get("items").is_some() => walk_items(v, secrets, path, findings, depth),
        None | Some("PartialObjectMetadata") if secrets => mask_secret(v, path, findings),
        _ => {}
    }
}

fn walk_items(v: &mut Value, secrets: bool, path: &str, findings: &mut Vec<Finding>, depth: usize) {
    if let Some(Value::Array(items)) = v.get_mut("items") {
        for (i, item) in items.iter_mut().enumerate() {
            let p = format!("{path}.items[{i}]");
            if secrets && kind_of(item).is_none() {
                mask_secret(item, &p, findings);
            } else {
                walk(item, secrets, &p, findings, depth + 1);
            }
        }
    }
}

fn mask_secret(v: &mut Value, path: &str, findings: &mut Vec<Finding>) {
    for (field, replacement) in [("data", MASKED_DATA), ("stringData", MASKED_TEXT)] {
        if let Some(Value::Object(map)) = v.get_mut(field) {
            for (key, value) in map.iter_mut() {
                let length = value.as_str().map_or(0, str::len) as u64;
                *value = Value::String(replacement.to_string());
                findings.push(Finding {
                    rule: "k8s-secret".into(),
                    field: Some(format!("{path}.{field}.{key}")),
                    offset: 0,
                    length,
                });
            }
        }
    }
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        if let Some(Value::Object(ann)) = meta.get_mut("annotations")
            && let Some(value) = ann.get_mut(LAST_APPLIED)
        {
            let length = value.as_str().map_or(0, str::len) as u64;
            *value = Value::String(MASKED_TEXT.into());
            findings.push(Finding {
                rule: "k8s-secret".into(),
                field: Some(format!("{path}.metadata.annotations.{LAST_APPLIED}")),
                offset: 0,
                length,
            });
        }
        // Server-side apply's field manager entries carry no values, but a client-side one may
        // carry a full copy: drop them rather than read them.
        meta.remove("managedFields");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn secret(name: &str) -> Value {
        json!({
            "kind": "Secret", "apiVersion": "v1",
            "metadata": {"name": name, "annotations": {LAST_APPLIED: "{\"data\":{\"password\":\"aHVudGVyMg==\"}}"}},
            "data": {"password": "aHVudGVyMg=="},
            "stringData": {"token": "plain-secret"},
            "type": "Opaque"
        })
    }

    fn assert_clean(v: &Value) {
        let s = v.to_string();
        assert!(!s.contains("aHVudGVyMg"), "{s}");
        assert!(!s.contains("plain-secret"), "{s}");
    }

    #[test]
    fn secrets_masked_everywhere() {
        let mut f = Vec::new();
        let mut one = secret("a");
        mask_document(&mut one, false, &mut f);
        assert_clean(&one);
        assert_eq!(one["data"]["password"], MASKED_DATA);
        assert_eq!(one["metadata"]["name"], "a");
        assert_eq!(f.len(), 3);
        assert!(f.iter().all(|x| x.rule == "k8s-secret"));

        let mut list = json!({"kind": "SecretList", "items": [
            {"metadata": {"name": "a"}, "data": {"k": "aHVudGVyMg=="}}]});
        mask_document(&mut list, false, &mut f);
        assert_clean(&list);

        let mut table = json!({"kind": "Table", "rows": [{"cells": ["a", "Opaque", 1], "object": secret("a")}]});
        mask_document(&mut table, false, &mut f);
        assert_clean(&table);

        let mut event = json!({"type": "ADDED", "object": secret("b")});
        mask_document(&mut event, false, &mut f);
        assert_clean(&event);

        let mut list = json!({"kind": "List", "items": [secret("c"), {"kind": "ConfigMap", "data": {"k": "aHVudGVyMg=="}}]});
        mask_document(&mut list, false, &mut f);
        assert_eq!(list["items"][0]["data"]["password"], MASKED_DATA);
        // ConfigMaps are left to the masking profile.
        assert_eq!(list["items"][1]["data"]["k"], "aHVudGVyMg==");

        // Without a kind, the request context decides.
        let mut bare = json!({"metadata": {"name": "x"}, "data": {"k": "aHVudGVyMg=="}});
        mask_document(&mut bare, true, &mut f);
        assert_clean(&bare);
    }

    #[test]
    fn other_documents_untouched() {
        let mut f = Vec::new();
        let orig = json!({"kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": []}});
        let mut pod = orig.clone();
        mask_document(&mut pod, false, &mut f);
        assert_eq!(pod, orig);
        assert!(f.is_empty());
        let mut status = json!({"kind": "Status", "status": "Failure", "message": "x"});
        mask_document(&mut status, true, &mut f);
        assert_eq!(status["message"], "x");
    }
}
