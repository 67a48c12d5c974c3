//! Masking of result rows: a [`ShapePlan`] is resolved once per RowDescription (through
//! [`gatehouse_core::Masker::plan`]) and applied to every DataRow of that shape.
//!
//! Promise: a row in which nothing matched is forwarded byte for byte (no re-encoding, no
//! allocation beyond the value index); a row in which something matched is re-encoded with fresh
//! lengths. Text-format values of any type and binary values of textual types go through the
//! plan; a value that must be masked but cannot become a string is NULLed or the row is refused.

use bytes::{Bytes, BytesMut};
use gatehouse_core::{FieldDesc, FieldKind, FieldPlan, Finding, MaskOutcome, Masker};

use crate::config::NonTextMasking;
use crate::frame::{BodyReader, FrameError, encode_frame};
use crate::wire::{ColumnDesc, encode_data_row};

/// How a column's values reach the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueForm {
    /// Text bytes (text format, or binary of a textual type).
    Text,
    /// jsonb binary: a version byte, then text.
    JsonbBinary,
    /// Binary of a non-textual type: only whole-value masking applies.
    OpaqueBinary,
}

/// Per-shape masking plan.
pub struct ShapePlan {
    plan: Box<dyn FieldPlan>,
    forms: Vec<ValueForm>,
    kinds: Vec<FieldKind>,
    names: Vec<String>,
    /// What to do with a masked non-text value.
    non_text: NonTextMasking,
}

impl std::fmt::Debug for ShapePlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShapePlan")
            .field("columns", &self.names)
            .finish_non_exhaustive()
    }
}

/// The value kind of a PostgreSQL type OID.
pub fn field_kind(type_oid: u32) -> FieldKind {
    match type_oid {
        // text, varchar, bpchar, name, char, unknown, citext-like domains show as their base type
        25 | 1043 | 1042 | 19 | 18 | 705 | 142 => FieldKind::Text,
        // text[], varchar[], bpchar[], name[] in text format
        1009 | 1015 | 1014 | 1003 => FieldKind::Text,
        114 | 3802 | 199 | 3807 => FieldKind::Json,
        _ => FieldKind::NonText,
    }
}

fn is_textual_binary(type_oid: u32) -> Option<ValueForm> {
    match type_oid {
        25 | 1043 | 1042 | 19 | 18 | 705 | 142 | 114 => Some(ValueForm::Text),
        3802 => Some(ValueForm::JsonbBinary),
        _ => None,
    }
}

/// What happened to one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowOutcome {
    /// Forwarded unchanged.
    Unchanged,
    /// Re-encoded with masked values.
    Masked,
    /// A masked non-text value and the configuration refuses: column index.
    Refused(usize),
}

/// What goes out for one value.
#[derive(Debug)]
enum Slot {
    Keep,
    Null,
    Replace(Vec<u8>),
}

/// Reusable buffers for [`ShapePlan::mask_row`].
#[derive(Debug, Default)]
pub struct RowScratch {
    values: Vec<Option<Bytes>>,
    masked: Vec<Slot>,
    buf: Vec<u8>,
}

impl ShapePlan {
    /// Builds the plan for `columns` (with their resolved `sources`) under `profile`. The hook
    /// `adjust` sees the field descriptions before the masker does.
    pub fn new(
        masker: &dyn Masker,
        columns: &[ColumnDesc],
        sources: Vec<Vec<String>>,
        profile: Option<&str>,
        non_text: NonTextMasking,
        adjust: impl FnOnce(&mut [FieldDesc]),
    ) -> Self {
        let mut fields: Vec<FieldDesc> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| FieldDesc {
                name: c.name.clone(),
                sources: sources.get(i).cloned().unwrap_or_default(),
                kind: field_kind(c.type_oid),
            })
            .collect();
        adjust(&mut fields);
        let plan = masker.plan(&fields, profile);
        let forms = columns
            .iter()
            .map(|c| {
                if c.format == 0 {
                    ValueForm::Text
                } else {
                    is_textual_binary(c.type_oid).unwrap_or(ValueForm::OpaqueBinary)
                }
            })
            .collect();
        Self {
            plan,
            forms,
            kinds: fields.iter().map(|f| f.kind).collect(),
            names: fields.into_iter().map(|f| f.name).collect(),
            non_text,
        }
    }

    /// Output column names.
    pub fn column_names(&self) -> &[String] {
        &self.names
    }

    /// Masks one DataRow body. Appends the (possibly rewritten) DataRow message to `out`;
    /// appends findings. On `Refused`, nothing is appended.
    pub fn mask_row(
        &self,
        body: &Bytes,
        out: &mut BytesMut,
        scratch: &mut RowScratch,
        findings: &mut Vec<Finding>,
    ) -> Result<RowOutcome, FrameError> {
        split_row(body, &mut scratch.values)?;
        if scratch.values.len() != self.forms.len() {
            return Err(FrameError::Malformed(
                "DataRow (column count differs from RowDescription)",
            ));
        }
        scratch.masked.clear();
        let mut changed = false;
        for (i, value) in scratch.values.iter().enumerate() {
            let Some(v) = value else {
                scratch.masked.push(Slot::Keep);
                continue;
            };
            let form = self
                .forms
                .get(i)
                .copied()
                .unwrap_or(ValueForm::OpaqueBinary);
            let kind = self.kinds.get(i).copied().unwrap_or(FieldKind::NonText);
            let outcome = match form {
                ValueForm::OpaqueBinary => {
                    if self.plan.masks_whole(i) {
                        MaskOutcome::MustNull
                    } else {
                        MaskOutcome::Unchanged
                    }
                }
                ValueForm::Text => self.plan.apply(i, v, &mut scratch.buf, findings),
                ValueForm::JsonbBinary => match v.split_first() {
                    Some((ver, rest)) => {
                        let o = self.plan.apply(i, rest, &mut scratch.buf, findings);
                        if o == MaskOutcome::Masked {
                            scratch.buf.insert(0, *ver);
                        }
                        o
                    }
                    None => MaskOutcome::Unchanged,
                },
            };
            let outcome = if kind == FieldKind::NonText && outcome == MaskOutcome::Masked {
                // A masked string in place of a number or date would break the client's parser.
                MaskOutcome::MustNull
            } else {
                outcome
            };
            match outcome {
                MaskOutcome::Unchanged => scratch.masked.push(Slot::Keep),
                MaskOutcome::Masked => {
                    changed = true;
                    scratch
                        .masked
                        .push(Slot::Replace(std::mem::take(&mut scratch.buf)));
                }
                MaskOutcome::MustNull => {
                    if self.non_text == NonTextMasking::Refuse {
                        return Ok(RowOutcome::Refused(i));
                    }
                    changed = true;
                    scratch.masked.push(Slot::Null);
                }
                _ => {
                    // Unknown future outcomes are treated as "must not pass": NULL.
                    changed = true;
                    scratch.masked.push(Slot::Null);
                }
            }
        }
        if !changed {
            encode_frame(b'D', body, out);
            return Ok(RowOutcome::Unchanged);
        }
        let values: Vec<Option<&[u8]>> = scratch
            .values
            .iter()
            .zip(scratch.masked.iter())
            .map(|(orig, slot)| match slot {
                Slot::Null => None,
                Slot::Replace(m) => Some(m.as_slice()),
                Slot::Keep => orig.as_deref(),
            })
            .collect();
        encode_data_row(&values, out);
        Ok(RowOutcome::Masked)
    }

    /// Masks one text value of column `index` (CopyData lines, notices): returns the masked bytes
    /// or `None` when unchanged.
    pub fn mask_value(
        &self,
        index: usize,
        value: &[u8],
        findings: &mut Vec<Finding>,
    ) -> Option<Vec<u8>> {
        let mut buf = Vec::new();
        match self.plan.apply(index, value, &mut buf, findings) {
            MaskOutcome::Unchanged => None,
            MaskOutcome::Masked => Some(buf),
            _ => Some(b"****".to_vec()),
        }
    }
}

fn split_row(body: &Bytes, values: &mut Vec<Option<Bytes>>) -> Result<(), FrameError> {
    values.clear();
    let mut r = BodyReader::new(body.clone(), "DataRow");
    let n = usize::try_from(r.i16()?).map_err(|_| FrameError::Malformed("DataRow"))?;
    if n.saturating_mul(4) > r.remaining() {
        return Err(FrameError::Malformed("DataRow"));
    }
    for _ in 0..n {
        values.push(r.value()?);
    }
    r.finish()
}
