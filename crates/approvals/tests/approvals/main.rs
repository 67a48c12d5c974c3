//! Integration tests of gatehouse-approvals against real stores (journal on disk, PostgreSQL from
//! gatehouse-testkit) and a real HTTP webhook receiver.

// Scenario helpers are plain async fns shared by several #[test]s, so the tests-only allowance of
// clippy.toml does not reach them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod broker;
mod common;
mod journal;
mod postgres;
mod webhook;
