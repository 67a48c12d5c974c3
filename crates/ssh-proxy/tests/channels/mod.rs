//! Every SSH channel and request type is its own operation under the real policy engine: refused
//! by default (whatever the exec default says) with the reason visible to the real OpenSSH
//! clients (`ssh -tt`, `-L`, `-D`, `-W`, `sftp`, `scp`, `scp -O`, `rsync`, `git`), allowed by a
//! rule naming it; remote forwarding, agent forwarding and X11 are refused whatever the policy.

use std::sync::Arc;
use std::time::Duration;

use gatehouse_core::*;
use gatehouse_policy::CompiledPolicy;
use gatehouse_testkit::layers::{FnPolicy, StaticAuthenticator};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

/// The second agent's token: group `movers`, which the policy lets transfer and forward.
const MOVER_TOKEN: &str = "mover-token-9876543210";

/// Default allow (as in the quickstart): plain exec runs, every other channel needs a rule.
fn policy(allowed_port: u16) -> FnPolicy {
    let text = format!(
        r#"
[defaults]
default = "allow"

[[rules]]
id = "movers-transfer"
reason = "movers may open shells and move files"
verdict = "allow"
binary = "raw"
groups = ["movers"]
ssh = {{ channels = ["shell", "subsystem", "scp", "rsync", "git"], subsystems = ["sftp"] }}

[[rules]]
id = "movers-forward-one"
reason = "movers may forward to the one test service"
verdict = "allow"
groups = ["movers"]
ssh = {{ channels = ["direct_tcpip"], destinations = ["127.0.0.1:{allowed_port}"] }}

[[rules]]
id = "movers-env"
reason = "movers may set LC_ variables"
verdict = "allow"
groups = ["movers"]
ssh = {{ channels = ["env"], env = ["LC_*"] }}

# A rule cannot let these through: the engine refuses them whatever it says.
[[rules]]
id = "try-to-allow-the-never-allowed"
verdict = "allow"
ssh = {{ channels = ["tcpip_forward", "agent_forward", "x11"] }}
"#
    );
    let compiled = Arc::new(CompiledPolicy::from_toml(&text, "channels.toml").unwrap());
    FnPolicy::new(move |i, t, op| compiled.decide(i, t, op))
}

fn mover() -> Identity {
    Identity::new("mover-1", "test", AuthMethod::Test).with_group("movers")
}

/// A loopback service answering `hello from <port>` to every connection.
async fn hello_service() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = gatehouse_testkit::net::bind_loopback_tokio().await;
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(format!("hello from {port}\n").as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (port, task)
}

struct Who<'a> {
    gw: &'a Gateway,
    askpass: std::path::PathBuf,
}

impl Who<'_> {
    /// `ssh` options with LogLevel INFO: OpenSSH logs a channel-open failure's text at INFO.
    fn options(&self) -> Vec<String> {
        self.gw
            .ssh_options()
            .into_iter()
            .map(|o| {
                if o == "LogLevel=ERROR" {
                    "LogLevel=INFO".into()
                } else {
                    o
                }
            })
            .chain(["-o".to_string(), "BatchMode=no".to_string()])
            .collect()
    }

    fn command(&self, program: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(program);
        cmd.env("SSH_ASKPASS", &self.askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":0");
        cmd
    }

    async fn run(&self, program: &str, args: &[String], stdin: &[u8]) -> Run {
        let mut cmd = self.command(program);
        cmd.args(args);
        run_prepared(cmd, stdin).await
    }

    async fn ssh(&self, extra: &[&str], command: Option<&str>, stdin: &[u8]) -> Run {
        let mut args = self.options();
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(format!("{TARGET}@127.0.0.1"));
        if let Some(c) = command {
            args.push(c.to_string());
        }
        self.run("ssh", &args, stdin).await
    }

    async fn sftp_get(&self, remote: &std::path::Path, local: &std::path::Path) -> Run {
        let mut args: Vec<String> = self.options();
        args[0] = "-P".into();
        args.extend(["-b".into(), "-".into(), format!("{TARGET}@127.0.0.1")]);
        let batch = format!("get {} {}\n", remote.display(), local.display());
        self.run("sftp", &args, batch.as_bytes()).await
    }

    async fn scp(&self, legacy: bool, remote: &std::path::Path, local: &std::path::Path) -> Run {
        let mut args: Vec<String> = self.options();
        args[0] = "-P".into();
        if legacy {
            args.push("-O".into());
        }
        args.push(format!("{TARGET}@127.0.0.1:{}", remote.display()));
        args.push(local.display().to_string());
        self.run("scp", &args, b"").await
    }

    async fn rsync(&self, remote: &std::path::Path, local: &std::path::Path) -> Run {
        let args = vec![
            "-a".to_string(),
            "-e".into(),
            format!("ssh {}", self.options().join(" ")),
            format!("{TARGET}@127.0.0.1:{}/", remote.display()),
            format!("{}/", local.display()),
        ];
        self.run("rsync", &args, b"").await
    }

    async fn git_clone(&self, repo: &std::path::Path, local: &std::path::Path) -> Run {
        let mut cmd = self.command("git");
        cmd.env("GIT_TERMINAL_PROMPT", "0")
            .arg("clone")
            .arg(format!(
                "ssh://{TARGET}@127.0.0.1:{}{}",
                self.gw.addr.port(),
                repo.display()
            ))
            .arg(local);
        // The port is in the URL: drop `-p` from the ssh options git passes.
        let opts: Vec<String> = self.options().into_iter().skip(2).collect();
        cmd.env("GIT_SSH_COMMAND", format!("ssh {}", opts.join(" ")));
        run_prepared(cmd, b"").await
    }

    /// `ssh -N -L socket:127.0.0.1:port`, then one connection through it: what came back,
    /// and the client's stderr.
    async fn local_forward(&self, port: u16) -> (String, String) {
        let sock = self
            .gw
            .dir
            .path()
            .join(format!("fwd-{port}-{}.sock", rand_suffix()));
        let spec = format!("{}:127.0.0.1:{port}", sock.display());
        self.forward_through(&["-N", "-L", &spec], |_| async {
            let mut s = None;
            for _ in 0..200 {
                if let Ok(c) = tokio::net::UnixStream::connect(&sock).await {
                    s = Some(c);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let mut s = s.expect("ssh -L listens on its socket");
            let mut out = String::new();
            let _ = tokio::time::timeout(LIMIT, s.read_to_string(&mut out)).await;
            out
        })
        .await
    }

    /// `ssh -N -L socket:/remote/socket` (a `direct-streamlocal` channel), then one
    /// connection through it.
    async fn socket_forward(&self, remote: &std::path::Path) -> (String, String) {
        let sock = self
            .gw
            .dir
            .path()
            .join(format!("fwd-unix-{}.sock", rand_suffix()));
        let spec = format!("{}:{}", sock.display(), remote.display());
        self.forward_through(&["-N", "-L", &spec], |_| async {
            let mut s = None;
            for _ in 0..200 {
                if let Ok(c) = tokio::net::UnixStream::connect(&sock).await {
                    s = Some(c);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let mut s = s.expect("ssh -L listens on its socket");
            let mut out = String::new();
            let _ = tokio::time::timeout(LIMIT, s.read_to_string(&mut out)).await;
            out
        })
        .await
    }

    /// `ssh -N -D port`, then a SOCKS5 CONNECT to 127.0.0.1:`dest`.
    async fn dynamic_forward(&self, dest: u16) -> (String, String) {
        let socks_port = {
            // ssh needs a port number for -D; take one the kernel just handed out.
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let spec = format!("127.0.0.1:{socks_port}");
        self.forward_through(&["-N", "-D", &spec], |_| async move {
            let mut s = None;
            for _ in 0..200 {
                if let Ok(c) = tokio::net::TcpStream::connect(("127.0.0.1", socks_port)).await {
                    s = Some(c);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let mut s = s.expect("ssh -D listens");
            s.write_all(&[5, 1, 0]).await.unwrap();
            let mut hello = [0u8; 2];
            s.read_exact(&mut hello).await.unwrap();
            let mut req = vec![5, 1, 0, 1, 127, 0, 0, 1];
            req.extend_from_slice(&dest.to_be_bytes());
            s.write_all(&req).await.unwrap();
            let mut reply = [0u8; 10];
            let mut out = String::new();
            if tokio::time::timeout(LIMIT, s.read_exact(&mut reply))
                .await
                .is_ok_and(|r| r.is_ok())
                && reply[1] == 0
            {
                let _ = tokio::time::timeout(LIMIT, s.read_to_string(&mut out)).await;
            } else {
                out = format!("socks refused ({})", reply[1]);
            }
            out
        })
        .await
    }

    async fn forward_through<F, Fut>(&self, extra: &[&str], client: F) -> (String, String)
    where
        F: FnOnce(()) -> Fut,
        Fut: std::future::Future<Output = String>,
    {
        let mut cmd = self.command("ssh");
        cmd.args(self.options())
            .args(extra)
            .arg(format!("{TARGET}@127.0.0.1"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("ssh");
        let got = client(()).await;
        // Give the client a moment to log the channel-open failure, then stop it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = child.start_kill();
        let out = gatehouse_testkit::within(LIMIT, child.wait_with_output())
            .await
            .unwrap();
        (got, String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn rand_suffix() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_channel_type_is_refused_by_default_with_its_reason_and_allowed_by_a_rule() {
    let (allowed_port, _svc1) = hello_service().await;
    let (other_port, _svc2) = hello_service().await;
    let gw = start(Options {
        policy: Some(policy(allowed_port)),
        authenticator: Some(
            StaticAuthenticator::new()
                .with_token(TOKEN, agent())
                .with_token(MOVER_TOKEN, mover()),
        ),
        ..Options::default()
    })
    .await;
    let mover_askpass = gw.dir.path().join("mover-askpass.sh");
    write_script(
        &mover_askpass,
        &format!("#!/bin/sh\necho '{MOVER_TOKEN}'\n"),
    );
    let agent = Who {
        gw: &gw,
        askpass: gw.askpass.clone(),
    };
    let mover = Who {
        gw: &gw,
        askpass: mover_askpass,
    };

    // Files on the target to fetch.
    let src = gw.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("data.txt"), "the payload\n").unwrap();
    let repo = gw.dir.path().join("repo.git");
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(args)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
    };
    let work = gw.dir.path().join("work");
    git(&["init", "-q", work.to_str().unwrap()]);
    std::fs::write(work.join("README"), "repo\n").unwrap();
    git(&["-C", work.to_str().unwrap(), "add", "README"]);
    git(&["-C", work.to_str().unwrap(), "commit", "-q", "-m", "one"]);
    git(&[
        "clone",
        "-q",
        "--bare",
        work.to_str().unwrap(),
        repo.to_str().unwrap(),
    ]);
    let out_dir = |name: &str| gw.dir.path().join(format!("out-{name}"));

    // --- refused by default, the reason visible to the client ---
    let denied = "denied by rule 'ssh-channel-not-allowed'";
    // Plain exec still follows the (allow) default.
    let run = agent.ssh(&[], Some("echo plain"), b"").await;
    assert_eq!(run.status, Some(0), "{run:?}");
    // A shell (`ssh -tt`, no command).
    let run = agent.ssh(&["-tt"], None, b"").await;
    assert_eq!(run.status, Some(126), "{run:?}");
    let all = format!("{}{}", run.stdout_text(), run.stderr);
    assert!(all.contains(&format!("shell {denied}")), "{all}");
    // sftp: the reason, not "subsystem request failed".
    let run = agent
        .sftp_get(&src.join("data.txt"), &out_dir("sftp").join("x"))
        .await;
    assert_ne!(run.status, Some(0), "{run:?}");
    assert!(
        run.stderr.contains(&format!("subsystem 'sftp' {denied}")),
        "{}",
        run.stderr
    );
    // scp (SFTP protocol, the default of OpenSSH 9) and scp -O (the scp protocol over exec).
    for legacy in [false, true] {
        let dst = out_dir(&format!("scp-{legacy}"));
        let run = agent.scp(legacy, &src.join("data.txt"), &dst).await;
        assert_ne!(run.status, Some(0), "{run:?}");
        let want = if legacy {
            format!("scp transfer {denied}")
        } else {
            format!("subsystem 'sftp' {denied}")
        };
        assert!(
            run.stderr.contains(&want),
            "scp -O={legacy}: {}",
            run.stderr
        );
        assert!(!dst.exists());
    }
    // rsync and git: their server sides are transfers, not plain commands.
    let dst = out_dir("rsync");
    let run = agent.rsync(&src, &dst).await;
    assert_ne!(run.status, Some(0), "{run:?}");
    assert!(
        run.stderr.contains(&format!("rsync transfer {denied}")),
        "{}",
        run.stderr
    );
    let dst = out_dir("git");
    let run = agent.git_clone(&repo, &dst).await;
    assert_ne!(run.status, Some(0), "{run:?}");
    assert!(
        run.stderr.contains(&format!("git transfer {denied}")),
        "{}",
        run.stderr
    );
    // -L and -D: the channel-open failure carries the reason.
    let (got, stderr) = agent.local_forward(allowed_port).await;
    assert!(!got.contains("hello"), "{got}");
    assert!(
        stderr.contains(&format!("forwarding to 127.0.0.1:{allowed_port} {denied}")),
        "{stderr}"
    );
    let (got, stderr) = agent.dynamic_forward(allowed_port).await;
    assert!(!got.contains("hello"), "{got}");
    assert!(stderr.contains(denied), "{stderr}");

    // --- allowed by a rule (the `movers` group) ---
    let run = mover
        .ssh(&["-tt"], None, b"echo shell-$((6*7)); exit 0\n")
        .await;
    assert_eq!(run.status, Some(0), "{run:?}");
    assert!(run.stdout_text().contains("shell-42"), "{run:?}");
    let dst = out_dir("m-sftp");
    std::fs::create_dir_all(&dst).unwrap();
    let run = mover
        .sftp_get(&src.join("data.txt"), &dst.join("data.txt"))
        .await;
    assert_eq!(run.status, Some(0), "{run:?}");
    assert_eq!(
        std::fs::read_to_string(dst.join("data.txt")).unwrap(),
        "the payload\n"
    );
    for legacy in [false, true] {
        let dst = out_dir(&format!("m-scp-{legacy}"));
        let run = mover.scp(legacy, &src.join("data.txt"), &dst).await;
        assert_eq!(run.status, Some(0), "scp -O={legacy}: {run:?}");
        assert_eq!(std::fs::read_to_string(&dst).unwrap(), "the payload\n");
    }
    let dst = out_dir("m-rsync");
    let run = mover.rsync(&src, &dst).await;
    assert_eq!(run.status, Some(0), "{run:?}");
    assert_eq!(
        std::fs::read_to_string(dst.join("data.txt")).unwrap(),
        "the payload\n"
    );
    let dst = out_dir("m-git");
    let run = mover.git_clone(&repo, &dst).await;
    assert_eq!(run.status, Some(0), "{run:?}");
    assert_eq!(
        std::fs::read_to_string(dst.join("README")).unwrap(),
        "repo\n"
    );
    let (got, stderr) = mover.local_forward(allowed_port).await;
    assert_eq!(got, format!("hello from {allowed_port}\n"), "{stderr}");
    let (got, _) = mover.dynamic_forward(allowed_port).await;
    assert_eq!(got, format!("hello from {allowed_port}\n"));
    // ...to that one destination only.
    let (got, stderr) = mover.local_forward(other_port).await;
    assert!(!got.contains("hello"), "{got}");
    assert!(
        stderr.contains(&format!("forwarding to 127.0.0.1:{other_port} {denied}")),
        "{stderr}"
    );

    // --- never allowed, whatever the policy says ---
    // -R: a global request has no room for a reason; the client says the forward failed and
    // the record says why.
    let run = mover
        .ssh(
            &[
                "-N",
                "-o",
                "ExitOnForwardFailure=yes",
                "-R",
                "127.0.0.1:0:127.0.0.1:9",
            ],
            None,
            b"",
        )
        .await;
    assert_eq!(run.status, Some(255), "{run:?}");
    assert!(
        run.stderr.contains("remote port forwarding failed"),
        "{}",
        run.stderr
    );
    // -A: the target never sees an agent.
    let agent_sock = gw.dir.path().join("agent.sock");
    let mut ssh_agent = tokio::process::Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&agent_sock)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if agent_sock.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut cmd = mover.command("ssh");
    cmd.env("SSH_AUTH_SOCK", &agent_sock)
        .args(mover.options())
        .arg("-A")
        .arg(format!("{TARGET}@127.0.0.1"))
        .arg("env");
    let run = run_prepared(cmd, b"").await;
    let _ = ssh_agent.start_kill();
    let _ = ssh_agent.wait().await;
    assert_eq!(run.status, Some(0), "{run:?}");
    assert!(!run.stdout_text().contains("SSH_AUTH_SOCK"), "{run:?}");

    let recorder = gw.shutdown().await;
    let ops = operations(&recorder);
    let refused = |pred: &dyn Fn(&SshOperation) -> bool| {
        ops.iter().any(|(op, d)| {
            matches!(op, Operation::Ssh(s) if pred(s))
                && d.verdict == Verdict::Deny
                && d.rule_id == "ssh-never-allowed"
        })
    };
    assert!(
        refused(&|s| matches!(s, SshOperation::TcpipForward { .. })),
        "{ops:?}"
    );
    assert!(
        refused(&|s| matches!(s, SshOperation::AgentForward)),
        "{ops:?}"
    );
    assert!(ops.iter().any(|(op, d)| matches!(
        op,
        Operation::Ssh(SshOperation::FileTransfer { tool, .. }) if tool == "git"
    ) && d.verdict == Verdict::Allow));
}

async fn login(addr: std::net::SocketAddr, token: &str) -> russh::client::Handle<RusshClient> {
    let config = Arc::new(russh::client::Config::default());
    let mut h = russh::client::connect(config, addr, RusshClient)
        .await
        .unwrap();
    assert!(
        h.authenticate_password(TARGET, token)
            .await
            .unwrap()
            .success()
    );
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_and_x11_requests_are_operations_with_recorded_reasons() {
    let gw = start(Options {
        policy: Some(policy(1)),
        authenticator: Some(
            StaticAuthenticator::new()
                .with_token(TOKEN, agent())
                .with_token(MOVER_TOKEN, mover()),
        ),
        ..Options::default()
    })
    .await;
    for (token, want_env) in [(TOKEN, false), (MOVER_TOKEN, true)] {
        let client = login(gw.addr, token).await;
        let mut ch = client.channel_open_session().await.unwrap();
        ch.set_env(true, "LC_GATEHOUSE", "yes").await.unwrap();
        ch.request_x11(true, false, "MIT-MAGIC-COOKIE-1", "00112233", 0)
            .await
            .unwrap();
        ch.exec(true, "env").await.unwrap();
        let mut out = Vec::new();
        let mut replies = Vec::new();
        while let Some(msg) = gatehouse_testkit::within(LIMIT, ch.wait()).await {
            match msg {
                russh::ChannelMsg::Data { data } => out.extend_from_slice(&data),
                russh::ChannelMsg::Success => replies.push(true),
                russh::ChannelMsg::Failure => replies.push(false),
                russh::ChannelMsg::Close => break,
                _ => {}
            }
        }
        let env = String::from_utf8_lossy(&out);
        assert_eq!(env.contains("LC_GATEHOUSE=yes"), want_env, "{env}");
        assert!(!env.contains("DISPLAY="), "{env}");
        // env (allowed only for movers), x11 (never), exec (accepted).
        assert_eq!(replies, [want_env, false, true], "{token}");
        let _ = client
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }
    let recorder = gw.shutdown().await;
    let ops = operations(&recorder);
    let env_decisions: Vec<(&str, Verdict)> = ops
        .iter()
        .filter_map(|(op, d)| match op {
            Operation::Ssh(SshOperation::Env { name }) if name == "LC_GATEHOUSE" => {
                Some((d.rule_id.as_str(), d.verdict))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        env_decisions,
        [
            ("ssh-channel-not-allowed", Verdict::Deny),
            ("movers-env", Verdict::Allow)
        ]
    );
    let x11: Vec<&Decision> = ops
        .iter()
        .filter(|(op, _)| matches!(op, Operation::Ssh(SshOperation::X11)))
        .map(|(_, d)| d)
        .collect();
    assert_eq!(x11.len(), 2, "{ops:?}");
    assert!(x11.iter().all(|d| d.verdict == Verdict::Deny));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_forwarding_is_refused_with_its_reason_whatever_the_policy() {
    let gw = start(Options {
        policy: Some(FnPolicy::new(|_, _, _| {
            Decision::allow("everything", "allowed")
        })),
        ..Options::default()
    })
    .await;
    // A Unix socket on the target that would answer.
    let remote = gw.dir.path().join(format!("target-{}.sock", rand_suffix()));
    let listener = tokio::net::UnixListener::bind(&remote).unwrap();
    let _svc = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s.write_all(b"secret service\n").await;
        }
    });
    let who = Who {
        gw: &gw,
        askpass: gw.askpass.clone(),
    };
    let (got, stderr) = who.socket_forward(&remote).await;
    assert_eq!(got, "", "{stderr}");
    assert!(
        stderr.contains("administratively prohibited: gatehouse: forwarding to the Unix socket"),
        "{stderr}"
    );
    // One failure per open: OpenSSH stays connected (a second failure would make it disconnect).
    assert!(!stderr.contains("nonexistent channel"), "{stderr}");
    let recorder = gw.shutdown().await;
    let ops = operations(&recorder);
    assert!(
        ops.iter().any(|(op, d)| matches!(
            op,
            Operation::Ssh(SshOperation::DirectStreamlocal { socket_path })
                if socket_path == &remote.display().to_string()
        ) && d.verdict == Verdict::Deny),
        "{ops:?}"
    );
}

/// `ssh -w any` (a `tun@openssh.com` channel) as the master of a shared connection: the
/// refusal's reason reaches the client, the connection stays up for an exec through it, and the
/// refusal is in the audit log. The client opens a local tun device before it asks, so this
/// needs root and `/dev/net/tun` (as the tests have here and in CI).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tun_forwarding_is_refused_with_its_reason_and_the_connection_stays_usable() {
    use tokio::io::AsyncBufReadExt;

    // The OpenSSH client cannot even ask without a local tun device: say so loudly and skip
    // rather than fail on machines without one (CI and these machines have it).
    if !std::path::Path::new("/dev/net/tun").exists() {
        eprintln!("SKIPPED: no /dev/net/tun, so ssh -w cannot be tried here");
        return;
    }
    // The real engine, exec allowed by default, a rule trying to allow the never-allowed.
    let gw = start(Options {
        policy: Some(policy(1)),
        ..Options::default()
    })
    .await;
    let who = Who {
        gw: &gw,
        askpass: gw.askpass.clone(),
    };
    let control = gw.dir.path().join(format!("ctl-{}.sock", rand_suffix()));
    let control_opt = format!("ControlPath={}", control.display());
    let mut master = who.command("ssh");
    master
        .args(who.options())
        .args(["-M", "-o", &control_opt, "-o", "ControlPersist=no"])
        .args(["-w", "any", "-o", "ExitOnForwardFailure=no", "-N"])
        .arg(format!("{TARGET}@127.0.0.1"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut master = master.spawn().expect("ssh");
    let mut lines = tokio::io::BufReader::new(master.stderr.take().unwrap()).lines();
    let mut stderr = String::new();
    // The master logs the channel-open failure (at INFO) when the gateway answers.
    gatehouse_testkit::within(LIMIT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            stderr.push_str(&line);
            stderr.push('\n');
            if line.contains("open failed") {
                return;
            }
        }
    })
    .await;
    assert!(
        !stderr.contains("Tunnel device open failed"),
        "the ssh client could not open a local tun device (needs root and /dev/net/tun): {stderr}"
    );
    assert!(
        stderr.contains(
            "open failed: administratively prohibited: gatehouse: tun forwarding (ssh -w) is not allowed by the gateway"
        ),
        "{stderr}"
    );

    // The same connection carries an exec afterwards.
    let exec = who
        .ssh(
            &["-o", &control_opt, "-o", "ControlMaster=no"],
            Some("echo still connected"),
            b"",
        )
        .await;
    let _ = master.start_kill();
    let rest = gatehouse_testkit::within(LIMIT, async {
        let mut rest = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            rest.push_str(&line);
            rest.push('\n');
        }
        rest
    })
    .await;
    let _ = gatehouse_testkit::within(LIMIT, master.wait()).await;
    stderr.push_str(&rest);
    assert_eq!(
        exec.stdout_text(),
        "still connected\n",
        "{exec:?}\n{stderr}"
    );
    assert_eq!(exec.status, Some(0), "{exec:?}\n{stderr}");
    assert!(!stderr.contains("nonexistent channel"), "{stderr}");

    let recorder = gw.shutdown().await;
    let events = recorder.events();
    let session_of = |want: &dyn Fn(&Operation) -> bool| {
        events
            .iter()
            .filter_map(|e| match &e.body {
                EventBody::Operation {
                    operation,
                    decision,
                    ..
                } if want(operation) => Some((e.session.clone(), decision.clone())),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let tun = session_of(&|op| {
        matches!(op, Operation::Ssh(SshOperation::OtherChannel { channel_type })
            if channel_type == "tun@openssh.com")
    });
    let exec_ops = session_of(&|op| {
        matches!(op, Operation::Ssh(SshOperation::Exec(c))
            if c.command_line == "echo still connected")
    });
    assert_eq!(tun.len(), 1, "{events:?}");
    let (tun_session, decision) = &tun[0];
    // Refused by the engine whatever the rules say.
    assert_eq!(decision.verdict, Verdict::Deny, "{decision:?}");
    assert_eq!(decision.rule_id, "ssh-never-allowed", "{decision:?}");
    assert_eq!(exec_ops.len(), 1, "{events:?}");
    assert_eq!(&exec_ops[0].0, tun_session, "one connection: {events:?}");
}
