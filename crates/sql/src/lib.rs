//! Pure SQL understanding for Gatehouse: classifies every statement of a PostgreSQL string (kind,
//! tables, functions, risky forms) and traces output-column lineage, so the policy can decide and
//! the PostgreSQL proxy can mask derived columns. No I/O.

#![forbid(unsafe_code)]
