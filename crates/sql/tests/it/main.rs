//! gatehouse-sql integration tests (one binary): classification, lineage, property tests.

// Test helpers outside #[test] fns panic on purpose, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod classify;
mod lineage;
mod pgparse;
mod props;
