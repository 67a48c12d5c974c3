//! The Gatehouse rule engine: ordered rules over (identity, target, operation) decide allow, deny
//! or review. Pure: no I/O on the hot path; policies swap atomically while sessions run.

#![forbid(unsafe_code)]
