#![no_main]
//! The Kubernetes request parser of gatehouse-k8s on hostile method/path/query bytes: it must
//! never panic; the path it forwards must be a fixed point (parsing it again decides the same
//! operation), so what the policy saw is what the API server gets.
//!
//! Needs in fuzz/Cargo.toml: `gatehouse-k8s = { path = "../crates/k8s-proxy" }` and a
//! `[[bin]] name = "k8s_request"` entry.

use gatehouse_k8s::request::parse_request;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let method = parts.next().unwrap_or("GET");
    let path = parts.next().unwrap_or("/");
    let query = parts.next();
    if let Ok(parsed) = parse_request(method, path, query) {
        let again = parse_request(method, &parsed.path, query).expect("canonical path parses");
        assert_eq!(again.operation, parsed.operation);
        assert_eq!(again.path, parsed.path);
    }
});
