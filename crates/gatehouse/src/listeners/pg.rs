//! The PostgreSQL (gatehouse-pg) listener. Wired in by the issue that lands its protocol crate.
