//! Cost of the per-row hot path: framing a DataRow and running it through a masking plan with the
//! real masking engine (default profile, content detectors on every text value), against the
//! baseline of framing and copying the same bytes unchanged. Results: docs/BENCHMARKS.md.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gatehouse_pg::config::NonTextMasking;
use gatehouse_pg::frame::{decode_frame, encode_frame};
use gatehouse_pg::rowmask::{RowScratch, ShapePlan};
use gatehouse_pg::wire::{ColumnDesc, encode_data_row};

fn columns() -> Vec<ColumnDesc> {
    // pgbench_accounts: aid int4, bid int4, abalance int4, filler bpchar(84) — text format.
    [("aid", 23), ("bid", 23), ("abalance", 23), ("filler", 1042)]
        .iter()
        .enumerate()
        .map(|(i, (n, t))| ColumnDesc {
            name: (*n).to_string(),
            table_oid: 16400,
            attnum: i as i16 + 1,
            type_oid: *t,
            format: 0,
        })
        .collect()
}

fn rows(n: usize, pii: bool) -> BytesMut {
    let mut out = BytesMut::new();
    let filler = if pii {
        format!("{:<84}", "contact ann@example.com")
    } else {
        " ".repeat(84)
    };
    for i in 0..n {
        let aid = i.to_string();
        encode_data_row(
            &[
                Some(aid.as_bytes()),
                Some(b"1"),
                Some(b"0"),
                Some(filler.as_bytes()),
            ],
            &mut out,
        );
    }
    out
}

fn bench(c: &mut Criterion) {
    let engine = gatehouse_masking::MaskingEngine::with_defaults().unwrap();
    let plan = ShapePlan::new(
        &engine,
        &columns(),
        Vec::new(),
        None,
        NonTextMasking::Null,
        |_| {},
    );
    const N: usize = 1000;
    for (label, pii) in [("clean", false), ("email_in_every_row", true)] {
        let input = rows(N, pii);
        let mut g = c.benchmark_group(format!("pg_rows_{label}"));
        g.throughput(Throughput::Bytes(input.len() as u64));
        g.bench_function("baseline_frame_and_copy", |b| {
            let mut out = BytesMut::with_capacity(input.len() * 2);
            b.iter(|| {
                let mut buf = input.clone();
                out.clear();
                while let Some(f) = decode_frame(&mut buf, 1 << 30).unwrap() {
                    encode_frame(f.tag, &f.body, &mut out);
                }
                out.len()
            })
        });
        g.bench_function("gatehouse_frame_and_mask", |b| {
            let mut out = BytesMut::with_capacity(input.len() * 2);
            let mut scratch = RowScratch::default();
            let mut findings = Vec::new();
            b.iter(|| {
                let mut buf = input.clone();
                out.clear();
                findings.clear();
                while let Some(f) = decode_frame(&mut buf, 1 << 30).unwrap() {
                    plan.mask_row(&f.body, &mut out, &mut scratch, &mut findings)
                        .unwrap();
                }
                out.len()
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
