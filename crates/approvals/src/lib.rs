//! Just-in-time approvals for Gatehouse: a `Review` verdict holds one exact operation (bound to
//! its canonical hash) until enough distinct approvers decide, it times out, or the caller leaves.

#![forbid(unsafe_code)]
