//! Built-in detectors: what each one finds, its name and token, and the one-pass scanner that runs
//! them all.
//!
//! Detection is anchor-first: one aho-corasick pass finds the literal anchors (`-----BEGIN `,
//! `eyJ`, `AKIA`, `ghp_`, `xoxb-`, …), one word-at-a-time pass finds the byte anchors (digits,
//! `@`, `=`, `:`), and each anchor is confirmed locally by a validator (Luhn, mod-97, SSN rules,
//! label and length checks). No detector reads across a line break, except `private_key`, whose
//! blocks span lines up to a cap: that is what lets the stream masker cut at line ends and still
//! agree byte for byte with one-shot masking.

pub(crate) mod scan;
pub(crate) mod validate;

/// A built-in detector. The declaration order is the tie-break when two detectors claim exactly
/// the same bytes (the earlier one names the finding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Detector {
    /// PEM private-key blocks (`-----BEGIN … PRIVATE KEY-----` to the END line), masked up to a
    /// cap when END never comes (fail closed). Certificates and public keys are left alone.
    PrivateKey,
    /// JSON Web Tokens: three base64url segments, the header starting `eyJ`.
    Jwt,
    /// AWS access key ids (`AKIA…`, `ASIA…` and the other documented prefixes, 20 characters).
    AwsAccessKeyId,
    /// AWS secret access keys: 40 base64 characters assigned to a `…secret_access_key` name.
    AwsSecretAccessKey,
    /// GitHub tokens (`ghp_`, `gho_`, `ghu_`, `ghs_`, `ghr_`, `github_pat_`).
    GithubToken,
    /// GitLab tokens (`glpat-`, `gldt-`, `glrt-`, `glptt-`).
    GitlabToken,
    /// Slack tokens (`xoxb-`, `xoxp-`, …, `xapp-`) and incoming-webhook URLs.
    SlackToken,
    /// Stripe secret and restricted keys (`sk_live_`, `rk_live_`, `sk_test_`, `rk_test_`).
    StripeKey,
    /// Google API keys (`AIza` + 35 characters).
    GoogleApiKey,
    /// The password in a URL's user-info (`postgres://user:PASSWORD@host`).
    UrlPassword,
    /// E-mail addresses (local part, `@`, a dotted domain with an alphabetic TLD).
    Email,
    /// IBANs: known country, exact length for the country, mod-97 check; compact or grouped by 4.
    Iban,
    /// Payment cards: 13–19 digits (plain, or grouped with spaces or dashes), issuer prefix 2–6,
    /// Luhn check.
    PaymentCard,
    /// US social security numbers `AAA-GG-SSSS` (or spaced), excluding area 000, 666, 900–999,
    /// group 00 and serial 0000.
    UsSsn,
    /// Phone numbers: E.164 (`+` and 8–15 digits, grouped or not), North-American
    /// `(415) 555-2671` / `415-555-2671` / `415.555.2671`, and national forms with a leading 0
    /// (10–11 digits in groups).
    Phone,
    /// Values assigned to secret-looking names: `password=…`, `"api_key": "…"`, `secret: …`,
    /// `client_secret='…'`, `Authorization: Bearer …`. Only the value is masked.
    SecretAssignment,
}

impl Detector {
    /// Number of built-in detectors.
    pub const COUNT: usize = 16;

    /// Every built-in detector, in tie-break order.
    pub const ALL: [Detector; Detector::COUNT] = [
        Detector::PrivateKey,
        Detector::Jwt,
        Detector::AwsAccessKeyId,
        Detector::AwsSecretAccessKey,
        Detector::GithubToken,
        Detector::GitlabToken,
        Detector::SlackToken,
        Detector::StripeKey,
        Detector::GoogleApiKey,
        Detector::UrlPassword,
        Detector::Email,
        Detector::Iban,
        Detector::PaymentCard,
        Detector::UsSsn,
        Detector::Phone,
        Detector::SecretAssignment,
    ];

    /// The default detector set: every built-in detector. The speed targets in
    /// docs/BENCHMARKS.md are measured with exactly this set.
    pub const DEFAULT_SET: [Detector; Detector::COUNT] = Detector::ALL;

    /// Name used in configuration and in findings.
    pub fn name(self) -> &'static str {
        match self {
            Detector::PrivateKey => "private_key",
            Detector::Jwt => "jwt",
            Detector::AwsAccessKeyId => "aws_access_key_id",
            Detector::AwsSecretAccessKey => "aws_secret_access_key",
            Detector::GithubToken => "github_token",
            Detector::GitlabToken => "gitlab_token",
            Detector::SlackToken => "slack_token",
            Detector::StripeKey => "stripe_key",
            Detector::GoogleApiKey => "google_api_key",
            Detector::UrlPassword => "url_password",
            Detector::Email => "email",
            Detector::Iban => "iban",
            Detector::PaymentCard => "payment_card",
            Detector::UsSsn => "us_ssn",
            Detector::Phone => "phone",
            Detector::SecretAssignment => "secret_assignment",
        }
    }

    /// Short label used in redact tokens (`[card]`).
    pub fn label(self) -> &'static str {
        match self {
            Detector::PrivateKey => "private-key",
            Detector::Jwt => "jwt",
            Detector::AwsAccessKeyId => "aws-key-id",
            Detector::AwsSecretAccessKey => "aws-secret",
            Detector::GithubToken => "github-token",
            Detector::GitlabToken => "gitlab-token",
            Detector::SlackToken => "slack-token",
            Detector::StripeKey => "stripe-key",
            Detector::GoogleApiKey => "google-api-key",
            Detector::UrlPassword => "password",
            Detector::Email => "email",
            Detector::Iban => "iban",
            Detector::PaymentCard => "card",
            Detector::UsSsn => "ssn",
            Detector::Phone => "phone",
            Detector::SecretAssignment => "secret",
        }
    }

    /// Default longest match in bytes (for `private_key`: the fail-closed cap).
    pub fn default_max_len(self) -> usize {
        match self {
            Detector::PrivateKey => 16 * 1024,
            Detector::Jwt => 8 * 1024,
            Detector::SecretAssignment | Detector::UrlPassword => 1024,
            Detector::Email => 320,
            Detector::GithubToken
            | Detector::GitlabToken
            | Detector::SlackToken
            | Detector::StripeKey => 256,
            _ => 64,
        }
    }

    /// Looks a detector up by its configuration name.
    pub fn from_name(name: &str) -> Option<Detector> {
        Detector::ALL.into_iter().find(|d| d.name() == name)
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_declaration_order_and_names_round_trip() {
        for (i, d) in Detector::ALL.into_iter().enumerate() {
            assert_eq!(d.index(), i);
            assert_eq!(Detector::from_name(d.name()), Some(d));
        }
        assert_eq!(Detector::from_name("nope"), None);
    }
}
