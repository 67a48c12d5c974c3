//! The the admin API (health, metrics, approvals, sessions, token exchange) listener. Wired in by the issue that lands its protocol crate.
