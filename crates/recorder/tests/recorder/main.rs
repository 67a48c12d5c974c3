//! Integration tests of gatehouse-recorder, one binary: real files, a real tmpfs, a real
//! S3-compatible server (moto), real child processes killed with SIGKILL.

// Test helpers (outside #[test] functions) panic on failure by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

mod crash;
mod durability;
mod object_store;
mod recordings;
mod seal;
mod tamper;
mod witness;
