#![no_main]
//! `verify` and the recording parser never panic, whatever the bytes. Half the inputs are raw
//! segments; the other half are edits (xor at offsets) applied to a small valid log, which
//! reaches the deeper checks (links, checkpoints, signatures). Differentially: verify's fast
//! JSON check accepts exactly what serde_json accepts, on the raw bytes and on every line.

use gatehouse_recorder::format::{RecordKind, encode_line};
use gatehouse_recorder::verify::verify_log;
use gatehouse_recorder::{CheckpointSigner, LogData, SegmentData, TrustedKeys, VerifyOptions};

fn valid_log(signer: &CheckpointSigner) -> Vec<u8> {
    let mut out = Vec::new();
    let mut prev = [0u8; 32];
    for seq in 1..=8u64 {
        let payload = format!(
            "\"time\":\"2026-01-01T00:00:00Z\",\"session\":\"s\",\"body\":{{\"type\":\"other\",\"name\":\"n{seq}\",\"details\":null}}"
        );
        prev = encode_line(
            &mut out,
            "fz",
            seq,
            RecordKind::Event,
            &prev,
            payload.as_bytes(),
        );
    }
    let cp = signer.checkpoint("fz", 8, &prev, "2026-01-01T00:00:00Z".into());
    let payload = format!(
        "\"time\":\"2026-01-01T00:00:00Z\",\"body\":{}",
        serde_json::to_string(&cp).unwrap_or_default()
    );
    encode_line(
        &mut out,
        "fz",
        9,
        RecordKind::Checkpoint,
        &prev,
        payload.as_bytes(),
    );
    out
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let signer = CheckpointSigner::from_seed(&[7u8; 32]);
    let options = VerifyOptions {
        keys: TrustedKeys::new().with(signer.verifying_key()),
        ..Default::default()
    };
    let (mode, rest) = data.split_first().unwrap_or((&0, &[]));
    let bytes = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        let mut log = valid_log(&signer);
        for pair in rest.chunks(3) {
            if let [a, b, x] = pair {
                let at = (usize::from(*a) << 8 | usize::from(*b)) % log.len().max(1);
                if let Some(byte) = log.get_mut(at) {
                    *byte ^= x;
                }
            }
        }
        log
    };
    use gatehouse_recorder::json_check::{is_valid_json, reference_is_valid_json};
    assert_eq!(is_valid_json(&bytes), reference_is_valid_json(&bytes));
    for line in bytes.split(|b| *b == b'\n') {
        let reference = reference_is_valid_json(line);
        assert_eq!(is_valid_json(line), reference);
        // What verify runs on a parsed record: the payload only.
        if let Ok(p) = gatehouse_recorder::format::parse_line(line) {
            assert_eq!(
                gatehouse_recorder::json_check::record_is_json(line, &p),
                reference
            );
        }
    }
    let split = bytes.len() / 2;
    let log = LogData {
        log: "fz".into(),
        segments: vec![
            SegmentData {
                name: "seg-00000000000000000001.jsonl".into(),
                bytes: bytes[..split].to_vec(),
            },
            SegmentData {
                name: "seg-00000000000000000002.jsonl".into(),
                bytes: bytes[split..].to_vec(),
            },
        ],
    };
    let _ = verify_log(&log, &options);
    let _ = gatehouse_recorder::format::parse_line(&bytes);
    let _ = gatehouse_recorder::recording::parse_recording(&bytes);
});
