//! The one error type of this crate: everything that can be wrong with a masking configuration or
//! a held secret. Masking itself never fails: bad input is masked, not refused.

/// Why a masking profile or an egress guard could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MaskingError {
    /// A detector name in a profile is not one of the built-in detectors.
    #[error("profile {profile}: unknown detector {name:?}")]
    UnknownDetector {
        /// Profile being built.
        profile: String,
        /// The name that was not recognised.
        name: String,
    },
    /// `default_profile` names a profile that is not defined.
    #[error("default profile {0:?} is not defined")]
    UnknownDefaultProfile(String),
    /// A user regex does not compile.
    #[error("profile {profile}: regex {name:?} does not compile: {reason}")]
    BadRegex {
        /// Profile being built.
        profile: String,
        /// Name of the regex rule.
        name: String,
        /// The compiler's message.
        reason: String,
    },
    /// A JSON path rule is not in the supported subset (`$`, `.name`, `['name']`, `[*]`, `.*`,
    /// `[N]`, `..name`, `..*`).
    #[error("profile {profile}: JSON path {path:?} is not supported: {reason}")]
    BadJsonPath {
        /// Profile being built.
        profile: String,
        /// The path as written.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A column rule glob does not compile.
    #[error("profile {profile}: column pattern {pattern:?} is invalid: {reason}")]
    BadColumnPattern {
        /// Profile being built.
        profile: String,
        /// The glob as written.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A dictionary word or rule name cannot be used (empty, contains a line break, bad name).
    #[error("profile {profile}: {what}")]
    BadRule {
        /// Profile being built.
        profile: String,
        /// What is wrong.
        what: String,
    },
    /// The keyed-hash strategy is used but the profile has no `hmac_key`.
    #[error("profile {0}: the keyed_hash strategy needs an hmac_key")]
    MissingHmacKey(String),
    /// A placeholder would itself be detected (or is too long), so masking would not be
    /// idempotent.
    #[error("profile {profile}: placeholder {placeholder:?} is not usable: {reason}")]
    BadPlaceholder {
        /// Profile being built.
        profile: String,
        /// The placeholder text.
        placeholder: String,
        /// Why it is refused.
        reason: String,
    },
    /// A held secret is too short to be watched without blocking ordinary traffic.
    #[error("a held secret must be at least {min} bytes long to be watched (got {len})")]
    SecretTooShort {
        /// The minimum length.
        min: usize,
        /// The length given.
        len: usize,
    },
    /// The egress guard's automaton could not be built (too many or too long secrets).
    #[error("egress guard could not be built: {0}")]
    EgressBuild(String),
}
