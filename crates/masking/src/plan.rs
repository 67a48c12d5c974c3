//! Field plans: resolved once per result shape, applied per value.

use std::sync::Arc;

use gatehouse_core::{FieldDesc, FieldKind, FieldPlan, Finding, MaskOutcome, StreamMasker};

use crate::config::Strategy;
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
    /// A column under a `detect` rule: its plain values get content detection (the JSON masker
    /// for JSON), values derived from it are masked whole ([`FieldPlan::apply_derived`]).
    DetectColumn {
        rule: Rule,
        json: bool,
        non_text: bool,
    },
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
                // A secret-looking name keeps its stricter treatment.
                Some(rule) if rule.strategy == Strategy::Detect && !secret() => {
                    FieldAction::DetectColumn {
                        rule,
                        json: f.kind == FieldKind::Json,
                        non_text,
                    }
                }
                Some(rule) if rule.strategy == Strategy::Detect => {
                    match profile.detector_rule(Detector::SecretAssignment) {
                        Some(secret) => FieldAction::Whole {
                            rule: secret.clone(),
                            non_text,
                        },
                        None => FieldAction::Whole { rule, non_text },
                    }
                }
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
            FieldAction::DetectColumn {
                json: true,
                non_text: false,
                ..
            } => self.apply_json(name, value, out, findings),
            FieldAction::DetectColumn { non_text, .. } => {
                self.apply_detect(name, *non_text, value, out, findings)
            }
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
            FieldAction::Detect { non_text } => {
                self.apply_detect(name, *non_text, value, out, findings)
            }
            FieldAction::Json => self.apply_json(name, value, out, findings),
        }
    }

    fn masks_whole(&self, index: usize) -> bool {
        matches!(self.actions.get(index), Some(FieldAction::Whole { .. }))
    }

    fn masks_derived(&self, index: usize) -> bool {
        matches!(
            self.actions.get(index),
            Some(FieldAction::Whole { .. } | FieldAction::DetectColumn { .. })
        )
    }

    fn apply_derived(
        &self,
        index: usize,
        value: &[u8],
        out: &mut Vec<u8>,
        findings: &mut Vec<Finding>,
    ) -> MaskOutcome {
        let name = self.names.get(index).map(String::as_str);
        match self.actions.get(index) {
            Some(FieldAction::Whole { rule, .. } | FieldAction::DetectColumn { rule, .. }) => {
                findings.push(Finding {
                    rule: rule.name.clone(),
                    field: name.map(str::to_string),
                    offset: 0,
                    length: value.len() as u64,
                });
                out.clear();
                self.profile.replace(rule, b"", false, out);
                MaskOutcome::Masked
            }
            // No rule hides this field: nothing to replace it with.
            _ => {
                let _ = self.apply(index, value, out, findings);
                MaskOutcome::MustNull
            }
        }
    }
}

impl ProfilePlan {
    /// Content detection; a non-text value that matches must be nulled by the caller.
    fn apply_detect(
        &self,
        name: Option<&str>,
        non_text: bool,
        value: &[u8],
        out: &mut Vec<u8>,
        findings: &mut Vec<Finding>,
    ) -> MaskOutcome {
        if non_text {
            let mut scratch = Vec::new();
            return if self.profile.mask_into(value, name, &mut scratch, findings) {
                MaskOutcome::MustNull
            } else {
                MaskOutcome::Unchanged
            };
        }
        if self.profile.mask_into(value, name, out, findings) {
            MaskOutcome::Masked
        } else {
            MaskOutcome::Unchanged
        }
    }

    /// The JSON masker (path rules and detectors).
    fn apply_json(
        &self,
        name: Option<&str>,
        value: &[u8],
        out: &mut Vec<u8>,
        findings: &mut Vec<Finding>,
    ) -> MaskOutcome {
        let mut masker = JsonStreamMasker::new(Arc::clone(&self.profile), name.map(str::to_string));
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
