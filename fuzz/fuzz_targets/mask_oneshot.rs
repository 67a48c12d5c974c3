#![no_main]
//! One-shot masking on arbitrary bytes: no panic; findings stay inside the input; masking the
//! output again changes nothing (idempotence).

use std::sync::OnceLock;

use gatehouse_masking::MaskingEngine;

fn engine() -> &'static MaskingEngine {
    static ENGINE: OnceLock<MaskingEngine> = OnceLock::new();
    ENGINE.get_or_init(|| MaskingEngine::with_defaults().expect("default profile compiles"))
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (once, findings) = engine().mask_bytes(data);
    for f in &findings {
        assert!(f.offset + f.length <= data.len() as u64, "finding outside the input");
    }
    let (twice, _) = engine().mask_bytes(&once);
    assert_eq!(once, twice, "masking is not idempotent");
});
