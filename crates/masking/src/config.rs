//! Masking profiles as the binary loads them from TOML (or any serde format).
//!
//! A [`MaskingConfig`] holds named [`ProfileConfig`]s; the policy's decision names the profile to
//! apply. Everything has a default, so an empty config means: the default profile with the
//! [default detector set](crate::Detector::DEFAULT_SET) and the redact strategy.
//!
//! ```toml
//! default_profile = "default"
//!
//! [profiles.default]
//! strategy = "redact"
//! hmac_key = "a long random key from a secret file"
//! detectors = { phone = false, email = { strategy = "keyed_hash" } }
//! columns = [{ pattern = "*password*" }, { pattern = "public.customers.ssn", strategy = "partial" },
//!            { pattern = "customers.notes", strategy = "detect" }]
//! json_paths = [{ path = "$.users[*].email" }, { path = "$..token" }]
//! dictionaries = [{ name = "codename", words = ["bluebird", "nightjar"] }]
//! regexes = [{ name = "employee-id", pattern = "EMP-[0-9]{6}" }]
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// All masking profiles.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskingConfig {
    /// The profile used when a decision names none (default: `default`, which always exists:
    /// if it is not configured it is the built-in default profile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_profile: Option<String>,
    /// Profiles by name.
    #[serde(default)]
    pub profiles: BTreeMap<String, ProfileConfig>,
}

/// How a match is replaced.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Strategy {
    /// A `[label]` token naming what was there (`[email]`, `[card]`).
    #[default]
    Redact,
    /// Every character but the last four becomes `*` (length is kept).
    Partial,
    /// `[label#<16 letters>]` from HMAC-SHA256 under the profile's key: equal values give equal
    /// tokens (joinable), and the value cannot be recovered without the key.
    KeyedHash,
    /// A fixed text chosen by the operator.
    Placeholder(String),
    /// Column rules only: a free-text column that may carry personal data. Returned as it is
    /// (a plain column reference), its value passes the content detectors like an unruled
    /// column; any value computed from it by an expression (`reverse(notes)`,
    /// `translate(notes, …)`, `encode(…, 'base64')`, `substr(notes, i, 1)`, `array_agg`) is
    /// masked whole as `[masked]` (NULL for non-text types), since no detector recognises a
    /// transformed value. Refused for detectors, dictionaries, regexes, JSON paths and as a
    /// profile's default.
    Detect,
}

/// One profile: which detectors run, how matches are replaced, and which fields are masked whole.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileConfig {
    /// Strategy for every rule that does not name its own.
    #[serde(default)]
    pub strategy: Strategy,
    /// Switches and settings per built-in detector, by name (`email`, `payment_card`, …).
    /// Detectors not listed keep their default state (on for the default set).
    #[serde(default)]
    pub detectors: BTreeMap<String, DetectorSetting>,
    /// Fields masked whole, by column name or qualified source.
    #[serde(default)]
    pub columns: Vec<ColumnRule>,
    /// JSON values masked whole, by path.
    #[serde(default)]
    pub json_paths: Vec<JsonPathRule>,
    /// Word lists matched in one aho-corasick pass.
    #[serde(default)]
    pub dictionaries: Vec<DictionaryConfig>,
    /// Operator regexes (run line by line; they cost what they cost).
    #[serde(default)]
    pub regexes: Vec<RegexConfig>,
    /// Key for the keyed-hash strategy. Required when any rule uses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac_key: Option<String>,
}

impl std::fmt::Debug for ProfileConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The HMAC key is a secret: show only whether it is set.
        f.debug_struct("ProfileConfig")
            .field("strategy", &self.strategy)
            .field("detectors", &self.detectors)
            .field("columns", &self.columns)
            .field("json_paths", &self.json_paths)
            .field("dictionaries", &self.dictionaries)
            .field("regexes", &self.regexes)
            .field("hmac_key", &self.hmac_key.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// A detector's switch: `email = false`, or a table with settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
#[non_exhaustive]
pub enum DetectorSetting {
    /// On or off with default settings.
    Switch(bool),
    /// On or off with settings.
    Settings(DetectorConfig),
}

/// Settings of one detector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorConfig {
    /// Whether it runs.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Strategy for its matches (default: the profile's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// Longest match in bytes. For `private_key` this is the fail-closed cap: a block whose END
    /// never comes is masked from BEGIN to the cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_len: Option<usize>,
}

fn yes() -> bool {
    true
}

/// Mask a field whole when its name or one of its qualified sources matches `pattern`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnRule {
    /// Case-insensitive glob: `email`, `*password*`, `public.customers.ssn`, `*.users.email`.
    pub pattern: String,
    /// Strategy (default: the profile's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
}

/// Mask the JSON value at `path` whole (strings become tokens, other scalars `null`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonPathRule {
    /// A JSONPath subset: `$.users[*].email`, `$..token`, `$['a b'][0]`.
    pub path: String,
    /// Strategy (default: the profile's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
}

/// A named word list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DictionaryConfig {
    /// Rule name (letters, digits, `_`, `-`), used in findings and tokens.
    pub name: String,
    /// The words (no line breaks).
    pub words: Vec<String>,
    /// ASCII case-insensitive matching (default: true).
    #[serde(default = "yes")]
    pub case_insensitive: bool,
    /// Only whole words: no letter, digit or `_` on either side (default: true).
    #[serde(default = "yes")]
    pub whole_words: bool,
    /// Strategy (default: the profile's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
}

/// A named operator regex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegexConfig {
    /// Rule name (letters, digits, `_`, `-`), used in findings and tokens.
    pub name: String,
    /// `regex` crate syntax, matched against bytes one line at a time.
    pub pattern: String,
    /// Longest match in bytes; longer matches are ignored (default 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_len: Option<usize>,
    /// Strategy (default: the profile's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
}
