//! The JSONPath subset used by path rules, and matching it against the path of the value the JSON
//! masker is reading.

/// One step of a path rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// `.name` / `['name']`.
    Child(Vec<u8>),
    /// `.*` / `[*]`: any key or index.
    AnyChild,
    /// `[N]`.
    Index(usize),
    /// `..name`: a key at any depth below.
    Descendant(Vec<u8>),
    /// `..*`: anything at any depth below.
    AnyDescendant,
}

/// One element of a concrete path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathElem<'a> {
    Key(&'a [u8]),
    Index(usize),
}

/// A parsed path rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JsonPath {
    steps: Vec<Step>,
}

impl JsonPath {
    /// Parses `$.a.b`, `$['a b'][0]`, `$.users[*].email`, `$..token`, `$..*`.
    pub(crate) fn parse(path: &str) -> Result<JsonPath, String> {
        let b = path.as_bytes();
        if b.first() != Some(&b'$') {
            return Err("must start with `$`".into());
        }
        let mut steps = Vec::new();
        let mut i = 1;
        while i < b.len() {
            let descendant = b.get(i..i + 2) == Some(&b".."[..]);
            match b.get(i) {
                Some(b'.') => {
                    i += if descendant { 2 } else { 1 };
                    let start = i;
                    while i < b.len() && !matches!(b.get(i), Some(b'.' | b'[')) {
                        i += 1;
                    }
                    let name = b.get(start..i).unwrap_or(&[]);
                    if name.is_empty() {
                        return Err(format!("empty name at byte {start}"));
                    }
                    steps.push(match (descendant, name) {
                        (true, b"*") => Step::AnyDescendant,
                        (true, n) => Step::Descendant(n.to_vec()),
                        (false, b"*") => Step::AnyChild,
                        (false, n) => Step::Child(n.to_vec()),
                    });
                }
                Some(b'[') => {
                    let close = b
                        .get(i..)
                        .and_then(|r| r.iter().position(|&c| c == b']'))
                        .ok_or_else(|| format!("unclosed `[` at byte {i}"))?;
                    let inner = b.get(i + 1..i + close).unwrap_or(&[]);
                    let step = if inner == b"*" {
                        Step::AnyChild
                    } else if !inner.is_empty() && inner.iter().all(u8::is_ascii_digit) {
                        let n = std::str::from_utf8(inner)
                            .ok()
                            .and_then(|s| s.parse().ok())
                            .ok_or_else(|| "index too large".to_string())?;
                        Step::Index(n)
                    } else if inner.len() >= 2
                        && matches!(inner.first(), Some(b'\'' | b'"'))
                        && inner.first() == inner.last()
                    {
                        Step::Child(inner.get(1..inner.len() - 1).unwrap_or(&[]).to_vec())
                    } else {
                        return Err(format!("unsupported selector at byte {i}"));
                    };
                    steps.push(step);
                    i += close + 1;
                }
                _ => return Err(format!("unexpected character at byte {i}")),
            }
        }
        Ok(JsonPath { steps })
    }

    /// Whether the concrete `path` (root first) is selected by this rule.
    pub(crate) fn matches(&self, path: &[PathElem<'_>]) -> bool {
        matches_steps(&self.steps, path)
    }
}

fn matches_steps(steps: &[Step], path: &[PathElem<'_>]) -> bool {
    let Some((step, rest)) = steps.split_first() else {
        return path.is_empty();
    };
    match step {
        Step::Child(name) => {
            matches!(path.first(), Some(PathElem::Key(k)) if *k == name.as_slice())
                && matches_steps(rest, path.get(1..).unwrap_or(&[]))
        }
        Step::AnyChild => !path.is_empty() && matches_steps(rest, path.get(1..).unwrap_or(&[])),
        Step::Index(n) => {
            matches!(path.first(), Some(PathElem::Index(i)) if i == n)
                && matches_steps(rest, path.get(1..).unwrap_or(&[]))
        }
        Step::Descendant(name) => (0..path.len()).any(|k| {
            matches!(path.get(k), Some(PathElem::Key(key)) if *key == name.as_slice())
                && matches_steps(rest, path.get(k + 1..).unwrap_or(&[]))
        }),
        Step::AnyDescendant => {
            (0..path.len()).any(|k| matches_steps(rest, path.get(k + 1..).unwrap_or(&[])))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PathElem::{Index, Key};

    #[test]
    fn parse_and_match() {
        let p = JsonPath::parse("$.users[*].email").unwrap();
        assert!(p.matches(&[Key(b"users"), Index(3), Key(b"email")]));
        assert!(!p.matches(&[Key(b"users"), Index(3), Key(b"name")]));
        assert!(!p.matches(&[Key(b"users"), Index(3)]));
        let d = JsonPath::parse("$..token").unwrap();
        assert!(d.matches(&[Key(b"a"), Index(0), Key(b"token")]));
        assert!(d.matches(&[Key(b"token")]));
        assert!(!d.matches(&[Key(b"token"), Key(b"x")]));
        let q = JsonPath::parse("$['a b'][1]").unwrap();
        assert!(q.matches(&[Key(b"a b"), Index(1)]));
        assert!(
            JsonPath::parse("$..*")
                .unwrap()
                .matches(&[Key(b"x"), Index(1)])
        );
        for bad in ["users", "$.", "$[", "$[x]", "$.a..", "$!"] {
            assert!(JsonPath::parse(bad).is_err(), "{bad}");
        }
    }
}
