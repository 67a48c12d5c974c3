//! The HTTP(S) (gatehouse-http) listener. Wired in by the issue that lands its protocol crate.
