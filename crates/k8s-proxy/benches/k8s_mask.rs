//! What masking a Kubernetes response costs, against the floor of any JSON-rewriting proxy
//! (parse + serialise the same document): a 500-pod list and a 500-secret list through
//! `mask_json_with` with the real default masking profile, and request parsing.
//!
//! `cargo bench -p gatehouse-k8s --bench k8s_mask`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gatehouse_k8s::mask_json_with;
use gatehouse_k8s::request::parse_request;
use gatehouse_masking::MaskingEngine;
use serde_json::json;

fn pod_list(n: usize) -> Vec<u8> {
    let items: Vec<_> = (0..n)
        .map(|i| {
            json!({"metadata": {"name": format!("web-{i}"), "namespace": "default",
                "labels": {"app": "web", "team": "payments"},
                "annotations": {"owner": format!("owner{i}@example.com")}},
              "spec": {"containers": [{"name": "app", "image": "registry.example/web:1.2.3",
                "env": [{"name": "MODE", "value": "fast"}, {"name": "REGION", "value": "eu-west-1"}]}]},
              "status": {"phase": "Running", "podIP": format!("10.1.{}.{}", i / 250, i % 250)}})
        })
        .collect();
    serde_json::to_vec(
        &json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}),
    )
    .unwrap()
}

fn secret_list(n: usize) -> Vec<u8> {
    let items: Vec<_> = (0..n)
        .map(|i| {
            json!({"metadata": {"name": format!("creds-{i}"), "namespace": "default"},
              "data": {"password": "aHVudGVyMi1kYi1wYXNzd29yZA==", "username": "YXBw"}, "type": "Opaque"})
        })
        .collect();
    serde_json::to_vec(
        &json!({"kind": "SecretList", "apiVersion": "v1", "metadata": {}, "items": items}),
    )
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let engine = MaskingEngine::with_defaults().unwrap();
    for (name, doc, secrets) in [
        ("pods500", pod_list(500), false),
        ("secrets500", secret_list(500), true),
    ] {
        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Bytes(doc.len() as u64));
        g.bench_function("baseline_parse_serialize", |b| {
            b.iter(|| {
                let v: serde_json::Value = serde_json::from_slice(&doc).unwrap();
                serde_json::to_vec(&v).unwrap()
            })
        });
        g.bench_function("gateway_mask", |b| {
            b.iter(|| {
                let mut findings = Vec::new();
                mask_json_with(&engine, &doc, secrets, None, &mut findings)
            })
        });
        g.finish();
    }
    c.bench_function("parse_request_exec", |b| {
        b.iter(|| {
            parse_request(
                "GET",
                "/api/v1/namespaces/default/pods/web-0/exec",
                Some("command=sh&command=-c&command=echo+hi&stdin=true&stdout=true&tty=true&container=app"),
            )
            .unwrap()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
