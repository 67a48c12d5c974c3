//! One session channel, end to end: collect `pty-req` / `env`, decide the `exec` / `shell` /
//! `subsystem` request, then pump both directions until either side closes.
//!
//! Two tasks per channel. The *input pump* reads the agent's side (stdin, EOF, resizes, signals,
//! close) and writes upstream; the *output pump* reads the target's side, runs stdout and stderr
//! through their stream maskers (flushed on an idle timer) and the egress guard, writes the
//! recording, then the agent. Every write waits for the peer's SSH window, and every russh channel
//! is read until it ends — a slow reader stalls its writer, never fills memory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gatehouse_core::command::ExecFacts;
use gatehouse_core::{
    BinaryHandling, ChunkVerdict, Classified, Decision, EgressSite, EgressStream, EventBody,
    ExecCommand, Finding, Gate, GateContext, HoldMode, Operation, OperationResult, Outcome,
    RecordingFrame, RecordingKind, RecordingSink, Review, SshOperation, StreamContext,
    StreamMasker, TextDetector, Verdict, tighten,
};
use russh::server::Msg;
use russh::{Channel, ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, watch};

use crate::session::ChannelContext;
use crate::{EXIT_APPROVAL_TIMED_OUT, EXIT_DENIED, EXIT_GATEWAY_ERROR, EXIT_UNAVAILABLE};

/// Stdin bytes held while a command waits for approval; beyond this the agent's side is simply
/// not read (backpressure) until the decision.
const MAX_EARLY_INPUT: usize = 1024 * 1024;
/// Findings kept per operation result (the rest are counted in the message only).
const MAX_FINDINGS: usize = 1000;
/// How long the target's EOF is held back waiting for its exit status (see `OutputPump::run`):
/// a command that closes its output and keeps running gets its EOF passed on after this, so a
/// client waiting for that EOF before it ends its input cannot deadlock with it.
const EOF_HOLD: Duration = Duration::from_secs(5);

type SharedSink = Arc<Mutex<Option<Box<dyn RecordingSink>>>>;

#[derive(Debug, Clone)]
struct PtyRequest {
    term: String,
    cols: u32,
    rows: u32,
    pix_width: u32,
    pix_height: u32,
    modes: Vec<(russh::Pty, u32)>,
}

enum StartRequest {
    Exec(Vec<u8>),
    Shell,
    Subsystem(String),
}

#[derive(Default)]
struct Setup {
    pty: Option<PtyRequest>,
    env: Vec<(String, String)>,
    early_input: Vec<Bytes>,
    early_len: usize,
    early_eof: bool,
}

impl Setup {
    fn newline(&self) -> &'static str {
        if self.pty.is_some() { "\r\n" } else { "\n" }
    }
}

/// Runs a session channel to its end.
pub(crate) async fn run_session_channel(
    ctx: Arc<ChannelContext>,
    channel: Channel<Msg>,
    handle: russh::server::Handle,
) {
    let (mut from_client, to_client) = channel.split();
    let mut setup = Setup::default();
    let start = loop {
        let Some(msg) = from_client.wait().await else {
            return;
        };
        match msg {
            ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                pix_width,
                pix_height,
                terminal_modes,
                ..
            } => {
                setup.pty = Some(PtyRequest {
                    term,
                    cols: col_width,
                    rows: row_height,
                    pix_width,
                    pix_height,
                    modes: terminal_modes,
                });
            }
            // The session loop replied and recorded the decision; policy is pure, so this is
            // the same decision.
            ChannelMsg::SetEnv {
                variable_name,
                variable_value,
                ..
            } if setup.env.len() < 64 && env_allowed(&ctx, &variable_name) => {
                setup.env.push((variable_name, variable_value));
            }
            ChannelMsg::WindowChange {
                col_width,
                row_height,
                ..
            } => {
                if let Some(p) = setup.pty.as_mut() {
                    p.cols = col_width;
                    p.rows = row_height;
                }
            }
            ChannelMsg::Data { data } if setup.early_len + data.len() <= MAX_EARLY_INPUT => {
                setup.early_len += data.len();
                setup.early_input.push(data);
            }
            ChannelMsg::Eof => setup.early_eof = true,
            ChannelMsg::Exec { command, .. } => break StartRequest::Exec(command),
            ChannelMsg::RequestShell { .. } => break StartRequest::Shell,
            ChannelMsg::RequestSubsystem { name, .. } => break StartRequest::Subsystem(name),
            ChannelMsg::Close => return,
            _ => {}
        }
    };

    let conn = &ctx.conn;
    let pipeline = &conn.proxy.pipeline;
    let nl = setup.newline();
    let (operation, pre_decision, raw) = match &start {
        StartRequest::Exec(bytes) => match std::str::from_utf8(bytes) {
            Ok(line) => {
                // The variables the client set for this channel are part of what runs.
                let command = ExecCommand::parse(line).with_env(setup.env.clone());
                match command.file_transfer_tool() {
                    // scp, rsync, git and sftp-server speak their own protocols on stdin and
                    // stdout: an operation kind of their own, never masked (masking would
                    // corrupt the stream); egress-guarded and recorded by size.
                    Some(tool) => (
                        Operation::Ssh(SshOperation::FileTransfer {
                            tool: tool.to_string(),
                            command,
                        }),
                        None,
                        true,
                    ),
                    None => (Operation::Ssh(SshOperation::Exec(command)), None, false),
                }
            }
            Err(_) => (
                Operation::Ssh(SshOperation::Exec(ExecCommand::parse(
                    String::from_utf8_lossy(bytes).into_owned(),
                ))),
                Some(Decision::deny(
                    "gateway:invalid-command",
                    "the command line is not valid UTF-8",
                )),
                false,
            ),
        },
        StartRequest::Shell => (
            Operation::Ssh(SshOperation::Shell {
                pty: setup.pty.is_some(),
            }),
            None,
            false,
        ),
        // A subsystem speaks a binary protocol: masking would corrupt it. It is egress-guarded
        // and recorded by size.
        StartRequest::Subsystem(name) => (
            Operation::Ssh(SshOperation::Subsystem { name: name.clone() }),
            None,
            true,
        ),
    };
    let gate = &conn.proxy.gate;
    let gctx = ctx.gate_context();
    let classified = match &operation {
        Operation::Ssh(
            SshOperation::Exec(cmd) | SshOperation::FileTransfer { command: cmd, .. },
        ) => Classified::new(operation.clone()).with_facts(ExecFacts::of(cmd)),
        _ => Classified::new(operation.clone()),
    };
    let mut decision = gate.decide(&gctx, &classified);
    if let Some(stricter) = pre_decision {
        decision = tighten(&decision, stricter);
    }
    // A transfer's data is framed (SFTP packets, scp's declared sizes, rsync and git's
    // protocols): masking would corrupt it, so it passes unmasked only where the policy says
    // `binary = "raw"`. Refused before anything starts: no partial file, no hang.
    if raw && decision.binary != BinaryHandling::Raw {
        let stricter = Decision::deny(
            RULE_BINARY_NOT_RAW,
            format!(
                "its data cannot be masked without corrupting it, and rule '{}' does not pass it unmasked (binary = \"raw\")",
                decision.rule_id
            ),
        );
        decision = tighten(&decision, stricter);
    }
    let index = conn.next_operation();
    let started_at = Instant::now();
    let refusal = Refusal {
        to_client: &to_client,
        newline: nl,
    };
    let outcome = match gate
        .record(&gctx, index, operation.clone(), &decision)
        .await
    {
        Err(outcome) => outcome,
        Ok(()) if decision.verdict == Verdict::Review => {
            let review = Review {
                index,
                operation: &operation,
                shown: &operation,
                decision: &decision,
                mode: HoldMode::UntilDecided,
            };
            match gate.open(&gctx, &review).await {
                Err(outcome) => outcome,
                Ok(opened) => {
                    if opened.waits() {
                        // The id is what the agent hands its approvers.
                        refusal
                            .line(&format!(
                                "gatehouse: waiting for approval {} (rule '{}': {})",
                                opened.id(),
                                decision.rule_id,
                                decision.reason
                            ))
                            .await;
                    }
                    gate.hold(&gctx, review, opened, held(&mut from_client, &mut setup))
                        .await
                }
            }
        }
        Ok(()) => Gate::settle(decision),
    };
    let decision = match outcome {
        Outcome::Allowed { decision, approval } => {
            if let Some(id) = approval {
                refusal
                    .line(&format!("gatehouse: approval {id} granted"))
                    .await;
            }
            decision
        }
        Outcome::Abandoned { .. } => {
            // The channel is gone: nobody to tell.
            ctx.record_result(index, "abandoned", 0, started_at, Vec::new())
                .await;
            return;
        }
        refused => {
            let (text, code, status) = render_refusal(&refused, &operation);
            refusal.send(&text, code).await;
            ctx.record_result(index, status, 0, started_at, Vec::new())
                .await;
            return;
        }
    };

    let upstream = match &ctx.upstream {
        Ok(u) => u.clone(),
        Err(reason) => {
            refusal.send(reason, EXIT_GATEWAY_ERROR).await;
            ctx.record_result(index, "upstream unavailable", 0, started_at, Vec::new())
                .await;
            return;
        }
    };
    let up_channel = match upstream.channel_open_session().await {
        Ok(c) => c,
        Err(e) => {
            let msg = format!(
                "gatehouse: target '{}' refused a session channel: {e}",
                ctx.target.name
            );
            refusal.send(&msg, EXIT_GATEWAY_ERROR).await;
            ctx.record_result(index, "upstream refused", 0, started_at, Vec::new())
                .await;
            return;
        }
    };
    let (from_upstream, to_upstream) = up_channel.split();
    if let Err(e) = start_upstream(&to_upstream, &setup, &start).await {
        let msg = format!("gatehouse: target '{}' failed: {e}", ctx.target.name);
        refusal.send(&msg, EXIT_GATEWAY_ERROR).await;
        ctx.record_result(index, "upstream failed", 0, started_at, Vec::new())
            .await;
        return;
    }

    // Recording: terminals replay as asciicast; exec output as a transcript; subsystems by size.
    let kind = match (&setup.pty, &start) {
        (_, StartRequest::Subsystem(_)) => None,
        (Some(p), _) => Some(RecordingKind::Terminal {
            cols: clamp_u16(p.cols),
            rows: clamp_u16(p.rows),
        }),
        (None, _) => Some(RecordingKind::Exec),
    };
    let terminal = matches!(kind, Some(RecordingKind::Terminal { .. }));
    let sink: SharedSink = Arc::new(Mutex::new(None));
    if let Some(kind) = kind {
        match pipeline.recorder.open_recording(&conn.session, kind).await {
            Ok(s) => *sink.lock().await = Some(s),
            Err(e) => {
                tracing::error!(error = %e, "could not open recording");
                let _ = to_upstream.close().await;
                refusal
                    .send(
                        "gatehouse: the session recording is unavailable; refusing (fail closed)",
                        EXIT_GATEWAY_ERROR,
                    )
                    .await;
                ctx.record_result(index, "recording unavailable", 0, started_at, Vec::new())
                    .await;
                return;
            }
        }
    }

    for chunk in std::mem::take(&mut setup.early_input) {
        if to_upstream.data_bytes(chunk).await.is_err() {
            break;
        }
    }
    if setup.early_eof {
        let _ = to_upstream.eof().await;
    }

    let (done_tx, done_rx) = watch::channel(false);
    let output = OutputPump {
        ctx: ctx.clone(),
        to_client,
        handle,
        sink: sink.clone(),
        idle_flush: conn.proxy.config.idle_flush(),
        interactive: setup.pty.is_some(),
        newline: nl,
        profile: decision.masking_profile.clone(),
        raw,
        binary: decision.binary,
        rule_id: decision.rule_id.clone(),
        index,
        chunk_hook: pipeline.hooks.wants_chunks(),
    };
    let output_task = tokio::spawn(output.run(from_upstream, done_tx));
    input_pump(&mut from_client, &to_upstream, &sink, terminal, done_rx).await;
    drop(from_client);
    // Either side is done: close the target's channel now, so the output pump sees its close.
    let _ = to_upstream.close().await;
    let summary = match output_task.await {
        Ok(s) => s,
        Err(_) => OutputSummary {
            status: "gateway error".into(),
            ..OutputSummary::default()
        },
    };

    if let Some(sink) = sink.lock().await.take() {
        match sink.seal().await {
            Ok(seal) => {
                let details = serde_json::json!({ "index": index, "seal": seal });
                let _ = ctx
                    .record(EventBody::Other {
                        name: "ssh_recording_sealed".into(),
                        details,
                    })
                    .await;
                conn.add_seal(seal);
            }
            Err(e) => {
                let _ = ctx
                    .record(EventBody::Error {
                        side: gatehouse_core::Side::Gateway,
                        message: format!("recording could not be sealed: {e}"),
                    })
                    .await;
            }
        }
    }
    ctx.record_result(
        index,
        &summary.status,
        summary.bytes_out,
        started_at,
        summary.findings,
    )
    .await;
}

/// Whether an `env` request may set `name`: the listener's allow-list and the gate's decision.
fn env_allowed(ctx: &ChannelContext, name: &str) -> bool {
    let operation = Operation::Ssh(SshOperation::Env {
        name: name.to_string(),
    });
    ctx.conn.proxy.config.env_allowed(name)
        && ctx
            .conn
            .proxy
            .gate
            .decide(&ctx.gate_context(), &Classified::new(operation))
            .verdict
            == Verdict::Allow
}

/// What a refusal names (with a trailing space), nothing for a plain command: `shell `,
/// `subsystem 'sftp' `, `scp transfer `.
fn operation_kind(operation: &Operation) -> String {
    match operation {
        Operation::Ssh(SshOperation::Exec(_)) => String::new(),
        Operation::Ssh(SshOperation::Shell { .. }) => "shell ".into(),
        Operation::Ssh(SshOperation::Subsystem { name }) => format!("subsystem '{name}' "),
        Operation::Ssh(SshOperation::FileTransfer { tool, .. }) => format!("{tool} transfer "),
        _ => "request ".into(),
    }
}

impl ChannelContext {
    pub(crate) fn gate_context(&self) -> GateContext<'_> {
        GateContext {
            session: &self.conn.session,
            identity: &self.identity,
            target: &self.target,
        }
    }

    async fn record(&self, body: EventBody) -> Result<(), gatehouse_core::RecordError> {
        self.conn
            .record(Some(&self.identity), Some(&self.target), body)
            .await
    }

    async fn record_result(
        &self,
        index: u64,
        status: &str,
        bytes_out: u64,
        started_at: Instant,
        findings: Vec<Finding>,
    ) {
        let body = EventBody::OperationResult(OperationResult {
            index,
            status: status.to_string(),
            rows: None,
            bytes_out,
            duration_us: u64::try_from(started_at.elapsed().as_micros()).unwrap_or(u64::MAX),
            findings,
        });
        if let Err(e) = self.record(body).await {
            tracing::error!(error = %e, "could not record operation result");
        }
    }
}

fn clamp_u16(v: u32) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}

/// Writes the gateway's own refusal: one stderr line, an exit status, EOF, close.
struct Refusal<'a> {
    to_client: &'a ChannelWriteHalf<Msg>,
    newline: &'static str,
}

impl Refusal<'_> {
    async fn line(&self, text: &str) {
        let msg = format!("{text}{}", self.newline);
        let _ = self
            .to_client
            .extended_data_bytes(1, msg.into_bytes())
            .await;
    }

    async fn send(&self, text: &str, status: u32) {
        self.line(text).await;
        let _ = self.to_client.exit_status(status).await;
        let _ = self.to_client.eof().await;
        let _ = self.to_client.close().await;
    }
}

/// The gateway's own rule for a transfer the policy does not pass unmasked.
const RULE_BINARY_NOT_RAW: &str = "gateway:binary-not-raw";

/// How an outcome other than allowed or abandoned reads on the channel: the stderr line, the
/// exit status (the table in `docs/DESIGN.md`) and the operation result's status.
fn render_refusal(outcome: &Outcome, operation: &Operation) -> (String, u32, &'static str) {
    match outcome {
        Outcome::Denied { decision } => (
            format!(
                "gatehouse: {}denied by rule '{}': {}",
                operation_kind(operation),
                decision.rule_id,
                decision.reason
            ),
            EXIT_DENIED,
            if decision.rule_id == RULE_BINARY_NOT_RAW {
                "refused: binary"
            } else {
                "denied"
            },
        ),
        Outcome::ApprovalDenied {
            approval,
            by,
            justification,
            ..
        } => (
            format!("gatehouse: approval {approval} denied by {by}: {justification}"),
            EXIT_DENIED,
            "approval denied",
        ),
        Outcome::ApprovalTimedOut { approval, .. } => (
            format!("gatehouse: approval {approval} timed out; the command did not run"),
            EXIT_APPROVAL_TIMED_OUT,
            "approval timed out",
        ),
        Outcome::ApprovalsUnavailable { reason, .. } => (
            format!("gatehouse: approvals are unavailable ({reason}); try again later"),
            EXIT_UNAVAILABLE,
            "approvals unavailable",
        ),
        Outcome::AuditUnavailable { .. } => (
            "gatehouse: the audit log is unavailable; refusing to run unrecorded; try again later"
                .into(),
            EXIT_UNAVAILABLE,
            "audit unavailable",
        ),
        // Not produced while the session is held until decided; read as "retry later".
        _ => (
            format!("gatehouse: {}; try again later", outcome.name()),
            EXIT_UNAVAILABLE,
            "unavailable",
        ),
    }
}

/// Resolves when the agent closes the channel (or the connection ends) while its command is
/// held for approval: the gate then abandons the request. Meanwhile it keeps reading the agent's
/// side, so the connection never wedges, buffering stdin, EOF and resizes for the command (up
/// to [`MAX_EARLY_INPUT`]; beyond that the agent's side is not read until the decision).
async fn held(from_client: &mut ChannelReadHalf, setup: &mut Setup) {
    loop {
        if setup.early_len >= MAX_EARLY_INPUT {
            std::future::pending::<()>().await;
        }
        match from_client.wait().await {
            Some(ChannelMsg::Data { data }) => {
                setup.early_len += data.len();
                setup.early_input.push(data);
            }
            Some(ChannelMsg::Eof) => setup.early_eof = true,
            Some(ChannelMsg::WindowChange {
                col_width,
                row_height,
                ..
            }) => {
                if let Some(p) = setup.pty.as_mut() {
                    p.cols = col_width;
                    p.rows = row_height;
                }
            }
            Some(ChannelMsg::Close) | None => return,
            Some(_) => {}
        }
    }
}

/// Sends pty, env and the start request to the target. Only the start request wants a reply;
/// the output pump turns a refusal into an error for the agent.
async fn start_upstream(
    to_upstream: &ChannelWriteHalf<russh::client::Msg>,
    setup: &Setup,
    start: &StartRequest,
) -> Result<(), russh::Error> {
    if let Some(p) = &setup.pty {
        to_upstream
            .request_pty(
                false,
                &p.term,
                p.cols,
                p.rows,
                p.pix_width,
                p.pix_height,
                &p.modes,
            )
            .await?;
    }
    for (name, value) in &setup.env {
        to_upstream.set_env(false, name, value).await?;
    }
    match start {
        StartRequest::Exec(command) => to_upstream.exec(true, command.clone()).await,
        StartRequest::Shell => to_upstream.request_shell(true).await,
        StartRequest::Subsystem(name) => to_upstream.request_subsystem(true, name).await,
    }
}

/// Agent → target: stdin, EOF, resizes, signals, close. Ends when the agent closes or the output
/// side finished (then nothing the agent sends can matter).
async fn input_pump(
    from_client: &mut ChannelReadHalf,
    to_upstream: &ChannelWriteHalf<russh::client::Msg>,
    sink: &SharedSink,
    terminal: bool,
    mut done: watch::Receiver<bool>,
) {
    loop {
        let msg = tokio::select! {
            m = from_client.wait() => m,
            _ = async { done.wait_for(|d| *d).await.is_ok() } => return,
        };
        match msg {
            Some(ChannelMsg::Data { data }) => {
                if terminal && let Some(s) = sink.lock().await.as_mut() {
                    let _ = s
                        .write(RecordingFrame::Input {
                            data: data.to_vec(),
                        })
                        .await;
                }
                tokio::select! {
                    r = to_upstream.data_bytes(data) => if r.is_err() { return },
                    _ = async { done.wait_for(|d| *d).await.is_ok() } => return,
                }
            }
            Some(ChannelMsg::Eof) => {
                let _ = to_upstream.eof().await;
            }
            Some(ChannelMsg::WindowChange {
                col_width,
                row_height,
                pix_width,
                pix_height,
            }) => {
                let _ = to_upstream
                    .window_change(col_width, row_height, pix_width, pix_height)
                    .await;
                if terminal && let Some(s) = sink.lock().await.as_mut() {
                    let _ = s
                        .write(RecordingFrame::Resize {
                            cols: clamp_u16(col_width),
                            rows: clamp_u16(row_height),
                        })
                        .await;
                }
            }
            Some(ChannelMsg::Signal { signal }) => {
                let _ = to_upstream.signal(signal).await;
            }
            Some(ChannelMsg::Close) | None => {
                let _ = to_upstream.close().await;
                return;
            }
            Some(_) => {}
        }
    }
}

#[derive(Default)]
struct OutputSummary {
    status: String,
    bytes_out: u64,
    findings: Vec<Finding>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Target → agent: masked, egress-checked, recorded, window-respecting.
struct OutputPump {
    ctx: Arc<ChannelContext>,
    to_client: ChannelWriteHalf<Msg>,
    handle: russh::server::Handle,
    sink: SharedSink,
    idle_flush: Duration,
    /// The channel has a pty: a partial line (a prompt, echo) is released after `idle_flush`.
    /// Without one, held bytes wait for the bytes that decide them, or the end of the stream.
    interactive: bool,
    newline: &'static str,
    profile: Option<String>,
    /// The channel speaks a framed protocol (file transfer, subsystem): stdout is never masked.
    raw: bool,
    /// What the policy says about binary or framed output.
    binary: BinaryHandling,
    rule_id: String,
    index: u64,
    /// A gate hook observes each chunk ([`gatehouse_core::GateHooks::wants_chunks`]).
    chunk_hook: bool,
}

/// How one output stream is treated.
enum Mode {
    /// Masked as text while it is text (checked across chunk boundaries).
    Text {
        masker: Box<dyn StreamMasker>,
        detector: TextDetector,
        /// The start of a character whose rest has not arrived (at most 3 bytes): kept from
        /// the masker until it is known to be text.
        carry: Vec<u8>,
    },
    /// Passed unmasked (the policy said `binary = "raw"`): counted and hashed, and the digest
    /// recorded; the bytes are not written to the recording.
    Raw {
        why: &'static str,
        /// Bytes that went out as (unaltered) text before the stream turned raw.
        text_bytes: u64,
    },
}

struct StreamState {
    mode: Mode,
    egress: Box<dyn EgressStream>,
    finished: bool,
    /// Masking changed (or found) something in this stream.
    altered: bool,
    /// SHA-256 and size of every byte sent on this stream, kept when it may turn raw.
    digest: Option<(Sha256, u64)>,
}

/// Why output stopped early.
enum Stop {
    /// The agent went away.
    ClientGone,
    /// The egress guard, the recorder or the binary check refused the bytes; message for the
    /// agent, status recorded, exit status.
    Refused(String, &'static str, u32),
}

impl OutputPump {
    fn stream_state(&self, field: &str) -> StreamState {
        let pipeline = &self.ctx.conn.proxy.pipeline;
        // Only a transfer's stdout carries its protocol; its stderr is text like any other.
        // (The transfer was refused before it started unless the policy passes it raw.)
        let mode = if self.raw && field == "stdout" {
            Mode::Raw {
                why: "file transfer",
                text_bytes: 0,
            }
        } else {
            Mode::Text {
                masker: pipeline.masker.stream(&StreamContext {
                    profile: self.profile.clone(),
                    field: Some(field.to_string()),
                    json: false,
                }),
                detector: TextDetector::new(),
                carry: Vec::new(),
            }
        };
        let digest = (matches!(mode, Mode::Raw { .. }) || self.binary == BinaryHandling::Raw)
            .then(|| (Sha256::new(), 0));
        StreamState {
            mode,
            egress: pipeline.egress.stream(EgressSite::Client),
            finished: false,
            altered: false,
            digest,
        }
    }

    /// Binary data in a text stream: refused, or (policy `binary = "raw"`) the stream switches
    /// to raw for good — but only if masking changed nothing in it: `text` (the rest of the text
    /// before the first binary byte) is masked to the end first, and a stream whose text masking
    /// altered is refused rather than continued raw (that would deliver a silently altered
    /// stream). `rest` (from the first binary byte) then goes out raw.
    #[allow(clippy::too_many_arguments)]
    async fn on_binary(
        &self,
        streams: &mut [StreamState; 2],
        which: Stream,
        text: &[u8],
        rest: &[u8],
        buf: &mut Vec<u8>,
        summary: &mut OutputSummary,
        total_findings: &mut usize,
    ) -> Result<(), Stop> {
        let name = which.name();
        if self.binary != BinaryHandling::Raw {
            return Err(Stop::Refused(
                format!(
                    "gatehouse: output withheld: {name} carries binary data (NUL bytes or invalid UTF-8), which masking cannot rewrite safely, and rule '{}' does not pass it unmasked (binary = \"raw\")",
                    self.rule_id
                ),
                "refused: binary output",
                EXIT_DENIED,
            ));
        }
        let state = &mut streams[which as usize];
        buf.clear();
        if let Mode::Text { masker, .. } = &mut state.mode {
            masker.push(text, buf);
            masker.finish(buf);
            if collect(masker.as_mut(), summary, total_findings) > 0 {
                state.altered = true;
            }
        }
        if state.altered {
            return Err(Stop::Refused(
                format!(
                    "gatehouse: output withheld: {name} turned binary after text that masking changed; rule '{}' passes binary data raw, but the rest of a stream already altered would arrive silently corrupted",
                    self.rule_id
                ),
                "refused: binary output after masked text",
                EXIT_DENIED,
            ));
        }
        self.send(state, which, buf, summary).await?;
        let text_bytes = state.digest.as_ref().map_or(0, |(_, n)| *n);
        state.mode = Mode::Raw {
            why: "binary output",
            text_bytes,
        };
        self.send(state, which, rest, summary).await
    }

    async fn run(
        self,
        mut from_upstream: ChannelReadHalf,
        done: watch::Sender<bool>,
    ) -> OutputSummary {
        let mut streams = [self.stream_state("stdout"), self.stream_state("stderr")];
        let mut summary = OutputSummary {
            status: "closed".into(),
            ..OutputSummary::default()
        };
        let mut total_findings = 0usize;
        let mut flush_at: Option<tokio::time::Instant> = None;
        // The target's EOF, held until its exit status is passed on (until when).
        let mut eof_held: Option<tokio::time::Instant> = None;
        let mut confirmed = false;
        let mut buf = Vec::with_capacity(64 * 1024);
        let result: Result<(), Stop> = async {
            loop {
                let idle = async {
                    match flush_at {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                };
                let hold_over = async {
                    match eof_held {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                };
                let msg = tokio::select! {
                    m = from_upstream.wait() => m,
                    _ = idle => {
                        flush_at = None;
                        for which in [Stream::Stdout, Stream::Stderr] {
                            self.drain(&mut streams, which, Drain::Flush, &mut buf, &mut summary, &mut total_findings).await?;
                        }
                        continue;
                    }
                    _ = hold_over => {
                        eof_held = None;
                        let _ = self.to_client.eof().await;
                        continue;
                    }
                };
                match msg {
                    Some(ChannelMsg::Data { data }) => {
                        self.emit(&mut streams, Stream::Stdout, &data, &mut buf, &mut summary, &mut total_findings).await?;
                        if self.interactive {
                            flush_at = Some(tokio::time::Instant::now() + self.idle_flush);
                        }
                    }
                    Some(ChannelMsg::ExtendedData { data, ext }) => {
                        if ext == 1 {
                            self.emit(&mut streams, Stream::Stderr, &data, &mut buf, &mut summary, &mut total_findings).await?;
                            if self.interactive {
                                flush_at = Some(tokio::time::Instant::now() + self.idle_flush);
                            }
                        }
                    }
                    // The target (OpenSSH's sshd) sends EOF when the command's output ends, and
                    // the exit status when it has reaped the command, often a little later.
                    // Passed on in that order, a client may close before the status arrives:
                    // OpenSSH's ControlMaster closes a multiplexed session channel once both
                    // sides sent EOF, and russh answers a close at once, so the status would
                    // be dropped and the multiplexed `ssh` exit 255. sshd itself answers a
                    // close only after the exit status; here the EOF waits for the status
                    // instead (bounded by `EOF_HOLD`), so the client has it before it can close.
                    Some(ChannelMsg::Eof) => {
                        for which in [Stream::Stdout, Stream::Stderr] {
                            self.drain(&mut streams, which, Drain::Finish, &mut buf, &mut summary, &mut total_findings).await?;
                        }
                        eof_held = Some(tokio::time::Instant::now() + EOF_HOLD);
                    }
                    Some(ChannelMsg::ExitStatus { exit_status }) => {
                        // Output may still follow (the target's EOF comes later): without a pty
                        // a held tail waits for it, never released unfinished.
                        if self.interactive {
                            for which in [Stream::Stdout, Stream::Stderr] {
                                self.drain(&mut streams, which, Drain::Flush, &mut buf, &mut summary, &mut total_findings).await?;
                            }
                        }
                        summary.status = exit_status.to_string();
                        let _ = self.to_client.exit_status(exit_status).await;
                        if eof_held.take().is_some() {
                            let _ = self.to_client.eof().await;
                        }
                    }
                    Some(ChannelMsg::ExitSignal { signal_name, core_dumped, error_message, lang_tag }) => {
                        if self.interactive {
                            for which in [Stream::Stdout, Stream::Stderr] {
                                self.drain(&mut streams, which, Drain::Flush, &mut buf, &mut summary, &mut total_findings).await?;
                            }
                        }
                        summary.status = format!("signal {signal_name:?}");
                        let _ = self
                            .handle
                            .exit_signal_request(self.to_client.id(), signal_name, core_dumped, error_message, lang_tag)
                            .await;
                        if eof_held.take().is_some() {
                            let _ = self.to_client.eof().await;
                        }
                    }
                    Some(ChannelMsg::Success) => confirmed = true,
                    Some(ChannelMsg::Failure) if !confirmed => {
                        return Err(Stop::Refused(
                            format!("gatehouse: target '{}' refused the request", self.ctx.target.name),
                            "upstream refused",
                            EXIT_GATEWAY_ERROR,
                        ));
                    }
                    Some(ChannelMsg::Close) | None => break,
                    Some(_) => {}
                }
            }
            for which in [Stream::Stdout, Stream::Stderr] {
                self.drain(&mut streams, which, Drain::Finish, &mut buf, &mut summary, &mut total_findings).await?;
            }
            // The target closed without an exit status.
            if eof_held.take().is_some() {
                let _ = self.to_client.eof().await;
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {}
            Err(Stop::ClientGone) => summary.status = "client gone".into(),
            Err(Stop::Refused(message, status, code)) => {
                summary.status = status.into();
                let msg = format!("{message}{}", self.newline);
                let _ = self
                    .to_client
                    .extended_data_bytes(1, msg.into_bytes())
                    .await;
                let _ = self.to_client.exit_status(code).await;
                let _ = self.to_client.eof().await;
            }
        }
        for (state, which) in streams.iter_mut().zip([Stream::Stdout, Stream::Stderr]) {
            self.record_raw(state, which).await;
        }
        if total_findings > summary.findings.len() {
            tracing::info!(
                findings = total_findings,
                kept = summary.findings.len(),
                "masking findings capped in the operation result"
            );
        }
        let _ = self.to_client.close().await;
        let _ = done.send(true);
        // Keep reading until the target confirms the close, so russh never wedges on this
        // channel; bounded by the target closing its side (or the connection ending).
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(m) = from_upstream.wait().await {
                if matches!(m, ChannelMsg::Close) {
                    break;
                }
            }
        })
        .await;
        summary
    }

    /// A stream that went out unmasked: its size and SHA-256 go to the audit log, with the rule
    /// that allowed it.
    async fn record_raw(&self, state: &mut StreamState, which: Stream) {
        let Mode::Raw { why, text_bytes } = &state.mode else {
            return;
        };
        let Some((hasher, bytes)) = state.digest.take() else {
            return;
        };
        // The digest covers the whole stream as sent: the text before it turned raw (passed
        // unaltered, and in the recording) and the raw rest.
        let digest = hex::encode(hasher.finalize());
        let details = serde_json::json!({
            "index": self.index,
            "stream": which.name(),
            "why": why,
            "rule_id": self.rule_id,
            "bytes": bytes,
            "text_bytes": text_bytes,
            "sha256": digest,
        });
        if let Err(e) = self
            .ctx
            .record(EventBody::Other {
                name: "ssh_raw_output".into(),
                details,
            })
            .await
        {
            tracing::error!(error = %e, "could not record raw output digest");
        }
    }

    /// Masks `data` from `which`, then sends what the masker released.
    async fn emit(
        &self,
        streams: &mut [StreamState; 2],
        which: Stream,
        data: &[u8],
        buf: &mut Vec<u8>,
        summary: &mut OutputSummary,
        total_findings: &mut usize,
    ) -> Result<(), Stop> {
        if streams[which as usize].finished {
            return Ok(());
        }
        let state = &mut streams[which as usize];
        buf.clear();
        match &mut state.mode {
            Mode::Text {
                masker,
                detector,
                carry,
            } => {
                if let Some(at) = detector.push_at(data) {
                    // The text before the first binary byte (with a completed character carried
                    // over) is text like any other; a broken carried character is binary.
                    let (text, rest) = if at == 0 {
                        let mut rest = std::mem::take(carry);
                        rest.extend_from_slice(data);
                        (Vec::new(), rest)
                    } else {
                        let mut text = std::mem::take(carry);
                        text.extend_from_slice(data.get(..at).unwrap_or_default());
                        (text, data.get(at..).unwrap_or_default().to_vec())
                    };
                    return self
                        .on_binary(streams, which, &text, &rest, buf, summary, total_findings)
                        .await;
                }
                // A character cut at the end of the chunk waits here until it is complete, so
                // no flush can release half of it.
                let keep = detector.pending();
                if carry.is_empty() {
                    let cut = data.len().saturating_sub(keep);
                    masker.push(data.get(..cut).unwrap_or_default(), buf);
                    carry.extend_from_slice(data.get(cut..).unwrap_or_default());
                } else {
                    carry.extend_from_slice(data);
                    let cut = carry.len().saturating_sub(keep);
                    masker.push(carry.get(..cut).unwrap_or_default(), buf);
                    carry.drain(..cut);
                }
                if collect(masker.as_mut(), summary, total_findings) > 0 {
                    state.altered = true;
                }
                self.send(state, which, buf, summary).await
            }
            Mode::Raw { .. } => self.send(state, which, data, summary).await,
        }
    }

    async fn drain(
        &self,
        streams: &mut [StreamState; 2],
        which: Stream,
        how: Drain,
        buf: &mut Vec<u8>,
        summary: &mut OutputSummary,
        total_findings: &mut usize,
    ) -> Result<(), Stop> {
        if streams[which as usize].finished {
            return Ok(());
        }
        // A stream that ends inside a multi-byte character is binary.
        if how == Drain::Finish
            && let Mode::Text {
                detector, carry, ..
            } = &mut streams[which as usize].mode
            && !detector.finish()
        {
            let rest = std::mem::take(carry);
            self.on_binary(streams, which, &[], &rest, buf, summary, total_findings)
                .await?;
        }
        let state = &mut streams[which as usize];
        buf.clear();
        if let Mode::Text { masker, .. } = &mut state.mode {
            match how {
                Drain::Flush => masker.flush(buf),
                Drain::Finish => masker.finish(buf),
            }
            if collect(masker.as_mut(), summary, total_findings) > 0 {
                state.altered = true;
            }
        }
        if how == Drain::Finish {
            state.finished = true;
        }
        self.send(state, which, buf, summary).await
    }

    /// Egress check, recording, then the agent (waiting for its window).
    async fn send(
        &self,
        state: &mut StreamState,
        which: Stream,
        out: &[u8],
        summary: &mut OutputSummary,
    ) -> Result<(), Stop> {
        if out.is_empty() {
            return Ok(());
        }
        // Exactly what the agent will receive (masked), unless a hook stops it here.
        if self.chunk_hook
            && self.ctx.conn.proxy.pipeline.hooks.on_chunk(
                &self.ctx.gate_context(),
                self.index,
                out,
            ) == ChunkVerdict::Stop
        {
            return Err(Stop::Refused(
                "gatehouse: output stopped by the gateway's response hook (GateHooks::on_chunk)"
                    .into(),
                "stopped by hook",
                EXIT_DENIED,
            ));
        }
        if let Err(blocked) = state.egress.check(out) {
            let _ = self
                .ctx
                .record(EventBody::EgressBlocked {
                    site: "client".into(),
                    hits: blocked.hits,
                })
                .await;
            return Err(Stop::Refused(
                "gatehouse: output withheld: it contained credential material the gateway holds"
                    .into(),
                "egress blocked",
                EXIT_GATEWAY_ERROR,
            ));
        }
        if let Some((hasher, bytes)) = state.digest.as_mut() {
            hasher.update(out);
            *bytes += out.len() as u64;
        }
        if matches!(state.mode, Mode::Raw { .. }) {
            // Unmasked bytes stay out of the recording: their digest is recorded instead.
        } else if let Some(sink) = self.sink.lock().await.as_mut() {
            let frame = match which {
                Stream::Stdout => RecordingFrame::Output { data: out.to_vec() },
                Stream::Stderr => RecordingFrame::ErrorOutput { data: out.to_vec() },
            };
            if let Err(e) = sink.write(frame).await {
                tracing::error!(error = %e, "recording write failed");
                return Err(Stop::Refused(
                    "gatehouse: the session recording failed; stopping (fail closed)".into(),
                    "recording failed",
                    EXIT_GATEWAY_ERROR,
                ));
            }
        }
        let bytes = Bytes::copy_from_slice(out);
        let sent = match which {
            Stream::Stdout => self.to_client.data_bytes(bytes).await,
            Stream::Stderr => self.to_client.extended_data_bytes(1, bytes).await,
        };
        if sent.is_err() {
            return Err(Stop::ClientGone);
        }
        summary.bytes_out += out.len() as u64;
        Ok(())
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Drain {
    Flush,
    Finish,
}

/// Moves the masker's findings into the summary; returns how many there were.
fn collect(masker: &mut dyn StreamMasker, summary: &mut OutputSummary, total: &mut usize) -> usize {
    let found = masker.take_findings();
    let n = found.len();
    *total += n;
    let room = MAX_FINDINGS.saturating_sub(summary.findings.len());
    summary.findings.extend(found.into_iter().take(room));
    n
}

/// A `direct-tcpip` (local forwarding) request.
pub(crate) struct ForwardRequest {
    pub(crate) host: String,
    pub(crate) port: u32,
    pub(crate) originator_address: String,
    pub(crate) originator_port: u32,
}

/// Local port forwarding: decided by policy (deny unless a rule allows it), recorded, then the
/// bytes are relayed through the target's own `direct-tcpip` (egress-guarded, counted, not
/// masked: the payload is an arbitrary protocol).
pub(crate) async fn run_direct_tcpip(
    ctx: Arc<ChannelContext>,
    channel: Channel<Msg>,
    reply: russh::server::ChannelOpenHandle,
    request: ForwardRequest,
) {
    let operation = Operation::Ssh(SshOperation::DirectTcpip {
        host: request.host.clone(),
        port: request.port,
    });
    let gate = &ctx.conn.proxy.gate;
    let gctx = ctx.gate_context();
    let mut decision = gate.decide(&gctx, &Classified::new(operation.clone()));
    if decision.verdict == Verdict::Review {
        // A channel open must be answered now: it cannot wait for approvers.
        let stricter = Decision::deny(
            "gateway:forward-review",
            "port forwarding cannot wait for a review; allow or deny it",
        );
        decision = tighten(&decision, stricter);
    }
    let index = ctx.conn.next_operation();
    let started_at = Instant::now();
    let recorded = gate.record(&gctx, index, operation, &decision).await;
    let destination = format!("{}:{}", request.host, request.port);
    let refused = match (&ctx.upstream, recorded, decision.verdict) {
        (_, Err(_), _) => Err(
            "gatehouse: the audit log is unavailable; refusing to forward unrecorded; try again later"
                .into(),
        ),
        (_, Ok(()), Verdict::Deny | Verdict::Review) => Err(format!(
            "gatehouse: forwarding to {destination} denied by rule '{}': {}",
            decision.rule_id, decision.reason
        )),
        (Ok(u), Ok(()), Verdict::Allow) => Ok(u.clone()),
        (Err(reason), Ok(()), _) => Err(reason.clone()),
    };
    let upstream = match refused {
        Ok(u) => u,
        Err(reason) => {
            // The channel-open failure's description is what `ssh -L`/`-D` print.
            reply
                .reject(russh::ChannelOpenFailure::Other {
                    code: 1, // SSH_OPEN_ADMINISTRATIVELY_PROHIBITED
                    reason,
                })
                .await;
            ctx.record_result(index, "denied", 0, started_at, Vec::new())
                .await;
            return;
        }
    };
    let up = match upstream
        .channel_open_direct_tcpip(
            request.host,
            request.port,
            request.originator_address,
            request.originator_port,
        )
        .await
    {
        Ok(c) => c,
        Err(e) => {
            reply
                .reject(russh::ChannelOpenFailure::Other {
                    code: 2, // SSH_OPEN_CONNECT_FAILED
                    reason: format!(
                        "gatehouse: target '{}' could not connect to {destination}: {e}",
                        ctx.target.name
                    ),
                })
                .await;
            ctx.record_result(index, "connect failed", 0, started_at, Vec::new())
                .await;
            return;
        }
    };
    reply.accept().await;
    let (mut from_client, to_client) = channel.split();
    let (mut from_upstream, to_upstream) = up.split();
    let mut egress = ctx.conn.proxy.pipeline.egress.stream(EgressSite::Client);
    let mut bytes_out = 0u64;
    let mut status = "closed".to_string();
    let ctx2 = ctx.clone();
    let (done_tx, done_rx) = watch::channel(false);
    let input = tokio::spawn(async move {
        let sink: SharedSink = Arc::new(Mutex::new(None));
        input_pump(&mut from_client, &to_upstream, &sink, false, done_rx).await;
        let _ = to_upstream.close().await;
    });
    while let Some(msg) = from_upstream.wait().await {
        match msg {
            ChannelMsg::Data { data } => {
                if let Err(blocked) = egress.check(&data) {
                    let _ = ctx2
                        .record(EventBody::EgressBlocked {
                            site: "client".into(),
                            hits: blocked.hits,
                        })
                        .await;
                    status = "egress blocked".into();
                    break;
                }
                bytes_out += data.len() as u64;
                if to_client.data_bytes(data).await.is_err() {
                    break;
                }
            }
            ChannelMsg::Eof => {
                let _ = to_client.eof().await;
            }
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    let _ = to_client.close().await;
    let _ = done_tx.send(true);
    let _ = input.await;
    ctx.record_result(index, &status, bytes_out, started_at, Vec::new())
        .await;
}
