//! Gatehouse's Kubernetes API proxy: every request becomes an operation (exec/attach included),
//! decided by policy, with responses and exec streams masked and recorded.

#![forbid(unsafe_code)]
