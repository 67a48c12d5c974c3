//! gatehouse-policy integration tests (one binary): the bypass corpus, policy-file errors,
//! atomic swaps, and property tests.

// Test helpers outside #[test] fns panic on purpose, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod binary;
mod corpus;
mod file_errors;
mod handle;
mod opaque;
mod props;
mod ssh_channels;
