//! The Kubernetes API (gatehouse-k8s) listener. Wired in by the issue that lands its protocol crate.
