//! The Gatehouse rule engine: ordered rules over (identity, target, operation) decide allow, deny
//! or review. Pure: no I/O on the hot path; policies swap atomically while sessions run.
//!
//! A policy is a TOML file of ordered `[[rules]]`. For each *item* of an operation — every
//! statement of a SQL string, every simple command of an exec line, or the one HTTP/Kubernetes/SSH
//! request — the first rule whose matchers all hold decides; if none does, the target's default
//! verdict does. Built-in floors then raise an item's verdict (never lower it): unparseable SQL
//! and non-plain exec lines (default `review`), ambiguous HTTP paths (default `review`),
//! `COPY … PROGRAM` and changes to `standard_conforming_strings`/`client_encoding` (default
//! `deny`). The strictest item decides the operation. SSH channels and requests other than exec
//! (shell, sftp, scp, rsync, git, port forwarding, env) are denied unless a rule names them,
//! whatever the default; remote forwarding, agent forwarding and X11 are always denied.
//!
//! **Allow rules match strictly, deny and review rules loosely.** A list in an `allow` rule
//! (SQL kinds, tables, functions, risks) must cover *everything* the statement does; in a
//! `deny`/`review` rule, *anything* listed is enough. So `allow kinds = ["select"]` does not
//! allow `WITH d AS (DELETE …) SELECT …`, and `deny tables = ["secrets"]` fires on a join.
//!
//! **Exec rules should be allow-lists.** A deny-list of shell commands is bypassable: `\rm`,
//! `r''m`, `/bin/rm`, `busybox rm`, `find / -exec rm {} +`, `xargs rm`, `perl -e 'unlink …'`,
//! `python3 -c …`, a copied binary, an alias… there is no end to the spellings of "delete a file".
//! Canonical argv parsing (`gatehouse_core::shell`) removes the quoting tricks and lines with
//! expansions or metacharacters get their own verdict, but only an allow-list — "these programs
//! with these arguments" plus `default = "deny"` — is a boundary. See `docs/policy.md`.
//!
//! ```
//! use gatehouse_core::{AuthMethod, Identity, Operation, Policy, Protocol, SqlOperation, Target, Verdict};
//! use gatehouse_policy::CompiledPolicy;
//!
//! let policy = CompiledPolicy::from_toml(r#"
//!     [defaults]
//!     default = "deny"
//!
//!     [[rules]]
//!     id = "analysts-read"
//!     reason = "analysts may read the public schema"
//!     verdict = "allow"
//!     groups = ["analysts"]
//!     masking = "pii"
//!     sql = { kinds = ["select"], tables = ["public.*", "orders"] }
//! "#, "policy.toml").unwrap();
//!
//! let who = Identity::new("ann", "https://idp", AuthMethod::Test).with_group("analysts");
//! let db = Target::new("shop", Protocol::Postgres);
//! let read = Operation::Sql(SqlOperation::simple("SELECT * FROM orders"));
//! let d = policy.decide(&who, &db, &read);
//! assert_eq!(d.verdict, Verdict::Allow);
//! assert_eq!(d.masking_profile.as_deref(), Some("pii"));
//!
//! // A second statement that the rule does not cover makes the whole string fail.
//! let sneaky = Operation::Sql(SqlOperation::simple("SELECT * FROM orders; DROP TABLE orders"));
//! assert_eq!(policy.decide(&who, &db, &sneaky).verdict, Verdict::Deny);
//! println!("{}", policy.explain(&who, &db, &sneaky));
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![deny(clippy::indexing_slicing, clippy::panic)]

mod compile;
mod engine;
mod error;
mod file;
mod handle;
mod rules;

pub use engine::{CompiledPolicy, Explanation, ItemExplanation, RuleTrace};
pub use error::PolicyError;
pub use handle::PolicyHandle;
