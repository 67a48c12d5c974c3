#![no_main]
//! The HTTP/1 framing guard of gatehouse-http on hostile client bytes: it must never panic, and
//! how the bytes are split into reads must never change which requests it flags.
//!
//! Needs in fuzz/Cargo.toml: `gatehouse-http = { path = "../crates/http-proxy" }` and a
//! `[[bin]] name = "http_framing"` entry.

use gatehouse_http::framing::{FramingScanner, FramingVerdicts};

fn flagged(data: &[u8], cut: usize) -> Vec<Option<String>> {
    let verdicts = FramingVerdicts::default();
    let mut scanner = FramingScanner::new(verdicts.clone(), 8192);
    let cut = cut.min(data.len());
    scanner.observe(&data[..cut]);
    scanner.observe(&data[cut..]);
    (0..16).map(|i| verdicts.take(i)).collect()
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let cut = data.first().copied().unwrap_or(0) as usize;
    assert_eq!(flagged(data, 0), flagged(data, cut));
});
