#![no_main]
//! The streaming JSON masker on arbitrary bytes in fuzzer-chosen chunks: no panic; chunking does
//! not change the output; valid JSON in gives valid JSON out.

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use gatehouse_core::StreamMasker;
use gatehouse_masking::MaskingEngine;

#[derive(Arbitrary, Debug)]
struct Input {
    data: Vec<u8>,
    chunk: u8,
}

fn engine() -> &'static MaskingEngine {
    static ENGINE: OnceLock<MaskingEngine> = OnceLock::new();
    ENGINE.get_or_init(|| MaskingEngine::with_defaults().expect("default profile compiles"))
}

libfuzzer_sys::fuzz_target!(|input: Input| {
    let (once, _) = engine().mask_json(None, &input.data);
    let mut s = engine().json_stream(None, None);
    let mut out = Vec::new();
    for c in input.data.chunks(usize::from(input.chunk).max(1)) {
        s.push(c, &mut out);
    }
    s.finish(&mut out);
    assert_eq!(&*once, &out[..], "chunking changed the output");
    if serde_json::from_slice::<serde_json::Value>(&input.data).is_ok() {
        assert!(
            serde_json::from_slice::<serde_json::Value>(&out).is_ok(),
            "valid JSON became invalid: {:?}",
            String::from_utf8_lossy(&out)
        );
    }
});
