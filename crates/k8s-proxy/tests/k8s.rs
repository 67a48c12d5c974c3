#![allow(clippy::unwrap_used, clippy::expect_used)]
//! gatehouse-k8s against the API-server stand-in, driven by the real kubectl and kube-rs.

mod corpus;
mod support;

use std::time::Duration;

use gatehouse_core::{Approvals as _, EventBody, RecordingFrame, Verdict};
use support::apiserver::{LOG_LINE_1, LOG_LINE_2, SECRET_PASSWORD};
use support::*;
use tokio::io::AsyncReadExt as _;

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The stand-in is faithful enough for the real kubectl before the gateway is in the way.
#[tokio::test]
async fn kubectl_works_directly_against_the_stand_in() {
    let api = ApiServer::start(UPSTREAM_TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("direct.kubeconfig");
    write_kubeconfig(&kc, &api.url, UPSTREAM_TOKEN, Some(&api.ca_file));
    let run = |args: &'static [&'static str]| {
        let kc = kc.clone();
        let home = dir.path().to_path_buf();
        async move { kubectl(&kc, &home, args).await }
    };
    let v = run(&["version", "-o", "json"]).await;
    assert!(v.stdout.contains("v1.32.0-standin"), "{v:#?}");
    let pods = run(&["get", "pods"]).await;
    pods.ok();
    assert!(
        pods.stdout.contains("web-0") && pods.stdout.contains("Running"),
        "{pods:#?}"
    );
    let secret = run(&["get", "secret", "db-creds", "-o", "yaml"]).await;
    secret.ok();
    assert!(
        secret.stdout.contains(&b64(SECRET_PASSWORD)),
        "the stand-in itself does not mask"
    );
    let ns = run(&["get", "namespaces"]).await;
    assert!(ns.ok().stdout.contains("kube-system"));
    let missing = run(&["get", "pod", "nope"]).await;
    assert_ne!(missing.code, Some(0));
    assert!(
        missing.stderr.contains("NotFound") && missing.stderr.contains("\"nope\" not found"),
        "{missing:#?}"
    );
    let exec = run(&["exec", "web-0", "--", "sh", "-c", "echo direct-$((40+2))"]).await;
    exec.ok();
    assert!(exec.stdout.contains("direct-42"), "{exec:#?}");
    let failing = run(&["exec", "web-0", "--", "sh", "-c", "echo oops >&2; exit 3"]).await;
    assert_eq!(failing.code, Some(3), "{failing:#?}");
    assert!(failing.stderr.contains("oops"));
    let logs = run(&["logs", "web-0"]).await;
    assert!(logs.ok().stdout.contains(LOG_LINE_1));
    // kubectl's typed create sends protobuf, which the stand-in decodes; manifests go as JSON.
    let typed = run(&["create", "configmap", "typed", "--from-literal=a=b"]).await;
    typed.ok();
    assert_eq!(
        api.state.get("configmaps", "default", "typed").unwrap()["data"]["a"],
        "b"
    );
    assert!(api.state.bodies.lock().unwrap().iter().any(|(_, ct, b)| {
        ct.starts_with("application/vnd.kubernetes.protobuf") && b.starts_with(b"k8s\0")
    }));
    let manifest = dir.path().join("cm.json");
    std::fs::write(
        &manifest,
        r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "direct"}, "data": {"a": "b"}}"#,
    )
    .unwrap();
    let manifest = Box::leak(manifest.to_string_lossy().into_owned().into_boxed_str());
    let cm = kubectl(
        &kc,
        dir.path(),
        &["create", "--validate=false", "-f", manifest],
    )
    .await;
    cm.ok();
    let del = run(&["delete", "configmap", "direct"]).await;
    del.ok();
    assert_eq!(
        api.state
            .spdy_requests
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[tokio::test]
async fn get_pods_through_the_gateway() {
    let rig = Rig::start().await;
    let out = rig.kubectl(&["get", "pods"]).await;
    out.ok();
    assert!(
        out.stdout.contains("web-0") && out.stdout.contains("web-1"),
        "{out:#?}"
    );
    let ops = rig.operations();
    let list = ops
        .iter()
        .find(|(op, _)| op.verb == "list" && op.resource == "pods")
        .expect("pod list recorded");
    assert_eq!(list.0.namespace.as_deref(), Some("default"));
    assert_eq!(list.1.rule_id, "agents-read");
    // Discovery went through as a built-in allowance or a rule, and was recorded.
    assert!(
        ops.iter()
            .all(|(op, d)| !op.resource.is_empty() || d.verdict == Verdict::Allow)
    );
    // The API server saw the gateway's credential, never the agent's.
    for seen in rig.api.state.seen() {
        let auth = seen.headers.get("authorization").unwrap().to_str().unwrap();
        assert_eq!(auth, format!("Bearer {UPSTREAM_TOKEN}"));
        assert_eq!(seen.headers.get("accept-encoding").unwrap(), "identity");
    }
}

#[tokio::test]
async fn secrets_are_masked_in_get_yaml_and_tables() {
    let rig = Rig::start().await;
    let out = rig
        .kubectl(&["get", "secret", "db-creds", "-o", "yaml"])
        .await;
    out.ok();
    assert!(
        !out.stdout.contains(&b64(SECRET_PASSWORD)),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains(SECRET_PASSWORD));
    assert!(
        out.stdout.contains("password: W21hc2tlZF0="),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("name: db-creds"));
    assert!(!out.stdout.contains("hunter2"));
    let table = rig.kubectl(&["get", "secret", "db-creds"]).await;
    assert!(table.ok().stdout.contains("Opaque"));
    let json = rig
        .kubectl(&["get", "secret", "db-creds", "-o", "json"])
        .await;
    assert!(!json.ok().stdout.contains(&b64(SECRET_PASSWORD)));
    // Profile masking applies to other objects: the config map's e-mail address.
    let cm = rig
        .kubectl(&["get", "configmap", "settings", "-o", "yaml"])
        .await;
    cm.ok();
    assert!(!cm.stdout.contains("ops-lead@example.com"), "{}", cm.stdout);
    assert!(cm.stdout.contains("mode: fast"));
    // The recording holds masked bodies only.
    assert!(!rig.layers.recorder.dump().contains(&b64(SECRET_PASSWORD)));
    let findings: usize = rig.results().iter().map(|r| r.findings.len()).sum();
    assert!(findings >= 2);
}

#[tokio::test]
async fn delete_pod_is_denied_with_a_readable_message() {
    let rig = Rig::start().await;
    let out = rig.kubectl(&["delete", "pod", "web-0"]).await;
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr.contains("Error from server (Forbidden)")
            && out
                .stderr
                .contains("denied by gatehouse rule no-pod-delete: agents never delete pods"),
        "{out:#?}"
    );
    assert!(rig.api.state.get("pods", "default", "web-0").is_some());
    assert!(!rig.api.state.seen().iter().any(|s| s.method == "DELETE"));
    // Config maps may be created and deleted.
    let manifest = rig.dir.path().join("cm.json");
    std::fs::write(
        &manifest,
        r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "agent-made"}, "data": {"k": "v"}}"#,
    )
    .unwrap();
    rig.kubectl(&[
        "create",
        "--validate=false",
        "-f",
        manifest.to_str().unwrap(),
    ])
    .await
    .ok();
    // A typed create sends protobuf: a config map carries no pod spec, so it goes through.
    rig.kubectl(&["create", "configmap", "typed", "--from-literal=k=v"])
        .await
        .ok();
    assert!(
        rig.api
            .state
            .get("configmaps", "default", "agent-made")
            .is_some()
    );
    rig.kubectl(&["delete", "configmap", "agent-made"])
        .await
        .ok();
}

#[tokio::test]
async fn exec_through_the_gateway() {
    let rig = Rig::start().await;
    let out = rig
        .kubectl(&["exec", "web-0", "--", "sh", "-c", "echo hello from the pod"])
        .await;
    out.ok();
    assert_eq!(out.stdout.trim(), "hello from the pod", "{out:#?}");
    let (op, decision) = rig
        .operations()
        .into_iter()
        .find(|(op, _)| op.verb == "exec")
        .unwrap();
    assert_eq!(decision.rule_id, "exec-web-0");
    assert_eq!(
        op.command.unwrap().command_line,
        "sh -c 'echo hello from the pod'"
    );
    let result = rig
        .results()
        .into_iter()
        .find(|r| r.status.starts_with("101"))
        .unwrap();
    assert_eq!(result.status, "101 exit 0");
    // The exec stream has its own recording, linked to the API session.
    let events = rig.layers.recorder.events();
    let exec_session = events
        .iter()
        .find_map(|e| match &e.body {
            EventBody::SessionStart { details, .. } if details["stream"] == "exec" => {
                Some(e.session.clone())
            }
            _ => None,
        })
        .unwrap();
    let frames = rig.layers.recorder.recording(&exec_session);
    assert!(frames.iter().any(|f| matches!(f, RecordingFrame::Output { data } if String::from_utf8_lossy(data).contains("hello from the pod"))));
    assert_eq!(
        rig.api
            .state
            .spdy_requests
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[tokio::test]
async fn exec_output_is_masked() {
    let rig = Rig::start().await;
    let out = rig
        .kubectl(&[
            "exec",
            "web-0",
            "--",
            "echo",
            "mail",
            "jane.doe@example.com",
            "now",
        ])
        .await;
    out.ok();
    assert!(!out.stdout.contains("jane.doe@example.com"), "{out:#?}");
    assert!(out.stdout.contains("mail") && out.stdout.contains("now"));
}

#[tokio::test]
async fn exec_interactive_with_a_tty() {
    let rig = Rig::start().await;
    // kubectl only asks for a tty when its stdin is a terminal: `script` gives it one.
    let line = format!(
        "stty rows 40 cols 100; {KUBECTL} --request-timeout=30s exec -it web-0 -- tty; echo kubectl-exit=$?",
    );
    let mut cmd = tokio::process::Command::new("script");
    cmd.args(["-q", "-e", "-c", &line, "/dev/null"])
        .env("KUBECONFIG", &rig.kubeconfig)
        .env("HOME", rig.dir.path())
        .env("KUBECACHEDIR", rig.dir.path().join("cache"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    let child = cmd.spawn().unwrap();
    let out = gatehouse_testkit::within(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("/dev/pts/"),
        "the command ran on a pty: {stdout:?} {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("kubectl-exit=0"), "{stdout:?}");
    let (op, _) = rig
        .operations()
        .into_iter()
        .find(|(op, _)| op.verb == "exec")
        .unwrap();
    assert_eq!(op.command.unwrap().command_line, "tty");
    // A terminal recording with the caller's window size.
    let events = rig.layers.recorder.events();
    let exec_session = events
        .iter()
        .find_map(|e| match &e.body {
            EventBody::SessionStart { details, .. } if details["tty"] == true => {
                Some(e.session.clone())
            }
            _ => None,
        })
        .unwrap();
    let frames = rig.layers.recorder.recording(&exec_session);
    assert!(
        frames
            .iter()
            .any(|f| matches!(f, RecordingFrame::Resize { .. })),
        "{frames:?} stand-in resizes {:?} seen {:?}",
        rig.api.state.resizes.lock().unwrap(),
        rig.api
            .state
            .seen()
            .iter()
            .map(|s| format!("{} {}?{}", s.method, s.path, s.query))
            .collect::<Vec<_>>()
    );
    assert!(!rig.api.state.resizes.lock().unwrap().is_empty());
}

#[tokio::test]
async fn reviewed_exec_is_approved_then_runs() {
    let rig = Rig::start().await;
    let kubeconfig = rig.kubeconfig.clone();
    let home = rig.dir.path().to_path_buf();
    let run = tokio::spawn(async move {
        kubectl(
            &kubeconfig,
            &home,
            &["exec", "web-1", "--", "echo", "approved-run"],
        )
        .await
    });
    let id = rig.approve_next().await;
    let out = gatehouse_testkit::within(Duration::from_secs(60), run)
        .await
        .unwrap();
    out.ok();
    assert!(out.stdout.contains("approved-run"), "{out:#?}");
    assert!(
        out.stderr.contains(&format!("waiting for approval {id}")),
        "the notice arrived on stderr: {out:#?}"
    );
    let state = &rig.api.state;
    assert_eq!(
        state
            .exec_requests
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert_eq!(
        state
            .spdy_requests
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    let resolved = rig.layers.recorder.events().into_iter().any(|e| {
        matches!(
            e.body,
            EventBody::ApprovalResolved {
                outcome: gatehouse_core::ApprovalOutcome::Approved { .. },
                ..
            }
        )
    });
    assert!(resolved);
}

#[tokio::test]
async fn reviewed_exec_denied_by_an_approver() {
    let rig = Rig::start().await;
    let kubeconfig = rig.kubeconfig.clone();
    let home = rig.dir.path().to_path_buf();
    let run = tokio::spawn(async move {
        kubectl(
            &kubeconfig,
            &home,
            &["exec", "web-1", "--", "echo", "never"],
        )
        .await
    });
    let id =
        gatehouse_testkit::within(Duration::from_secs(30), rig.layers.approvals.next_pending())
            .await;
    rig.layers
        .approvals
        .decide(
            &id,
            &approver(),
            gatehouse_core::ApprovalDecision::Deny,
            "not now",
        )
        .await
        .unwrap();
    let out = gatehouse_testkit::within(Duration::from_secs(60), run)
        .await
        .unwrap();
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("was denied by alice"), "{out:#?}");
    assert!(!out.stdout.contains("never"));
    assert_eq!(
        rig.api
            .state
            .exec_requests
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[tokio::test]
async fn denied_exec_does_not_fall_back_to_spdy() {
    let rig = Rig::start().await;
    let out = rig
        .kubectl(&["exec", "web-0", "--", "rm", "-rf", "/data"])
        .await;
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr
            .contains("denied by gatehouse rule no-rm: no file deletion in pods"),
        "{out:#?}"
    );
    // Exactly one exec request reached the gateway (no SPDY retry), none the API server.
    let execs: Vec<_> = rig
        .operations()
        .into_iter()
        .filter(|(op, _)| op.verb == "exec")
        .collect();
    assert_eq!(execs.len(), 1, "{execs:?}");
    assert_eq!(execs[0].1.verdict, Verdict::Deny);
    let state = &rig.api.state;
    assert_eq!(
        state
            .exec_requests
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    assert_eq!(
        state
            .spdy_requests
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[tokio::test]
async fn spdy_upgrades_are_refused_not_relayed() {
    let rig = Rig::start().await;
    let (status, _, body) = raw(
        &rig.base(),
        "POST",
        "/k8s/dev/api/v1/namespaces/default/pods/web-0/exec?command=echo&command=hi&stdout=true",
        &[
            ("authorization", &bearer()),
            ("connection", "Upgrade"),
            ("upgrade", "SPDY/3.1"),
            ("x-stream-protocol-version", "v4.channel.k8s.io"),
        ],
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["kind"], "Status");
    assert!(v["message"].as_str().unwrap().contains("SPDY"));
    assert_eq!(
        rig.api
            .state
            .exec_requests
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    assert!(rig.api.state.seen().is_empty());
}

#[tokio::test]
async fn logs_follow_streams_without_buffering() {
    let rig = Rig::start().await;
    let mut child = kubectl_command(&rig.kubeconfig, rig.dir.path(), &["logs", "-f", "web-0"])
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    gatehouse_testkit::within(Duration::from_secs(30), async {
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(&seen).contains(LOG_LINE_1) {
            let n = stdout.read(&mut buf).await.unwrap();
            assert!(n > 0, "kubectl ended early");
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    // The first line arrived while the API server still holds the second one.
    assert!(!String::from_utf8_lossy(&seen).contains("request from"));
    rig.api.state.release_logs();
    gatehouse_testkit::within(Duration::from_secs(30), async {
        stdout.read_to_end(&mut seen).await.unwrap();
    })
    .await;
    let all = String::from_utf8_lossy(&seen).into_owned();
    assert!(all.contains("request from"), "{all}");
    assert!(
        !all.contains("jane.doe@example.com"),
        "log output is masked: {all}"
    );
    assert_ne!(LOG_LINE_2, all.lines().nth(1).unwrap_or(""));
    let status = gatehouse_testkit::within(Duration::from_secs(30), child.wait())
        .await
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn watch_streams_events_and_masks_secrets() {
    let rig = Rig::start().await;
    let mut child = kubectl_command(
        &rig.kubeconfig,
        rig.dir.path(),
        &["get", "configmaps", "--watch", "-o", "json"],
    )
    .spawn()
    .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    // Wait until kubectl has listed and opened its watch.
    gatehouse_testkit::within(Duration::from_secs(30), async {
        while !rig
            .api
            .state
            .seen()
            .iter()
            .any(|s| s.query.contains("watch=true"))
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // A new object shows up while the watch is open.
    rig.api.state.insert(
        "configmaps",
        "default",
        serde_json::json!({"kind": "ConfigMap", "apiVersion": "v1",
            "metadata": {"name": "late-arrival"}, "data": {"k": "v"}}),
    );
    gatehouse_testkit::within(Duration::from_secs(30), async {
        while !String::from_utf8_lossy(&seen).contains("late-arrival") {
            let n = stdout.read(&mut buf).await.unwrap();
            assert!(n > 0);
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    let _ = child.start_kill();
    assert!(!String::from_utf8_lossy(&seen).contains("ops-lead@example.com"));
    // Watching secrets is denied by rule; fetching one secret through a raw watch of a single
    // object still masks it.
    let (code, _, body) = raw(
        &rig.base(),
        "GET",
        "/api/v1/namespaces/default/secrets?watch=true",
        &[("authorization", &bearer())],
    )
    .await;
    assert_eq!(code, 403, "{body}");
}

#[tokio::test]
async fn kube_rs_client_through_the_gateway() {
    use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
    use kube::api::{Api, ListParams, PostParams};
    let rig = Rig::start().await;
    let mut config = kube::Config::new(format!("{}/k8s/dev", rig.base()).parse().unwrap());
    config.default_namespace = "default".into();
    config.auth_info.token = Some(AGENT_TOKEN.to_string().into());
    let client = kube::Client::try_from(config).unwrap();
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let list = pods.list(&ListParams::default()).await.unwrap();
    let names: Vec<_> = list
        .items
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    assert_eq!(names, vec!["web-0", "web-1"]);
    let secrets: Api<Secret> = Api::default_namespaced(client.clone());
    let s = secrets.get("db-creds").await.unwrap();
    let data = s.data.unwrap();
    assert_eq!(data["password"].0, b"[masked]");
    let denied = secrets.list(&ListParams::default()).await.unwrap_err();
    let text = denied.to_string();
    assert!(text.contains("no-secret-list"), "{text}");
    let cms: Api<ConfigMap> = Api::default_namespaced(client);
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("from-kube-rs".into());
    cms.create(&PostParams::default(), &cm).await.unwrap();
    assert!(
        rig.api
            .state
            .get("configmaps", "default", "from-kube-rs")
            .is_some()
    );
}

#[tokio::test]
async fn upstream_token_never_leaves_the_gateway() {
    let rig = Rig::start().await;
    // A config map that (wrongly) holds the gateway's own token: the egress guard stops it.
    rig.api.state.insert(
        "configmaps",
        "default",
        serde_json::json!({"kind": "ConfigMap", "apiVersion": "v1",
            "metadata": {"name": "leaky"}, "data": {"note": UPSTREAM_TOKEN}}),
    );
    let mut outputs = String::new();
    for args in [
        &["get", "configmap", "leaky", "-o", "yaml"][..],
        &["get", "configmaps", "-o", "yaml"][..],
        &["get", "pods", "-o", "yaml"][..],
        &["get", "secret", "db-creds", "-o", "yaml"][..],
        &["exec", "web-0", "--", "printenv", "LEAKY_TOKEN"][..],
        &["logs", "web-0"][..],
        &["config", "view", "--raw"][..],
    ] {
        let out = rig.kubectl(args).await;
        outputs.push_str(&out.stdout);
        outputs.push_str(&out.stderr);
    }
    let (_, headers, body) = raw(
        &rig.base(),
        "GET",
        "/api/v1/namespaces/default/configmaps/leaky",
        &[("authorization", &bearer())],
    )
    .await;
    outputs.push_str(&body);
    outputs.push_str(&format!("{headers:?}"));
    assert!(!outputs.contains(UPSTREAM_TOKEN), "{outputs}");
    assert!(!rig.layers.recorder.dump().contains(UPSTREAM_TOKEN));
    let blocks = rig
        .layers
        .recorder
        .events()
        .into_iter()
        .filter(|e| matches!(e.body, EventBody::EgressBlocked { .. }))
        .count();
    assert!(
        blocks >= 2,
        "the leaky config map and the echoed token were blocked: {outputs}"
    );
}

#[tokio::test]
async fn path_tricks_decide_like_the_plain_path() {
    let rig = Rig::start().await;
    let auth = bearer();
    for trick in [
        "/k8s/dev/api/v1/namespaces/default/secrets",
        "/k8s/dev/api/v1/namespaces/default/pods/../secrets",
        "/k8s/dev/api/v1/namespaces/default/pods%2F..%2Fsecrets",
        "/k8s/dev/api/v1/namespaces/default/pods/%2e%2e/secrets",
        "/k8s/dev/api/v1/namespaces/default%2Fsecrets",
        "/k8s/dev/api/v1/namespaces//default/secrets",
    ] {
        let (code, _, body) = raw(&rig.base(), "GET", trick, &[("authorization", &auth)]).await;
        assert_eq!(code, 403, "{trick}: {body}");
        assert!(body.contains("no-secret-list"), "{trick}: {body}");
    }
    assert!(
        !rig.api
            .state
            .seen()
            .iter()
            .any(|s| s.path.contains("secrets") && !s.path.ends_with("db-creds"))
    );
    let (code, _, _) = raw(
        &rig.base(),
        "GET",
        "/k8s/dev/api/v1/namespaces/default/pods/web-0/..%2F..%2Fpods",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(
        rig.api.state.seen().last().unwrap().path,
        "/api/v1/namespaces/default/pods",
        "the decided path is the forwarded path"
    );
}

#[tokio::test]
async fn byte_ranges_are_not_forwarded() {
    let rig = Rig::start().await;
    let auth = bearer();
    let (code, _, _) = raw(
        &rig.base(),
        "GET",
        "/k8s/dev/api/v1/namespaces/default/pods",
        &[
            ("authorization", &auth),
            ("range", "bytes=100-108"),
            ("if-range", "\"x\""),
        ],
    )
    .await;
    assert_eq!(code, 200);
    let seen = rig.api.state.seen();
    let last = seen.last().unwrap();
    assert!(last.headers.get("range").is_none());
    assert!(last.headers.get("if-range").is_none());
}

#[tokio::test]
async fn caller_impersonation_headers_have_no_effect() {
    let rig = Rig::start().await;
    let auth = bearer();
    let (code, _, _) = raw(
        &rig.base(),
        "GET",
        "/k8s/dev/api/v1/namespaces/default/pods",
        &[
            ("authorization", &auth),
            ("impersonate-user", "system:admin"),
            ("impersonate-group", "system:masters"),
            ("x-remote-user", "system:admin"),
        ],
    )
    .await;
    assert_eq!(code, 200);
    let seen = rig.api.state.seen();
    let last = seen.last().unwrap();
    assert!(last.headers.get("impersonate-user").is_none());
    assert!(last.headers.get("impersonate-group").is_none());
    assert!(last.headers.get("x-remote-user").is_none());
    // A target configured to impersonate names the caller's identity instead.
    let (code, _, _) = raw(
        &rig.base(),
        "GET",
        "/k8s/imp/api/v1/namespaces/default/pods",
        &[
            ("authorization", &auth),
            ("impersonate-user", "system:admin"),
        ],
    )
    .await;
    assert_eq!(code, 200);
    let seen = rig.api.state.seen();
    let last = seen.last().unwrap();
    assert_eq!(last.headers.get("impersonate-user").unwrap(), "agent-7");
    assert_eq!(last.headers.get("impersonate-group").unwrap(), "agents");
}

#[tokio::test]
async fn protobuf_accept_still_yields_masked_json() {
    let rig = Rig::start().await;
    let (code, headers, body) = raw(
        &rig.base(),
        "GET",
        "/api/v1/namespaces/default/secrets/db-creds",
        &[
            ("authorization", &bearer()),
            ("accept", "application/vnd.kubernetes.protobuf, */*"),
            ("accept-encoding", "gzip"),
        ],
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(headers.get("content-type").unwrap(), "application/json");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"]["password"], "W21hc2tlZF0=");
    let seen = rig.api.state.seen();
    let last = seen.last().unwrap();
    assert_eq!(last.headers.get("accept").unwrap(), "application/json");
    assert_eq!(last.headers.get("accept-encoding").unwrap(), "identity");
}

/// Accept header games never get an unmasked protobuf answer: whatever the caller prefers,
/// the API server is asked for JSON only (the stand-in answers protobuf to anyone who asks).
#[tokio::test]
async fn accept_games_never_yield_protobuf() {
    let rig = Rig::start().await;
    let auth = bearer();
    for accept in [
        &[("accept", "application/vnd.kubernetes.protobuf")][..],
        &[(
            "accept",
            "application/json;q=0.1, application/vnd.kubernetes.protobuf;q=1",
        )],
        &[(
            "accept",
            "application/vnd.kubernetes.protobuf;as=Table;v=v1;g=meta.k8s.io",
        )],
        &[
            ("accept", "application/json"),
            ("accept", "application/vnd.kubernetes.protobuf"),
        ],
        &[(
            "accept",
            "application/json, APPLICATION/VND.KUBERNETES.PROTOBUF",
        )],
    ] {
        let mut headers = vec![("authorization", auth.as_str())];
        headers.extend_from_slice(accept);
        let (code, h, body) = raw(
            &rig.base(),
            "GET",
            "/api/v1/namespaces/default/secrets/db-creds",
            &headers,
        )
        .await;
        assert_eq!(code, 200, "{accept:?}: {body}");
        assert_eq!(h.get("content-type").unwrap(), "application/json");
        assert!(!body.contains(&b64(SECRET_PASSWORD)), "{accept:?}: {body}");
        assert!(!body.contains("k8s\0"), "{body}");
        let seen = rig.api.state.seen();
        let last = seen.last().unwrap();
        let upstream: Vec<_> = last.headers.get_all("accept").iter().collect();
        assert_eq!(upstream.len(), 1, "{upstream:?}");
        assert!(
            !upstream[0]
                .to_str()
                .unwrap()
                .to_ascii_lowercase()
                .contains("protobuf"),
            "{upstream:?}"
        );
    }
}

#[tokio::test]
async fn unauthenticated_callers_get_a_status() {
    let rig = Rig::start().await;
    let (code, _, body) = raw(&rig.base(), "GET", "/api/v1/namespaces/default/pods", &[]).await;
    assert_eq!(code, 401);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["kind"].as_str(), v["reason"].as_str()),
        (Some("Status"), Some("Unauthorized"))
    );
    let bad = rig.dir.path().join("bad.kubeconfig");
    write_kubeconfig(
        &bad,
        &format!("https://{}/k8s/dev", rig.tls_addr),
        "wrong-token",
        Some(&rig.ca_file),
    );
    let out = kubectl(&bad, rig.dir.path(), &["get", "pods"]).await;
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("provide credentials"), "{out:#?}");
    assert!(rig.api.state.seen().is_empty());
}

#[tokio::test]
async fn sensitive_operations_need_an_explicit_rule() {
    let allow_all = r#"
[defaults]
default = "allow"
"#;
    let rig = Rig::start_with(allow_all, |_| {}).await;
    let auth = bearer();
    // Port forwarding and ephemeral containers are denied although the default allows.
    let (code, _, body) = raw(
        &rig.base(),
        "GET",
        "/api/v1/namespaces/default/pods/web-0/portforward?ports=80",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("k8s-sensitive"));
    let out = rig.kubectl(&["port-forward", "pod/web-0", ":80"]).await;
    assert!(
        out.stderr.contains(
            "denied by gatehouse rule k8s-sensitive: port forwarding needs an explicit allow rule"
        ),
        "{out:#?}"
    );
    let pod = |name: &str, spec: &str| {
        let path = rig.dir.path().join(format!("{name}.json"));
        std::fs::write(
            &path,
            format!(r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "{name}"}}, "spec": {spec}}}"#),
        )
        .unwrap();
        path.to_string_lossy().into_owned()
    };
    let privileged = pod(
        "privileged-pod",
        r#"{"hostPID": true, "containers": [{"name": "a", "image": "busybox"}]}"#,
    );
    let out = rig
        .kubectl(&["create", "--validate=false", "-f", &privileged])
        .await;
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr.contains("privileged pod spec (hostPID)"),
        "{out:#?}"
    );
    let plain = pod(
        "plain-pod",
        r#"{"containers": [{"name": "a", "image": "busybox"}]}"#,
    );
    rig.kubectl(&["create", "--validate=false", "-f", &plain])
        .await
        .ok();
    assert!(rig.api.state.get("pods", "default", "plain-pod").is_some());
    assert!(
        rig.api
            .state
            .get("pods", "default", "privileged-pod")
            .is_none()
    );
    // An explicit rule allows it.
    let explicit = r#"
[defaults]
default = "deny"

[[rules]]
id = "break-glass-portforward"
verdict = "allow"
kubernetes = { verbs = ["portforward"] }
"#;
    let rig = Rig::start_with(explicit, |_| {}).await;
    let (code, _, body) = raw(
        &rig.base(),
        "GET",
        "/api/v1/namespaces/default/pods/web-0/portforward?ports=80",
        &[("authorization", &auth)],
    )
    .await;
    // Allowed, but its data is binary and the rule does not say `binary = "raw"`: refused,
    // and nothing reaches the API server.
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("gatehouse rule break-glass-portforward does not pass it unmasked"),
        "{body}"
    );
    // Under `binary = "raw"`, a request that is not the WebSocket tunnel (here a plain GET; a
    // plain SPDY upgrade alike) is not relayed: the gateway says so.
    let rig2 = Rig::start_with(
        &explicit.replace(
            "verdict = \"allow\"\n",
            "verdict = \"allow\"\nbinary = \"raw\"\n",
        ),
        |_| {},
    )
    .await;
    let (code, _, body) = raw(
        &rig2.base(),
        "GET",
        "/api/v1/namespaces/default/pods/web-0/portforward?ports=80",
        &[
            ("authorization", &auth),
            ("upgrade", "SPDY/3.1"),
            ("connection", "Upgrade"),
        ],
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("relays port-forward only over WebSocket"),
        "{body}"
    );
    for rig in [&rig, &rig2] {
        assert!(
            !rig.api
                .state
                .seen()
                .iter()
                .any(|s| s.path.ends_with("/portforward"))
        );
    }
}

/// `kubectl port-forward` (WebSocket tunnel first, then its SPDY fallback) is decided by the
/// policy: denied by default with the rule in kubectl's error, never reaching the API server.
#[tokio::test]
async fn kubectl_port_forward_is_a_policy_decision() {
    let rig = Rig::start().await;
    let out = rig.kubectl(&["port-forward", "pod/web-0", ":80"]).await;
    assert_ne!(out.code, Some(0), "{out:#?}");
    assert!(
        out.stderr
            .contains("error upgrading connection: denied by gatehouse rule default"),
        "{out:#?}"
    );
    assert!(
        !rig.api
            .state
            .seen()
            .iter()
            .any(|s| s.path.ends_with("/portforward"))
    );
    assert_eq!(
        rig.api
            .state
            .spdy_requests
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    let pf: Vec<_> = rig
        .operations()
        .into_iter()
        .filter(|(op, _)| op.verb == "portforward")
        .collect();
    assert!(!pf.is_empty());
    assert!(
        pf.iter()
            .all(|(_, d)| d.verdict == Verdict::Deny && d.rule_id == "default")
    );
    // An explicit rule for another pod does not allow this one.
    let policy = format!(
        "{POLICY}\n[[rules]]\nid = \"pf-web-1\"\nverdict = \"allow\"\nkubernetes = {{ verbs = [\"portforward\"], names = [\"web-1\"] }}\n"
    );
    let rig = Rig::start_with(&policy, |_| {}).await;
    let out = rig.kubectl(&["port-forward", "pod/web-0", ":80"]).await;
    assert!(
        out.stderr.contains("denied by gatehouse rule default"),
        "{out:#?}"
    );
    // Allowed, but without `binary = "raw"`: port-forward data is binary, so it is refused
    // (on both of kubectl's attempts), never left hanging.
    let out = rig.kubectl(&["port-forward", "pod/web-1", ":80"]).await;
    assert_ne!(out.code, Some(0), "{out:#?}");
    assert!(
        out.stderr.contains(
            "port-forward refused: its data is binary, which masking cannot rewrite safely, and gatehouse rule pf-web-1 does not pass it unmasked (binary = \"raw\")"
        ),
        "{out:#?}"
    );
    assert!(
        !rig.api
            .state
            .seen()
            .iter()
            .any(|s| s.path.ends_with("/portforward"))
    );
}

#[tokio::test]
async fn kubeconfig_credential_reaches_the_cluster() {
    // The gateway's credential given as a kubeconfig file (server, pinned CA, token).
    let keep = tempfile::tempdir().unwrap();
    let path = keep.path().join("cluster.kubeconfig");
    let written = path.clone();
    let rig = Rig::start_with(POLICY, move |config| {
        for t in &mut config.targets {
            write_kubeconfig(
                &written,
                t.server.as_deref().unwrap(),
                UPSTREAM_TOKEN,
                t.ca_file.as_deref(),
            );
            t.server = None;
            t.ca_file = None;
            t.credential = gatehouse_k8s::UpstreamCredential::Kubeconfig {
                path: written.clone(),
                context: None,
            };
        }
    })
    .await;
    let out = rig.kubectl(&["get", "pods", "-o", "name"]).await;
    out.ok();
    assert_eq!(out.stdout.trim(), "pod/web-0\npod/web-1");
    // The token read from the kubeconfig is a held secret like any other.
    let leaky = rig
        .kubectl(&["exec", "web-0", "--", "printenv", "LEAKY_TOKEN"])
        .await;
    assert!(!leaky.stdout.contains(UPSTREAM_TOKEN));
    assert!(
        leaky.stderr.contains("gateway-held credential"),
        "{leaky:#?}"
    );
}

#[tokio::test]
async fn reviewed_request_waits_and_client_go_retries_until_approved() {
    let policy = r#"
[defaults]
default = "allow"

[[rules]]
id = "review-cm-delete"
reason = "config maps feed production"
verdict = "review"
approvers = ["admins"]
timeout = "60s"
kubernetes = { verbs = ["delete"], resources = ["configmaps"] }
"#;
    // No hold at all: every attempt before the approval is answered 429 + Retry-After.
    let rig = Rig::start_with(policy, |c| c.review_hold_ms = 0).await;
    let kubeconfig = rig.kubeconfig.clone();
    let home = rig.dir.path().to_path_buf();
    let run = tokio::spawn(async move {
        kubectl(&kubeconfig, &home, &["delete", "configmap", "settings"]).await
    });
    let id = rig.approve_next().await;
    let out = gatehouse_testkit::within(Duration::from_secs(60), run)
        .await
        .unwrap();
    out.ok();
    assert!(out.stdout.contains("deleted"), "{out:#?}");
    assert!(
        rig.api
            .state
            .get("configmaps", "default", "settings")
            .is_none()
    );
    // One approval for all the retries.
    let requested = rig
        .layers
        .recorder
        .events()
        .into_iter()
        .filter(|e| matches!(&e.body, EventBody::ApprovalRequested { id: i, .. } if *i == id))
        .count();
    assert_eq!(requested, 1);
    assert!(
        rig.results()
            .iter()
            .any(|r| r.status == "429 approval_pending"),
        "client-go was told to retry"
    );
}

#[tokio::test]
async fn client_certificate_credential_reaches_the_cluster() {
    let rig = Rig::start_with(POLICY, |config| {
        for t in &mut config.targets {
            let dir = t.ca_file.as_ref().unwrap().parent().unwrap().to_path_buf();
            t.credential = gatehouse_k8s::UpstreamCredential::ClientCert {
                cert_file: dir.join("client.pem"),
                key_file: dir.join("client-key.pem"),
            };
        }
    })
    .await;
    let out = rig.kubectl(&["get", "pods", "-o", "name"]).await;
    out.ok();
    assert_eq!(out.stdout.trim(), "pod/web-0\npod/web-1");
    let exec = rig
        .kubectl(&["exec", "web-0", "--", "echo", "via-cert"])
        .await;
    assert_eq!(exec.ok().stdout.trim(), "via-cert");
    // No token travelled: the TLS client certificate authenticated the gateway.
    assert!(
        rig.api
            .state
            .seen()
            .iter()
            .all(|s| s.headers.get("authorization").is_none())
    );
}

#[tokio::test]
async fn exec_with_stdin_relays_input_and_its_end() {
    use tokio::io::AsyncWriteExt as _;
    let rig = Rig::start().await;
    let mut cmd = kubectl_command(
        &rig.kubeconfig,
        rig.dir.path(),
        &["exec", "-i", "web-0", "--", "cat"],
    );
    cmd.stdin(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"line one\nline two\n").await.unwrap();
    drop(stdin);
    let out = gatehouse_testkit::within(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "line one\nline two\n");
    // The input is in the exec recording.
    let events = rig.layers.recorder.events();
    let exec_session = events
        .iter()
        .find_map(|e| match &e.body {
            EventBody::SessionStart { details, .. } if details["stream"] == "exec" => {
                Some(e.session.clone())
            }
            _ => None,
        })
        .unwrap();
    let frames = rig.layers.recorder.recording(&exec_session);
    assert!(frames.iter().any(
        |f| matches!(f, RecordingFrame::Input { data } if String::from_utf8_lossy(data).contains("line one"))
    ));
}

#[tokio::test]
async fn large_lists_stream_through_the_json_masker() {
    let rig = Rig::start().await;
    for i in 0..6000 {
        rig.api.state.insert(
            "configmaps",
            "default",
            serde_json::json!({"kind": "ConfigMap", "apiVersion": "v1",
                "metadata": {"name": format!("bulk-{i:05}")},
                "data": {"owner": format!("person{i}@example.com"), "padding": "x".repeat(200)}}),
        );
    }
    let (code, _, body) = raw(
        &rig.base(),
        "GET",
        "/api/v1/namespaces/default/configmaps",
        &[("authorization", &bearer())],
    )
    .await;
    assert_eq!(code, 200);
    assert!(
        body.len() > 1024 * 1024,
        "bigger than the collected first MiB"
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["items"].as_array().unwrap().len(), 6001);
    assert!(!body.contains("@example.com"), "every address masked");
    assert_eq!(v["items"][5999]["metadata"]["name"], "bulk-05999");
}

/// A request with a body to the gateway's plain listener; (status, body).
async fn send(
    rig: &Rig,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> (u16, String) {
    use http_body_util::BodyExt as _;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let req = http::Request::builder()
        .method(method)
        .uri(format!("{}{path}", rig.base()))
        .header("authorization", bearer())
        .header("content-type", content_type)
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .unwrap();
    let resp = gatehouse_testkit::within(Duration::from_secs(30), client.request(req))
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn an_approval_binds_query_patch_type_and_body() {
    let policy = r#"
[defaults]
default = "allow"

[[rules]]
id = "review-cm-patch"
reason = "config maps feed production"
verdict = "review"
approvers = ["admins"]
timeout = "60s"
kubernetes = { verbs = ["patch"], resources = ["configmaps"] }
"#;
    let rig = Rig::start_with(policy, |c| c.review_hold_ms = 0).await;
    let path = "/k8s/dev/api/v1/namespaces/default/configmaps/settings";
    let merge = "application/merge-patch+json";
    let body = r#"{"data":{"mode":"on"}}"#;
    let dry = format!("{path}?dryRun=All&fieldManager=agent");
    let requested = |rig: &Rig| {
        rig.layers
            .recorder
            .events()
            .into_iter()
            .filter(|e| matches!(&e.body, EventBody::ApprovalRequested { .. }))
            .count()
    };

    // The dry run waits for an approval; the approver sees the query and the patch type.
    let (code, _) = send(&rig, "PATCH", &dry, merge, body).await;
    assert_eq!(code, 429);
    let id = rig.approve_next().await;
    let pending = rig
        .layers
        .approvals
        .list(&gatehouse_core::ApprovalFilter::default())
        .await
        .unwrap();
    let shown = pending
        .iter()
        .find(|r| r.id == id)
        .map(|r| r.request.operation.summary())
        .unwrap();
    assert!(shown.contains("PATCH "), "{shown}");
    assert!(shown.contains("dryRun=All&fieldManager=agent"), "{shown}");
    assert!(
        shown.contains("content-type=application/merge-patch+json"),
        "{shown}"
    );
    assert!(shown.contains("body-sha256="), "{shown}");
    // The approved request itself goes through.
    let (code, _) = send(&rig, "PATCH", &dry, merge, body).await;
    assert_ne!(code, 429);
    assert_eq!(requested(&rig), 1);

    // Anything that changes the effect is another operation with its own approval.
    let variants = [
        (format!("{path}?fieldManager=agent"), merge, body),
        (dry.clone(), "application/strategic-merge-patch+json", body),
        (
            dry.clone(),
            "application/json-patch+json",
            r#"[{"op":"add","path":"/data/mode","value":"on"}]"#,
        ),
        (format!("{path}?dryRun=All&fieldManager=other"), merge, body),
        (
            format!("{path}?dryRun=All&fieldManager=agent&force=true"),
            "application/apply-patch+yaml",
            body,
        ),
        (dry.clone(), merge, r#"{"data":{"mode":"off"}}"#),
    ];
    for (n, (p, ct, b)) in variants.iter().enumerate() {
        let (code, answer) = send(&rig, "PATCH", p, ct, b).await;
        assert_eq!(code, 429, "{p} {ct}: {answer}");
        assert_eq!(requested(&rig), n + 2, "{p} {ct} opens its own approval");
    }
}

async fn send_bytes(
    rig: &Rig,
    method: &str,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, String) {
    use http_body_util::BodyExt as _;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let req = http::Request::builder()
        .method(method)
        .uri(format!("{}{path}", rig.base()))
        .header("authorization", bearer())
        .header("content-type", content_type)
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let resp = gatehouse_testkit::within(Duration::from_secs(30), client.request(req))
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// kubectl's typed generators send protobuf: a config map or secret (no pod spec) is forwarded
/// byte-exact, recorded by digest only, and the response comes back as masked JSON.
#[tokio::test]
async fn kubectl_typed_create_sends_protobuf_byte_exact() {
    let policy = format!(
        "{POLICY}\n[[rules]]\nid = \"agents-secrets\"\nverdict = \"allow\"\ngroups = [\"agents\"]\nkubernetes = {{ verbs = [\"create\"], resources = [\"secrets\"] }}\n"
    );
    let rig = Rig::start_with(&policy, |_| {}).await;
    rig.kubectl(&[
        "create",
        "configmap",
        "pb-cm",
        "--from-literal=contact=dana@example.org",
        "--from-literal=mode=slow",
    ])
    .await
    .ok();
    let cm = rig.api.state.get("configmaps", "default", "pb-cm").unwrap();
    assert_eq!(cm["data"]["contact"], "dana@example.org");
    assert_eq!(cm["data"]["mode"], "slow");
    let out = rig
        .kubectl(&[
            "create",
            "secret",
            "generic",
            "pb-secret",
            "--from-literal=password=pb-s3cret-value-91",
            "-o",
            "json",
        ])
        .await;
    out.ok();
    // The response was asked for as JSON and masked: the secret value never comes back.
    assert!(!out.stdout.contains("pb-s3cret-value-91"), "{out:#?}");
    assert!(!out.stdout.contains(&b64("pb-s3cret-value-91")), "{out:#?}");
    let secret = rig
        .api
        .state
        .get("secrets", "default", "pb-secret")
        .unwrap();
    assert_eq!(secret["data"]["password"], b64("pb-s3cret-value-91"));
    // The stand-in got kubectl's protobuf bytes and a JSON-only Accept.
    let bodies = rig.api.state.bodies.lock().unwrap().clone();
    let protobuf: Vec<_> = bodies
        .iter()
        .filter(|(_, ct, _)| ct.starts_with("application/vnd.kubernetes.protobuf"))
        .collect();
    assert_eq!(protobuf.len(), 2, "{bodies:?}");
    for seen in rig.api.state.seen().iter().filter(|s| s.method == "POST") {
        let accept = seen.headers.get("accept").unwrap().to_str().unwrap();
        assert!(!accept.contains("protobuf"), "{accept}");
    }
    // Recorded by digest: the secret's bytes are not in the recording.
    let recording = rig.layers.recorder.dump();
    assert!(recording.contains("<protobuf v1/Secret"), "{recording}");
    assert!(!recording.contains("pb-s3cret-value-91"));
    let digest = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(&protobuf[1].2))
    };
    assert!(
        recording.contains(&digest),
        "byte-exact body digest recorded"
    );
}

/// A request body that says JSON but is binary (NUL bytes, invalid UTF-8) is forwarded
/// byte-exact and recorded by size and digest, never run through the text masker.
#[tokio::test]
async fn binary_request_bodies_are_forwarded_byte_exact_and_recorded_by_digest() {
    let rig = Rig::start().await;
    let blob = binary_blob();
    let (code, answer) = send_bytes(
        &rig,
        "POST",
        "/k8s/dev/api/v1/namespaces/default/configmaps",
        "application/json",
        blob.clone(),
    )
    .await;
    // The stand-in cannot decode it (what a real API server says too).
    assert_eq!(code, 400, "{answer}");
    let bodies = rig.api.state.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert_eq!(sha256_hex(&bodies[0].2), sha256_hex(&blob), "altered");
    let recording = rig.layers.recorder.dump();
    assert!(
        recording.contains(&format!(
            "<binary body, {} bytes, sha256 {}>",
            blob.len(),
            sha256_hex(&blob)
        )),
        "{recording}"
    );
    // Neither the planted address nor a masked rewrite of it is recorded.
    assert!(!recording.contains("jane@example.com"));
    assert!(!recording.contains("[email]"), "{recording}");
}

/// A protobuf pod spec is read like a JSON one: a privileged setting the JSON check would
/// catch is caught in protobuf too; a body the gateway cannot decode where the check needs it
/// is refused with a `Status`, never forwarded.
#[tokio::test]
async fn protobuf_pod_specs_are_checked_or_refused() {
    use gatehouse_k8s::protobuf::encode_body;
    use k8s_pb::api::apps::v1 as apps;
    use k8s_pb::api::core::v1 as core;
    use prost::Message as _;
    let allow_all = "[defaults]\ndefault = \"allow\"\n";
    let rig = Rig::start_with(allow_all, |_| {}).await;
    const PB: &str = "application/vnd.kubernetes.protobuf";
    let meta = |name: &str| {
        Some(k8s_pb::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        })
    };
    let container = |privileged: Option<bool>| core::Container {
        name: Some("a".into()),
        image: Some("busybox".into()),
        security_context: privileged.map(|p| core::SecurityContext {
            privileged: Some(p),
            ..Default::default()
        }),
        ..Default::default()
    };
    let host_pid = core::Pod {
        metadata: meta("pb-hostpid"),
        spec: Some(core::PodSpec {
            host_pid: Some(true),
            containers: vec![container(None)],
            ..Default::default()
        }),
        ..Default::default()
    };
    let (code, body) = send_bytes(
        &rig,
        "POST",
        "/api/v1/namespaces/default/pods",
        PB,
        encode_body("v1", "Pod", &host_pid),
    )
    .await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("privileged pod spec (hostPID)"), "{body}");
    assert!(body.contains("\"kind\":\"Status\""), "{body}");
    // hostPID=false in the first copy of the spec, true in a second one appended: protobuf
    // (and the API server) take the last value.
    let first = core::Pod {
        metadata: meta("pb-twice"),
        spec: Some(core::PodSpec {
            host_pid: Some(false),
            containers: vec![container(None)],
            ..Default::default()
        }),
        ..Default::default()
    };
    let second = core::Pod {
        spec: Some(core::PodSpec {
            host_pid: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut raw = first.encode_to_vec();
    raw.extend(second.encode_to_vec());
    let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown {
        type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
        }),
        raw: Some(raw),
        ..Default::default()
    };
    let mut twice = b"k8s\0".to_vec();
    twice.extend(unknown.encode_to_vec());
    let (code, body) = send_bytes(&rig, "POST", "/api/v1/namespaces/default/pods", PB, twice).await;
    assert_eq!(code, 403, "{body}");
    // A privileged container in a Deployment's template.
    let deployment = apps::Deployment {
        metadata: meta("pb-deploy"),
        spec: Some(apps::DeploymentSpec {
            template: Some(core::PodTemplateSpec {
                spec: Some(core::PodSpec {
                    containers: vec![container(Some(true))],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let (code, body) = send_bytes(
        &rig,
        "POST",
        "/apis/apps/v1/namespaces/default/deployments",
        PB,
        encode_body("apps/v1", "Deployment", &deployment),
    )
    .await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("securityContext.privileged"), "{body}");
    // Bodies that cannot be vouched for where the check needs them: refused, 400 Status.
    let no_kind = encode_body("v1", "", &host_pid);
    let disguised = encode_body("v1", "ConfigMap", &host_pid);
    let old_version = encode_body("extensions/v1beta1", "Deployment", &deployment);
    let mut truncated = encode_body("v1", "Pod", &host_pid);
    truncated.truncate(truncated.len() - 3);
    for (path, bytes) in [
        ("/api/v1/namespaces/default/pods", no_kind),
        ("/api/v1/namespaces/default/pods", disguised),
        ("/apis/apps/v1/namespaces/default/deployments", old_version),
        ("/api/v1/namespaces/default/pods", truncated),
        (
            "/api/v1/namespaces/default/pods",
            b"{\"not\": \"protobuf\"}".to_vec(),
        ),
    ] {
        let (code, body) = send_bytes(&rig, "POST", path, PB, bytes).await;
        assert_eq!(code, 400, "{path}: {body}");
        assert!(
            body.contains("gatehouse cannot vouch for this request body"),
            "{body}"
        );
    }
    // A JSON pod body that does not parse is not forwarded unchecked either.
    let (code, body) = send_bytes(
        &rig,
        "POST",
        "/api/v1/namespaces/default/pods",
        "application/json",
        b"{\"spec\": {\"hostPID\": true}, ".to_vec(),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    // Nothing reached the API server.
    assert!(
        !rig.api.state.seen().iter().any(|s| s.method == "POST"),
        "{:?}",
        rig.api.state.seen()
    );
    // A plain protobuf pod is forwarded byte-exact (the stand-in serves no protobuf pods and
    // says so: the gateway let it through).
    let plain = encode_body(
        "v1",
        "Pod",
        &core::Pod {
            metadata: meta("pb-plain"),
            spec: Some(core::PodSpec {
                containers: vec![container(None)],
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    let (code, body) = send_bytes(
        &rig,
        "POST",
        "/api/v1/namespaces/default/pods",
        PB,
        plain.clone(),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("not served by this stand-in"), "{body}");
    let bodies = rig.api.state.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1);
    assert_eq!(bodies[0].2.as_ref(), plain.as_slice());
}

/// kubectl's write commands work unchanged through the gateway: `apply` (client-side, then
/// its strategic-merge patch; server-side apply's `application/apply-patch+yaml`), `label`
/// and `edit` (an editor script). A value masked in what `edit` showed is not written back.
#[tokio::test]
async fn kubectl_apply_label_edit_work_unchanged() {
    let policy = format!(
        "{POLICY}\n[[rules]]\nid = \"agents-edit-configmaps\"\nverdict = \"allow\"\ngroups = [\"agents\"]\nkubernetes = {{ verbs = [\"patch\", \"update\"], resources = [\"configmaps\"] }}\n"
    );
    let rig = Rig::start_with(&policy, |_| {}).await;
    let dir = rig.dir.path();
    let manifest = dir.join("applied.yaml");
    let write = |value: &str| {
        std::fs::write(
            &manifest,
            format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: applied\ndata:\n  level: \"{value}\"\n"),
        )
        .unwrap();
    };
    let file = manifest.to_str().unwrap();
    write("1");
    rig.kubectl(&["apply", "--validate=false", "-f", file])
        .await
        .ok();
    write("2");
    rig.kubectl(&["apply", "--validate=false", "-f", file])
        .await
        .ok();
    let applied = rig
        .api
        .state
        .get("configmaps", "default", "applied")
        .unwrap();
    assert_eq!(applied["data"]["level"], "2", "{applied}");
    let ssa = dir.join("ssa.yaml");
    std::fs::write(
        &ssa,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa-made\ndata:\n  k: v\n",
    )
    .unwrap();
    rig.kubectl(&[
        "apply",
        "--server-side",
        "--validate=false",
        "-f",
        ssa.to_str().unwrap(),
    ])
    .await
    .ok();
    assert_eq!(
        rig.api
            .state
            .get("configmaps", "default", "ssa-made")
            .unwrap()["data"]["k"],
        "v"
    );
    rig.kubectl(&["label", "configmap", "settings", "tier=gold"])
        .await
        .ok();
    let editor = dir.join("edit.sh");
    std::fs::write(
        &editor,
        "#!/bin/sh\nsed -i 's/mode: fast/mode: edited/' \"$1\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut cmd = kubectl_command(
        &rig.kubeconfig,
        dir,
        &["edit", "--validate=false", "configmap", "settings"],
    );
    cmd.env("KUBE_EDITOR", &editor);
    let out = gatehouse_testkit::within(Duration::from_secs(60), cmd.output())
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let settings = rig
        .api
        .state
        .get("configmaps", "default", "settings")
        .unwrap();
    assert_eq!(settings["metadata"]["labels"]["tier"], "gold", "{settings}");
    assert_eq!(settings["data"]["mode"], "edited", "{settings}");
    // The editor saw the e-mail address masked; the patch left the real one alone.
    assert_eq!(settings["data"]["contact"], "ops-lead@example.com");
    let seen = rig.api.state.bodies.lock().unwrap().clone();
    let types: Vec<&str> = seen.iter().map(|(_, ct, _)| ct.as_str()).collect();
    assert!(
        types
            .iter()
            .any(|t| t.starts_with("application/apply-patch+yaml"))
            && types
                .iter()
                .any(|t| t.starts_with("application/strategic-merge-patch+json")),
        "{types:?}"
    );
    // Writes the policy does not allow are still refused.
    let out = rig.kubectl(&["label", "pod", "web-0", "x=y"]).await;
    assert!(out.stderr.contains("Forbidden"), "{out:#?}");
    assert!(
        rig.api.state.get("pods", "default", "web-0").unwrap()["metadata"]["labels"]["x"].is_null()
    );
}

/// `kubectl scale` patches the `scale` subresource (an `autoscaling/v1` `Scale`): allowed by a
/// rule for it, refused without one.
#[tokio::test]
async fn kubectl_scale_through_the_gateway() {
    let rig = Rig::start().await;
    let out = rig.kubectl(&["scale", "rc", "web", "--replicas=3"]).await;
    assert!(out.stderr.contains("Forbidden"), "{out:#?}");
    let policy = format!(
        "{POLICY}\n[[rules]]\nid = \"agents-scale\"\nverdict = \"allow\"\ngroups = [\"agents\"]\nkubernetes = {{ verbs = [\"patch\", \"update\"], resources = [\"replicationcontrollers\"], subresources = [\"scale\"] }}\n"
    );
    let rig = Rig::start_with(&policy, |_| {}).await;
    let out = rig.kubectl(&["scale", "rc", "web", "--replicas=3"]).await;
    out.ok();
    assert!(out.stdout.contains("scaled"), "{out:#?}");
    let rc = rig
        .api
        .state
        .get("replicationcontrollers", "default", "web")
        .unwrap();
    assert_eq!(rc["spec"]["replicas"], 3, "{rc}");
}

/// 64 KiB of pseudo-random bytes (NUL bytes included) with an e-mail address and a card number
/// in them, as a binary file might happen to contain.
fn binary_blob() -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut v: Vec<u8> = (0..65_536)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    for (at, pii) in [
        (100, &b"jane@example.com"[..]),
        (30_000, b"4111 1111 1111 1111"),
        (60_000, b"z@v.Oe bob@example.org"),
    ] {
        v[at..at + pii.len()].copy_from_slice(pii);
    }
    v[7] = 0;
    v
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(b))
}

/// One exec rule for web-0, with `binary` as given.
fn exec_policy(binary: &str) -> String {
    format!(
        r#"
[defaults]
default = "deny"

[[rules]]
id = "read"
reason = "kubectl reads the pod before exec"
verdict = "allow"
kubernetes = {{ verbs = ["get"] }}

[[rules]]
id = "exec-files"
reason = "reading files in web-0"
verdict = "allow"
binary = "{binary}"
kubernetes = {{ verbs = ["exec"], names = ["web-0"] }}
exec = {{ program = ["cat", "echo"] }}
"#
    )
}

#[tokio::test]
async fn binary_exec_output_is_refused_without_a_raw_rule() {
    let rig = Rig::start_with(&exec_policy("refuse"), |_| {}).await;
    let blob = binary_blob();
    let file = rig.dir.path().join("blob.bin");
    std::fs::write(&file, &blob).unwrap();
    let file = file.to_str().unwrap().to_string();
    let text = rig.dir.path().join("text.txt");
    std::fs::write(&text, b"mail jane@example.com\n").unwrap();
    let text = text.to_str().unwrap().to_string();
    for args in [
        vec!["exec", "web-0", "--", "cat", file.as_str()],
        // Text, then binary: one stream that turns binary.
        vec!["exec", "web-0", "--", "cat", text.as_str(), file.as_str()],
    ] {
        let out = rig.kubectl(&args).await;
        assert_eq!(out.code, Some(1), "{args:?}: {out:#?}");
        assert!(
            out.stderr
                .contains("output withheld: stdout carries binary data")
                && out.stderr.contains("rule 'exec-files'")
                && out.stderr.contains("binary = \"raw\""),
            "{out:#?}"
        );
        // Nothing of the binary data went out, rewritten or not.
        assert!(!out.stdout.contains("jane@example.com"), "{out:#?}");
        assert!(out.stdout_bytes.len() < 100, "{:?}", out.stdout);
    }
    let refused = rig
        .results()
        .into_iter()
        .filter(|r| r.status.starts_with("101 refused: binary output"))
        .count();
    assert_eq!(refused, 2);
}

#[tokio::test]
async fn binary_exec_output_passes_byte_exact_under_a_raw_rule() {
    let rig = Rig::start_with(&exec_policy("raw"), |_| {}).await;
    let blob = binary_blob();
    let file = rig.dir.path().join("blob.bin");
    std::fs::write(&file, &blob).unwrap();
    let file = file.to_str().unwrap().to_string();
    let out = rig.kubectl(&["exec", "web-0", "--", "cat", &file]).await;
    out.ok();
    assert_eq!(sha256_hex(&out.stdout_bytes), sha256_hex(&blob), "altered");
    // Text under the raw rule is still masked; a stream that turns binary is raw from there.
    let text = rig.dir.path().join("text.txt");
    std::fs::write(&text, b"mail jane@example.com\n").unwrap();
    let text = text.to_str().unwrap().to_string();
    let out = rig
        .kubectl(&["exec", "web-0", "--", "cat", &text, &file])
        .await;
    out.ok();
    // The binary part is byte-exact; the text before it is masked unless it came in the same
    // frame as the first binary byte (that frame passes raw as a whole, as on SSH).
    assert!(out.stdout_bytes.ends_with(&blob), "{:?}", out.stdout);
    let prefix = out.stdout_bytes[..out.stdout_bytes.len() - blob.len()].to_vec();
    let mixed_len = out.stdout_bytes.len() as u64;
    assert!(
        prefix == b"mail [email]\n" || prefix == b"mail jane@example.com\n",
        "{:?}",
        String::from_utf8_lossy(&prefix)
    );
    let out = rig
        .kubectl(&["exec", "web-0", "--", "echo", "card", "4111 1111 1111 1111"])
        .await;
    out.ok();
    assert!(!out.stdout.contains("4111 1111 1111 1111"), "{out:#?}");
    // The raw bytes are recorded by size and digest, naming the rule; not in the recording.
    let events = rig.layers.recorder.events();
    let raw: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::Other { name, details } if name == "k8s_raw_output" => Some(details),
            _ => None,
        })
        .collect();
    assert_eq!(raw.len(), 2, "{raw:#?}");
    assert_eq!(raw[0]["sha256"], sha256_hex(&blob).as_str());
    assert_eq!(raw[0]["bytes"], blob.len() as u64);
    for d in &raw {
        assert_eq!(d["rule_id"], "exec-files");
        assert_eq!(d["stream"], "stdout");
    }
    assert_eq!(raw[0]["from"], 0);
    let (from, bytes) = (
        raw[1]["from"].as_u64().unwrap(),
        raw[1]["bytes"].as_u64().unwrap(),
    );
    assert_eq!(from + bytes, mixed_len, "{raw:#?}");
    assert!(from == 0 || from == prefix.len() as u64, "{raw:#?}");
    let dump = rig.layers.recorder.dump();
    assert!(!dump.contains("bob@example.org"), "raw bytes were recorded");
}

/// A pod log (text/plain) that turns binary: refused without a raw rule (the stream is cut,
/// never rewritten), passed byte-exact under one.
#[tokio::test]
async fn binary_log_output_is_refused_or_passed_raw() {
    let blob = binary_blob();
    for binary in ["refuse", "raw"] {
        let policy = exec_policy(binary).replace(
            r#"kubernetes = { verbs = ["get"] }"#,
            &format!("binary = \"{binary}\"\nkubernetes = {{ verbs = [\"get\", \"log\"] }}"),
        );
        let rig = Rig::start_with(&policy, |_| {}).await;
        *rig.api.state.log_tail.lock().unwrap() = Some(blob.clone().into());
        let out = rig.kubectl(&["logs", "web-0"]).await;
        let first = format!("{LOG_LINE_1}\n");
        if binary == "raw" {
            out.ok();
            assert!(out.stdout_bytes.starts_with(first.as_bytes()), "{out:#?}");
            assert_eq!(
                sha256_hex(&out.stdout_bytes[first.len()..]),
                sha256_hex(&blob),
                "altered"
            );
            let dump = rig.layers.recorder.dump();
            assert!(dump.contains(&sha256_hex(&blob)), "digest recorded");
            assert!(!dump.contains("bob@example.org"), "raw bytes were recorded");
        } else {
            assert_ne!(out.code, Some(0), "{out:#?}");
            assert!(!out.stdout.contains("jane@example.com"), "{out:#?}");
            assert!(out.stdout_bytes.len() < 100, "{:?}", out.stdout);
        }
    }
}

/// A response of a content type the gateway cannot mask: refused with a `Status` naming the rule
/// and the setting, or passed byte-exact under `binary = "raw"`.
#[tokio::test]
async fn binary_content_type_is_refused_or_passed_raw() {
    let blob = binary_blob();
    for binary in ["refuse", "raw"] {
        let policy = exec_policy(binary).replace(
            r#"kubernetes = { verbs = ["get"] }"#,
            &format!("binary = \"{binary}\"\nkubernetes = {{ verbs = [\"get\", \"log\"] }}"),
        );
        let rig = Rig::start_with(&policy, |_| {}).await;
        *rig.api.state.log_tail.lock().unwrap() = Some(blob.clone().into());
        *rig.api.state.log_content_type.lock().unwrap() = Some("application/octet-stream".into());
        let out = rig.kubectl(&["logs", "web-0"]).await;
        let first = format!("{LOG_LINE_1}\n");
        if binary == "raw" {
            out.ok();
            assert_eq!(&out.stdout_bytes[..first.len()], first.as_bytes());
            assert_eq!(
                sha256_hex(&out.stdout_bytes[first.len()..]),
                sha256_hex(&blob),
                "altered"
            );
        } else {
            assert_ne!(out.code, Some(0), "{out:#?}");
            assert!(out.stdout_bytes.is_empty(), "{out:#?}");
            assert!(
                out.stderr.contains("rule 'read'") && out.stderr.contains("binary = \"raw\""),
                "{out:#?}"
            );
        }
    }
}

/// A TCP echo server on 127.0.0.1 (what the pod's port 80 leads to in the stand-in).
async fn echo_server() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// The `k8s_portforward_stream` audit events.
fn portforward_streams(rig: &Rig) -> Vec<serde_json::Value> {
    rig.layers
        .recorder
        .events()
        .into_iter()
        .filter_map(|e| match e.body {
            EventBody::Other { name, details } if name == "k8s_portforward_stream" => Some(details),
            _ => None,
        })
        .collect()
}

/// A real `kubectl port-forward pod/web-0 0:80` through the gateway, under a rule that allows
/// it with `binary = "raw"`: the SPDY-over-WebSocket tunnel is relayed, binary data goes both
/// ways byte-exact, and every stream is recorded with its port and the digests of its bytes.
#[tokio::test]
async fn kubectl_port_forward_relays_byte_exact_under_a_raw_rule() {
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
    let policy = format!(
        "{POLICY}\n[[rules]]\nid = \"pf-web-0\"\nverdict = \"allow\"\nbinary = \"raw\"\nkubernetes = {{ verbs = [\"portforward\"], names = [\"web-0\"] }}\n"
    );
    let rig = Rig::start_with(&policy, |_| {}).await;
    let echo = echo_server().await;
    rig.api.state.pod_ports.lock().unwrap().insert(80, echo);
    let mut child = kubectl_command(
        &rig.kubeconfig,
        rig.dir.path(),
        &["port-forward", "pod/web-0", "0:80"],
    )
    .spawn()
    .unwrap();
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // `Forwarding from 127.0.0.1:PORT -> 80`
    let local: u16 = gatehouse_testkit::within(Duration::from_secs(60), async {
        loop {
            let line = stdout
                .next_line()
                .await
                .unwrap()
                .expect("kubectl ended early");
            if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                break rest.split(' ').next().unwrap().parse().unwrap();
            }
        }
    })
    .await;
    let blob = binary_blob();
    for round in 0..2 {
        let got = gatehouse_testkit::within(Duration::from_secs(60), async {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", local))
                .await
                .unwrap();
            let (mut rd, mut wr) = s.split();
            let write = async {
                wr.write_all(&blob).await.unwrap();
            };
            let mut got = vec![0u8; blob.len()];
            let read = rd.read_exact(&mut got);
            let (_, r) = tokio::join!(write, read);
            r.unwrap();
            got
        })
        .await;
        assert_eq!(
            sha256_hex(&got),
            sha256_hex(&blob),
            "round {round}: altered"
        );
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
    // The tunnel's end is recorded once kubectl is gone.
    let streams = gatehouse_testkit::within(Duration::from_secs(30), async {
        loop {
            let s = portforward_streams(&rig);
            if s.len() >= 4 {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let data: Vec<_> = streams
        .iter()
        .filter(|s| s["stream_type"] == "data")
        .collect();
    assert_eq!(data.len(), 2, "{streams:#?}");
    for s in &streams {
        assert_eq!(s["port"], 80, "{s}");
        assert_eq!(s["rule_id"], "pf-web-0", "{s}");
    }
    for s in data {
        for dir in ["to_pod", "from_pod"] {
            assert_eq!(s[dir]["bytes"], blob.len() as u64, "{s}");
            assert_eq!(s[dir]["sha256"], sha256_hex(&blob).as_str(), "{s}");
        }
    }
    let pf: Vec<_> = rig
        .operations()
        .into_iter()
        .filter(|(op, _)| op.verb == "portforward")
        .collect();
    assert!(
        pf.iter()
            .all(|(_, d)| d.verdict == Verdict::Allow && d.rule_id == "pf-web-0"),
        "{pf:?}"
    );
    // Nothing ever reached the stand-in as plain SPDY.
    assert_eq!(
        rig.api
            .state
            .spdy_requests
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

/// A tunnel whose request names its ports (`?ports=80`) may open streams to those only: a
/// stream naming another port ends the tunnel (policy close, reason naming the port) before
/// its frame reaches the API server, and the audit log says why.
#[tokio::test]
async fn a_stream_naming_a_port_the_request_did_not_ends_the_tunnel() {
    use futures::{SinkExt as _, StreamExt as _};
    use gatehouse_k8s::spdy::{Frame, FrameReader, HeaderDeflater};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let policy = format!(
        "{POLICY}\n[[rules]]\nid = \"pf-web-0\"\nverdict = \"allow\"\nbinary = \"raw\"\nkubernetes = {{ verbs = [\"portforward\"], names = [\"web-0\"] }}\n"
    );
    let rig = Rig::start_with(&policy, |_| {}).await;
    let echo = echo_server().await;
    rig.api.state.pod_ports.lock().unwrap().insert(80, echo);
    rig.api.state.pod_ports.lock().unwrap().insert(22, echo);
    let url = format!(
        "ws://{}/api/v1/namespaces/default/pods/web-0/portforward?ports=80",
        rig.gateway
    );
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", bearer().parse().unwrap());
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "SPDY/3.1+portforward.k8s.io".parse().unwrap(),
    );
    gatehouse_testkit::within(Duration::from_secs(30), async {
        let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
        assert_eq!(resp.status(), 101);
        let mut headers = HeaderDeflater::new().unwrap();
        let mut syn = |id: u32, kind: &str, port: &str, request: &str| {
            let block = headers
                .encode(&[("streamType", kind), ("port", port), ("requestID", request)])
                .unwrap();
            Message::Binary(Frame::syn_stream(id, &block, false).encode().into())
        };
        ws.send(syn(1, "error", "80", "0")).await.unwrap();
        ws.send(syn(3, "data", "80", "0")).await.unwrap();
        ws.send(Message::Binary(
            Frame::data(3, b"hello\0", false).encode().into(),
        ))
        .await
        .unwrap();
        // The echo comes back on stream 3.
        let mut reader = FrameReader::new();
        let mut echoed = Vec::new();
        while echoed.len() < 6 {
            let Some(Ok(Message::Binary(b))) = ws.next().await else {
                panic!("tunnel ended early");
            };
            reader.push(&b);
            while let Some((f, _)) = reader.next_frame().unwrap() {
                if let Frame::Data {
                    stream_id: 3,
                    payload,
                    ..
                } = f
                {
                    echoed.extend_from_slice(&payload);
                }
            }
        }
        assert_eq!(echoed, b"hello\0");
        // A stream to port 22, which the request did not name: the tunnel ends.
        ws.send(syn(5, "data", "22", "1")).await.unwrap();
        let close = loop {
            match ws.next().await {
                Some(Ok(Message::Close(f))) => break f,
                Some(Ok(_)) => continue,
                other => panic!("no close frame: {other:?}"),
            }
        };
        let close = close.unwrap();
        assert_eq!(u16::from(close.code), 1008);
        assert!(close.reason.contains("port 22"), "{close:?}");
    })
    .await;
    assert_eq!(
        *rig.api.state.portforward_ports.lock().unwrap(),
        vec![80, 80]
    );
    let status = gatehouse_testkit::within(Duration::from_secs(30), async {
        loop {
            if let Some(r) = rig
                .results()
                .into_iter()
                .find(|r| r.status.starts_with("101 refused"))
            {
                break r.status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(status.contains("names port 22"), "{status}");
    let streams = portforward_streams(&rig);
    assert_eq!(streams.len(), 2, "{streams:#?}");
}

/// Opens the SPDY-over-WebSocket tunnel to web-0 as kubectl does, without kubectl.
async fn open_tunnel(
    rig: &Rig,
    query: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let url = format!(
        "ws://{}/api/v1/namespaces/default/pods/web-0/portforward{query}",
        rig.gateway
    );
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", bearer().parse().unwrap());
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "SPDY/3.1+portforward.k8s.io".parse().unwrap(),
    );
    let (ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    ws
}

/// Bytes from the pod pass the egress guard: the gateway's cluster credential echoed back by
/// the pod ends the tunnel and never reaches the caller.
#[tokio::test]
async fn port_forward_bytes_from_the_pod_pass_the_egress_guard() {
    use futures::{SinkExt as _, StreamExt as _};
    use gatehouse_k8s::spdy::{Frame, FrameReader, HeaderDeflater};
    use tokio_tungstenite::tungstenite::Message;
    let policy = format!(
        "{POLICY}\n[[rules]]\nid = \"pf-web-0\"\nverdict = \"allow\"\nbinary = \"raw\"\nkubernetes = {{ verbs = [\"portforward\"], names = [\"web-0\"] }}\n"
    );
    let rig = Rig::start_with(&policy, |_| {}).await;
    let echo = echo_server().await;
    rig.api.state.pod_ports.lock().unwrap().insert(80, echo);
    let received = gatehouse_testkit::within(Duration::from_secs(30), async {
        let mut ws = open_tunnel(&rig, "").await;
        let mut headers = HeaderDeflater::new().unwrap();
        for (id, kind) in [(1, "error"), (3, "data")] {
            let block = headers
                .encode(&[("streamType", kind), ("port", "80"), ("requestID", "0")])
                .unwrap();
            ws.send(Message::Binary(
                Frame::syn_stream(id, &block, false).encode().into(),
            ))
            .await
            .unwrap();
        }
        let leak = format!("token={UPSTREAM_TOKEN}\n");
        ws.send(Message::Binary(
            Frame::data(3, leak.as_bytes(), false).encode().into(),
        ))
        .await
        .unwrap();
        let mut reader = FrameReader::new();
        let mut received = Vec::new();
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) => {
                    reader.push(&b);
                    while let Some((f, _)) = reader.next_frame().unwrap() {
                        if let Frame::Data { payload, .. } = f {
                            received.extend_from_slice(&payload);
                        }
                    }
                }
                Some(Ok(Message::Close(f))) => {
                    let f = f.unwrap();
                    assert_eq!(u16::from(f.code), 1008);
                    assert!(f.reason.contains("credential"), "{f:?}");
                    break received;
                }
                Some(Ok(_)) => {}
                other => panic!("no close frame: {other:?}"),
            }
        }
    })
    .await;
    assert!(
        !String::from_utf8_lossy(&received).contains(UPSTREAM_TOKEN),
        "the credential reached the caller"
    );
}

/// A review verdict does not hold a port-forward tunnel open for an approver: it is refused.
#[tokio::test]
async fn reviewed_port_forward_is_refused() {
    let policy = format!(
        "{POLICY}\n[[rules]]\nid = \"pf-reviewed\"\nverdict = \"review\"\napprovers = [\"admins\"]\ntimeout = \"60s\"\nbinary = \"raw\"\nkubernetes = {{ verbs = [\"portforward\"], names = [\"web-0\"] }}\n"
    );
    let rig = Rig::start_with(&policy, |_| {}).await;
    let out = rig.kubectl(&["port-forward", "pod/web-0", ":80"]).await;
    assert_ne!(out.code, Some(0), "{out:#?}");
    assert!(
        out.stderr.contains(
            "denied by gatehouse rule pf-reviewed: port-forward tunnels cannot wait for approval"
        ),
        "{out:#?}"
    );
    assert_eq!(
        rig.api
            .state
            .portforward_requests
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

/// Approvals that cannot take a request (the store is down).
struct ApprovalsDown;

impl gatehouse_core::Approvals for ApprovalsDown {
    fn open(
        &self,
        _: gatehouse_core::ApprovalRequest,
    ) -> gatehouse_core::BoxFuture<
        '_,
        Result<gatehouse_core::ApprovalTicket, gatehouse_core::ApprovalError>,
    > {
        Box::pin(async { Err(gatehouse_core::ApprovalError::Store("store down".into())) })
    }

    fn wait<'a>(
        &'a self,
        _: &'a gatehouse_core::ApprovalId,
        _: Duration,
    ) -> gatehouse_core::BoxFuture<
        'a,
        Result<gatehouse_core::ApprovalOutcome, gatehouse_core::ApprovalError>,
    > {
        Box::pin(async { Err(gatehouse_core::ApprovalError::Store("store down".into())) })
    }

    fn list<'a>(
        &'a self,
        _: &'a gatehouse_core::ApprovalFilter,
    ) -> gatehouse_core::BoxFuture<
        'a,
        Result<Vec<gatehouse_core::ApprovalRecord>, gatehouse_core::ApprovalError>,
    > {
        Box::pin(async { Err(gatehouse_core::ApprovalError::Store("store down".into())) })
    }

    fn get<'a>(
        &'a self,
        _: &'a gatehouse_core::ApprovalId,
    ) -> gatehouse_core::BoxFuture<
        'a,
        Result<gatehouse_core::ApprovalRecord, gatehouse_core::ApprovalError>,
    > {
        Box::pin(async { Err(gatehouse_core::ApprovalError::Store("store down".into())) })
    }

    fn decide<'a>(
        &'a self,
        _: &'a gatehouse_core::ApprovalId,
        _: &'a gatehouse_core::Identity,
        _: gatehouse_core::ApprovalDecision,
        _: &'a str,
    ) -> gatehouse_core::BoxFuture<
        'a,
        Result<gatehouse_core::ApprovalRecord, gatehouse_core::ApprovalError>,
    > {
        Box::pin(async { Err(gatehouse_core::ApprovalError::Store("store down".into())) })
    }
}

const REVIEW_CM_DELETE: &str = r#"
[defaults]
default = "allow"

[[rules]]
id = "no-pod-delete"
reason = "agents never delete pods"
verdict = "deny"
kubernetes = { verbs = ["delete"], resources = ["pods"] }

[[rules]]
id = "review-cm-delete"
reason = "config maps feed production"
verdict = "review"
approvers = ["admins"]
timeout = "60s"
kubernetes = { verbs = ["delete"], resources = ["configmaps"] }
"#;

const CM: &str = "/k8s/dev/api/v1/namespaces/default/configmaps/settings";

#[tokio::test]
async fn approvals_unavailable_is_503_service_unavailable_with_retry_after() {
    let rig = Rig::start_full(
        REVIEW_CM_DELETE,
        |c| {
            c.review_hold_ms = 0;
            c.retry_after_s = 4;
        },
        |p| p.approvals = std::sync::Arc::new(ApprovalsDown),
    )
    .await;
    let auth = bearer();
    let (code, headers, body) = raw(&rig.base(), "DELETE", CM, &[("authorization", &auth)]).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(headers["retry-after"], "4");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "ServiceUnavailable");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .starts_with("approvals unavailable"),
        "{body}"
    );
    assert!(
        rig.api
            .state
            .get("configmaps", "default", "settings")
            .is_some()
    );
    assert!(
        rig.results()
            .iter()
            .any(|r| r.status == "503 approvals_unavailable"),
        "{:?}",
        rig.results()
    );
}

#[tokio::test]
async fn audit_unavailable_is_503_service_unavailable_with_retry_after() {
    let rig = Rig::start_with(REVIEW_CM_DELETE, |c| c.retry_after_s = 6).await;
    rig.layers.recorder.set_failing(true);
    let auth = bearer();
    let (code, headers, body) = raw(
        &rig.base(),
        "GET",
        "/k8s/dev/api/v1/namespaces/default/configmaps",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(headers["retry-after"], "6");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["reason"], "ServiceUnavailable");
    assert!(
        status["message"].as_str().unwrap().contains("audit"),
        "{body}"
    );
    assert!(
        !rig.api
            .state
            .seen()
            .iter()
            .any(|s| s.path.contains("configmaps")),
        "nothing runs unrecorded"
    );
}

#[tokio::test]
async fn a_hook_cannot_turn_a_deny_or_a_review_into_an_allow() {
    let rig = Rig::start_full(
        REVIEW_CM_DELETE,
        |c| c.review_hold_ms = 0,
        |p| p.hooks = std::sync::Arc::new(gatehouse_testkit::layers::LetEverythingThrough),
    )
    .await;
    let auth = bearer();
    let (code, _, body) = raw(
        &rig.base(),
        "DELETE",
        "/k8s/dev/api/v1/namespaces/default/pods/web-0",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("no-pod-delete"), "{body}");
    let (code, headers, body) = raw(&rig.base(), "DELETE", CM, &[("authorization", &auth)]).await;
    assert_eq!(code, 429, "{body}");
    assert!(headers.contains_key("retry-after"));
    assert!(!rig.api.state.seen().iter().any(|s| s.method == "DELETE"));
    assert!(rig.api.state.get("pods", "default", "web-0").is_some());
}

/// A rig whose gate hooks are `hook`.
async fn rig_with_hook(hook: std::sync::Arc<gatehouse_testkit::layers::RecordChunks>) -> Rig {
    Rig::start_full(POLICY, |_| {}, move |p| p.hooks = hook).await
}

#[tokio::test]
async fn a_chunk_hook_sees_responses_after_masking() {
    gatehouse_testkit::within(Duration::from_secs(120), async {
        let hook = std::sync::Arc::new(gatehouse_testkit::layers::RecordChunks::new());
        let rig = rig_with_hook(hook.clone()).await;
        // A whole JSON document with a Secret in it: masked structurally before the hook.
        let out = rig
            .kubectl(&["get", "secret", "db-creds", "-o", "json"])
            .await;
        out.ok();
        let seen = String::from_utf8_lossy(&hook.seen()).into_owned();
        assert!(seen.contains("db-creds"), "{seen}");
        assert!(seen.contains("W21hc2tlZF0="), "the masked value: {seen}");
        assert!(!seen.contains(&b64(SECRET_PASSWORD)), "{seen}");
        assert!(!seen.contains(SECRET_PASSWORD), "{seen}");
        // A streamed text response (logs), masked.
        let mut child = kubectl_command(&rig.kubeconfig, rig.dir.path(), &["logs", "-f", "web-0"])
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        rig.api.state.release_logs();
        let mut logs = Vec::new();
        stdout.read_to_end(&mut logs).await.unwrap();
        child.wait().await.unwrap();
        let logs = String::from_utf8_lossy(&logs).into_owned();
        assert!(logs.contains("request from"), "{logs}");
        let seen = String::from_utf8_lossy(&hook.seen()).into_owned();
        assert!(seen.contains(LOG_LINE_1), "{seen}");
        assert!(seen.contains("request from"), "{seen}");
        assert!(!seen.contains("jane.doe@example.com"), "{seen}");
        // Exec output, masked, as the caller receives it.
        let out = rig
            .kubectl(&[
                "exec",
                "web-0",
                "--",
                "echo",
                "mail",
                "jane.doe@example.com",
                "now",
            ])
            .await;
        out.ok();
        let seen = String::from_utf8_lossy(&hook.seen()).into_owned();
        assert!(seen.contains("mail ") && seen.contains(" now"), "{seen}");
        assert!(!seen.contains("jane.doe@example.com"), "{seen}");
        // Every chunk carries its operation's index.
        let indexes: std::collections::BTreeSet<u64> =
            hook.chunks().into_iter().map(|(i, _)| i).collect();
        assert!(indexes.len() >= 3, "{indexes:?}");
    })
    .await;
}

#[tokio::test]
async fn a_chunk_hook_stopping_a_response_is_a_403_status() {
    gatehouse_testkit::within(Duration::from_secs(120), async {
        let hook = std::sync::Arc::new(gatehouse_testkit::layers::RecordChunks::stopping_on(
            "db-creds",
        ));
        let rig = rig_with_hook(hook.clone()).await;
        let auth = bearer();
        let (code, _, body) = raw(
            &rig.base(),
            "GET",
            "/k8s/dev/api/v1/namespaces/default/secrets/db-creds",
            &[("authorization", &auth)],
        )
        .await;
        assert_eq!(code, 403, "{body}");
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(status["kind"], "Status");
        assert_eq!(status["reason"], "Forbidden");
        assert!(
            status["message"]
                .as_str()
                .unwrap()
                .contains("GateHooks::on_chunk"),
            "{body}"
        );
        assert!(!body.contains("db-creds"), "{body}");
        assert!(hook.stopped());
        // kubectl prints it as a server error.
        let out = rig.kubectl(&["get", "secret", "db-creds"]).await;
        assert_ne!(out.code, Some(0), "{out:#?}");
        assert!(out.stderr.contains("Forbidden"), "{out:#?}");
        assert!(
            rig.results().iter().any(|r| r.status == "200 hook_stopped"),
            "{:?}",
            rig.results()
        );
    })
    .await;
}

#[tokio::test]
async fn a_chunk_hook_stopping_a_log_stream_cuts_it_after_what_it_let_through() {
    gatehouse_testkit::within(Duration::from_secs(120), async {
        let hook = std::sync::Arc::new(gatehouse_testkit::layers::RecordChunks::stopping_on(
            "request from",
        ));
        let rig = rig_with_hook(hook.clone()).await;
        let mut child = kubectl_command(&rig.kubeconfig, rig.dir.path(), &["logs", "-f", "web-0"])
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(&seen).contains(LOG_LINE_1) {
            let n = stdout.read(&mut buf).await.unwrap();
            assert!(n > 0, "kubectl ended early");
            seen.extend_from_slice(&buf[..n]);
        }
        rig.api.state.release_logs();
        stdout.read_to_end(&mut seen).await.unwrap();
        // The stream is cut (kubectl's exit status after a cut stream is its own business).
        child.wait().await.unwrap();
        let all = String::from_utf8_lossy(&seen).into_owned();
        assert!(!all.contains("request from"), "{all}");
        assert!(hook.stopped());
        assert!(
            rig.results()
                .iter()
                .any(|r| r.status.ends_with(" hook_stopped")),
            "{:?}",
            rig.results()
        );
    })
    .await;
}

#[tokio::test]
async fn a_chunk_hook_stopping_exec_output_ends_the_stream_with_a_status() {
    gatehouse_testkit::within(Duration::from_secs(120), async {
        let hook = std::sync::Arc::new(gatehouse_testkit::layers::RecordChunks::stopping_on(
            "[email]",
        ));
        let rig = rig_with_hook(hook.clone()).await;
        let out = rig
            .kubectl(&[
                "exec",
                "web-0",
                "--",
                "echo",
                "mail",
                "jane.doe@example.com",
                "now",
            ])
            .await;
        assert_ne!(out.code, Some(0), "{out:#?}");
        assert!(!out.stdout.contains("mail"), "{out:#?}");
        assert!(out.stderr.contains("GateHooks::on_chunk"), "{out:#?}");
        assert!(hook.stopped());
        assert!(!String::from_utf8_lossy(&hook.seen()).contains("jane.doe@example.com"));
        assert!(
            rig.results().iter().any(|r| r.status == "101 hook_stopped"),
            "{:?}",
            rig.results()
        );
    })
    .await;
}

const REVIEW_CM_DELETE_QUICK: &str = r#"
[defaults]
default = "allow"

[[rules]]
id = "review-cm-delete"
reason = "config maps feed production"
verdict = "review"
approvers = ["admins"]
timeout = "1s"
kubernetes = { verbs = ["delete"], resources = ["configmaps"] }
"#;

/// The approval events of the recorder: (requested, resolved as timed out).
fn approval_counts(rig: &Rig) -> (usize, usize) {
    let events = rig.layers.recorder.events();
    let requested = events
        .iter()
        .filter(|e| matches!(e.body, EventBody::ApprovalRequested { .. }))
        .count();
    let timed_out = events
        .iter()
        .filter(|e| {
            matches!(
                e.body,
                EventBody::ApprovalResolved {
                    outcome: gatehouse_core::ApprovalOutcome::TimedOut,
                    ..
                }
            )
        })
        .count();
    (requested, timed_out)
}

#[tokio::test]
async fn approval_timed_out_is_a_504_timeout_and_recorded_once() {
    gatehouse_testkit::within(Duration::from_secs(60), async {
        // Held longer than the request's own timeout: the hold ends with the timeout.
        let rig = Rig::start_with(REVIEW_CM_DELETE_QUICK, |c| c.review_hold_ms = 30_000).await;
        let auth = bearer();
        let (code, headers, body) =
            raw(&rig.base(), "DELETE", CM, &[("authorization", &auth)]).await;
        assert_eq!(code, 504, "{body}");
        assert!(!headers.contains_key("retry-after"), "{headers:?}");
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(status["kind"], "Status");
        assert_eq!(status["reason"], "Timeout");
        let message = status["message"].as_str().unwrap();
        assert!(message.contains("timed out"), "{body}");
        assert!(message.contains("review-cm-delete"), "{body}");
        assert!(
            rig.api
                .state
                .get("configmaps", "default", "settings")
                .is_some()
        );
        assert!(!rig.api.state.seen().iter().any(|s| s.method == "DELETE"));
        assert_eq!(
            approval_counts(&rig),
            (1, 1),
            "{}",
            rig.layers.recorder.dump()
        );
        assert!(
            rig.results()
                .iter()
                .any(|r| r.status == "504 approval_timed_out"),
            "{:?}",
            rig.results()
        );
    })
    .await;
}

#[tokio::test]
async fn approval_timed_out_reaches_kubectl_through_its_retries_as_a_timeout() {
    gatehouse_testkit::within(Duration::from_secs(90), async {
        // No hold: client-go is told to retry (429) until the request has timed out.
        let rig = Rig::start_with(REVIEW_CM_DELETE_QUICK, |c| {
            c.review_hold_ms = 0;
            c.retry_after_s = 1;
        })
        .await;
        let out = rig.kubectl(&["delete", "configmap", "settings"]).await;
        assert_ne!(out.code, Some(0), "{out:#?}");
        assert!(out.stderr.contains("timed out"), "{out:#?}");
        assert!(!out.stderr.contains("Forbidden"), "{out:#?}");
        assert!(
            rig.api
                .state
                .get("configmaps", "default", "settings")
                .is_some()
        );
        // One request for all the retries, and its timeout recorded once.
        assert_eq!(
            approval_counts(&rig),
            (1, 1),
            "{}",
            rig.layers.recorder.dump()
        );
    })
    .await;
}

/// A JSON request body whose PII is written with `\u` escapes is recorded masked, whether it
/// parses or not; a parsed one comes back to the caller masked.
#[tokio::test]
async fn escaped_json_pii_in_bodies_is_masked_in_the_record_and_the_response() {
    use gatehouse_testkit::json_escapes::decode_json_escapes;
    let rig = Rig::start().await;
    let every: String = "jane@example.com"
        .chars()
        .map(|c| format!("\\u{:04x}", c as u32))
        .collect();
    let cases = [
        format!(
            r#"{{"kind":"ConfigMap","apiVersion":"v1","metadata":{{"name":"esc-a"}},"data":{{"owner":"{every}","card":"\u0034111111111111111"}}}}"#
        ),
        // Claims JSON, does not parse.
        r#"{"kind":"ConfigMap", ] "owner": "jane\u0040example.com" "\u0034111111111111111""#
            .to_string(),
    ];
    for (i, doc) in cases.iter().enumerate() {
        let (code, answer) = send(
            &rig,
            "POST",
            "/k8s/dev/api/v1/namespaces/default/configmaps",
            "application/json",
            doc,
        )
        .await;
        assert!(
            code == 201 || code == 200 || (i == 1 && code == 400),
            "{code} {answer}"
        );
        let answer = decode_json_escapes(&answer);
        assert!(!answer.contains("jane@example.com"), "{answer}");
        assert!(!answer.contains("4111111111111111"), "{answer}");
    }
    let record = decode_json_escapes(&rig.layers.recorder.dump());
    assert!(!record.contains("jane@example.com"), "{record}");
    assert!(!record.contains("4111111111111111"), "{record}");
    assert!(record.contains("[email]"), "{record}");
}

/// PII in an exec command or a query string reaches the API server and the policy as written,
/// while the audit log (`operation` events, the approval request) and the recording keep it
/// masked; the approval binds the real command.
#[tokio::test]
async fn query_and_exec_command_pii_is_masked_in_the_audit_log_and_recording_only() {
    let rig = Rig::start().await;
    // A query string with PII (percent-encoded, as clients send it).
    let query =
        "labelSelector=owner%3Dcarol%40example.net&fieldSelector=spec.nodeName%3D4012888888881881";
    let (code, _, body) = raw(
        &rig.base(),
        "GET",
        &format!("/api/v1/namespaces/default/pods?{query}"),
        &[("authorization", &bearer())],
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert!(
        rig.api.state.seen().iter().any(|s| s.query == query),
        "the API server got the query unchanged"
    );

    // A reviewed exec (rule `exec-web-1-reviewed` matches the real program).
    let kubeconfig = rig.kubeconfig.clone();
    let home = rig.dir.path().to_path_buf();
    let run = tokio::spawn(async move {
        kubectl(
            &kubeconfig,
            &home,
            &[
                "exec",
                "web-1",
                "--",
                "echo",
                "alice@example.com",
                "4111111111111111",
            ],
        )
        .await
    });
    let id = rig.approve_next().await;
    let out = gatehouse_testkit::within(Duration::from_secs(60), run)
        .await
        .unwrap();
    out.ok();
    let record = rig.layers.approvals.get(&id).await.unwrap();
    let gatehouse_core::Operation::Kubernetes(real) = &record.request.operation else {
        panic!("{record:?}");
    };
    let argv = &real.command.as_ref().unwrap().parsed.argv;
    assert_eq!(argv, &["echo", "alice@example.com", "4111111111111111"]);
    let shown = serde_json::to_string(record.request.shown()).unwrap();
    assert!(shown.contains("echo"), "{shown}");
    assert!(
        rig.api
            .state
            .seen()
            .iter()
            .any(|s| s.path.ends_with("/exec") && s.query.contains("alice%40example.com")),
        "the API server got the real command"
    );

    let ops = rig.operations();
    assert!(
        ops.iter().any(|(_, d)| d.rule_id == "exec-web-1-reviewed"),
        "{ops:?}"
    );
    let dump = rig.layers.recorder.dump();
    assert!(dump.contains("labelSelector"), "the query is recorded");
    for pii in [
        "carol@example.net",
        "carol%40example.net",
        "4012888888881881",
        "alice@example.com",
        "alice%40example.com",
        "4111111111111111",
    ] {
        assert!(
            !dump.contains(pii) && !shown.contains(pii),
            "{pii} in the audit log or recording: {dump}"
        );
    }
}

/// A log line cut across two writes with a pause between them is masked whole: the stream
/// masker never releases a held partial line on a timer.
#[tokio::test]
async fn a_log_value_split_across_paused_writes_is_masked_whole() {
    gatehouse_testkit::within(Duration::from_secs(120), async {
        let rig = Rig::start().await;
        *rig.api.state.log_head.lock().unwrap() = Some(bytes::Bytes::from_static(b"to alice@exam"));
        *rig.api.state.log_tail.lock().unwrap() = Some(bytes::Bytes::from_static(
            b"ple.com card 4111111111111111 done\n",
        ));
        let mut child = kubectl_command(&rig.kubeconfig, rig.dir.path(), &["logs", "-f", "web-0"])
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        // The upstream pauses mid-value (far longer than the idle flush), then goes on.
        tokio::time::sleep(Duration::from_millis(500)).await;
        rig.api.state.release_logs();
        let mut logs = Vec::new();
        stdout.read_to_end(&mut logs).await.unwrap();
        child.wait().await.unwrap();
        let logs = String::from_utf8_lossy(&logs).into_owned();
        for p in ["alice", "exam", "ple.com", "4111111111111111"] {
            assert!(!logs.contains(p), "{p:?} leaked: {logs}");
        }
        assert!(
            logs.starts_with("to ") && logs.ends_with(" done\n"),
            "{logs}"
        );
    })
    .await;
}
