//! One module per CLI command.

pub mod approvals;
pub mod audit;
pub mod check_config;
pub mod evidence;
pub mod login;
pub mod mask;
pub mod policy;
pub mod quickstart;
pub mod serve;
pub mod token;

/// What a command returns: an exit code, or an error printed as `gatehouse: <error>` (exit 2).
pub type CommandResult = Result<std::process::ExitCode, CommandError>;

/// Errors a command reports to the operator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The arguments are wrong.
    #[error("{0}")]
    Usage(String),
    /// The config file is wrong (the message carries file, line and column).
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    /// The command ran and failed.
    #[error("{0}")]
    Failed(String),
}
