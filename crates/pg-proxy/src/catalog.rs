//! Catalog resolution: RowDescription's (table OID, attribute number) → `schema.table.column`,
//! with views and materialized views followed to the base columns they read, so a masking rule on
//! a column survives aliases and views.
//!
//! One lazily opened upstream connection per target, used only for these lookups; answers are
//! cached until a DDL statement is seen on the target.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use crate::PgProxyError;
use crate::binvalue::{TypeForm, TypeForms, builtin_form, form_from_send};
use crate::config::UpstreamConfig;
use crate::upstream::{BoxStream, FrameReader, ReadError};
use crate::wire::{self, ColumnDesc, ErrorFields};

mod views;

/// Column → qualified source names (its own name first, then base columns behind views).
type Cache = HashMap<(u32, i16), Vec<String>>;

/// Relation name as written in SQL → its columns (table OID, attnum, name).
type Relations = HashMap<String, Vec<(u32, i16, String)>>;

/// Lookups for one target.
pub(crate) struct Catalog {
    upstream: UpstreamConfig,
    conn: tokio::sync::Mutex<Option<FrameReader<BoxStream>>>,
    cache: Mutex<Cache>,
    relations: Mutex<Relations>,
    /// What each relation reads through its rewrite rules ([`Catalog::relation_reads`]).
    reads: Mutex<HashMap<String, Vec<String>>>,
    /// Binary layouts of non-built-in types seen so far.
    types: Mutex<TypeForms>,
    /// Every column of the database, once listed.
    all_columns: Mutex<Option<Arc<Vec<String>>>>,
    /// Function name → defined outside `pg_catalog`.
    user_functions: Mutex<HashMap<String, bool>>,
    /// Name → whether a schema, relation, column or constraint has it.
    identifiers: Mutex<HashMap<String, bool>>,
    /// Which view columns are computed by an expression (see [`views`]).
    views: views::ViewCache,
    /// Bumped on every invalidation: plans cached by sessions are dropped when it changes.
    generation: std::sync::atomic::AtomicU64,
    /// Catalog-opacity generation and pending changes ([`crate::opacity`]).
    opacity: crate::opacity::TargetOpacity,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").finish_non_exhaustive()
    }
}

fn lock(m: &Mutex<Cache>) -> std::sync::MutexGuard<'_, Cache> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Catalog {
    pub(crate) fn new(upstream: UpstreamConfig) -> Self {
        Self {
            upstream,
            conn: tokio::sync::Mutex::new(None),
            cache: Mutex::new(HashMap::new()),
            relations: Mutex::new(HashMap::new()),
            reads: Mutex::new(HashMap::new()),
            types: Mutex::new(HashMap::new()),
            all_columns: Mutex::new(None),
            user_functions: Mutex::new(HashMap::new()),
            identifiers: Mutex::new(HashMap::new()),
            views: views::ViewCache::default(),
            generation: std::sync::atomic::AtomicU64::new(0),
            opacity: crate::opacity::TargetOpacity::default(),
        }
    }

    pub(crate) fn opacity(&self) -> &crate::opacity::TargetOpacity {
        &self.opacity
    }

    /// A function named `name` (as written: `f`, `schema.f`, `db.schema.f`, `pg_temp.f`) that
    /// was not created with the cluster (a built-in has an OID below 16384, PostgreSQL's
    /// `FirstNormalObjectId`, and is owned by the bootstrap superuser), in any schema, with any
    /// argument types: `schema.f(args)` of the first found, or `None`.
    pub(crate) async fn user_function(&self, name: &str) -> Result<Option<String>, PgProxyError> {
        let whole = sql_literal(name.strip_prefix("pg_temp.").unwrap_or(name))?;
        let sql = format!(
            "SELECT n.nspname || '.' || p.proname || '(' || \
               pg_catalog.pg_get_function_identity_arguments(p.oid) || ')' \
             FROM pg_catalog.pg_proc p \
             JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
             WHERE {whole} IN (p.proname::text, n.nspname || '.' || p.proname, \
               pg_catalog.current_database() || '.' || n.nspname || '.' || p.proname) \
             AND NOT (p.oid < 16384 AND p.proowner = 10) LIMIT 1"
        );
        let rows = self.run(&sql).await?;
        Ok(rows.into_iter().next().map(|r| {
            r.into_iter()
                .next()
                .flatten()
                .unwrap_or_else(|| "an unnamed function".into())
        }))
    }

    /// Why using the type `name` (as written in a cast or a column definition, matched in every
    /// schema when unqualified) may run user code: its support functions or those of the
    /// types it contains (see [`type_code_ctes`]), the first found; `Ok(None)` when it runs
    /// none. A name no type has is unknown (a type this connection cannot see yet): it is
    /// reported as such, not taken as harmless.
    pub(crate) async fn type_code(&self, name: &str) -> Result<Option<String>, PgProxyError> {
        let whole = sql_literal(name.strip_prefix("pg_temp.").unwrap_or(name))?;
        let types = type_code_ctes("SELECT 0::pg_catalog.oid, oid FROM named");
        let sql = format!(
            "WITH RECURSIVE named AS (SELECT t.oid FROM pg_catalog.pg_type t \
               JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace \
               WHERE {whole} IN (t.typname::text, n.nspname || '.' || t.typname, \
                 pg_catalog.current_database() || '.' || n.nspname || '.' || t.typname)), \
             {types} \
             SELECT (SELECT pg_catalog.count(*) FROM named)::text, \
               (SELECT 'function ' || u.fn::pg_catalog.regprocedure::text \
                 || ' (support code of type ' || u.typ::pg_catalog.regtype::text || ')' \
                 FROM usertype u LIMIT 1)"
        );
        let rows = self.run(&sql).await?;
        match rows.into_iter().next().as_deref() {
            Some([Some(count), _]) if count == "0" => Ok(Some(format!(
                "type {name} is not in the catalog the gateway reads"
            ))),
            Some([Some(_), why]) => Ok(why.clone()),
            _ => Err(PgProxyError::Gateway("type lookup returned no row".into())),
        }
    }

    /// An operator named `name` (as written: `===`, `schema.===`), in any schema, with any
    /// argument types, whose function or selectivity estimators are not built-ins (see
    /// [`Catalog::user_function`]): `operator(args) (function)` of the first found, or `None`.
    pub(crate) async fn user_operator(&self, name: &str) -> Result<Option<String>, PgProxyError> {
        let whole = sql_literal(name.strip_prefix("pg_temp.").unwrap_or(name))?;
        let sql = format!(
            "SELECT o.oid::pg_catalog.regoperator::text || ' (runs ' \
               || p.oid::pg_catalog.regprocedure::text || ')' \
             FROM pg_catalog.pg_operator o \
             JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace \
             JOIN pg_catalog.pg_proc p ON p.oid IN (o.oprcode::pg_catalog.oid, \
               o.oprrest::pg_catalog.oid, o.oprjoin::pg_catalog.oid) \
             WHERE {whole} IN (o.oprname::text, n.nspname || '.' || o.oprname, \
               pg_catalog.current_database() || '.' || n.nspname || '.' || o.oprname) \
             AND NOT (p.oid < 16384 AND p.proowner = 10) LIMIT 1"
        );
        let rows = self.run(&sql).await?;
        Ok(rows.into_iter().next().map(|r| {
            r.into_iter()
                .next()
                .flatten()
                .unwrap_or_else(|| "an unnamed operator".into())
        }))
    }

    /// Why an index build with the operator class `name` (as written, any schema) — or, for
    /// `@method`, with the default classes of that access method — may run user code: a
    /// support function of the class that is not a built-in, or a user access method's handler;
    /// the first found, or `None`.
    pub(crate) async fn opclass_code(&self, name: &str) -> Result<Option<String>, PgProxyError> {
        let sql = match name.strip_prefix('@') {
            Some(method) => {
                let method = sql_literal(method)?;
                format!(
                    "SELECT COALESCE( \
                       (SELECT 'access method ' || am.amname || ' (handler ' \
                         || p.oid::pg_catalog.regprocedure::text || ')' \
                        FROM pg_catalog.pg_am am JOIN pg_catalog.pg_proc p ON p.oid = am.amhandler \
                        WHERE am.amname = {method} AND NOT (p.oid < 16384 AND p.proowner = 10)), \
                       (SELECT 'default operator class ' || oc.opcname || ' of ' || am.amname \
                         || ' (runs ' || p.oid::pg_catalog.regprocedure::text || ')' \
                        FROM pg_catalog.pg_am am \
                        JOIN pg_catalog.pg_opclass oc ON oc.opcmethod = am.oid AND oc.opcdefault \
                        JOIN pg_catalog.pg_amproc ap ON ap.amprocfamily = oc.opcfamily \
                        JOIN pg_catalog.pg_proc p ON p.oid = ap.amproc \
                        WHERE am.amname = {method} AND NOT (p.oid < 16384 AND p.proowner = 10) \
                        LIMIT 1))"
                )
            }
            None => {
                let whole = sql_literal(name.strip_prefix("pg_temp.").unwrap_or(name))?;
                format!(
                    "SELECT 'operator class ' || n.nspname || '.' || oc.opcname || ' (runs ' \
                       || p.oid::pg_catalog.regprocedure::text || ')' \
                     FROM pg_catalog.pg_opclass oc \
                     JOIN pg_catalog.pg_namespace n ON n.oid = oc.opcnamespace \
                     JOIN pg_catalog.pg_amproc ap ON ap.amprocfamily = oc.opcfamily \
                     JOIN pg_catalog.pg_proc p ON p.oid = ap.amproc \
                     WHERE {whole} IN (oc.opcname::text, n.nspname || '.' || oc.opcname, \
                       pg_catalog.current_database() || '.' || n.nspname || '.' || oc.opcname) \
                     AND NOT (p.oid < 16384 AND p.proowner = 10) LIMIT 1"
                )
            }
        };
        let rows = self.run(&sql).await?;
        Ok(rows
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next().flatten()))
    }

    /// Whether `name` is the name of a schema, relation (table, view, index, sequence, …),
    /// column or constraint in the database: an identifier the catalog holds, not a value.
    pub(crate) async fn is_identifier(&self, name: &str) -> Result<bool, PgProxyError> {
        if let Some(known) = self
            .identifiers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return Ok(*known);
        }
        let lit = sql_literal(name)?;
        let rows = self
            .run(&format!(
                "SELECT (EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = {lit}) \
                 OR EXISTS (SELECT 1 FROM pg_catalog.pg_class WHERE relname = {lit}) \
                 OR EXISTS (SELECT 1 FROM pg_catalog.pg_attribute \
                   WHERE attname = {lit} AND attnum > 0) \
                 OR EXISTS (SELECT 1 FROM pg_catalog.pg_constraint WHERE conname = {lit}))::text"
            ))
            .await?;
        let known = rows
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .is_some_and(|v| v == "true");
        let mut cache = self.identifiers.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= 4096 {
            cache.clear();
        }
        cache.insert(name.to_string(), known);
        Ok(known)
    }

    /// What user code runs when the relation `name` (as written; matched in every schema when
    /// unqualified) is written and when it is read: `(write, read)`, each the first found.
    /// A write reaches the relation's inheritance children and partitions, the tables a view
    /// writes through, and tables whose foreign keys cascade from it; it runs their user
    /// triggers, rules, and user functions (called, or behind an operator) in defaults,
    /// constraints, index expressions and row-security policies, and the support functions of user operator classes of their
    /// indexes. A read runs user functions in views and row-security policies. Both run the
    /// support code of the types of the relations' columns (followed through domains, arrays,
    /// ranges, multiranges and composite fields): input, output, binary I/O, typmod, analyze
    /// and subscript functions, a range's canonical and subtype_diff functions and its subtype
    /// operator class, and functions in a domain's constraints.
    pub(crate) async fn relation_code(
        &self,
        name: &str,
    ) -> Result<(Option<String>, Option<String>), PgProxyError> {
        let whole = sql_literal(name.strip_prefix("pg_temp.").unwrap_or(name))?;
        let types = type_code_ctes(
            "SELECT a.attrelid, a.atttypid FROM writes w \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = w.oid \
             WHERE a.attnum > 0 AND NOT a.attisdropped",
        );
        let sql = format!(
            "WITH RECURSIVE \
             start AS (SELECT c.oid FROM pg_catalog.pg_class c \
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
               WHERE {whole} IN (c.relname::text, n.nspname || '.' || c.relname, \
                 pg_catalog.current_database() || '.' || n.nspname || '.' || c.relname)), \
             viewdeps AS (SELECT rw.ev_class AS rel, d.refobjid AS dep \
               FROM pg_catalog.pg_rewrite rw JOIN pg_catalog.pg_depend d \
               ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = rw.oid \
               AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
               AND d.refobjid <> rw.ev_class), \
             reads(oid, depth) AS (SELECT oid, 0 FROM start UNION \
               SELECT v.dep, r.depth + 1 FROM reads r JOIN viewdeps v ON v.rel = r.oid \
               WHERE r.depth < 16), \
             edges AS (SELECT inhparent AS rel, inhrelid AS dep FROM pg_catalog.pg_inherits \
               UNION ALL SELECT confrelid, conrelid FROM pg_catalog.pg_constraint \
                 WHERE contype = 'f' \
                 AND (confdeltype NOT IN ('a', 'r') OR confupdtype NOT IN ('a', 'r')) \
               UNION ALL SELECT rel, dep FROM viewdeps), \
             writes(oid, depth) AS (SELECT oid, 0 FROM reads UNION \
               SELECT e.dep, w.depth + 1 FROM writes w JOIN edges e ON e.rel = w.oid \
               WHERE w.depth < 16), \
             objs(rel, classid, objid) AS ( \
               SELECT oid, 'pg_catalog.pg_class'::pg_catalog.regclass, oid FROM pg_catalog.pg_class \
               UNION ALL SELECT indrelid, 'pg_catalog.pg_class'::pg_catalog.regclass, indexrelid \
                 FROM pg_catalog.pg_index \
               UNION ALL SELECT adrelid, 'pg_catalog.pg_attrdef'::pg_catalog.regclass, oid \
                 FROM pg_catalog.pg_attrdef \
               UNION ALL SELECT conrelid, 'pg_catalog.pg_constraint'::pg_catalog.regclass, oid \
                 FROM pg_catalog.pg_constraint WHERE conrelid <> 0 \
               UNION ALL SELECT polrelid, 'pg_catalog.pg_policy'::pg_catalog.regclass, oid \
                 FROM pg_catalog.pg_policy \
               UNION ALL SELECT ev_class, 'pg_catalog.pg_rewrite'::pg_catalog.regclass, oid \
                 FROM pg_catalog.pg_rewrite \
               UNION ALL SELECT tgrelid, 'pg_catalog.pg_trigger'::pg_catalog.regclass, oid \
                 FROM pg_catalog.pg_trigger), \
             userfn(rel, classid, fn) AS (SELECT o.rel, o.classid, p.oid FROM objs o \
               JOIN pg_catalog.pg_depend d ON d.classid = o.classid AND d.objid = o.objid \
               AND d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass \
               JOIN pg_catalog.pg_proc p ON p.oid = d.refobjid \
               WHERE NOT (p.oid < 16384 AND p.proowner = 10) \
               UNION ALL SELECT o.rel, o.classid, p.oid FROM objs o \
               JOIN pg_catalog.pg_depend d ON d.classid = o.classid AND d.objid = o.objid \
               AND d.refclassid = 'pg_catalog.pg_operator'::pg_catalog.regclass \
               JOIN pg_catalog.pg_operator op ON op.oid = d.refobjid \
               JOIN pg_catalog.pg_proc p ON p.oid IN (op.oprcode::pg_catalog.oid, \
                 op.oprrest::pg_catalog.oid, op.oprjoin::pg_catalog.oid) \
               WHERE NOT (p.oid < 16384 AND p.proowner = 10)), \
             {types} \
             SELECT COALESCE( \
               (SELECT 'trigger ' || t.tgname || ' on ' || t.tgrelid::pg_catalog.regclass::text \
                 FROM writes w JOIN pg_catalog.pg_trigger t ON t.tgrelid = w.oid \
                 WHERE NOT t.tgisinternal LIMIT 1), \
               (SELECT 'rule ' || rw.rulename || ' on ' || rw.ev_class::pg_catalog.regclass::text \
                 FROM writes w JOIN pg_catalog.pg_rewrite rw ON rw.ev_class = w.oid \
                 WHERE rw.rulename <> '_RETURN' LIMIT 1), \
               (SELECT 'function ' || u.fn::pg_catalog.regprocedure::text || ' (through ' \
                 || u.rel::pg_catalog.regclass::text || ')' \
                 FROM writes w JOIN userfn u ON u.rel = w.oid LIMIT 1), \
               (SELECT {TYPE_REASON} FROM usertype u LIMIT 1), \
               (SELECT 'function ' || p.oid::pg_catalog.regprocedure::text \
                 || ' (operator class ' || oc.opcname || ' of index ' \
                 || i.indexrelid::pg_catalog.regclass::text || ')' \
                 FROM writes w JOIN pg_catalog.pg_index i ON i.indrelid = w.oid \
                 JOIN pg_catalog.pg_opclass oc \
                 ON oc.oid = ANY (i.indclass::pg_catalog.oid[]) \
                 JOIN pg_catalog.pg_amproc ap ON ap.amprocfamily = oc.opcfamily \
                 JOIN pg_catalog.pg_proc p ON p.oid = ap.amproc \
                 WHERE NOT (p.oid < 16384 AND p.proowner = 10) LIMIT 1)), \
               COALESCE((SELECT 'function ' || u.fn::pg_catalog.regprocedure::text \
                 || ' (through ' || u.rel::pg_catalog.regclass::text || ')' \
                 FROM reads r JOIN userfn u ON u.rel = r.oid \
                 WHERE u.classid IN ('pg_catalog.pg_rewrite'::pg_catalog.regclass, \
                   'pg_catalog.pg_policy'::pg_catalog.regclass) LIMIT 1), \
               (SELECT {TYPE_REASON} FROM reads r JOIN usertype u ON u.rel = r.oid LIMIT 1))"
        );
        let rows = self.run(&sql).await?;
        match rows.into_iter().next().as_deref() {
            Some([write, read]) => Ok((write.clone(), read.clone())),
            _ => Err(PgProxyError::Gateway(
                "relation lookup returned no row".into(),
            )),
        }
    }

    /// Every column of every table, view, materialized view and foreign table, as
    /// `schema.table.column`.
    pub(crate) async fn all_columns(&self) -> Result<Arc<Vec<String>>, PgProxyError> {
        if let Some(c) = self
            .all_columns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Ok(c);
        }
        let rows = self
            .run(
                "SELECT n.nspname || '.' || c.relname || '.' || a.attname \
                 FROM pg_catalog.pg_attribute a \
                 JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE a.attnum > 0 AND NOT a.attisdropped \
                 AND c.relkind IN ('r', 'v', 'm', 'f', 'p') \
                 AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                 AND n.nspname NOT LIKE 'pg\\_toast%'",
            )
            .await?;
        let all: Arc<Vec<String>> = Arc::new(
            rows.into_iter()
                .filter_map(|r| r.into_iter().next().flatten())
                .collect(),
        );
        *self.all_columns.lock().unwrap_or_else(|p| p.into_inner()) = Some(all.clone());
        Ok(all)
    }

    /// Whether any of `names` (as written: `f`, `schema.f`) names a function defined outside
    /// `pg_catalog` (any schema's function of that name counts, whatever the search path).
    pub(crate) async fn user_functions(&self, names: &[String]) -> Result<bool, PgProxyError> {
        let mut missing = Vec::new();
        {
            let known = self
                .user_functions
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for n in names {
                match known.get(n) {
                    Some(true) => return Ok(true),
                    Some(false) => {}
                    None => missing.push(n.clone()),
                }
            }
        }
        for name in missing {
            let (schema, func) = match name.rsplit_once('.') {
                Some((s, f)) => (Some(s), f),
                None => (None, name.as_str()),
            };
            let lit = |v: &str| v.replace('\'', "''");
            let schema_filter = match schema {
                Some(s) => format!("n.nspname = '{}'", lit(s)),
                None => "n.nspname <> 'pg_catalog'".to_string(),
            };
            let sql = format!(
                "SELECT count(*)::text FROM pg_catalog.pg_proc p \
                 JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
                 WHERE p.proname = '{}' AND {schema_filter} AND n.nspname <> 'pg_catalog'",
                lit(func)
            );
            let rows = self.run(&sql).await?;
            let user = rows
                .first()
                .and_then(|r| r.first().cloned().flatten())
                .is_none_or(|c| c != "0");
            self.user_functions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(name.clone(), user);
            if user {
                return Ok(true);
            }
        }
        Ok(false)
    }

    pub(crate) fn invalidate(&self) {
        self.opacity.invalidate();
        lock(&self.cache).clear();
        self.relations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.reads.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.types.lock().unwrap_or_else(|p| p.into_inner()).clear();
        *self.all_columns.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.user_functions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.identifiers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.views.clear();
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// How many times the cached answers were dropped.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Binary layouts of `oids` that are not built-in types, with those of the types they
    /// contain (composite fields, array elements, a few levels deep). A type the catalog does
    /// not describe is [`TypeForm::Unknown`].
    pub(crate) async fn type_forms(&self, oids: &[u32]) -> Result<TypeForms, PgProxyError> {
        let mut want: Vec<u32> = oids
            .iter()
            .copied()
            .filter(|o| builtin_form(*o).is_none())
            .collect();
        for _round in 0..4 {
            want.sort_unstable();
            want.dedup();
            {
                let known = self.types.lock().unwrap_or_else(|p| p.into_inner());
                want.retain(|o| !known.contains_key(o));
            }
            if want.is_empty() {
                break;
            }
            let list: Vec<String> = want.iter().map(u32::to_string).collect();
            let sql = format!(
                "SELECT t.oid::int8::text, t.typsend::regproc::text, \
                   COALESCE(r.rngsubtype, 0)::int8::text, t.typelem::int8::text, \
                   COALESCE((SELECT string_agg(a.atttypid::int8::text, ',') \
                     FROM pg_catalog.pg_attribute a WHERE a.attrelid = t.typrelid \
                     AND a.attnum > 0 AND NOT a.attisdropped), '') \
                 FROM pg_catalog.pg_type t \
                 LEFT JOIN pg_catalog.pg_range r ON r.rngtypid = t.oid \
                   OR (pg_catalog.to_jsonb(r) ->> 'rngmultitypid')::oid = t.oid \
                 WHERE t.oid IN ({})",
                list.join(",")
            );
            let rows = self.run(&sql).await?;
            let mut next = Vec::new();
            let mut found: TypeForms = HashMap::new();
            for row in rows {
                let [Some(oid), Some(send), Some(sub), Some(elem), Some(fields)] = row.as_slice()
                else {
                    continue;
                };
                let Ok(oid) = oid.parse::<u32>() else {
                    continue;
                };
                let send = send.rsplit('.').next().unwrap_or(send);
                let form = form_from_send(send, sub.parse().unwrap_or(0));
                found.insert(oid, form);
                let contained = std::iter::once(elem.as_str())
                    .chain(fields.split(','))
                    .chain(std::iter::once(sub.as_str()))
                    .filter_map(|o| o.parse::<u32>().ok())
                    .filter(|o| *o != 0 && builtin_form(*o).is_none());
                next.extend(contained);
            }
            let mut known = self.types.lock().unwrap_or_else(|p| p.into_inner());
            for o in &want {
                known
                    .entry(*o)
                    .or_insert_with(|| found.get(o).copied().unwrap_or(TypeForm::Unknown));
            }
            drop(known);
            want = next;
        }
        Ok(self.types.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// Qualified sources for SQL-level lineage names: `table.column`, `table.*` (every column)
    /// or `?.column` (that column in any of `tables`). Each resolves through views to base
    /// columns. Names that resolve to nothing are kept as written.
    pub(crate) async fn expand(
        &self,
        names: &[String],
        tables: &[String],
    ) -> Result<Vec<String>, PgProxyError> {
        let mut keys: Vec<(u32, i16)> = Vec::new();
        let mut unresolved = Vec::new();
        for name in names {
            let (table, column) = match name.rsplit_once('.') {
                Some((t, c)) => (t, c),
                None => ("?", name.as_str()),
            };
            let candidates: Vec<&str> = if table == "?" {
                tables.iter().map(String::as_str).collect()
            } else {
                vec![table]
            };
            let mut found = false;
            for t in candidates {
                for (oid, att, col) in self.relation(t).await? {
                    if column == "*" || col == column {
                        keys.push((oid, att));
                        found = true;
                    }
                }
            }
            if !found {
                unresolved.push(name.clone());
            }
        }
        let columns: Vec<ColumnDesc> = keys
            .iter()
            .map(|(oid, att)| ColumnDesc {
                name: String::new(),
                table_oid: *oid,
                attnum: *att,
                type_oid: 0,
                format: 0,
            })
            .collect();
        let mut out = unresolved;
        for sources in self.resolve(&columns).await? {
            for s in sources {
                if !out.contains(&s) {
                    out.push(s);
                }
            }
        }
        Ok(out)
    }

    /// Every relation `name` reads through its rewrite rules (a view, recursively: the views
    /// and tables its query names, in any clause), each as `schema.relation`; empty for a
    /// plain table or a name that does not resolve.
    pub(crate) async fn relation_reads(&self, name: &str) -> Result<Vec<String>, PgProxyError> {
        if let Some(r) = self
            .reads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return Ok(r.clone());
        }
        let literal = name.replace('\'', "''");
        let sql = format!(
            "WITH RECURSIVE deps(oid) AS ( \
               SELECT pg_catalog.to_regclass('{literal}')::oid \
               UNION \
               SELECT d.refobjid FROM pg_catalog.pg_depend d \
                 JOIN pg_catalog.pg_rewrite r ON d.objid = r.oid \
                 JOIN deps ON r.ev_class = deps.oid \
               WHERE d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
                 AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
                 AND d.refobjid <> deps.oid) \
             SELECT n.nspname::text || '.' || c.relname::text \
             FROM deps JOIN pg_catalog.pg_class c ON c.oid = deps.oid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE deps.oid <> pg_catalog.to_regclass('{literal}')::oid"
        );
        let rows = self.run(&sql).await?;
        let reads: Vec<String> = rows
            .into_iter()
            .filter_map(|r| r.into_iter().next().flatten())
            .collect();
        let mut cache = self.reads.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > 4096 {
            cache.clear();
        }
        cache.insert(name.to_string(), reads.clone());
        Ok(reads)
    }

    /// Columns of a relation named as in SQL (resolved with the upstream's search_path).
    async fn relation(&self, name: &str) -> Result<Vec<(u32, i16, String)>, PgProxyError> {
        if let Some(r) = self
            .relations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return Ok(r.clone());
        }
        let literal = name.replace('\'', "''");
        let sql = format!(
            "SELECT a.attrelid::oid::int8::text, a.attnum::text, a.attname::text              FROM pg_catalog.pg_attribute a              WHERE a.attrelid = pg_catalog.to_regclass('{literal}') AND a.attnum > 0              AND NOT a.attisdropped ORDER BY a.attnum"
        );
        let rows = self.run(&sql).await?;
        let cols: Vec<(u32, i16, String)> = rows
            .into_iter()
            .filter_map(|r| match r.as_slice() {
                [Some(oid), Some(att), Some(n)] => {
                    Some((oid.parse().ok()?, att.parse().ok()?, n.clone()))
                }
                _ => None,
            })
            .collect();
        self.relations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), cols.clone());
        Ok(cols)
    }

    /// The catalog connection, opened on first use (and after a failure dropped it).
    async fn connection(
        &self,
    ) -> Result<tokio::sync::MutexGuard<'_, Option<FrameReader<BoxStream>>>, PgProxyError> {
        let mut guard = self.conn.lock().await;
        if guard.is_none() {
            let conn = crate::upstream::connect(
                &self.upstream,
                &[("application_name".into(), "gatehouse-catalog".into())],
            )
            .await?;
            *guard = Some(FrameReader::new(conn.stream, conn.leftover, 64 << 20));
        }
        Ok(guard)
    }

    async fn run(&self, sql: &str) -> Result<Vec<Vec<Option<String>>>, PgProxyError> {
        let mut guard = self.connection().await?;
        let Some(reader) = guard.as_mut() else {
            return Err(PgProxyError::Gateway(
                "catalog connection unavailable".into(),
            ));
        };
        let result = query(reader, sql).await;
        if result.is_err() {
            // A broken catalog connection is reopened on the next lookup.
            *guard = None;
        }
        result
    }

    /// Sources per column: the column itself, then what it reads (a view column's base columns
    /// through the view's rules, a generated column's expression's columns through its
    /// `pg_attrdef` entry); columns without a table (expressions) get none. If the lookup fails,
    /// every table-backed column is marked with a source the masker cannot mistake for safe
    /// (`?.<oid>.<attnum>`), and the failure is returned for the caller to decide.
    async fn resolve_dependencies(
        &self,
        columns: &[ColumnDesc],
    ) -> Result<Vec<Vec<String>>, PgProxyError> {
        let missing: Vec<(u32, i16)> = {
            let cache = lock(&self.cache);
            let mut m: Vec<(u32, i16)> = columns
                .iter()
                .filter(|c| c.table_oid != 0 && c.attnum > 0)
                .map(|c| (c.table_oid, c.attnum))
                .filter(|k| !cache.contains_key(k))
                .collect();
            m.sort_unstable();
            m.dedup();
            m
        };
        if !missing.is_empty() {
            let found = self.lookup(&missing).await?;
            let mut cache = lock(&self.cache);
            for k in &missing {
                let names = found.get(k).cloned().unwrap_or_default();
                cache.insert(*k, names);
            }
        }
        let cache = lock(&self.cache);
        Ok(columns
            .iter()
            .map(|c| {
                cache
                    .get(&(c.table_oid, c.attnum))
                    .cloned()
                    .unwrap_or_default()
            })
            .collect())
    }

    async fn lookup(&self, keys: &[(u32, i16)]) -> Result<Cache, PgProxyError> {
        let values: Vec<String> = keys
            .iter()
            .map(|(oid, att)| format!("({oid}::oid,{att}::int2)"))
            .collect();
        let sql = format!(
            "WITH RECURSIVE cols(relid, attnum) AS (VALUES {}), \
             deps(root_rel, root_att, relid, attnum, depth) AS ( \
               SELECT relid, attnum, relid, attnum, 0 FROM cols \
               UNION \
               SELECT d0.root_rel, d0.root_att, e.refobjid, e.refobjsubid, d0.depth + 1 \
               FROM deps d0 \
               CROSS JOIN LATERAL ( \
                 SELECT d.refobjid, d.refobjsubid::int2 AS refobjsubid \
                 FROM pg_catalog.pg_rewrite r \
                 JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::regclass \
                   AND d.objid = r.oid AND d.refclassid = 'pg_catalog.pg_class'::regclass \
                   AND d.refobjsubid > 0 AND d.refobjid <> d0.relid \
                 WHERE r.ev_class = d0.relid \
                 UNION ALL \
                 SELECT d.refobjid, d.refobjsubid::int2 \
                 FROM pg_catalog.pg_attrdef ad \
                 JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_attrdef'::regclass \
                   AND d.objid = ad.oid AND d.refclassid = 'pg_catalog.pg_class'::regclass \
                   AND d.refobjid = d0.relid AND d.refobjsubid > 0 \
                   AND d.refobjsubid <> d0.attnum \
                 WHERE ad.adrelid = d0.relid AND ad.adnum = d0.attnum) e \
               WHERE d0.depth < 8) \
             SELECT deps.root_rel::text, deps.root_att::text, \
               n.nspname || '.' || c.relname || '.' || a.attname, deps.depth::text \
             FROM deps \
             JOIN pg_catalog.pg_class c ON c.oid = deps.relid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = deps.relid AND a.attnum = deps.attnum \
             ORDER BY 1, 2, 4, 3",
            values.join(",")
        );
        let rows = self.run(&sql).await?;
        let mut out: Cache = HashMap::new();
        for row in rows {
            let [Some(rel), Some(att), Some(name), _] = row.as_slice() else {
                continue;
            };
            let (Ok(rel), Ok(att)) = (rel.parse::<u32>(), att.parse::<i16>()) else {
                continue;
            };
            let entry = out.entry((rel, att)).or_default();
            if !entry.contains(name) {
                entry.push(name.clone());
            }
        }
        Ok(out)
    }
}

/// Why a row of `usertype u` runs user code, as SQL text.
const TYPE_REASON: &str = "'function ' || u.fn::pg_catalog.regprocedure::text \
    || ' (support code of type ' || u.typ::pg_catalog.regtype::text || ', of a column of ' \
    || u.rel::pg_catalog.regclass::text || ')'";

/// CTEs `typs(rel, typ, depth)` (the types `start` lists as `(rel, typ)`, then the types they
/// contain: a domain's base, an array's element, a range's subtype, a multirange's range, a
/// composite's fields; only types created after the cluster) and `usertype(rel, typ, fn)`
/// (their support functions that are not built-ins: input, output, binary I/O, typmod,
/// analyze, subscript — through `pg_depend` and the `pg_type` columns —, a range's canonical
/// and subtype_diff functions and its subtype operator class, and functions in domain checks).
fn type_code_ctes(start: &str) -> String {
    format!(
        "typs(rel, typ, depth) AS (SELECT s.rel, s.typ, 0 FROM ({start}) s(rel, typ) \
           WHERE s.typ >= 16384 \
           UNION SELECT y.rel, x.sub, y.depth + 1 FROM typs y CROSS JOIN LATERAL ( \
             SELECT t.typbasetype AS sub FROM pg_catalog.pg_type t WHERE t.oid = y.typ \
             UNION ALL SELECT t.typelem FROM pg_catalog.pg_type t WHERE t.oid = y.typ \
             UNION ALL SELECT r.rngsubtype FROM pg_catalog.pg_range r \
               WHERE r.rngtypid = y.typ \
             UNION ALL SELECT r.rngtypid FROM pg_catalog.pg_range r \
               WHERE (pg_catalog.to_jsonb(r) ->> 'rngmultitypid')::pg_catalog.oid = y.typ \
             UNION ALL SELECT a.atttypid FROM pg_catalog.pg_type t \
               JOIN pg_catalog.pg_attribute a ON a.attrelid = t.typrelid \
               WHERE t.oid = y.typ AND t.typrelid <> 0 AND a.attnum > 0 \
               AND NOT a.attisdropped) x \
           WHERE x.sub >= 16384 AND y.depth < 8), \
         typefn(rel, typ, fn) AS ( \
           SELECT y.rel, y.typ, f.fn FROM typs y \
             JOIN pg_catalog.pg_type t ON t.oid = y.typ CROSS JOIN LATERAL pg_catalog.unnest( \
               ARRAY[t.typinput::pg_catalog.oid, t.typoutput::pg_catalog.oid, \
               t.typreceive::pg_catalog.oid, t.typsend::pg_catalog.oid, \
               t.typmodin::pg_catalog.oid, t.typmodout::pg_catalog.oid, \
               t.typanalyze::pg_catalog.oid]) f(fn) \
           UNION ALL SELECT y.rel, y.typ, f.fn FROM typs y \
             JOIN pg_catalog.pg_range r ON r.rngtypid = y.typ \
             CROSS JOIN LATERAL pg_catalog.unnest(ARRAY[r.rngcanonical::pg_catalog.oid, \
               r.rngsubdiff::pg_catalog.oid]) f(fn) \
           UNION ALL SELECT y.rel, y.typ, ap.amproc FROM typs y \
             JOIN pg_catalog.pg_range r ON r.rngtypid = y.typ \
             JOIN pg_catalog.pg_opclass oc ON oc.oid = r.rngsubopc \
             JOIN pg_catalog.pg_amproc ap ON ap.amprocfamily = oc.opcfamily \
           UNION ALL SELECT y.rel, y.typ, d.refobjid FROM typs y \
             JOIN pg_catalog.pg_depend d \
             ON d.classid = 'pg_catalog.pg_type'::pg_catalog.regclass AND d.objid = y.typ \
             AND d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass \
           UNION ALL SELECT y.rel, y.typ, d.refobjid FROM typs y \
             JOIN pg_catalog.pg_constraint c ON c.contypid = y.typ \
             JOIN pg_catalog.pg_depend d \
             ON d.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass \
             AND d.objid = c.oid \
             AND d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass), \
         usertype(rel, typ, fn) AS (SELECT u.rel, u.typ, u.fn \
           FROM typefn u JOIN pg_catalog.pg_proc p ON p.oid = u.fn \
           WHERE NOT (p.oid < 16384 AND p.proowner = 10))"
    )
}

/// `text` as a string literal that reads the same whatever `standard_conforming_strings` is
/// (an `E''` literal: backslashes and quotes escaped). Text with a NUL cannot be a name.
fn sql_literal(text: &str) -> Result<String, PgProxyError> {
    if text.contains('\0') {
        return Err(PgProxyError::Gateway("a name with a NUL byte".into()));
    }
    Ok(format!(
        "E'{}'",
        text.replace('\\', "\\\\").replace('\'', "''")
    ))
}

/// Runs one simple query on a gateway-owned connection; returns text rows.
pub(crate) async fn query(
    reader: &mut FrameReader<BoxStream>,
    sql: &str,
) -> Result<Vec<Vec<Option<String>>>, PgProxyError> {
    let mut out = BytesMut::new();
    wire::encode_query(sql, &mut out)?;
    reader
        .inner
        .write_all(&out)
        .await
        .map_err(PgProxyError::upstream_io)?;
    let mut rows = Vec::new();
    let mut error = None;
    loop {
        let frame = match reader.next().await {
            Ok(Some(f)) => f,
            Ok(None) => {
                return Err(PgProxyError::UpstreamConnect(
                    "catalog connection closed".into(),
                ));
            }
            Err(ReadError::Io(e)) => return Err(PgProxyError::upstream_io(e)),
            Err(ReadError::Frame(e)) => return Err(PgProxyError::UpstreamProtocol(e.to_string())),
        };
        match frame.tag {
            b'D' => {
                let values = wire::parse_data_row(&frame.body)
                    .map_err(|e| PgProxyError::UpstreamProtocol(e.to_string()))?;
                rows.push(
                    values
                        .into_iter()
                        .map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()))
                        .collect(),
                );
            }
            b'E' => {
                let e = ErrorFields::parse(frame.body)
                    .map_err(|e| PgProxyError::UpstreamProtocol(e.to_string()))?;
                error = Some(e.get(b'M').unwrap_or("catalog query failed").to_string());
            }
            b'Z' => break,
            _ => {}
        }
    }
    match error {
        Some(e) => Err(PgProxyError::Gateway(format!("catalog lookup failed: {e}"))),
        None => Ok(rows),
    }
}

impl Catalog {
    /// The output columns of `sql`, from a Parse and a Describe of it on the catalog connection
    /// (never executed). Fails when the server cannot parse it there (a temporary table of the
    /// client's session, a setting the session changed) or it returns no rows.
    pub(crate) async fn describe(&self, sql: &str) -> Result<Vec<ColumnDesc>, PgProxyError> {
        let mut guard = self.connection().await?;
        let Some(reader) = guard.as_mut() else {
            return Err(PgProxyError::Gateway(
                "catalog connection unavailable".into(),
            ));
        };
        let result = describe(reader, sql).await;
        if matches!(
            result,
            Err(PgProxyError::UpstreamConnect(_) | PgProxyError::UpstreamProtocol(_))
        ) {
            *guard = None;
        }
        result
    }
}

async fn describe(
    reader: &mut FrameReader<BoxStream>,
    sql: &str,
) -> Result<Vec<ColumnDesc>, PgProxyError> {
    let mut out = BytesMut::new();
    wire::encode_parse("", sql, &[], &mut out)?;
    wire::encode_describe(b'S', "", &mut out)?;
    crate::frame::encode_frame(b'S', &[], &mut out);
    reader
        .inner
        .write_all(&out)
        .await
        .map_err(PgProxyError::upstream_io)?;
    let mut columns = None;
    let mut error = None;
    loop {
        let frame = match reader.next().await {
            Ok(Some(f)) => f,
            Ok(None) => {
                return Err(PgProxyError::UpstreamConnect(
                    "catalog connection closed".into(),
                ));
            }
            Err(ReadError::Io(e)) => return Err(PgProxyError::upstream_io(e)),
            Err(ReadError::Frame(e)) => return Err(PgProxyError::UpstreamProtocol(e.to_string())),
        };
        match frame.tag {
            b'T' => {
                columns = Some(
                    wire::parse_row_description(frame.body)
                        .map_err(|e| PgProxyError::UpstreamProtocol(e.to_string()))?,
                );
            }
            b'E' => {
                let e = ErrorFields::parse(frame.body)
                    .map_err(|e| PgProxyError::UpstreamProtocol(e.to_string()))?;
                error = Some(e.get(b'M').unwrap_or("describe failed").to_string());
            }
            b'Z' => break,
            _ => {}
        }
    }
    match (error, columns) {
        (Some(e), _) => Err(PgProxyError::Gateway(format!(
            "catalog describe failed: {e}"
        ))),
        (None, Some(c)) => Ok(c),
        (None, None) => Err(PgProxyError::Gateway(
            "catalog describe: the statement returns no rows".into(),
        )),
    }
}
