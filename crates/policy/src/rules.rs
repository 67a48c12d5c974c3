//! Compiled rules and their matchers.
//!
//! The one idea to remember: **a matcher over the things an operation touches leans toward the
//! stricter outcome.** In an `allow` rule, a list must cover *everything* the statement or
//! command does (all kinds, all tables, all functions, all risks; an unqualified program name
//! never matches a path); in a `deny` or `review` rule, *anything* in the list is enough (and an
//! absent value, such as a cluster-wide Kubernetes request against a `namespaces` list, counts
//! as a match). So an allow-list cannot be widened by adding a second statement, a writable CTE,
//! a join, or a path to a program, and a deny-list is not dodged by omitting a name.

use std::collections::BTreeSet;

use globset::{Glob, GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};

use gatehouse_core::{Identity, KubeOperation, Protocol, ReviewRequirement, Target, Verdict};
use gatehouse_sql::{Risk, StatementInfo, StatementKind};

/// Why a rule did not match (static: tracing costs nothing on the hot path).
pub(crate) type Miss = &'static str;

/// What a rule is evaluated on.
pub(crate) enum Subject<'a> {
    /// One SQL statement.
    Sql(&'a StatementInfo),
    /// One simple command of an exec command line (SSH exec, or Kubernetes exec/attach).
    Exec {
        argv: &'a [String],
        plain: bool,
        kube: Option<&'a KubeOperation>,
        /// More arguments are added at run time (`xargs`).
        extra_args: bool,
        /// The gateway cannot determine what this command does.
        opaque: bool,
    },
    /// An HTTP request with its canonical path.
    Http { method: &'a str, path: &'a str },
    /// A Kubernetes request without a command.
    Kube(&'a KubeOperation),
    /// An SSH channel request other than exec: channel kind and detail.
    Ssh {
        channel: &'static str,
        /// The subsystem name, or the variable name of an `env` request.
        subsystem: Option<&'a str>,
        destination: Option<String>,
    },
}

/// Whether a SQL statement is opaque: its effect cannot be read from its text (unreadable,
/// or code the classifier cannot see into: `DO`, `CALL`, and whatever gatehouse-sql marks
/// with [`Risk::OpaqueCode`]).
pub(crate) fn sql_is_opaque(stmt: &StatementInfo) -> bool {
    matches!(
        stmt.kind,
        StatementKind::Unparseable | StatementKind::DoBlock | StatementKind::Call
    ) || stmt.has(Risk::OpaqueCode)
}

impl Subject<'_> {
    /// Whether the item is opaque (see docs/policy.md).
    pub fn is_opaque(&self) -> bool {
        match self {
            Subject::Sql(stmt) => sql_is_opaque(stmt),
            Subject::Exec { opaque, .. } => *opaque,
            Subject::Ssh { channel, .. } => *channel == "shell",
            // `attach` feeds input to whatever the container runs (often a shell): like an
            // interactive shell, its effect is not in the request.
            Subject::Kube(op) => op.verb == "attach",
            Subject::Http { .. } => false,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Rule {
    pub id: String,
    pub reason: String,
    pub verdict: Verdict,
    pub review: Option<ReviewRequirement>,
    pub masking: Option<String>,
    /// `binary = "refuse" | "raw"` (see [`gatehouse_core::BinaryHandling`]).
    pub binary: Option<gatehouse_core::BinaryHandling>,
    pub line: usize,
    pub protocols: Option<Vec<Protocol>>,
    pub targets: Option<GlobSet>,
    pub target_tags: Option<Vec<String>>,
    pub subjects: Option<GlobSet>,
    pub groups: Option<Vec<String>>,
    /// `opaque = true|false` (see [`crate::file::RuleSection::opaque`]).
    pub opaque: Option<bool>,
    pub sql: Option<SqlMatcher>,
    pub exec: Option<ExecMatcher>,
    pub http: Option<HttpMatcher>,
    pub kube: Option<KubeMatcher>,
    pub ssh: Option<SshMatcher>,
}

impl Rule {
    /// Deny and review rules match loosely (anything listed is enough); allow rules strictly.
    fn loose(&self) -> bool {
        self.verdict != Verdict::Allow
    }

    /// Whether the rule can apply to this protocol at all (cheap pre-filter).
    pub fn applies_to(&self, protocol: Protocol) -> bool {
        if let Some(protocols) = &self.protocols
            && !protocols.contains(&protocol)
        {
            return false;
        }
        let sections = [
            (self.sql.is_some(), Protocol::Postgres),
            (self.http.is_some(), Protocol::Http),
            (self.ssh.is_some(), Protocol::Ssh),
        ];
        for (present, p) in sections {
            if present && p != protocol {
                return false;
            }
        }
        if self.kube.is_some() && protocol != Protocol::Kubernetes {
            return false;
        }
        if self.exec.is_some() && !matches!(protocol, Protocol::Ssh | Protocol::Kubernetes) {
            return false;
        }
        true
    }

    /// Matches the who/where part.
    pub fn match_context(&self, identity: &Identity, target: &Target) -> Result<(), Miss> {
        if let Some(protocols) = &self.protocols
            && !protocols.contains(&target.protocol)
        {
            return Err("protocol not listed");
        }
        if let Some(globs) = &self.targets
            && !globs.is_match(&target.name)
        {
            return Err("target name not matched");
        }
        if let Some(tags) = &self.target_tags
            && !tags.iter().any(|t| target.tags.contains(t))
        {
            return Err("target has none of the tags");
        }
        if let Some(globs) = &self.subjects
            && !globs.is_match(&identity.subject)
        {
            return Err("subject not matched");
        }
        if let Some(groups) = &self.groups
            && !groups.iter().any(|g| identity.in_group(g))
        {
            return Err("identity in none of the groups");
        }
        Ok(())
    }

    /// Whether this rule is written for the opaque item `subject`: `opaque = true`, or a
    /// section that names the opaque form itself (`sql.kinds` with `unparseable` for an
    /// unreadable statement, `ssh.channels` with `shell` for an interactive shell). Such a
    /// rule's verdict is final; any other rule that matches an opaque item is raised to the
    /// `opaque` verdict.
    pub fn written_for_opaque(&self, subject: &Subject<'_>) -> bool {
        if self.opaque == Some(true) {
            return true;
        }
        match subject {
            Subject::Sql(stmt) => {
                stmt.kind == StatementKind::Unparseable
                    && self.sql.as_ref().is_some_and(|m| {
                        m.kinds
                            .as_ref()
                            .is_some_and(|k| k.contains(&StatementKind::Unparseable))
                    })
            }
            Subject::Ssh { channel, .. } => {
                *channel == "shell"
                    && self.ssh.as_ref().is_some_and(|m| {
                        m.channels
                            .as_ref()
                            .is_some_and(|c| c.iter().any(|c| c == "shell"))
                    })
            }
            Subject::Kube(op) => {
                op.verb == "attach"
                    && self.kube.as_ref().is_some_and(|m| {
                        m.verbs.as_ref().is_some_and(|v| {
                            v.is_match("attach") && !v.is_match("attach-not-a-verb")
                        })
                    })
            }
            _ => false,
        }
    }

    /// Matches the operation part.
    pub fn match_subject(&self, subject: &Subject<'_>) -> Result<(), Miss> {
        let loose = self.loose();
        let opaque = subject.is_opaque();
        match self.opaque {
            Some(true) if !opaque => return Err("rule is for opaque operations"),
            Some(false) if opaque => return Err("operation is opaque"),
            None if opaque && !loose && !self.written_for_opaque(subject) => {
                return Err("operation is opaque: only a rule with opaque = true allows it");
            }
            _ => {}
        }
        match subject {
            Subject::Sql(stmt) => {
                if self.exec.is_some()
                    || self.http.is_some()
                    || self.kube.is_some()
                    || self.ssh.is_some()
                {
                    return Err("rule is for another protocol");
                }
                match &self.sql {
                    Some(m) => m.matches(stmt, loose),
                    None => Ok(()),
                }
            }
            Subject::Exec {
                argv,
                plain,
                kube,
                extra_args,
                ..
            } => {
                if self.sql.is_some() || self.http.is_some() {
                    return Err("rule is for another protocol");
                }
                match kube {
                    Some(op) => {
                        if self.ssh.is_some() {
                            return Err("rule is for ssh");
                        }
                        if let Some(m) = &self.kube {
                            m.matches(op, loose)?;
                        }
                    }
                    None => {
                        if self.kube.is_some() {
                            return Err("rule is for kubernetes");
                        }
                        if let Some(m) = &self.ssh {
                            m.matches("exec", None, None, loose)?;
                        }
                    }
                }
                match &self.exec {
                    Some(m) => m.matches(argv, *plain, *extra_args, loose),
                    None => Ok(()),
                }
            }
            Subject::Http { method, path } => {
                if self.sql.is_some()
                    || self.exec.is_some()
                    || self.kube.is_some()
                    || self.ssh.is_some()
                {
                    return Err("rule is for another protocol");
                }
                match &self.http {
                    Some(m) => m.matches(method, path),
                    None => Ok(()),
                }
            }
            Subject::Kube(op) => {
                if self.sql.is_some() || self.http.is_some() || self.ssh.is_some() {
                    return Err("rule is for another protocol");
                }
                if self.exec.is_some() {
                    return Err("rule needs an exec command");
                }
                match &self.kube {
                    Some(m) => m.matches(op, loose),
                    None => Ok(()),
                }
            }
            Subject::Ssh {
                channel,
                subsystem,
                destination,
            } => {
                if self.sql.is_some()
                    || self.http.is_some()
                    || self.kube.is_some()
                    || self.exec.is_some()
                {
                    return Err("rule is for another protocol");
                }
                match &self.ssh {
                    Some(m) => m.matches(channel, *subsystem, destination.as_deref(), loose),
                    // A channel other than exec is allowed only by a rule that names it.
                    None if loose => Ok(()),
                    None => Err("allowing an ssh channel needs ssh.channels naming it"),
                }
            }
        }
    }
}

/// Builds one glob. `literal_separator`: `*` stops at `/` (paths).
pub(crate) fn glob(
    pattern: &str,
    literal_separator: bool,
    case_insensitive: bool,
) -> Result<Glob, String> {
    GlobBuilder::new(pattern)
        .literal_separator(literal_separator)
        .case_insensitive(case_insensitive)
        .backslash_escape(true)
        .build()
        .map_err(|e| format!("bad pattern {pattern:?}: {e}"))
}

pub(crate) fn glob_set(
    patterns: &[String],
    literal_separator: bool,
    case_insensitive: bool,
) -> Result<GlobSet, String> {
    let mut builder = GlobSetBuilder::new();
    for p in patterns {
        builder.add(glob(p, literal_separator, case_insensitive)?);
    }
    builder.build().map_err(|e| e.to_string())
}

/// A table or function name pattern (see the module docs for qualified vs unqualified).
#[derive(Debug)]
pub(crate) struct NamePattern {
    full: GlobMatcher,
    /// The pattern's last part, for matching unqualified names loosely.
    last: GlobMatcher,
    qualified: bool,
}

impl NamePattern {
    pub fn new(pattern: &str) -> Result<Self, String> {
        let qualified = pattern.contains('.');
        let last_part = pattern.rsplit('.').next().unwrap_or(pattern);
        Ok(Self {
            full: glob(pattern, false, false)?.compile_matcher(),
            last: glob(last_part, false, false)?.compile_matcher(),
            qualified,
        })
    }

    /// `name` is normalised (`schema.table` or `table`; a catalog prefix is dropped here,
    /// PostgreSQL requires it to be the current database anyway).
    fn matches(&self, name: &str, loose: bool) -> bool {
        let parts: Vec<&str> = name.split('.').collect();
        let (schema, base) = match parts.as_slice() {
            [.., s, b] => (Some(*s), *b),
            [b] => (None, *b),
            [] => (None, name),
        };
        if !self.qualified {
            return self.last.is_match(base);
        }
        match schema {
            Some(s) => self.full.is_match(format!("{s}.{base}")),
            // Unqualified reference vs `schema.table` pattern: it may resolve there through
            // search_path. A deny rule counts it; an allow rule does not.
            None => loose && self.last.is_match(base),
        }
    }
}

fn names_match(patterns: &[NamePattern], names: &BTreeSet<String>, loose: bool) -> bool {
    let hit = |n: &String| patterns.iter().any(|p| p.matches(n, loose));
    if loose {
        names.iter().any(hit)
    } else {
        names.iter().all(hit)
    }
}

#[derive(Debug)]
pub(crate) struct SqlMatcher {
    pub kinds: Option<BTreeSet<StatementKind>>,
    pub tables: Option<Vec<NamePattern>>,
    pub functions: Option<Vec<NamePattern>>,
    pub risks: Option<BTreeSet<Risk>>,
    pub no_where: Option<bool>,
}

impl SqlMatcher {
    fn matches(&self, stmt: &StatementInfo, loose: bool) -> Result<(), Miss> {
        if stmt.kind == StatementKind::Unparseable {
            // Rules cannot judge what was not read, except rules written for it.
            let for_unparseable = self
                .kinds
                .as_ref()
                .is_some_and(|k| k.contains(&StatementKind::Unparseable));
            let content_free = self.tables.is_none()
                && self.functions.is_none()
                && self.risks.is_none()
                && self.no_where.is_none();
            return if for_unparseable && content_free {
                Ok(())
            } else {
                Err("statement could not be read")
            };
        }
        if let Some(kinds) = &self.kinds {
            let ok = if loose {
                stmt.kinds.iter().any(|k| kinds.contains(k))
            } else {
                stmt.kinds.iter().all(|k| kinds.contains(k))
            };
            if !ok {
                return Err("sql kinds");
            }
        }
        if let Some(tables) = &self.tables {
            if loose && stmt.tables.is_empty() {
                return Err("sql tables (none touched)");
            }
            if !names_match(tables, &stmt.tables, loose) {
                return Err("sql tables");
            }
        }
        if let Some(functions) = &self.functions {
            if loose && stmt.functions.is_empty() {
                return Err("sql functions (none called)");
            }
            if !names_match(functions, &stmt.functions, loose) {
                return Err("sql functions");
            }
        }
        if let Some(risks) = &self.risks {
            let ok = if loose {
                stmt.risks.iter().any(|r| risks.contains(r))
            } else {
                stmt.risks.iter().all(|r| risks.contains(r))
            };
            if !ok {
                return Err("sql risks");
            }
        }
        if let Some(no_where) = self.no_where
            && stmt.has(Risk::WriteWithoutWhere) != no_where
        {
            return Err("sql no_where");
        }
        Ok(())
    }
}

#[derive(Debug)]
pub(crate) struct ProgramPattern {
    glob: GlobMatcher,
    has_slash: bool,
}

impl ProgramPattern {
    pub fn new(pattern: &str) -> Result<Self, String> {
        Ok(Self {
            glob: glob(pattern, false, false)?.compile_matcher(),
            has_slash: pattern.contains('/'),
        })
    }

    fn matches(&self, program: &str, loose: bool) -> bool {
        if self.has_slash {
            return self.glob.is_match(program);
        }
        if loose {
            let base = program.rsplit('/').next().unwrap_or(program);
            self.glob.is_match(base)
        } else {
            !program.contains('/') && self.glob.is_match(program)
        }
    }
}

#[derive(Debug)]
pub(crate) struct ExecMatcher {
    pub program: Option<Vec<ProgramPattern>>,
    /// Positional globs for argv[1..]; `rest`: the list ended with `"**"`.
    pub args: Option<(Vec<GlobMatcher>, bool)>,
    pub any_arg: Option<GlobSet>,
    pub no_arg: Option<GlobSet>,
    /// Options as the program reads them (`gatehouse_core::command::read_options`).
    pub options: Option<Vec<String>>,
    pub plain: Option<bool>,
}

impl ExecMatcher {
    fn matches(
        &self,
        argv: &[String],
        plain: bool,
        extra_args: bool,
        loose: bool,
    ) -> Result<(), Miss> {
        if let Some(p) = self.plain
            && p != plain
        {
            return Err("exec plain");
        }
        let (program, args) = match argv.split_first() {
            Some((p, a)) => (p.as_str(), a),
            None => ("", &[][..]),
        };
        if let Some(programs) = &self.program
            && !programs.iter().any(|p| p.matches(program, loose))
        {
            return Err("exec program");
        }
        let constrains_args = self.args.is_some()
            || self.any_arg.is_some()
            || self.no_arg.is_some()
            || self.options.is_some();
        if extra_args && constrains_args {
            // Arguments read at run time (`xargs`) could be anything: a deny rule on them
            // matches, an allow rule does not.
            return if loose {
                Ok(())
            } else {
                Err("exec args (more are read at run time)")
            };
        }
        if let Some(options) = &self.options {
            let reading = gatehouse_core::command::read_options(program, args);
            let ok = if loose {
                options.iter().any(|o| reading.uses(program, o, true))
            } else {
                reading.only_uses(program, options)
            };
            if !ok {
                return Err("exec options");
            }
        }
        if let Some((patterns, rest)) = &self.args {
            let len_ok = if *rest {
                args.len() >= patterns.len()
            } else {
                args.len() == patterns.len()
            };
            if !len_ok || !patterns.iter().zip(args).all(|(p, a)| p.is_match(a)) {
                return Err("exec args");
            }
            // `/var/log/*` must not allow `/var/log/../../etc/shadow`: arguments are not
            // canonical paths, so an allow rule never matches a `..` segment.
            if !loose && args.iter().any(|a| has_dot_dot_segment(a)) {
                return Err("exec args (`..` path segment)");
            }
        }
        if let Some(set) = &self.any_arg
            && !args.iter().any(|a| set.is_match(a))
        {
            return Err("exec any_arg");
        }
        if let Some(set) = &self.no_arg
            && args.iter().any(|a| set.is_match(a))
        {
            return Err("exec no_arg");
        }
        Ok(())
    }
}

fn has_dot_dot_segment(arg: &str) -> bool {
    arg.split('/').any(|seg| seg == "..")
}

#[derive(Debug)]
pub(crate) struct HttpMatcher {
    /// Upper-case methods; `*` is any.
    pub methods: Option<Vec<String>>,
    pub paths: Option<GlobSet>,
}

impl HttpMatcher {
    fn matches(&self, method: &str, path: &str) -> Result<(), Miss> {
        if let Some(methods) = &self.methods
            && !methods
                .iter()
                .any(|m| m == "*" || m.eq_ignore_ascii_case(method))
        {
            return Err("http method");
        }
        if let Some(paths) = &self.paths
            && !paths.is_match(path)
        {
            return Err("http path");
        }
        Ok(())
    }
}

#[derive(Debug)]
pub(crate) struct KubeMatcher {
    pub verbs: Option<GlobSet>,
    pub api_groups: Option<GlobSet>,
    pub resources: Option<GlobSet>,
    pub subresources: Option<GlobSet>,
    pub namespaces: Option<GlobSet>,
    pub names: Option<GlobSet>,
}

/// An optional value against an optional glob list: an absent value is "could be anything",
/// which matches loosely and fails strictly.
fn optional_match(set: Option<&GlobSet>, value: Option<&str>, loose: bool) -> bool {
    match (set, value) {
        (None, _) => true,
        (Some(set), Some(v)) => set.is_match(v),
        (Some(_), None) => loose,
    }
}

impl KubeMatcher {
    fn matches(&self, op: &KubeOperation, loose: bool) -> Result<(), Miss> {
        if !optional_match(self.verbs.as_ref(), Some(&op.verb), loose) {
            return Err("kubernetes verb");
        }
        if !optional_match(self.api_groups.as_ref(), Some(&op.group), loose) {
            return Err("kubernetes api group");
        }
        if !optional_match(self.resources.as_ref(), Some(&op.resource), loose) {
            return Err("kubernetes resource");
        }
        // No subresource is a definite value (the object itself), not an unknown.
        if let Some(set) = &self.subresources {
            match &op.subresource {
                Some(s) if set.is_match(s) => {}
                _ => return Err("kubernetes subresource"),
            }
        }
        if !optional_match(self.namespaces.as_ref(), op.namespace.as_deref(), loose) {
            return Err("kubernetes namespace");
        }
        if !optional_match(self.names.as_ref(), op.name.as_deref(), loose) {
            return Err("kubernetes name");
        }
        Ok(())
    }
}

#[derive(Debug)]
pub(crate) struct SshMatcher {
    pub channels: Option<Vec<String>>,
    pub subsystems: Option<GlobSet>,
    pub destinations: Option<GlobSet>,
    /// Variable names an `env` request may set.
    pub env: Option<GlobSet>,
}

impl SshMatcher {
    fn matches(
        &self,
        channel: &str,
        subsystem: Option<&str>,
        destination: Option<&str>,
        loose: bool,
    ) -> Result<(), Miss> {
        match &self.channels {
            Some(channels) if !channels.iter().any(|c| c == channel) => {
                return Err("ssh channel");
            }
            // An allow rule must name a channel other than exec: `ssh = {}` allows nothing new.
            None if !loose && channel != "exec" => {
                return Err("allowing an ssh channel needs ssh.channels naming it");
            }
            _ => {}
        }
        if self.subsystems.is_some()
            && channel == "subsystem"
            && !optional_match(self.subsystems.as_ref(), subsystem, loose)
        {
            return Err("ssh subsystem");
        }
        if self.env.is_some()
            && channel == "env"
            && !optional_match(self.env.as_ref(), subsystem, loose)
        {
            return Err("ssh env variable");
        }
        if self.destinations.is_some()
            && matches!(channel, "direct_tcpip" | "tcpip_forward")
            && !optional_match(self.destinations.as_ref(), destination, loose)
        {
            return Err("ssh destination");
        }
        Ok(())
    }
}
