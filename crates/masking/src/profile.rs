//! A compiled masking profile: the scanner, the rule table and the field rules, built once from a
//! [`ProfileConfig`] and shared by every plan and stream that uses it.

use std::borrow::Cow;

use aho_corasick::{AhoCorasickBuilder, MatchKind};
use gatehouse_core::Finding;
use globset::{GlobBuilder, GlobMatcher};
use regex::bytes::RegexBuilder;

use crate::config::{DetectorSetting, ProfileConfig, Strategy};
use crate::detect::Detector;
use crate::detect::scan::{DictMatcher, ScanOutcome, Scanner, Span, Stop, UserRegex};
use crate::error::MaskingError;
use crate::jsonpath::JsonPath;
use crate::strategy::write_replacement;

/// A rule as findings and replacements see it.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    /// Name in findings (`email`, `dictionary:codename`, `column:*password*`).
    pub name: String,
    /// Label in redact and keyed-hash tokens.
    pub label: String,
    pub strategy: Strategy,
}

/// A compiled profile. Cheap to share (`Arc`); immutable.
pub struct MaskingProfile {
    name: String,
    pub(crate) scanner: Scanner,
    pub(crate) rules: Vec<Rule>,
    pub(crate) columns: Vec<(GlobMatcher, Rule)>,
    pub(crate) json_paths: Vec<(JsonPath, Rule)>,
    hmac_key: Option<Vec<u8>>,
}

impl std::fmt::Debug for MaskingProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the HMAC key.
        f.debug_struct("MaskingProfile")
            .field("name", &self.name)
            .field("rules", &self.rules.len())
            .field("columns", &self.columns.len())
            .field("json_paths", &self.json_paths.len())
            .finish_non_exhaustive()
    }
}

fn valid_rule_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl MaskingProfile {
    /// Compiles `config` under the name `name`.
    pub fn compile(name: &str, config: &ProfileConfig) -> Result<MaskingProfile, MaskingError> {
        let bad = |what: String| MaskingError::BadRule {
            profile: name.to_string(),
            what,
        };
        let mut on = [true; Detector::COUNT];
        let mut max = Detector::ALL.map(Detector::default_max_len);
        let mut strategies: [Option<Strategy>; Detector::COUNT] = Default::default();
        for (dname, setting) in &config.detectors {
            let d = Detector::from_name(dname).ok_or_else(|| MaskingError::UnknownDetector {
                profile: name.to_string(),
                name: dname.clone(),
            })?;
            let i = d.index();
            match setting {
                DetectorSetting::Switch(b) => on[i] = *b,
                DetectorSetting::Settings(s) => {
                    on[i] = s.enabled;
                    if let Some(m) = s.max_len {
                        if m == 0 {
                            return Err(bad(format!("detector {dname}: max_len must be positive")));
                        }
                        max[i] = m;
                    }
                    strategies[i].clone_from(&s.strategy);
                }
            }
        }
        let default_strategy = &config.strategy;
        let mut rules: Vec<Rule> = Detector::ALL
            .iter()
            .map(|d| Rule {
                name: d.name().to_string(),
                label: d.label().to_string(),
                strategy: strategies[d.index()]
                    .clone()
                    .unwrap_or_else(|| default_strategy.clone()),
            })
            .collect();

        let mut dicts = Vec::new();
        for want_ci in [true, false] {
            for whole in [true, false] {
                let mut words = Vec::new();
                let mut ids = Vec::new();
                for d in config
                    .dictionaries
                    .iter()
                    .filter(|d| d.case_insensitive == want_ci && d.whole_words == whole)
                {
                    if !valid_rule_name(&d.name) {
                        return Err(bad(format!(
                            "dictionary name {:?} must be [A-Za-z0-9_-]+",
                            d.name
                        )));
                    }
                    let rule = u16::try_from(rules.len())
                        .map_err(|_| bad("too many rules".to_string()))?;
                    rules.push(Rule {
                        name: format!("dictionary:{}", d.name),
                        label: d.name.clone(),
                        strategy: d
                            .strategy
                            .clone()
                            .unwrap_or_else(|| default_strategy.clone()),
                    });
                    for w in &d.words {
                        if w.is_empty() || w.contains(['\n', '\r']) {
                            return Err(bad(format!(
                                "dictionary {}: words must be non-empty and on one line",
                                d.name
                            )));
                        }
                        words.push(w.clone());
                        ids.push(rule);
                    }
                }
                if words.is_empty() {
                    continue;
                }
                let ac = AhoCorasickBuilder::new()
                    .ascii_case_insensitive(want_ci)
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(&words)
                    .map_err(|e| bad(format!("dictionaries: {e}")))?;
                dicts.push(DictMatcher {
                    ac,
                    rules: ids,
                    whole_words: whole,
                });
            }
        }

        let mut regexes = Vec::new();
        for r in &config.regexes {
            if !valid_rule_name(&r.name) {
                return Err(bad(format!(
                    "regex name {:?} must be [A-Za-z0-9_-]+",
                    r.name
                )));
            }
            let re = RegexBuilder::new(&r.pattern)
                .size_limit(1 << 22)
                .build()
                .map_err(|e| MaskingError::BadRegex {
                    profile: name.to_string(),
                    name: r.name.clone(),
                    reason: e.to_string(),
                })?;
            let rule = u16::try_from(rules.len()).map_err(|_| bad("too many rules".to_string()))?;
            rules.push(Rule {
                name: format!("regex:{}", r.name),
                label: r.name.clone(),
                strategy: r
                    .strategy
                    .clone()
                    .unwrap_or_else(|| default_strategy.clone()),
            });
            regexes.push(UserRegex {
                re,
                rule,
                max_len: r.max_len.unwrap_or(1024).max(1),
            });
        }

        let mut columns = Vec::new();
        for c in &config.columns {
            // Quotes are how SQL writes identifiers, not part of them: `"Customers"."Email"` names
            // the column the catalog reports as `customers.email` (matching ignores case).
            let pattern = c.pattern.replace('"', "");
            let glob = GlobBuilder::new(&pattern)
                .case_insensitive(true)
                .literal_separator(false)
                .build()
                .map_err(|e| MaskingError::BadColumnPattern {
                    profile: name.to_string(),
                    pattern: c.pattern.clone(),
                    reason: e.to_string(),
                })?;
            columns.push((
                glob.compile_matcher(),
                Rule {
                    name: format!("column:{}", c.pattern),
                    label: "masked".to_string(),
                    strategy: c
                        .strategy
                        .clone()
                        .unwrap_or_else(|| default_strategy.clone()),
                },
            ));
        }
        let mut json_paths = Vec::new();
        for p in &config.json_paths {
            let path = JsonPath::parse(&p.path).map_err(|reason| MaskingError::BadJsonPath {
                profile: name.to_string(),
                path: p.path.clone(),
                reason,
            })?;
            json_paths.push((
                path,
                Rule {
                    name: format!("json_path:{}", p.path),
                    label: "masked".to_string(),
                    strategy: p
                        .strategy
                        .clone()
                        .unwrap_or_else(|| default_strategy.clone()),
                },
            ));
        }

        // `detect` says how a column is returned, not how a match is replaced: column rules
        // only.
        if config.strategy == Strategy::Detect {
            return Err(bad(
                "strategy \"detect\" is for column rules only, not a profile's default".into(),
            ));
        }
        if let Some(r) = rules
            .iter()
            .map(|r| &r.name)
            .chain(json_paths.iter().map(|p| &p.1.name))
            .zip(
                rules
                    .iter()
                    .map(|r| &r.strategy)
                    .chain(json_paths.iter().map(|p| &p.1.strategy)),
            )
            .find(|(_, s)| **s == Strategy::Detect)
            .map(|(n, _)| n)
        {
            return Err(bad(format!(
                "{r}: strategy \"detect\" is for column rules only"
            )));
        }
        let all_strategies = rules
            .iter()
            .map(|r| &r.strategy)
            .chain(columns.iter().map(|c| &c.1.strategy))
            .chain(json_paths.iter().map(|c| &c.1.strategy));
        let mut needs_key = false;
        let mut placeholders = Vec::new();
        for s in all_strategies {
            match s {
                Strategy::KeyedHash => needs_key = true,
                Strategy::Placeholder(p) => placeholders.push(p.clone()),
                _ => {}
            }
        }
        let hmac_key = config.hmac_key.as_ref().map(|k| k.as_bytes().to_vec());
        if needs_key && hmac_key.as_ref().is_none_or(|k| k.is_empty()) {
            return Err(MaskingError::MissingHmacKey(name.to_string()));
        }
        let scanner = Scanner::new(on, max, dicts, regexes).map_err(bad)?;
        let profile = MaskingProfile {
            name: name.to_string(),
            scanner,
            rules,
            columns,
            json_paths,
            hmac_key,
        };
        for p in placeholders {
            let refuse = |reason: &str| MaskingError::BadPlaceholder {
                profile: name.to_string(),
                placeholder: p.clone(),
                reason: reason.to_string(),
            };
            if p.len() > 64 {
                return Err(refuse("longer than 64 bytes"));
            }
            if p.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
                return Err(refuse(
                    "quotes, backslashes and control characters break JSON",
                ));
            }
            if p.bytes()
                .any(|b| b.is_ascii_digit() || matches!(b, b'@' | b'=' | b':'))
            {
                return Err(refuse("digits, `@`, `=` and `:` could start a new match"));
            }
            if !profile.scanner.scan(p.as_bytes(), true).spans.is_empty() {
                return Err(refuse("the profile's own detectors match it"));
            }
        }
        Ok(profile)
    }

    /// The profile's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this profile has column or JSON-path rules (see
    /// [`gatehouse_core::Masker::masks_columns`]).
    pub fn masks_columns(&self) -> bool {
        !self.columns.is_empty() || !self.json_paths.is_empty()
    }

    /// Whether a built-in detector is on in this profile.
    pub fn detector_enabled(&self, d: Detector) -> bool {
        self.scanner.is_on(d)
    }

    /// Masks `input` in one shot. Borrowed when nothing matched.
    pub fn mask_bytes<'a>(&self, input: &'a [u8]) -> (Cow<'a, [u8]>, Vec<Finding>) {
        let mut out = Vec::new();
        let mut findings = Vec::new();
        if self.mask_into(input, None, &mut out, &mut findings) {
            (Cow::Owned(out), findings)
        } else {
            (Cow::Borrowed(input), findings)
        }
    }

    /// Masks `input` into `out`. Returns `false` (and leaves `out` untouched, allocating nothing)
    /// when nothing matched; otherwise clears `out`, writes the masked text and returns `true`.
    pub fn mask_into(
        &self,
        input: &[u8],
        field: Option<&str>,
        out: &mut Vec<u8>,
        findings: &mut Vec<Finding>,
    ) -> bool {
        let mut pos = 0;
        let mut wrote = false;
        loop {
            let seg = input.get(pos..).unwrap_or(&[]);
            let r = self.scanner.scan(seg, true);
            let end = match r.stop {
                Stop::Restart(e) => Some(pos + e),
                _ => None,
            };
            let seg_end = end.unwrap_or(input.len()).min(input.len());
            let seg = input.get(pos..seg_end).unwrap_or(&[]);
            if !r.spans.is_empty() {
                if !wrote {
                    out.clear();
                    out.extend_from_slice(input.get(..pos).unwrap_or(&[]));
                    wrote = true;
                }
                self.apply(seg, &r, pos as u64, field, false, out, findings);
            } else if wrote {
                out.extend_from_slice(seg);
            }
            match end {
                Some(e) if e > pos && e < input.len() => pos = e,
                _ => break,
            }
        }
        wrote
    }

    /// Writes `seg` with the spans of `r` replaced; records findings at `base + offset`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn apply(
        &self,
        seg: &[u8],
        r: &ScanOutcome,
        base: u64,
        field: Option<&str>,
        json_safe: bool,
        out: &mut Vec<u8>,
        findings: &mut Vec<Finding>,
    ) {
        self.apply_spans(seg, &r.spans, base, field, json_safe, out, findings);
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn apply_spans(
        &self,
        seg: &[u8],
        spans: &[Span],
        base: u64,
        field: Option<&str>,
        json_safe: bool,
        out: &mut Vec<u8>,
        findings: &mut Vec<Finding>,
    ) {
        let mut copied = 0;
        for s in spans {
            let (start, end) = (s.start.min(seg.len()), s.end.min(seg.len()));
            if start < copied {
                continue;
            }
            out.extend_from_slice(seg.get(copied..start).unwrap_or(&[]));
            let value = seg.get(start..end).unwrap_or(&[]);
            if let Some(rule) = self.rules.get(usize::from(s.rule)) {
                self.replace(rule, value, json_safe, out);
                findings.push(Finding {
                    rule: rule.name.clone(),
                    field: field.map(str::to_string),
                    offset: base + start as u64,
                    length: value.len() as u64,
                });
            }
            copied = end;
        }
        out.extend_from_slice(seg.get(copied..).unwrap_or(&[]));
    }

    pub(crate) fn replace(&self, rule: &Rule, value: &[u8], json_safe: bool, out: &mut Vec<u8>) {
        write_replacement(
            &rule.strategy,
            &rule.label,
            self.hmac_key.as_deref(),
            value,
            json_safe,
            out,
        );
    }

    /// The rule of a built-in detector.
    pub(crate) fn detector_rule(&self, d: Detector) -> Option<&Rule> {
        self.rules.get(d.index())
    }

    /// The column rule that masks a field with this name or one of these sources, if any.
    ///
    /// A source is matched however the rule writes it: `public.customers.email` (the catalog's
    /// `schema.table.column`) is tried as written and as each of its dotted suffixes
    /// (`customers.email`, `email`), so a rule naming the column, the table and column, or the
    /// qualified column all match the same source.
    pub(crate) fn column_rule(&self, name: &str, sources: &[String]) -> Option<&Rule> {
        self.columns
            .iter()
            .find(|(g, _)| {
                g.is_match(name)
                    || sources
                        .iter()
                        .any(|s| source_forms(s).any(|form| g.is_match(form)))
            })
            .map(|(_, r)| r)
    }
}

/// A qualified source and its dotted suffixes: `a.b.c`, `b.c`, `c` (`?.c`, `c` for a name not
/// tied to a table).
fn source_forms(source: &str) -> impl Iterator<Item = &str> {
    let suffixes = source
        .char_indices()
        .filter(|&(_, c)| c == '.')
        .filter_map(move |(i, _)| source.get(i + 1..));
    std::iter::once(source).chain(suffixes)
}

#[cfg(test)]
mod source_form_tests {
    use super::source_forms;

    #[test]
    fn every_dotted_suffix_is_a_form() {
        let forms: Vec<&str> = source_forms("public.customers.email").collect();
        assert_eq!(
            forms,
            ["public.customers.email", "customers.email", "email"]
        );
        let forms: Vec<&str> = source_forms("?.email").collect();
        assert_eq!(forms, ["?.email", "email"]);
        let forms: Vec<&str> = source_forms("email").collect();
        assert_eq!(forms, ["email"]);
    }
}
