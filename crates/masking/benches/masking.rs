//! Masking throughput on one core: clean prose, PII-dense text (a finding per ~200 bytes), JSON
//! and log lines, with the default detector set. In the same run: a naive baseline applying the
//! same detectors one regex at a time (with the same validators), and memchr over the input as
//! the ceiling. Not run in CI; `cargo bench -p gatehouse-masking`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gatehouse_core::StreamMasker;
use gatehouse_masking::MaskingEngine;
use regex::bytes::Regex;

const SIZE: usize = 1 << 20;

/// Deterministic pseudo-random numbers (no dependency, same input every run).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as usize
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.next() % xs.len()]
    }
}

const WORDS: &[&str] = &[
    "the",
    "gateway",
    "records",
    "every",
    "session",
    "and",
    "masks",
    "what",
    "an",
    "agent",
    "reads",
    "before",
    "it",
    "reaches",
    "logs",
    "policy",
    "decides",
    "whether",
    "query",
    "may",
    "run",
    "on",
    "target",
    "database",
    "approval",
    "is",
    "needed",
    "for",
    "risky",
    "operations",
    "such",
    "as",
    "dropping",
    "tables",
    "in",
    "production",
    "our",
    "team",
    "reviewed",
    "release",
    "notes",
    "of",
    "version",
    "with",
    "customers",
    "who",
    "asked",
    "about",
    "invoices",
    "from",
    "last",
    "quarter",
    "2026",
    "42",
    "3.5",
    "v1.2.3",
    "(see",
    "below),",
    "however;",
    "it's",
    "fine.",
    "Meanwhile,",
];

const PII: &[&str] = &[
    "jane.doe@example.com",
    "4111 1111 1111 1111",
    "+1 415 555 2671",
    "536-22-1234",
    "DE89 3704 0044 0532 0130 00",
    "(212) 555-0143",
    "ops+alerts@mail.example.org",
    "5500-0055-5555-5559",
    "AKIAIOSFODNN7EXAMPLE",
    "password=hunter2hunter2",
    "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
    "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
    "postgres://app:s3cret@db.internal/app",
    "020 7946 0958",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
];

fn prose(rng: &mut Lcg, pii_every: Option<usize>) -> Vec<u8> {
    let mut out = Vec::with_capacity(SIZE + 256);
    let mut since = 0;
    while out.len() < SIZE {
        let w = rng.pick(WORDS);
        out.extend_from_slice(w.as_bytes());
        since += w.len() + 1;
        if let Some(every) = pii_every
            && since >= every
        {
            out.push(b' ');
            out.extend_from_slice(rng.pick(PII).as_bytes());
            since = 0;
        }
        out.push(if rng.next().is_multiple_of(14) {
            b'\n'
        } else {
            b' '
        });
    }
    out
}

fn json(rng: &mut Lcg) -> Vec<u8> {
    let mut out = b"[".to_vec();
    let mut i = 0;
    while out.len() < SIZE {
        if i > 0 {
            out.push(b',');
        }
        let extra = if i % 5 == 0 {
            rng.pick(PII)
        } else {
            "nothing here"
        };
        out.extend_from_slice(
            format!(
                r#"{{"id":{i},"name":"user {i}","status":"active","score":{},"tags":["a","b"],"created":"2026-11-23T16:29:{:02}Z","note":"{}"}}"#,
                rng.next() % 1000,
                i % 60,
                extra.replace('"', "'")
            )
            .as_bytes(),
        );
        i += 1;
    }
    out.push(b']');
    out
}

fn logs(rng: &mut Lcg) -> Vec<u8> {
    let mut out = Vec::with_capacity(SIZE + 256);
    let mut i = 0u64;
    while out.len() < SIZE {
        let line = match i % 4 {
            0 => format!(
                "2026-11-23T16:29:{:02}.{:03}Z INFO  api request_id={:08x} method=GET path=/v1/users/{} status=200 duration_ms={}\n",
                i % 60,
                i % 1000,
                rng.next(),
                rng.next() % 10000,
                rng.next() % 500
            ),
            1 => format!(
                "2026-11-23T16:29:{:02}.{:03}Z DEBUG db pool size=10 idle={} wait_ms={} host=10.0.{}.{}:5432\n",
                i % 60,
                i % 1000,
                rng.next() % 10,
                rng.next() % 100,
                rng.next() % 255,
                rng.next() % 255
            ),
            2 => format!(
                "2026-11-23T16:29:{:02}.{:03}Z WARN  auth login failed user=u{}@example.com attempts={}\n",
                i % 60,
                i % 1000,
                rng.next() % 1000,
                rng.next() % 5
            ),
            _ => format!(
                "2026-11-23T16:29:{:02}.{:03}Z INFO  worker job={} done in {}.{:03}s sha=9fceb02d0ae598e95dc970b74767f19372d61af8\n",
                i % 60,
                i % 1000,
                rng.next(),
                rng.next() % 10,
                rng.next() % 1000
            ),
        };
        out.extend_from_slice(line.as_bytes());
        i += 1;
    }
    out
}

/// The same detectors, one regex each, each a full pass, with the same validators.
type Validator = fn(&[u8]) -> bool;

struct Naive {
    rules: Vec<(Regex, Validator)>,
}

fn always(_: &[u8]) -> bool {
    true
}

fn luhn_ok(m: &[u8]) -> bool {
    let d: Vec<u32> = m
        .iter()
        .filter(|b| b.is_ascii_digit())
        .map(|b| u32::from(b - b'0'))
        .collect();
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            if i % 2 == 1 {
                if x * 2 > 9 { x * 2 - 9 } else { x * 2 }
            } else {
                x
            }
        })
        .sum();
    (13..=19).contains(&d.len()) && sum.is_multiple_of(10)
}

fn iban_ok(m: &[u8]) -> bool {
    let c: Vec<u8> = m.iter().copied().filter(|b| *b != b' ').collect();
    let (h, t) = c.split_at(4);
    let mut r = 0u32;
    for &b in t.iter().chain(h) {
        r = if b.is_ascii_digit() {
            (r * 10 + u32::from(b - b'0')) % 97
        } else {
            (r * 100 + u32::from(b - b'A') + 10) % 97
        };
    }
    r == 1
}

fn ssn_ok(m: &[u8]) -> bool {
    !(m.starts_with(b"000")
        || m.starts_with(b"666")
        || m[0] == b'9'
        || &m[4..6] == b"00"
        || &m[7..] == b"0000")
}

impl Naive {
    fn new() -> Naive {
        let r = |p: &str| Regex::new(p).unwrap();
        Naive {
            rules: vec![
                (
                    r(
                        r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----(?s:.*?)-----END [A-Z0-9 ]*PRIVATE KEY-----",
                    ),
                    always,
                ),
                (
                    r(r"eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]*"),
                    always,
                ),
                (
                    r(
                        r"(?-u:\b)(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|AROA|APKA)[A-Z0-9]{16}(?-u:\b)",
                    ),
                    always,
                ),
                (
                    r(
                        r#"(?i)aws_?secret_?access_?key["']?[ \t]*[:=][ \t]*["']?[A-Za-z0-9/+=]{40}"#,
                    ),
                    always,
                ),
                (
                    r(r"gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{22,}"),
                    always,
                ),
                (r(r"gl(?:pat|dt|rt|ptt)-[A-Za-z0-9_-]{20,}"), always),
                (
                    r(
                        r"xox[bpares]-[A-Za-z0-9-]{10,}|xapp-[A-Za-z0-9-]{10,}|hooks\.slack\.com/services/[A-Za-z0-9/]{20,}",
                    ),
                    always,
                ),
                (r(r"[sr]k_(?:live|test)_[A-Za-z0-9]{16,}"), always),
                (r(r"AIza[A-Za-z0-9_-]{35}"), always),
                (r(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s/@:]*:[^\s/@]+@"), always),
                (
                    r(r"[A-Za-z0-9._%+'-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
                    always,
                ),
                (
                    r(
                        r"(?-u:\b)[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?(?-u:\b)",
                    ),
                    iban_ok,
                ),
                (
                    r(r"(?-u:\b)[2-6][0-9]{3}(?:[ -]?[0-9]{1,6}){2,5}(?-u:\b)"),
                    luhn_ok,
                ),
                (r(r"(?-u:\b)[0-9]{3}-[0-9]{2}-[0-9]{4}(?-u:\b)"), ssn_ok),
                (
                    r(
                        r"\+[1-9][0-9 .-]{6,18}[0-9]|\([2-9][0-9]{2}\) ?[2-9][0-9]{2}[-. ][0-9]{4}|(?-u:\b)[2-9][0-9]{2}[-. ][2-9][0-9]{2}[-. ][0-9]{4}(?-u:\b)|(?-u:\b)0[1-9][0-9]{1,4}(?:[ .-][0-9]{2,5}){1,4}(?-u:\b)",
                    ),
                    always,
                ),
                (
                    r(
                        r#"(?i)(?:password|passwd|pwd|passphrase|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|authorization|credentials?)["']?[ \t]*[:=][ \t]*["']?([^\s"',;&<>|`]+)"#,
                    ),
                    always,
                ),
            ],
        }
    }

    fn mask(&self, input: &[u8], out: &mut Vec<u8>) -> usize {
        let mut spans: Vec<(usize, usize)> = Vec::new();
        for (re, ok) in &self.rules {
            for m in re.find_iter(input) {
                if ok(m.as_bytes()) {
                    spans.push((m.start(), m.end()));
                }
            }
        }
        spans.sort_unstable();
        out.clear();
        let mut copied = 0;
        for (s, e) in spans {
            if s < copied {
                continue;
            }
            out.extend_from_slice(&input[copied..s]);
            out.extend_from_slice(b"[masked]");
            copied = e;
        }
        out.extend_from_slice(&input[copied..]);
        copied
    }
}

fn bench(c: &mut Criterion) {
    let engine = MaskingEngine::with_defaults().unwrap();
    let profile = engine.profile(None).clone();
    let naive = Naive::new();
    let mut rng = Lcg(0x5eed);
    let inputs = [
        ("clean_prose", prose(&mut rng, None)),
        ("pii_dense", prose(&mut rng, Some(200))),
        ("json", json(&mut rng)),
        ("logs", logs(&mut rng)),
    ];
    for (name, input) in &inputs {
        let (_, findings) = profile.mask_bytes(input);
        eprintln!(
            "{name}: {} bytes, {} findings (one per {} bytes)",
            input.len(),
            findings.len(),
            input.len() / findings.len().max(1)
        );
        let mut g = c.benchmark_group(*name);
        g.throughput(Throughput::Bytes(input.len() as u64));
        g.sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3));
        let mut out = Vec::with_capacity(input.len() * 2);
        let mut findings = Vec::new();
        g.bench_function("gatehouse_one_shot", |b| {
            b.iter(|| {
                findings.clear();
                black_box(profile.mask_into(black_box(input), None, &mut out, &mut findings))
            })
        });
        g.bench_function("gatehouse_stream_16k", |b| {
            b.iter(|| {
                let mut s = engine.text_stream(None, None);
                out.clear();
                for chunk in input.chunks(16 * 1024) {
                    s.push(chunk, &mut out);
                }
                s.finish(&mut out);
                black_box(out.len())
            })
        });
        if *name == "json" {
            g.bench_function("gatehouse_json_masker", |b| {
                b.iter(|| {
                    let mut s = engine.json_stream(None, None);
                    out.clear();
                    s.push(black_box(input), &mut out);
                    s.finish(&mut out);
                    black_box(out.len())
                })
            });
        }
        g.bench_function("naive_regex_per_detector", |b| {
            b.iter(|| black_box(naive.mask(black_box(input), &mut out)))
        });
        g.bench_function("memchr_ceiling", |b| {
            b.iter(|| black_box(memchr::memchr(0x01, black_box(input))))
        });
        g.finish();
    }
}

/// The egress guard's check of clean data (the path every response, audit payload and
/// recording takes), against the overlapping scan it ran before the is-match fast path.
fn egress(c: &mut Criterion) {
    use gatehouse_core::{EgressGuard as _, EgressSite};
    let secrets: [&[u8]; 3] = [
        b"upstream-password-0f3a9c1e",
        b"sk_live_51Hc8Yz2eZvKYlo2C0aBcDeFg",
        b"ghp_16C7e42F292c6912E7710c838347Ae178B4a",
    ];
    let mut builder = gatehouse_masking::egress::EgressGuardBuilder::new();
    for s in secrets {
        builder.add_secret(s).unwrap();
    }
    let guard = builder.build().unwrap();
    // The baseline: the guard's own automaton (same patterns, same builder), iterated
    // overlapping over the whole input as the guard did before its is-match fast path.
    let baseline = aho_corasick::AhoCorasick::new(builder.patterns()).unwrap();
    let mut rng = Lcg(7);
    let mut g = c.benchmark_group("egress_check");
    for (name, data, len) in [
        ("json_1k", json(&mut rng), 1024),
        ("prose_64k", prose(&mut rng, None), 64 * 1024),
    ] {
        let data = data.get(..len).unwrap_or(&data).to_vec();
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_function(format!("guard/{name}"), |b| {
            b.iter(|| guard.check(EgressSite::Client, black_box(&data)).is_ok())
        });
        g.bench_function(format!("overlapping_baseline/{name}"), |b| {
            b.iter(|| baseline.find_overlapping_iter(black_box(&data)).count())
        });
    }
    g.finish();
}

/// One small API response per masker, as the HTTP proxy masks it: the 1 KiB listing
/// `benches/http/run.sh` serves (12 users with e-mail addresses), a fresh JSON masker each time,
/// findings taken.
fn small_response(c: &mut Criterion) {
    let engine = MaskingEngine::with_defaults().unwrap();
    let users: Vec<String> = (0..12)
        .map(|i| {
            format!(
                r#"{{"id": {i}, "name": "User {i}", "email": "user{i}@example.com", "plan": "pro", "active": true}}"#
            )
        })
        .collect();
    let body = format!(r#"{{"users": [{}]}}"#, users.join(", ")).into_bytes();
    let mut g = c.benchmark_group("json_response_1k");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let mut out = Vec::with_capacity(2 * body.len());
    g.bench_function("gatehouse_json_masker", |b| {
        b.iter(|| {
            let mut s = engine.json_stream(None, None);
            out.clear();
            s.push(black_box(&body), &mut out);
            s.finish(&mut out);
            black_box(s.take_findings().len())
        })
    });
    g.finish();
}

criterion_group!(benches, bench, egress, small_response);
criterion_main!(benches);
