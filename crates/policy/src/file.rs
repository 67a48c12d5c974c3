//! The policy file as written (TOML), before compilation. Unknown keys are errors, so a typo
//! never silently widens or narrows a rule.

use serde::Deserialize;
use toml::Spanned;

use gatehouse_core::{BinaryHandling, Verdict};

/// A whole policy file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PolicyFile {
    /// File format version (1).
    #[serde(default)]
    pub version: Option<u32>,
    #[serde(default)]
    pub defaults: DefaultsSection,
    #[serde(default)]
    pub targets: Vec<Spanned<TargetSection>>,
    #[serde(default)]
    pub rules: Vec<Spanned<RuleSection>>,
}

/// Verdicts that apply when no rule decides, and for the forms rules cannot judge.
#[derive(Debug, Default, Clone)]
pub(crate) struct Verdicts {
    /// When no rule matches.
    pub default: Option<Verdict>,
    /// Operations whose effect the gateway cannot determine (never the `default`).
    pub opaque: Option<Verdict>,
    /// Deprecated: the `opaque` verdict for SQL only.
    pub unparseable_sql: Option<Verdict>,
    /// Deprecated: the `opaque` verdict for exec commands only.
    pub non_plain_exec: Option<Verdict>,
    /// HTTP paths with encoded separators (`%2F`, `%5C`).
    pub ambiguous_http_path: Option<Verdict>,
    /// `COPY … PROGRAM`.
    pub copy_program: Option<Verdict>,
    /// Changes to `standard_conforming_strings` / `client_encoding`.
    pub encoding_change: Option<Verdict>,
    /// Masking profile for every allowed operation without a rule-level profile.
    pub masking: Option<String>,
    /// Binary and framed output of allowed operations whose rule does not say (`refuse`).
    pub binary: Option<BinaryHandling>,
}

/// `[defaults]`: the verdicts, plus the review requirement of built-in review verdicts.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DefaultsSection {
    pub default: Option<Verdict>,
    pub opaque: Option<Verdict>,
    pub unparseable_sql: Option<Verdict>,
    pub non_plain_exec: Option<Verdict>,
    pub ambiguous_http_path: Option<Verdict>,
    pub copy_program: Option<Verdict>,
    pub encoding_change: Option<Verdict>,
    pub masking: Option<String>,
    pub binary: Option<BinaryHandling>,
    #[serde(default)]
    pub review: Option<ReviewSection>,
}

/// `[[targets]]`: per-target overrides of the defaults (first matching block wins).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TargetSection {
    /// Glob on the target name.
    #[serde(default)]
    pub name: Option<String>,
    /// The target has any of these tags.
    #[serde(default)]
    pub tags: Vec<String>,
    pub default: Option<Verdict>,
    pub opaque: Option<Verdict>,
    pub unparseable_sql: Option<Verdict>,
    pub non_plain_exec: Option<Verdict>,
    pub ambiguous_http_path: Option<Verdict>,
    pub copy_program: Option<Verdict>,
    pub encoding_change: Option<Verdict>,
    pub masking: Option<String>,
    pub binary: Option<BinaryHandling>,
}

impl DefaultsSection {
    pub fn verdicts(&self) -> Verdicts {
        Verdicts {
            default: self.default,
            opaque: self.opaque,
            unparseable_sql: self.unparseable_sql,
            non_plain_exec: self.non_plain_exec,
            ambiguous_http_path: self.ambiguous_http_path,
            copy_program: self.copy_program,
            encoding_change: self.encoding_change,
            masking: self.masking.clone(),
            binary: self.binary,
        }
    }
}

impl TargetSection {
    pub fn verdicts(&self) -> Verdicts {
        Verdicts {
            default: self.default,
            opaque: self.opaque,
            unparseable_sql: self.unparseable_sql,
            non_plain_exec: self.non_plain_exec,
            ambiguous_http_path: self.ambiguous_http_path,
            copy_program: self.copy_program,
            encoding_change: self.encoding_change,
            masking: self.masking.clone(),
            binary: self.binary,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReviewSection {
    #[serde(default)]
    pub approvers: Vec<String>,
    #[serde(default)]
    pub approvals: Option<u32>,
    #[serde(default)]
    pub timeout: Option<DurationValue>,
    #[serde(default)]
    pub grant_window: Option<DurationValue>,
}

/// `"15m"`, `"30s"`, `"2h"`, `"1d"`, or a number of seconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum DurationValue {
    Seconds(u64),
    Text(String),
}

impl DurationValue {
    pub fn to_millis(&self) -> Result<u64, String> {
        match self {
            DurationValue::Seconds(s) => s
                .checked_mul(1000)
                .ok_or_else(|| "duration too large".to_string()),
            DurationValue::Text(t) => {
                let t = t.trim();
                let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
                let (num, unit) = t.split_at(split);
                let n: u64 = num.parse().map_err(|_| {
                    format!("bad duration {t:?} (use e.g. \"30s\", \"15m\", \"2h\")")
                })?;
                let factor = match unit {
                    "" | "s" => 1_000,
                    "ms" => 1,
                    "m" => 60_000,
                    "h" => 3_600_000,
                    "d" => 86_400_000,
                    _ => {
                        return Err(format!("bad duration unit in {t:?} (use ms, s, m, h or d)"));
                    }
                };
                n.checked_mul(factor)
                    .ok_or_else(|| "duration too large".to_string())
            }
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuleSection {
    pub id: String,
    #[serde(default)]
    pub reason: Option<String>,
    pub verdict: Verdict,
    /// Masking profile applied to results when this rule allows.
    #[serde(default)]
    pub masking: Option<String>,
    /// What happens to binary or framed output when this rule allows (`refuse` or `raw`).
    #[serde(default)]
    pub binary: Option<BinaryHandling>,
    // Review requirement (verdict = "review").
    #[serde(default)]
    pub approvers: Option<Vec<String>>,
    #[serde(default)]
    pub approvals: Option<u32>,
    #[serde(default)]
    pub timeout: Option<DurationValue>,
    #[serde(default)]
    pub grant_window: Option<DurationValue>,
    /// `true`: the rule is for opaque operations only (and may allow them); `false`: for
    /// understood operations only; absent: allow rules never match an opaque operation, deny
    /// and review rules match both.
    #[serde(default)]
    pub opaque: Option<bool>,
    // Where and who.
    #[serde(default)]
    pub protocols: Option<Vec<String>>,
    #[serde(default)]
    pub targets: Option<Vec<String>>,
    #[serde(default)]
    pub target_tags: Option<Vec<String>>,
    #[serde(default)]
    pub subjects: Option<Vec<String>>,
    #[serde(default)]
    pub groups: Option<Vec<String>>,
    // What.
    #[serde(default)]
    pub sql: Option<SqlSection>,
    #[serde(default)]
    pub exec: Option<ExecSection>,
    #[serde(default)]
    pub http: Option<HttpSection>,
    #[serde(default)]
    pub kubernetes: Option<KubeSection>,
    #[serde(default)]
    pub ssh: Option<SshSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SqlSection {
    #[serde(default)]
    pub kinds: Option<Vec<String>>,
    #[serde(default)]
    pub tables: Option<Vec<String>>,
    #[serde(default)]
    pub functions: Option<Vec<String>>,
    #[serde(default)]
    pub risks: Option<Vec<String>>,
    #[serde(default)]
    pub no_where: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExecSection {
    #[serde(default)]
    pub program: Option<Vec<String>>,
    #[serde(default)]
    pub args: Option<Vec<String>>,
    #[serde(default)]
    pub any_arg: Option<Vec<String>>,
    #[serde(default)]
    pub no_arg: Option<Vec<String>>,
    /// Options as the program reads them (`-r`, `--recursive`).
    #[serde(default)]
    pub options: Option<Vec<String>>,
    #[serde(default)]
    pub plain: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HttpSection {
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    #[serde(default)]
    pub paths: Option<Vec<String>>,
    #[serde(default)]
    pub case_insensitive: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KubeSection {
    #[serde(default)]
    pub verbs: Option<Vec<String>>,
    #[serde(default)]
    pub api_groups: Option<Vec<String>>,
    #[serde(default)]
    pub resources: Option<Vec<String>>,
    #[serde(default)]
    pub subresources: Option<Vec<String>>,
    #[serde(default)]
    pub namespaces: Option<Vec<String>>,
    #[serde(default)]
    pub names: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SshSection {
    /// `shell`, `exec`, `subsystem`, `scp`, `rsync`, `git`, `direct_tcpip`, `env` (and the
    /// never-allowed `tcpip_forward`, `agent_forward`, `x11`).
    #[serde(default)]
    pub channels: Option<Vec<String>>,
    /// Subsystem names (e.g. `sftp`).
    #[serde(default)]
    pub subsystems: Option<Vec<String>>,
    /// `host:port` globs for forwarding.
    #[serde(default)]
    pub destinations: Option<Vec<String>>,
    /// Variable name globs for `env` requests.
    #[serde(default)]
    pub env: Option<Vec<String>>,
}
