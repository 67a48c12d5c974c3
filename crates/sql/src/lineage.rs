//! Output-column lineage: for each column a query returns, the source columns its value derives
//! from, through aliases, expressions, casts, function calls, aggregates, CTEs, subqueries,
//! set operations, `*` and whole-row references such as `row_to_json(t)`.
//!
//! Promise: conservative. A value that *may* come from a column lists that column; a reference
//! that cannot be tied to a table is [`Source::Unresolved`] (callers mask when in doubt); an
//! unexpanded `*` or whole-row reference is [`Source::AllColumns`]. Filters (`WHERE`, `JOIN ON`)
//! are not lineage: they decide which rows come back, not what a value is.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use gatehouse_core::SqlSessionSettings;
use serde::{Deserialize, Serialize};
use sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Ident, ObjectName, Query, Select,
    SelectItem, SelectItemQualifiedWildcardKind, SetExpr, Statement, TableAlias, TableFactor,
    TableWithJoins, Visit, Visitor,
};

use crate::classify::{normalise_ident, normalise_name, parse_piece};
use crate::{SqlError, lex};

/// Column names of a table, for expanding `*` and resolving unqualified names. `None`: unknown
/// (lineage then reports [`Source::AllColumns`] for `*` and every candidate table for a name).
///
/// Any `Fn(&str) -> Option<Vec<String>>` is a catalog; [`NoCatalog`] knows nothing.
pub trait Catalog {
    /// Columns of `table` (a normalised name as written in the query, e.g. `users` or
    /// `public.users`), in table order.
    fn columns(&self, table: &str) -> Option<Vec<String>>;
}

impl<F: Fn(&str) -> Option<Vec<String>>> Catalog for F {
    fn columns(&self, table: &str) -> Option<Vec<String>> {
        self(table)
    }
}

/// A catalog that knows no table.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCatalog;

impl Catalog for NoCatalog {
    fn columns(&self, _table: &str) -> Option<Vec<String>> {
        None
    }
}

/// Where an output value may come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Source {
    /// One column of one table (table name normalised as written: `users`, `public.users`).
    Column {
        /// Table.
        table: String,
        /// Column.
        column: String,
    },
    /// Every column of a table: an unexpanded `*`, `t.*`, or a whole-row reference such as
    /// `row_to_json(t)`.
    AllColumns {
        /// Table.
        table: String,
    },
    /// A name that could not be tied to a table (mask when in doubt).
    Unresolved {
        /// The name as written (normalised).
        name: String,
    },
    /// The value reveals only whether this column is NULL (`count(col)`, `col IS NULL`: see
    /// the reveals-nothing list in the crate's lineage documentation). A masked column shows
    /// that anyway, so such a source does not make the output masked — unless the caller finds
    /// the column is itself computed (a view's expression column, whose nullness may be a
    /// predicate on a masked value), in which case it counts as [`Source::Column`].
    Nullness {
        /// Table (as for [`Source::Column`]).
        table: String,
        /// Column.
        column: String,
    },
}

/// One output column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputColumn {
    /// The name PostgreSQL gives the column (alias, column name, function name, `?column?`).
    pub name: String,
    /// Where its value may come from; empty for constants.
    pub sources: BTreeSet<Source>,
    /// This entry stands for an unexpanded `*` (several output columns, count unknown without a
    /// catalog).
    pub star: bool,
    /// The value is computed from its sources (an expression, a whole row, a table function's
    /// output, a set operation mixing columns, or a reference that could not be tied to one
    /// column): mask it as a whole. `false`: the value is one source column itself, unchanged
    /// (through aliases, subqueries and CTEs), so a column-level mask of that source applies.
    #[serde(default)]
    pub derived: bool,
}

/// The lineage of a query's output.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Lineage {
    /// Output columns in order.
    pub columns: Vec<OutputColumn>,
}

impl Lineage {
    /// Whether every output position is known (no unexpanded `*`), so `columns[i]` is field `i`
    /// of the result.
    pub fn is_positional(&self) -> bool {
        !self.columns.iter().any(|c| c.star)
    }

    /// Every source of every output column.
    pub fn all_sources(&self) -> BTreeSet<Source> {
        self.columns
            .iter()
            .flat_map(|c| c.sources.iter().cloned())
            .collect()
    }
}

/// Traces the output columns of one statement: a query, or `INSERT`/`UPDATE`/`DELETE …
/// RETURNING`. Other statements return no rows and yield an empty lineage.
pub fn lineage(
    text: &str,
    settings: &SqlSessionSettings,
    catalog: &dyn Catalog,
) -> Result<Lineage, SqlError> {
    let pieces: Vec<_> = lex::split(text, settings)
        .map_err(|(_, failure)| SqlError::Unparseable(failure.reason))?
        .into_iter()
        .filter(|p| !p.is_empty)
        .collect();
    let [piece] = pieces.as_slice() else {
        return Err(SqlError::NotOneStatement(pieces.len()));
    };
    let statement = match parse_piece(piece) {
        Ok(statement) => statement,
        Err(reason) => {
            // `sqlparser` cannot read it. If PostgreSQL's parser can (the statement is valid),
            // answer conservatively: one unexpanded output entry that may derive from every
            // column of every table the statement names.
            let info = crate::classify::classify_piece(piece, settings);
            if !info.is_parsed() {
                return Err(SqlError::Unparseable(reason));
            }
            let sources = info
                .tables
                .into_iter()
                .map(|table| Source::AllColumns { table })
                .collect();
            return Ok(Lineage {
                columns: vec![OutputColumn {
                    name: "*".into(),
                    sources,
                    star: true,
                    derived: true,
                }],
            });
        }
    };
    let ctx = Ctx { catalog };
    let root = Scope::root();
    let columns = ctx.statement(&statement, &root);
    Ok(Lineage { columns })
}

/// Where the data a copying statement writes elsewhere may come from: the output lineage of the
/// query of `CREATE VIEW … AS`, `CREATE TABLE … AS` / `CREATE MATERIALIZED VIEW … AS`, `SELECT …
/// INTO` and `INSERT … SELECT`/`VALUES` (its sources, as for [`Lineage::all_sources`]). Filters
/// are not counted, as in a query's lineage.
///
/// `None` when the statement is none of these or its copy cannot be traced from the text
/// alone (it does not parse here, an `INSERT` inside `WITH` or with `ON CONFLICT DO UPDATE`,
/// or anything else): the caller then counts every column of every table it names.
pub fn copied_sources(
    text: &str,
    settings: &SqlSessionSettings,
    catalog: &dyn Catalog,
) -> Option<BTreeSet<Source>> {
    let pieces: Vec<_> = lex::split(text, settings)
        .ok()?
        .into_iter()
        .filter(|p| !p.is_empty)
        .collect();
    let [piece] = pieces.as_slice() else {
        return None;
    };
    let statement = parse_piece(piece).ok()?;
    let query: &Query = match statement.as_ref() {
        Statement::CreateView(view) => &view.query,
        Statement::CreateTable(table) => table.query.as_deref()?,
        Statement::Insert(insert) => {
            // `ON CONFLICT DO NOTHING` copies nothing more; an update on conflict may copy
            // the target's own columns (`SET note = t.email`): not traced here.
            let nothing = matches!(&insert.on, Some(sqlparser::ast::OnInsert::OnConflict(c))
                if c.action == sqlparser::ast::OnConflictAction::DoNothing);
            if insert.on.is_some() && !nothing {
                return None;
            }
            insert.source.as_deref()?
        }
        Statement::Query(q) => match q.body.as_ref() {
            SetExpr::Select(select) if select.into.is_some() => q,
            _ => return None,
        },
        _ => return None,
    };
    let ctx = Ctx { catalog };
    let root = Scope::root();
    Some(union_sources(&ctx.query(query, &root)))
}

struct Ctx<'c> {
    catalog: &'c dyn Catalog,
}

/// What a FROM item provides.
#[derive(Clone)]
enum Relation {
    /// A base table; `renamed` are column aliases from `AS t(a, b)`.
    Table { name: String, renamed: Vec<String> },
    /// A subquery or CTE with known output columns.
    Derived { columns: Vec<OutputColumn> },
    /// A table function: any of its columns derives from its arguments.
    Opaque { sources: BTreeSet<Source> },
}

#[derive(Clone)]
struct ScopeItem {
    /// The name the item is referenced by (alias, or the table's last name part).
    alias: String,
    relation: Relation,
}

struct Scope<'p> {
    items: Vec<ScopeItem>,
    ctes: Vec<(String, Vec<OutputColumn>)>,
    parent: Option<&'p Scope<'p>>,
}

impl<'p> Scope<'p> {
    fn root() -> Scope<'static> {
        Scope {
            items: Vec::new(),
            ctes: Vec::new(),
            parent: None,
        }
    }

    fn child(&'p self) -> Scope<'p> {
        Scope {
            items: Vec::new(),
            ctes: Vec::new(),
            parent: Some(self),
        }
    }

    fn cte(&self, name: &str) -> Option<&Vec<OutputColumn>> {
        self.ctes
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c)
            .or_else(|| self.parent.and_then(|p| p.cte(name)))
    }

    fn item(&self, alias: &str) -> Option<&ScopeItem> {
        self.items
            .iter()
            .find(|i| i.alias == alias)
            .or_else(|| self.parent.and_then(|p| p.item(alias)))
    }

    /// An item by qualified table name (`public.users.email` → item for `public.users`).
    fn item_by_table(&self, name: &str) -> Option<&ScopeItem> {
        self.items
            .iter()
            .find(|i| matches!(&i.relation, Relation::Table { name: n, .. } if n == name))
            .or_else(|| self.parent.and_then(|p| p.item_by_table(name)))
    }
}

fn union_sources(columns: &[OutputColumn]) -> BTreeSet<Source> {
    columns
        .iter()
        .flat_map(|c| c.sources.iter().cloned())
        .collect()
}

/// An output column computed from `sources` (derived: see [`OutputColumn::derived`]).
fn column(name: impl Into<String>, sources: BTreeSet<Source>) -> OutputColumn {
    OutputColumn {
        name: name.into(),
        sources,
        star: false,
        derived: true,
    }
}

impl Ctx<'_> {
    fn statement(&self, statement: &Statement, scope: &Scope<'_>) -> Vec<OutputColumn> {
        match statement {
            Statement::Query(q) => self.query(q, scope),
            Statement::Insert(insert) => {
                let Some(returning) = &insert.returning else {
                    return Vec::new();
                };
                let mut inner = scope.child();
                let table = match &insert.table {
                    sqlparser::ast::TableObject::TableName(n) => normalise_name(n),
                    other => other.to_string().to_ascii_lowercase(),
                };
                let alias = insert
                    .table_alias
                    .as_ref()
                    .map(|a| normalise_ident(&a.alias))
                    .unwrap_or_else(|| last_part(&table));
                inner.items.push(ScopeItem {
                    alias,
                    relation: Relation::Table {
                        name: table,
                        renamed: Vec::new(),
                    },
                });
                self.projection(returning, &inner)
            }
            Statement::Update(update) => {
                let Some(returning) = &update.returning else {
                    return Vec::new();
                };
                let mut inner = scope.child();
                self.add_from_item(&update.table, &mut inner);
                if let Some(from) = &update.from {
                    let tables = match from {
                        sqlparser::ast::UpdateTableFromKind::BeforeSet(t)
                        | sqlparser::ast::UpdateTableFromKind::AfterSet(t) => t,
                    };
                    for t in tables {
                        self.add_from_item(t, &mut inner);
                    }
                }
                self.projection(returning, &inner)
            }
            Statement::Delete(delete) => {
                let Some(returning) = &delete.returning else {
                    return Vec::new();
                };
                let mut inner = scope.child();
                let from = match &delete.from {
                    sqlparser::ast::FromTable::WithFromKeyword(t)
                    | sqlparser::ast::FromTable::WithoutKeyword(t) => t,
                };
                for t in from {
                    self.add_from_item(t, &mut inner);
                }
                for t in delete.using.iter().flatten() {
                    self.add_from_item(t, &mut inner);
                }
                self.projection(returning, &inner)
            }
            _ => Vec::new(),
        }
    }

    fn query(&self, query: &Query, scope: &Scope<'_>) -> Vec<OutputColumn> {
        let mut with_scope = scope.child();
        if let Some(with) = &query.with {
            for cte in &with.cte_tables {
                let name = normalise_ident(&cte.alias.name);
                if with.recursive {
                    // First pass without the self-reference, second pass with it.
                    with_scope.ctes.push((name.clone(), Vec::new()));
                    let first = self.query(&cte.query, &with_scope);
                    with_scope.ctes.pop();
                    with_scope
                        .ctes
                        .push((name.clone(), rename(first, &cte.alias)));
                    let second = self.query(&cte.query, &with_scope);
                    with_scope.ctes.pop();
                    with_scope.ctes.push((name, rename(second, &cte.alias)));
                } else {
                    let columns = self.query(&cte.query, &with_scope);
                    with_scope.ctes.push((name, rename(columns, &cte.alias)));
                }
            }
        }
        self.set_expr(&query.body, &with_scope)
    }

    fn set_expr(&self, body: &SetExpr, scope: &Scope<'_>) -> Vec<OutputColumn> {
        match body {
            SetExpr::Select(select) => self.select(select, scope),
            SetExpr::Query(q) => self.query(q, scope),
            SetExpr::SetOperation { left, right, .. } => {
                let left = self.set_expr(left, scope);
                let right = self.set_expr(right, scope);
                combine_positional(left, right)
            }
            SetExpr::Values(values) => {
                let mut out: Vec<OutputColumn> = Vec::new();
                for row in &values.rows {
                    for (i, expr) in row.content.iter().enumerate() {
                        let sources = self.expr_sources(expr, scope);
                        match out.get_mut(i) {
                            Some(col) => col.sources.extend(sources),
                            None => out.push(column(format!("column{}", i + 1), sources)),
                        }
                    }
                }
                out
            }
            SetExpr::Table(table) => {
                let name = match (&table.schema_name, &table.table_name) {
                    (Some(s), Some(t)) => format!("{s}.{t}").to_ascii_lowercase(),
                    (None, Some(t)) => t.to_ascii_lowercase(),
                    _ => return Vec::new(),
                };
                let mut inner = scope.child();
                inner.items.push(self.table_item(&name, None, scope));
                self.star(&inner.items)
            }
            SetExpr::Insert(s) | SetExpr::Update(s) | SetExpr::Delete(s) | SetExpr::Merge(s) => {
                self.statement(s, scope)
            }
            #[allow(unreachable_patterns)]
            _ => Vec::new(),
        }
    }

    fn select(&self, select: &Select, scope: &Scope<'_>) -> Vec<OutputColumn> {
        let mut inner = scope.child();
        for twj in &select.from {
            self.add_from_item(twj, &mut inner);
        }
        self.projection(&select.projection, &inner)
    }

    fn projection(&self, items: &[SelectItem], scope: &Scope<'_>) -> Vec<OutputColumn> {
        let mut out = Vec::new();
        for item in items {
            match item {
                SelectItem::UnnamedExpr(expr) => {
                    let mut col = column(figure_name(expr), self.expr_sources(expr, scope));
                    col.derived = self.expr_derived(expr, &col.sources, scope);
                    out.push(col);
                }
                SelectItem::ExprWithAlias { expr, alias } => {
                    let mut col = column(normalise_ident(alias), self.expr_sources(expr, scope));
                    col.derived = self.expr_derived(expr, &col.sources, scope);
                    out.push(col);
                }
                SelectItem::ExprWithAliases { expr, aliases } => {
                    let sources = self.expr_sources(expr, scope);
                    let derived = self.expr_derived(expr, &sources, scope);
                    for alias in aliases {
                        let mut col = column(normalise_ident(alias), sources.clone());
                        col.derived = derived;
                        out.push(col);
                    }
                }
                SelectItem::Wildcard(_) => out.extend(self.star(&scope.items)),
                SelectItem::QualifiedWildcard(kind, _) => match kind {
                    SelectItemQualifiedWildcardKind::ObjectName(name) => {
                        out.extend(self.qualified_star(name, scope));
                    }
                    SelectItemQualifiedWildcardKind::Expr(expr) => {
                        out.push(OutputColumn {
                            name: "*".into(),
                            sources: self.expr_sources(expr, scope),
                            star: true,
                            derived: true,
                        });
                    }
                },
            }
        }
        out
    }

    /// Whether an output expression computes its value (see [`OutputColumn::derived`]): only a
    /// plain reference to one column, resolved to a base table's column or to a column that is
    /// itself not derived, is not.
    fn expr_derived(&self, expr: &Expr, sources: &BTreeSet<Source>, scope: &Scope<'_>) -> bool {
        if sources.is_empty() || !sources.iter().all(|s| matches!(s, Source::Column { .. })) {
            // Constants, whole rows, unresolved names: nothing to keep column-level.
            return true;
        }
        match expr {
            Expr::Nested(inner) => self.expr_derived(inner, sources, scope),
            Expr::Identifier(ident) => self.ref_derived(None, &normalise_ident(ident), scope),
            Expr::CompoundIdentifier(parts) => {
                let names: Vec<String> = parts.iter().map(normalise_ident).collect();
                match names.split_last() {
                    Some((column, [])) => self.ref_derived(None, column, scope),
                    Some((column, qualifier)) => {
                        self.ref_derived(Some(&qualifier.join(".")), column, scope)
                    }
                    None => true,
                }
            }
            _ => true,
        }
    }

    /// Whether `expr` is on the list of derivations that reveal nothing about the value of the
    /// column they read, so that its output carries no lineage from it. The list is deliberately
    /// short: each entry reveals only whether the column is NULL, which a masked column shows
    /// anyway (NULL stays NULL under every strategy).
    ///
    /// - `col IS NULL`, `col IS NOT NULL`;
    /// - `count(col)` (also `count(ALL col)`, `pg_catalog.count(col)`), without `FILTER`,
    ///   `OVER`, `WITHIN GROUP` or an argument clause.
    ///
    /// `col` must be a plain reference to a column that is not itself derived (a CTE or
    /// subquery column computed as `CASE WHEN email LIKE 'a%' THEN 1 END` is derived, and its
    /// nullness is that predicate); whether a table named in the query is a view computing that
    /// column is for the caller to check ([`Source::Nullness`]). Deliberately not listed: `count(DISTINCT col)` (reveals which
    /// values are equal), `length`/`octet_length`/`bit_length` (the value's length), `min`/`max`,
    /// comparisons, `md5`/hashes (joinable, and brute-forceable for short values), window
    /// functions (`count(col) OVER (ORDER BY col)` reveals the order), `FILTER (WHERE …)` (a
    /// predicate on any column), `num_nulls`/`num_nonnulls` and `IS DISTINCT FROM NULL`
    /// (harmless, but not needed). A user-defined function named `count` is caught by the proxy
    /// (any function outside `pg_catalog` makes the output's origin untraced).
    ///
    /// Returns the operand's sources (each becomes a [`Source::Nullness`]), or `None` when
    /// `expr` is not on the list.
    fn reveals_nothing(&self, expr: &Expr, scope: &Scope<'_>) -> Option<BTreeSet<Source>> {
        let mut operand = match expr {
            Expr::IsNull(e) | Expr::IsNotNull(e) => &**e,
            Expr::Function(f) => plain_count_argument(f)?,
            _ => return None,
        };
        while let Expr::Nested(inner) = operand {
            operand = inner;
        }
        if !matches!(operand, Expr::Identifier(_) | Expr::CompoundIdentifier(_)) {
            return None;
        }
        let sources = self.expr_sources(operand, scope);
        (!self.expr_derived(operand, &sources, scope)).then_some(sources)
    }

    /// Whether the column `name` (of the item `qualifier`, if given) is derived where it is
    /// found; `true` when it is not found.
    fn ref_derived(&self, qualifier: Option<&str>, name: &str, scope: &Scope<'_>) -> bool {
        let mut level = Some(scope);
        while let Some(s) = level {
            let mut found = false;
            let mut derived = false;
            for item in &s.items {
                if let Some(q) = qualifier {
                    let table_named =
                        matches!(&item.relation, Relation::Table { name: n, .. } if n == q);
                    if item.alias != q && !table_named {
                        continue;
                    }
                }
                match &item.relation {
                    Relation::Table { .. } => found = true,
                    Relation::Derived { columns } => {
                        for c in columns.iter().filter(|c| c.name == name || c.star) {
                            found = true;
                            derived |= c.derived;
                        }
                    }
                    Relation::Opaque { .. } => {
                        found = true;
                        derived = true;
                    }
                }
            }
            if found {
                return derived;
            }
            level = s.parent;
        }
        true
    }

    fn qualified_star(&self, name: &ObjectName, scope: &Scope<'_>) -> Vec<OutputColumn> {
        let full = normalise_name(name);
        match scope.item(&full).or_else(|| scope.item_by_table(&full)) {
            Some(item) => self.star(std::slice::from_ref(item)),
            None => vec![OutputColumn {
                name: "*".into(),
                sources: [Source::AllColumns { table: full }].into(),
                star: true,
                derived: true,
            }],
        }
    }

    /// Output columns of `*` over `items`.
    fn star(&self, items: &[ScopeItem]) -> Vec<OutputColumn> {
        let mut out = Vec::new();
        for item in items {
            match &item.relation {
                Relation::Table { name, renamed } => match self.catalog.columns(name) {
                    Some(cols) => {
                        for (i, col) in cols.iter().enumerate() {
                            let out_name = renamed.get(i).unwrap_or(col).clone();
                            let mut c = column(
                                out_name,
                                [Source::Column {
                                    table: name.clone(),
                                    column: col.clone(),
                                }]
                                .into(),
                            );
                            c.derived = false;
                            out.push(c);
                        }
                    }
                    // Each column of the table, itself.
                    None => out.push(OutputColumn {
                        name: "*".into(),
                        sources: [Source::AllColumns {
                            table: name.clone(),
                        }]
                        .into(),
                        star: true,
                        derived: false,
                    }),
                },
                Relation::Derived { columns } => out.extend(columns.iter().cloned()),
                Relation::Opaque { sources } => out.push(OutputColumn {
                    name: "*".into(),
                    sources: sources.clone(),
                    star: true,
                    derived: true,
                }),
            }
        }
        out
    }

    fn table_item(&self, name: &str, alias: Option<&TableAlias>, scope: &Scope<'_>) -> ScopeItem {
        let alias_name = alias.map(|a| normalise_ident(&a.name));
        let renamed: Vec<String> = alias
            .map(|a| a.columns.iter().map(|c| normalise_ident(&c.name)).collect())
            .unwrap_or_default();
        if !name.contains('.')
            && let Some(columns) = scope.cte(name)
        {
            let mut columns = columns.clone();
            for (col, new) in columns.iter_mut().zip(renamed.iter()) {
                col.name = new.clone();
            }
            return ScopeItem {
                alias: alias_name.unwrap_or_else(|| name.to_string()),
                relation: Relation::Derived { columns },
            };
        }
        ScopeItem {
            alias: alias_name.unwrap_or_else(|| last_part(name)),
            relation: Relation::Table {
                name: name.to_string(),
                renamed,
            },
        }
    }

    fn add_from_item(&self, twj: &TableWithJoins, scope: &mut Scope<'_>) {
        self.table_factor(&twj.relation, scope);
        for join in &twj.joins {
            self.table_factor(&join.relation, scope);
        }
    }

    fn table_factor(&self, factor: &TableFactor, scope: &mut Scope<'_>) {
        match factor {
            TableFactor::Table {
                name,
                alias,
                args: None,
                ..
            } => {
                let item = self.table_item(&normalise_name(name), alias.as_ref(), scope);
                scope.items.push(item);
            }
            TableFactor::Table {
                name,
                alias,
                args: Some(args),
                ..
            } => {
                let mut sources = BTreeSet::new();
                for arg in &args.args {
                    sources.extend(self.function_arg_sources(arg, scope));
                }
                self.push_opaque(normalise_name(name), alias.as_ref(), sources, scope);
            }
            TableFactor::Function {
                name, args, alias, ..
            } => {
                let mut sources = BTreeSet::new();
                for arg in args {
                    sources.extend(self.function_arg_sources(arg, scope));
                }
                self.push_opaque(normalise_name(name), alias.as_ref(), sources, scope);
            }
            TableFactor::TableFunction { expr, alias } => {
                let sources = self.expr_sources(expr, scope);
                self.push_opaque(figure_name(expr), alias.as_ref(), sources, scope);
            }
            TableFactor::UNNEST {
                alias, array_exprs, ..
            } => {
                let mut sources = BTreeSet::new();
                for e in array_exprs {
                    sources.extend(self.expr_sources(e, scope));
                }
                self.push_opaque("unnest".into(), alias.as_ref(), sources, scope);
            }
            TableFactor::Derived {
                subquery, alias, ..
            } => {
                let columns = self.query(subquery, scope);
                let columns = match alias {
                    Some(a) => rename(columns, a),
                    None => columns,
                };
                scope.items.push(ScopeItem {
                    alias: alias
                        .as_ref()
                        .map(|a| normalise_ident(&a.name))
                        .unwrap_or_default(),
                    relation: Relation::Derived { columns },
                });
            }
            TableFactor::NestedJoin {
                table_with_joins, ..
            } => self.add_from_item(table_with_joins, scope),
            other => {
                // Anything else: everything it references, as an opaque relation.
                let sources = self.any_sources(other, scope);
                scope.items.push(ScopeItem {
                    alias: String::new(),
                    relation: Relation::Opaque { sources },
                });
            }
        }
    }

    fn push_opaque(
        &self,
        name: String,
        alias: Option<&TableAlias>,
        sources: BTreeSet<Source>,
        scope: &mut Scope<'_>,
    ) {
        scope.items.push(ScopeItem {
            alias: alias
                .map(|a| normalise_ident(&a.name))
                .unwrap_or_else(|| last_part(&name)),
            relation: Relation::Opaque { sources },
        });
    }

    fn function_arg_sources(&self, arg: &FunctionArg, scope: &Scope<'_>) -> BTreeSet<Source> {
        let arg_expr = match arg {
            FunctionArg::Named { arg, .. }
            | FunctionArg::ExprNamed { arg, .. }
            | FunctionArg::Unnamed(arg) => arg,
        };
        match arg_expr {
            FunctionArgExpr::Expr(e) => self.expr_sources(e, scope),
            FunctionArgExpr::QualifiedWildcard(name) => {
                union_sources(&self.qualified_star(name, scope))
            }
            // `count(*)`: no column's value flows out.
            _ => BTreeSet::new(),
        }
    }

    fn expr_sources<V: Visit>(&self, expr: &V, scope: &Scope<'_>) -> BTreeSet<Source> {
        let mut walker = ExprWalker {
            ctx: self,
            scope,
            depth: 0,
            skip: 0,
            out: BTreeSet::new(),
        };
        let _ = expr.visit(&mut walker);
        walker.out
    }

    fn any_sources<V: Visit>(&self, node: &V, scope: &Scope<'_>) -> BTreeSet<Source> {
        self.expr_sources(node, scope)
    }

    /// Resolves `name` (unqualified) to sources.
    fn resolve_name(&self, name: &str, scope: &Scope<'_>) -> BTreeSet<Source> {
        let mut level = Some(scope);
        while let Some(s) = level {
            let mut definite = BTreeSet::new();
            let mut possible = BTreeSet::new();
            for item in &s.items {
                match &item.relation {
                    Relation::Derived { columns } => {
                        for c in columns.iter().filter(|c| c.name == name) {
                            definite.extend(c.sources.iter().cloned());
                        }
                        // An unexpanded `*` inside may hold the name too.
                        for c in columns.iter().filter(|c| c.star) {
                            possible.extend(c.sources.iter().cloned());
                        }
                    }
                    Relation::Table {
                        name: table,
                        renamed,
                    } => match self.table_column(table, renamed, name) {
                        Resolution::Definite(src) => {
                            definite.insert(src);
                        }
                        Resolution::Possible(src) => {
                            possible.insert(src);
                        }
                        Resolution::Absent => {}
                    },
                    Relation::Opaque { sources } => possible.extend(sources.iter().cloned()),
                }
                // A whole-row reference (`SELECT t FROM t`, `row_to_json(t)`).
                if item.alias == name {
                    possible.extend(self.whole_row(item));
                }
            }
            if !definite.is_empty() {
                return definite;
            }
            if !possible.is_empty() {
                return possible;
            }
            level = s.parent;
        }
        [Source::Unresolved {
            name: name.to_string(),
        }]
        .into()
    }

    fn whole_row(&self, item: &ScopeItem) -> BTreeSet<Source> {
        match &item.relation {
            Relation::Table { name, .. } => [Source::AllColumns {
                table: name.clone(),
            }]
            .into(),
            Relation::Derived { columns } => union_sources(columns),
            Relation::Opaque { sources } => sources.clone(),
        }
    }

    fn table_column(&self, table: &str, renamed: &[String], name: &str) -> Resolution {
        let cols = self.catalog.columns(table);
        if let Some(pos) = renamed.iter().position(|r| r == name) {
            return match cols.as_ref().and_then(|c| c.get(pos)) {
                Some(real) => Resolution::Definite(Source::Column {
                    table: table.to_string(),
                    column: real.clone(),
                }),
                None => Resolution::Definite(Source::AllColumns {
                    table: table.to_string(),
                }),
            };
        }
        match cols {
            Some(cols) => {
                // Columns hidden by a rename are not reachable under their old names.
                let visible = cols.iter().skip(renamed.len()).any(|c| c == name);
                if visible {
                    Resolution::Definite(Source::Column {
                        table: table.to_string(),
                        column: name.to_string(),
                    })
                } else {
                    Resolution::Absent
                }
            }
            None => Resolution::Possible(Source::Column {
                table: table.to_string(),
                column: name.to_string(),
            }),
        }
    }

    /// Resolves `a.b`, `s.t.c`, … to sources.
    fn resolve_qualified(&self, parts: &[Ident], scope: &Scope<'_>) -> BTreeSet<Source> {
        let names: Vec<String> = parts.iter().map(normalise_ident).collect();
        let Some((column_name, qualifier)) = names.split_last() else {
            return BTreeSet::new();
        };
        if qualifier.is_empty() {
            return self.resolve_name(column_name, scope);
        }
        let qual = qualifier.join(".");
        let item = scope.item(&qual).or_else(|| scope.item_by_table(&qual));
        match item {
            Some(item) => match &item.relation {
                Relation::Table { name, renamed } => {
                    match self.table_column(name, renamed, column_name) {
                        Resolution::Definite(s) | Resolution::Possible(s) => [s].into(),
                        Resolution::Absent => [Source::Unresolved {
                            name: format!("{qual}.{column_name}"),
                        }]
                        .into(),
                    }
                }
                Relation::Derived { columns } => {
                    let hits: BTreeSet<Source> = columns
                        .iter()
                        .filter(|c| c.name == *column_name || c.star)
                        .flat_map(|c| c.sources.iter().cloned())
                        .collect();
                    if hits.is_empty() {
                        [Source::Unresolved {
                            name: format!("{qual}.{column_name}"),
                        }]
                        .into()
                    } else {
                        hits
                    }
                }
                Relation::Opaque { sources } => sources.clone(),
            },
            // `(composite).field` spelled `a.b`: the root is a column or row.
            None => match qualifier.first() {
                Some(first) => self.resolve_name(first, scope),
                None => BTreeSet::new(),
            },
        }
    }
}

enum Resolution {
    Definite(Source),
    Possible(Source),
    Absent,
}

/// Collects sources from an expression tree; nested queries are traced as a whole.
struct ExprWalker<'a, 'c, 's> {
    ctx: &'a Ctx<'c>,
    scope: &'a Scope<'s>,
    /// Depth inside nested queries (those are handled when first met).
    depth: usize,
    /// Depth inside an expression that reveals nothing about its operand's value
    /// ([`reveals_nothing`]): no source is taken from it.
    skip: usize,
    out: BTreeSet<Source>,
}

impl Visitor for ExprWalker<'_, '_, '_> {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if self.depth == 0 {
            let columns = self.ctx.query(query, self.scope);
            self.out.extend(union_sources(&columns));
        }
        self.depth += 1;
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _query: &Query) -> ControlFlow<()> {
        self.depth = self.depth.saturating_sub(1);
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, _expr: &Expr) -> ControlFlow<()> {
        if self.depth == 0 {
            self.skip = self.skip.saturating_sub(1);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if self.depth > 0 {
            return ControlFlow::Continue(());
        }
        if self.skip > 0 {
            self.skip += 1;
            return ControlFlow::Continue(());
        }
        if let Some(columns) = self.ctx.reveals_nothing(expr, self.scope) {
            self.out
                .extend(columns.into_iter().filter_map(|source| match source {
                    Source::Column { table, column } => Some(Source::Nullness { table, column }),
                    _ => None,
                }));
            self.skip += 1;
            return ControlFlow::Continue(());
        }
        match expr {
            Expr::Identifier(ident) => {
                let name = normalise_ident(ident);
                self.out.extend(self.ctx.resolve_name(&name, self.scope));
            }
            Expr::CompoundIdentifier(parts) => {
                self.out
                    .extend(self.ctx.resolve_qualified(parts, self.scope));
            }
            Expr::QualifiedWildcard(name, _) => {
                self.out
                    .extend(union_sources(&self.ctx.qualified_star(name, self.scope)));
            }
            Expr::Function(f) => {
                if let FunctionArguments::List(list) = &f.args {
                    for arg in &list.args {
                        let arg_expr = match arg {
                            FunctionArg::Named { arg, .. }
                            | FunctionArg::ExprNamed { arg, .. }
                            | FunctionArg::Unnamed(arg) => arg,
                        };
                        if let FunctionArgExpr::QualifiedWildcard(name) = arg_expr {
                            self.out
                                .extend(union_sources(&self.ctx.qualified_star(name, self.scope)));
                        }
                    }
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

/// The argument of `count(arg)` / `count(ALL arg)` / `pg_catalog.count(arg)` with nothing else
/// (no FILTER, OVER, WITHIN GROUP, ORDER BY inside, DISTINCT, parameters).
fn plain_count_argument(f: &sqlparser::ast::Function) -> Option<&Expr> {
    let names: Vec<String> = f
        .name
        .0
        .iter()
        .map(|p| p.as_ident().map(normalise_ident))
        .collect::<Option<_>>()?;
    let is_count = match names.as_slice() {
        [n] => n == "count",
        [schema, n] => schema == "pg_catalog" && n == "count",
        _ => false,
    };
    if !is_count
        || f.uses_odbc_syntax
        || f.filter.is_some()
        || f.over.is_some()
        || f.null_treatment.is_some()
        || !f.within_group.is_empty()
        || !matches!(f.parameters, FunctionArguments::None)
    {
        return None;
    }
    let FunctionArguments::List(list) = &f.args else {
        return None;
    };
    if !matches!(
        list.duplicate_treatment,
        None | Some(sqlparser::ast::DuplicateTreatment::All)
    ) || !list.clauses.is_empty()
    {
        return None;
    }
    match list.args.as_slice() {
        [FunctionArg::Unnamed(FunctionArgExpr::Expr(e))] => Some(e),
        _ => None,
    }
}

fn last_part(name: &str) -> String {
    name.rsplit('.').next().unwrap_or(name).to_string()
}

/// Applies `AS alias(a, b, …)` column names.
fn rename(mut columns: Vec<OutputColumn>, alias: &TableAlias) -> Vec<OutputColumn> {
    for (col, new) in columns.iter_mut().zip(alias.columns.iter()) {
        col.name = normalise_ident(&new.name);
    }
    columns
}

/// `UNION`/`INTERSECT`/`EXCEPT`: names from the left, sources from both sides by position (or,
/// when an unexpanded `*` makes positions unknown, every right source on every column).
fn combine_positional(mut left: Vec<OutputColumn>, right: Vec<OutputColumn>) -> Vec<OutputColumn> {
    let positional =
        left.len() == right.len() && !left.iter().any(|c| c.star) && !right.iter().any(|c| c.star);
    if positional {
        for (l, r) in left.iter_mut().zip(right) {
            l.sources.extend(r.sources);
            l.derived |= r.derived;
        }
    } else {
        let all = union_sources(&right);
        for l in &mut left {
            l.sources.extend(all.iter().cloned());
            l.derived = true;
        }
        if left.is_empty() {
            return right;
        }
    }
    left
}

/// The column name PostgreSQL would give an unaliased expression (FigureColname).
fn figure_name(expr: &Expr) -> String {
    match expr {
        Expr::Identifier(ident) => normalise_ident(ident),
        Expr::CompoundIdentifier(parts) => parts.last().map(normalise_ident).unwrap_or_default(),
        Expr::Function(f) => f
            .name
            .0
            .last()
            .and_then(|p| p.as_ident())
            .map(normalise_ident)
            .unwrap_or_else(|| "?column?".into()),
        Expr::Cast { expr, .. } | Expr::Nested(expr) => {
            let inner = figure_name(expr);
            if inner == "?column?" {
                match &**expr {
                    Expr::Cast { .. } | Expr::Nested(_) => inner,
                    _ => inner,
                }
            } else {
                inner
            }
        }
        Expr::Case { .. } => "case".into(),
        Expr::Array(_) => "array".into(),
        Expr::Exists { .. } => "exists".into(),
        _ => "?column?".into(),
    }
}
