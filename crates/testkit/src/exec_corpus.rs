//! The exec corpus (`crates/core/tests/data/exec-corpus.txt`): spellings of "delete the directory
//! D" that every exec path must refuse, and harmless controls that must run. Shared by the SSH
//! and Kubernetes corpus tests so that both paths are held to the same lines.

/// The policy the corpus runs under: default allow, opaque denied (a review would hold each
/// line for an approver), and one tripwire on `rm -r` as `rm` reads its options.
pub const POLICY: &str = r#"
[defaults]
default = "allow"
opaque = "deny"

[[rules]]
id = "no-rm-r"
reason = "recursive deletes are forbidden"
verdict = "deny"
exec = { program = ["rm"], options = ["-r"] }
"#;

/// One corpus line.
#[derive(Debug, Clone)]
pub struct CorpusLine {
    /// Run directly, the line deletes D: through the gateway it must be refused.
    pub deletes: bool,
    /// The command line, with `D` still in it.
    pub template: String,
}

impl CorpusLine {
    /// The line with `D` (a `D` not next to a letter, digit or `_`) replaced by `dir`.
    pub fn with_dir(&self, dir: &str) -> String {
        let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let chars: Vec<char> = self.template.chars().collect();
        let mut out = String::new();
        for (i, c) in chars.iter().enumerate() {
            let before = i.checked_sub(1).and_then(|j| chars.get(j)).copied();
            if *c == 'D' && !word(before) && !word(chars.get(i + 1).copied()) {
                out.push_str(dir);
            } else {
                out.push(*c);
            }
        }
        out
    }
}

/// Every line of the corpus, in file order.
pub fn lines() -> Vec<CorpusLine> {
    include_str!("../../core/tests/data/exec-corpus.txt")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (kind, line) = l.split_once('\t')?;
            Some(CorpusLine {
                deletes: kind == "deletes",
                template: line.to_string(),
            })
        })
        .collect()
}

/// Makes `root/dN` holding a file, for line N; returns its path.
pub fn make_dir(root: &std::path::Path, n: usize) -> std::path::PathBuf {
    let d = root.join(format!("d{n}"));
    std::fs::create_dir_all(&d).expect("make corpus dir");
    std::fs::write(d.join("file"), b"keep me\n").expect("write corpus file");
    d
}
