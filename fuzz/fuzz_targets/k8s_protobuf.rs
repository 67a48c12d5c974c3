#![no_main]
//! The Kubernetes protobuf body reader of gatehouse-k8s on hostile bytes: it must never panic,
//! whatever the envelope, kind or object bytes.
//!
//! Needs in fuzz/Cargo.toml: `gatehouse-k8s = { path = "../crates/k8s-proxy" }` and a
//! `[[bin]] name = "k8s_protobuf"` entry.

use gatehouse_k8s::protobuf::{privileged_setting, read_envelope};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut body = b"k8s\0".to_vec();
    body.extend_from_slice(data);
    for input in [data, body.as_slice()] {
        if let Ok(env) = read_envelope(input) {
            for resource in ["pods", "deployments", "cronjobs", "configmaps"] {
                let _ = privileged_setting(&env, resource, None);
                let _ = privileged_setting(&env, resource, Some("scale"));
            }
        }
    }
});
