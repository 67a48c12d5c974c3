//! The text stream masker: chunking, hold-back, flush on idle, PEM across flushes.

use gatehouse_core::{Masker, StreamContext, StreamMasker};
use gatehouse_masking::MaskingEngine;

fn stream_all(chunks: &[&[u8]]) -> (Vec<u8>, Vec<gatehouse_core::Finding>) {
    let e = MaskingEngine::with_defaults().unwrap();
    let mut s = e.stream(&StreamContext::default());
    let mut out = Vec::new();
    for c in chunks {
        s.push(c, &mut out);
    }
    s.finish(&mut out);
    (out, s.take_findings())
}

#[test]
fn a_secret_split_across_chunks_is_still_masked() {
    let (out, f) = stream_all(&[
        b"mail ja",
        b"ne@exam",
        b"ple.com and card 4111 11",
        b"11 1111 1111\n",
    ]);
    assert_eq!(out, b"mail [email] and card [card]\n");
    assert_eq!(f.len(), 2);
    assert_eq!(f[0].offset, 5);
}

#[test]
fn complete_lines_are_emitted_at_once_and_only_the_last_line_is_held() {
    let e = MaskingEngine::with_defaults().unwrap();
    let mut s = e.text_stream(None, Some("stdout".into()));
    let mut out = Vec::new();
    s.push(b"line one a@b.co\nline two, still typ", &mut out);
    assert_eq!(out, b"line one [email]\n");
    assert_eq!(s.held(), "line two, still typ".len());
    // The idle timer fires: the tail goes out masked as it stands.
    s.flush(&mut out);
    assert_eq!(out, b"line one [email]\nline two, still typ");
    assert_eq!(s.held(), 0);
    s.push(b"ing\n", &mut out);
    assert_eq!(out, b"line one [email]\nline two, still typing\n");
    let f = s.take_findings();
    assert_eq!(f[0].field.as_deref(), Some("stdout"));
}

#[test]
fn a_prompt_without_newline_goes_out_on_flush() {
    let e = MaskingEngine::with_defaults().unwrap();
    let mut s = e.text_stream(None, None);
    let mut out = Vec::new();
    s.push(b"root@db:~# ", &mut out);
    assert!(out.is_empty());
    s.flush(&mut out);
    assert_eq!(out, b"root@db:~# ");
}

#[test]
fn a_pem_block_cut_by_a_flush_stays_masked_until_its_end() {
    let e = MaskingEngine::with_defaults().unwrap();
    let mut s = e.text_stream(None, None);
    let mut out = Vec::new();
    s.push(
        b"$ cat key\n-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIIGlRHH\n",
        &mut out,
    );
    assert_eq!(out, b"$ cat key\n", "the block is held from BEGIN");
    s.flush(&mut out);
    s.push(b"AoGCCqGSM49AwEHoUQDQgAE\n", &mut out);
    s.flush(&mut out);
    s.push(b"-----END EC PRIVATE KEY-----\n$ ", &mut out);
    s.finish(&mut out);
    assert_eq!(
        String::from_utf8_lossy(&out),
        "$ cat key\n[private-key]\n$ "
    );
    let f = s.take_findings();
    assert!(f.iter().all(|f| f.rule == "private_key"));
}

#[test]
fn memory_stays_bounded_on_an_endless_line() {
    let e = MaskingEngine::with_defaults().unwrap();
    let mut s = e.text_stream(None, None);
    let mut out = Vec::new();
    let chunk = vec![b'a'; 4096];
    for _ in 0..200 {
        s.push(&chunk, &mut out);
        assert!(
            s.held() <= 64 * 1024 + 4096 + 16 * 1024 + 4096,
            "held {}",
            s.held()
        );
    }
    s.finish(&mut out);
    assert_eq!(out.len(), 200 * 4096);
}

#[test]
fn json_context_selects_the_json_masker() {
    let e = MaskingEngine::with_defaults().unwrap();
    let ctx = StreamContext {
        json: true,
        field: Some("body".into()),
        ..StreamContext::default()
    };
    let mut s = e.stream(&ctx);
    let mut out = Vec::new();
    s.push(br#"{"password": "hunter2", "n": 1}"#, &mut out);
    s.finish(&mut out);
    assert_eq!(out, br#"{"password": "[secret]", "n": 1}"#);
}

#[test]
fn debug_output_never_shows_held_input_or_keys() {
    let mut p = gatehouse_masking::ProfileConfig {
        strategy: gatehouse_masking::Strategy::KeyedHash,
        hmac_key: Some("super-secret-hmac-key".into()),
        ..Default::default()
    };
    p.detectors.clear();
    let dbg_cfg = format!("{p:?}");
    assert!(!dbg_cfg.contains("super-secret-hmac-key"), "{dbg_cfg}");
    let mut c = gatehouse_masking::MaskingConfig::default();
    c.profiles.insert("default".into(), p);
    let e = MaskingEngine::new(&c).unwrap();
    assert!(!format!("{:?}", e.profile(None)).contains("super-secret-hmac-key"));
    let mut s = e.text_stream(None, None);
    let mut j = e.json_stream(None, None);
    let mut out = Vec::new();
    s.push(b"held: jane.doe@exam", &mut out);
    j.push(b"{\"k\": \"jane.doe@exam", &mut out);
    assert!(
        out.iter().all(|&b| b != b'j'),
        "nothing of the value was emitted"
    );
    for d in [format!("{s:?}"), format!("{j:?}")] {
        assert!(!d.contains("jane") && !d.contains("106, 97"), "{d}");
    }
}
