//! Shell command-line parsing: the argv that SSH and Kubernetes exec policy decide on.
//!
//! POSIX `sh` word rules: single quotes are literal; double quotes keep `\` only before
//! `$ ` `` ` `` `" \` and newline; an unquoted backslash escapes the next character; so `r''m`,
//! `\rm` and `"rm"` are all the word `rm`. The parser does not expand anything: it *reports* that
//! the line had expansions (`$x`, `$(…)`, backticks, unquoted globs, `~`, brace lists) or
//! metacharacters (`; & | < > ( )`, newline, comments) or leading `VAR=value` assignments, because
//! then what runs is not what the argv says. Policy treats such lines with their own verdict, and
//! exec rules should be allow-lists: a deny-list of shell commands is bypassable.
//!
//! [`ShellCommand::unwrap_shell`] unwraps one level of `sh -c '…'` / `bash -c '…'`.

use serde::{Deserialize, Serialize};

/// A parsed command line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShellCommand {
    /// Words of the first simple command (after leading assignments).
    pub argv: Vec<String>,
    /// Every simple command of the line, split at `;`, `&`, `&&`, `|`, `||`, newline, `(`, `)`.
    pub commands: Vec<Vec<String>>,
    /// `$…`, `` `…` ``, unquoted `* ? [`, leading `~`, brace lists: the shell would rewrite words.
    pub has_expansions: bool,
    /// Control operators, redirections, subshells or comments.
    pub has_metacharacters: bool,
    /// Leading `NAME=value` words (they change the command's environment, e.g. `LD_PRELOAD`).
    pub has_assignments: bool,
    /// The line ended inside a quote or after a lone backslash.
    pub incomplete: bool,
    /// Came from unwrapping `sh -c` (one level).
    pub unwrapped: bool,
}

impl ShellCommand {
    /// Whether the line is a plain command: what the argv says is what runs.
    pub fn is_plain(&self) -> bool {
        !self.has_expansions
            && !self.has_metacharacters
            && !self.has_assignments
            && !self.incomplete
    }

    /// The program name (first word), if any.
    pub fn program(&self) -> Option<&str> {
        self.argv.first().map(String::as_str)
    }

    /// If this is `sh|bash|dash|zsh|ksh|ash -c SCRIPT …` (options may be clustered, e.g. `-ec`,
    /// `-lc`), returns SCRIPT parsed, flagged as unwrapped, with this line's flags carried over.
    /// Unwraps exactly one level; otherwise returns `self` unchanged.
    pub fn unwrap_shell(self) -> ShellCommand {
        if self.commands.len() != 1 || self.unwrapped {
            return self;
        }
        let Some(program) = self.argv.first() else {
            return self;
        };
        let base = program.rsplit('/').next().unwrap_or(program);
        if !matches!(
            base,
            "sh" | "bash" | "dash" | "zsh" | "ksh" | "ash" | "mksh"
        ) {
            return self;
        }
        // Options before the script: `-c` or a cluster containing `c` (`-ec`, `-lc`, `-xc`).
        let mut idx = 1;
        let mut saw_c = false;
        while let Some(word) = self.argv.get(idx) {
            if word == "--" {
                idx += 1;
                break;
            }
            if let Some(opts) = word
                .strip_prefix('-')
                .filter(|o| !o.is_empty() && o.chars().all(|c| c.is_ascii_alphabetic()))
            {
                saw_c |= opts.contains('c');
                idx += 1;
                continue;
            }
            break;
        }
        let Some(script) = self.argv.get(idx).filter(|_| saw_c) else {
            return self;
        };
        let mut inner = parse(script);
        inner.unwrapped = true;
        inner.has_expansions |= self.has_expansions;
        inner.has_metacharacters |= self.has_metacharacters;
        inner.has_assignments |= self.has_assignments;
        inner.incomplete |= self.incomplete;
        inner
    }
}

/// Quotes one word so that [`parse`] (and `sh`) read it back as exactly that word.
pub fn quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:,+@%".contains(&b))
        && !word.starts_with('~')
    {
        return word.to_string();
    }
    let mut out = String::with_capacity(word.len() + 2);
    out.push('\'');
    for ch in word.chars() {
        if ch == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(ch);
        }
    }
    out.push('\'');
    out
}

/// Joins words into a command line that [`parse`] reads back as the same argv.
pub fn join<S: AsRef<str>>(words: &[S]) -> String {
    words
        .iter()
        .map(|w| quote(w.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

#[derive(Default)]
struct Parser {
    out: ShellCommand,
    current_command: Vec<String>,
    word: String,
    in_word: bool,
    /// Unquoted `{` seen in this word, and whether a `,` or `..` followed it.
    brace_open: bool,
    brace_list: bool,
    /// The character being added is the first of its word.
    word_is_first_char: bool,
    /// Quoting or an escape occurred before any `=` in this word (so it is not an assignment).
    quoted_prefix: bool,
}

impl Parser {
    fn end_word(&mut self) {
        if !self.in_word {
            return;
        }
        if self.brace_open && self.brace_list {
            self.out.has_expansions = true;
        }
        self.brace_open = false;
        self.brace_list = false;
        let word = std::mem::take(&mut self.word);
        self.in_word = false;
        let quoted_prefix = std::mem::take(&mut self.quoted_prefix);
        if self.current_command.is_empty() && !quoted_prefix && is_assignment(&word) {
            self.out.has_assignments = true;
            return;
        }
        self.current_command.push(word);
    }

    fn end_command(&mut self) {
        self.end_word();
        if !self.current_command.is_empty() {
            self.out
                .commands
                .push(std::mem::take(&mut self.current_command));
        }
    }

    fn start_char(&mut self) {
        self.word_is_first_char = !self.in_word;
        self.in_word = true;
    }

    /// A quote or escape starts here.
    fn start_quoted(&mut self) {
        self.start_char();
        if !self.word.contains('=') {
            self.quoted_prefix = true;
        }
    }
}

/// Whether `word` is a `NAME=value` assignment (unquoted name).
fn is_assignment(word: &str) -> bool {
    let Some((name, _)) = word.split_once('=') else {
        return false;
    };
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Whether a `$` at this point starts an expansion (`$name`, `${`, `$(`, `$1`, `$?`, …).
fn dollar_expands(next: Option<char>) -> bool {
    matches!(next, Some(c) if c.is_ascii_alphanumeric() || "_{(@*#?-$!'\"".contains(c))
}

/// Parses a command line. Never fails: problems are reported in the flags.
pub fn parse(line: &str) -> ShellCommand {
    let mut p = Parser::default();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => p.end_word(),
            '\n' => {
                p.out.has_metacharacters = true;
                p.end_command();
            }
            ';' | '&' | '|' | '(' | ')' => {
                p.out.has_metacharacters = true;
                p.end_command();
            }
            '<' | '>' => {
                p.out.has_metacharacters = true;
                p.end_word();
            }
            '#' if !p.in_word => {
                p.out.has_metacharacters = true;
                // A comment hides the rest of the line from the shell.
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
                p.end_command();
            }
            '\\' => match chars.next() {
                Some('\n') => {}
                Some(next) => {
                    p.start_quoted();
                    p.word.push(next);
                }
                None => {
                    p.out.incomplete = true;
                }
            },
            '\'' => {
                p.start_quoted();
                let mut closed = false;
                for c in chars.by_ref() {
                    if c == '\'' {
                        closed = true;
                        break;
                    }
                    p.word.push(c);
                }
                if !closed {
                    p.out.incomplete = true;
                }
            }
            '"' => {
                p.start_quoted();
                let mut closed = false;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => {
                            closed = true;
                            break;
                        }
                        '\\' => match chars.peek().copied() {
                            Some(n @ ('$' | '`' | '"' | '\\')) => {
                                chars.next();
                                p.word.push(n);
                            }
                            Some('\n') => {
                                chars.next();
                            }
                            _ => p.word.push('\\'),
                        },
                        '$' => {
                            if dollar_expands(chars.peek().copied()) {
                                p.out.has_expansions = true;
                            }
                            p.word.push('$');
                        }
                        '`' => {
                            p.out.has_expansions = true;
                            p.word.push('`');
                        }
                        other => p.word.push(other),
                    }
                }
                if !closed {
                    p.out.incomplete = true;
                }
            }
            '$' => {
                if dollar_expands(chars.peek().copied()) {
                    p.out.has_expansions = true;
                }
                p.start_char();
                p.word.push('$');
            }
            '`' => {
                p.out.has_expansions = true;
                p.start_char();
                p.word.push('`');
            }
            '*' | '?' | '[' => {
                p.out.has_expansions = true;
                p.start_char();
                p.word.push(c);
            }
            '~' => {
                p.start_char();
                if p.word_is_first_char {
                    p.out.has_expansions = true;
                }
                p.word.push('~');
            }
            '{' => {
                p.start_char();
                p.brace_open = true;
                p.word.push('{');
            }
            ',' => {
                p.start_char();
                if p.brace_open {
                    p.brace_list = true;
                }
                p.word.push(',');
            }
            '.' => {
                p.start_char();
                if p.brace_open && p.word.ends_with('.') {
                    p.brace_list = true;
                }
                p.word.push('.');
            }
            other => {
                p.start_char();
                p.word.push(other);
            }
        }
    }
    p.end_command();
    let mut out = p.out;
    out.argv = out.commands.first().cloned().unwrap_or_default();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(line: &str) -> Vec<String> {
        parse(line).argv
    }

    #[test]
    fn words_and_quotes() {
        assert_eq!(argv("echo hi"), ["echo", "hi"]);
        assert_eq!(argv("rm  -rf /"), ["rm", "-rf", "/"]);
        assert_eq!(argv("r''m -rf /"), ["rm", "-rf", "/"]);
        assert_eq!(argv("\\rm -rf /"), ["rm", "-rf", "/"]);
        assert_eq!(argv("\"r\"m x"), ["rm", "x"]);
        assert_eq!(argv("echo 'a b' \"c d\""), ["echo", "a b", "c d"]);
        assert_eq!(argv("echo \"a\\\"b\\n\""), ["echo", "a\"b\\n"]);
        assert_eq!(argv("echo ''"), ["echo", ""]);
        assert!(parse("echo hi").is_plain());
    }

    #[test]
    fn flags() {
        assert!(parse("$(echo rm) -rf /").has_expansions);
        assert!(parse("`echo rm` -rf /").has_expansions);
        assert!(parse("echo $HOME").has_expansions);
        assert!(parse("echo \"$HOME\"").has_expansions);
        assert!(!parse("echo '$HOME'").has_expansions);
        assert!(!parse("echo \\$HOME").has_expansions);
        assert!(parse("ls *.txt").has_expansions);
        assert!(parse("cat ~/x").has_expansions);
        assert!(!parse("echo a~b").has_expansions);
        assert!(parse("echo {a,b}").has_expansions);
        assert!(parse("echo {1..3}").has_expansions);
        assert!(!parse("find / -exec rm {} +").has_expansions);
        let chain = parse("ls; rm -rf / && echo x | cat");
        assert!(chain.has_metacharacters);
        assert_eq!(chain.commands.len(), 4);
        assert_eq!(chain.commands[1], ["rm", "-rf", "/"]);
        assert!(parse("ls > /etc/x").has_metacharacters);
        assert!(parse("ls # rm").has_metacharacters);
        assert!(!parse("ls a#b").has_metacharacters);
        assert!(parse("LD_PRELOAD=/x ls").has_assignments);
        assert_eq!(argv("LD_PRELOAD=/x ls"), ["ls"]);
        assert!(parse("echo 'abc").incomplete);
        assert!(parse("echo \\").incomplete);
    }

    #[test]
    fn unwrap_one_level() {
        let c = parse("bash -c \"rm -rf /\"").unwrap_shell();
        assert_eq!(c.argv, ["rm", "-rf", "/"]);
        assert!(c.unwrapped);
        let c = parse("/bin/sh -ec 'ls; rm x'").unwrap_shell();
        assert_eq!(c.commands, vec![vec!["ls"], vec!["rm", "x"]]);
        assert!(c.has_metacharacters);
        // Exactly one level.
        let c = parse("sh -c \"sh -c 'rm -rf /'\"").unwrap_shell();
        assert_eq!(c.argv, ["sh", "-c", "rm -rf /"]);
        // Not `-c`: unchanged.
        assert_eq!(
            parse("bash script.sh").unwrap_shell().argv,
            ["bash", "script.sh"]
        );
        assert_eq!(parse("sh -c").unwrap_shell().argv, ["sh", "-c"]);
    }

    #[test]
    fn quote_round_trip_examples() {
        for w in [
            "", "a b", "it's", "$(x)", "~", "a\nb", "\"", "\\", "*", "{a,b}", "#x",
        ] {
            let line = quote(w);
            let parsed = parse(&line);
            assert_eq!(parsed.argv, [w], "{line}");
            assert!(parsed.is_plain(), "{line}");
        }
    }
}
