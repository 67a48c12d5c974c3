//! The Gatehouse recorder: an append-only, hash-chained, ed25519-checkpointed audit log that anyone
//! can verify offline, per-session recordings, and their replay formats.

#![forbid(unsafe_code)]
