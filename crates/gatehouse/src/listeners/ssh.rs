//! The SSH (gatehouse-ssh) listener. Wired in by the issue that lands its protocol crate.
