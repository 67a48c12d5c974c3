//! gatehouse-policy integration tests (one binary): the bypass corpus, policy-file errors,
//! atomic swaps, and property tests.

mod corpus;
mod file_errors;
mod handle;
mod props;
