//! One module per protocol listener. Each turns its section of the config into a running listener
//! of its protocol crate, fed the shared pipeline.

pub mod admin;
pub mod http;
pub mod k8s;
pub mod pg;
pub mod ssh;
