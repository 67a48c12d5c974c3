//! The crate's one error type: what can go wrong inside the broker's stores, configuration and
//! notifier, mapped onto the core [`ApprovalError`] at the trait boundary (always fail closed).

use gatehouse_core::ApprovalError;

/// A failure inside the approvals broker. Messages never carry secret material (connection strings
/// are not echoed; only the store's own error text).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// No request with that id.
    #[error("no approval request {0}")]
    NotFound(String),
    /// The journal file could not be opened, read, written or synced.
    #[error("approval journal {path}: {source}")]
    JournalIo {
        /// Journal path.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A journal line other than a torn last line does not parse: the journal was edited or
    /// damaged, and guessing would risk reviving or losing decisions.
    #[error("approval journal {path} line {line} is corrupt: {detail}")]
    JournalCorrupt {
        /// Journal path.
        path: String,
        /// One-based line number.
        line: usize,
        /// Parser message.
        detail: String,
    },
    /// PostgreSQL refused or the connection failed.
    #[error("approval store (postgres): {0}")]
    Postgres(String),
    /// A stored record does not decode.
    #[error("approval record {id} does not decode: {detail}")]
    CorruptRecord {
        /// Request id.
        id: String,
        /// Decoder message.
        detail: String,
    },
    /// An id was written twice.
    #[error("approval request {0} already exists")]
    Duplicate(String),
    /// The configuration is not usable.
    #[error("approvals configuration: {0}")]
    Config(String),
    /// A blocking store task panicked or was cancelled.
    #[error("approval store task failed: {0}")]
    Task(String),
}

impl From<tokio_postgres::Error> for BrokerError {
    fn from(e: tokio_postgres::Error) -> Self {
        // `Display` of a tokio-postgres error names the SQLSTATE and message, never the password.
        BrokerError::Postgres(e.to_string())
    }
}

impl From<BrokerError> for ApprovalError {
    fn from(e: BrokerError) -> Self {
        match e {
            BrokerError::NotFound(id) => ApprovalError::NotFound(id),
            other => ApprovalError::Store(other.to_string()),
        }
    }
}
