//! Integration tests of gatehouse-masking (one test binary for the crate).

// Helpers here are test code too: a failed unwrap is a failed test, said loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod corpus;
mod detectors;
mod egress;
mod json;
mod plans;
mod properties;
mod streams;
