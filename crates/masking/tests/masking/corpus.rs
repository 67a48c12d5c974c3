//! Precision and recall per detector on the frozen labelled corpus (tests/corpus/).

use std::collections::BTreeMap;

use gatehouse_masking::MaskingEngine;

struct Labelled {
    text: Vec<u8>,
    spans: Vec<(usize, usize, String)>,
}

/// Strips `{{detector:value}}` labels, remembering where each value landed.
fn parse(src: &str) -> Labelled {
    let mut text = Vec::new();
    let mut spans = Vec::new();
    let mut rest = src;
    while let Some(open) = rest.find("{{") {
        text.extend_from_slice(&rest.as_bytes()[..open]);
        let after = &rest[open + 2..];
        let colon = after.find(':').expect("label has a colon");
        let close = after.find("}}").expect("label is closed");
        let label = &after[..colon];
        let value = &after[colon + 1..close];
        let start = text.len();
        text.extend_from_slice(value.as_bytes());
        spans.push((start, text.len(), label.to_string()));
        rest = &after[close + 2..];
    }
    text.extend_from_slice(rest.as_bytes());
    Labelled { text, spans }
}

#[derive(Default, Debug)]
struct Score {
    expected: usize,
    found_expected: usize,
    masked_any_rule: usize,
    predicted: usize,
    correct_predicted: usize,
}

fn overlap(a: (usize, usize), b: (usize, usize)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

fn score_corpus() -> BTreeMap<String, Score> {
    let engine = MaskingEngine::with_defaults().unwrap();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus");
    let mut scores: BTreeMap<String, Score> = BTreeMap::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap() != "README.md")
        .collect();
    files.sort();
    assert!(files.len() >= 6, "corpus files missing");
    for path in files {
        let src = std::fs::read_to_string(&path).unwrap();
        let l = parse(&src);
        let (_, findings) = engine.mask_bytes(&l.text);
        for (s, e, label) in &l.spans {
            let sc = scores.entry(label.clone()).or_default();
            sc.expected += 1;
            if findings.iter().any(|f| {
                overlap(
                    (*s, *e),
                    (f.offset as usize, (f.offset + f.length) as usize),
                )
            }) {
                sc.masked_any_rule += 1;
            }
            if findings.iter().any(|f| {
                f.rule == *label
                    && overlap(
                        (*s, *e),
                        (f.offset as usize, (f.offset + f.length) as usize),
                    )
            }) {
                sc.found_expected += 1;
            } else {
                eprintln!(
                    "MISSED {label} in {}: {:?}",
                    path.display(),
                    String::from_utf8_lossy(&l.text[*s..*e])
                );
            }
        }
        for f in &findings {
            let span = (f.offset as usize, (f.offset + f.length) as usize);
            let sc = scores.entry(f.rule.clone()).or_default();
            sc.predicted += 1;
            if l.spans
                .iter()
                .any(|(s, e, lab)| *lab == f.rule && overlap((*s, *e), span))
            {
                sc.correct_predicted += 1;
            } else {
                eprintln!(
                    "FALSE {} in {}: {:?}",
                    f.rule,
                    path.display(),
                    String::from_utf8_lossy(&l.text[span.0..span.1])
                );
            }
        }
    }
    scores
}

#[test]
fn corpus_precision_and_recall_per_detector() {
    let scores = score_corpus();
    let (mut exp, mut found, mut pred, mut correct, mut any) = (0, 0, 0, 0, 0);
    println!(
        "| detector | labelled | found | recall | masked by any rule | predicted | correct | precision |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, s) in &scores {
        let recall = s.found_expected as f64 / s.expected.max(1) as f64;
        let precision = s.correct_predicted as f64 / s.predicted.max(1) as f64;
        println!(
            "| {name} | {} | {} | {:.2} | {} | {} | {} | {:.2} |",
            s.expected,
            s.found_expected,
            recall,
            s.masked_any_rule,
            s.predicted,
            s.correct_predicted,
            precision
        );
        any += s.masked_any_rule;
        exp += s.expected;
        found += s.found_expected;
        pred += s.predicted;
        correct += s.correct_predicted;
    }
    let recall = found as f64 / exp as f64;
    let precision = correct as f64 / pred as f64;
    println!(
        "| **all** | {exp} | {found} | {recall:.2} | {any} | {pred} | {correct} | {precision:.2} |"
    );
    // Regression floors, set below the figures reported in docs/BENCHMARKS.md.
    assert!(recall >= 0.85, "overall recall fell to {recall:.2}");
    assert!(
        precision >= 0.90,
        "overall precision fell to {precision:.2}"
    );
}
