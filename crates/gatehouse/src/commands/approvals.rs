//! `gatehouse approvals list|show ID|approve ID|deny ID --reason "…"`: against the admin API with
//! the approver's token (`--token` or `GATEHOUSE_TOKEN`).

use std::process::ExitCode;

use crate::admin_client::{self, AdminTarget};

use super::{CommandError, CommandResult};

/// Arguments of `approvals`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    admin: AdminTarget,
    /// The caller's token (JWT or gateway key).
    #[arg(long, env = "GATEHOUSE_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
}

/// Approvals subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List requests (pending by default).
    List {
        /// `pending`, `approved`, `denied`, `timed_out`, `abandoned` or `all`.
        #[arg(long, default_value = "pending")]
        state: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one request.
    Show {
        /// Request id.
        id: String,
    },
    /// Approve a request.
    Approve {
        /// Request id.
        id: String,
        /// Justification (required).
        #[arg(long)]
        reason: String,
    },
    /// Deny a request.
    Deny {
        /// Request id.
        id: String,
        /// Justification (required).
        #[arg(long)]
        reason: String,
    },
}

/// Runs the command.
pub fn run(args: Args) -> CommandResult {
    let token = args
        .token
        .clone()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            CommandError::Usage("a token is required: --token or GATEHOUSE_TOKEN".into())
        })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CommandError::Failed(e.to_string()))?;
    runtime.block_on(async move {
        match args.command {
            Command::List { state, json } => {
                let (status, body) = admin_client::request(
                    &args.admin,
                    http::Method::GET,
                    &format!("/v1/approvals?state={state}"),
                    &token,
                    None,
                )
                .await?;
                admin_client::check(status, &body)?;
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&body).unwrap_or_default()
                    );
                    return Ok(ExitCode::SUCCESS);
                }
                let list = body
                    .get("approvals")
                    .and_then(|a| a.as_array())
                    .cloned()
                    .unwrap_or_default();
                if list.is_empty() {
                    println!("no {state} approval requests");
                }
                for r in list {
                    println!("{}", one_line(&r));
                }
                Ok(ExitCode::SUCCESS)
            }
            Command::Show { id } => {
                let (status, body) = admin_client::request(
                    &args.admin,
                    http::Method::GET,
                    &format!("/v1/approvals/{id}"),
                    &token,
                    None,
                )
                .await?;
                admin_client::check(status, &body)?;
                println!(
                    "{}",
                    serde_json::to_string_pretty(&body).unwrap_or_default()
                );
                Ok(ExitCode::SUCCESS)
            }
            Command::Approve { id, reason } | Command::Deny { id, reason }
                if reason.trim().is_empty() =>
            {
                let _ = id;
                Err(CommandError::Usage(
                    "--reason must not be empty: decisions are recorded with their justification"
                        .into(),
                ))
            }
            Command::Approve { id, reason } => {
                decide(&args.admin, &token, &id, "approve", &reason).await
            }
            Command::Deny { id, reason } => decide(&args.admin, &token, &id, "deny", &reason).await,
        }
    })
}

async fn decide(
    admin: &AdminTarget,
    token: &str,
    id: &str,
    action: &str,
    reason: &str,
) -> CommandResult {
    let (status, body) = admin_client::request(
        admin,
        http::Method::POST,
        &format!("/v1/approvals/{id}/{action}"),
        token,
        Some(serde_json::json!({ "justification": reason })),
    )
    .await?;
    admin_client::check(status, &body)?;
    let state = body.get("state").and_then(|s| s.as_str()).unwrap_or("?");
    println!("{id}: {action} recorded; request is now {state}");
    Ok(ExitCode::SUCCESS)
}

/// One request per line. Every field comes from the agent or the policy: each is escaped
/// ([`gatehouse_core::printable`]) so that control characters in an operation cannot redraw
/// the line, add a row or hide what the approver approves. The operation is shown whole, with
/// its bound parameters ([`gatehouse_core::Operation::describe`]): nothing of what runs is cut.
fn one_line(r: &serde_json::Value) -> String {
    let s = |v: Option<&serde_json::Value>| {
        gatehouse_core::printable(v.and_then(|v| v.as_str()).unwrap_or(""))
    };
    let id = s(r.get("id"));
    let state = s(r.get("state"));
    let req = r.get("request");
    let who = s(req
        .and_then(|q| q.get("requester"))
        .and_then(|q| q.get("subject")));
    let target = s(req
        .and_then(|q| q.get("target"))
        .and_then(|t| t.get("name")));
    let rule = s(req.and_then(|q| q.get("rule_id")));
    let op = req.and_then(|q| q.get("operation"));
    let parsed =
        op.and_then(|o| serde_json::from_value::<gatehouse_core::Operation>(o.clone()).ok());
    let text = match parsed {
        Some(o) => o.describe(),
        None => gatehouse_core::printable(&fallback_text(op)),
    };
    format!("{id}  {state}  {who} on {target}  rule {rule}  {text}")
}

/// The operation's text when it is not one this build knows how to read.
fn fallback_text(op: Option<&serde_json::Value>) -> String {
    op.and_then(|o| {
        o.get("text")
            .or_else(|| o.get("command_line"))
            .or_else(|| o.get("path"))
    })
    .and_then(|t| t.as_str())
    .map(str::to_string)
    .unwrap_or_else(|| op.map(|o| o.to_string()).unwrap_or_default())
}
