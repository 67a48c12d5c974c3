#![no_main]
//! Streaming masking with fuzzer-chosen chunking and flushes: no panic, bounded hold-back, and
//! without flushes the output equals one-shot masking.

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use gatehouse_core::StreamMasker;
use gatehouse_masking::MaskingEngine;

#[derive(Arbitrary, Debug)]
struct Input {
    data: Vec<u8>,
    /// Chunk lengths (cycled); a zero means "flush here".
    steps: Vec<u16>,
}

fn engine() -> &'static MaskingEngine {
    static ENGINE: OnceLock<MaskingEngine> = OnceLock::new();
    ENGINE.get_or_init(|| MaskingEngine::with_defaults().expect("default profile compiles"))
}

libfuzzer_sys::fuzz_target!(|input: Input| {
    let mut s = engine().text_stream(None, None);
    let mut out = Vec::new();
    let mut pos = 0;
    let mut flushed = false;
    let mut k = 0;
    while pos < input.data.len() {
        let step = input.steps.get(k % input.steps.len().max(1)).copied().unwrap_or(7);
        k += 1;
        if step == 0 {
            s.flush(&mut out);
            flushed = true;
            if k > input.data.len() + input.steps.len() {
                break;
            }
            continue;
        }
        let end = (pos + usize::from(step)).min(input.data.len());
        s.push(&input.data[pos..end], &mut out);
        pos = end;
        assert!(s.held() <= 256 * 1024 + usize::from(u16::MAX), "hold-back grew to {}", s.held());
    }
    s.push(&input.data[pos..], &mut out);
    s.finish(&mut out);
    let _ = s.take_findings();
    if !flushed {
        let (once, _) = engine().mask_bytes(&input.data);
        assert_eq!(&*once, &out[..], "streaming differs from one-shot");
    }
});
