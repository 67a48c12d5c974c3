//! `gatehouse login --token JWT` (or `GATEHOUSE_TOKEN`): exchange a JWT for a short-lived gateway
//! key through the admin API and print it — for ssh (OpenSSH cuts passwords at 1023 bytes) and psql.

use std::process::ExitCode;

use crate::admin_client::{self, AdminTarget};

use super::{CommandError, CommandResult};

/// Arguments of `login`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The JWT to exchange (or `GATEHOUSE_TOKEN`).
    #[arg(long, env = "GATEHOUSE_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Requested lifetime, e.g. `15m` (never beyond the JWT's own expiry).
    #[arg(long)]
    pub ttl: Option<String>,
    #[command(flatten)]
    admin: AdminTarget,
}

/// Runs the command.
pub fn run(args: Args) -> CommandResult {
    let ttl = args
        .ttl
        .as_deref()
        .map(crate::duration::parse_duration)
        .transpose()
        .map_err(CommandError::Usage)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CommandError::Failed(e.to_string()))?;
    runtime.block_on(async move {
        let body = ttl.map(|t| serde_json::json!({ "ttl_secs": t.as_secs() }));
        let (status, json) = admin_client::request(
            &args.admin,
            http::Method::POST,
            "/v1/token/exchange",
            &args.token,
            body,
        )
        .await?;
        admin_client::check(status, &json)?;
        let key = json
            .get("key")
            .and_then(|k| k.as_str())
            .ok_or_else(|| CommandError::Failed("admin API returned no key".into()))?;
        println!("{key}");
        if let Some(exp) = json.get("expires_at").and_then(|e| e.as_str()) {
            eprintln!("gateway key valid until {exp}");
        }
        Ok(ExitCode::SUCCESS)
    })
}
