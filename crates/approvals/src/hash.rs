//! Canonical operation hash: the SHA-256 an approval is bound to.
//!
//! Promise: two operations hash identically exactly when every field that can change what runs is
//! identical (SQL text, bound parameters, sub-protocol and session settings; the exec command line
//! and its parsed argv; HTTP method, canonical path, query and body hash; every Kubernetes request
//! field). The encoding is injective: every value is length-prefixed and every field is named, so
//! no two different operations produce the same byte string.
//!
//! # Encoding (version 1)
//!
//! The hash is `hex(sha256(E))`, lower case, where `E` starts with the domain tag
//! `b"gatehouse/operation-hash/v1\0"` followed by the operation's fields:
//!
//! - a *string* is its UTF-8 length as an 8-byte big-endian integer, then its bytes;
//! - a *field* is its name as a string, then its value;
//! - a *bool* is one byte, `0` or `1`; a *u32* is 4 bytes big-endian;
//! - an *option* is `0` for none, or `1` followed by the value;
//! - a *list* is its length as an 8-byte big-endian integer, then each element.
//!
//! Per kind, the first field is `kind`:
//!
//! | kind | fields, in order |
//! |---|---|
//! | `sql` | `text`, `parameters` (list of option of string), `protocol` (`simple`, `extended`, `function_call`), `standard_conforming_strings`, `client_encoding` |
//! | `ssh.exec` | `command` (see below) |
//! | `ssh.shell` | `pty` |
//! | `ssh.subsystem` | `name` |
//! | `ssh.direct_tcpip` | `host`, `port` |
//! | `ssh.tcpip_forward` | `address`, `port` |
//! | `ssh.agent_forward` | (none) |
//! | `http` | `method`, `path`, `query` (option), `body_sha256` (option) |
//! | `kubernetes` | `verb`, `group`, `version`, `resource`, `subresource`, `namespace`, `name`, `path` (options), `command` (option of a command) |
//!
//! A *command* is the fields `command_line`, `argv` (list of strings), `commands` (list of lists of
//! strings), `has_expansions`, `has_metacharacters`, `has_assignments`, `incomplete`, `unwrapped`.
//!
//! Kinds added to the core vocabulary after version 1 hash as kind `other` with one field `debug`
//! (the value's `Debug` text) until they get their own row here.

use gatehouse_core::shell::ShellCommand;
use gatehouse_core::{
    ExecCommand, HttpOperation, KubeOperation, Operation, SqlOperation, SqlProtocol, SshOperation,
};
use sha2::{Digest, Sha256};

/// Domain tag that opens every encoding; bump the version when the encoding changes.
pub const DOMAIN_TAG: &[u8] = b"gatehouse/operation-hash/v1\0";

/// The lower-case hex SHA-256 of the operation's canonical encoding.
pub fn operation_hash(operation: &Operation) -> String {
    let mut hasher = Sha256::new();
    {
        let mut encoder = Encoder {
            sink: &mut HashSink(&mut hasher),
        };
        encoder.operation(operation);
    }
    hex::encode(hasher.finalize())
}

/// The canonical encoding itself (what [`operation_hash`] hashes), for inspection and tests.
pub fn canonical_encoding(operation: &Operation) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    {
        let mut encoder = Encoder { sink: &mut out };
        encoder.operation(operation);
    }
    out
}

/// Where encoded bytes go: straight into the hasher (no allocation) or into a buffer.
trait ByteSink {
    fn put(&mut self, bytes: &[u8]);
}

impl ByteSink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

struct HashSink<'a>(&'a mut Sha256);

impl ByteSink for HashSink<'_> {
    fn put(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

struct Encoder<'a> {
    sink: &'a mut dyn ByteSink,
}

impl Encoder<'_> {
    fn len(&mut self, n: usize) {
        self.sink.put(&(n as u64).to_be_bytes());
    }

    fn string(&mut self, s: &str) {
        self.len(s.len());
        self.sink.put(s.as_bytes());
    }

    fn name(&mut self, name: &str) {
        self.string(name);
    }

    fn str_field(&mut self, name: &str, value: &str) {
        self.name(name);
        self.string(value);
    }

    fn bool_field(&mut self, name: &str, value: bool) {
        self.name(name);
        self.sink.put(&[u8::from(value)]);
    }

    fn u32_field(&mut self, name: &str, value: u32) {
        self.name(name);
        self.sink.put(&value.to_be_bytes());
    }

    fn opt_str_field(&mut self, name: &str, value: Option<&str>) {
        self.name(name);
        match value {
            None => self.sink.put(&[0]),
            Some(v) => {
                self.sink.put(&[1]);
                self.string(v);
            }
        }
    }

    fn strings(&mut self, values: &[String]) {
        self.len(values.len());
        for v in values {
            self.string(v);
        }
    }

    fn operation(&mut self, operation: &Operation) {
        self.sink.put(DOMAIN_TAG);
        match operation {
            Operation::Sql(op) => self.sql(op),
            Operation::Ssh(op) => self.ssh(op),
            Operation::Http(op) => self.http(op),
            Operation::Kubernetes(op) => self.kubernetes(op),
            other => self.other(other),
        }
    }

    fn other(&mut self, value: &dyn std::fmt::Debug) {
        self.str_field("kind", "other");
        self.str_field("debug", &format!("{value:?}"));
    }

    fn sql(&mut self, op: &SqlOperation) {
        self.str_field("kind", "sql");
        self.str_field("text", &op.text);
        self.name("parameters");
        self.len(op.parameters.len());
        for p in &op.parameters {
            match p {
                None => self.sink.put(&[0]),
                Some(v) => {
                    self.sink.put(&[1]);
                    self.string(v);
                }
            }
        }
        let protocol = match op.protocol {
            SqlProtocol::Simple => "simple".to_string(),
            SqlProtocol::Extended => "extended".to_string(),
            SqlProtocol::FunctionCall => "function_call".to_string(),
            other => format!("{other:?}"),
        };
        self.str_field("protocol", &protocol);
        self.bool_field(
            "standard_conforming_strings",
            op.settings.standard_conforming_strings,
        );
        self.str_field("client_encoding", &op.settings.client_encoding);
    }

    fn ssh(&mut self, op: &SshOperation) {
        match op {
            SshOperation::Exec(cmd) => {
                self.str_field("kind", "ssh.exec");
                self.name("command");
                self.command(cmd);
            }
            SshOperation::Shell { pty } => {
                self.str_field("kind", "ssh.shell");
                self.bool_field("pty", *pty);
            }
            SshOperation::Subsystem { name } => {
                self.str_field("kind", "ssh.subsystem");
                self.str_field("name", name);
            }
            SshOperation::DirectTcpip { host, port } => {
                self.str_field("kind", "ssh.direct_tcpip");
                self.str_field("host", host);
                self.u32_field("port", *port);
            }
            SshOperation::TcpipForward { address, port } => {
                self.str_field("kind", "ssh.tcpip_forward");
                self.str_field("address", address);
                self.u32_field("port", *port);
            }
            SshOperation::AgentForward => {
                self.str_field("kind", "ssh.agent_forward");
            }
            SshOperation::FileTransfer { tool, command } => {
                self.str_field("kind", "ssh.file_transfer");
                self.str_field("tool", tool);
                self.name("command");
                self.command(command);
            }
            SshOperation::Env { name } => {
                self.str_field("kind", "ssh.env");
                self.str_field("name", name);
            }
            SshOperation::X11 => {
                self.str_field("kind", "ssh.x11");
            }
            other => self.other(other),
        }
    }

    fn command(&mut self, cmd: &ExecCommand) {
        self.str_field("command_line", &cmd.command_line);
        let ShellCommand {
            argv,
            commands,
            has_expansions,
            has_metacharacters,
            has_assignments,
            incomplete,
            unwrapped,
        } = &cmd.parsed;
        self.name("argv");
        self.strings(argv);
        self.name("commands");
        self.len(commands.len());
        for c in commands {
            self.strings(c);
        }
        self.bool_field("has_expansions", *has_expansions);
        self.bool_field("has_metacharacters", *has_metacharacters);
        self.bool_field("has_assignments", *has_assignments);
        self.bool_field("incomplete", *incomplete);
        self.bool_field("unwrapped", *unwrapped);
        // Only when present, so that every earlier hash stays what it was.
        if !cmd.env.is_empty() {
            self.name("env");
            self.len(cmd.env.len());
            for (name, value) in &cmd.env {
                self.strings(&[name.clone(), value.clone()]);
            }
        }
    }

    fn http(&mut self, op: &HttpOperation) {
        self.str_field("kind", "http");
        self.str_field("method", &op.method);
        self.str_field("path", &op.path);
        self.opt_str_field("query", op.query.as_deref());
        self.opt_str_field("body_sha256", op.body_sha256.as_deref());
    }

    fn kubernetes(&mut self, op: &KubeOperation) {
        let KubeOperation {
            verb,
            group,
            version,
            resource,
            subresource,
            namespace,
            name,
            path,
            command,
        } = op;
        self.str_field("kind", "kubernetes");
        self.str_field("verb", verb);
        self.str_field("group", group);
        self.str_field("version", version);
        self.str_field("resource", resource);
        self.opt_str_field("subresource", subresource.as_deref());
        self.opt_str_field("namespace", namespace.as_deref());
        self.opt_str_field("name", name.as_deref());
        self.opt_str_field("path", path.as_deref());
        self.name("command");
        match command {
            None => self.sink.put(&[0]),
            Some(cmd) => {
                self.sink.put(&[1]);
                self.command(cmd);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_core::SqlSessionSettings;
    use proptest::prelude::*;

    fn sql(text: &str, params: Vec<Option<String>>) -> Operation {
        Operation::Sql(SqlOperation {
            text: text.into(),
            parameters: params,
            protocol: SqlProtocol::Extended,
            settings: SqlSessionSettings::default(),
        })
    }

    #[test]
    fn known_vector_is_stable() {
        // Pinned so that an accidental change of the encoding (which would silently invalidate
        // every grant window in a running fleet) fails here.
        let op = Operation::Sql(SqlOperation::simple("DELETE FROM users"));
        let mut expected = DOMAIN_TAG.to_vec();
        for (k, v) in [("kind", "sql"), ("text", "DELETE FROM users")] {
            expected.extend_from_slice(&(k.len() as u64).to_be_bytes());
            expected.extend_from_slice(k.as_bytes());
            expected.extend_from_slice(&(v.len() as u64).to_be_bytes());
            expected.extend_from_slice(v.as_bytes());
        }
        expected.extend_from_slice(&10u64.to_be_bytes());
        expected.extend_from_slice(b"parameters");
        expected.extend_from_slice(&0u64.to_be_bytes());
        expected.extend_from_slice(&8u64.to_be_bytes());
        expected.extend_from_slice(b"protocol");
        expected.extend_from_slice(&6u64.to_be_bytes());
        expected.extend_from_slice(b"simple");
        expected.extend_from_slice(&27u64.to_be_bytes());
        expected.extend_from_slice(b"standard_conforming_strings");
        expected.push(1);
        expected.extend_from_slice(&15u64.to_be_bytes());
        expected.extend_from_slice(b"client_encoding");
        expected.extend_from_slice(&4u64.to_be_bytes());
        expected.extend_from_slice(b"UTF8");
        assert_eq!(canonical_encoding(&op), expected);
        assert_eq!(operation_hash(&op), hex::encode(Sha256::digest(&expected)));
    }

    #[test]
    fn parameters_are_not_confusable_by_concatenation_or_null() {
        let a = sql("SELECT $1, $2", vec![Some("ab".into()), Some("c".into())]);
        let b = sql("SELECT $1, $2", vec![Some("a".into()), Some("bc".into())]);
        let c = sql("SELECT $1, $2", vec![Some("abc".into()), None]);
        let d = sql(
            "SELECT $1, $2",
            vec![Some("abc".into()), Some(String::new())],
        );
        let hashes = [a, b, c, d].map(|op| operation_hash(&op));
        for i in 0..hashes.len() {
            for j in (i + 1)..hashes.len() {
                assert_ne!(hashes[i], hashes[j], "{i} vs {j}");
            }
        }
    }

    #[test]
    fn simple_and_extended_protocol_differ() {
        let mut simple = SqlOperation::simple("SELECT 1");
        let ext = Operation::Sql(SqlOperation {
            protocol: SqlProtocol::Extended,
            ..simple.clone()
        });
        assert_ne!(
            operation_hash(&Operation::Sql(simple.clone())),
            operation_hash(&ext)
        );
        simple.settings.standard_conforming_strings = false;
        assert_ne!(
            operation_hash(&Operation::Sql(simple)),
            operation_hash(&Operation::Sql(SqlOperation::simple("SELECT 1")))
        );
    }

    #[test]
    fn http_query_absent_differs_from_empty() {
        let base = HttpOperation {
            method: "DELETE".into(),
            path: "/v1/users".into(),
            query: None,
            body_sha256: None,
        };
        let empty = HttpOperation {
            query: Some(String::new()),
            ..base.clone()
        };
        let body = HttpOperation {
            body_sha256: Some("00".into()),
            ..base.clone()
        };
        let h = |op: &HttpOperation| operation_hash(&Operation::Http(op.clone()));
        assert_ne!(h(&base), h(&empty));
        assert_ne!(h(&base), h(&body));
        assert_eq!(h(&base), h(&base.clone()));
    }

    #[test]
    fn kinds_never_collide() {
        let exec = Operation::Ssh(SshOperation::Exec(ExecCommand::parse("rm -rf /tmp/x")));
        let kube = Operation::Kubernetes(KubeOperation {
            verb: "create".into(),
            resource: "pods".into(),
            subresource: Some("exec".into()),
            command: Some(ExecCommand::parse("rm -rf /tmp/x")),
            ..KubeOperation::default()
        });
        let http = Operation::Http(HttpOperation {
            method: "GET".into(),
            path: "/".into(),
            query: None,
            body_sha256: None,
        });
        let sh = Operation::Ssh(SshOperation::Shell { pty: true });
        let nopty = Operation::Ssh(SshOperation::Shell { pty: false });
        let all = [exec, kube, http, sh, nopty].map(|o| operation_hash(&o));
        let unique: std::collections::BTreeSet<_> = all.iter().collect();
        assert_eq!(unique.len(), all.len());
    }

    fn arb_opt_string() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(".{0,6}")
    }

    fn arb_operation() -> impl Strategy<Value = Operation> {
        let sql = (
            ".{0,12}",
            proptest::collection::vec(arb_opt_string(), 0..4),
            any::<bool>(),
            any::<bool>(),
            prop_oneof![Just("UTF8".to_string()), Just("LATIN1".to_string())],
        )
            .prop_map(|(text, parameters, ext, scs, enc)| {
                Operation::Sql(SqlOperation {
                    text,
                    parameters,
                    protocol: if ext {
                        SqlProtocol::Extended
                    } else {
                        SqlProtocol::Simple
                    },
                    settings: SqlSessionSettings {
                        standard_conforming_strings: scs,
                        client_encoding: enc,
                    },
                })
            });
        let exec = "[a-z '\";$|]{0,12}"
            .prop_map(|line| Operation::Ssh(SshOperation::Exec(ExecCommand::parse(line))));
        let http = (
            prop_oneof![Just("GET"), Just("POST"), Just("DELETE")],
            "/[a-z/]{0,8}",
            arb_opt_string(),
            arb_opt_string(),
        )
            .prop_map(|(m, path, query, body)| {
                Operation::Http(HttpOperation {
                    method: m.to_string(),
                    path,
                    query,
                    body_sha256: body,
                })
            });
        let kube = (
            prop_oneof![Just("get"), Just("delete"), Just("create")],
            "[a-z]{0,3}",
            "[a-z]{0,3}",
            arb_opt_string(),
            arb_opt_string(),
            arb_opt_string(),
            proptest::option::of("[a-z ]{0,6}"),
        )
            .prop_map(|(verb, group, resource, sub, ns, name, cmd)| {
                Operation::Kubernetes(KubeOperation {
                    verb: verb.to_string(),
                    group,
                    version: "v1".into(),
                    resource,
                    subresource: sub,
                    namespace: ns,
                    name,
                    path: None,
                    command: cmd.map(ExecCommand::parse),
                })
            });
        prop_oneof![sql, exec, http, kube]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn equal_iff_operations_equal(a in arb_operation(), b in arb_operation()) {
            prop_assert_eq!(operation_hash(&a) == operation_hash(&b), a == b);
            prop_assert_eq!(operation_hash(&a), operation_hash(&a.clone()));
        }

        #[test]
        fn encoding_equal_iff_operations_equal(a in arb_operation(), b in arb_operation()) {
            prop_assert_eq!(canonical_encoding(&a) == canonical_encoding(&b), a == b);
        }
    }
}
