//! The recorder's error type. Everything that reaches a protocol crate is converted into
//! [`gatehouse_core::RecordError`], which makes it refuse the operation (fail closed).

use gatehouse_core::RecordError;

/// Why opening, reading or administering the recorder failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecorderError {
    /// Local file I/O failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The object store failed.
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    /// A stored segment is damaged somewhere recovery may not cut (only a torn final line is cut).
    #[error("audit segment {segment} is damaged at line {line}: {detail}; run verify")]
    Damaged {
        /// Segment name.
        segment: String,
        /// 1-based line (0: the segment as a whole).
        line: u64,
        /// What is wrong.
        detail: String,
    },
    /// The configuration is invalid.
    #[error("invalid recorder configuration: {0}")]
    Config(String),
    /// A signing or public key could not be read or made.
    #[error("audit key: {0}")]
    Key(String),
    /// A recording could not be read or rendered.
    #[error("recording: {0}")]
    Recording(String),
    /// A witness push failed.
    #[error("witness: {0}")]
    Witness(String),
    /// Appending failed.
    #[error(transparent)]
    Record(#[from] RecordError),
}

impl RecorderError {
    /// An I/O error with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        RecorderError::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<RecorderError> for RecordError {
    fn from(e: RecorderError) -> Self {
        match e {
            RecorderError::Record(r) => r,
            other => RecordError::Store(other.to_string()),
        }
    }
}
