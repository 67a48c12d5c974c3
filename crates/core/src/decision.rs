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
        }
    }

    /// Sets the masking profile (builder style).
    pub fn with_masking_profile(mut self, profile: impl Into<String>) -> Self {
        self.masking_profile = Some(profile.into());
        self
    }
}
