//! Serde round trips for everything that goes into the audit log, and property tests for the two
//! canonicalisers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use gatehouse_core::http_path::{self, canonicalize};
use gatehouse_core::shell::{self, parse};
use gatehouse_core::*;
use proptest::prelude::*;
use serde::{Serialize, de::DeserializeOwned};

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: &T) {
    let json = serde_json::to_string(value).unwrap();
    let back: T = serde_json::from_str(&json).unwrap();
    assert_eq!(&back, value, "{json}");
}

fn identity() -> Identity {
    let mut id =
        Identity::new("agent-7", "https://idp.example", AuthMethod::Oidc).with_group("ops");
    id.expires_at = Some(time::macros::datetime!(2030-01-02 03:04:05 UTC));
    id.claims.insert("azp".into(), serde_json::json!("ci-bot"));
    id
}

fn operations() -> Vec<Operation> {
    vec![
        Operation::Sql(SqlOperation {
            text: "select $1".into(),
            parameters: vec![Some("x".into()), None],
            protocol: SqlProtocol::Extended,
            settings: SqlSessionSettings::default(),
        }),
        Operation::Ssh(SshOperation::Exec(ExecCommand::parse("bash -c 'ls -l'"))),
        Operation::Ssh(SshOperation::Shell { pty: true }),
        Operation::Ssh(SshOperation::Subsystem {
            name: "sftp".into(),
        }),
        Operation::Ssh(SshOperation::DirectTcpip {
            host: "db".into(),
            port: 5432,
        }),
        Operation::Ssh(SshOperation::TcpipForward {
            address: "0.0.0.0".into(),
            port: 80,
        }),
        Operation::Ssh(SshOperation::AgentForward),
        Operation::Http(HttpOperation {
            method: "DELETE".into(),
            path: "/v1/users/7".into(),
            query: Some("force=1".into()),
            body_sha256: None,
        }),
        Operation::Kubernetes(KubeOperation {
            verb: "exec".into(),
            version: "v1".into(),
            resource: "pods".into(),
            subresource: Some("exec".into()),
            namespace: Some("default".into()),
            name: Some("web-0".into()),
            command: Some(ExecCommand::parse("sh -c 'echo hi'")),
            ..Default::default()
        }),
    ]
}

#[test]
fn serde_round_trips() {
    let id = identity();
    round_trip(&id);
    let target = Target::new("prod-db", Protocol::Postgres).with_tag("prod");
    round_trip(&target);
    for op in operations() {
        round_trip(&op);
        assert!(!op.summary().is_empty());
    }
    let review = ReviewRequirement {
        approver_groups: vec!["dba".into()],
        approvals_required: 2,
        timeout_ms: 60_000,
        grant_window_ms: Some(600_000),
    };
    let decisions = [
        Decision::allow("r1", "reads are fine").with_masking_profile("pii"),
        Decision::deny("no-drop", "DROP is forbidden"),
        Decision::review("review-delete", "DELETE needs a DBA", review.clone()),
    ];
    for d in &decisions {
        round_trip(d);
    }
    let session = SessionId::generate();
    let bodies = vec![
        EventBody::SessionStart {
            client_addr: "127.0.0.1:5".into(),
            details: serde_json::json!({"application_name": "psql"}),
        },
        EventBody::SessionEnd {
            reason: "client closed".into(),
            recording: Some(RecordingSeal {
                location: "r/1".into(),
                sha256: "ab".into(),
                bytes: 3,
                frames: 1,
            }),
            operations: 4,
        },
        EventBody::LoginFailed {
            client_addr: "127.0.0.1:5".into(),
            reason: AuthErrorKind::Expired,
        },
        EventBody::Operation {
            index: 1,
            operation: operations()[0].clone(),
            decision: decisions[2].clone(),
        },
        EventBody::ApprovalRequested {
            index: 1,
            id: ApprovalId("a1".into()),
            operation_hash: "h".into(),
            operation: Some(operations()[0].clone()),
            rule_id: Some("prod-writes".into()),
            reason: Some("writes need review".into()),
            granted: false,
        },
        EventBody::ApprovalUsed {
            index: 1,
            id: ApprovalId("a1".into()),
        },
        EventBody::ApprovalDecided {
            id: ApprovalId("a1".into()),
            approver: "alice".into(),
            decision: ApprovalDecision::Approve,
            justification: "ticket 42".into(),
        },
        EventBody::ApprovalResolved {
            index: 1,
            id: ApprovalId("a1".into()),
            outcome: ApprovalOutcome::Approved {
                approvers: vec!["alice".into()],
            },
        },
        EventBody::ApprovalResolved {
            index: 2,
            id: ApprovalId("a2".into()),
            outcome: ApprovalOutcome::Denied {
                by: "bob".into(),
                justification: "no".into(),
            },
        },
        EventBody::ApprovalResolved {
            index: 3,
            id: ApprovalId("a3".into()),
            outcome: ApprovalOutcome::TimedOut,
        },
        EventBody::ApprovalAbandoned {
            id: ApprovalId("a4".into()),
        },
        EventBody::OperationResult(OperationResult {
            index: 1,
            status: "SELECT 3".into(),
            rows: Some(3),
            bytes_out: 120,
            duration_us: 950,
            findings: vec![Finding {
                rule: "email".into(),
                field: Some("email".into()),
                offset: 0,
                length: 17,
            }],
        }),
        EventBody::EgressBlocked {
            site: "client".into(),
            hits: 1,
        },
        EventBody::Error {
            side: Side::Upstream,
            message: "connection reset".into(),
        },
        EventBody::Other {
            name: "policy_reloaded".into(),
            details: serde_json::json!({"rules": 3}),
        },
    ];
    for body in bodies {
        let ev = Event::now(
            session.clone(),
            Some(id.clone()),
            Some(target.clone()),
            body,
        );
        // RFC 3339 keeps nanoseconds, so the round trip is exact.
        round_trip(&ev);
    }
    let record = ApprovalRecord {
        id: ApprovalId("a1".into()),
        request: ApprovalRequest {
            requester: id.clone(),
            session: session.clone(),
            target: target.clone(),
            operation: operations()[7].clone(),
            rule_id: "review-delete".into(),
            reason: "DELETE needs review".into(),
            requirement: review,
            index: 0,
            shown: None,
        },
        operation_hash: "00ff".into(),
        state: ApprovalState::Pending,
        votes: vec![ApproverVote {
            approver: "alice".into(),
            decision: ApprovalDecision::Approve,
            justification: "ok".into(),
            at: now(),
        }],
        opened_at: now(),
        closed_at: None,
    };
    round_trip(&record);
    round_trip(&ApprovalTicket {
        id: ApprovalId("a".into()),
        operation_hash: "h".into(),
        already_granted: false,
    });
    for frame in [
        RecordingFrame::Output {
            data: b"hi\n".to_vec(),
        },
        RecordingFrame::ErrorOutput {
            data: vec![0xff, 0],
        },
        RecordingFrame::Input {
            data: b"ls\r".to_vec(),
        },
        RecordingFrame::Resize { cols: 80, rows: 24 },
        RecordingFrame::Entry {
            label: "statement".into(),
            body: serde_json::json!({"sql": "select 1"}),
        },
    ] {
        round_trip(&frame);
    }
    round_trip(&RecordingKind::Terminal { cols: 80, rows: 24 });
    round_trip(&AuthError::new(
        AuthErrorKind::WrongAudience,
        "expected gatehouse",
    ));
    round_trip(&EgressBlocked {
        site: EgressSite::Client,
        hits: 2,
        first_offset: 10,
    });
    round_trip(&FieldDesc {
        name: "email".into(),
        sources: vec!["public.customers.email".into()],
        kind: FieldKind::Text,
    });
}

#[test]
fn credential_debug_never_prints_the_token() {
    let c = Credential::Bearer("eyJhbGciOi.secret.sig".into());
    let shown = format!("{c:?}");
    assert!(!shown.contains("secret"), "{shown}");
    let c = Credential::Password("hunter2".into());
    assert!(!format!("{c:?}").contains("hunter2"));
}

#[test]
fn auth_error_display_has_no_token() {
    let e = AuthError::new(AuthErrorKind::BadSignature, "");
    assert_eq!(e.to_string(), "authentication failed: bad signature");
}

#[test]
fn strictest_verdict_wins() {
    use Verdict::*;
    assert_eq!(Allow.strictest(Review), Review);
    assert_eq!(Deny.strictest(Review), Deny);
    assert_eq!(Allow.strictest(Allow), Allow);
}

/// Strategy for path-ish strings: segments made of tricky pieces.
fn path_strategy() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("".to_string()),
        Just(".".to_string()),
        Just("..".to_string()),
        Just("%2e".to_string()),
        Just("%2E%2e".to_string()),
        Just(".%2e".to_string()),
        Just("%2F".to_string()),
        Just("%5c".to_string()),
        Just("\\".to_string()),
        Just("%41".to_string()),
        Just("%c3%a9".to_string()),
        Just(";x".to_string()),
        "[a-zA-Z0-9._~!$&'()*+,;=:@-]{0,6}",
        "[ -~]{0,4}",
    ];
    prop::collection::vec(
        prop::collection::vec(piece, 0..3).prop_map(|v| v.concat()),
        0..8,
    )
    .prop_map(|segs| format!("/{}", segs.join("/")))
}

proptest! {
    #[test]
    fn canonical_path_is_idempotent(raw in path_strategy()) {
        if let Ok(once) = canonicalize(&raw) {
            let twice = canonicalize(&once.path).unwrap();
            prop_assert_eq!(&twice.path, &once.path);
            // The flag describes the input; an opaque separator that survived is seen again.
            if once.path.contains("%2F") || once.path.contains("%5C") {
                prop_assert!(once.encoded_separator && twice.encoded_separator);
            }
        }
    }

    #[test]
    fn canonical_path_never_escapes_root(raw in path_strategy()) {
        if let Ok(p) = canonicalize(&raw) {
            prop_assert!(p.path.starts_with('/'));
            for seg in p.path.split('/') {
                prop_assert!(seg != "." && seg != "..", "dot segment survived in {}", p.path);
                // No encoded dot segment either: decoding a segment never yields `.`/`..`.
                let lower = seg.to_ascii_lowercase();
                prop_assert!(lower != "%2e" && lower != "%2e%2e" && lower != ".%2e" && lower != "%2e.");
            }
            prop_assert!(!p.path.contains("//"));
        }
    }

    #[test]
    fn canonical_path_never_panics(raw in "\\PC{0,40}") {
        let _ = canonicalize(&raw);
        let _ = http_path::split_target(&raw);
    }

    #[test]
    fn quoted_words_round_trip(words in prop::collection::vec("\\PC{0,12}", 1..6)) {
        let line = shell::join(&words);
        let parsed = parse(&line);
        prop_assert_eq!(&parsed.argv, &words);
        prop_assert!(parsed.is_plain(), "{} -> {:?}", line, parsed);
    }

    #[test]
    fn shell_parse_never_panics(line in "\\PC{0,60}") {
        let parsed = parse(&line);
        let _ = parsed.unwrap_shell();
    }
}

/// What a terminal would draw as nothing, or as a blank that is not a space, is escaped: an
/// agent cannot make an approver's line look like another statement.
#[test]
fn printable_escapes_every_blank_and_invisible_character() {
    for c in [
        '\r',
        '\n',
        '\u{1b}',
        '\u{85}',
        '\u{a0}',
        '\u{ad}',
        '\u{34f}',
        '\u{115f}',
        '\u{1680}',
        '\u{180e}',
        '\u{2000}',
        '\u{200b}',
        '\u{200d}',
        '\u{2028}',
        '\u{2029}',
        '\u{202e}',
        '\u{2066}',
        '\u{206f}',
        '\u{2800}',
        '\u{3000}',
        '\u{3164}',
        '\u{fe0f}',
        '\u{feff}',
        '\u{ffa0}',
        '\u{fffb}',
        '\u{e0001}',
        '\u{e0041}',
        '\u{e0100}',
    ] {
        let shown = printable(&format!("a{c}b"));
        assert!(!shown.contains(c), "{c:?} shown raw: {shown:?}");
        assert!(shown.starts_with('a') && shown.ends_with('b'), "{shown:?}");
    }
    assert_eq!(printable("SELECT 'é', 1 \\ 2"), "SELECT 'é', 1 \\\\ 2");
}

/// The approver's description is the whole operation, with the values bound to it; the
/// summary for notices and logs is cut, and says so.
#[test]
fn describe_shows_the_whole_operation_and_its_parameters() {
    let tail = " OR id > 0";
    let text = format!("DELETE FROM t WHERE note = '{}'{tail}", "x".repeat(300));
    let mut op = SqlOperation::simple(text.clone());
    op.parameters = vec![Some("3\u{2028}".into()), None];
    let op = Operation::Sql(op);
    assert!(!op.summary().contains(tail), "{}", op.summary());
    assert!(op.summary().contains("bytes)"), "{}", op.summary());
    let described = op.describe();
    assert!(described.contains(&text), "{described}");
    assert!(
        described.ends_with("[parameters: $1='3\\u{2028}', $2=NULL]"),
        "{described}"
    );
}
