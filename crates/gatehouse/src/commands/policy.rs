//! `gatehouse policy explain --config FILE --as SUBJECT [--group G]... --target NAME
//! (--sql "…" | --exec "…" | --http METHOD PATH)`: which rule decides an operation, and why — the
//! same canonical forms (SQL classification, argv parsing, path canonicalisation) the proxies use.

use std::path::PathBuf;
use std::process::ExitCode;

use gatehouse_core::{
    AuthMethod, ExecCommand, HttpOperation, Identity, Operation, Protocol, SqlOperation,
    SshOperation, Target,
};
use gatehouse_policy::CompiledPolicy;

use super::{CommandError, CommandResult};

/// Policy subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Explain the decision for one operation.
    Explain {
        /// The gateway config (names the policy file and the targets).
        #[arg(long)]
        config: PathBuf,
        /// Subject to decide for.
        #[arg(long = "as")]
        subject: String,
        /// Groups of that subject (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Target name.
        #[arg(long)]
        target: String,
        /// A SQL string.
        #[arg(long, conflicts_with_all = ["exec", "http"])]
        sql: Option<String>,
        /// A shell command line.
        #[arg(long, conflicts_with_all = ["sql", "http"])]
        exec: Option<String>,
        /// METHOD PATH of an HTTP request.
        #[arg(long, num_args = 2, value_names = ["METHOD", "PATH"], conflicts_with_all = ["sql", "exec"])]
        http: Option<Vec<String>>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs the command.
pub fn run(command: Command) -> CommandResult {
    let Command::Explain {
        config,
        subject,
        groups,
        target,
        sql,
        exec,
        http,
        json,
    } = command;
    let loaded = crate::config::LoadedConfig::load(&config)?;
    let policy_path = loaded.resolve_path(&loaded.config.policy.file);
    let policy =
        CompiledPolicy::from_file(&policy_path).map_err(|e| CommandError::Failed(e.to_string()))?;
    let section = loaded
        .config
        .targets
        .iter()
        .map(|t| t.get_ref())
        .find(|t| t.name == target)
        .ok_or_else(|| {
            CommandError::Usage(format!(
                "no target named `{target}` in {}",
                config.display()
            ))
        })?;
    let protocol = match section.protocol.as_str() {
        "postgres" => Protocol::Postgres,
        "ssh" => Protocol::Ssh,
        "http" => Protocol::Http,
        _ => Protocol::Kubernetes,
    };
    let mut t = Target::new(section.name.clone(), protocol);
    t.tags = section.tags.iter().cloned().collect();
    let mut who = Identity::new(subject, "policy-explain", AuthMethod::Test);
    who.groups = groups;
    let operation = match (sql, exec, http) {
        (Some(sql), None, None) => Operation::Sql(SqlOperation::simple(sql)),
        (None, Some(line), None) => Operation::Ssh(SshOperation::Exec(ExecCommand::parse(line))),
        (None, None, Some(mh)) => {
            let (method, raw) = (
                mh.first().cloned().unwrap_or_default(),
                mh.get(1).cloned().unwrap_or_default(),
            );
            let (path, query) = gatehouse_core::http_path::split_target(&raw);
            let canonical = gatehouse_core::http_path::canonicalize(path)
                .map_err(|e| CommandError::Usage(format!("--http path `{path}`: {e}")))?;
            Operation::Http(HttpOperation {
                method: method.to_ascii_uppercase(),
                path: canonical.path,
                query: query.map(str::to_string),
                body_sha256: None,
            })
        }
        _ => {
            return Err(CommandError::Usage(
                "give exactly one of --sql, --exec or --http METHOD PATH".into(),
            ));
        }
    };
    let explanation = policy.explain(&who, &t, &operation);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&explanation.decision).unwrap_or_default()
        );
    } else {
        print!("{explanation}");
    }
    Ok(ExitCode::SUCCESS)
}
