//! `gatehouse mask [--config FILE] [--profile NAME] [--json] [--report]`: the masking core as a Unix
//! filter. Streams stdin to stdout in constant memory whatever the input size; when the input goes
//! quiet for a moment the held-back tail is flushed (masked as it stands), so `tail -f | gatehouse
//! mask` keeps flowing. `--report` prints findings as JSON lines (rule, field, offset, length —
//! never values) on stderr.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use gatehouse_core::StreamMasker;
use gatehouse_masking::{MaskingConfig, MaskingEngine};

use super::{CommandError, CommandResult};

/// Arguments of `mask`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A gateway config (its `[masking]` section is used) or a masking config file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Profile to apply (default: the config's default profile).
    #[arg(long)]
    pub profile: Option<String>,
    /// Input is JSON: use the streaming JSON masker.
    #[arg(long)]
    pub json: bool,
    /// Print findings (rule, offset, length — never values) to stderr.
    #[arg(long)]
    pub report: bool,
}

/// How long input may be quiet before the held-back tail is flushed.
const IDLE_FLUSH: Duration = Duration::from_millis(50);
const CHUNK: usize = 64 * 1024;

/// Loads the masking config from a gateway config (`[masking]`) or a standalone masking file.
pub fn load_masking_config(path: &std::path::Path) -> Result<MaskingConfig, CommandError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CommandError::Failed(format!("cannot read {}: {e}", path.display())))?;
    let locate = |e: toml::de::Error| {
        let (line, column) = crate::config::line_col(&text, e.span().map(|s| s.start).unwrap_or(0));
        CommandError::Config(crate::config::ConfigError {
            file: path.display().to_string(),
            line,
            column,
            message: e.message().to_string(),
        })
    };
    let table: toml::Table = toml::from_str(&text).map_err(locate)?;
    if table.contains_key("masking") {
        #[derive(serde::Deserialize)]
        struct Wrapper {
            #[serde(default)]
            masking: MaskingConfig,
        }
        // Only the masking section matters here; the rest is checked by check-config.
        let partial: toml::Table = table.into_iter().filter(|(k, _)| k == "masking").collect();
        let text = toml::to_string(&partial).map_err(|e| CommandError::Failed(e.to_string()))?;
        let wrapper: Wrapper = toml::from_str(&text).map_err(|e| {
            CommandError::Failed(format!("{}: [masking]: {}", path.display(), e.message()))
        })?;
        Ok(wrapper.masking)
    } else {
        toml::from_str(&text).map_err(locate)
    }
}

/// Runs the command.
pub fn run(args: Args) -> CommandResult {
    let config = match &args.config {
        Some(path) => load_masking_config(path)?,
        None => MaskingConfig::default(),
    };
    let engine = MaskingEngine::new(&config)
        .map_err(|e| CommandError::Failed(format!("masking config: {e}")))?;
    if let Some(p) = &args.profile
        && !engine.has_profile(p)
    {
        return Err(CommandError::Usage(format!(
            "no masking profile named `{p}`"
        )));
    }
    let profile = args.profile.as_deref();
    let mut masker: Box<dyn StreamMasker> = if args.json {
        Box::new(engine.json_stream(profile, Some("stdin".into())))
    } else {
        Box::new(engine.text_stream(profile, Some("stdin".into())))
    };

    // A reader thread feeds chunks; the main thread masks, writes, and flushes on idle.
    let (tx, rx) = mpsc::sync_channel::<std::io::Result<Vec<u8>>>(4);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        loop {
            let mut buf = vec![0u8; CHUNK];
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.send(Ok(buf)).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.send(Err(e));
                    break;
                }
            }
        }
    });
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut stderr = std::io::stderr().lock();
    let mut buf = Vec::with_capacity(CHUNK + 1024);
    let write_err = |e: std::io::Error| CommandError::Failed(format!("writing stdout: {e}"));
    loop {
        buf.clear();
        match rx.recv_timeout(IDLE_FLUSH) {
            Ok(Ok(chunk)) => masker.push(&chunk, &mut buf),
            Ok(Err(e)) => return Err(CommandError::Failed(format!("reading stdin: {e}"))),
            Err(mpsc::RecvTimeoutError::Timeout) => masker.flush(&mut buf),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                masker.finish(&mut buf);
                out.write_all(&buf).map_err(write_err)?;
                report(&mut *masker, args.report, &mut stderr);
                break;
            }
        }
        if !buf.is_empty() {
            out.write_all(&buf).map_err(write_err)?;
            out.flush().map_err(write_err)?;
        }
        report(&mut *masker, args.report, &mut stderr);
    }
    out.flush().map_err(write_err)?;
    Ok(ExitCode::SUCCESS)
}

fn report(masker: &mut dyn StreamMasker, enabled: bool, stderr: &mut impl Write) {
    let findings = masker.take_findings();
    if !enabled {
        return;
    }
    for f in findings {
        if let Ok(line) = serde_json::to_string(&f) {
            let _ = writeln!(stderr, "{line}");
        }
    }
}
