//! Field plans: resolved once per result shape, applied per value.

use std::sync::Arc;

use gatehouse_core::{FieldDesc, FieldKind, FieldPlan, Finding, MaskOutcome, StreamMasker};

use crate::detect::Detector;
use crate::detect::scan::is_secret_key_name;
use crate::json::JsonStreamMasker;
use crate::profile::{MaskingProfile, Rule};

#[derive(Debug)]
enum FieldAction {
    /// Masked whole by a column rule or a secret-looking name.
    Whole { rule: Rule, non_text: bool },
    /// Content detection (non-text values that match must be nulled by the caller).
    Detect { non_text: bool },
    /// A JSON value: the JSON masker.
    Json,
}

/// A plan for one result shape under one profile.
#[derive(Debug)]
pub struct ProfilePlan {
    profile: Arc<MaskingProfile>,
    names: Vec<String>,
    actions: Vec<FieldAction>,
}

impl ProfilePlan {
    /// Resolves what happens to each field.
    pub fn new(profile: Arc<MaskingProfile>, fields: &[FieldDesc]) -> ProfilePlan {
        let mut actions = Vec::with_capacity(fields.len());
        let secret_names = profile.detector_enabled(Detector::SecretAssignment);
        for f in fields {
            let non_text = f.kind == FieldKind::NonText;
            let column = profile.column_rule(&f.name, &f.sources).cloned();
            let secret = || {
                secret_names
                    && (is_secret_key_name(f.name.as_bytes())
                        || f.sources.iter().any(|s| {
                            let col = s.rsplit('.').next().unwrap_or(s);
                            is_secret_key_name(col.as_bytes())
                        }))
            };
            let action = match column {
                Some(rule) => FieldAction::Whole { rule, non_text },
                None if secret() => match profile.detector_rule(Detector::SecretAssignment) {
                    Some(rule) => FieldAction::Whole {
                        rule: rule.clone(),
                        non_text,
                    },
                    None => FieldAction::Detect { non_text },
                },
                None if f.kind == FieldKind::Json => FieldAction::Json,
                None => FieldAction::Detect { non_text },
            };
            actions.push(action);
        }
        ProfilePlan {
            profile,
            names: fields.iter().map(|f| f.name.clone()).collect(),
            actions,
        }
    }
}

impl FieldPlan for ProfilePlan {
    fn apply(
        &self,
        index: usize,
        value: &[u8],
        out: &mut Vec<u8>,
        findings: &mut Vec<Finding>,
    ) -> MaskOutcome {
        let name = self.names.get(index).map(String::as_str);
        // An index outside the shape gets content detection: never a silent pass.
        let action = self
            .actions
            .get(index)
            .unwrap_or(&FieldAction::Detect { non_text: false });
        match action {
            FieldAction::Whole { rule, non_text } => {
                findings.push(Finding {
                    rule: rule.name.clone(),
                    field: name.map(str::to_string),
                    offset: 0,
                    length: value.len() as u64,
                });
                if *non_text {
                    return MaskOutcome::MustNull;
                }
                out.clear();
                self.profile.replace(rule, value, false, out);
                MaskOutcome::Masked
            }
            FieldAction::Detect { non_text: true } => {
                let mut scratch = Vec::new();
                if self.profile.mask_into(value, name, &mut scratch, findings) {
                    MaskOutcome::MustNull
                } else {
                    MaskOutcome::Unchanged
                }
            }
            FieldAction::Detect { non_text: false } => {
                if self.profile.mask_into(value, name, out, findings) {
                    MaskOutcome::Masked
                } else {
                    MaskOutcome::Unchanged
                }
            }
            FieldAction::Json => {
                let mut masker =
                    JsonStreamMasker::new(Arc::clone(&self.profile), name.map(str::to_string));
                let mut tmp = Vec::with_capacity(value.len());
                masker.push(value, &mut tmp);
                masker.finish(&mut tmp);
                let found = masker.take_findings();
                if found.is_empty() && tmp == value {
                    return MaskOutcome::Unchanged;
                }
                findings.extend(found);
                out.clear();
                out.extend_from_slice(&tmp);
                MaskOutcome::Masked
            }
        }
    }

    fn masks_whole(&self, index: usize) -> bool {
        matches!(self.actions.get(index), Some(FieldAction::Whole { .. }))
    }
}
