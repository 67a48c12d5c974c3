//! The Gatehouse masking core: validated PII and secret detectors in one anchor-first pass, field
//! plans, streaming and JSON maskers, and the egress guard for held secrets. Pure: no I/O.

#![forbid(unsafe_code)]
