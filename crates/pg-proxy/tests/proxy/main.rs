//! End-to-end tests of the PostgreSQL proxy against a real PostgreSQL (gatehouse-testkit), with
//! real clients: tokio-postgres, the psql binary, and raw sockets for hostile input.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

mod auth;
mod backstop;
mod copy;
mod encodings;
mod execution;
mod gate;
mod holds;
mod hostile;
mod leaks;
mod lexer_state;
mod limits;
mod masking;
mod opacity;
mod psql;
mod raw;
mod real_layers;
mod review;
mod statements;
