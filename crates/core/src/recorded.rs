//! The recorded copy of an operation: what the audit log, the approval request and the session
//! recording keep of it, with the free text a caller wrote (a query string, a command line, its
//! argv and environment values, a header value) passed through the masking profile's detectors.
//!
//! Promise: only the copy is masked. The policy, the approval hash and what is forwarded to the
//! target use the real operation; the copy is what people and files see. SQL statements get
//! their copy from the PostgreSQL proxy, which knows where their literals are
//! ([`Operation::recorded_copy`] passes SQL text and parameters through the detectors only).

use crate::masking::{FieldDesc, MaskOutcome};
use crate::operation::{ExecCommand, HttpOperation, KubeOperation, Operation, SshOperation};
use crate::traits::{FieldPlan, Masker};

/// Masks recorded text with one profile's detectors (one plan, reused for every field).
pub struct RecordedText {
    plan: Box<dyn FieldPlan>,
}

impl std::fmt::Debug for RecordedText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordedText").finish_non_exhaustive()
    }
}

impl RecordedText {
    /// The detectors of `profile` (`None`: the default profile).
    pub fn new(masker: &dyn Masker, profile: Option<&str>) -> Self {
        Self {
            plan: masker.plan(&[FieldDesc::text("")], profile),
        }
    }

    /// `text` masked, or `None` when nothing matched. A value the plan can only null is
    /// recorded as `[masked]`.
    pub fn mask(&self, text: &str) -> Option<String> {
        let mut out = Vec::new();
        let mut findings = Vec::new();
        match self.plan.apply(0, text.as_bytes(), &mut out, &mut findings) {
            MaskOutcome::Unchanged => None,
            MaskOutcome::Masked => Some(String::from_utf8_lossy(&out).into_owned()),
            _ => Some("[masked]".to_string()),
        }
    }

    /// `text` masked, or unchanged.
    pub fn text(&self, text: &str) -> String {
        self.mask(text).unwrap_or_else(|| text.to_string())
    }

    /// Masks `text` in place; true when anything matched.
    fn in_place(&self, text: &mut String) -> bool {
        match self.mask(text) {
            Some(m) => {
                *text = m;
                true
            }
            None => false,
        }
    }

    /// A URL query string (`a=b&c=d`) as recorded. Each name and value is masked as written
    /// and, when it is percent-encoded (`carol%40example.net`) or uses `+` for spaces, as it
    /// decodes: a component whose decoded form matched is recorded decoded and masked (with
    /// `%`, `&`, `=`, `+`, `#` and blanks encoded again), so that no encoding carries a
    /// detected value past the detectors.
    pub fn query(&self, query: &str) -> String {
        let mut out = String::with_capacity(query.len());
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            for (j, part) in pair.splitn(2, '=').enumerate() {
                if j > 0 {
                    out.push('=');
                }
                out.push_str(&self.query_component(part));
            }
        }
        out
    }

    fn query_component(&self, raw: &str) -> String {
        if let Some(m) = self.mask(raw) {
            return m;
        }
        let decoded = percent_decode(raw);
        if decoded == raw {
            return raw.to_string();
        }
        match self.mask(&decoded) {
            Some(m) => {
                let mut out = String::with_capacity(m.len());
                for c in m.chars() {
                    match c {
                        '%' | '&' | '=' | '+' | '#' => out.push_str(&format!("%{:02X}", c as u32)),
                        ' ' => out.push('+'),
                        c if c.is_control() || c.is_whitespace() => {
                            let mut buf = [0u8; 4];
                            for b in c.encode_utf8(&mut buf).bytes() {
                                out.push_str(&format!("%{b:02X}"));
                            }
                        }
                        c => out.push(c),
                    }
                }
                out
            }
            None => raw.to_string(),
        }
    }

    /// Masks every string of `value` in place (object keys are kept: they are names such as
    /// header names, not values).
    pub fn json(&self, value: &mut serde_json::Value) {
        match value {
            serde_json::Value::String(s) => {
                self.in_place(s);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(|v| self.json(v)),
            serde_json::Value::Object(m) => m.values_mut().for_each(|v| self.json(v)),
            _ => {}
        }
    }

    /// A command's words as recorded: each word masked; and when the detectors match across
    /// words (a card number written in four groups), the words are recorded as one, masked.
    fn words(&self, words: &mut Vec<String>) {
        let joined = words.join(" ");
        if self.mask(&joined).is_none() {
            return;
        }
        for w in words.iter_mut() {
            self.in_place(w);
        }
        let rejoined = words.join(" ");
        if let Some(m) = self.mask(&rejoined) {
            *words = vec![m];
        }
    }

    /// An exec command as recorded: the command line, every parsed word and every environment
    /// value (and name) masked. The parser's flags are kept as the real command had them.
    pub fn exec(&self, cmd: &ExecCommand) -> ExecCommand {
        let mut out = cmd.clone();
        self.in_place(&mut out.command_line);
        self.words(&mut out.parsed.argv);
        for c in &mut out.parsed.commands {
            self.words(c);
        }
        for (name, value) in &mut out.env {
            self.in_place(name);
            self.in_place(value);
        }
        out
    }
}

/// `+` as a space and `%XX` as the byte, the way HTML forms and most servers read a query;
/// invalid UTF-8 is replaced, a malformed escape kept as written.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An SSH channel type or subsystem name as recorded: OpenSSH's own extension names
/// (`tun@openssh.com`) are protocol vocabulary, kept as they are; anything else passes the
/// detectors.
fn protocol_name(m: &RecordedText, name: &str) -> String {
    let openssh = name.strip_suffix("@openssh.com").is_some_and(|n| {
        !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    });
    if openssh {
        name.to_string()
    } else {
        m.text(name)
    }
}

impl Operation {
    /// The copy of this operation that is recorded and shown to approvers: the caller's free
    /// text through `profile`'s detectors (see the module documentation). HTTP: path and query
    /// string. SSH: the command line, its parsed words and environment values; subsystem,
    /// forwarding, socket, channel and variable names. Kubernetes: object name, path (the
    /// review binding, query included) and exec command. SQL: text and bound parameters
    /// through the detectors (the PostgreSQL proxy builds a stricter copy of its own).
    pub fn recorded_copy(&self, masker: &dyn Masker, profile: Option<&str>) -> Operation {
        let m = RecordedText::new(masker, profile);
        match self {
            Operation::Sql(op) => {
                let mut op = op.clone();
                m.in_place(&mut op.text);
                for p in op.parameters.iter_mut().flatten() {
                    m.in_place(p);
                }
                Operation::Sql(op)
            }
            Operation::Http(op) => Operation::Http(HttpOperation {
                method: op.method.clone(),
                path: m.text(&op.path),
                query: op.query.as_deref().map(|q| m.query(q)),
                body_sha256: op.body_sha256.clone(),
            }),
            Operation::Kubernetes(op) => {
                let mut op: KubeOperation = op.clone();
                if let Some(name) = &mut op.name {
                    m.in_place(name);
                }
                if let Some(path) = &mut op.path {
                    *path = match path.split_once('?') {
                        Some((p, q)) => {
                            // `METHOD /path?query content-type=… body-sha256=…`
                            let (q, rest) = match q.split_once(' ') {
                                Some((q, rest)) => (q, Some(rest)),
                                None => (q, None),
                            };
                            let mut s = format!("{}?{}", m.text(p), m.query(q));
                            if let Some(rest) = rest {
                                s.push(' ');
                                s.push_str(&m.text(rest));
                            }
                            s
                        }
                        None => m.text(path),
                    };
                }
                if let Some(cmd) = &op.command {
                    op.command = Some(m.exec(cmd));
                }
                Operation::Kubernetes(op)
            }
            Operation::Ssh(op) => Operation::Ssh(match op {
                SshOperation::Exec(cmd) => SshOperation::Exec(m.exec(cmd)),
                SshOperation::FileTransfer { tool, command } => SshOperation::FileTransfer {
                    tool: tool.clone(),
                    command: m.exec(command),
                },
                SshOperation::Subsystem { name } => SshOperation::Subsystem {
                    name: protocol_name(&m, name),
                },
                SshOperation::DirectTcpip { host, port } => SshOperation::DirectTcpip {
                    host: m.text(host),
                    port: *port,
                },
                SshOperation::TcpipForward { address, port } => SshOperation::TcpipForward {
                    address: m.text(address),
                    port: *port,
                },
                SshOperation::Env { name } => SshOperation::Env { name: m.text(name) },
                SshOperation::DirectStreamlocal { socket_path } => {
                    SshOperation::DirectStreamlocal {
                        socket_path: m.text(socket_path),
                    }
                }
                SshOperation::OtherChannel { channel_type } => SshOperation::OtherChannel {
                    channel_type: protocol_name(&m, channel_type),
                },
                other => other.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::masking::{Finding, MaskOutcome};
    use crate::traits::{StreamContext, StreamMasker};

    /// Masks fixed literals (an e-mail, a card in one or four groups) as `[pii]`.
    struct Literals;
    const PII: &[&str] = &[
        "carol@example.net",
        "4111 1111 1111 1111",
        "4012888888881881",
    ];

    impl FieldPlan for Literals {
        fn apply(
            &self,
            _index: usize,
            value: &[u8],
            out: &mut Vec<u8>,
            _findings: &mut Vec<Finding>,
        ) -> MaskOutcome {
            let text = String::from_utf8_lossy(value);
            if !PII.iter().any(|p| text.contains(p)) {
                return MaskOutcome::Unchanged;
            }
            let mut t = text.into_owned();
            for p in PII {
                t = t.replace(p, "[pii]");
            }
            out.clear();
            out.extend_from_slice(t.as_bytes());
            MaskOutcome::Masked
        }
        fn masks_whole(&self, _index: usize) -> bool {
            false
        }
    }

    impl Masker for Literals {
        fn plan(&self, _fields: &[FieldDesc], _profile: Option<&str>) -> Box<dyn FieldPlan> {
            Box::new(Literals)
        }
        fn stream(&self, _context: &StreamContext) -> Box<dyn StreamMasker> {
            unimplemented!("not used")
        }
    }

    #[test]
    fn http_query_is_masked_as_written_and_as_decoded() {
        let op = Operation::Http(HttpOperation {
            method: "GET".into(),
            path: "/users/carol@example.net".into(),
            query: Some(
                "email=carol%40example.net&card=4012888888881881&x=1&q=4111+1111+1111+1111".into(),
            ),
            body_sha256: None,
        });
        let Operation::Http(rec) = op.recorded_copy(&Literals, None) else {
            panic!("kind changed");
        };
        assert_eq!(rec.path, "/users/[pii]");
        assert_eq!(
            rec.query.as_deref(),
            Some("email=[pii]&card=[pii]&x=1&q=[pii]")
        );
    }

    #[test]
    fn exec_line_words_and_env_are_masked_and_flags_kept() {
        let cmd = ExecCommand::parse("echo carol@example.net 4111 1111 1111 1111 | cat")
            .with_env(vec![("NOTE".into(), "carol@example.net".into())]);
        let op = Operation::Ssh(SshOperation::Exec(cmd.clone()));
        let Operation::Ssh(SshOperation::Exec(rec)) = op.recorded_copy(&Literals, None) else {
            panic!("kind changed");
        };
        assert_eq!(rec.command_line, "echo [pii] [pii] | cat");
        let all = serde_json::to_string(&rec).unwrap();
        assert!(!all.contains("carol@"), "{all}");
        assert!(!all.contains("1111"), "{all}");
        assert_eq!(rec.parsed.has_metacharacters, cmd.parsed.has_metacharacters);
        assert_eq!(rec.env, vec![("NOTE".to_string(), "[pii]".to_string())]);
    }

    #[test]
    fn kubernetes_review_binding_query_is_masked() {
        let op = Operation::Kubernetes(KubeOperation {
            verb: "list".into(),
            resource: "pods".into(),
            path: Some(
                "GET /api/v1/pods?labelSelector=owner%3Dcarol%40example.net content-type=x".into(),
            ),
            ..KubeOperation::default()
        });
        let Operation::Kubernetes(rec) = op.recorded_copy(&Literals, None) else {
            panic!("kind changed");
        };
        assert_eq!(
            rec.path.as_deref(),
            Some("GET /api/v1/pods?labelSelector=owner%3D[pii] content-type=x")
        );
    }

    #[test]
    fn nothing_to_mask_is_kept_byte_for_byte() {
        let op = Operation::Http(HttpOperation {
            method: "GET".into(),
            path: "/a".into(),
            query: Some("a=%41&b=c+d".into()),
            body_sha256: Some("00".into()),
        });
        assert_eq!(op.recorded_copy(&Literals, None), op);
    }
}
