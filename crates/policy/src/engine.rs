//! The decision procedure: split the operation into items (SQL statements, the programs an exec
//! line runs, or the one request), decide each item by the first matching rule (or the target's
//! default), give opaque items their own verdict (never the default), raise items to any
//! built-in floor (ambiguous HTTP path, `COPY … PROGRAM`, encoding changes), and return the
//! strictest item's decision.

use globset::GlobMatcher;
use serde::Serialize;

use gatehouse_core::command::ExecFacts;
use gatehouse_core::http_path;
use gatehouse_core::{
    BinaryHandling, Classified, Decision, ExecCommand, Identity, KubeOperation, Operation, Policy,
    Protocol, ReviewRequirement, SqlOperation, SshOperation, Target, Verdict,
};
use gatehouse_sql::{Risk, SqlFacts, StatementKind, classify};

use crate::file::Verdicts;
use crate::rules::{Rule, Subject};

/// Verdicts with every default filled in.
#[derive(Debug, Clone)]
pub(crate) struct ResolvedVerdicts {
    pub default: Verdict,
    /// Operations whose effect the gateway cannot determine.
    pub opaque: Verdict,
    /// Deprecated `unparseable_sql`: the opaque verdict for SQL, when set.
    pub opaque_sql: Option<Verdict>,
    /// Deprecated `non_plain_exec`: the opaque verdict for exec commands, when set.
    pub opaque_exec: Option<Verdict>,
    pub ambiguous_http_path: Verdict,
    pub copy_program: Verdict,
    pub encoding_change: Verdict,
    pub masking: Option<String>,
    pub binary: Option<BinaryHandling>,
}

impl ResolvedVerdicts {
    fn overlay(&self, v: &Verdicts) -> ResolvedVerdicts {
        ResolvedVerdicts {
            default: v.default.unwrap_or(self.default),
            opaque: v.opaque.unwrap_or(self.opaque),
            // A block that sets `opaque` overrides the per-protocol aliases it does not set.
            opaque_sql: v.unparseable_sql.or(if v.opaque.is_some() {
                None
            } else {
                self.opaque_sql
            }),
            opaque_exec: v.non_plain_exec.or(if v.opaque.is_some() {
                None
            } else {
                self.opaque_exec
            }),
            ambiguous_http_path: v.ambiguous_http_path.unwrap_or(self.ambiguous_http_path),
            copy_program: v.copy_program.unwrap_or(self.copy_program),
            encoding_change: v.encoding_change.unwrap_or(self.encoding_change),
            masking: v.masking.clone().or_else(|| self.masking.clone()),
            binary: v.binary.or(self.binary),
        }
    }
}

/// A `[[targets]]` block.
#[derive(Debug)]
pub(crate) struct TargetOverride {
    pub name: Option<GlobMatcher>,
    pub tags: Vec<String>,
    pub verdicts: Verdicts,
}

impl TargetOverride {
    fn matches(&self, target: &Target) -> bool {
        let name_ok = self.name.as_ref().is_none_or(|g| g.is_match(&target.name));
        let tags_ok = self.tags.is_empty() || self.tags.iter().any(|t| target.tags.contains(t));
        name_ok && tags_ok
    }
}

/// A built-in verdict that applies regardless of rules (as a floor: the result is never more
/// permissive than it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Floor {
    Opaque,
    AmbiguousHttpPath,
    CopyProgram,
    EncodingChange,
    InvalidHttpPath,
    EmptyQuery,
    Unsupported,
    SshChannelNotAllowed,
    SshNeverAllowed,
}

impl Floor {
    fn id(self) -> &'static str {
        match self {
            Floor::Opaque => "opaque",
            Floor::AmbiguousHttpPath => "ambiguous-http-path",
            Floor::CopyProgram => "copy-program",
            Floor::EncodingChange => "encoding-change",
            Floor::InvalidHttpPath => "invalid-http-path",
            Floor::EmptyQuery => "empty-query",
            Floor::Unsupported => "unsupported-operation",
            Floor::SshChannelNotAllowed => "ssh-channel-not-allowed",
            Floor::SshNeverAllowed => "ssh-never-allowed",
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Floor::Opaque => "the gateway cannot determine what this operation does",
            Floor::AmbiguousHttpPath => "the path contains an encoded separator (%2F or %5C)",
            Floor::CopyProgram => "COPY … PROGRAM runs a shell command on the database server",
            Floor::EncodingChange => {
                "changing standard_conforming_strings or client_encoding changes how later statements are read"
            }
            Floor::InvalidHttpPath => "the request path is not valid",
            Floor::EmptyQuery => "empty query",
            Floor::Unsupported => "operation type not supported by this policy engine",
            Floor::SshChannelNotAllowed => {
                "SSH channels and requests other than exec (shell, subsystems such as sftp, scp, rsync, git, port forwarding, environment variables) are refused unless a rule allows them"
            }
            Floor::SshNeverAllowed => {
                "remote port forwarding, agent forwarding, X11 forwarding, forwarding to a Unix socket, tun forwarding and channel types the gateway does not know are never allowed through the gateway"
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum DecidedBy<'p> {
    Rule(&'p Rule),
    Default,
    Floor(Floor),
}

#[derive(Debug, Clone)]
struct ItemOutcome<'p> {
    verdict: Verdict,
    by: DecidedBy<'p>,
    /// Extra detail for the reason (e.g. why SQL was unparseable).
    detail: Option<String>,
    /// The rule (if any) that matched before floors were applied (for masking).
    rule: Option<&'p Rule>,
}

impl<'p> ItemOutcome<'p> {
    fn from_rule(rule: Option<&'p Rule>, default: Verdict) -> Self {
        match rule {
            Some(r) => ItemOutcome {
                verdict: r.verdict,
                by: DecidedBy::Rule(r),
                detail: None,
                rule: Some(r),
            },
            None => ItemOutcome {
                verdict: default,
                by: DecidedBy::Default,
                detail: None,
                rule: None,
            },
        }
    }

    fn floor(verdict: Verdict, floor: Floor, detail: Option<String>) -> Self {
        ItemOutcome {
            verdict,
            by: DecidedBy::Floor(floor),
            detail,
            rule: None,
        }
    }

    /// Raises the outcome to `floor` if that is stricter (or as strict, when only the target
    /// default had decided: the built-in is the more precise reason).
    fn raise(&mut self, verdict: Verdict, floor: Floor, detail: Option<String>) {
        let by_default = matches!(self.by, DecidedBy::Default);
        if verdict > self.verdict || (by_default && verdict == self.verdict) {
            self.verdict = verdict;
            self.by = DecidedBy::Floor(floor);
            self.detail = detail;
        }
    }

    /// For an opaque item: a rule written for it decides. Otherwise, when no rule matched, the
    /// opaque verdict replaces the target default (the item is attributed to `opaque`, never to
    /// `default`), and when another rule matched, it is a floor over that rule.
    fn opaque(&mut self, subject: &Subject<'_>, verdict: Verdict, detail: Option<String>) {
        match self.by {
            DecidedBy::Rule(r) if r.written_for_opaque(subject) => {}
            DecidedBy::Default => *self = ItemOutcome::floor(verdict, Floor::Opaque, detail),
            _ => self.raise(verdict, Floor::Opaque, detail),
        }
    }
}

/// One rule's result for one item, as [`Explanation`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleTrace {
    /// Rule id.
    pub rule_id: String,
    /// Line of the rule in the policy file.
    pub line: usize,
    /// Whether the rule matched.
    pub matched: bool,
    /// Why not (the first matcher that failed), or `matched`.
    pub note: String,
}

/// How one item (a SQL statement, a simple command, a request) was decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ItemExplanation {
    /// What the item is (statement text, command words, method and path).
    pub item: String,
    /// Its verdict.
    pub verdict: Verdict,
    /// The rule or built-in that decided it.
    pub decided_by: String,
    /// Why.
    pub reason: String,
    /// Every rule's result, in file order.
    pub trace: Vec<RuleTrace>,
}

/// `explain`: the decision and how every item and rule contributed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// The decision `decide` returns.
    pub decision: Decision,
    /// Per item.
    pub items: Vec<ItemExplanation>,
}

impl std::fmt::Display for Explanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{:?} by {}: {}",
            self.decision.verdict, self.decision.rule_id, self.decision.reason
        )?;
        for (i, item) in self.items.iter().enumerate() {
            writeln!(
                f,
                "  [{}] {} -> {:?} by {}: {}",
                i + 1,
                item.item,
                item.verdict,
                item.decided_by,
                item.reason
            )?;
            for t in &item.trace {
                writeln!(
                    f,
                    "      {} (line {}): {}",
                    t.rule_id,
                    t.line,
                    if t.matched {
                        "matched"
                    } else {
                        t.note.as_str()
                    }
                )?;
            }
        }
        Ok(())
    }
}

/// A loaded, compiled policy. Immutable; share it behind an `Arc` (see
/// [`crate::PolicyHandle`] for swapping).
#[derive(Debug)]
pub struct CompiledPolicy {
    file: String,
    defaults: ResolvedVerdicts,
    default_review: ReviewRequirement,
    targets: Vec<TargetOverride>,
    rules: Vec<Rule>,
    warnings: Vec<String>,
    /// Indices of rules that can apply, per protocol (postgres, ssh, http, kubernetes).
    by_protocol: [Vec<usize>; 4],
}

fn protocol_index(p: Protocol) -> Option<usize> {
    match p {
        Protocol::Postgres => Some(0),
        Protocol::Ssh => Some(1),
        Protocol::Http => Some(2),
        Protocol::Kubernetes => Some(3),
        _ => None,
    }
}

impl CompiledPolicy {
    pub(crate) fn new(
        file: String,
        defaults: ResolvedVerdicts,
        default_review: ReviewRequirement,
        targets: Vec<TargetOverride>,
        rules: Vec<Rule>,
        warnings: Vec<String>,
    ) -> Self {
        let mut by_protocol: [Vec<usize>; 4] = Default::default();
        for (i, rule) in rules.iter().enumerate() {
            for p in [
                Protocol::Postgres,
                Protocol::Ssh,
                Protocol::Http,
                Protocol::Kubernetes,
            ] {
                if rule.applies_to(p)
                    && let Some(list) = protocol_index(p).and_then(|idx| by_protocol.get_mut(idx))
                {
                    list.push(i);
                }
            }
        }
        Self {
            file,
            defaults,
            default_review,
            targets,
            rules,
            warnings,
            by_protocol,
        }
    }

    /// Deprecation notes about the file (e.g. `unparseable_sql`, `non_plain_exec`): it loaded
    /// and works, but should be updated. `check-config` prints them; the gateway logs them.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Parses and compiles a policy from TOML text; `file` names it in errors.
    pub fn from_toml(text: &str, file: &str) -> Result<Self, crate::PolicyError> {
        crate::compile::compile(text, file)
    }

    /// Reads and compiles a policy file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, crate::PolicyError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| crate::PolicyError::Io {
            file: file.clone(),
            message: e.to_string(),
        })?;
        Self::from_toml(&text, &file)
    }

    /// The file name the policy was loaded from.
    pub fn source(&self) -> &str {
        &self.file
    }

    /// Number of rules.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    fn verdicts_for(&self, target: &Target) -> ResolvedVerdicts {
        match self.targets.iter().find(|t| t.matches(target)) {
            Some(t) => self.defaults.overlay(&t.verdicts),
            None => self.defaults.clone(),
        }
    }

    /// Rules that apply to this target and identity, in order.
    fn candidates(&self, identity: &Identity, target: &Target) -> Vec<&Rule> {
        let Some(list) = protocol_index(target.protocol).and_then(|i| self.by_protocol.get(i))
        else {
            return Vec::new();
        };
        list.iter()
            .filter_map(|&i| self.rules.get(i))
            .filter(|r| r.match_context(identity, target).is_ok())
            .collect()
    }

    fn first_match<'p>(
        &'p self,
        candidates: &[&'p Rule],
        subject: &Subject<'_>,
    ) -> Option<&'p Rule> {
        candidates
            .iter()
            .copied()
            .find(|r| r.match_subject(subject).is_ok())
    }

    fn trace(&self, identity: &Identity, target: &Target, subject: &Subject<'_>) -> Vec<RuleTrace> {
        self.rules
            .iter()
            .map(|r| {
                let result = if !r.applies_to(target.protocol) {
                    Err("rule is for another protocol")
                } else {
                    r.match_context(identity, target)
                        .and_then(|()| r.match_subject(subject))
                };
                RuleTrace {
                    rule_id: r.id.clone(),
                    line: r.line,
                    matched: result.is_ok(),
                    note: match result {
                        Ok(()) => "matched".into(),
                        Err(why) => why.into(),
                    },
                }
            })
            .collect()
    }

    /// Decides every item; `explain` also collects traces.
    fn evaluate<'p>(
        &'p self,
        identity: &Identity,
        target: &Target,
        operation: &Operation,
        extra_opaque: &[(usize, String)],
        facts: Option<&Classified>,
        mut explain: Option<&mut Vec<ItemExplanation>>,
    ) -> Decision {
        let verdicts = self.verdicts_for(target);
        let candidates = self.candidates(identity, target);
        let mut items: Vec<(String, ItemOutcome<'p>)> = Vec::new();
        let want_labels = explain.is_some();

        let mut push = |label: &dyn Fn() -> String,
                        outcome: ItemOutcome<'p>,
                        subject: Option<&Subject<'_>>,
                        items: &mut Vec<(String, ItemOutcome<'p>)>| {
            if let Some(out) = explain.as_deref_mut() {
                let trace = subject.map_or_else(Vec::new, |s| self.trace(identity, target, s));
                let (decided_by, reason) = self.describe(&outcome, target, &verdicts);
                out.push(ItemExplanation {
                    item: label(),
                    verdict: outcome.verdict,
                    decided_by,
                    reason,
                    trace,
                });
            }
            let label = if want_labels { label() } else { String::new() };
            items.push((label, outcome));
        };

        match operation {
            Operation::Sql(op) => {
                let sql_facts = facts
                    .and_then(Classified::facts::<SqlFacts>)
                    .filter(|f| f.is_for(op));
                self.sql_items(
                    op,
                    sql_facts,
                    extra_opaque,
                    &candidates,
                    &verdicts,
                    &mut items,
                    &mut push,
                );
            }
            Operation::Ssh(SshOperation::Exec(cmd)) => {
                self.exec_items(
                    cmd,
                    facts,
                    None,
                    &candidates,
                    &verdicts,
                    &mut items,
                    &mut push,
                );
            }
            Operation::Ssh(other) => {
                let (channel, subsystem, destination) = match other {
                    SshOperation::Shell { .. } => ("shell", None, None),
                    SshOperation::Subsystem { name } => ("subsystem", Some(name.as_str()), None),
                    // `sftp-server` run directly is the sftp subsystem by another door.
                    SshOperation::FileTransfer { tool, .. } if tool == "sftp" => {
                        ("subsystem", Some("sftp"), None)
                    }
                    SshOperation::FileTransfer { tool, .. } => match tool.as_str() {
                        "scp" => ("scp", None, None),
                        "rsync" => ("rsync", None, None),
                        "git" => ("git", None, None),
                        _ => ("unknown", None, None),
                    },
                    SshOperation::DirectTcpip { host, port } => {
                        ("direct_tcpip", None, Some(format!("{host}:{port}")))
                    }
                    SshOperation::Env { name } => ("env", Some(name.as_str()), None),
                    SshOperation::TcpipForward { address, port } => {
                        ("tcpip_forward", None, Some(format!("{address}:{port}")))
                    }
                    SshOperation::AgentForward => ("agent_forward", None, None),
                    SshOperation::X11 => ("x11", None, None),
                    SshOperation::DirectStreamlocal { socket_path } => {
                        ("direct_streamlocal", None, Some(socket_path.clone()))
                    }
                    SshOperation::OtherChannel { .. } => ("other_channel", None, None),
                    _ => ("unknown", None, None),
                };
                let subject = Subject::Ssh {
                    channel,
                    subsystem,
                    destination,
                };
                let mut outcome = match channel {
                    "unknown" => ItemOutcome::floor(Verdict::Deny, Floor::Unsupported, None),
                    "tcpip_forward" | "agent_forward" | "x11" | "direct_streamlocal"
                    | "other_channel" => {
                        ItemOutcome::floor(Verdict::Deny, Floor::SshNeverAllowed, None)
                    }
                    // Every channel and request type other than exec is its own operation,
                    // refused unless a rule names it, whatever the default says.
                    _ => match self.first_match(&candidates, &subject) {
                        Some(rule) => ItemOutcome::from_rule(Some(rule), verdicts.default),
                        None => ItemOutcome::floor(
                            Verdict::Deny,
                            Floor::SshChannelNotAllowed,
                            Some(format!("no rule allows ssh {channel}")),
                        ),
                    },
                };
                if subject.is_opaque() {
                    outcome.opaque(
                        &subject,
                        verdicts.opaque,
                        Some("an interactive shell: what is typed is recorded, not decided".into()),
                    );
                }
                push(&|| channel.to_string(), outcome, Some(&subject), &mut items);
                // A transfer inside a longer line (`rm -rf x; scp -f y`, `sh -c '…'`): every
                // command of the line is also decided as exec, so allowing scp allows no more.
                if let SshOperation::FileTransfer { command, .. } = other {
                    let p = &command.parsed;
                    if !p.is_plain() || p.unwrapped || p.commands.len() > 1 {
                        self.exec_items(
                            command,
                            facts,
                            None,
                            &candidates,
                            &verdicts,
                            &mut items,
                            &mut push,
                        );
                    }
                }
            }
            Operation::Http(op) => {
                let method = op.method.to_ascii_uppercase();
                match http_path::canonicalize(&op.path) {
                    Ok(canonical) => {
                        let subject = Subject::Http {
                            method: &method,
                            path: &canonical.path,
                        };
                        let mut outcome = ItemOutcome::from_rule(
                            self.first_match(&candidates, &subject),
                            verdicts.default,
                        );
                        if canonical.encoded_separator {
                            outcome.raise(
                                verdicts.ambiguous_http_path,
                                Floor::AmbiguousHttpPath,
                                None,
                            );
                        }
                        let label = || format!("{method} {}", canonical.path);
                        push(&label, outcome, Some(&subject), &mut items);
                    }
                    Err(e) => {
                        let outcome = ItemOutcome::floor(
                            Verdict::Deny,
                            Floor::InvalidHttpPath,
                            Some(e.to_string()),
                        );
                        push(
                            &|| format!("{method} {}", op.path),
                            outcome,
                            None,
                            &mut items,
                        );
                    }
                }
            }
            Operation::Kubernetes(op) => match &op.command {
                Some(cmd) => {
                    self.exec_items(
                        cmd,
                        facts,
                        Some(op),
                        &candidates,
                        &verdicts,
                        &mut items,
                        &mut push,
                    );
                }
                None => {
                    let subject = Subject::Kube(op);
                    let mut outcome = ItemOutcome::from_rule(
                        self.first_match(&candidates, &subject),
                        verdicts.default,
                    );
                    if subject.is_opaque() {
                        outcome.opaque(
                            &subject,
                            verdicts.opaque_exec.unwrap_or(verdicts.opaque),
                            Some("attach sends input to whatever the container runs".into()),
                        );
                    }
                    push(&|| op.summary(), outcome, Some(&subject), &mut items);
                }
            },
            _ => {
                let outcome = ItemOutcome::floor(Verdict::Deny, Floor::Unsupported, None);
                push(
                    &|| "unsupported operation".into(),
                    outcome,
                    None,
                    &mut items,
                );
            }
        }
        self.combine(&items, target, &verdicts)
    }

    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    fn sql_items<'p>(
        &'p self,
        op: &SqlOperation,
        facts: Option<&SqlFacts>,
        extra_opaque: &[(usize, String)],
        candidates: &[&'p Rule],
        verdicts: &ResolvedVerdicts,
        items: &mut Vec<(String, ItemOutcome<'p>)>,
        push: &mut dyn FnMut(
            &dyn Fn() -> String,
            ItemOutcome<'p>,
            Option<&Subject<'_>>,
            &mut Vec<(String, ItemOutcome<'p>)>,
        ),
    ) {
        // The facts the protocol classified with, when they are this operation's; else read it.
        let mut classification = match facts {
            Some(f) => f.classification().clone(),
            None => classify(&op.text, &op.settings),
        };
        if classification.statements.is_empty() {
            let outcome = ItemOutcome::floor(Verdict::Allow, Floor::EmptyQuery, None);
            push(&|| "(empty)".into(), outcome, None, items);
            return;
        }
        // Statements the caller found opaque (from the database's catalog) are opaque code.
        for (index, why) in extra_opaque {
            if let Some(stmt) = classification.statements.get_mut(*index) {
                stmt.risks.insert(Risk::OpaqueCode);
                stmt.opaque_reasons.insert(why.clone());
            }
        }
        for stmt in &classification.statements {
            let subject = Subject::Sql(stmt);
            let mut outcome =
                ItemOutcome::from_rule(self.first_match(candidates, &subject), verdicts.default);
            if subject.is_opaque() {
                let detail = match (&stmt.unparseable_reason, stmt.kind) {
                    (Some(r), _) => format!("the SQL could not be read with certainty: {r}"),
                    (None, StatementKind::Unparseable) => {
                        "the SQL could not be read with certainty".to_string()
                    }
                    (None, kind) => match stmt.opaque_reasons.iter().next() {
                        Some(why) => format!(
                            "{} runs code the gateway cannot see into: {why}",
                            kind.as_str()
                        ),
                        None => {
                            format!("{} runs code the gateway cannot see into", kind.as_str())
                        }
                    },
                };
                outcome.opaque(
                    &subject,
                    verdicts.opaque_sql.unwrap_or(verdicts.opaque),
                    Some(detail),
                );
            }
            if stmt.has(Risk::CopyProgram) {
                outcome.raise(verdicts.copy_program, Floor::CopyProgram, None);
            }
            if stmt.has(Risk::EncodingChange) {
                outcome.raise(verdicts.encoding_change, Floor::EncodingChange, None);
            }
            let label = || {
                let text = op.text.get(stmt.span.clone()).unwrap_or("").trim();
                let mut s: String = text.chars().take(120).collect();
                if s.len() < text.len() {
                    s.push('…');
                }
                s
            };
            push(&label, outcome, Some(&subject), items);
        }
    }

    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    fn exec_items<'p>(
        &'p self,
        cmd: &ExecCommand,
        facts: Option<&Classified>,
        kube: Option<&KubeOperation>,
        candidates: &[&'p Rule],
        verdicts: &ResolvedVerdicts,
        items: &mut Vec<(String, ItemOutcome<'p>)>,
        push: &mut dyn FnMut(
            &dyn Fn() -> String,
            ItemOutcome<'p>,
            Option<&Subject<'_>>,
            &mut Vec<(String, ItemOutcome<'p>)>,
        ),
    ) {
        // The reading of the raw line (never the caller's `parsed`): what the policy sees must be
        // what the shell would run. The protocol's facts are used when made from this command.
        let facts = facts
            .and_then(Classified::facts::<ExecFacts>)
            .filter(|f| f.is_for(cmd));
        let owned;
        let (plain, analysed) = match facts {
            Some(f) => (f.plain(), f.items()),
            None => {
                owned = ExecFacts::of(cmd);
                (owned.plain(), owned.items())
            }
        };
        for item in analysed {
            let subject = Subject::Exec {
                argv: &item.argv,
                plain,
                kube,
                extra_args: item.extra_args,
                opaque: item.opaque.is_some(),
            };
            let mut outcome =
                ItemOutcome::from_rule(self.first_match(candidates, &subject), verdicts.default);
            if let Some(reason) = &item.opaque {
                outcome.opaque(
                    &subject,
                    verdicts.opaque_exec.unwrap_or(verdicts.opaque),
                    Some(reason.clone()),
                );
            }
            let label = || {
                let mut l = gatehouse_core::shell::join(&item.argv);
                if item.wrapper {
                    l.push_str(" (wrapper)");
                }
                if item.extra_args {
                    l.push_str(" …(arguments read at run time)");
                }
                l
            };
            push(&label, outcome, Some(&subject), items);
        }
    }

    fn describe(
        &self,
        outcome: &ItemOutcome<'_>,
        target: &Target,
        verdicts: &ResolvedVerdicts,
    ) -> (String, String) {
        match outcome.by {
            DecidedBy::Rule(r) => (r.id.clone(), r.reason.clone()),
            DecidedBy::Default => (
                "default".into(),
                format!(
                    "no rule matched; the default for target {} is {}",
                    target.name,
                    verdict_name(verdicts.default)
                ),
            ),
            DecidedBy::Floor(f) => (
                f.id().into(),
                match (&outcome.detail, f) {
                    (Some(d), Floor::Opaque) => format!("opaque: {d}"),
                    (Some(d), _) => format!("{} ({d})", f.reason()),
                    (None, _) => f.reason().into(),
                },
            ),
        }
    }

    fn combine(
        &self,
        items: &[(String, ItemOutcome<'_>)],
        target: &Target,
        verdicts: &ResolvedVerdicts,
    ) -> Decision {
        let mut chosen: Option<(usize, &ItemOutcome<'_>)> = None;
        // The strictest item decides; among equally strict ones, a rule names the reason
        // better than a built-in or the default.
        for (i, (_, o)) in items.iter().enumerate() {
            let better = chosen.is_none_or(|(_, c)| {
                o.verdict > c.verdict
                    || (o.verdict == c.verdict
                        && matches!(o.by, DecidedBy::Rule(_))
                        && !matches!(c.by, DecidedBy::Rule(_)))
            });
            if better {
                chosen = Some((i, o));
            }
        }
        let Some((index, outcome)) = chosen else {
            return Decision::deny("unsupported-operation", "nothing to decide");
        };
        let (rule_id, mut reason) = self.describe(outcome, target, verdicts);
        if items.len() > 1 {
            reason = format!("part {} of {}: {reason}", index + 1, items.len());
        }
        let masking = if outcome.verdict == Verdict::Deny {
            None
        } else {
            items
                .iter()
                .find_map(|(_, o)| o.rule.and_then(|r| r.masking.clone()))
                .or_else(|| verdicts.masking.clone())
        };
        // Raw only when every part of the operation says so: `cat pii.txt; scp -f x` under a
        // raw scp rule still has a `cat` whose output must not pass unmasked.
        let binary = if outcome.verdict != Verdict::Deny
            && items.iter().all(|(_, o)| {
                o.rule.and_then(|r| r.binary).or(verdicts.binary) == Some(BinaryHandling::Raw)
            }) {
            BinaryHandling::Raw
        } else {
            BinaryHandling::Refuse
        };
        let review = if outcome.verdict == Verdict::Review {
            Some(match outcome.by {
                DecidedBy::Rule(r) => r
                    .review
                    .clone()
                    .unwrap_or_else(|| self.default_review.clone()),
                _ => self.default_review.clone(),
            })
        } else {
            None
        };
        Decision {
            verdict: outcome.verdict,
            rule_id,
            reason,
            masking_profile: masking,
            review,
            binary,
        }
    }

    /// Decides, and says which rule decided each item and why every other rule did not.
    pub fn explain(
        &self,
        identity: &Identity,
        target: &Target,
        operation: &Operation,
    ) -> Explanation {
        let mut items = Vec::new();
        let decision = self.evaluate(identity, target, operation, &[], None, Some(&mut items));
        Explanation { decision, items }
    }
}

fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Allow => "allow",
        Verdict::Review => "review",
        Verdict::Deny => "deny",
    }
}

impl Policy for CompiledPolicy {
    fn decide(&self, identity: &Identity, target: &Target, operation: &Operation) -> Decision {
        self.evaluate(identity, target, operation, &[], None, None)
    }

    fn decide_with_opaque(
        &self,
        identity: &Identity,
        target: &Target,
        operation: &Operation,
        opaque: &[(usize, String)],
    ) -> Decision {
        self.evaluate(identity, target, operation, opaque, None, None)
    }

    fn decide_classified(
        &self,
        identity: &Identity,
        target: &Target,
        operation: &Classified,
    ) -> Decision {
        self.evaluate(
            identity,
            target,
            operation.operation(),
            operation.opaque(),
            Some(operation),
            None,
        )
    }
}
