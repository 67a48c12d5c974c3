#![no_main]
//! Policy loader on arbitrary text: must never panic; errors always carry a line within the
//! text.

use gatehouse_policy::{CompiledPolicy, PolicyError};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = CompiledPolicy::from_toml(text, "fuzz.toml") {
        let lines = text.lines().count().max(1) + 1;
        match e {
            PolicyError::Syntax { line, .. } | PolicyError::Invalid { line, .. } => {
                assert!(line >= 1 && line <= lines, "line {line} of {lines}");
            }
            _ => {}
        }
    }
});
