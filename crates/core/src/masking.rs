//! Vocabulary of the masking layer: fields, findings, outcomes and the egress guard's counters.

use serde::{Deserialize, Serialize};

/// A masking finding. Carries rule, field and position — never the original value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Detector or field rule that matched, e.g. `email`, `column:customers.ssn`.
    pub rule: String,
    /// Field (column name, JSON path) when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Byte offset in the value or stream.
    pub offset: u64,
    /// Length in bytes of the masked original.
    pub length: u64,
}

/// What kind of value a field carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FieldKind {
    /// Text: can be masked in place.
    Text,
    /// JSON text: masked by the JSON masker.
    Json,
    /// A non-text value (integer, date, binary, …): cannot become a string; if it must be masked
    /// the caller nulls it or refuses.
    NonText,
}

/// Describes one field of a result shape (a pg RowDescription column, a JSON document type).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldDesc {
    /// Output name (column label, JSON key).
    pub name: String,
    /// Fully qualified source columns (`schema.table.column`) this field derives from: the
    /// catalog source and/or SQL lineage. Empty when unknown.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
    /// Value kind.
    pub kind: FieldKind,
}

impl FieldDesc {
    /// A text field with no known source.
    pub fn text(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            sources: Vec::new(),
            kind: FieldKind::Text,
        }
    }
}

/// What applying a field plan to one value did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MaskOutcome {
    /// Nothing matched: the caller sends the original value; the output buffer was not touched.
    Unchanged,
    /// The masked value was written into the output buffer.
    Masked,
    /// A non-text value must be masked: the caller nulls it or refuses the statement.
    MustNull,
}

/// Where outbound bytes go (for the egress guard's counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EgressSite {
    /// Bytes to the caller.
    Client,
    /// Bytes to a session recording.
    Recording,
    /// An audit record.
    Audit,
    /// A log line.
    Log,
}

/// The egress guard blocked bytes that contained held secret material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("egress guard blocked {hits} occurrence(s) of held secret material bound for {site:?}")]
pub struct EgressBlocked {
    /// Where the bytes were going.
    pub site: EgressSite,
    /// How many occurrences.
    pub hits: u64,
    /// Offset of the first hit in the checked bytes (never the secret itself).
    pub first_offset: u64,
}

/// Counters from which the signed "credentials never exposed" statement is derived.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressCounters {
    /// Secrets (and encoded forms) being watched.
    pub patterns: u64,
    /// Bytes checked, per site.
    pub bytes_checked: std::collections::BTreeMap<String, u64>,
    /// Hits blocked, per site.
    pub hits: std::collections::BTreeMap<String, u64>,
}
