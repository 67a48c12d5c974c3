//! The session settings SQL text is read under, followed exactly.
//!
//! PostgreSQL reads a statement's text under `standard_conforming_strings`, `client_encoding`
//! and `backslash_quote` as they are when the text arrives, and resolves names under
//! `search_path`. The gateway must read every text under the same values. How it keeps them:
//!
//! - **Reported settings.** The server reports `standard_conforming_strings` and
//!   `client_encoding` in ParameterStatus, just before the ReadyForQuery of the statement that
//!   changed them. The gateway applies the report when it arrives.
//! - **Texts whose meaning depends on them wait.** Those settings only change how a text is read
//!   if it has a backslash or a non-ASCII byte ([`depends_on_lexer`]): every other text reads the
//!   same under every value, so it is classified at once. A text that depends on them is
//!   classified only when everything sent before it has been answered up to its ReadyForQuery —
//!   any statement (a trigger, a function, a `DO` block) may have changed them — so the reported
//!   values are exact. In the extended protocol, such a text after an unsynced Bind/Execute is
//!   refused (0A000): no report can arrive before its Sync.
//! - **Statements that may change them are a barrier.** After a statement that may change these
//!   settings ([`crate::SessionEffect::Lexer`]: `SET`/`RESET`/`set_config`, `DISCARD`,
//!   transaction end, `ROLLBACK TO`, `DO`, `CALL`, functions other than well-known built-ins),
//!   no later text is classified until that statement's ReadyForQuery has been seen.
//! - **Unexpected reports end the session.** A change of either reported setting in answer to
//!   a sync group the gateway did not mark as possibly changing it (a trigger did it) ends the
//!   session: fail closed.
//! - **`backslash_quote`** is never reported, so statements naming it are refused; the gateway
//!   reads texts with the default (`safe_encoding`, which for every client encoding the gateway
//!   accepts behaves as `on`). A function that changes it can only make the server stricter
//!   (`off` rejects `\'`), never read a text differently from the gateway into a different
//!   statement.
//! - **`search_path`** is not reported before PostgreSQL 18. Statements that change it are a
//!   barrier (above); the gateway's decisions use relation names as written, so they do not
//!   depend on its value.

use gatehouse_core::SqlSessionSettings;

/// Whether a text can read differently under another `standard_conforming_strings`,
/// `backslash_quote` or `client_encoding`: only backslashes and non-ASCII bytes are read
/// differently (every server-side encoding PostgreSQL accepts is an ASCII superset).
pub(crate) fn depends_on_lexer(text: &[u8]) -> bool {
    text.iter().any(|&b| b == b'\\' || b >= 0x80)
}

/// Whether a ParameterStatus changes a setting the gateway reads SQL under.
pub(crate) fn changes_lexer(current: &SqlSessionSettings, name: &str, value: &str) -> bool {
    if name.eq_ignore_ascii_case("standard_conforming_strings") {
        current.standard_conforming_strings != value.eq_ignore_ascii_case("on")
    } else if name.eq_ignore_ascii_case("client_encoding") {
        !current.client_encoding.eq_ignore_ascii_case(value)
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_backslashes_and_non_ascii_depend_on_the_lexer_settings() {
        assert!(!depends_on_lexer(b"select 'it''s'; truncate t"));
        assert!(depends_on_lexer(b"select 'a\\'; truncate t; --'"));
        assert!(depends_on_lexer("select 'é'".as_bytes()));
    }

    #[test]
    fn reports_that_change_the_reading() {
        let s = SqlSessionSettings::default();
        assert!(changes_lexer(&s, "standard_conforming_strings", "off"));
        assert!(!changes_lexer(&s, "standard_conforming_strings", "on"));
        assert!(changes_lexer(&s, "client_encoding", "LATIN1"));
        assert!(!changes_lexer(&s, "client_encoding", "utf8"));
        assert!(!changes_lexer(&s, "TimeZone", "UTC"));
    }
}
