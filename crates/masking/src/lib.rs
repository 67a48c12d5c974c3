//! The Gatehouse masking core: validated PII and secret detectors in one anchor-first pass, field
//! plans, streaming and JSON maskers, and the egress guard for held secrets. Pure: no I/O.
//!
//! Use it through the gateway's layer traits ([`gatehouse_core::Masker`],
//! [`gatehouse_core::EgressGuard`]) or on its own:
//!
//! ```
//! use gatehouse_masking::{MaskingConfig, MaskingEngine};
//!
//! let engine = MaskingEngine::new(&MaskingConfig::default()).unwrap();
//! let (masked, findings) = engine.mask_bytes(b"mail jane@example.com, card 4111 1111 1111 1111");
//! assert_eq!(&*masked, &b"mail [email], card [card]"[..]);
//! assert_eq!(findings[0].rule, "email");
//! assert_eq!(findings[1].length, 19); // rule, offset, length: never the value
//! ```
//!
//! What it promises:
//! - **One pass.** All detectors run in one combined search: literal anchors through one
//!   aho-corasick automaton, byte anchors (digits, `@`, `=`, `:`) eight bytes at a time, each
//!   confirmed locally by a validator ([`Detector`] lists them and their rules).
//! - **Streaming equals one-shot.** A [`TextStreamMasker`] fed any chunking (and no forced flush)
//!   emits exactly what [`MaskingProfile::mask_bytes`] gives for the whole input, holding back
//!   at most the current line (bounded).
//! - **Escapes hide nothing.** JSON strings and keys are matched as a parser decodes them
//!   (`"a\u0040b.com"` is an e-mail address); the replacement covers the whole escape sequences.
//! - **Fail closed.** A PEM private-key block whose END never comes is masked from BEGIN to the
//!   cap; malformed JSON falls back to text masking (with its JSON escapes decoded), never to raw
//!   passthrough; an unknown profile name gets the default profile.
//! - **Idempotent.** Masking masked output changes nothing: tokens contain no anchor.
//! - **Findings carry rule, field, offset and length, never the value.**

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod detect;
pub mod egress;
pub mod engine;
pub mod error;
mod escape;
pub mod json;
mod jsonpath;
pub mod plan;
pub mod profile;
mod strategy;
pub mod stream;

pub use config::{
    ColumnRule, DetectorConfig, DetectorSetting, DictionaryConfig, JsonPathRule, MaskingConfig,
    ProfileConfig, RegexConfig, Strategy,
};
pub use detect::Detector;
pub use egress::{EgressGuardBuilder, MIN_SECRET_LEN, SecretEgressGuard};
pub use engine::{DEFAULT_PROFILE, MaskingEngine};
pub use error::MaskingError;
pub use json::JsonStreamMasker;
pub use plan::ProfilePlan;
pub use profile::MaskingProfile;
pub use stream::TextStreamMasker;
