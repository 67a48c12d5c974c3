//! Gatehouse's PostgreSQL wire-protocol proxy: authenticates agents, holds the upstream
//! credentials, decides every statement, masks results before the client sees them, records it all.
//! Layers arrive as traits in a [`gatehouse_core::Pipeline`].

#![forbid(unsafe_code)]
