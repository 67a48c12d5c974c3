//! Policy file → compiled policy: every pattern is built once, every name checked, every error
//! located (file and line).

use std::collections::{BTreeSet, HashSet};

use globset::GlobMatcher;

use gatehouse_core::{Protocol, ReviewRequirement, Verdict};
use gatehouse_sql::{Risk, StatementKind};

use crate::engine::{CompiledPolicy, ResolvedVerdicts, TargetOverride};
use crate::error::{PolicyError, line_col};
use crate::file::{
    ExecSection, HttpSection, KubeSection, PolicyFile, RuleSection, SqlSection, SshSection,
};
use crate::rules::{
    ExecMatcher, HttpMatcher, KubeMatcher, NamePattern, ProgramPattern, Rule, SqlMatcher,
    SshMatcher, glob, glob_set,
};

/// Default review wait when neither the rule nor `[defaults.review]` gives one.
const DEFAULT_REVIEW_TIMEOUT_MS: u64 = 15 * 60 * 1000;

pub(crate) fn compile(text: &str, file: &str) -> Result<CompiledPolicy, PolicyError> {
    let parsed: PolicyFile = toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map_or((1, 1), |s| line_col(text, s.start));
        PolicyError::Syntax {
            file: file.to_string(),
            line,
            column,
            message: e.message().trim().to_string(),
        }
    })?;
    let invalid = |line: usize, message: String| PolicyError::Invalid {
        file: file.to_string(),
        line,
        message,
    };
    if let Some(v) = parsed.version
        && v != 1
    {
        return Err(invalid(
            1,
            format!("unsupported policy version {v} (expected 1)"),
        ));
    }

    let d = parsed.defaults.verdicts();
    let mut warnings = Vec::new();
    let deprecated = |warnings: &mut Vec<String>, place: &str, v: &crate::file::Verdicts| {
        for (key, set, case) in [
            ("unparseable_sql", v.unparseable_sql.is_some(), "SQL"),
            (
                "non_plain_exec",
                v.non_plain_exec.is_some(),
                "exec commands",
            ),
        ] {
            if set {
                warnings.push(format!(
                    "{file}: {place}: `{key}` is deprecated: it is the `opaque` verdict for {case} only; write `opaque = ...` (see docs/policy.md)"
                ));
            }
        }
    };
    deprecated(&mut warnings, "[defaults]", &d);
    let defaults = ResolvedVerdicts {
        default: d.default.unwrap_or(Verdict::Deny),
        opaque: d.opaque.unwrap_or(Verdict::Review),
        opaque_sql: d.unparseable_sql,
        opaque_exec: d.non_plain_exec,
        ambiguous_http_path: d.ambiguous_http_path.unwrap_or(Verdict::Review),
        copy_program: d.copy_program.unwrap_or(Verdict::Deny),
        encoding_change: d.encoding_change.unwrap_or(Verdict::Deny),
        masking: d.masking,
        binary: d.binary,
    };
    let base_review = ReviewRequirement {
        approver_groups: Vec::new(),
        approvals_required: 1,
        timeout_ms: DEFAULT_REVIEW_TIMEOUT_MS,
        grant_window_ms: None,
    };
    let default_review = match &parsed.defaults.review {
        Some(r) => review_requirement(
            Some(&r.approvers),
            r.approvals,
            r.timeout.as_ref(),
            r.grant_window.as_ref(),
            &base_review,
        )
        .map_err(|m| invalid(1, format!("[defaults.review]: {m}")))?,
        None => base_review,
    };

    let mut targets = Vec::new();
    for t in &parsed.targets {
        let (line, _) = line_col(text, t.span().start);
        let section = t.get_ref();
        let name = match &section.name {
            Some(p) => Some(
                glob(p, false, false)
                    .map_err(|m| invalid(line, format!("[[targets]] name: {m}")))?
                    .compile_matcher(),
            ),
            None => None,
        };
        if name.is_none() && section.tags.is_empty() {
            return Err(invalid(
                line,
                "[[targets]] needs a name glob or tags (use [defaults] for all targets)".into(),
            ));
        }
        let verdicts = section.verdicts();
        deprecated(
            &mut warnings,
            &format!("line {line}: [[targets]]"),
            &verdicts,
        );
        targets.push(TargetOverride {
            name,
            tags: section.tags.clone(),
            verdicts,
        });
    }

    let mut rules = Vec::new();
    let mut ids = HashSet::new();
    for r in &parsed.rules {
        let (line, _) = line_col(text, r.span().start);
        let section = r.get_ref();
        if !ids.insert(section.id.clone()) {
            return Err(invalid(line, format!("duplicate rule id {:?}", section.id)));
        }
        let rule = compile_rule(section, line, &default_review)
            .map_err(|m| invalid(line, format!("rule {:?}: {m}", section.id)))?;
        rules.push(rule);
    }

    Ok(CompiledPolicy::new(
        file.to_string(),
        defaults,
        default_review,
        targets,
        rules,
        warnings,
    ))
}

fn review_requirement(
    approvers: Option<&Vec<String>>,
    approvals: Option<u32>,
    timeout: Option<&crate::file::DurationValue>,
    grant_window: Option<&crate::file::DurationValue>,
    base: &ReviewRequirement,
) -> Result<ReviewRequirement, String> {
    let approvals_required = approvals.unwrap_or(base.approvals_required);
    if approvals_required == 0 {
        return Err("approvals must be at least 1".into());
    }
    Ok(ReviewRequirement {
        approver_groups: approvers
            .cloned()
            .unwrap_or_else(|| base.approver_groups.clone()),
        approvals_required,
        timeout_ms: match timeout {
            Some(t) => t.to_millis()?,
            None => base.timeout_ms,
        },
        grant_window_ms: match grant_window {
            Some(g) => Some(g.to_millis()?),
            None => base.grant_window_ms,
        },
    })
}

fn protocol(name: &str) -> Result<Protocol, String> {
    match name {
        "postgres" | "postgresql" => Ok(Protocol::Postgres),
        "ssh" => Ok(Protocol::Ssh),
        "http" => Ok(Protocol::Http),
        "kubernetes" | "k8s" => Ok(Protocol::Kubernetes),
        other => Err(format!(
            "unknown protocol {other:?} (expected postgres, ssh, http or kubernetes)"
        )),
    }
}

fn non_empty<'a>(
    field: &str,
    list: &'a Option<Vec<String>>,
) -> Result<Option<&'a Vec<String>>, String> {
    match list {
        Some(l) if l.is_empty() => Err(format!(
            "{field} is an empty list: it would never match; remove it or list something"
        )),
        other => Ok(other.as_ref()),
    }
}

fn compile_rule(
    r: &RuleSection,
    line: usize,
    default_review: &ReviewRequirement,
) -> Result<Rule, String> {
    if r.id.trim().is_empty() {
        return Err("id must not be empty".into());
    }
    let has_review_fields = r.approvers.is_some()
        || r.approvals.is_some()
        || r.timeout.is_some()
        || r.grant_window.is_some();
    let review = if r.verdict == Verdict::Review {
        Some(review_requirement(
            r.approvers.as_ref(),
            r.approvals,
            r.timeout.as_ref(),
            r.grant_window.as_ref(),
            default_review,
        )?)
    } else if has_review_fields {
        return Err(
            "approvers/approvals/timeout/grant_window only apply to verdict = \"review\"".into(),
        );
    } else {
        None
    };
    let protocols = match non_empty("protocols", &r.protocols)? {
        Some(list) => Some(
            list.iter()
                .map(|p| protocol(p))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        None => None,
    };
    let targets = non_empty("targets", &r.targets)?
        .map(|l| glob_set(l, false, false))
        .transpose()?;
    let subjects = non_empty("subjects", &r.subjects)?
        .map(|l| glob_set(l, false, false))
        .transpose()?;
    let target_tags = non_empty("target_tags", &r.target_tags)?.cloned();
    let groups = non_empty("groups", &r.groups)?.cloned();
    let rule = Rule {
        id: r.id.clone(),
        reason: r.reason.clone().unwrap_or_else(|| format!("rule {}", r.id)),
        verdict: r.verdict,
        review,
        masking: r.masking.clone(),
        binary: r.binary,
        line,
        protocols,
        targets,
        target_tags,
        subjects,
        groups,
        opaque: r.opaque,
        sql: r
            .sql
            .as_ref()
            .map(|s| sql_matcher(s, r.verdict))
            .transpose()?,
        exec: r.exec.as_ref().map(exec_matcher).transpose()?,
        http: r.http.as_ref().map(http_matcher).transpose()?,
        kube: r.kubernetes.as_ref().map(kube_matcher).transpose()?,
        ssh: r.ssh.as_ref().map(ssh_matcher).transpose()?,
    };
    // Forwarding is decided per destination: a rule that lets `direct_tcpip` through must say
    // where to.
    if let Some(ssh) = &rule.ssh
        && rule.verdict != Verdict::Deny
        && ssh.destinations.is_none()
        && ssh
            .channels
            .as_ref()
            .is_some_and(|c| c.iter().any(|c| c == "direct_tcpip"))
    {
        return Err(
            "a rule that allows or reviews ssh channel direct_tcpip must list ssh.destinations (host:port)"
                .into(),
        );
    }
    let op_sections = [
        rule.sql.is_some(),
        rule.http.is_some(),
        rule.ssh.is_some() || rule.exec.is_some() && rule.kube.is_none(),
        rule.kube.is_some(),
    ];
    if op_sections.iter().filter(|x| **x).count() > 1 {
        return Err(
            "a rule matches one protocol: combine at most one of sql, http, ssh/exec, kubernetes(/exec)"
                .into(),
        );
    }
    if rule.ssh.is_some() && rule.kube.is_some() {
        return Err("a rule cannot have both ssh and kubernetes sections".into());
    }
    Ok(rule)
}

fn sql_matcher(s: &SqlSection, verdict: Verdict) -> Result<SqlMatcher, String> {
    let kinds = match non_empty("sql.kinds", &s.kinds)? {
        Some(list) => {
            let mut set = BTreeSet::new();
            for k in list {
                let kind = StatementKind::from_name(k).ok_or_else(|| {
                    format!(
                        "sql.kinds: unknown kind {k:?} (one of: {})",
                        StatementKind::ALL
                            .iter()
                            .map(|k| k.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })?;
                set.insert(kind);
            }
            Some(set)
        }
        None => None,
    };
    let risks = match &s.risks {
        Some(list) => {
            if list.is_empty() && verdict != Verdict::Allow {
                return Err("sql.risks = [] never matches in a deny/review rule".into());
            }
            let mut set = BTreeSet::new();
            for r in list {
                let risk = Risk::from_name(r).ok_or_else(|| {
                    format!(
                        "sql.risks: unknown risk {r:?} (one of: {})",
                        Risk::ALL
                            .iter()
                            .map(|k| k.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })?;
                set.insert(risk);
            }
            Some(set)
        }
        None => None,
    };
    let names =
        |field: &str, list: &Option<Vec<String>>| -> Result<Option<Vec<NamePattern>>, String> {
            match non_empty(field, list)? {
                Some(l) => Ok(Some(
                    l.iter()
                        .map(|p| NamePattern::new(p).map_err(|m| format!("{field}: {m}")))
                        .collect::<Result<Vec<_>, _>>()?,
                )),
                None => Ok(None),
            }
        };
    Ok(SqlMatcher {
        kinds,
        tables: names("sql.tables", &s.tables)?,
        functions: names("sql.functions", &s.functions)?,
        risks,
        no_where: s.no_where,
    })
}

fn exec_matcher(e: &ExecSection) -> Result<ExecMatcher, String> {
    let program = match non_empty("exec.program", &e.program)? {
        Some(l) => Some(
            l.iter()
                .map(|p| ProgramPattern::new(p))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        None => None,
    };
    let args = match &e.args {
        Some(list) => {
            let (patterns, rest) = match list.split_last() {
                Some((last, init)) if last == "**" => (init, true),
                _ => (list.as_slice(), false),
            };
            let globs: Vec<GlobMatcher> = patterns
                .iter()
                .map(|p| glob(p, false, false).map(|g| g.compile_matcher()))
                .collect::<Result<_, _>>()?;
            Some((globs, rest))
        }
        None => None,
    };
    Ok(ExecMatcher {
        program,
        args,
        any_arg: non_empty("exec.any_arg", &e.any_arg)?
            .map(|l| glob_set(l, false, false))
            .transpose()?,
        no_arg: non_empty("exec.no_arg", &e.no_arg)?
            .map(|l| glob_set(l, false, false))
            .transpose()?,
        options: match non_empty("exec.options", &e.options)? {
            Some(list) => {
                for o in list {
                    let valid = o.len() > 1
                        && o.starts_with('-')
                        && o != "--"
                        && !o.contains('=')
                        && (o.starts_with("--") || o.chars().count() == 2 || !o.contains(' '));
                    if !valid {
                        return Err(format!(
                            "exec.options: {o:?} is not an option (write `-r` or `--recursive`, one per entry)"
                        ));
                    }
                }
                Some(list.clone())
            }
            None => None,
        },
        plain: e.plain,
    })
}

fn http_matcher(h: &HttpSection) -> Result<HttpMatcher, String> {
    let methods = non_empty("http.methods", &h.methods)?
        .map(|l| l.iter().map(|m| m.to_ascii_uppercase()).collect());
    let paths = match non_empty("http.paths", &h.paths)? {
        Some(l) => {
            for p in l {
                if !p.starts_with('/') {
                    return Err(format!("http.paths: {p:?} must start with '/'"));
                }
            }
            Some(glob_set(l, true, h.case_insensitive)?)
        }
        None => None,
    };
    Ok(HttpMatcher { methods, paths })
}

fn kube_matcher(k: &KubeSection) -> Result<KubeMatcher, String> {
    let set = |field: &str, l: &Option<Vec<String>>| {
        non_empty(field, l)?
            .map(|l| glob_set(l, false, false))
            .transpose()
    };
    Ok(KubeMatcher {
        verbs: set("kubernetes.verbs", &k.verbs)?,
        api_groups: set("kubernetes.api_groups", &k.api_groups)?,
        resources: set("kubernetes.resources", &k.resources)?,
        subresources: set("kubernetes.subresources", &k.subresources)?,
        namespaces: set("kubernetes.namespaces", &k.namespaces)?,
        names: set("kubernetes.names", &k.names)?,
    })
}

const SSH_CHANNELS: &[&str] = &[
    "shell",
    "exec",
    "subsystem",
    "scp",
    "rsync",
    "git",
    "direct_tcpip",
    "env",
    // Accepted so deny rules can name them; the engine refuses them whatever a rule says.
    "tcpip_forward",
    "agent_forward",
    "x11",
];

fn ssh_matcher(s: &SshSection) -> Result<SshMatcher, String> {
    if let Some(list) = non_empty("ssh.channels", &s.channels)? {
        for c in list {
            if !SSH_CHANNELS.contains(&c.as_str()) {
                return Err(format!(
                    "ssh.channels: unknown channel {c:?} (one of: {})",
                    SSH_CHANNELS.join(", ")
                ));
            }
        }
    }
    Ok(SshMatcher {
        channels: s.channels.clone(),
        subsystems: non_empty("ssh.subsystems", &s.subsystems)?
            .map(|l| glob_set(l, false, false))
            .transpose()?,
        destinations: non_empty("ssh.destinations", &s.destinations)?
            .map(|l| glob_set(l, false, false))
            .transpose()?,
        env: non_empty("ssh.env", &s.env)?
            .map(|l| glob_set(l, false, false))
            .transpose()?,
    })
}
