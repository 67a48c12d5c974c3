//! Classification from PostgreSQL's own parse tree (see [`crate::pg`]).
//!
//! The tree comes as JSON (the `pg_query` protobuf messages serialised field by field), so the
//! walk reaches every node whatever statement holds it: relations are found by shape (every
//! object with a `relname` is a `RangeVar`), function calls likewise (`funcname` +
//! `funcformat`), and statements nested anywhere (writable CTEs, `PREPARE … AS`, `EXPLAIN`,
//! `COPY (…)`, `CREATE TABLE … AS`, rule actions) add their kinds.

use std::collections::BTreeSet;

use pg_query::protobuf::{
    AlterTableType, CmdType, ConstrType, DiscardMode, ObjectType, VariableSetKind,
};
use serde_json::{Map, Value};

use crate::classify::{Risk, StatementInfo, StatementKind as K};

/// Built-in functions reviewed as side-effect-free (see the file for what is left out, and why).
const SAFE_FUNCTIONS: &str = include_str!("data/safe_functions.txt");

static SAFE: std::sync::LazyLock<BTreeSet<&'static str>> = std::sync::LazyLock::new(|| {
    SAFE_FUNCTIONS
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
});

/// Whether `name` (a normalised, possibly qualified name) is a reviewed side-effect-free built-in.
pub fn is_safe_function(name: &str) -> bool {
    let base = match name.split_once('.') {
        None => name,
        Some(("pg_catalog", rest)) if !rest.contains('.') => rest,
        Some(_) => return false,
    };
    SAFE.contains(base)
}

/// Settings whose change alters what later statements run or how their text is read. Changing
/// one makes the statement opaque (the gateway cannot know what follows runs as it reads it).
pub const OPAQUE_SETTINGS: &[&str] = &[
    "search_path",
    "role",
    "session_authorization",
    "session_replication_role",
    "standard_conforming_strings",
    "client_encoding",
    "backslash_quote",
    "local_preload_libraries",
    "session_preload_libraries",
    // Database-side backstops (a lock held in an idle transaction, a statement that runs or
    // waits forever): turning one off removes a limit the deployment relies on.
    "idle_in_transaction_session_timeout",
    "statement_timeout",
    "lock_timeout",
    "transaction_timeout",
    "all",
    "*",
];

fn i(v: &Value, key: &str) -> i64 {
    v.get(key).and_then(Value::as_i64).unwrap_or(0)
}

fn b(v: &Value, key: &str) -> bool {
    v.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn s<'v>(v: &'v Value, key: &str) -> &'v str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn present(v: &Value, key: &str) -> bool {
    v.get(key).is_some_and(|x| !x.is_null())
}

/// The single `{"Tag": body}` of a `Node`, however it is wrapped (`{"node": {...}}` or bare).
fn tagged(v: &Value) -> Option<(&str, &Value)> {
    let v = match v.get("node") {
        Some(inner) => inner,
        None => v,
    };
    let obj = v.as_object()?;
    let mut it = obj.iter();
    let (tag, body) = it.next()?;
    if it.next().is_some() || !tag.starts_with(|c: char| c.is_ascii_uppercase()) {
        return None;
    }
    Some((tag.as_str(), body))
}

/// `[{"String": {"sval": "a"}}, …]` → `a.b`; `None` if any part is not a string.
fn name_list(v: &Value) -> Option<String> {
    let items = match v.as_array() {
        Some(a) => a,
        None => tagged(v)
            .filter(|(t, _)| *t == "List")
            .and_then(|(_, body)| body.get("items"))?
            .as_array()?,
    };
    let mut parts = Vec::with_capacity(items.len());
    for item in items {
        match tagged(item) {
            Some(("String", body)) => parts.push(s(body, "sval").to_string()),
            _ => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("."))
}

fn range_var_name(body: &Map<String, Value>) -> String {
    let part = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or("");
    [part("catalogname"), part("schemaname"), part("relname")]
        .into_iter()
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(".")
}

fn is(v: i64, e: impl Into<i32>) -> bool {
    v == i64::from(e.into())
}

/// The kind of a statement node by its tag.
pub fn kind_of(tag: &str, body: &Value) -> K {
    match tag {
        "SelectStmt" => K::Select,
        "InsertStmt" => K::Insert,
        "UpdateStmt" => K::Update,
        "DeleteStmt" => K::Delete,
        "MergeStmt" => K::Merge,
        "TruncateStmt" => K::Truncate,
        "CopyStmt" => K::Copy,
        "GrantStmt" | "GrantRoleStmt" => {
            if b(body, "is_grant") {
                K::Grant
            } else {
                K::Revoke
            }
        }
        "AlterDefaultPrivilegesStmt" => match body.get("action") {
            Some(action) if !b(action, "is_grant") => K::Revoke,
            _ => K::Grant,
        },
        "VariableSetStmt" | "DiscardStmt" | "ConstraintsSetStmt" => K::Set,
        "VariableShowStmt" => K::Show,
        "DoStmt" => K::DoBlock,
        "CallStmt" => K::Call,
        "PrepareStmt" => K::Prepare,
        "ExecuteStmt" => K::Execute,
        "DeallocateStmt" => K::Deallocate,
        "TransactionStmt" => K::Transaction,
        "ExplainStmt" => K::Explain,
        "LockStmt" => K::Lock,
        "VacuumStmt" | "ReindexStmt" | "ClusterStmt" | "CheckPointStmt" | "RefreshMatViewStmt" => {
            K::Maintenance
        }
        "ListenStmt" | "UnlistenStmt" | "NotifyStmt" => K::Notify,
        "DeclareCursorStmt" | "FetchStmt" | "ClosePortalStmt" => K::Cursor,
        "AlterSystemStmt" => K::AlterSystem,
        "CreateTableAsStmt" => K::Ddl,
        "DropStmt"
        | "DropRoleStmt"
        | "DropdbStmt"
        | "DropTableSpaceStmt"
        | "DropUserMappingStmt"
        | "DropSubscriptionStmt"
        | "DropOwnedStmt" => K::Drop,
        "LoadStmt" => K::Other,
        t if t.starts_with("Create")
            || t.starts_with("Alter")
            || t.starts_with("Define")
            || t.starts_with("Comment")
            || t.starts_with("Rename")
            || t.starts_with("Composite")
            || t.starts_with("Import")
            || t.starts_with("Reassign")
            || t.starts_with("SecLabel")
            || t == "IndexStmt"
            || t == "ViewStmt"
            || t == "RuleStmt" =>
        {
            K::Ddl
        }
        _ => K::Other,
    }
}

/// What a statement node is opaque for, if its own form makes it so.
fn opaque_form(tag: &str, body: &Value) -> Option<String> {
    let why = match tag {
        "DoStmt" => "a DO block runs code that is not in the statement's text".to_string(),
        "CallStmt" => "CALL runs a procedure whose body is not in the statement's text".into(),
        "LoadStmt" => "LOAD loads a shared library into the server".into(),
        "ExecuteStmt" => format!(
            "EXECUTE runs prepared statement {:?}, whose text is not in this statement",
            s(body, "name")
        ),
        "CreateFunctionStmt" => {
            let what = if b(body, "is_procedure") {
                "procedure"
            } else {
                "function"
            };
            format!("creates or replaces a {what}: code that later statements run")
        }
        "AlterFunctionStmt" => "changes how a function or procedure runs".into(),
        // Roles and their passwords: `ALTER ROLE current_user PASSWORD …` changes the very
        // credential the gateway holds for the target (locking every session out, and handing
        // the caller a login that bypasses the gateway); new roles and memberships change who
        // may do what outside the gateway's view.
        "CreateRoleStmt" | "AlterRoleStmt" | "AlterRoleSetStmt" | "DropRoleStmt"
        | "GrantRoleStmt" | "RenameStmt"
            if tag != "RenameStmt" || is(i(body, "rename_type"), ObjectType::ObjectRole) =>
        {
            "creates, changes or drops a role or its membership (a password change would change              the credential the gateway holds for this target)"
                .into()
        }
        "CreateTrigStmt" => "creates a trigger: code that runs on later writes".into(),
        // A range type's `subtype_diff` / `canonical` functions run inside GiST index builds,
        // ANALYZE and the planner's estimates of ordinary statements on its columns.
        "CreateRangeStmt" => {
            "creates a range type: its subtype_diff and canonical functions run implicitly in \
             later statements (index builds, ANALYZE, planning)"
                .into()
        }
        // Renaming or moving a routine changes which code a name (a trigger, a default, a range
        // type, a later call) resolves to.
        "RenameStmt" | "AlterObjectSchemaStmt"
            if [
                ObjectType::ObjectFunction,
                ObjectType::ObjectProcedure,
                ObjectType::ObjectRoutine,
                ObjectType::ObjectAggregate,
                ObjectType::ObjectOperator,
            ]
            .into_iter()
            .any(|k| {
                is(i(body, "rename_type"), k) || is(i(body, "object_type"), k) || is(i(body, "objectType"), k)
            }) =>
        {
            "renames a function, procedure or operator or moves it to another schema: changes \
             which code later statements reach"
                .into()
        }
        "RuleStmt" => "creates a rule: it rewrites later statements".into(),
        "CreateEventTrigStmt" | "AlterEventTrigStmt" => {
            "creates or changes an event trigger: code that runs on later DDL".into()
        }
        "CreatePolicyStmt" | "AlterPolicyStmt" => {
            "creates or changes a row security policy: expressions that run on later statements"
                .into()
        }
        "CreateExtensionStmt" | "AlterExtensionStmt" => {
            "creates or updates an extension: runs its installation scripts".into()
        }
        "CreateCastStmt" | "CreateConversionStmt" | "CreateTransformStmt" => {
            "defines a cast, conversion or transform: code that later statements run implicitly"
                .into()
        }
        "DefineStmt"
            if [
                ObjectType::ObjectOperator,
                ObjectType::ObjectAggregate,
                ObjectType::ObjectType,
                ObjectType::ObjectTsparser,
                ObjectType::ObjectTstemplate,
            ]
            .into_iter()
            .any(|k| is(i(body, "kind"), k)) =>
        {
            "defines an operator, aggregate, base type or text search parser or template: code \
             that later statements run implicitly"
                .into()
        }
        // An operator class's support functions run in every index build and index write
        // on a column of its type (its default class) or that names it.
        "CreateOpClassStmt" | "CreateOpFamilyStmt" | "AlterOpFamilyStmt" => {
            "creates or changes an operator class or family: support functions that index \
             builds and writes run implicitly"
                .into()
        }
        "CreatePlangStmt" | "CreateAmStmt" | "CreateFdwStmt" | "AlterFdwStmt" => {
            "defines a language, access method or foreign-data wrapper: handler code that later \
             statements run"
                .into()
        }
        "AlterOwnerStmt"
            if [
                ObjectType::ObjectFunction,
                ObjectType::ObjectProcedure,
                ObjectType::ObjectRoutine,
                ObjectType::ObjectAggregate,
            ]
            .into_iter()
            .any(|k| is(i(body, "object_type"), k)) =>
        {
            "changes a function's owner: a SECURITY DEFINER function then runs with the new \
             owner's rights"
                .into()
        }
        "AlterTableCmd" => {
            let sub = i(body, "subtype");
            let toggles = [
                AlterTableType::AtEnableTrig,
                AlterTableType::AtEnableAlwaysTrig,
                AlterTableType::AtEnableReplicaTrig,
                AlterTableType::AtDisableTrig,
                AlterTableType::AtEnableTrigAll,
                AlterTableType::AtDisableTrigAll,
                AlterTableType::AtEnableTrigUser,
                AlterTableType::AtDisableTrigUser,
                AlterTableType::AtEnableRule,
                AlterTableType::AtEnableAlwaysRule,
                AlterTableType::AtEnableReplicaRule,
                AlterTableType::AtDisableRule,
            ];
            if toggles.into_iter().any(|t| is(sub, t)) {
                "enables or disables a trigger or rule".into()
            } else {
                return None;
            }
        }
        _ => return None,
    };
    Some(why)
}

/// Whether an update's `SET` list (`target_list` of an `UpdateStmt`, `OnConflictClause` or
/// `MergeWhenClause`) takes a value from a column or a subquery rather than from constants and
/// parameters alone.
fn sets_from_columns(body: &Value) -> bool {
    body.get("target_list").is_some_and(reads_columns)
}

/// Whether an expression (or list of them) reads a column or runs a subquery.
fn reads_columns(v: &Value) -> bool {
    match v {
        Value::Array(items) => items.iter().any(reads_columns),
        Value::Object(map) => map
            .iter()
            .any(|(k, child)| k == "ColumnRef" || k == "SubLink" || reads_columns(child)),
        _ => false,
    }
}

/// Fills `info` from the statement node `stmt` (`{"SelectStmt": {…}}`).
pub fn classify_tree(stmt: &Value, info: &mut StatementInfo) {
    let mut w = Walker {
        info,
        defining: 0,
        advances_sequence: false,
    };
    w.node(stmt, None);
    // `SELECT nextval('s')` changes the sequence: a write. In an `INSERT`/`UPDATE`/`MERGE` it
    // is part of that write (as a `serial` column's default is); in a definition it runs later.
    let writes = [K::Insert, K::Update, K::Delete, K::Merge, K::Ddl, K::Drop]
        .iter()
        .any(|k| w.info.kinds.contains(k));
    if w.advances_sequence && !writes {
        w.info.kinds.insert(K::Update);
    }
    w.info.plain_ddl = plain_ddl(stmt);
}

/// Sequence functions with a known effect: they advance or set the sequence their first
/// argument names (a literal), and do nothing else.
const SEQUENCE_FUNCTIONS: [&str; 2] = ["nextval", "setval"];

/// Statements whose body is a definition run later, not now (a view's query runs when the view
/// is read).
const DEFINITIONS: [&str; 5] = [
    "ViewStmt",
    "RuleStmt",
    "CreateFunctionStmt",
    "CreateSchemaStmt",
    "CreateTrigStmt",
];

/// `'name'`, `'schema.name'`, `'"Quoted"'` as `regclass` input reads it (unquoted parts
/// lower-cased, cut to 63 bytes); `None` when it is not such a name.
fn regclass_literal(text: &str) -> Option<String> {
    let mut parts = Vec::new();
    let mut chars = text.trim().chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    '"' => break,
                    c => part.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_ascii_alphanumeric() || c == '_' || c == '$' {
                    part.push(c.to_ascii_lowercase());
                    chars.next();
                } else {
                    break;
                }
            }
            if part.is_empty() || part.starts_with(|c: char| c.is_ascii_digit() || c == '$') {
                return None;
            }
        }
        if part.is_empty() || part.contains('.') {
            return None;
        }
        if part.len() > 63 {
            let mut end = 63;
            while !part.is_char_boundary(end) {
                end -= 1;
            }
            part.truncate(end);
        }
        parts.push(part);
        match chars.next() {
            None => break,
            Some('.') => {}
            Some(_) => return None,
        }
    }
    (parts.len() <= 3).then(|| parts.join("."))
}

/// The string of a literal argument: `'s'` or `'s'::regclass`.
fn literal_text(arg: &Value) -> Option<&str> {
    let (tag, body) = tagged(arg)?;
    match tag {
        "AConst" => body.get("val")?.get("Sval")?.get("sval")?.as_str(),
        "TypeCast" => {
            let target = name_list(body.get("type_name")?.get("names")?)?;
            if !matches!(target.as_str(), "regclass" | "pg_catalog.regclass") {
                return None;
            }
            literal_text(body.get("arg")?)
        }
        _ => None,
    }
}

fn items<'v>(v: &'v Value, key: &str) -> impl Iterator<Item = &'v Value> {
    v.get(key).and_then(Value::as_array).into_iter().flatten()
}

/// A constraint that runs no code but built-ins and the expressions it holds: not an exclusion
/// constraint (operator classes), and — on a table that already exists (`existing`), whose
/// triggers a cascade would fire where the side connection sees no foreign key yet — no
/// foreign key that cascades, sets null or sets a default.
fn plain_constraint(c: &Value, existing: bool) -> bool {
    let Some(("Constraint", body)) = tagged(c) else {
        return false;
    };
    let contype = i(body, "contype");
    if is(contype, ConstrType::ConstrExclusion) {
        return false;
    }
    if existing && is(contype, ConstrType::ConstrForeign) {
        let quiet = |action: &str| matches!(action, "" | "a" | "r");
        return quiet(s(body, "fk_upd_action")) && quiet(s(body, "fk_del_action"));
    }
    true
}

fn plain_column(c: &Value, existing: bool) -> bool {
    match tagged(c) {
        Some(("ColumnDef", body)) => {
            items(body, "constraints").all(|k| plain_constraint(k, existing))
        }
        Some(("Constraint", _)) => plain_constraint(c, existing),
        _ => false,
    }
}

/// See [`StatementInfo::plain_ddl`].
fn plain_ddl(stmt: &Value) -> bool {
    let Some((tag, body)) = tagged(stmt) else {
        return false;
    };
    match tag {
        "CreateSeqStmt" | "AlterSeqStmt" => true,
        "CreateStmt" => {
            !present(body, "partbound")
                && !present(body, "partspec")
                && !present(body, "of_typename")
                && items(body, "inh_relations").next().is_none()
                && matches!(s(body, "access_method"), "" | "heap")
                && items(body, "table_elts").all(|c| plain_column(c, false))
                && items(body, "constraints").all(|c| plain_constraint(c, false))
        }
        "IndexStmt" => {
            matches!(s(body, "access_method"), "" | "btree" | "hash")
                && items(body, "index_params").all(|p| {
                    matches!(tagged(p), Some(("IndexElem", e))
                        if items(e, "opclass").next().is_none()
                            && items(e, "opclassopts").next().is_none())
                })
        }
        "AlterTableStmt" => {
            is(i(body, "objtype"), ObjectType::ObjectTable)
                && items(body, "cmds").all(|c| {
                    let Some(("AlterTableCmd", cmd)) = tagged(c) else {
                        return false;
                    };
                    let sub = i(cmd, "subtype");
                    let def = cmd.get("def").filter(|d| !d.is_null());
                    if is(sub, AlterTableType::AtColumnDefault)
                        || is(sub, AlterTableType::AtDropNotNull)
                        || is(sub, AlterTableType::AtSetNotNull)
                        || is(sub, AlterTableType::AtDropColumn)
                        || is(sub, AlterTableType::AtDropConstraint)
                    {
                        true
                    } else if is(sub, AlterTableType::AtAddColumn)
                        || is(sub, AlterTableType::AtAddConstraint)
                    {
                        def.is_some_and(|d| plain_column(d, true))
                    } else {
                        false
                    }
                })
        }
        _ => false,
    }
}

struct Walker<'a> {
    info: &'a mut StatementInfo,
    /// Depth of definitions being walked (see [`DEFINITIONS`]).
    defining: u32,
    /// A sequence function with a literal sequence is called outside a definition.
    advances_sequence: bool,
}

impl Walker<'_> {
    fn opaque(&mut self, why: String) {
        self.info.risks.insert(Risk::OpaqueCode);
        self.info.opaque_reasons.insert(why);
    }

    fn setting(&mut self, name: &str) {
        let name = if name.is_empty() { "*" } else { name };
        self.info.settings_changed.insert(name.to_ascii_lowercase());
    }

    /// Walks any JSON value; `parent` is the tag of the nearest enclosing tagged node.
    fn node(&mut self, v: &Value, parent: Option<&str>) {
        match v {
            Value::Array(items) => {
                for item in items {
                    self.node(item, parent);
                }
            }
            Value::Object(map) => {
                if map.len() == 1
                    && let Some(inner) = map.get("node")
                {
                    // A `Node` wrapper.
                    self.node(inner, parent);
                } else if let Some((tag, body)) = tagged(v).filter(|_| map.len() == 1) {
                    self.tagged_node(tag, body, parent);
                    let definition = DEFINITIONS.contains(&tag);
                    self.defining += u32::from(definition);
                    self.fields(body, Some(tag));
                    self.defining -= u32::from(definition);
                } else {
                    if matches!(parent, Some("TypeCast" | "ColumnDef" | "CreateDomainStmt"))
                        && map.contains_key("typemod")
                        && let Some(name) = map.get("names").and_then(name_list)
                    {
                        self.info.types.insert(name);
                    }
                    self.untagged(map);
                    for child in map.values() {
                        self.node(child, parent);
                    }
                }
            }
            _ => {}
        }
    }

    fn fields(&mut self, body: &Value, tag: Option<&str>) {
        match body.as_object() {
            Some(map) => {
                self.untagged(map);
                for child in map.values() {
                    self.node(child, tag);
                }
            }
            None => self.node(body, tag),
        }
    }

    /// Messages held directly in a field (not as a tagged `Node`) are recognised by shape.
    fn untagged(&mut self, map: &Map<String, Value>) {
        if map.contains_key("relname") && map.contains_key("inh") {
            self.info.tables.insert(range_var_name(map));
        }
        if let Some(funcname) = map.get("funcname")
            && let Some(name) = name_list(funcname)
        {
            if map.contains_key("funcformat") {
                self.call(&name, map.get("args"));
            }
            self.info.functions.insert(name);
        }
    }

    fn call(&mut self, name: &str, args: Option<&Value>) {
        let base = name.rsplit('.').next().unwrap_or(name);
        if base == "set_config" {
            // set_config('name', value, is_local): the first argument names the setting.
            let first = args.and_then(Value::as_array).and_then(|a| a.first());
            let literal = first
                .and_then(tagged)
                .filter(|(t, _)| *t == "AConst")
                .and_then(|(_, c)| c.get("val"))
                .and_then(|val| val.get("Sval"))
                .and_then(|sv| sv.get("sval"))
                .and_then(Value::as_str)
                .map(str::to_string);
            self.setting(&literal.unwrap_or_default());
        }
        if SEQUENCE_FUNCTIONS.contains(&base)
            && matches!(name.split_once('.'), None | Some(("pg_catalog", _)))
            && self.defining == 0
            && let Some(sequence) = args
                .and_then(Value::as_array)
                .and_then(|a| a.first())
                .and_then(literal_text)
                .and_then(regclass_literal)
        {
            // A known effect: the sequence advances (or is set). Whether `name` is the
            // built-in and not a user's function of that name is the catalog's to check.
            self.info.tables.insert(sequence);
            self.advances_sequence = true;
            return;
        }
        if !is_safe_function(name) {
            self.opaque(format!(
                "calls {name}, which is not a known side-effect-free built-in"
            ));
        }
    }

    fn nested_kind(&mut self, kind: K) {
        self.info.kinds.insert(kind);
    }

    fn tagged_node(&mut self, tag: &str, body: &Value, parent: Option<&str>) {
        if let Some(why) = opaque_form(tag, body) {
            self.opaque(why);
        }
        let operator = match tag {
            "AExpr" => body.get("name"),
            "SubLink" => body.get("oper_name"),
            _ => None,
        };
        if let Some(name) = operator.and_then(name_list) {
            self.info.operators.insert(name);
        }
        if matches!(tag, "IndexElem" | "PartitionElem")
            && let Some(name) = body.get("opclass").and_then(name_list)
        {
            self.info.opclasses.insert(name);
        }
        let method = match tag {
            "IndexStmt" => Some(s(body, "access_method")),
            "Constraint" if is(i(body, "contype"), ConstrType::ConstrExclusion) => {
                Some(s(body, "access_method"))
            }
            _ => None,
        };
        if let Some(method) = method {
            let method = if method.is_empty() { "btree" } else { method };
            self.info.opclasses.insert(format!("@{method}"));
        }
        match tag {
            "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt" => {
                self.nested_kind(kind_of(tag, body));
                let on_conflict = body.get("on_conflict_clause");
                if (tag == "UpdateStmt" && sets_from_columns(body))
                    || on_conflict.is_some_and(sets_from_columns)
                {
                    self.info.risks.insert(Risk::WriteFromColumns);
                }
                if matches!(tag, "UpdateStmt" | "DeleteStmt") && !present(body, "where_clause") {
                    self.info.risks.insert(Risk::WriteWithoutWhere);
                }
                if parent == Some("CommonTableExpr") {
                    self.info.risks.insert(Risk::WritableCte);
                }
            }
            "MergeWhenClause" => {
                // `WHEN MATCHED THEN UPDATE SET notes = s.email` and `WHEN NOT MATCHED THEN
                // INSERT … VALUES (s.id, reverse(s.email))`: both write values read from columns.
                if sets_from_columns(body) || body.get("values").is_some_and(reads_columns) {
                    self.info.risks.insert(Risk::WriteFromColumns);
                }
                let cmd = i(body, "command_type");
                for (c, k) in [
                    (CmdType::CmdInsert, K::Insert),
                    (CmdType::CmdUpdate, K::Update),
                    (CmdType::CmdDelete, K::Delete),
                ] {
                    if is(cmd, c) {
                        self.nested_kind(k);
                    }
                }
            }
            "SelectStmt" => {
                if present(body, "into_clause") {
                    self.info.risks.insert(Risk::SelectInto);
                    self.nested_kind(K::Ddl);
                    self.nested_kind(K::Insert);
                }
                // A query that is a statement of its own inside another: it runs.
                if matches!(
                    parent,
                    Some(
                        "PrepareStmt"
                            | "ExplainStmt"
                            | "CreateTableAsStmt"
                            | "CopyStmt"
                            | "RuleStmt"
                    )
                ) {
                    self.nested_kind(K::Select);
                }
            }
            "ExecuteStmt" | "CallStmt" | "DoStmt" | "PrepareStmt" | "ExplainStmt"
            | "TruncateStmt" | "CopyStmt" | "NotifyStmt" | "LockStmt" | "DeclareCursorStmt" => {
                self.nested_kind(kind_of(tag, body));
            }
            "CreateTableAsStmt" => {
                self.info.risks.insert(Risk::CreateTableAs);
                self.nested_kind(K::Ddl);
            }
            _ => {}
        }
        match tag {
            // An EXECUTE may be nested (`EXPLAIN ANALYZE EXECUTE p`, `CREATE TABLE t AS
            // EXECUTE p`); its name is what the proxy must resolve.
            "ExecuteStmt" | "PrepareStmt" | "DeallocateStmt"
                if parent.is_none() || tag == "ExecuteStmt" =>
            {
                let name = s(body, "name");
                if !name.is_empty() {
                    self.info.prepared_name = Some(name.to_string());
                }
            }
            "CopyStmt" => {
                if b(body, "is_program") {
                    self.info.risks.insert(Risk::CopyProgram);
                } else if !s(body, "filename").is_empty() {
                    self.info.risks.insert(Risk::CopyFile);
                }
            }
            "VariableSetStmt" if parent.is_none() => {
                let kind = i(body, "kind");
                let name = s(body, "name");
                if is(kind, VariableSetKind::VarResetAll) {
                    self.setting("all");
                } else if is(kind, VariableSetKind::VarSetMulti) {
                    // SET TRANSACTION …, SET SESSION CHARACTERISTICS: no setting by name.
                } else {
                    self.setting(name);
                }
            }
            "DiscardStmt" if is(i(body, "target"), DiscardMode::DiscardAll) => {
                self.setting("all");
                self.setting("session_authorization");
            }
            "AlterRoleSetStmt" | "AlterDatabaseSetStmt" => {
                // Defaults for later sessions, recorded so a policy can see them.
                if let Some(set) = body.get("setstmt") {
                    let name = s(set, "name").to_ascii_lowercase();
                    // `backslash_quote` too: the gateway's later sessions would read text under a
                    // setting the server never reports (refused, as `SET backslash_quote` is).
                    if matches!(
                        name.as_str(),
                        "standard_conforming_strings" | "client_encoding" | "backslash_quote"
                    ) {
                        self.setting(&name);
                    }
                    if name.is_empty() || OPAQUE_SETTINGS.contains(&name.as_str()) {
                        let which = if name.is_empty() {
                            "every setting"
                        } else {
                            name.as_str()
                        };
                        self.opaque(format!(
                            "changes the default of {which} for later sessions, which changes \
                             what they run, how they are read or a database-side backstop"
                        ));
                    }
                }
            }
            "DropStmt" => self.drop(body),
            "CreateFunctionStmt" => self.language(body),
            _ => {}
        }
    }

    fn language(&mut self, body: &Value) {
        let mut lang = "sql".to_string();
        for opt in body
            .get("options")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(("DefElem", d)) = tagged(opt)
                && s(d, "defname") == "language"
                && let Some(("String", sv)) = d.get("arg").and_then(tagged)
            {
                lang = s(sv, "sval").to_ascii_lowercase();
            }
        }
        if !matches!(lang.as_str(), "sql" | "plpgsql") {
            self.info.risks.insert(Risk::UntrustedLanguage);
        }
        self.info.languages.insert(lang);
    }

    fn drop(&mut self, body: &Value) {
        let kind = i(body, "remove_type");
        let relation = [
            ObjectType::ObjectTable,
            ObjectType::ObjectView,
            ObjectType::ObjectMatview,
            ObjectType::ObjectSequence,
            ObjectType::ObjectIndex,
            ObjectType::ObjectForeignTable,
        ]
        .into_iter()
        .any(|t| is(kind, t));
        let on_table = [
            ObjectType::ObjectRule,
            ObjectType::ObjectTrigger,
            ObjectType::ObjectPolicy,
        ]
        .into_iter()
        .any(|t| is(kind, t));
        for object in body
            .get("objects")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if relation {
                if let Some(name) = name_list(object) {
                    self.info.tables.insert(name);
                }
            } else if on_table {
                // [schema., table, name]: the table is all but the last part.
                if let Some(name) = name_list(object)
                    && let Some((table, _)) = name.rsplit_once('.')
                {
                    self.info.tables.insert(table.to_string());
                }
            }
        }
    }
}
