//! SSH channels other than exec are refused unless a rule names them, whatever the default;
//! remote forwarding, agent forwarding and X11 are refused whatever a rule says.

use gatehouse_core::{
    AuthMethod, ExecCommand, Identity, Operation, Policy, Protocol, SshOperation, Target, Verdict,
};
use gatehouse_policy::CompiledPolicy;

const POLICY: &str = r#"
[defaults]
default = "allow"

[[rules]]
id = "no-rm"
verdict = "deny"
exec = { program = ["rm"] }

[[rules]]
id = "a-catch-all-allow"
reason = "an allow rule without an ssh section"
verdict = "allow"
groups = ["everyone"]

[[rules]]
id = "movers"
verdict = "allow"
groups = ["movers"]
ssh = { channels = ["shell", "subsystem", "scp", "rsync", "git", "env"], subsystems = ["sftp"], env = ["LC_*"] }

[[rules]]
id = "one-forward"
verdict = "allow"
groups = ["movers"]
ssh = { channels = ["direct_tcpip"], destinations = ["db.internal:5432"] }

[[rules]]
id = "tries-the-impossible"
verdict = "allow"
ssh = { channels = ["tcpip_forward", "agent_forward", "x11"] }
"#;

fn who(group: &str) -> Identity {
    Identity::new("a", "test", AuthMethod::Test)
        .with_group(group)
        .with_group("everyone")
}

fn transfer(line: &str) -> Operation {
    let command = ExecCommand::parse(line);
    let tool = command
        .file_transfer_tool()
        .expect("a transfer")
        .to_string();
    Operation::Ssh(SshOperation::FileTransfer { tool, command })
}

fn decide(group: &str, op: SshOperation) -> (Verdict, String) {
    decide_op(group, Operation::Ssh(op))
}

fn decide_op(group: &str, op: Operation) -> (Verdict, String) {
    let policy = CompiledPolicy::from_toml(POLICY, "ssh.toml").unwrap();
    let d = policy.decide(&who(group), &Target::new("box", Protocol::Ssh), &op);
    (d.verdict, d.rule_id)
}

#[test]
fn channels_are_refused_unless_a_rule_names_them() {
    let denied = (Verdict::Deny, "ssh-channel-not-allowed".to_string());
    let ops = [
        SshOperation::Shell { pty: true },
        SshOperation::Subsystem {
            name: "sftp".into(),
        },
        SshOperation::DirectTcpip {
            host: "db.internal".into(),
            port: 5432,
        },
        SshOperation::Env {
            name: "LC_ALL".into(),
        },
    ];
    for op in ops.clone() {
        // Default allow and a catch-all allow rule do not let a channel through.
        assert_eq!(decide("agents", op.clone()), denied, "{op:?}");
        assert_eq!(decide("movers", op.clone()).0, Verdict::Allow, "{op:?}");
    }
    for line in [
        "scp -f /etc/passwd",
        "rsync --server --sender . x",
        "git-upload-pack 'r'",
    ] {
        assert_eq!(decide_op("agents", transfer(line)), denied, "{line}");
        assert_eq!(
            decide_op("movers", transfer(line)).0,
            Verdict::Allow,
            "{line}"
        );
    }
    // sftp-server run by exec is the sftp subsystem.
    assert_eq!(
        decide_op("agents", transfer("/usr/lib/openssh/sftp-server")),
        denied
    );
    // Plain exec still follows the default.
    let exec = SshOperation::Exec(ExecCommand::parse("ls"));
    assert_eq!(decide("agents", exec).0, Verdict::Allow);
}

#[test]
fn forwards_are_decided_per_destination_and_env_per_name() {
    let fwd = |host: &str, port| SshOperation::DirectTcpip {
        host: host.into(),
        port,
    };
    assert_eq!(decide("movers", fwd("db.internal", 5432)).1, "one-forward");
    assert_eq!(
        decide("movers", fwd("db.internal", 22)).1,
        "ssh-channel-not-allowed"
    );
    assert_eq!(
        decide(
            "movers",
            SshOperation::Env {
                name: "LD_PRELOAD".into()
            }
        )
        .0,
        Verdict::Deny
    );
    let err = CompiledPolicy::from_toml(
        "[[rules]]\nid = \"x\"\nverdict = \"allow\"\nssh = { channels = [\"direct_tcpip\"] }\n",
        "p.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("ssh.destinations"), "{err}");
}

#[test]
fn remote_agent_x11_unix_socket_and_tun_forwarding_are_never_allowed() {
    for op in [
        SshOperation::TcpipForward {
            address: "127.0.0.1".into(),
            port: 0,
        },
        SshOperation::AgentForward,
        SshOperation::X11,
        SshOperation::DirectStreamlocal {
            socket_path: "/run/docker.sock".into(),
        },
        SshOperation::OtherChannel {
            channel_type: "tun@openssh.com".into(),
        },
    ] {
        assert_eq!(
            decide("movers", op.clone()),
            (Verdict::Deny, "ssh-never-allowed".to_string()),
            "{op:?}"
        );
    }
}

#[test]
fn a_transfer_inside_a_longer_line_is_also_decided_as_exec() {
    assert_eq!(
        decide_op("movers", transfer("rm -rf /srv; scp -f x")).1,
        "no-rm"
    );
    assert_eq!(decide_op("movers", transfer("scp -f x")).0, Verdict::Allow);
}
