//! The database-side backstop: what the upstream role itself may write. A target marked read-only
//! should use a role whose privileges allow no writes (for example `pg_read_all_data` and
//! nothing else), so that PostgreSQL's own privilege checks refuse what the gateway's classifier
//! misses. This module asks the upstream's catalog what the configured role can do that writes.

use crate::PgProxyError;
use crate::config::UpstreamConfig;
use crate::upstream::FrameReader;

/// One line per capability of the upstream role that lets it write (empty: none found). Read
/// from the catalog on a fresh connection as that role; `Err` when the connection or the query
/// fails (the caller says the role could not be checked).
///
/// Checked: superuser, `BYPASSRLS`, `CREATEROLE`, `CREATEDB`, membership of
/// `pg_write_all_data` or of any role that owns relations; relations, schemas and functions it
/// owns (an owner can grant itself anything on them); `INSERT`, `UPDATE`, `DELETE`,
/// `TRUNCATE`, `TRIGGER` (attach code that runs on others' writes) or `REFERENCES` (a foreign
/// key to a table locks and checks its rows on every write) on any table, view or sequence
/// `USAGE`/`UPDATE`; `CREATE` on any schema or on the database; `TEMP` on the database (temporary
/// tables and functions); `SECURITY DEFINER` functions it may run that another role owns (they run with that
/// role's rights).
pub async fn write_capabilities(upstream: &UpstreamConfig) -> Result<Vec<String>, PgProxyError> {
    let conn = crate::upstream::connect(
        upstream,
        &[("application_name".into(), "gatehouse-check".into())],
    )
    .await?;
    let mut reader = FrameReader::new(conn.stream, conn.leftover, 16 << 20);
    let rows = crate::catalog::query(&mut reader, WRITE_CAPABILITIES).await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect())
}

/// Each row one capability; every subquery is limited so a large catalog stays cheap.
const WRITE_CAPABILITIES: &str = "\
SELECT 'is a superuser' FROM pg_catalog.pg_roles WHERE rolname = current_user AND rolsuper \
UNION ALL SELECT 'has BYPASSRLS' FROM pg_catalog.pg_roles \
  WHERE rolname = current_user AND rolbypassrls \
UNION ALL SELECT 'has CREATEROLE' FROM pg_catalog.pg_roles \
  WHERE rolname = current_user AND rolcreaterole \
UNION ALL SELECT 'has CREATEDB' FROM pg_catalog.pg_roles \
  WHERE rolname = current_user AND rolcreatedb \
UNION ALL SELECT 'is a member of pg_write_all_data' \
  WHERE pg_catalog.pg_has_role(current_user, 'pg_write_all_data', 'USAGE') \
UNION ALL (SELECT 'owns ' || c.oid::pg_catalog.regclass::text FROM pg_catalog.pg_class c \
  WHERE pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE') \
  AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') \
  AND c.relnamespace <> 'pg_catalog'::pg_catalog.regnamespace \
  AND c.relnamespace <> 'information_schema'::pg_catalog.regnamespace LIMIT 5) \
UNION ALL (SELECT 'owns schema ' || pg_catalog.quote_ident(n.nspname) \
  FROM pg_catalog.pg_namespace n WHERE pg_catalog.pg_has_role(current_user, n.nspowner, 'USAGE') \
  AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema' LIMIT 5) \
UNION ALL (SELECT 'may ' || p.priv || ' ' || c.oid::pg_catalog.regclass::text \
  FROM pg_catalog.pg_class c \
  CROSS JOIN (VALUES ('INSERT'), ('UPDATE'), ('DELETE'), ('TRUNCATE')) AS p(priv) \
  WHERE c.relkind IN ('r', 'p', 'v', 'f') \
  AND c.relnamespace <> 'pg_catalog'::pg_catalog.regnamespace \
  AND c.relnamespace <> 'information_schema'::pg_catalog.regnamespace \
  AND pg_catalog.has_table_privilege(current_user, c.oid, p.priv) LIMIT 5) \
UNION ALL (SELECT 'may ' || p.priv || ' ' || c.oid::pg_catalog.regclass::text \
  FROM pg_catalog.pg_class c \
  CROSS JOIN (VALUES ('TRIGGER'), ('REFERENCES')) AS p(priv) \
  WHERE c.relkind IN ('r', 'p', 'v', 'f') \
  AND c.relnamespace <> 'pg_catalog'::pg_catalog.regnamespace \
  AND c.relnamespace <> 'information_schema'::pg_catalog.regnamespace \
  AND NOT pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE') \
  AND pg_catalog.has_table_privilege(current_user, c.oid, p.priv) LIMIT 5) \
UNION ALL (SELECT 'may use sequence ' || c.oid::pg_catalog.regclass::text \
  FROM pg_catalog.pg_class c WHERE c.relkind = 'S' \
  AND pg_catalog.has_sequence_privilege(current_user, c.oid, 'USAGE, UPDATE') LIMIT 5) \
UNION ALL (SELECT 'may CREATE in schema ' || pg_catalog.quote_ident(n.nspname) \
  FROM pg_catalog.pg_namespace n \
  WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema' \
  AND pg_catalog.has_schema_privilege(current_user, n.oid, 'CREATE') LIMIT 5) \
UNION ALL SELECT 'may CREATE in database ' || pg_catalog.quote_ident(pg_catalog.current_database()) \
  WHERE pg_catalog.has_database_privilege(current_user, pg_catalog.current_database(), 'CREATE') \
UNION ALL SELECT 'may create TEMP tables in database ' \
  || pg_catalog.quote_ident(pg_catalog.current_database()) \
  WHERE pg_catalog.has_database_privilege(current_user, pg_catalog.current_database(), 'TEMP') \
UNION ALL (SELECT 'may run SECURITY DEFINER function ' || p.oid::pg_catalog.regprocedure::text \
  || ' as ' || pg_catalog.pg_get_userbyid(p.proowner) \
  FROM pg_catalog.pg_proc p WHERE p.prosecdef \
  AND NOT pg_catalog.pg_has_role(current_user, p.proowner, 'USAGE') \
  AND p.pronamespace <> 'pg_catalog'::pg_catalog.regnamespace \
  AND pg_catalog.has_function_privilege(current_user, p.oid, 'EXECUTE') LIMIT 5)";
