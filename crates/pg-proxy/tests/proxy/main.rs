//! End-to-end tests of the PostgreSQL proxy against a real PostgreSQL (gatehouse-testkit), with
//! real clients: tokio-postgres, the psql binary, and raw sockets for hostile input.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

mod auth;
mod hostile;
mod leaks;
mod masking;
mod psql;
mod real_layers;
mod review;
mod statements;
