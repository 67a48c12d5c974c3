#![no_main]
// Placeholder until the owning crate lands its fuzz target (see its issue).
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = data;
});
