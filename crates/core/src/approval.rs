//! Just-in-time approvals: the request a `Review` verdict opens, and how it ends.

use serde::{Deserialize, Serialize};

use crate::{Identity, Operation, ReviewRequirement, SessionId, Target, Timestamp};

/// Approval request id (printed to the caller, typed by the approver).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ApprovalId(pub String);

impl std::fmt::Display for ApprovalId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a session asks the approvals broker to hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    /// Who asks.
    pub requester: Identity,
    /// Session the operation belongs to.
    pub session: SessionId,
    /// Where it would run.
    pub target: Target,
    /// The exact operation (the broker hashes it canonically and binds the approval to the hash).
    pub operation: Operation,
    /// The rule that asked for review.
    pub rule_id: String,
    /// The rule's reason, shown to approvers.
    pub reason: String,
    /// Approver groups, count, timeout and grant window.
    pub requirement: ReviewRequirement,
    /// Index of the operation in its session (recorded with the request).
    #[serde(default)]
    pub index: u64,
    /// The operation as it is recorded and shown to approvers: masked as the policy masks it
    /// (`None`: `operation` itself). Not part of the hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shown: Option<Operation>,
}

impl ApprovalRequest {
    /// The operation as approvers and the audit log see it.
    pub fn shown(&self) -> &Operation {
        self.shown.as_ref().unwrap_or(&self.operation)
    }
}

/// The broker's answer to `open`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalTicket {
    /// Request id.
    pub id: ApprovalId,
    /// Canonical hash of the operation the approval is bound to (hex SHA-256).
    pub operation_hash: String,
    /// An earlier approval's grant window already covers this exact operation for this identity:
    /// `wait` resolves to `Approved` at once.
    pub already_granted: bool,
}

/// How a wait ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ApprovalOutcome {
    /// Enough distinct approvers approved.
    Approved {
        /// Subjects of the approvers.
        approvers: Vec<String>,
    },
    /// An approver denied.
    Denied {
        /// Subject of the approver who denied.
        by: String,
        /// Their justification.
        justification: String,
    },
    /// Nobody decided in time; the operation is refused.
    TimedOut,
    /// `max_wait` ended while the request is still open (see [`crate::Approvals::wait`]).
    StillPending,
}

/// An approver's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalDecision {
    /// Approve.
    Approve,
    /// Deny.
    Deny,
}

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ApprovalState {
    /// Waiting for approvers.
    Pending,
    /// Approved.
    Approved,
    /// Denied.
    Denied,
    /// Timed out.
    TimedOut,
    /// The waiting session went away (client gone, cancel).
    Abandoned,
}

/// One approver's recorded vote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApproverVote {
    /// Approver subject.
    pub approver: String,
    /// Approve or deny.
    pub decision: ApprovalDecision,
    /// Required justification.
    pub justification: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: Timestamp,
}

/// A request as the admin API and CLI list it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalRecord {
    /// Request id.
    pub id: ApprovalId,
    /// The request.
    pub request: ApprovalRequest,
    /// Hex SHA-256 canonical hash of the operation.
    pub operation_hash: String,
    /// Current state.
    pub state: ApprovalState,
    /// Votes so far.
    pub votes: Vec<ApproverVote>,
    /// When it was opened.
    #[serde(with = "time::serde::rfc3339")]
    pub opened_at: Timestamp,
    /// When it stopped being pending.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub closed_at: Option<Timestamp>,
}

impl ApprovalRecord {
    /// How the request ended: `None` while it is pending or after it was abandoned.
    pub fn outcome(&self) -> Option<ApprovalOutcome> {
        match self.state {
            ApprovalState::Approved => Some(ApprovalOutcome::Approved {
                approvers: self
                    .votes
                    .iter()
                    .filter(|v| v.decision == ApprovalDecision::Approve)
                    .map(|v| v.approver.clone())
                    .collect(),
            }),
            ApprovalState::Denied => {
                let deny = self
                    .votes
                    .iter()
                    .find(|v| v.decision == ApprovalDecision::Deny);
                Some(ApprovalOutcome::Denied {
                    by: deny.map(|v| v.approver.clone()).unwrap_or_default(),
                    justification: deny.map(|v| v.justification.clone()).unwrap_or_default(),
                })
            }
            ApprovalState::TimedOut => Some(ApprovalOutcome::TimedOut),
            ApprovalState::Pending | ApprovalState::Abandoned => None,
        }
    }
}

/// Which requests to list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalFilter {
    /// Only requests in this state.
    pub state: Option<ApprovalState>,
    /// Only requests by this requester subject.
    pub requester: Option<String>,
    /// Only requests on this target.
    pub target: Option<String>,
}
