//! Targets: the databases, hosts, clusters and APIs behind the gateway.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// The protocol a target speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Protocol {
    /// PostgreSQL wire protocol v3.
    Postgres,
    /// SSH (exec, shell, subsystems, forwarding).
    Ssh,
    /// HTTP(S) APIs.
    Http,
    /// The Kubernetes API, exec/attach streams included.
    Kubernetes,
}

impl Protocol {
    /// Lower-case name as used in config and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Postgres => "postgres",
            Protocol::Ssh => "ssh",
            Protocol::Http => "http",
            Protocol::Kubernetes => "kubernetes",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A named target. Its credentials are not here: they stay with the protocol crate's upstream
/// configuration and never travel with the `Target` into policy, approvals or the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// Unique name (the psql `database`, the ssh user's `@TARGET`, the HTTP host or prefix).
    pub name: String,
    /// The protocol it speaks.
    pub protocol: Protocol,
    /// Free-form tags for policy matching, e.g. `prod`, `env:staging`, `pii`.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub tags: BTreeSet<String>,
}

impl Target {
    /// A target without tags.
    pub fn new(name: impl Into<String>, protocol: Protocol) -> Self {
        Self {
            name: name.into(),
            protocol,
            tags: BTreeSet::new(),
        }
    }

    /// Adds a tag (builder style).
    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.insert(tag.into());
        self
    }
}
