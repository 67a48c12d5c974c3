//! What an exec command line runs, read the way the programs themselves read it.
//!
//! [`analyse`] turns a command line (SSH exec, or the `command=` words of a Kubernetes exec)
//! into the [`ExecItem`]s the policy decides: every simple command of the line, with wrappers
//! (`env`, `nice`, `timeout`, `sudo`, `xargs`, `busybox`, `sh -c '…'`, …) unwrapped into an item of
//! their own plus what they run, so that `env nice rm -rf D` is decided as `rm -rf D` too.
//! Whatever the gateway cannot see into is marked **opaque** with the reason: shells and
//! interpreters given code inline, in a file or on stdin (`bash`, `python3 -c`, `perl -e`,
//! `awk '{system(…)}'`), programs run by a relative or unusual path (`./x`, `/tmp/x`),
//! `find -exec`/`-delete`, `eval`/`source`, environment assignments that change what runs
//! (`LD_PRELOAD`, `PATH`, `BASH_ENV`, … — anything not on a short list of inert names), lines with
//! expansions or metacharacters, and wrappers it cannot resolve.
//!
//! [`read_options`] reads a program's arguments with GNU `getopt_long` rules (clustered short
//! options, abbreviated long options, `--`, options after operands) and the program's option
//! table, when there is one (tables are data in this module). For a program without a table a
//! reading is conservative: [`ArgsReading::uses`] in loose mode says yes for anything that
//! *could* be the option.
//!
//! Everything here is pure and total: hostile input gives an opaque item, never a panic.

use std::collections::HashMap;
use std::sync::OnceLock;

use crate::shell;

/// One program an exec line would run, as the policy decides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecItem {
    /// The words this item runs with. For a wrapper, only the wrapper's own words (what it
    /// runs is the next item); otherwise the program and all its arguments.
    pub argv: Vec<String>,
    /// This item is a wrapper (`env`, `sudo`, `nice`, …): what it runs follows as its own item.
    pub wrapper: bool,
    /// More arguments than `argv` shows will be added at run time (`xargs` appends words read
    /// from its input).
    pub extra_args: bool,
    /// Why the gateway cannot determine what this item does, if so.
    pub opaque: Option<String>,
}

impl ExecItem {
    fn understood(argv: Vec<String>, extra_args: bool) -> Self {
        Self {
            argv,
            wrapper: false,
            extra_args,
            opaque: None,
        }
    }

    fn opaque(argv: Vec<String>, extra_args: bool, reason: impl Into<String>) -> Self {
        Self {
            argv,
            wrapper: false,
            extra_args,
            opaque: Some(reason.into()),
        }
    }

    /// The program (first word), if any.
    pub fn program(&self) -> Option<&str> {
        self.argv.first().map(String::as_str)
    }
}

/// Unwrapping depth (nested wrappers and `sh -c` levels) after which a line is opaque.
const MAX_DEPTH: usize = 12;
/// Items after which a line is opaque as a whole (pathological inputs).
const MAX_ITEMS: usize = 512;

/// Environment variables that never change which program runs or what code it loads.
/// Everything else given through `env NAME=…`, `sudo NAME=…` or the exec request is opaque.
pub fn env_name_is_inert(name: &str) -> bool {
    matches!(
        name,
        "LANG" | "LANGUAGE" | "TERM" | "TZ" | "COLUMNS" | "LINES" | "NO_COLOR" | "COLORTERM"
    ) || name.starts_with("LC_")
}

/// What [`analyse`] read from one command line with its environment, made only here and
/// remembering exactly what it read: the facts a protocol hands the policy with an exec
/// operation ([`crate::Classified`]). A policy uses them only when [`ExecFacts::is_for`] the
/// command it decides.
#[derive(Debug)]
pub struct ExecFacts {
    line: String,
    env: Vec<(String, String)>,
    plain: bool,
    items: Vec<ExecItem>,
}

impl ExecFacts {
    /// Reads `cmd`'s raw command line (never its `parsed` field) with its environment.
    pub fn of(cmd: &crate::ExecCommand) -> std::sync::Arc<ExecFacts> {
        std::sync::Arc::new(ExecFacts {
            line: cmd.command_line.clone(),
            env: cmd.env.clone(),
            plain: crate::shell::parse(&cmd.command_line).is_plain(),
            items: analyse(&cmd.command_line, &cmd.env),
        })
    }

    /// Whether these facts were read from exactly `cmd`'s line and environment.
    pub fn is_for(&self, cmd: &crate::ExecCommand) -> bool {
        self.line == cmd.command_line && self.env == cmd.env
    }

    /// Whether the line is one plain command (no shell syntax).
    pub fn plain(&self) -> bool {
        self.plain
    }

    /// What the line runs, item by item.
    pub fn items(&self) -> &[ExecItem] {
        &self.items
    }
}

/// Analyses a command line: `env` holds the variables the request itself sets (SSH `env`
/// requests). Never empty: an empty line is one item with an empty argv.
pub fn analyse(line: &str, env: &[(String, String)]) -> Vec<ExecItem> {
    let mut out = Vec::new();
    let inherited = env
        .iter()
        .find(|(name, _)| !env_name_is_inert(name))
        .map(|(name, _)| format!("the request sets {name}, which can change what runs"));
    analyse_line(line, 0, inherited.as_deref(), &mut out);
    if out.len() > MAX_ITEMS {
        out.truncate(1);
        if let Some(first) = out.first_mut() {
            first.opaque = Some("the command line is too complex".into());
        }
    }
    if out.is_empty() {
        out.push(ExecItem {
            argv: Vec::new(),
            wrapper: false,
            extra_args: false,
            opaque: inherited,
        });
    }
    out
}

/// Why a parsed line as a whole is opaque.
fn line_reason(parsed: &shell::ShellCommand) -> Option<&'static str> {
    if parsed.incomplete {
        Some("the command line ends inside a quote or after a backslash")
    } else if parsed.has_expansions {
        Some(
            "the command line has shell expansions ($…, `…`, globs, ~, {a,b}): what runs is not what it says",
        )
    } else if parsed.has_metacharacters {
        Some("the command line has shell metacharacters (; & | < > ( ) or a comment)")
    } else if parsed.has_assignments {
        Some("the command line sets environment variables, which can change what runs")
    } else {
        None
    }
}

fn analyse_line(line: &str, depth: usize, inherited: Option<&str>, out: &mut Vec<ExecItem>) {
    if depth > MAX_DEPTH || out.len() > MAX_ITEMS {
        out.push(ExecItem::opaque(
            vec![line.to_string()],
            false,
            "commands nested too deeply",
        ));
        return;
    }
    let parsed = shell::parse(line);
    let reason = inherited.or(line_reason(&parsed));
    for argv in parsed.commands {
        resolve(argv, depth, reason, out);
    }
}

/// How a program treats what follows it.
enum Step {
    /// An ordinary program: decided as it stands.
    Program,
    /// Cannot be seen into.
    Opaque(String),
    /// Runs `inner` after its own first `own` words (`inner` usually is the rest of argv).
    Wrapper {
        own: usize,
        inner: Vec<String>,
        extra_args: bool,
        opaque: Option<String>,
    },
    /// Runs these shell command lines (its own first `own` words are the wrapper).
    Shell { own: usize, lines: Vec<String> },
}

fn resolve(mut argv: Vec<String>, depth: usize, inherited: Option<&str>, out: &mut Vec<ExecItem>) {
    let mut extra_args = false;
    let mut inherited: Option<String> = inherited.map(str::to_string);
    for level in depth..=MAX_DEPTH {
        if out.len() > MAX_ITEMS {
            return;
        }
        let Some(program) = argv.first() else {
            return;
        };
        let base = match program_base(program) {
            Ok(b) => b.to_string(),
            Err(reason) => {
                out.push(ExecItem::opaque(argv, extra_args, reason));
                return;
            }
        };
        let args = argv.get(1..).unwrap_or(&[]);
        let step = step(&base, args);
        match step {
            Step::Program => {
                let item = match inherited {
                    Some(r) => ExecItem::opaque(argv, extra_args, r),
                    None => ExecItem::understood(argv, extra_args),
                };
                out.push(item);
                return;
            }
            Step::Opaque(reason) => {
                out.push(ExecItem::opaque(
                    argv,
                    extra_args,
                    inherited.unwrap_or(reason),
                ));
                return;
            }
            Step::Wrapper {
                own,
                inner,
                extra_args: more,
                opaque,
            } => {
                let own_words: Vec<String> = argv.iter().take(own).cloned().collect();
                if let Some(r) = opaque {
                    inherited.get_or_insert(r);
                }
                out.push(ExecItem {
                    argv: own_words,
                    wrapper: true,
                    extra_args: false,
                    opaque: inherited.clone(),
                });
                extra_args |= more;
                argv = inner;
            }
            Step::Shell { own, lines } => {
                let own_words: Vec<String> = argv.iter().take(own).cloned().collect();
                // `sh -c` at the top is no wrapper of its own (an SSH exec line is run by a
                // shell already); a shell reached through another wrapper is one.
                if level > depth || own_words.first().is_some_and(|p| !is_posix_shell(p)) {
                    out.push(ExecItem {
                        argv: own_words,
                        wrapper: true,
                        extra_args: false,
                        opaque: inherited.clone(),
                    });
                }
                if extra_args {
                    out.push(ExecItem::opaque(
                        argv,
                        true,
                        "a shell script receives arguments read from input",
                    ));
                    return;
                }
                for line in lines {
                    analyse_line(&line, level + 1, inherited.as_deref(), out);
                }
                return;
            }
        }
    }
    out.push(ExecItem::opaque(
        argv,
        extra_args,
        "wrappers nested too deeply",
    ));
}

fn is_posix_shell(program: &str) -> bool {
    let base = program.rsplit('/').next().unwrap_or(program);
    POSIX_SHELLS.contains(&base)
}

/// Directories whose programs are the system's own: `/usr/bin/rm` is read as `rm`.
const SYSTEM_DIRS: &[&str] = &[
    "/bin",
    "/sbin",
    "/usr/bin",
    "/usr/sbin",
    "/usr/local/bin",
    "/usr/local/sbin",
];

/// The program's name, or why the program cannot be known by name.
fn program_base(program: &str) -> Result<&str, String> {
    if program.is_empty() {
        return Err("the program name is empty".into());
    }
    let Some((dir, base)) = program.rsplit_once('/') else {
        return Ok(program);
    };
    if base.is_empty() || base == "." || base == ".." {
        return Err(format!("{program:?} is not a program name"));
    }
    if SYSTEM_DIRS.contains(&dir) {
        Ok(base)
    } else {
        Err(format!(
            "{program:?} runs a program by path: the gateway cannot know what it is"
        ))
    }
}

const POSIX_SHELLS: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ksh", "ash", "mksh", "posh", "yash", "ksh93", "lksh", "rbash",
];

/// Shells whose grammar is not POSIX `sh` (their `-c` code is not read here).
const OTHER_SHELLS: &[&str] = &[
    "fish",
    "csh",
    "tcsh",
    "xonsh",
    "elvish",
    "nu",
    "pwsh",
    "powershell",
    "rc",
    "es",
    "scsh",
];

/// Interpreters and tools that run code they are given (inline, in a file or on stdin).
/// A trailing version (`python3.12`, `perl5.36`, `php8.2`) is ignored.
const INTERPRETERS: &[&str] = &[
    "python",
    "pypy",
    "perl",
    "ruby",
    "irb",
    "node",
    "nodejs",
    "deno",
    "bun",
    "php",
    "lua",
    "luajit",
    "tclsh",
    "wish",
    "expect",
    "rscript",
    "r",
    "julia",
    "guile",
    "racket",
    "ocaml",
    "swipl",
    "jshell",
    "groovy",
    "scala",
    "kotlin",
    "jrunscript",
    "osascript",
    "sbcl",
    "clisp",
    "erl",
    "escript",
    "elixir",
    "iex",
    "gdb",
    "lldb",
    "vi",
    "vim",
    "nvim",
    "ex",
    "view",
    "emacs",
    "ed",
    "sqlite",
    "psql",
    "mysql",
    "java",
    "dotnet",
    "cscript",
    "wscript",
    "make",
    "gmake",
    "bmake",
    "cmake",
    "ninja",
    "m4",
    "bc",
    "dc",
];

/// Programs that run other programs in ways the gateway does not unwrap.
const RUNNERS: &[&str] = &[
    "strace",
    "ltrace",
    "watch",
    "script",
    "systemd-run",
    "setpriv",
    "pkexec",
    "chrt",
    "taskset",
    "prlimit",
    "parallel",
    "ssh",
    "rsh",
    "sshpass",
    "valgrind",
    "catchsegv",
    "eatmydata",
    "fakeroot",
    "fakechroot",
    "proot",
    "firejail",
    "bwrap",
    "tini",
    "dumb-init",
    "numactl",
    "cgexec",
    "sg",
    "newgrp",
    "screen",
    "tmux",
    "dtach",
    "at",
    "batch",
    "sudoedit",
    "start-stop-daemon",
    "daemonize",
    "chpst",
    "softlimit",
    "envdir",
    "setuidgid",
    "su-exec",
    "gosu",
    "capsh",
    "xterm",
    "dbus-launch",
    "ld.so",
    "ld-linux.so.2",
    "ld-linux-x86-64.so.2",
    "ld-linux-aarch64.so.1",
    "perf",
    "torsocks",
    "proxychains",
    "proxychains4",
    "unbuffer",
    "faketime",
    "firecracker",
    "systemd-nspawn",
    "machinectl",
    "run-parts",
    "crontab",
    "ip",
    "busybox-static",
];

/// Shell builtins and keywords that run code or rebind what a name runs.
const SHELL_CODE: &[&str] = &[
    "eval",
    "source",
    ".",
    "trap",
    "enable",
    "hash",
    "fc",
    "bind",
    "complete",
    "compgen",
    "alias",
    "coproc",
    "function",
    "if",
    "then",
    "else",
    "elif",
    "fi",
    "for",
    "while",
    "until",
    "do",
    "done",
    "case",
    "esac",
    "select",
    "{",
    "}",
    "!",
    "[[",
    "]]",
    "((",
    "let",
    "declare",
    "typeset",
    "local",
    "readonly",
    "export",
    "mapfile",
    "readarray",
    "shopt",
    "set",
    "builtin",
];

fn is_interpreter(base: &str) -> bool {
    let lower = base.to_ascii_lowercase();
    let trimmed = lower.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.' || c == '-');
    INTERPRETERS.contains(&trimmed)
        || INTERPRETERS.contains(&lower.as_str())
        || lower.ends_with(".sh")
        || lower.ends_with(".py")
        || lower.ends_with(".pl")
}

fn opaque(reason: impl Into<String>) -> Step {
    Step::Opaque(reason.into())
}

/// Reads a wrapper's options with its table and returns the options and where the command
/// starts (an index into `args`).
fn wrapper_options(table_name: &str, args: &[String]) -> Result<(Vec<ParsedOption>, usize), Step> {
    let Some(table) = table(table_name) else {
        return Err(opaque(format!("{table_name}: no option table")));
    };
    let reading = getopt(table, args);
    if let Some(w) = reading.unknown.first() {
        return Err(opaque(format!(
            "{table_name}: option {w:?} is not known to the gateway"
        )));
    }
    Ok((reading.options, reading.operand_start))
}

fn has(options: &[ParsedOption], name: &str) -> bool {
    options.iter().any(|o| o.name == name)
}

fn value<'a>(options: &'a [ParsedOption], name: &str) -> Option<&'a str> {
    options
        .iter()
        .rev()
        .find(|o| o.name == name)
        .and_then(|o| o.value.as_deref())
}

/// `own` words of the wrapper, then the rest of argv as the inner command.
fn wrap(args: &[String], start: usize) -> Step {
    Step::Wrapper {
        own: start + 1,
        inner: args.get(start..).unwrap_or(&[]).to_vec(),
        extra_args: false,
        opaque: None,
    }
}

fn step(base: &str, args: &[String]) -> Step {
    if POSIX_SHELLS.contains(&base) {
        return shell_step(base, args);
    }
    if OTHER_SHELLS.contains(&base) {
        return opaque(format!("{base} runs shell code the gateway does not read"));
    }
    if SHELL_CODE.contains(&base) {
        return opaque(format!("{base} runs or rebinds shell code"));
    }
    if RUNNERS.contains(&base) {
        return opaque(format!(
            "{base} runs other programs in a way the gateway does not unwrap"
        ));
    }
    match base {
        "awk" | "gawk" | "mawk" | "nawk" | "busybox-awk" => return awk_step(args),
        "sed" | "gsed" => return sed_step(args),
        "find" => return find_step(args),
        "tar" | "gtar" => return tar_step(args),
        "git" => return git_step(args),
        "rsync" => {
            // The server side (`rsync --server`) gets the client's protocol flags as the
            // argument of `-e` in its short-option group (`-logDtpre.iLsfxCIvu`): `-e.…` there
            // runs nothing.
            let server = args.iter().any(|a| a == "--server");
            return if args.iter().any(|a| {
                a == "-e"
                    || a.starts_with("--rsh")
                    || a.starts_with("--rsync-path")
                    || (a.starts_with('-')
                        && !a.starts_with("--")
                        && a.find('e').is_some_and(|at| {
                            !(server && a.get(at + 1..).is_some_and(|v| v.starts_with('.')))
                        }))
            }) {
                opaque("rsync -e/--rsh/--rsync-path runs a command")
            } else {
                Step::Program
            };
        }
        "sort" => {
            return if args.iter().any(|a| a.starts_with("--compress-prog")) {
                opaque("sort --compress-program runs a program")
            } else {
                Step::Program
            };
        }
        _ => {}
    }
    if is_interpreter(base) {
        let version_only =
            matches!(args, [a] if a == "--version" || a == "-V" || a == "-v" || a == "--help");
        return if version_only {
            Step::Program
        } else {
            opaque(format!(
                "{base} runs code (inline, from a file or from its input) the gateway cannot see"
            ))
        };
    }
    wrapper_step(base, args).unwrap_or(Step::Program)
}

fn shell_step(base: &str, args: &[String]) -> Step {
    let Some(table) = table("sh") else {
        return opaque("no table for sh");
    };
    let reading = getopt(table, args);
    if !reading.unknown.is_empty() {
        return opaque(format!(
            "{base} with options the gateway does not read ({})",
            reading.unknown.join(" ")
        ));
    }
    if has(&reading.options, "rcfile") || has(&reading.options, "init-file") {
        return opaque(format!("{base} --rcfile runs a file"));
    }
    // Only options that change nothing about what the script runs keep it readable. Others
    // change how the script is read or what runs first: `-k` (every NAME=value word becomes
    // an environment variable, so `ENV=$(…)` reaches `sh -i`), `-i`/`-l` (read ENV, rc and
    // profile files), `-a`, `-o keyword`, `-s`, `+…`, …
    const PLAIN_OPTIONS: &[&str] = &["c", "e", "u", "x", "v", "f", "n", "noprofile", "norc"];
    const PLAIN_SET_OPTIONS: &[&str] = &[
        "errexit", "nounset", "xtrace", "verbose", "noglob", "noexec", "pipefail",
    ];
    if let Some(o) = reading.options.iter().find(|o| {
        if o.name == "o" {
            !o.value
                .as_deref()
                .is_some_and(|v| PLAIN_SET_OPTIONS.contains(&v))
        } else {
            !PLAIN_OPTIONS.contains(&o.name.as_str())
        }
    }) {
        return opaque(format!(
            "{base} option {} changes how the script is read or what runs before it",
            o.name
        ));
    }
    if !has(&reading.options, "c") {
        return opaque(format!(
            "{base} reads its script from a file or from its input: the gateway cannot see it"
        ));
    }
    // `sh -c SCRIPT [NAME [ARG…]]`: the script is the first operand.
    match args.get(reading.operand_start) {
        Some(script) => Step::Shell {
            own: reading.operand_start + 1,
            lines: vec![script.clone()],
        },
        None => opaque(format!("{base} -c without a script")),
    }
}

fn awk_step(args: &[String]) -> Step {
    let Some(table) = table("awk") else {
        return opaque("no table for awk");
    };
    let reading = getopt(table, args);
    if !reading.unknown.is_empty() {
        return opaque("awk with options the gateway does not read");
    }
    for file_opt in ["file", "exec", "include", "load"] {
        if has(&reading.options, file_opt) {
            return opaque("awk runs a program file");
        }
    }
    let mut programs: Vec<&str> = reading
        .options
        .iter()
        .filter(|o| o.name == "source")
        .filter_map(|o| o.value.as_deref())
        .collect();
    if programs.is_empty() {
        match args.get(reading.operand_start) {
            Some(p) => programs.push(p),
            None => return opaque("awk without a program reads none"),
        }
    }
    let runs = programs.iter().any(|p| {
        p.contains("system")
            || p.contains('|')
            || p.contains('>')
            || p.contains("getline")
            || p.contains('@')
            || p.contains("ENVIRON")
    });
    if runs {
        opaque("the awk program can run commands or write files (system, |, >, getline)")
    } else {
        Step::Program
    }
}

fn sed_step(args: &[String]) -> Step {
    let Some(table) = table("sed") else {
        return opaque("no table for sed");
    };
    let reading = getopt(table, args);
    if !reading.unknown.is_empty() {
        return opaque("sed with options the gateway does not read");
    }
    if has(&reading.options, "file") {
        return opaque("sed runs a script file");
    }
    if has(&reading.options, "sandbox") {
        return Step::Program;
    }
    let mut scripts: Vec<&str> = reading
        .options
        .iter()
        .filter(|o| o.name == "expression")
        .filter_map(|o| o.value.as_deref())
        .collect();
    if scripts.is_empty()
        && let Some(s) = args.get(reading.operand_start)
    {
        scripts.push(s);
    }
    // GNU sed's `e` command and `s///e` flag run shell commands; `w`/`W` write files. A
    // script with any `e` or `w` is read conservatively.
    if scripts
        .iter()
        .any(|s| s.contains('e') || s.contains('w') || s.contains('W'))
    {
        opaque("the sed script may run commands (e) or write files (w)")
    } else {
        Step::Program
    }
}

fn find_step(args: &[String]) -> Step {
    for a in args {
        match a.as_str() {
            "-exec" | "-execdir" | "-ok" | "-okdir" => {
                return opaque(format!("find {a} runs commands"));
            }
            "-delete" => return opaque("find -delete deletes what it finds"),
            _ => {}
        }
    }
    Step::Program
}

fn tar_step(args: &[String]) -> Step {
    let reading = read_options("tar", args);
    for danger in [
        "to-command",
        "use-compress-program",
        "checkpoint-action",
        "info-script",
        "rsh-command",
        "rmt-command",
    ] {
        if reading
            .options
            .iter()
            .any(|o| o.name == danger || o.candidates.iter().any(|c| c == danger))
        {
            return opaque(format!("tar --{danger} runs a command"));
        }
    }
    if reading.unknown.iter().any(|u| {
        u.starts_with("--to")
            || u.starts_with("--use")
            || u.starts_with("--check")
            || u.starts_with("--info")
            || u.starts_with("--new")
            || u.starts_with("--rsh")
            || u.starts_with("--rmt")
            || u.starts_with("-I")
            || u.starts_with("-F")
    }) {
        return opaque("tar with an option that may run a command");
    }
    Step::Program
}

/// git subcommands that never run configured or given code by themselves.
const GIT_SUBCOMMANDS: &[&str] = &[
    "status",
    "log",
    "diff",
    "show",
    "add",
    "commit",
    "push",
    "pull",
    "fetch",
    "clone",
    "checkout",
    "switch",
    "restore",
    "branch",
    "tag",
    "merge",
    "rebase",
    "reset",
    "revert",
    "stash",
    "rm",
    "mv",
    "init",
    "remote",
    "config",
    "blame",
    "grep",
    "describe",
    "rev-parse",
    "rev-list",
    "ls-files",
    "ls-tree",
    "ls-remote",
    "cat-file",
    "shortlog",
    "reflog",
    "cherry-pick",
    "clean",
    "gc",
    "fsck",
    "archive",
    "format-patch",
    "am",
    "apply",
    "worktree",
    "notes",
    "sparse-checkout",
    "version",
    "help",
    "show-ref",
    "symbolic-ref",
    "update-ref",
    "count-objects",
    "prune",
    "repack",
    "whatchanged",
    "range-diff",
    "cherry",
    "name-rev",
];

fn git_step(args: &[String]) -> Step {
    let Some(table) = table("git") else {
        return opaque("no table for git");
    };
    let reading = getopt(table, args);
    if !reading.unknown.is_empty() {
        return opaque("git with global options the gateway does not read");
    }
    for o in &reading.options {
        if matches!(o.name.as_str(), "c" | "config-env" | "exec-path") && o.value.is_some() {
            return opaque(format!("git --{} changes what git runs", o.name));
        }
    }
    let Some(sub) = args.get(reading.operand_start) else {
        return Step::Program;
    };
    if !GIT_SUBCOMMANDS.contains(&sub.as_str()) {
        return opaque(format!(
            "git {sub:?} is not a subcommand the gateway knows (it may be an alias that runs a command)"
        ));
    }
    let rest = args.get(reading.operand_start + 1..).unwrap_or(&[]);
    let runs_code = rest.iter().any(|a| {
        a == "-x"
            || a.starts_with("--exec")
            || a.starts_with("--upload-pack")
            || a.starts_with("--receive-pack")
            || a == "-u"
            || a.starts_with("--template")
            || a.starts_with("--ext-diff")
            || a.starts_with("--extcmd")
            || a == "--tool"
            || a.starts_with("--config")
            || a == "-c"
    });
    if runs_code {
        opaque(format!("git {sub} with an option that runs a command"))
    } else {
        Step::Program
    }
}

/// The wrappers that run a command given in their arguments.
fn wrapper_step(base: &str, args: &[String]) -> Option<Step> {
    let step = match base {
        "env" => env_step(args),
        "nice" => {
            // `nice -10 cmd` (obsolete adjustment) first.
            let skip = usize::from(args.first().is_some_and(|a| {
                a.len() > 1
                    && a.starts_with('-')
                    && a[1..]
                        .trim_start_matches('-')
                        .chars()
                        .all(|c| c.is_ascii_digit())
                    && !a[1..].trim_start_matches('-').is_empty()
            }));
            match wrapper_options("nice", args.get(skip..).unwrap_or(&[])) {
                Ok((_, start)) => end_or_wrap(args, start + skip, Step::Program),
                Err(s) => s,
            }
        }
        "nohup" | "stdbuf" | "setsid" | "time" | "exec" => match wrapper_options(base, args) {
            Ok((_, start)) => end_or_wrap(args, start, Step::Program),
            Err(s) => s,
        },
        "command" => match wrapper_options("command", args) {
            Ok((options, start)) => {
                if has(&options, "v") || has(&options, "V") {
                    Step::Program
                } else {
                    end_or_wrap(args, start, Step::Program)
                }
            }
            Err(s) => s,
        },
        "timeout" => match wrapper_options("timeout", args) {
            // `timeout [OPTION] DURATION COMMAND [ARG]…`
            Ok((_, start)) => end_or_wrap(args, start + 1, Step::Program),
            Err(s) => s,
        },
        "ionice" => match wrapper_options("ionice", args) {
            Ok((options, start)) => {
                if has(&options, "pid") || has(&options, "pgid") || has(&options, "uid") {
                    Step::Program
                } else {
                    end_or_wrap(args, start, Step::Program)
                }
            }
            Err(s) => s,
        },
        "xargs" => match wrapper_options("xargs", args) {
            Ok((_, start)) => {
                let inner = match args.get(start..) {
                    Some(rest) if !rest.is_empty() => rest.to_vec(),
                    _ => vec!["echo".to_string()],
                };
                Step::Wrapper {
                    own: start + 1,
                    inner,
                    extra_args: true,
                    opaque: None,
                }
            }
            Err(s) => s,
        },
        "sudo" | "doas" => sudo_step(base, args),
        "su" | "runuser" => su_step(base, args),
        "busybox" => match args.first() {
            Some(applet) if !applet.starts_with('-') => wrap(args, 0),
            _ => Step::Program,
        },
        "chroot" => match wrapper_options("chroot", args) {
            Ok((_, start)) => match args.get(start).map(String::as_str) {
                Some("/") if args.len() > start + 1 => wrap(args, start + 1),
                Some(_) => opaque("chroot runs a program from another root directory"),
                None => Step::Program,
            },
            Err(s) => s,
        },
        "flock" => match wrapper_options("flock", args) {
            Ok((options, start)) => {
                // `flock FILE -c COMMAND` (read by flock itself after the file).
                let after_file = args.get(start + 1).map(String::as_str);
                let late_c = matches!(after_file, Some("-c" | "--command"));
                if let Some(cmd) = value(&options, "command").or_else(|| {
                    late_c
                        .then(|| args.get(start + 2).map(String::as_str))
                        .flatten()
                }) {
                    Step::Shell {
                        own: args.len() + 1,
                        lines: vec![cmd.to_string()],
                    }
                } else if late_c {
                    opaque("flock -c without a command")
                } else if args.len() > start + 1 {
                    wrap(args, start + 1)
                } else {
                    Step::Program
                }
            }
            Err(s) => s,
        },
        "nsenter" | "unshare" => match wrapper_options(base, args) {
            Ok((options, start)) => {
                let moves = ["mount", "root", "wd", "all"];
                if base == "nsenter" && options.iter().any(|o| moves.contains(&o.name.as_str())) {
                    opaque(
                        "nsenter into another mount namespace or root runs a program from elsewhere",
                    )
                } else if base == "unshare" && (has(&options, "root") || has(&options, "wd")) {
                    opaque("unshare --root runs a program from another root directory")
                } else if args.len() > start {
                    wrap(args, start)
                } else {
                    opaque(format!("{base} without a command starts a shell"))
                }
            }
            Err(s) => s,
        },
        _ => return None,
    };
    Some(step)
}

/// The wrapper runs nothing when no command follows (`nice` prints the niceness).
fn end_or_wrap(args: &[String], start: usize, alone: Step) -> Step {
    if start >= args.len() {
        alone
    } else {
        wrap(args, start)
    }
}

fn env_step(args: &[String]) -> Step {
    let (options, start) = match wrapper_options("env", args) {
        Ok(x) => x,
        Err(s) => return s,
    };
    if has(&options, "chdir") {
        return opaque("env --chdir changes the directory relative paths resolve in");
    }
    let mut opaque_reason = None;
    let rest = args.get(start..).unwrap_or(&[]);
    let mut idx = 0;
    // `NAME=VALUE` words before the command.
    while let Some(word) = rest.get(idx) {
        match word.split_once('=') {
            Some((name, _)) if !name.is_empty() => {
                if !env_name_is_inert(name) {
                    opaque_reason
                        .get_or_insert(format!("env sets {name}, which can change what runs"));
                }
                idx += 1;
            }
            _ => break,
        }
    }
    let mut inner: Vec<String> = Vec::new();
    for o in options.iter().filter(|o| o.name == "split-string") {
        let Some(text) = o.value.as_deref() else {
            continue;
        };
        let parsed = shell::parse(text);
        if !parsed.is_plain()
            || parsed.commands.len() > 1
            || text.contains("${")
            || text.contains("\\c")
            || text.contains("\\_")
        {
            return opaque("env -S with a string the gateway cannot split with certainty");
        }
        inner.extend(parsed.argv);
    }
    inner.extend(rest.get(idx..).unwrap_or(&[]).iter().cloned());
    if inner.is_empty() {
        // `env` alone prints the environment.
        return match opaque_reason {
            Some(r) => Step::Opaque(r),
            None => Step::Program,
        };
    }
    Step::Wrapper {
        own: start + idx + 1,
        inner,
        extra_args: false,
        opaque: opaque_reason,
    }
}

fn sudo_step(base: &str, args: &[String]) -> Step {
    let (options, start) = match wrapper_options(base, args) {
        Ok(x) => x,
        Err(s) => return s,
    };
    for (name, why) in [
        ("shell", "runs the command through a shell"),
        ("login", "runs a login shell"),
        ("edit", "runs an editor"),
        ("chdir", "changes the directory relative paths resolve in"),
        ("chroot", "runs a program from another root directory"),
    ] {
        if has(&options, name) {
            return opaque(format!("{base} --{name} {why}"));
        }
    }
    let rest = args.get(start..).unwrap_or(&[]);
    let mut idx = 0;
    let mut opaque_reason = None;
    while let Some(word) = rest.get(idx) {
        match word.split_once('=') {
            Some((name, _)) if !name.is_empty() && !name.contains('/') => {
                if !env_name_is_inert(name) {
                    opaque_reason
                        .get_or_insert(format!("{base} sets {name}, which can change what runs"));
                }
                idx += 1;
            }
            _ => break,
        }
    }
    if idx >= rest.len() {
        return match opaque_reason {
            Some(r) => Step::Opaque(r),
            None => Step::Program,
        };
    }
    Step::Wrapper {
        own: start + idx + 1,
        inner: rest.get(idx..).unwrap_or(&[]).to_vec(),
        extra_args: false,
        opaque: opaque_reason,
    }
}

fn su_step(base: &str, args: &[String]) -> Step {
    let Some(table) = table(base) else {
        return opaque(format!("{base}: no option table"));
    };
    let reading = getopt(table, args);
    if let Some(w) = reading.unknown.first() {
        return opaque(format!("{base}: option {w:?} is not known to the gateway"));
    }
    let options = &reading.options;
    if has(options, "shell") {
        return opaque(format!("{base} --shell runs another shell"));
    }
    let operands = &reading.operands;
    if base == "runuser" && has(options, "user") && !operands.is_empty() {
        // `runuser -u USER -- COMMAND…`
        return Step::Wrapper {
            own: args.len() - operands.len() + 1,
            inner: operands.clone(),
            extra_args: false,
            opaque: None,
        };
    }
    let mut user_args = operands.as_slice();
    if user_args.first().is_some_and(|a| a == "-") {
        user_args = user_args.get(1..).unwrap_or(&[]);
    }
    match value(options, "command").or(value(options, "session-command")) {
        // `su [USER] -c CMD`: the user's shell runs CMD; more operands are its arguments.
        Some(cmd) if user_args.len() <= 1 => Step::Shell {
            own: args.len() + 1,
            lines: vec![cmd.to_string()],
        },
        Some(_) => opaque(format!("{base} -c with extra arguments for the shell")),
        None => opaque(format!("{base} without -c starts an interactive shell")),
    }
}

// ---------------------------------------------------------------------------------------------
// Option tables and getopt_long.

/// Whether an option takes an argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArgKind {
    None,
    Required,
    Optional,
}

#[derive(Debug)]
struct OptSpec {
    shorts: Vec<char>,
    longs: Vec<&'static str>,
    arg: ArgKind,
    canonical: String,
}

/// A program's option grammar.
#[derive(Debug)]
struct Table {
    specs: Vec<OptSpec>,
    /// Stop at the first operand (the program's optstring starts with `+`, or it runs a
    /// command given after its options).
    stop_at_operand: bool,
    /// Long options are written with one dash (`find -name`), and never abbreviated.
    long_only: bool,
}

impl Table {
    fn short(&self, c: char) -> Option<&OptSpec> {
        self.specs.iter().find(|s| s.shorts.contains(&c))
    }

    /// The long options `name` can stand for (exact match first, else unique-prefix
    /// candidates, deduplicated by option).
    fn long(&self, name: &str) -> Vec<&OptSpec> {
        if let Some(exact) = self.specs.iter().find(|s| s.longs.contains(&name)) {
            return vec![exact];
        }
        if self.long_only || name.is_empty() {
            return Vec::new();
        }
        let mut out: Vec<&OptSpec> = Vec::new();
        for s in &self.specs {
            if s.longs.iter().any(|l| l.starts_with(name))
                && !out.iter().any(|o| o.canonical == s.canonical)
            {
                out.push(s);
            }
        }
        out
    }

    /// The canonical name of the option spelled `-x`, `--name` (or `-name` in a long-only
    /// table), if this table has it.
    fn canonical(&self, spelled: &str) -> Option<&str> {
        if let Some(name) = spelled.strip_prefix("--") {
            let name = name.split('=').next().unwrap_or(name);
            return self
                .specs
                .iter()
                .find(|s| s.longs.contains(&name))
                .map(|s| s.canonical.as_str());
        }
        let rest = spelled.strip_prefix('-')?;
        let mut chars = rest.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) => self.short(c).map(|s| s.canonical.as_str()),
            (Some(_), Some(_)) if self.long_only => self
                .specs
                .iter()
                .find(|s| s.longs.contains(&rest))
                .map(|s| s.canonical.as_str()),
            _ => None,
        }
    }
}

fn parse_table(spec: &'static str) -> Table {
    let mut words = spec.split_whitespace().peekable();
    let mut stop_at_operand = false;
    let mut long_only = false;
    while let Some(flag) = words.peek().copied() {
        match flag {
            "+" => stop_at_operand = true,
            "@" => long_only = true,
            _ => break,
        }
        words.next();
    }
    let mut specs = Vec::new();
    for word in words {
        let (names, arg) = if let Some(n) = word.strip_suffix("=?") {
            (n, ArgKind::Optional)
        } else if let Some(n) = word.strip_suffix('=') {
            (n, ArgKind::Required)
        } else {
            (word, ArgKind::None)
        };
        let mut shorts = Vec::new();
        let mut longs = Vec::new();
        for alt in names.split('|') {
            let mut chars = alt.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) if !long_only => shorts.push(c),
                (Some(_), _) => longs.push(alt),
                _ => {}
            }
        }
        let canonical = match (longs.first(), shorts.first()) {
            (Some(l), _) => (*l).to_string(),
            (None, Some(c)) => c.to_string(),
            (None, None) => continue,
        };
        specs.push(OptSpec {
            shorts,
            longs,
            arg,
            canonical,
        });
    }
    Table {
        specs,
        stop_at_operand,
        long_only,
    }
}

/// Option tables, as data: `name|alias|x=` (one option with its spellings; one-letter
/// spellings are short options; `=` takes an argument, `=?` an optional one, attached). A
/// leading `+` stops at the first operand; `@` marks single-dash long options (`find`).
const TABLES: &[(&str, &str)] = &[
    (
        "rm",
        "f|force i I interactive=? one-file-system no-preserve-root preserve-root=? r|R|recursive d|dir v|verbose help version",
    ),
    (
        "rmdir",
        "ignore-fail-on-non-empty p|parents v|verbose help version",
    ),
    (
        "cp",
        "a|archive attributes-only backup=? b copy-contents d f|force i|interactive H l|link L|dereference n|no-clobber P|no-dereference p preserve=? no-preserve= parents r|R|recursive reflink=? remove-destination sparse= strip-trailing-slashes s|symbolic-link S|suffix= t|target-directory= T|no-target-directory u update=? v|verbose x|one-file-system Z context=? debug keep-directory-symlink help version",
    ),
    (
        "mv",
        "backup=? b debug exchange f|force i|interactive n|no-clobber no-copy strip-trailing-slashes S|suffix= t|target-directory= T|no-target-directory u update=? v|verbose Z|context help version",
    ),
    (
        "ln",
        "backup=? b d|F|directory f|force i|interactive L|logical n|no-dereference P|physical r|relative s|symbolic S|suffix= t|target-directory= T|no-target-directory v|verbose help version",
    ),
    (
        "chmod",
        "c|changes f|silent|quiet v|verbose no-preserve-root preserve-root reference= R|recursive r|w|x|X|s|t|u|g|o|a|mode-letter help version",
    ),
    (
        "chown",
        "c|changes f|silent|quiet v|verbose dereference h|no-dereference from= no-preserve-root preserve-root reference= R|recursive H L P help version",
    ),
    (
        "chgrp",
        "c|changes f|silent|quiet v|verbose dereference h|no-dereference no-preserve-root preserve-root reference= R|recursive H L P help version",
    ),
    (
        "mkdir",
        "m|mode= p|parents v|verbose Z context=? help version",
    ),
    (
        "touch",
        "a c|no-create d|date= f h|no-dereference m r|reference= t= time= help version",
    ),
    (
        "truncate",
        "c|no-create o|io-blocks r|reference= s|size= help version",
    ),
    (
        "shred",
        "f|force n|iterations= random-source= s|size= u remove=? v|verbose x|exact z|zero help version",
    ),
    (
        "ls",
        "a|all A|almost-all author b|escape block-size= B|ignore-backups c C color=? d|directory D|dired f F|classify=? file-type format= full-time g group-directories-first G|no-group h|human-readable si H|dereference-command-line dereference-command-line-symlink-to-dir hide= hyperlink=? indicator-style= i|inode I|ignore= k|kibibytes l L|dereference m n|numeric-uid-gid N|literal o p q|hide-control-chars show-control-chars Q|quote-name quoting-style= r|reverse R|recursive s|size S sort= time= time-style= t T|tabsize= u U v w|width= x X Z|context zero 1 help version",
    ),
    (
        "cat",
        "A|show-all b|number-nonblank e E|show-ends n|number s|squeeze-blank t T|show-tabs u v|show-nonprinting help version",
    ),
    (
        "head",
        "c|bytes= n|lines= q|quiet|silent v|verbose z|zero-terminated help version",
    ),
    (
        "tail",
        "c|bytes= f|follow=? F max-unchanged-stats= n|lines= pid= q|quiet|silent retry s|sleep-interval= v|verbose z|zero-terminated debug help version",
    ),
    (
        "grep",
        "E|extended-regexp F|fixed-strings G|basic-regexp P|perl-regexp e|regexp= f|file= i|ignore-case no-ignore-case w|word-regexp x|line-regexp z|null-data s|no-messages v|invert-match V|version help m|max-count= b|byte-offset n|line-number line-buffered H|with-filename h|no-filename label= o|only-matching q|quiet|silent binary-files= a|text I d|directories= D|devices= r|recursive R|dereference-recursive include= exclude= exclude-from= exclude-dir= L|files-without-match l|files-with-matches c|count T|initial-tab Z|null A|after-context= B|before-context= C|context= NUM|group-separator= no-group-separator color=? colour=? U|binary y",
    ),
    (
        "systemctl",
        "t|type= p|property= P a|all r|recursive reverse after before with-dependencies l|full value show-types job-mode= T|show-transaction i ignore-inhibitors check-inhibitors= q|quiet no-warn no-block wait user system failed no-wall global no-reload no-ask-password kill-whom= kill-value= s|signal= what= f|force message= now root= image= image-policy= runtime preset-mode= n|lines= o|output= firmware-setup boot-loader-menu= boot-loader-entry= reboot-argument= plain H|host= M|machine= state= timestamp= mkdir marked read-only drop-in= when= dry-run legend=? no-pager help version",
    ),
    (
        "journalctl",
        "system user M|machine= m|merge D|directory= i|file= root= image= image-policy= namespace= S|since= U|until= c|cursor= after-cursor= cursor-file= b|boot=? u|unit= user-unit= t|identifier= T|exclude-identifier= p|priority= facility= g|grep= case-sensitive=? k|dmesg o|output= output-fields= n|lines=? r|reverse show-cursor utc x|catalog no-hostname no-full|full a|all f|follow no-tail q|quiet e|pager-end no-pager rotate vacuum-size= vacuum-files= vacuum-time= flush relinquish-var smart-relinquish-var sync list-boots list-fields list-field-names list-namespaces list-catalog dump-catalog update-catalog header disk-usage verify verify-key= setup-keys force interval= F|field= N|fields help version",
    ),
    (
        "kill",
        "s|signal= n= l|list=? L|table q|queue= timeout= p|pid a|all verbose help version",
    ),
    (
        "pkill",
        "s|signal= e|echo c|count f|full g|pgroup= G|group= i|ignore-case n|newest o|oldest O|older= P|parent= s|session= t|terminal= u|euid= U|uid= x|exact F|pidfile= L|logpidfile r|runstates= A|ignore-ancestors cgroup= ns= nslist= q|queue= help V|version",
    ),
    (
        "killall",
        "e|exact g|process-group i|interactive I|ignore-case n|ns= o|older-than= q|quiet r|regexp s|signal= u|user= v|verbose w|wait y|younger-than= Z|context= l|list V|version help",
    ),
    (
        "git",
        "+ C= c= config-env= exec-path=? html-path man-path info-path p|paginate P|no-pager no-replace-objects no-lazy-fetch no-optional-locks no-advice bare git-dir= work-tree= namespace= super-prefix= literal-pathspecs glob-pathspecs noglob-pathspecs icase-pathspecs list-cmds= attr-source= v|version h|help",
    ),
    (
        "tar",
        "A|catenate|concatenate c|create d|diff|compare delete r|append t|list test-label u|update x|extract|get C|directory= f|file= j|bzip2 J|xz z|gzip|gunzip|ungzip Z|compress|uncompress zstd lzma lzip lzop a|auto-compress I|use-compress-program= v|verbose p|preserve-permissions|same-permissions k|keep-old-files keep-newer-files keep-directory-symlink skip-old-files overwrite overwrite-dir remove-files O|to-stdout to-command= P|absolute-names h|dereference T|files-from= X|exclude-from= exclude= g|listed-incremental= G|incremental K|starting-file= L|tape-length= M|multi-volume F|info-script|new-volume-script= b|blocking-factor= N|newer|after-date= newer-mtime= m|touch o|no-same-owner same-owner owner= group= mode= mtime= numeric-owner S|sparse W|verify w|interactive|confirmation U|unlink-first recursive-unlink checkpoint=? checkpoint-action= transform|xform= strip-components= wildcards no-wildcards rsh-command= rmt-command= warning= totals=? H|format= force-local i|ignore-zeros l|check-links s|same-order|preserve-order R|block-number B|read-full-records V|label= xattrs no-xattrs acls no-acls selinux no-selinux exclude-vcs exclude-vcs-ignores exclude-caches one-file-system index-file= null no-null no-recursion recursion show-transformed-names sort= occurrence=? ignore-failed-read anchored no-anchored ignore-case no-ignore-case help version",
    ),
    (
        "sed",
        "n|quiet|silent debug e|expression= f|file= follow-symlinks i|in-place=? l|line-length= posix E|r|regexp-extended s|separate sandbox u|unbuffered z|null-data help version",
    ),
    (
        "awk",
        "+ f|file= F|field-separator= v|assign= b|characters-as-bytes c|traditional C|copyright d|dump-variables=? D|debug=? e|source= E|exec= g|gen-pot h|help i|include= I|trace k|csv l|load= L|lint=? M|bignum N|use-lc-numeric n|non-decimal-data o|pretty-print=? O|optimize p|profile=? P|posix r|re-interval s|no-optimize S|sandbox t|lint-old V|version W=",
    ),
    (
        "sh",
        "+ c s i l|login e u x v f n a b h m p C E H P T B k t o= O= noprofile norc posix restricted r rcfile= init-file= noediting debugger dump-strings dump-po-strings pretty-print help verbose version",
    ),
    (
        "env",
        "+ i|ignore-environment 0|null u|unset= C|chdir= S|split-string= block-signal=? default-signal=? ignore-signal=? list-signal-handling v|debug help version",
    ),
    ("nice", "+ n|adjustment= help version"),
    ("nohup", "+ help version"),
    ("stdbuf", "+ i|input= o|output= e|error= help version"),
    ("setsid", "+ c|ctty f|fork w|wait h|help V|version"),
    (
        "time",
        "+ f|format= o|output= a|append p|portability v|verbose q|quiet help V|version",
    ),
    ("exec", "+ c l a="),
    ("command", "+ p v V"),
    (
        "timeout",
        "+ f|foreground k|kill-after= p|preserve-status s|signal= v|verbose help version",
    ),
    (
        "ionice",
        "+ c|class= n|classdata= p|pid P|pgid t|ignore u|uid h|help V|version",
    ),
    (
        "xargs",
        "+ 0|null a|arg-file= d|delimiter= E e|eof=? I replace=? i L max-lines=? l n|max-args= o|open-tty P|max-procs= p|interactive process-slot-var= r|no-run-if-empty s|max-chars= show-limits t|verbose x|exit help version",
    ),
    (
        "sudo",
        "+ A|askpass b|background B|bell C|close-from= D|chdir= E|preserve-env=? e|edit g|group= H|set-home h|help|host=? i|login K|remove-timestamp k|reset-timestamp l|list n|non-interactive P|preserve-groups p|prompt= R|chroot= r|role= S|stdin s|shell t|type= T|command-timeout= U|other-user= u|user= V|version v|validate N|no-update",
    ),
    ("doas", "+ C= L n s u="),
    (
        "su",
        "c|command= session-command= f|fast g|group= G|supp-group= l|login m|p|preserve-environment P|pty s|shell= w|whitelist-environment= h|help V|version",
    ),
    (
        "runuser",
        "c|command= session-command= f|fast g|group= G|supp-group= l|login m|p|preserve-environment P|pty s|shell= u|user= w|whitelist-environment= h|help V|version",
    ),
    ("chroot", "+ groups= userspec= skip-chdir help version"),
    (
        "flock",
        "+ s|shared x|e|exclusive u|unlock n|nb|nonblock w|timeout= E|conflict-exit-code= o|close c|command= F|no-fork verbose h|help V|version",
    ),
    (
        "nsenter",
        "+ a|all t|target= m|mount=? u|uts=? i|ipc=? n|net=? N|net-socket= p|pid=? C|cgroup=? U|user=? T|time=? user-parent S|setuid= G|setgid= preserve-credentials keep-caps r|root=? w|wd=? W|wdns= e|env F|no-fork Z|follow-context c|join-cgroup h|help V|version",
    ),
    (
        "unshare",
        "+ m|mount=? u|uts=? i|ipc=? n|net=? p|pid=? U|user=? C|cgroup=? T|time=? f|fork kill-child=? mount-proc=? map-user= map-users= map-group= map-groups= map-auto r|map-root-user c|map-current-user propagation= setgroups= R|root= w|wd= S|setuid= G|setgid= monotonic= boottime= l|load-interp= keep-caps h|help V|version",
    ),
    (
        "find",
        "@ H L P D= O= name= iname= path= ipath= wholename= iwholename= regex= iregex= regextype= lname= ilname= type= xtype= user= group= uid= gid= nouser nogroup perm= size= empty links= inum= samefile= newer= anewer= cnewer= mtime= atime= ctime= mmin= amin= cmin= used= maxdepth= mindepth= mount xdev noleaf ignore_readdir_race noignore_readdir_race depth d daystart follow fstype= context= readable writable executable true false prune quit print print0 printf= fprint= fprint0= fprintf= ls fls= delete exec execdir ok okdir files0-from= not and or a o help version",
    ),
];

fn tables() -> &'static HashMap<&'static str, Table> {
    static TABLES_PARSED: OnceLock<HashMap<&'static str, Table>> = OnceLock::new();
    TABLES_PARSED.get_or_init(|| {
        TABLES
            .iter()
            .map(|(name, spec)| (*name, parse_table(spec)))
            .collect()
    })
}

fn table(program: &str) -> Option<&'static Table> {
    let name = match program {
        "bash" | "dash" | "zsh" | "ksh" | "ash" | "mksh" | "posh" | "yash" | "ksh93" | "lksh"
        | "rbash" => "sh",
        "gawk" | "mawk" | "nawk" => "awk",
        "gsed" => "sed",
        "gtar" => "tar",
        "pgrep" => "pkill",
        "egrep" | "fgrep" => "grep",
        other => other,
    };
    tables().get(name)
}

/// Whether the gateway has an option table for this program (by base name).
pub fn has_option_table(program: &str) -> bool {
    let base = program.rsplit('/').next().unwrap_or(program);
    table(base).is_some()
}

/// One option as the program reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedOption {
    /// The option's canonical name (its first long name, or its letter).
    pub name: String,
    /// How it was written (`-r` from `-fr`, `--recur`).
    pub spelled: String,
    /// Its argument, if it took one.
    pub value: Option<String>,
    /// An ambiguous abbreviation: every option it could be (`name` is then `?`).
    pub candidates: Vec<String>,
}

/// A program's arguments, read with its option table (or conservatively without one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgsReading {
    /// Whether a table was used.
    pub table: bool,
    /// The options, in order.
    pub options: Vec<ParsedOption>,
    /// The operands (non-option words), in order.
    pub operands: Vec<String>,
    /// Words that look like options but that the table does not know (the program will
    /// usually refuse them; they are matched conservatively), and, for a program without a
    /// table, every word that starts with `-`.
    pub unknown: Vec<String>,
    /// Index (into the arguments) of the first operand where reading stopped.
    operand_start: usize,
}

fn getopt(table: &Table, args: &[String]) -> ArgsReading {
    let mut r = ArgsReading {
        table: true,
        options: Vec::new(),
        operands: Vec::new(),
        unknown: Vec::new(),
        operand_start: args.len(),
    };
    let mut i = 0;
    let mut stopped = false;
    let mut first_operand: Option<usize> = None;
    while let Some(word) = args.get(i) {
        i += 1;
        if word == "--" {
            r.operand_start = i.min(args.len());
            r.operands
                .extend(args.get(i..).unwrap_or(&[]).iter().cloned());
            stopped = true;
            break;
        }
        let long_form = if table.long_only {
            word.strip_prefix('-')
                .filter(|w| w.len() > 1 && !w.starts_with('-'))
        } else {
            word.strip_prefix("--").filter(|w| !w.is_empty())
        };
        if let Some(body) = long_form {
            let (name, attached) = match body.split_once('=') {
                Some((n, v)) if !table.long_only => (n, Some(v.to_string())),
                _ => (body, None),
            };
            let specs = table.long(name);
            match specs.as_slice() {
                [] => r.unknown.push(word.clone()),
                [spec] => {
                    let value = match (spec.arg, attached) {
                        (ArgKind::None, Some(_)) => {
                            r.unknown.push(word.clone());
                            continue;
                        }
                        (ArgKind::None, None) => None,
                        (ArgKind::Optional, v) => v,
                        (ArgKind::Required, Some(v)) => Some(v),
                        (ArgKind::Required, None) => {
                            let v = args.get(i).cloned();
                            if v.is_some() {
                                i += 1;
                            }
                            v
                        }
                    };
                    r.options.push(ParsedOption {
                        name: spec.canonical.clone(),
                        spelled: word.clone(),
                        value,
                        candidates: Vec::new(),
                    });
                }
                many => r.options.push(ParsedOption {
                    name: "?".into(),
                    spelled: word.clone(),
                    value: attached,
                    candidates: many.iter().map(|s| s.canonical.clone()).collect(),
                }),
            }
            continue;
        }
        let cluster = word
            .strip_prefix('-')
            .filter(|w| !w.is_empty() && !table.long_only);
        if let Some(cluster) = cluster {
            for (pos, c) in cluster.char_indices() {
                let Some(spec) = table.short(c) else {
                    r.unknown.push(format!("-{c}"));
                    continue;
                };
                let rest = cluster.get(pos + c.len_utf8()..).unwrap_or("");
                let value = match spec.arg {
                    ArgKind::None => None,
                    ArgKind::Optional => (!rest.is_empty()).then(|| rest.to_string()),
                    ArgKind::Required if !rest.is_empty() => Some(rest.to_string()),
                    ArgKind::Required => {
                        let v = args.get(i).cloned();
                        if v.is_some() {
                            i += 1;
                        }
                        v
                    }
                };
                r.options.push(ParsedOption {
                    name: spec.canonical.clone(),
                    spelled: format!("-{c}"),
                    value,
                    candidates: Vec::new(),
                });
                if spec.arg != ArgKind::None {
                    break;
                }
            }
            continue;
        }
        // An operand.
        first_operand.get_or_insert(i - 1);
        if table.stop_at_operand {
            r.operand_start = i - 1;
            r.operands
                .extend(args.get(i - 1..).unwrap_or(&[]).iter().cloned());
            stopped = true;
            break;
        }
        r.operands.push(word.clone());
    }
    if !stopped {
        r.operand_start = first_operand.unwrap_or(args.len());
    }
    r
}

/// `kill -9`, `kill -KILL`, `kill -SIGKILL`: a signal written as an option.
fn signal_word(word: &str) -> Option<&str> {
    let w = word.strip_prefix('-')?;
    let numeric = !w.is_empty() && w.chars().all(|c| c.is_ascii_digit());
    let named = w.len() > 1
        && w.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '+' || c == '-');
    (numeric || named).then_some(w)
}

/// Reads a program's arguments as the program does (by base name).
pub fn read_options(program: &str, args: &[String]) -> ArgsReading {
    let base = program.rsplit('/').next().unwrap_or(program);
    let Some(table) = table(base) else {
        return ArgsReading {
            table: false,
            options: Vec::new(),
            operands: args
                .iter()
                .filter(|a| !(a.len() > 1 && a.starts_with('-')))
                .cloned()
                .collect(),
            unknown: args
                .iter()
                .filter(|a| a.len() > 1 && a.starts_with('-') && *a != "--")
                .cloned()
                .collect(),
            operand_start: 0,
        };
    };
    let mut owned: Vec<String>;
    let mut args = args;
    // Old-style `tar czf FILE DIR`: a first word without a dash is a cluster of letters whose
    // arguments follow in order.
    if (base == "tar" || base == "gtar")
        && let Some(first) = args
            .first()
            .filter(|f| !f.starts_with('-') && !f.is_empty())
    {
        owned = Vec::new();
        let mut next = 1;
        for c in first.chars() {
            owned.push(format!("-{c}"));
            if table.short(c).is_some_and(|s| s.arg == ArgKind::Required)
                && let Some(v) = args.get(next)
            {
                owned.push(v.clone());
                next += 1;
            }
        }
        owned.extend(args.get(next..).unwrap_or(&[]).iter().cloned());
        args = &owned;
    }
    let mut reading;
    if matches!(base, "kill" | "pkill" | "pgrep" | "killall") {
        let mut signals = Vec::new();
        let rest: Vec<String> = args
            .iter()
            .filter(|a| match signal_word(a) {
                Some(s) => {
                    signals.push(ParsedOption {
                        name: "signal".into(),
                        spelled: (*a).clone(),
                        value: Some(s.to_string()),
                        candidates: Vec::new(),
                    });
                    false
                }
                None => true,
            })
            .cloned()
            .collect();
        reading = getopt(table, &rest);
        reading.options.extend(signals);
    } else {
        reading = getopt(table, args);
    }
    // A program that stops at its first operand (git SUBCOMMAND …): what follows is read
    // without a table.
    if table.stop_at_operand {
        for w in reading.operands.iter().skip(1) {
            if w.len() > 1 && w.starts_with('-') && w != "--" {
                reading.unknown.push(w.clone());
            }
        }
    }
    reading
}

/// Could `word` (an argument of a program without a table, or one its table does not know)
/// be the option spelled `spelled`? Leans to yes.
fn could_be(word: &str, spelled: &str) -> bool {
    if word == spelled {
        return true;
    }
    let Some(w) = word.strip_prefix('-').filter(|w| !w.is_empty()) else {
        return false;
    };
    let spelled_long = spelled.strip_prefix("--");
    let spelled_short = spelled.strip_prefix('-').filter(|s| !s.starts_with('-'));
    if let Some(long_w) = w.strip_prefix('-') {
        let name = long_w.split('=').next().unwrap_or(long_w);
        if name.is_empty() {
            return false;
        }
        return match (spelled_long, spelled_short) {
            (Some(l), _) => l.split('=').next().unwrap_or(l).starts_with(name),
            // A long option of an unknown program may be any short option's long name.
            (None, Some(_)) => true,
            _ => false,
        };
    }
    match (spelled_long, spelled_short) {
        (Some(l), _) => l.starts_with(w) || w.starts_with(l),
        (None, Some(s)) => {
            let mut sc = s.chars();
            match (sc.next(), sc.next()) {
                (Some(c), None) => w.contains(c),
                // `-name` style: the same word or a prefix of it.
                _ => s.starts_with(w) || w == s,
            }
        }
        _ => false,
    }
}

impl ArgsReading {
    /// Whether the command uses the option spelled `spelled` (`-r`, `--recursive`, or
    /// `-name` for single-dash programs). `loose` (deny and review rules): also anything that
    /// could be it — an ambiguous abbreviation among whose candidates it is, a word the table
    /// does not know, and for a program without a table any cluster holding the letter or
    /// any long option that could abbreviate or alias it.
    pub fn uses(&self, program: &str, spelled: &str, loose: bool) -> bool {
        let base = program.rsplit('/').next().unwrap_or(program);
        let canonical = table(base).and_then(|t| t.canonical(spelled));
        if let Some(canon) = canonical {
            let known = self
                .options
                .iter()
                .any(|o| o.name == canon || (loose && o.candidates.iter().any(|c| c == canon)));
            return known || (loose && self.unknown.iter().any(|w| could_be(w, spelled)));
        }
        if loose {
            self.options.iter().any(|o| o.spelled == spelled)
                || self.unknown.iter().any(|w| could_be(w, spelled))
        } else {
            self.options.iter().any(|o| o.spelled == spelled)
                || self.unknown.iter().any(|w| w == spelled)
        }
    }

    /// Whether every option the command uses is among `allowed` (strict: an ambiguous
    /// abbreviation or an unknown word fails).
    pub fn only_uses(&self, program: &str, allowed: &[String]) -> bool {
        let base = program.rsplit('/').next().unwrap_or(program);
        let t = table(base);
        let canon: Vec<&str> = allowed
            .iter()
            .filter_map(|a| t.and_then(|t| t.canonical(a)))
            .collect();
        self.options
            .iter()
            .all(|o| o.candidates.is_empty() && canon.contains(&o.name.as_str()))
            && self.unknown.iter().all(|w| allowed.contains(w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(line: &str) -> Vec<ExecItem> {
        analyse(line, &[])
    }

    fn finals(line: &str) -> Vec<(Vec<String>, bool)> {
        items(line)
            .into_iter()
            .filter(|i| !i.wrapper)
            .map(|i| (i.argv, i.opaque.is_some()))
            .collect()
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn plain_program() {
        assert_eq!(finals("rm -rf D"), vec![(s(&["rm", "-rf", "D"]), false)]);
        assert_eq!(
            finals("/usr/bin/rm -rf D"),
            vec![(s(&["/usr/bin/rm", "-rf", "D"]), false)]
        );
        assert!(finals("./rm -rf D")[0].1);
        assert!(finals("/tmp/x")[0].1);
    }

    #[test]
    fn wrappers_unwrap() {
        for line in [
            "env rm -rf D",
            "env -i LANG=C rm -rf D",
            "env -u HOME rm -rf D",
            "env -S 'rm -rf D'",
            "nice rm -rf D",
            "nice -n 5 rm -rf D",
            "nice -5 rm -rf D",
            "nohup rm -rf D",
            "timeout 5 rm -rf D",
            "timeout -s KILL 5 rm -rf D",
            "command rm -rf D",
            "exec rm -rf D",
            "stdbuf -o0 rm -rf D",
            "setsid -f rm -rf D",
            "ionice -c3 rm -rf D",
            "time rm -rf D",
            "sudo rm -rf D",
            "sudo -u root -- rm -rf D",
            "doas -u root rm -rf D",
            "busybox rm -rf D",
            "chroot / rm -rf D",
            "flock /tmp/l rm -rf D",
            "nsenter -t 1 -n rm -rf D",
            "unshare -n rm -rf D",
            "sh -c 'rm -rf D'",
            "bash -ec 'rm -rf D'",
            "su -c 'rm -rf D'",
            "su root -c 'rm -rf D'",
            "flock /tmp/l -c 'rm -rf D'",
            "env nice timeout 5 sudo rm -rf D",
            "sh -c \"sh -c 'rm -rf D'\"",
        ] {
            let f = finals(line);
            assert_eq!(f, vec![(s(&["rm", "-rf", "D"]), false)], "{line}");
        }
        let x = items("xargs rm -rf");
        assert!(
            x.last()
                .is_some_and(|i| i.extra_args && i.argv == s(&["rm", "-rf"]))
        );
    }

    #[test]
    fn opaque_forms() {
        for line in [
            "python3 -c 'import shutil'",
            "perl -MFile::Path -e 'rmtree(1)'",
            "node -e x",
            "ruby -e x",
            "bash",
            "bash script.sh",
            "sh -s",
            "find D -delete",
            "find D -exec rm -rf {} +",
            "awk 'BEGIN{system(\"id\")}'",
            "env LD_PRELOAD=/x ls",
            "env PATH=/tmp ls",
            "eval ls",
            "source x",
            ". x",
            "ls; rm x",
            "ls $(id)",
            "LD_PRELOAD=/x ls",
            "sudo -s ls",
            "su",
            "env -S 'sh -c \"$X\"'",
            "xargs sh -c 'rm -rf D'",
            "git -c core.pager=sh log",
            "tar --to-command=sh -xf a.tar",
            "tar -xf a.tar -I sh",
            "strace rm -rf D",
            "fish -c 'rm -rf D'",
            "echo 'unterminated",
            "env -C / rm -rf D",
            "chroot /tmp/x ls",
            "rsync -e 'sh -c id' a b:c",
            "rsync -ave ssh a b:c",
            "rsync --rsh=sh a b:c",
            "rsync --server -e sh . x",
            "rsync --server -logDtpre'sh' . x",
        ] {
            assert!(
                items(line).iter().any(|i| i.opaque.is_some()),
                "{line}: {:?}",
                items(line)
            );
        }
        // The server side's protocol flags ride on `-e.` in its short-option group.
        for line in [
            "rsync --server --sender -logDtpre.iLsfxCIvu . /srv/",
            "flock /tmp rsync --server -e.iLsfxCIvu . x",
        ] {
            assert!(
                items(line).iter().all(|i| i.opaque.is_none()),
                "{line}: {:?}",
                items(line)
            );
        }
        assert!(
            analyse("ls", &[("LD_PRELOAD".into(), "/x".into())])[0]
                .opaque
                .is_some()
        );
        assert!(
            analyse("ls", &[("LANG".into(), "C".into())])[0]
                .opaque
                .is_none()
        );
    }

    #[test]
    fn getopt_long_readings() {
        let uses = |line: &str, opt: &str| {
            let argv = s(&line.split(' ').collect::<Vec<_>>());
            let r = read_options(&argv[0], &argv[1..]);
            (r.uses(&argv[0], opt, true), r.uses(&argv[0], opt, false))
        };
        assert_eq!(uses("rm --rec -f D", "-r"), (true, true));
        assert_eq!(uses("rm --recur D", "--recursive"), (true, true));
        assert_eq!(uses("rm -dr D", "-r"), (true, true));
        assert_eq!(uses("rm -fR D", "-r"), (true, true));
        assert_eq!(uses("rm D -rf", "-r"), (true, true));
        assert_eq!(uses("rm -- -r", "-r"), (false, false));
        assert_eq!(uses("rm -f D", "-r"), (false, false));
        // An ambiguous abbreviation counts loosely.
        assert_eq!(uses("rm --ver D", "--verbose"), (true, false));
        assert_eq!(uses("tar czf x.tgz D", "-f"), (true, true));
        assert_eq!(uses("kill -9 1", "-s"), (true, true));
        // No table: conservative.
        assert_eq!(uses("frob -xr D", "-r"), (true, false));
        assert_eq!(uses("frob --recursive D", "-r"), (true, false));
        assert_eq!(uses("frob -x D", "-r"), (false, false));
        // chmod -r is a mode, not recursion.
        assert_eq!(uses("chmod -r f", "-R"), (false, false));
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        fn wrapper() -> impl Strategy<Value = &'static str> {
            prop::sample::select(vec![
                "env",
                "env -i",
                "env --",
                "env LANG=C",
                "nice",
                "nice -n 3",
                "nohup",
                "timeout 5",
                "timeout -s KILL 9",
                "command",
                "exec",
                "stdbuf -o0",
                "setsid -w",
                "ionice -c3",
                "time",
                "sudo",
                "sudo -u root --",
                "doas",
                "busybox",
                "chroot /",
                "unshare",
                "/usr/bin/env",
            ])
        }

        /// One way of spelling an option set for rm: clusters, long forms, abbreviations.
        fn rm_option(recursive: bool) -> impl Strategy<Value = String> {
            let r = prop::sample::select(vec![
                "-r",
                "-R",
                "--recursive",
                "--recursiv",
                "--recur",
                "--rec",
                "--re",
                "-fr",
                "-rf",
                "-dr",
                "-vR",
                "-fRv",
            ]);
            let other = prop::sample::select(vec![
                "-f",
                "-v",
                "-d",
                "--force",
                "--verbose",
                "--verb",
                "-fv",
                "-i",
            ]);
            if recursive {
                r.prop_map(String::from).boxed()
            } else {
                other.prop_map(String::from).boxed()
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(
                std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
            ))]

            /// Total on hostile input: never panics, never empty.
            #[test]
            fn analyse_is_total(line in any::<String>(), name in "[A-Z_]{1,8}") {
                let items = analyse(&line, &[(name, "x".into())]);
                prop_assert!(!items.is_empty());
            }

            /// Any chain of wrappers runs the same final command.
            #[test]
            fn wrappers_unwrap_to_what_they_run(chain in prop::collection::vec(wrapper(), 0..5), args in prop::collection::vec("[a-z/]{1,6}", 0..3)) {
                let inner = format!("rm -rf {}", args.join(" "));
                let line = format!("{} {inner}", chain.join(" "));
                let items = analyse(&line, &[]);
                let last = items.last().unwrap();
                prop_assert!(last.opaque.is_none(), "{line}: {items:?}");
                prop_assert_eq!(&last.argv, &shell::parse(&inner).argv, "{}", line);
                prop_assert_eq!(items.iter().filter(|i| i.wrapper).count() + 1, items.len());
            }

            /// The option is found however it is spelled and wherever it stands; without it
            /// (or after `--`) it is not.
            #[test]
            fn options_read_as_getopt_long_does(before in prop::collection::vec(rm_option(false), 0..3), r in rm_option(true), after in prop::collection::vec(rm_option(false), 0..3), operand_first in any::<bool>()) {
                let mut args: Vec<String> = before.clone();
                if operand_first { args.insert(0, "D".into()); }
                args.push(r.clone());
                args.extend(after.iter().cloned());
                let reading = read_options("rm", &args);
                prop_assert!(reading.uses("rm", "-r", false), "{args:?}");
                prop_assert!(reading.uses("rm", "--recursive", true), "{args:?}");
                let mut without: Vec<String> = before.clone();
                without.extend(after.iter().cloned());
                without.push("--".into());
                without.push(r);
                let reading = read_options("rm", &without);
                prop_assert!(!reading.uses("rm", "-r", true), "{without:?}");
            }
        }
    }
}
