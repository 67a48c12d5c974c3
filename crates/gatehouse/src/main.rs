//! `gatehouse`: the reference binary. It reads one TOML config, wires the layer crates into a
//! pipeline, runs one listener per protocol, and offers the operator's CLI (quickstart, tokens,
//! policy explain, approvals, masking filter, audit verify/replay, evidence export).
//!
//! Shape: one module per command under `commands/`, one per protocol listener under `listeners/`,
//! so that adding a protocol or a command adds a file rather than editing a shared one.

#![forbid(unsafe_code)]

mod admin_client;
mod commands;
mod config;
mod duration;
mod gateway;
mod listeners;
mod metrics;
mod pipeline;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc instead of the system allocator: the data path allocates per message (events,
/// masked buffers, headers), and glibc's malloc cost about 13% of the HTTP gateway's CPU per
/// request more than mimalloc in an A/B run (docs/BENCHMARKS.md). Libraries leave the choice to
/// the binary that embeds them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Gatehouse: an identity-aware, protocol-aware access gateway for AI agents and automation.
#[derive(Debug, Parser)]
#[command(name = "gatehouse", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the listeners of a config file.
    Serve(commands::serve::Args),
    /// Start a complete local demo (throwaway PostgreSQL, dev issuer, policy) in the foreground.
    Quickstart(commands::quickstart::Args),
    /// Check a config file and report errors with line numbers.
    CheckConfig(commands::check_config::Args),
    /// Mint a dev token with the local dev issuer's key.
    Token(commands::token::Args),
    /// Exchange a JWT for a short-lived gateway key through the admin API.
    Login(commands::login::Args),
    /// Policy tools.
    #[command(subcommand)]
    Policy(commands::policy::Command),
    /// List and decide approval requests through the admin API.
    Approvals(commands::approvals::Args),
    /// The masking core as a Unix filter (stdin to stdout).
    Mask(commands::mask::Args),
    /// Audit log tools: verify, sessions, replay.
    #[command(subcommand)]
    Audit(commands::audit::Command),
    /// Evidence bundles for an ISO 27001 audit.
    #[command(subcommand)]
    Evidence(commands::evidence::Command),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => commands::serve::run(args),
        Command::Quickstart(args) => commands::quickstart::run(args),
        Command::CheckConfig(args) => commands::check_config::run(args),
        Command::Token(args) => commands::token::run(args),
        Command::Login(args) => commands::login::run(args),
        Command::Policy(cmd) => commands::policy::run(cmd),
        Command::Approvals(args) => commands::approvals::run(args),
        Command::Mask(args) => commands::mask::run(args),
        Command::Audit(cmd) => commands::audit::run(cmd),
        Command::Evidence(cmd) => commands::evidence::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gatehouse: {e}");
            ExitCode::from(2)
        }
    }
}
