//! One agent connection: authentication (token, gateway key or registered public key), the
//! upstream login, and the russh server callbacks that answer channel requests in order.
//!
//! Replies to channel requests are given here, synchronously in russh's session loop, because
//! russh tracks "wants reply" per channel and only this point sees the right request. Everything
//! that can wait (policy review, upstream I/O, recording) runs in the channel's own tasks
//! ([`crate::channel`]), which read the same requests from the channel stream.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use gatehouse_core::{
    AuthErrorKind, Classified, Credential, Decision, Event, EventBody, GateContext, Identity,
    Operation, RecordingSeal, SessionId, Side, SshOperation, Target, Verdict, tighten,
};
use russh::server::{self, Auth, Msg, Session};
use russh::{Channel, ChannelId, MethodKind, MethodSet};

use crate::config::SshTargetConfig;
use crate::login::LoginName;
use crate::upstream::{self, UpstreamHandle};
use crate::{ProxyInner, SshProxyError};

/// What every channel of a connection shares.
pub(crate) struct Connection {
    pub(crate) proxy: Arc<ProxyInner>,
    pub(crate) session: SessionId,
    pub(crate) client_addr: SocketAddr,
    pub(crate) operations: AtomicU64,
    pub(crate) state: Mutex<ConnectionState>,
}

#[derive(Default)]
pub(crate) struct ConnectionState {
    pub(crate) identity: Option<Identity>,
    pub(crate) target: Option<Target>,
    /// `Err` holds a caller-safe reason every channel reports (unreachable target, host key
    /// mismatch, audit log down).
    pub(crate) upstream: Option<Result<Arc<UpstreamHandle>, String>>,
    pub(crate) seals: Vec<RecordingSeal>,
    pub(crate) end_reason: Option<String>,
    pub(crate) started: bool,
}

/// An authenticated channel's view of its connection.
pub(crate) struct ChannelContext {
    pub(crate) conn: Arc<Connection>,
    pub(crate) identity: Identity,
    pub(crate) target: Target,
    pub(crate) upstream: Result<Arc<UpstreamHandle>, String>,
}

impl Connection {
    fn lock(&self) -> std::sync::MutexGuard<'_, ConnectionState> {
        // A poisoned lock only means another task panicked mid-update; the state stays usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn next_operation(&self) -> u64 {
        self.operations.fetch_add(1, Ordering::SeqCst)
    }

    pub(crate) fn add_seal(&self, seal: RecordingSeal) {
        self.lock().seals.push(seal);
    }

    pub(crate) async fn record(
        &self,
        identity: Option<&Identity>,
        target: Option<&Target>,
        body: EventBody,
    ) -> Result<(), gatehouse_core::RecordError> {
        let event = Event::now(
            self.session.clone(),
            identity.cloned(),
            target.cloned(),
            body,
        );
        self.proxy.pipeline.recorder.record(event).await.map(|_| ())
    }

    fn context(self: &Arc<Self>) -> Option<ChannelContext> {
        let st = self.lock();
        Some(ChannelContext {
            conn: self.clone(),
            identity: st.identity.clone()?,
            target: st.target.clone()?,
            upstream: st.upstream.clone()?,
        })
    }
}

/// Runs one accepted connection to its end, then records `SessionEnd`.
pub(crate) async fn run_connection(
    proxy: Arc<ProxyInner>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let conn = Arc::new(Connection {
        proxy: proxy.clone(),
        session: SessionId::generate(),
        client_addr: peer,
        operations: AtomicU64::new(0),
        state: Mutex::new(ConnectionState::default()),
    });
    let handler = ClientHandler {
        conn: conn.clone(),
        pending: None,
        offering_key: false,
        started: HashSet::new(),
    };
    let running = match server::run_stream(proxy.server_config.clone(), stream, handler).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(client = %peer, error = %e, "ssh handshake failed");
            return;
        }
    };
    let handle = running.handle();
    let outcome = tokio::select! {
        r = running => r.err().map(|e| e.to_string()),
        _ = async { stop.wait_for(|s| *s).await.is_ok() } => {
            conn.lock().end_reason.get_or_insert_with(|| "gateway shutting down".into());
            let _ = handle
                .disconnect(russh::Disconnect::ByApplication, "gateway shutting down".into(), "en".into())
                .await;
            None
        }
    };
    let (identity, target, upstream, seals, reason, started) = {
        let mut st = conn.lock();
        let reason = st
            .end_reason
            .take()
            .or(outcome.map(|e| format!("error: {e}")))
            .unwrap_or_else(|| "client closed".into());
        (
            st.identity.take(),
            st.target.take(),
            st.upstream.take(),
            std::mem::take(&mut st.seals),
            reason,
            st.started,
        )
    };
    if let Some(Ok(up)) = upstream {
        let _ = up
            .disconnect(russh::Disconnect::ByApplication, "session ended", "en")
            .await;
    }
    if started {
        let recording = if seals.len() == 1 {
            seals.into_iter().next()
        } else {
            None
        };
        let body = EventBody::SessionEnd {
            reason,
            recording,
            operations: conn.operations.load(Ordering::SeqCst),
        };
        if let Err(e) = conn.record(identity.as_ref(), target.as_ref(), body).await {
            tracing::error!(session = %conn.session, error = %e, "could not record session end");
        }
    }
}

struct PendingLogin {
    identity: Identity,
    target: SshTargetConfig,
    login: String,
}

/// russh server handler for one connection.
pub(crate) struct ClientHandler {
    conn: Arc<Connection>,
    pending: Option<PendingLogin>,
    /// The attempt being checked is a public key (see [`ClientHandler::count_failure`]).
    offering_key: bool,
    /// Channels whose exec / shell / subsystem already started (a second one is refused).
    started: HashSet<ChannelId>,
}

fn reject() -> Auth {
    Auth::Reject {
        proceed_with_methods: None,
        partial_success: false,
    }
}

impl ClientHandler {
    fn proxy(&self) -> &ProxyInner {
        &self.conn.proxy
    }

    async fn login_failed(&self, target: Option<&Target>, reason: AuthErrorKind) {
        self.count_failure(reason);
        let body = EventBody::LoginFailed {
            client_addr: self.conn.client_addr.to_string(),
            reason,
        };
        if let Err(e) = self.conn.record(None, target, body).await {
            tracing::error!(error = %e, "could not record failed login");
        }
    }

    /// Counts a failure against the source's limit. An SSH client offers every key it has
    /// before it tries a token; a key that is simply not registered is not a guess at a secret,
    /// so it is recorded but not counted (russh's per-connection attempt limit still applies).
    fn count_failure(&self, reason: AuthErrorKind) {
        if self.offering_key
            && matches!(
                reason,
                AuthErrorKind::UnknownCredential | AuthErrorKind::Unsupported
            )
        {
            return;
        }
        self.proxy()
            .limiter
            .record_failure(self.conn.client_addr.ip());
    }

    /// Verifies `credential` for the login name `user`; on success remembers who and where.
    async fn authenticate(&mut self, user: &str, credential: Credential) -> Auth {
        let name = LoginName::parse(user);
        let target_cfg = name
            .as_ref()
            .and_then(|n| self.proxy().config.target(&n.target))
            .cloned();
        let target = target_cfg.as_ref().map(SshTargetConfig::target);
        if self.proxy().limiter.is_limited(self.conn.client_addr.ip()) {
            self.login_failed(target.as_ref(), AuthErrorKind::RateLimited)
                .await;
            return reject();
        }
        let identity = match self
            .proxy()
            .pipeline
            .authenticator
            .authenticate(&credential)
            .await
        {
            Ok(identity) => identity,
            Err(e) => {
                self.login_failed(target.as_ref(), e.kind).await;
                return reject();
            }
        };
        let (Some(name), Some(target_cfg)) = (name, target_cfg) else {
            self.proxy()
                .limiter
                .record_failure(self.conn.client_addr.ip());
            let body = EventBody::Error {
                side: Side::Client,
                message: format!("login name {user:?} names no SSH target"),
            };
            let _ = self.conn.record(Some(&identity), None, body).await;
            return reject();
        };
        let login = name.login.unwrap_or_else(|| target_cfg.login.clone());
        if !target_cfg.allows_login(&login) {
            self.proxy()
                .limiter
                .record_failure(self.conn.client_addr.ip());
            let body = EventBody::Error {
                side: Side::Client,
                message: format!(
                    "login '{login}' is not offered on target '{}'",
                    target_cfg.name
                ),
            };
            let _ = self
                .conn
                .record(Some(&identity), target.as_ref(), body)
                .await;
            return reject();
        }
        self.pending = Some(PendingLogin {
            identity,
            target: target_cfg,
            login,
        });
        Auth::Accept
    }

    /// The connection is authenticated: log in upstream, record the start, arm the expiry.
    async fn start(&mut self, session: &mut Session) {
        let Some(p) = self.pending.take() else {
            return;
        };
        let target = p.target.target();
        let upstream = match upstream::connect(&self.proxy().config, &p.target, &p.login).await {
            Ok(h) => Ok(Arc::new(h)),
            Err(e) => Err(e),
        };
        let client_version = String::from_utf8_lossy(session.remote_sshid()).into_owned();
        let start_body = EventBody::SessionStart {
            client_addr: self.conn.client_addr.to_string(),
            details: serde_json::json!({
                "protocol": "ssh",
                "client_version": client_version,
                "login": p.login,
                "upstream": p.target.address,
            }),
        };
        let mut upstream_result: Result<Arc<UpstreamHandle>, String> =
            upstream.map_err(|e| format!("gatehouse: {e}"));
        match self
            .conn
            .record(Some(&p.identity), Some(&target), start_body)
            .await
        {
            Ok(()) => {
                self.conn.lock().started = true;
            }
            Err(e) => {
                tracing::error!(error = %e, "could not record session start");
                upstream_result =
                    Err("gatehouse: the audit log is unavailable; refusing (fail closed)".into());
            }
        }
        if let Err(reason) = &upstream_result {
            let err = EventBody::Error {
                side: Side::Upstream,
                message: reason.trim_start_matches("gatehouse: ").to_string(),
            };
            let _ = self
                .conn
                .record(Some(&p.identity), Some(&target), err)
                .await;
        }
        if self.proxy().config.end_session_on_identity_expiry
            && let Some(expires) = p.identity.expires_at
        {
            let handle = session.handle();
            let conn = self.conn.clone();
            tokio::spawn(async move {
                let left = expires - gatehouse_core::now();
                let ms = u64::try_from(left.whole_milliseconds().max(0)).unwrap_or(u64::MAX);
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                conn.lock().end_reason = Some("token expired".into());
                let _ = handle
                    .disconnect(
                        russh::Disconnect::ByApplication,
                        "gatehouse: your identity expired; log in again".into(),
                        "en".into(),
                    )
                    .await;
            });
        }
        let mut st = self.conn.lock();
        st.identity = Some(p.identity);
        st.target = Some(target);
        st.upstream = Some(upstream_result);
    }

    /// The gate's decision for a request the handler answers itself (env, forwarding, agent),
    /// tightened by `check` (which may only make it stricter), then recorded. `None` before
    /// login; otherwise whether it is allowed and was recorded.
    async fn decide_and_record(
        &self,
        operation: Operation,
        check: impl FnOnce(&Decision) -> Option<Decision>,
    ) -> Option<bool> {
        let (identity, target) = {
            let st = self.conn.lock();
            (st.identity.clone()?, st.target.clone()?)
        };
        let gate = &self.proxy().gate;
        let ctx = GateContext {
            session: &self.conn.session,
            identity: &identity,
            target: &target,
        };
        let mut decision = gate.decide(&ctx, &Classified::new(operation.clone()));
        if let Some(stricter) = check(&decision) {
            decision = tighten(&decision, stricter);
        }
        let index = self.conn.next_operation();
        let recorded = gate.record(&ctx, index, operation, &decision).await;
        Some(recorded.is_ok() && decision.verdict == Verdict::Allow)
    }

    /// Records a request the gateway refuses as a whole (tcpip-forward, agent forwarding),
    /// whatever the policy says.
    async fn refuse_request(&self, operation: Operation, unsupported: &str) {
        let stricter = Decision::deny(
            "gateway:unsupported",
            format!("{unsupported} is not supported by the gateway"),
        );
        self.decide_and_record(operation, |_| Some(stricter)).await;
    }
}

impl server::Handler for ClientHandler {
    type Error = SshProxyError;

    async fn authentication_banner(&mut self) -> Result<Option<String>, Self::Error> {
        Ok(self.proxy().config.banner.as_ref().map(|b| {
            if b.ends_with('\n') {
                b.clone()
            } else {
                format!("{b}\n")
            }
        }))
    }

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(Auth::Reject {
            proceed_with_methods: Some(MethodSet::from(
                &[
                    MethodKind::PublicKey,
                    MethodKind::Password,
                    MethodKind::KeyboardInteractive,
                ][..],
            )),
            partial_success: false,
        })
    }

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        Ok(self
            .authenticate(user, Credential::Password(password.to_string()))
            .await)
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        response: Option<server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        let Some(mut response) = response else {
            // No name: OpenSSH prints a keyboard-interactive request's name on stderr.
            return Ok(Auth::Partial {
                name: "".into(),
                instructions: "".into(),
                prompts: std::borrow::Cow::Owned(vec![("Gatehouse token: ".into(), false)]),
            });
        };
        let Some(answer) = response.next() else {
            return Ok(reject());
        };
        let Ok(token) = String::from_utf8(answer.to_vec()) else {
            self.login_failed(None, AuthErrorKind::Malformed).await;
            return Ok(reject());
        };
        Ok(self.authenticate(user, Credential::Password(token)).await)
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        _offer: server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        // Only a syntactic check here: the authenticator decides after the signature is proven.
        Ok(match LoginName::parse(user) {
            Some(_) => Auth::Accept,
            None => reject(),
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let credential = Credential::PublicKey {
            algorithm: key.public_key.algorithm().as_str().to_string(),
            fingerprint: crate::hostkey::fingerprint(key.public_key),
        };
        self.offering_key = true;
        let auth = self.authenticate(user, credential).await;
        self.offering_key = false;
        Ok(auth)
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        self.start(session).await;
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: server::ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(ctx) = self.conn.context() else {
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        reply.accept().await;
        let handle = session.handle();
        tokio::spawn(crate::channel::run_session_channel(
            Arc::new(ctx),
            channel,
            handle,
        ));
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        originator_address: &str,
        originator_port: u32,
        reply: server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(ctx) = self.conn.context() else {
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        tokio::spawn(crate::channel::run_direct_tcpip(
            Arc::new(ctx),
            channel,
            reply,
            crate::channel::ForwardRequest {
                host: host_to_connect.to_string(),
                port: port_to_connect,
                originator_address: originator_address.to_string(),
                originator_port,
            },
        ));
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        socket_path: &str,
        reply: server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // `ssh -L port:/path/to.sock`: the gateway relays TCP destinations a rule allows, never
        // a Unix socket on the target. The reason goes in the channel-open failure, which is
        // what `ssh` prints.
        self.refuse_request(
            Operation::Ssh(SshOperation::DirectStreamlocal {
                socket_path: socket_path.to_string(),
            }),
            "forwarding to a Unix socket",
        )
        .await;
        reply
            .reject(russh::ChannelOpenFailure::Other {
                code: 1, // SSH_OPEN_ADMINISTRATIVELY_PROHIBITED
                reason: format!(
                    "gatehouse: forwarding to the Unix socket {socket_path} is refused: the gateway forwards only to TCP destinations a rule allows (direct_tcpip)"
                ),
            })
            .await;
        Ok(())
    }

    async fn channel_open_unknown(
        &mut self,
        _channel: Channel<Msg>,
        channel_type: &str,
        reply: server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // `ssh -w` (`tun@openssh.com`) or any channel type russh does not know: never relayed.
        // Recorded like the other refused forwardings; one channel-open failure with the
        // reason (russh is patched for this hook, vendor/russh/GATEHOUSE-PATCH.md), so the
        // client prints it and its connection stays up.
        let (code, what) = if channel_type == "tun@openssh.com" {
            (1, "tun forwarding (ssh -w)".to_string()) // SSH_OPEN_ADMINISTRATIVELY_PROHIBITED
        } else {
            (3, format!("the channel type {channel_type:?}")) // SSH_OPEN_UNKNOWN_CHANNEL_TYPE
        };
        self.refuse_request(
            Operation::Ssh(SshOperation::OtherChannel {
                channel_type: channel_type.to_string(),
            }),
            &what,
        )
        .await;
        reply
            .reject(russh::ChannelOpenFailure::Other {
                code,
                reason: format!("gatehouse: {what} is not allowed by the gateway"),
            })
            .await;
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.started.contains(&channel) {
            session.channel_failure(channel)?;
        } else {
            session.channel_success(channel)?;
        }
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        variable_name: &str,
        _variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // An env request is an operation of its own: recorded with its decision (OpenSSH asks
        // for no reply, so the record is where a refusal's reason shows). Allowed only when the
        // listener's allow-list and a policy rule both allow it.
        let operation = Operation::Ssh(SshOperation::Env {
            name: variable_name.to_string(),
        });
        let started = self.started.contains(&channel);
        let accepted = self.proxy().config.env_allowed(variable_name);
        let allowed = self
            .decide_and_record(operation, |decision| {
                if started {
                    Some(Decision::deny(
                        "gateway:env-after-start",
                        "environment variables must be set before the command starts",
                    ))
                } else if decision.verdict == Verdict::Allow && !accepted {
                    Some(Decision::deny(
                        "gateway:env-not-accepted",
                        format!("the SSH listener does not accept {variable_name} (accept_env)"),
                    ))
                } else if decision.verdict == Verdict::Review {
                    Some(Decision::deny(
                        "gateway:env-review",
                        "an env request cannot wait for a review; allow or deny it",
                    ))
                } else {
                    None
                }
            })
            .await;
        if allowed == Some(true) {
            session.channel_success(channel)?;
        } else {
            session.channel_failure(channel)?;
        }
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Accepted here; a refusal is reported on the channel (stderr line + exit status 126),
        // the way a shell reports a command it will not run.
        if self.started.insert(channel) {
            session.channel_success(channel)?;
        } else {
            session.channel_failure(channel)?;
        }
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.started.insert(channel) {
            session.channel_success(channel)?;
        } else {
            session.channel_failure(channel)?;
        }
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Accepted here like exec: a refusal is written to the channel's stderr with an exit
        // status (subsystem clients such as sftp print that, where a failed request would only
        // say "subsystem request failed").
        if self.started.insert(channel) {
            session.channel_success(channel)?;
        } else {
            session.channel_failure(channel)?;
        }
        Ok(())
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        Ok(())
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_request(Operation::Ssh(SshOperation::X11), "X11 forwarding")
            .await;
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refuse_request(
            Operation::Ssh(SshOperation::AgentForward),
            "agent forwarding",
        )
        .await;
        Ok(false)
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refuse_request(
            Operation::Ssh(SshOperation::TcpipForward {
                address: address.to_string(),
                port: *port,
            }),
            "remote port forwarding",
        )
        .await;
        Ok(false)
    }
}
