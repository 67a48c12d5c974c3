//! gatehouse-sql integration tests (one binary): classification, lineage, property tests.

mod classify;
mod lineage;
mod props;
