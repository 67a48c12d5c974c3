//! The one error type of this crate: what is wrong with a policy file, and where.

/// A policy that cannot be loaded. Every variant names the file and, where known, the line, so
/// `gatehouse policy check` can point at the mistake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// Not valid TOML, or a key/value the format does not have (unknown keys are errors).
    #[error("{file}:{line}:{column}: {message}")]
    Syntax {
        /// File name as given to the loader.
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the TOML reader said.
        message: String,
    },
    /// Valid TOML, but a rule or section is wrong (bad glob, unknown kind, duplicate id, …).
    #[error("{file}:{line}: {message}")]
    Invalid {
        /// File name as given to the loader.
        file: String,
        /// 1-based line of the section or rule.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The file could not be read.
    #[error("{file}: {message}")]
    Io {
        /// File name.
        file: String,
        /// The OS error.
        message: String,
    },
}

/// 1-based (line, column) of byte `offset` in `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}
