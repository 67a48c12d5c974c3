#![no_main]
//! The backend masking path on arbitrary upstream bytes: a RowDescription chosen by the fuzzer,
//! then DataRows through the real masking engine. Nothing may panic; every row that comes out
//! must be a well-formed DataRow with the shape's column count; a column masked whole never
//! carries its original value.

use bytes::BytesMut;
use gatehouse_core::{FieldDesc, FieldPlan, Finding, MaskOutcome, Masker, StreamContext, StreamMasker};
use gatehouse_pg::config::NonTextMasking;
use gatehouse_pg::frame::decode_frame;
use gatehouse_pg::rowmask::{RowOutcome, RowScratch, ShapePlan};
use gatehouse_pg::wire::{self, ColumnDesc};

/// Real detectors, plus: column 0 is masked whole (as a column rule would).
struct FuzzMasker(gatehouse_masking::MaskingEngine);

struct WholeFirst(Box<dyn FieldPlan>);

impl FieldPlan for WholeFirst {
    fn apply(&self, index: usize, value: &[u8], out: &mut Vec<u8>, findings: &mut Vec<Finding>) -> MaskOutcome {
        if index == 0 {
            out.clear();
            out.extend_from_slice(b"[masked]");
            return MaskOutcome::Masked;
        }
        self.0.apply(index, value, out, findings)
    }
    fn masks_whole(&self, index: usize) -> bool {
        index == 0 || self.0.masks_whole(index)
    }
}

impl Masker for FuzzMasker {
    fn plan(&self, fields: &[FieldDesc], profile: Option<&str>) -> Box<dyn FieldPlan> {
        Box::new(WholeFirst(self.0.plan(fields, profile)))
    }
    fn stream(&self, context: &StreamContext) -> Box<dyn StreamMasker> {
        self.0.stream(context)
    }
}

const TYPES: [u32; 8] = [25, 1043, 23, 20, 114, 3802, 17, 1009];

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&shape, rest)) = data.split_first() else {
        return;
    };
    // Built once: compiling the detectors per input would leave the fuzzer little time to fuzz.
    static MASKER: std::sync::OnceLock<Option<FuzzMasker>> = std::sync::OnceLock::new();
    let Some(masker) = MASKER
        .get_or_init(|| gatehouse_masking::MaskingEngine::with_defaults().ok().map(FuzzMasker))
    else {
        return;
    };
    let ncols = usize::from(shape % 6);
    let columns: Vec<ColumnDesc> = (0..ncols)
        .map(|i| {
            let b = rest.get(i).copied().unwrap_or(0);
            ColumnDesc {
                name: format!("c{i}"),
                table_oid: u32::from(b & 1),
                attnum: 1,
                type_oid: TYPES[usize::from(b >> 1) % TYPES.len()],
                format: i16::from((b >> 4) & 1),
            }
        })
        .collect();
    let non_text = if shape & 0x80 != 0 { NonTextMasking::Refuse } else { NonTextMasking::Null };
    let plan = ShapePlan::new(masker, &columns, Vec::new(), None, non_text, |_| {});
    let mut buf = BytesMut::from(rest.get(ncols..).unwrap_or(&[]));
    let mut scratch = RowScratch::default();
    let mut findings = Vec::new();
    let mut rows = 0;
    while let Ok(Some(frame)) = decode_frame(&mut buf, 1 << 20) {
        rows += 1;
        if rows > 1000 {
            break;
        }
        // Upstream messages are DataRows here whatever their tag: the masking path must cope.
        let original = wire::parse_data_row(&frame.body).ok();
        let mut out = BytesMut::new();
        match plan.mask_row(&frame.body, &mut out, &mut scratch, &mut findings) {
            Ok(RowOutcome::Refused(_)) => assert!(out.is_empty()),
            Ok(_) => {
                let mut sent = out.clone();
                let Ok(Some(sent)) = decode_frame(&mut sent, usize::MAX) else {
                    panic!("masked row is not a frame");
                };
                assert_eq!(sent.tag, b'D');
                let values = wire::parse_data_row(&sent.body).expect("masked row parses");
                assert_eq!(values.len(), ncols);
                if let (Some(orig), Some(first)) = (original, values.first()) {
                    if let (Some(Some(o)), Some(v)) = (orig.first(), first) {
                        assert!(o.len() < 3 || o != v || o.as_ref() == b"[masked]", "column 0 leaked");
                    }
                }
            }
            Err(_) => assert!(out.is_empty(), "nothing is emitted for a malformed row"),
        }
        findings.clear();
    }
});
