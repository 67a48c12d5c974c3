//! What the policy decided.

use serde::{Deserialize, Serialize};

/// The verdict on one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Run it.
    Allow,
    /// Hold it for a human approval, then run or refuse.
    Review,
    /// Refuse it.
    Deny,
}

impl Verdict {
    /// The stricter of two verdicts (Deny > Review > Allow). Across the statements of one SQL
    /// string, the strictest wins.
    pub fn strictest(self, other: Verdict) -> Verdict {
        self.max(other)
    }
}

/// What a review needs before the operation may run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewRequirement {
    /// Groups whose members may decide. Empty means nobody can approve (the request times out).
    pub approver_groups: Vec<String>,
    /// How many distinct approvers must approve.
    pub approvals_required: u32,
    /// How long the session waits before refusing, in milliseconds.
    pub timeout_ms: u64,
    /// If set, an approval also covers the same operation hash for the same identity for this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_window_ms: Option<u64>,
}

impl ReviewRequirement {
    /// Whether an approval given under `self` (with `approvals` distinct approvers) still meets
    /// `current`, the requirement the policy asks for now: at least as many approvers, approver
    /// groups all named by `current` (a vote records who voted, not as which group member, so
    /// every group the approval accepted must still be accepted), and no wider grant window
    /// (none is the narrowest). A policy tightened after the approval is never met by it.
    pub fn meets(&self, current: &ReviewRequirement, approvals: usize) -> bool {
        let needed = usize::try_from(current.approvals_required.max(1)).unwrap_or(usize::MAX);
        let asked = usize::try_from(self.approvals_required.max(1)).unwrap_or(usize::MAX);
        approvals >= needed
            && asked >= needed
            && !self.approver_groups.is_empty()
            && self
                .approver_groups
                .iter()
                .all(|g| current.approver_groups.contains(g))
            && match (self.grant_window_ms, current.grant_window_ms) {
                (None, _) => true,
                (Some(old), Some(now)) => old <= now,
                (Some(_), None) => false,
            }
    }
}

/// What happens to output the masker cannot rewrite safely: binary data (NUL bytes or invalid
/// UTF-8) in a stream that is otherwise masked as text, and framed protocols (SFTP packets, scp's
/// declared sizes, rsync, git's pack protocol) as a whole. Masking never rewrites such data:
/// it is refused, or passed through unmasked when the policy says so (recorded with a digest).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BinaryHandling {
    /// Stop the stream and tell the caller why (the default).
    #[default]
    Refuse,
    /// Pass the bytes through unmasked; the gateway records their size and SHA-256.
    Raw,
}

impl BinaryHandling {
    /// Whether this is the default, [`BinaryHandling::Refuse`] (not serialized).
    pub fn is_refuse(&self) -> bool {
        *self == BinaryHandling::Refuse
    }
}

/// The policy's answer for (identity, target, operation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Allow, review or deny.
    pub verdict: Verdict,
    /// Id of the rule that decided (or `default` / a built-in id such as `unparseable-sql`).
    pub rule_id: String,
    /// Reason shown to the caller and recorded.
    pub reason: String,
    /// Masking profile to apply to the results, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masking_profile: Option<String>,
    /// Present when `verdict` is `Review`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<ReviewRequirement>,
    /// What happens to binary or framed output (see [`BinaryHandling`]); `Refuse` unless a rule
    /// says `binary = "raw"`.
    #[serde(default, skip_serializing_if = "BinaryHandling::is_refuse")]
    pub binary: BinaryHandling,
}

impl Decision {
    /// An allow decision.
    pub fn allow(rule_id: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Allow,
            rule_id: rule_id.into(),
            reason: reason.into(),
            masking_profile: None,
            review: None,
            binary: BinaryHandling::Refuse,
        }
    }

    /// A deny decision.
    pub fn deny(rule_id: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Deny,
            rule_id: rule_id.into(),
            reason: reason.into(),
            masking_profile: None,
            review: None,
            binary: BinaryHandling::Refuse,
        }
    }

    /// A review decision.
    pub fn review(
        rule_id: impl Into<String>,
        reason: impl Into<String>,
        requirement: ReviewRequirement,
    ) -> Self {
        Self {
            verdict: Verdict::Review,
            rule_id: rule_id.into(),
            reason: reason.into(),
            masking_profile: None,
            review: Some(requirement),
            binary: BinaryHandling::Refuse,
        }
    }

    /// Sets the masking profile (builder style).
    pub fn with_masking_profile(mut self, profile: impl Into<String>) -> Self {
        self.masking_profile = Some(profile.into());
        self
    }

    /// Sets what happens to binary or framed output (builder style).
    pub fn with_binary(mut self, binary: BinaryHandling) -> Self {
        self.binary = binary;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_handling_is_recorded_only_when_raw_and_old_records_still_read() {
        let refuse = serde_json::to_value(Decision::allow("r", "x")).unwrap_or_default();
        assert!(refuse.get("binary").is_none(), "{refuse}");
        let raw = serde_json::to_value(Decision::allow("r", "x").with_binary(BinaryHandling::Raw))
            .unwrap_or_default();
        assert_eq!(raw["binary"], "raw");
        let old: Result<Decision, _> = serde_json::from_value(refuse);
        assert_eq!(old.map(|d| d.binary).ok(), Some(BinaryHandling::Refuse));
    }

    #[test]
    fn an_approval_meets_only_a_rule_no_stricter_than_its_own() {
        let req = |groups: &[&str], n: u32, window: Option<u64>| ReviewRequirement {
            approver_groups: groups.iter().map(|g| g.to_string()).collect(),
            approvals_required: n,
            timeout_ms: 60_000,
            grant_window_ms: window,
        };
        let given = req(&["ops", "dba"], 1, Some(60_000));
        assert!(given.meets(&req(&["ops", "dba"], 1, Some(60_000)), 1));
        assert!(given.meets(&req(&["ops", "dba", "sre"], 1, Some(120_000)), 1));
        assert!(
            !given.meets(&req(&["ops", "dba"], 2, Some(60_000)), 1),
            "more approvals"
        );
        assert!(
            !given.meets(&req(&["dba"], 1, Some(60_000)), 1),
            "fewer groups"
        );
        assert!(
            !given.meets(&req(&["ops", "dba"], 1, Some(1_000)), 1),
            "narrower window"
        );
        assert!(!given.meets(&req(&["ops", "dba"], 1, None), 1), "no window");
        assert!(
            !given.meets(&req(&["ops", "dba"], 1, Some(60_000)), 0),
            "no vote"
        );
        assert!(req(&["dba"], 2, None).meets(&req(&["dba"], 2, Some(5)), 2));
        assert!(
            !req(&[], 1, None).meets(&req(&[], 1, None), 1),
            "nobody approves"
        );
    }
}
