//! Recorder benchmarks (filled in below).
fn main() {}
