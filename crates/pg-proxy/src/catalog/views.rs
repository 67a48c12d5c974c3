//! Which columns of views (and materialized views) are computed by an expression of the view's
//! definition rather than passed through from a column; and which columns of tables are
//! generated (`GENERATED ALWAYS AS (…) STORED`), computed from other columns of their row.
//!
//! RowDescription gives a view column a table OID like any table column, and the catalog follows
//! it to every base column the view reads; a partial or keyed-hash strategy would then be applied
//! to `reverse(card_number)` or `card_number || 'x'` as if it were the card number itself,
//! revealing what the rule hides. A view column is *derived* (masked whole, like an expression in
//! the client's own statement) unless the view's definition (`pg_get_viewdef`) shows it as a
//! plain reference to one column that is, recursively, a base table's column or a view column
//! that is not derived. Promise: fail closed — a definition that cannot be read or traced, a
//! view nested too deeply, or a source that cannot be found makes the column derived.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use gatehouse_core::SqlSessionSettings;

use super::Catalog;
use crate::PgProxyError;
use crate::wire::ColumnDesc;

/// How deep views over views are followed before a column counts as derived.
const MAX_DEPTH: usize = 8;

/// One view column: computed by the view (`None`), or passing through these stored columns
/// (table OID, attnum) unchanged — one, or several for a set operation of plain columns.
type ViewColumn = Option<Vec<(u32, i16)>>;

/// What a relation's columns are.
#[derive(Debug)]
pub(crate) enum RelationKind {
    /// Not a view: its columns are stored values; those listed (attnums) are generated columns,
    /// computed from other columns of their row (`GENERATED ALWAYS AS (reverse(email))`).
    Stored(Vec<i16>),
    /// A view: each column (attnum - 1); columns beyond the list are computed.
    View(Vec<ViewColumn>),
}

impl RelationKind {
    /// Whether column `attnum` is computed by the view.
    fn derived(&self, attnum: i16) -> bool {
        match self {
            RelationKind::Stored(generated) => generated.contains(&attnum),
            RelationKind::View(cols) => view_column(cols, attnum).is_none(),
        }
    }

    /// The stored columns column `attnum` (of this relation, `oid`) passes through unchanged:
    /// itself for a stored relation; `None` when the view computes it.
    fn column(&self, oid: u32, attnum: i16) -> ViewColumn {
        match self {
            RelationKind::Stored(generated) if generated.contains(&attnum) => None,
            RelationKind::Stored(_) => Some(vec![(oid, attnum)]),
            RelationKind::View(cols) => view_column(cols, attnum).cloned(),
        }
    }
}

fn view_column(cols: &[ViewColumn], attnum: i16) -> Option<&Vec<(u32, i16)>> {
    usize::try_from(attnum)
        .ok()
        .and_then(|a| a.checked_sub(1))
        .and_then(|i| cols.get(i))
        .and_then(Option::as_ref)
}

/// Relation OID → what its columns are (cleared with the rest of the catalog on DDL).
#[derive(Debug, Default)]
pub(crate) struct ViewCache(Mutex<HashMap<u32, Arc<RelationKind>>>);

impl ViewCache {
    fn get(&self, oid: u32) -> Option<Arc<RelationKind>> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&oid)
            .cloned()
    }

    fn put(&self, oid: u32, kind: Arc<RelationKind>) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(oid, kind);
    }

    pub(crate) fn clear(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

impl Catalog {
    /// For each column, whether it is a view column computed by an expression (see the module
    /// documentation). Expressions of the client's own statement (no table OID) are `false`
    /// here: their lineage is traced from the statement.
    pub(crate) async fn view_expressions(
        &self,
        columns: &[ColumnDesc],
    ) -> Result<Vec<bool>, PgProxyError> {
        let mut out = Vec::with_capacity(columns.len());
        for c in columns {
            if c.table_oid == 0 {
                out.push(false);
                continue;
            }
            let kind = self.relation_kind(c.table_oid, 0).await?;
            // System columns (negative attnum) of a view do not exist; of a table they are
            // stored.
            out.push(c.attnum > 0 && kind.derived(c.attnum));
        }
        Ok(out)
    }

    /// Whether `name` (`table.column` as written in SQL, or `?.column`: that column in any of
    /// `tables`) is a view column computed by an expression; `true` when it cannot be found.
    pub(crate) async fn computed_by_view(
        &self,
        name: &str,
        tables: &[String],
    ) -> Result<bool, PgProxyError> {
        let (table, column) = name.rsplit_once('.').unwrap_or(("?", name));
        let candidates: Vec<&str> = if table == "?" {
            tables.iter().map(String::as_str).collect()
        } else {
            vec![table]
        };
        let mut found = false;
        for t in candidates {
            for (oid, attnum, col) in self.relation(t).await? {
                if col == column {
                    found = true;
                    if self.relation_kind(oid, 0).await?.derived(attnum) {
                        return Ok(true);
                    }
                }
            }
        }
        Ok(!found)
    }

    async fn relation_kind(
        &self,
        oid: u32,
        depth: usize,
    ) -> Result<Arc<RelationKind>, PgProxyError> {
        if let Some(k) = self.views.get(oid) {
            return Ok(k);
        }
        if depth > MAX_DEPTH {
            return Ok(Arc::new(RelationKind::View(Vec::new())));
        }
        let rows = self
            .run(&format!(
                "SELECT c.relkind::text, CASE WHEN c.relkind IN ('v', 'm') \
                 THEN pg_catalog.pg_get_viewdef(c.oid) END, \
                 (SELECT pg_catalog.string_agg(a.attnum::text, ',') FROM pg_catalog.pg_attribute a \
                  WHERE a.attrelid = c.oid AND a.attgenerated <> '' AND NOT a.attisdropped) \
                 FROM pg_catalog.pg_class c WHERE c.oid = {oid}::oid"
            ))
            .await?;
        let kind = match rows.first().map(Vec::as_slice) {
            Some([Some(relkind), _, generated]) if relkind != "v" && relkind != "m" => {
                let mut attnums = Vec::new();
                for a in generated.as_deref().unwrap_or("").split(',') {
                    if a.is_empty() {
                        continue;
                    }
                    match a.parse::<i16>() {
                        Ok(n) => attnums.push(n),
                        // Unreadable: every column computed (fail closed).
                        Err(_) => return Ok(Arc::new(RelationKind::View(Vec::new()))),
                    }
                }
                RelationKind::Stored(attnums)
            }
            Some([Some(_), Some(def), _]) => {
                RelationKind::View(Box::pin(self.view_columns(def, depth)).await?)
            }
            // Gone, or a view whose definition cannot be read: every column derived.
            _ => RelationKind::View(Vec::new()),
        };
        let kind = Arc::new(kind);
        self.views.put(oid, kind.clone());
        Ok(kind)
    }

    /// Each output column of a view definition: computed, or the stored columns it passes.
    async fn view_columns(&self, def: &str, depth: usize) -> Result<Vec<ViewColumn>, PgProxyError> {
        let Ok(lineage) = gatehouse_sql::lineage(
            def,
            &SqlSessionSettings::default(),
            &gatehouse_sql::NoCatalog,
        ) else {
            return Ok(Vec::new());
        };
        if !lineage.is_positional() {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity(lineage.columns.len());
        for col in &lineage.columns {
            let mut bases = Vec::new();
            let mut computed = col.derived || col.sources.is_empty();
            for source in &col.sources {
                if computed {
                    break;
                }
                let gatehouse_sql::Source::Column { table, column } = source else {
                    computed = true;
                    break;
                };
                let found = self
                    .relation(table)
                    .await?
                    .into_iter()
                    .find(|(_, _, name)| name == column);
                match found {
                    Some((oid, attnum, _)) => {
                        match Box::pin(self.relation_kind(oid, depth + 1))
                            .await?
                            .column(oid, attnum)
                        {
                            Some(b) => bases.extend(b),
                            None => computed = true,
                        }
                    }
                    None => computed = true,
                }
            }
            out.push(if computed { None } else { Some(bases) });
        }
        Ok(out)
    }

    /// Sources per column (see [`Catalog::resolve_dependencies`]), made exact for view columns
    /// that pass a column through unchanged: the view column's own name and its base columns'
    /// sources, not every column the view reads (a plain `id` of a view that also reads
    /// `card_number` follows `id`'s rule, not the card's). Computed view columns keep every
    /// column the view reads.
    pub(crate) async fn resolve(
        &self,
        columns: &[ColumnDesc],
    ) -> Result<Vec<Vec<String>>, PgProxyError> {
        let mut out = self.resolve_dependencies(columns).await?;
        for (i, c) in columns.iter().enumerate() {
            if c.table_oid == 0 || c.attnum <= 0 {
                continue;
            }
            let kind = self.relation_kind(c.table_oid, 0).await?;
            if !matches!(*kind, RelationKind::View(_)) {
                continue;
            }
            let Some(bases) = kind.column(c.table_oid, c.attnum) else {
                continue;
            };
            let base_columns: Vec<ColumnDesc> = bases
                .iter()
                .map(|(oid, attnum)| ColumnDesc {
                    name: String::new(),
                    table_oid: *oid,
                    attnum: *attnum,
                    type_oid: 0,
                    format: 0,
                })
                .collect();
            let base_sources = self.resolve_dependencies(&base_columns).await?;
            if base_sources.iter().any(Vec::is_empty) {
                // A base the catalog cannot name: keep every column the view reads.
                continue;
            }
            let Some(slot) = out.get_mut(i) else {
                continue;
            };
            let own = slot.first().cloned();
            let mut exact: Vec<String> = own.into_iter().collect();
            for s in base_sources.into_iter().flatten() {
                if !exact.contains(&s) {
                    exact.push(s);
                }
            }
            *slot = exact;
        }
        Ok(out)
    }
}
