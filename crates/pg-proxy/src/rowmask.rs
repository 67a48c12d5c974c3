//! Masking of result rows: a [`ShapePlan`] is resolved once per RowDescription (through
//! [`gatehouse_core::Masker::plan`]) and applied to every DataRow of that shape.
//!
//! Promise: a row in which nothing matched is forwarded byte for byte (no re-encoding, no
//! allocation beyond the value index); a row in which something matched is re-encoded with fresh
//! lengths. Text-format values of any type and binary values of textual types go through the
//! plan; a value that must be masked but cannot become a string is NULLed or the row is refused.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use gatehouse_core::{FieldDesc, FieldKind, FieldPlan, Finding, MaskOutcome, Masker};

use crate::binvalue::{
    Leaf, LeafKind, TypeForm, TypeForms, WalkError, Walked, builtin_form, form_of, walk,
};
use crate::config::NonTextMasking;
use crate::frame::{BodyReader, FrameError, encode_frame};
use crate::wire::{ColumnDesc, encode_data_row};

/// How one column's values reach the plan.
#[derive(Debug, Clone, Copy)]
struct ColumnPlan {
    /// Binary format (else text).
    binary: bool,
    type_oid: u32,
    /// An expression or a whole-row reference, not a plain column reference (see
    /// [`ColumnDesc::is_catalog_column`]): when its
    /// lineage reaches a masked column, the whole value is replaced by a constant, whatever
    /// the rule's strategy (a partial or keyed-hash form of `reverse(card)` or `substr(email,
    /// i, 1)` would reveal what the rule hides).
    derived: bool,
    /// Masked whole by the plan.
    whole: bool,
    /// Masked whole by the plan when `derived` (a `detect` rule: plain values pass the
    /// detectors, anything computed from the column is hidden).
    whole_if_derived: bool,
    /// Masked whole by the caller ([`ShapePlan::withhold`]): always NULL.
    forced: bool,
    /// SQL text of other sessions ([`ShapePlan::mask_as_statement_text`]).
    sql_text: bool,
}

/// Per-shape masking plan.
pub struct ShapePlan {
    plan: Box<dyn FieldPlan>,
    columns: Vec<ColumnPlan>,
    kinds: Vec<FieldKind>,
    names: Vec<String>,
    /// Binary layouts of types beyond the built-ins (from the catalog).
    types: Arc<TypeForms>,
    /// What to do with a masked non-text value.
    non_text: NonTextMasking,
}

/// A field plan for a session whose client encoding is not UTF-8: the masker reads and writes
/// UTF-8, so a value is decoded from the session's encoding before it is masked, and the masked
/// text encoded back (a character the encoding lacks becomes `?`). ASCII passes as it is.
struct Transcoding {
    inner: Box<dyn FieldPlan>,
    codec: crate::encoding::Codec,
}

impl FieldPlan for Transcoding {
    fn apply(
        &self,
        index: usize,
        value: &[u8],
        out: &mut Vec<u8>,
        findings: &mut Vec<Finding>,
    ) -> MaskOutcome {
        if value.is_ascii() {
            return self.inner.apply(index, value, out, findings);
        }
        let text = self.codec.decode_lossy(value);
        let mut masked = Vec::new();
        let outcome = self
            .inner
            .apply(index, text.as_bytes(), &mut masked, findings);
        if outcome == MaskOutcome::Masked {
            out.clear();
            out.extend_from_slice(&self.codec.encode(&String::from_utf8_lossy(&masked)));
        }
        outcome
    }

    fn masks_whole(&self, index: usize) -> bool {
        self.inner.masks_whole(index)
    }

    fn masks_derived(&self, index: usize) -> bool {
        self.inner.masks_derived(index)
    }

    fn apply_derived(
        &self,
        index: usize,
        value: &[u8],
        out: &mut Vec<u8>,
        findings: &mut Vec<Finding>,
    ) -> MaskOutcome {
        let text = self.codec.decode_lossy(value);
        let mut masked = Vec::new();
        let outcome = self
            .inner
            .apply_derived(index, text.as_bytes(), &mut masked, findings);
        if outcome == MaskOutcome::Masked {
            out.clear();
            out.extend_from_slice(&self.codec.encode(&String::from_utf8_lossy(&masked)));
        }
        outcome
    }
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

/// The kind the plan sees for a column: binary values whose textual leaves the gateway rewrites
/// in place (arrays, records, tsvector, bytea, enums, domains over text) are text to the plan;
/// numbers stay non-text (a matching number is dropped, never rewritten).
fn column_kind(c: &ColumnDesc, types: &TypeForms) -> FieldKind {
    let kind = field_kind(c.type_oid);
    if c.format == 0 || kind != FieldKind::NonText {
        return kind;
    }
    match form_of(c.type_oid, types) {
        TypeForm::Text
        | TypeForm::Bytea
        | TypeForm::Array
        | TypeForm::Record
        | TypeForm::TsVector => FieldKind::Text,
        TypeForm::Jsonb => FieldKind::Json,
        _ => FieldKind::NonText,
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
    /// A binary value of a type the gateway cannot read, in a column whose value it must check
    /// (an expression): column index and type OID.
    Undecodable(usize, u32),
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
        Self::build(
            masker,
            columns,
            sources,
            profile,
            non_text,
            Arc::new(TypeForms::new()),
            adjust,
        )
    }

    /// [`ShapePlan::new`] with the binary layouts of non-built-in types (`types`).
    pub fn build(
        masker: &dyn Masker,
        columns: &[ColumnDesc],
        sources: Vec<Vec<String>>,
        profile: Option<&str>,
        non_text: NonTextMasking,
        types: Arc<TypeForms>,
        adjust: impl FnOnce(&mut [FieldDesc]),
    ) -> Self {
        let mut fields: Vec<FieldDesc> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| FieldDesc {
                name: c.name.clone(),
                sources: sources.get(i).cloned().unwrap_or_default(),
                kind: column_kind(c, &types),
            })
            .collect();
        adjust(&mut fields);
        let plan = masker.plan(&fields, profile);
        let columns = columns
            .iter()
            .enumerate()
            .map(|(i, c)| ColumnPlan {
                binary: c.format != 0,
                type_oid: c.type_oid,
                derived: !c.is_catalog_column(),
                whole: plan.masks_whole(i),
                whole_if_derived: plan.masks_derived(i),
                forced: false,
                sql_text: false,
            })
            .collect();
        Self {
            plan,
            columns,
            kinds: fields.iter().map(|f| f.kind).collect(),
            names: fields.into_iter().map(|f| f.name).collect(),
            types,
            non_text,
        }
    }

    /// Masks column `index` whole as an untraceable expression (NULL, or the row refused,
    /// per the non-text setting), whatever the masker decided.
    pub fn withhold(&mut self, index: usize) {
        if let Some(c) = self.columns.get_mut(index) {
            c.whole = true;
            c.derived = true;
            c.forced = true;
        }
    }

    /// Masks column `index` as SQL text (a statement another session ran, as
    /// `pg_stat_activity.query` shows it): its constants and comments become placeholders
    /// ([`crate::statement_text_masked`]; a text that cannot be lexed is withheld), then the
    /// detectors read what is left. Such a text can carry literals of masked columns
    /// (`WHERE name = 'Alice Smith'`) that no detector recognises.
    pub fn mask_as_statement_text(&mut self, index: usize) {
        if let Some(c) = self.columns.get_mut(index) {
            c.sql_text = true;
        }
    }

    /// Treats column `index` as an expression (a view column computed from its sources): when
    /// the masker masks it whole, its value is replaced by a constant whatever the strategy.
    pub fn mark_derived(&mut self, index: usize) {
        if let Some(c) = self.columns.get_mut(index) {
            c.derived = true;
        }
    }

    /// The plan for a session in `codec`'s client encoding (see [`Transcoding`]).
    pub(crate) fn in_encoding(mut self, codec: crate::encoding::Codec) -> Self {
        if !codec.is_utf8() {
            self.plan = Box::new(Transcoding {
                inner: self.plan,
                codec,
            });
        }
        self
    }

    /// The type OID of column `index`.
    pub fn type_oid(&self, index: usize) -> Option<u32> {
        self.columns.get(index).map(|c| c.type_oid)
    }

    /// Output column names.
    pub fn column_names(&self) -> &[String] {
        &self.names
    }

    /// Whether any column of this shape is masked whole.
    pub fn masks_any(&self) -> bool {
        self.columns
            .iter()
            .any(|c| c.whole || (c.derived && c.whole_if_derived))
    }

    /// Masks one DataRow body. Appends the (possibly rewritten) DataRow message to `out`;
    /// appends findings. On `Refused` or `Undecodable`, nothing is appended.
    pub fn mask_row(
        &self,
        body: &Bytes,
        out: &mut BytesMut,
        scratch: &mut RowScratch,
        findings: &mut Vec<Finding>,
    ) -> Result<RowOutcome, FrameError> {
        split_row(body, &mut scratch.values)?;
        if scratch.values.len() != self.columns.len() {
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
            let Some(col) = self.columns.get(i).copied() else {
                return Err(FrameError::Malformed("DataRow"));
            };
            let kind = self.kinds.get(i).copied().unwrap_or(FieldKind::NonText);
            let outcome = if col.derived && (col.whole || col.whole_if_derived) {
                self.mask_derived(i, col, kind, v, &mut scratch.buf, findings)
            } else if col.sql_text {
                self.mask_statement_text(i, col, kind, v, &mut scratch.buf, findings)
            } else if col.binary {
                match self.mask_binary(i, col, v, &mut scratch.buf, findings)? {
                    Some(o) => o,
                    None => return Ok(RowOutcome::Undecodable(i, col.type_oid)),
                }
            } else if col.type_oid == BYTEA && !col.whole {
                self.mask_bytea_text(i, v, &mut scratch.buf, findings)
            } else {
                self.plan.apply(i, v, &mut scratch.buf, findings)
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

    /// A masked column reached through an expression: the findings come from the real value,
    /// the output is a constant (the rule's replacement of the empty string) or NULL.
    fn mask_derived(
        &self,
        i: usize,
        col: ColumnPlan,
        kind: FieldKind,
        value: &[u8],
        buf: &mut Vec<u8>,
        findings: &mut Vec<Finding>,
    ) -> MaskOutcome {
        let outcome = self.plan.apply_derived(i, value, buf, findings);
        if col.forced {
            return MaskOutcome::MustNull;
        }
        let plain_text = kind == FieldKind::Text
            && if col.binary {
                builtin_form(col.type_oid) == Some(TypeForm::Text) && col.type_oid != XML
            } else {
                !is_array_type(col.type_oid)
            };
        if !plain_text {
            return MaskOutcome::MustNull;
        }
        match outcome {
            MaskOutcome::Masked => MaskOutcome::Masked,
            _ => MaskOutcome::MustNull,
        }
    }

    /// A statement's text (see [`ShapePlan::mask_as_statement_text`]). A value that is not
    /// plain text in its format is dropped.
    fn mask_statement_text(
        &self,
        i: usize,
        col: ColumnPlan,
        kind: FieldKind,
        value: &[u8],
        buf: &mut Vec<u8>,
        findings: &mut Vec<Finding>,
    ) -> MaskOutcome {
        let plain_text = kind == FieldKind::Text
            && if col.binary {
                builtin_form(col.type_oid) == Some(TypeForm::Text) && col.type_oid != XML
            } else {
                !is_array_type(col.type_oid)
            };
        if !plain_text {
            let _ = self.plan.apply(i, value, buf, findings);
            return MaskOutcome::MustNull;
        }
        let masked = match std::str::from_utf8(value) {
            Ok(text) => crate::statement_text_masked(text),
            Err(_) => crate::WITHHELD_STATEMENT.to_string(),
        };
        let mut detected = Vec::new();
        let masked = match self
            .plan
            .apply(i, masked.as_bytes(), &mut detected, findings)
        {
            MaskOutcome::Unchanged => masked.into_bytes(),
            MaskOutcome::Masked => detected,
            _ => return MaskOutcome::MustNull,
        };
        if masked == value {
            return MaskOutcome::Unchanged;
        }
        *buf = masked;
        MaskOutcome::Masked
    }

    /// A binary value: every leaf that can carry data is checked as text; textual leaves are
    /// rewritten in place. `None`: a type the gateway cannot read in a column it must check.
    fn mask_binary(
        &self,
        i: usize,
        col: ColumnPlan,
        value: &[u8],
        buf: &mut Vec<u8>,
        findings: &mut Vec<Finding>,
    ) -> Result<Option<MaskOutcome>, FrameError> {
        let form = form_of(col.type_oid, &self.types);
        if col.whole {
            // Masked whole: a replacement string only where the binary value is that string.
            return Ok(Some(match form {
                TypeForm::Text | TypeForm::Bytea if col.type_oid != XML => {
                    self.plan.apply(i, value, buf, findings)
                }
                _ => {
                    let _ = self.plan.apply(i, value, buf, findings);
                    MaskOutcome::MustNull
                }
            }));
        }
        let mut visit = |kind: LeafKind, leaf: &[u8]| {
            let mut out = Vec::new();
            match (self.plan.apply(i, leaf, &mut out, findings), kind) {
                (MaskOutcome::Unchanged, _) => Leaf::Keep,
                (MaskOutcome::Masked, LeafKind::Text) => Leaf::Replace(out),
                _ => Leaf::Drop,
            }
        };
        match walk(form, value, &self.types, &mut visit) {
            Ok(Walked::Unchanged) => Ok(Some(MaskOutcome::Unchanged)),
            Ok(Walked::Rewritten(b)) => {
                *buf = b;
                Ok(Some(MaskOutcome::Masked))
            }
            Ok(Walked::Drop) => Ok(Some(MaskOutcome::MustNull)),
            // A plain column from a source no rule masks is what text format would show as
            // the type's own text, which the detectors could not read either; an expression
            // could be anything.
            Err(WalkError::Unknown(_)) if !col.derived => Ok(Some(MaskOutcome::Unchanged)),
            Err(WalkError::Unknown(_)) => Ok(None),
            Err(WalkError::Malformed) => Err(FrameError::Malformed("DataRow (binary value)")),
        }
    }

    /// A text-format bytea (`\x` hex): the detectors read the decoded bytes, as they would in
    /// binary format; a match drops the value.
    fn mask_bytea_text(
        &self,
        i: usize,
        value: &[u8],
        buf: &mut Vec<u8>,
        findings: &mut Vec<Finding>,
    ) -> MaskOutcome {
        let direct = self.plan.apply(i, value, buf, findings);
        if direct != MaskOutcome::Unchanged {
            return MaskOutcome::MustNull;
        }
        let Some(hex) = value.strip_prefix(b"\\x") else {
            return MaskOutcome::Unchanged;
        };
        let decoded: Option<Vec<u8>> = hex
            .chunks(2)
            .map(|p| {
                let s = std::str::from_utf8(p).ok()?;
                u8::from_str_radix(s, 16).ok()
            })
            .collect();
        match decoded {
            Some(bytes) => match self.plan.apply(i, &bytes, buf, findings) {
                MaskOutcome::Unchanged => MaskOutcome::Unchanged,
                _ => MaskOutcome::MustNull,
            },
            None => MaskOutcome::Unchanged,
        }
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

/// Catalog columns that hold the text of statements other sessions ran (or this one prepared):
/// their literals can be values of masked columns. Each `schema.table.column`, as the catalog
/// names a column's sources; `pg_stat_statements` is an extension installed in any schema.
const STATEMENT_TEXT_COLUMNS: &[&str] = &[
    "pg_catalog.pg_stat_activity.query",
    "pg_catalog.pg_prepared_statements.statement",
    "pg_catalog.pg_cursors.statement",
];

/// Whether the catalog source `name` is a column of statement text (see
/// [`ShapePlan::mask_as_statement_text`]).
pub(crate) fn is_statement_text_source(name: &str) -> bool {
    STATEMENT_TEXT_COLUMNS.contains(&name) || name.ends_with(".pg_stat_statements.query")
}

const BYTEA: u32 = 17;
const XML: u32 = 142;

/// Whether a type OID is a built-in array type (whose text form a constant would break).
fn is_array_type(oid: u32) -> bool {
    builtin_form(oid) == Some(TypeForm::Array)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use gatehouse_testkit::layers::LiteralMasker;

    fn text_column(table_oid: u32) -> ColumnDesc {
        ColumnDesc {
            name: "x".into(),
            table_oid,
            attnum: 1,
            type_oid: 25,
            format: 0,
        }
    }

    fn row_body(values: &[Option<&[u8]>]) -> Bytes {
        let mut framed = BytesMut::new();
        encode_data_row(values, &mut framed);
        Bytes::copy_from_slice(&framed[5..])
    }

    /// A value derived from a `detect` column is the rule's constant in any client encoding; a
    /// plain one passes the detectors and goes back in the session's encoding.
    #[test]
    fn a_derived_value_of_a_detect_column_is_masked_whole_in_a_latin1_session() {
        let mut profile = gatehouse_masking::ProfileConfig::default();
        profile.columns.push(gatehouse_masking::ColumnRule {
            pattern: "note".into(),
            strategy: Some(gatehouse_masking::Strategy::Detect),
        });
        let mut config = gatehouse_masking::MaskingConfig::default();
        config.profiles.insert("default".into(), profile);
        let engine = gatehouse_masking::MaskingEngine::new(&config).unwrap();
        let plain = ColumnDesc {
            name: "note".into(),
            table_oid: 16384,
            attnum: 2,
            type_oid: 25,
            format: 0,
        };
        let derived = text_column(0);
        let sources = vec![
            vec!["public.customers.note".to_string()],
            vec!["public.customers.note".to_string()],
        ];
        let plan = ShapePlan::new(
            &engine,
            &[plain, derived],
            sources,
            None,
            NonTextMasking::Null,
            |_| {},
        )
        .in_encoding(crate::encoding::Codec::for_name("LATIN1").unwrap());
        // "café 4012 8888 8888 1881" in LATIN1, and reversed.
        let value = b"caf\xe9 4012 8888 8888 1881".to_vec();
        let reversed: Vec<u8> = value.iter().rev().copied().collect();
        let body = row_body(&[Some(&value), Some(&reversed)]);
        let mut out = BytesMut::new();
        let mut findings = Vec::new();
        let outcome = plan
            .mask_row(&body, &mut out, &mut RowScratch::default(), &mut findings)
            .unwrap();
        assert_eq!(outcome, RowOutcome::Masked);
        let values = crate::wire::parse_data_row(&Bytes::copy_from_slice(&out[5..])).unwrap();
        assert_eq!(values[0].as_deref(), Some(&b"caf\xe9 [card]"[..]));
        assert_eq!(values[1].as_deref(), Some(&b"[masked]"[..]));
        assert!(
            findings.iter().any(|f| f.rule == "column:note"),
            "{findings:?}"
        );
    }

    #[test]
    fn a_withheld_column_goes_out_as_null_whatever_the_masker_says() {
        let masker = LiteralMasker::new();
        let cols = [text_column(0), text_column(0)];
        let mut plan = ShapePlan::new(
            &masker,
            &cols,
            Vec::new(),
            None,
            NonTextMasking::Null,
            |_| {},
        );
        plan.withhold(1);
        let body = row_body(&[Some(b"kept"), Some(b"secret")]);
        let mut out = BytesMut::new();
        let outcome = plan
            .mask_row(&body, &mut out, &mut RowScratch::default(), &mut Vec::new())
            .unwrap();
        assert_eq!(outcome, RowOutcome::Masked);
        let values = crate::wire::parse_data_row(&Bytes::copy_from_slice(&out[5..])).unwrap();
        assert_eq!(values[0].as_deref(), Some(&b"kept"[..]));
        assert_eq!(values[1], None);
    }
}
