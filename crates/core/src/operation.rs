//! What is being asked: one operation in protocol-neutral terms, as the policy, approvals and the
//! audit log see it.

use serde::{Deserialize, Serialize};

use crate::shell::ShellCommand;

/// One operation a caller asks a target to perform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
#[non_exhaustive]
pub enum Operation {
    /// SQL text (one or several statements) sent to PostgreSQL.
    Sql(SqlOperation),
    /// An SSH channel request.
    Ssh(SshOperation),
    /// An HTTP request.
    Http(HttpOperation),
    /// A Kubernetes API request (exec/attach/portforward included).
    Kubernetes(KubeOperation),
}

impl Operation {
    /// A short human-readable summary for notices, logs and approval prompts. Never truncated
    /// silently: long texts end with `…(N bytes)`. Safe to print on a terminal: control and
    /// invisible formatting characters are escaped ([`printable`]), so an operation cannot
    /// redraw or hide what an approver reads.
    pub fn summary(&self) -> String {
        printable(&self.raw_summary(Some(SUMMARY_MAX)))
    }

    /// Everything an approver needs to read to decide, on one line and safe to print: the whole
    /// operation (never cut, unlike [`Operation::summary`]) with the parameters bound to a SQL
    /// statement and the digest of an HTTP body, every field escaped ([`printable`]).
    pub fn describe(&self) -> String {
        let mut text = printable(&self.raw_summary(None));
        match self {
            Operation::Sql(op) if !op.parameters.is_empty() => {
                let params: Vec<String> = op
                    .parameters
                    .iter()
                    .enumerate()
                    .map(|(i, p)| match p {
                        Some(v) => format!("${}='{}'", i + 1, printable(v)),
                        None => format!("${}=NULL", i + 1),
                    })
                    .collect();
                text.push_str(&format!("  [parameters: {}]", params.join(", ")));
            }
            Operation::Http(HttpOperation {
                body_sha256: Some(sha),
                ..
            }) => text.push_str(&format!("  [body sha256 {}]", printable(sha))),
            _ => {}
        }
        text
    }

    fn raw_summary(&self, max: Option<usize>) -> String {
        let cap = |s: &str| -> String {
            let Some(max) = max else {
                return s.to_string();
            };
            if s.len() <= max {
                return s.to_string();
            }
            let mut end = max;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}…({} bytes)", &s[..end], s.len())
        };
        match self {
            Operation::Sql(op) => cap(&op.text),
            Operation::Ssh(SshOperation::Exec(cmd)) => format!("exec {}", cap(&cmd.command_line)),
            Operation::Ssh(SshOperation::Shell { pty }) => {
                if *pty {
                    "shell (pty)".into()
                } else {
                    "shell".into()
                }
            }
            Operation::Ssh(SshOperation::Subsystem { name }) => format!("subsystem {name}"),
            Operation::Ssh(SshOperation::DirectTcpip { host, port }) => {
                format!("direct-tcpip {host}:{port}")
            }
            Operation::Ssh(SshOperation::TcpipForward { address, port }) => {
                format!("tcpip-forward {address}:{port}")
            }
            Operation::Ssh(SshOperation::AgentForward) => "agent forwarding".into(),
            Operation::Ssh(SshOperation::FileTransfer { tool, command }) => {
                format!("{tool} transfer: {}", cap(&command.command_line))
            }
            Operation::Ssh(SshOperation::Env { name }) => format!("env {}", cap(name)),
            Operation::Ssh(SshOperation::X11) => "x11 forwarding".into(),
            Operation::Ssh(SshOperation::DirectStreamlocal { socket_path }) => {
                format!("direct-streamlocal {}", cap(socket_path))
            }
            Operation::Ssh(SshOperation::OtherChannel { channel_type }) => {
                format!("channel {}", cap(channel_type))
            }
            Operation::Http(op) => match &op.query {
                Some(q) => format!("{} {}?{}", op.method, op.path, cap(q)),
                None => format!("{} {}", op.method, op.path),
            },
            Operation::Kubernetes(op) => op.summary(),
        }
    }
}

/// `s` with every control character (C0, DEL, C1: escape sequences, carriage returns, line
/// breaks), every blank other than a plain space (line and paragraph separators, no-break and
/// wide spaces) and every invisible character (bidirectional overrides and isolates, zero-width
/// characters, the BOM, fillers, tag characters, variation selectors) escaped as `\n`, `\r`,
/// `\t` or `\u{…}`, and backslashes doubled, so that what a terminal shows is the text itself,
/// one line.
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || (c.is_whitespace() && c != ' ') || invisible(c) => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
            c => out.push(c),
        }
    }
    out
}

/// Longest text [`Operation::summary`] shows of one field before it cuts it.
const SUMMARY_MAX: usize = 200;

/// Characters a terminal draws as nothing, or as blank space that is not a plain space, or that
/// change how their neighbours are drawn: formatting characters (bidirectional controls,
/// zero-width characters, the BOM, the soft hyphen, interlinear annotation, tag characters),
/// fillers and blank glyphs (the Hangul fillers, the braille blank, the Khmer inherent vowels, the
/// Mongolian vowel separator), the combining grapheme joiner and the variation selectors.
fn invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{2800}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}'
        | '\u{FEFF}' | '\u{FFA0}' | '\u{FFF9}'..='\u{FFFB}' | '\u{1D173}'..='\u{1D17A}'
        | '\u{E0000}'..='\u{E007F}' | '\u{E0100}'..='\u{E01EF}')
}

/// Which PostgreSQL sub-protocol carried the SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SqlProtocol {
    /// A simple `Query` message (may hold several statements).
    Simple,
    /// Extended protocol: the `Parse` text, with parameters from `Bind`.
    Extended,
    /// A `FunctionCall` message (the text names the function OID).
    FunctionCall,
}

/// Session settings that change how PostgreSQL itself splits and reads statements. The classifier
/// takes them as input; anything it cannot be sure of under them is unparseable, never guessed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SqlSessionSettings {
    /// `standard_conforming_strings` (on by default since PostgreSQL 9.1).
    pub standard_conforming_strings: bool,
    /// `client_encoding`, as reported in ParameterStatus (e.g. `UTF8`).
    pub client_encoding: String,
}

impl Default for SqlSessionSettings {
    fn default() -> Self {
        Self {
            standard_conforming_strings: true,
            client_encoding: "UTF8".into(),
        }
    }
}

/// SQL sent to a PostgreSQL target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SqlOperation {
    /// The statement text exactly as the client sent it.
    pub text: String,
    /// Bound parameters (extended protocol) in text form; binary values as `\x`-prefixed hex;
    /// `None` is SQL NULL. Part of the approval hash.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<Option<String>>,
    /// The sub-protocol that carried it.
    pub protocol: SqlProtocol,
    /// Settings in effect when it was sent.
    #[serde(default)]
    pub settings: SqlSessionSettings,
}

impl SqlOperation {
    /// A simple-protocol query under default settings.
    pub fn simple(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            parameters: Vec::new(),
            protocol: SqlProtocol::Simple,
            settings: SqlSessionSettings::default(),
        }
    }
}

/// An SSH `exec` command line, parsed by [`crate::shell`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecCommand {
    /// The command line exactly as the client sent it.
    pub command_line: String,
    /// The parsed command; if it was `sh -c '…'` / `bash -c '…'`, unwrapped one level.
    pub parsed: ShellCommand,
    /// Environment variables the request itself sets for the command (SSH `env` requests),
    /// in order. Part of what runs: the policy reads them ([`crate::command::analyse`]) and
    /// the approval hash covers them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<(String, String)>,
}

impl ExecCommand {
    /// Parses a command line with [`crate::shell::parse`] and unwraps one `sh -c` level.
    pub fn parse(command_line: impl Into<String>) -> Self {
        let command_line = command_line.into();
        let parsed = crate::shell::parse(&command_line).unwrap_shell();
        Self {
            command_line,
            parsed,
            env: Vec::new(),
        }
    }

    /// The same command with the variables the request sets for it.
    pub fn with_env(mut self, env: Vec<(String, String)>) -> Self {
        self.env = env;
        self
    }

    /// What the command runs, as the policy reads it ([`crate::command::analyse`]).
    pub fn analyse(&self) -> Vec<crate::command::ExecItem> {
        crate::command::analyse(&self.command_line, &self.env)
    }

    /// The program (first argv word), if any.
    pub fn program(&self) -> Option<&str> {
        self.parsed.argv.first().map(String::as_str)
    }

    /// The file transfer tool whose server side this line starts, if any: `scp`, `rsync`,
    /// `git` (`git-upload-pack`, `git-receive-pack`, `git-upload-archive`, or `git` with one of
    /// those as its subcommand) or `sftp` (`sftp-server` run directly). Every simple command of
    /// the line is looked at, past common wrappers (`env`, `nice`, `timeout`, `exec`, …) and
    /// their options, so `true; env rsync --server …` is a transfer too.
    pub fn file_transfer_tool(&self) -> Option<&'static str> {
        const WRAPPERS: &[&str] = &[
            "env", "nice", "nohup", "timeout", "stdbuf", "ionice", "setsid", "exec", "command",
            "time", "sudo", "doas", "chrt", "taskset", "builtin",
        ];
        let tool_of = |words: &[String]| -> Option<&'static str> {
            let mut words = words.iter().map(|w| w.rsplit('/').next().unwrap_or(w));
            while let Some(word) = words.next() {
                let starts_option = word.starts_with('-');
                let assignment = word.contains('=');
                let number = !word.is_empty()
                    && word
                        .chars()
                        .all(|c| c.is_ascii_digit() || c == '.' || c == 's');
                if WRAPPERS.contains(&word) || starts_option || assignment || number {
                    continue;
                }
                // Only the server sides count: a transfer may pass unmasked (policy `binary =
                // "raw"`), so `rsync pii.csv /dev/stdout` or `git log -S upload-pack -p` must
                // stay plain commands, decided and masked as such.
                return match word {
                    // `scp -t` (sink) or `scp -f` (source), flags possibly combined (`-prf`).
                    "scp" => words
                        .take_while(|w| *w != "--")
                        .any(|w| {
                            w.strip_prefix('-').is_some_and(|f| {
                                !f.starts_with('-') && f.chars().any(|c| c == 't' || c == 'f')
                            })
                        })
                        .then_some("scp"),
                    "rsync" => words.any(|w| w == "--server").then_some("rsync"),
                    "git-upload-pack" | "git-receive-pack" | "git-upload-archive" => Some("git"),
                    // The subcommand is the first word after git's own options.
                    "git" => loop {
                        match words.next() {
                            Some("-C" | "-c") => {
                                words.next();
                            }
                            Some(w) if w.starts_with('-') => {}
                            Some(w) => {
                                break matches!(
                                    w,
                                    "upload-pack" | "receive-pack" | "upload-archive"
                                )
                                .then_some("git");
                            }
                            None => break None,
                        }
                    },
                    "sftp-server" | "internal-sftp" => Some("sftp"),
                    _ => None,
                };
            }
            None
        };
        self.parsed
            .commands
            .iter()
            .chain(std::iter::once(&self.parsed.argv))
            .find_map(|c| tool_of(c))
            // Past every wrapper the policy reads (`flock FILE scp -f …`, `xargs`, …): what
            // each program of the line runs.
            .or_else(|| {
                self.analyse()
                    .iter()
                    .filter(|item| !item.wrapper)
                    .find_map(|item| tool_of(&item.argv))
            })
    }
}

/// One SSH channel request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum SshOperation {
    /// `exec` of a command line.
    Exec(ExecCommand),
    /// An interactive shell.
    Shell {
        /// Whether a pty was requested.
        pty: bool,
    },
    /// A subsystem such as `sftp`.
    Subsystem {
        /// Subsystem name.
        name: String,
    },
    /// Local port forwarding (`ssh -L`): the gateway side connects to `host:port`.
    DirectTcpip {
        /// Destination host.
        host: String,
        /// Destination port.
        port: u32,
    },
    /// Remote port forwarding (`ssh -R`).
    TcpipForward {
        /// Bind address.
        address: String,
        /// Bind port.
        port: u32,
    },
    /// SSH agent forwarding.
    AgentForward,
    /// A file transfer tool's server side started by `exec` (`scp -t`/`-f`, `rsync --server`,
    /// `git-upload-pack` and friends): an operation kind of its own, not a plain command.
    FileTransfer {
        /// `scp`, `rsync` or `git`.
        tool: String,
        /// The command line the client sent.
        command: ExecCommand,
    },
    /// An `env` request: set `name` for the session's command.
    Env {
        /// Variable name.
        name: String,
    },
    /// X11 forwarding (`ssh -X`/`-Y`).
    X11,
    /// Local forwarding to a Unix socket on the target (`ssh -L port:/path/to.sock`,
    /// `direct-streamlocal@openssh.com`). Never relayed by the gateway.
    DirectStreamlocal {
        /// The socket path the client asked for.
        socket_path: String,
    },
    /// A channel of a type the gateway never relays: `tun@openssh.com` (`ssh -w`), or any
    /// other type it does not know.
    OtherChannel {
        /// The channel type the client asked for.
        channel_type: String,
    },
}

/// An HTTP request, with the path in canonical form ([`crate::http_path`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpOperation {
    /// Upper-case method, e.g. `GET`.
    pub method: String,
    /// Canonical path: what the policy saw is what the upstream receives.
    pub path: String,
    /// Raw query string without `?`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Hex SHA-256 of the request body, when there is one (part of the approval hash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_sha256: Option<String>,
}

/// A Kubernetes API request.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KubeOperation {
    /// get, list, watch, create, update, patch, delete, deletecollection, exec, attach,
    /// portforward, proxy, log — or the lower-case HTTP method for non-resource URLs.
    pub verb: String,
    /// API group (`""` for core).
    #[serde(default)]
    pub group: String,
    /// API version, e.g. `v1`.
    #[serde(default)]
    pub version: String,
    /// Resource, e.g. `pods`; empty for non-resource URLs.
    #[serde(default)]
    pub resource: String,
    /// Subresource, e.g. `exec`, `log`, `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subresource: Option<String>,
    /// Namespace, for namespaced requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Object name, when the request names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Canonical path for non-resource URLs (`/healthz`, `/version`, discovery). For a
    /// resource request held for review: the whole request as the approval binds it
    /// (`METHOD /path?query content-type=… body-sha256=…`), shown in [`Self::summary`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// For exec: the `command=` parameters, parsed like an SSH exec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<ExecCommand>,
}

impl KubeOperation {
    /// `verb group/version resource/subresource ns/name`, compactly.
    pub fn summary(&self) -> String {
        let mut s = self.verb.clone();
        if self.resource.is_empty() {
            if let Some(p) = &self.path {
                s.push(' ');
                s.push_str(p);
            }
            return s;
        }
        s.push(' ');
        s.push_str(&self.resource);
        if let Some(sub) = &self.subresource {
            s.push('/');
            s.push_str(sub);
        }
        match (&self.namespace, &self.name) {
            (Some(ns), Some(n)) => s.push_str(&format!(" {ns}/{n}")),
            (Some(ns), None) => s.push_str(&format!(" -n {ns}")),
            (None, Some(n)) => s.push_str(&format!(" {n}")),
            (None, None) => {}
        }
        if let Some(cmd) = &self.command {
            s.push_str(" -- ");
            s.push_str(&cmd.command_line);
        }
        if let Some(p) = &self.path {
            s.push_str(" [");
            s.push_str(p);
            s.push(']');
        }
        s
    }
}

#[cfg(test)]
mod file_transfer_tests {
    use super::ExecCommand;

    #[test]
    fn transfer_tools_are_recognised_past_wrappers() {
        let cases = [
            ("scp -f /etc/passwd", Some("scp")),
            ("scp -t .", Some("scp")),
            ("/usr/bin/scp -f x", Some("scp")),
            (
                "rsync --server --sender -logDtpre.iLsfxCIvu . /srv/",
                Some("rsync"),
            ),
            ("git-upload-pack '/srv/repo.git'", Some("git")),
            ("git-receive-pack 'repo'", Some("git")),
            ("git -C /srv upload-pack repo", Some("git")),
            ("/usr/lib/openssh/sftp-server", Some("sftp")),
            (
                "env LANG=C nice -n 5 timeout 10s rsync --server . x",
                Some("rsync"),
            ),
            ("true; scp -f x", Some("scp")),
            ("sh -c 'scp -f x'", Some("scp")),
            ("scp -prf x", Some("scp")),
            ("flock /tmp scp -f x", Some("scp")),
            ("flock -w 5 /tmp/l rsync --server . x", Some("rsync")),
            ("git -c a=b --no-pager upload-archive r", Some("git")),
            ("ls -la", None),
            ("git status", None),
            // Not server sides: plain commands, decided and masked as such.
            ("git log -S upload-pack -p", None),
            ("git -C upload-pack log", None),
            ("rsync /etc/pii.csv /dev/stdout", None),
            ("scp /etc/pii.csv /tmp/x", None),
            ("scp -- -f", None),
            ("echo rsync", None),
        ];
        for (line, want) in cases {
            assert_eq!(
                ExecCommand::parse(line).file_transfer_tool(),
                want,
                "{line}"
            );
        }
    }
}
