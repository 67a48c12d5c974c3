//! `serve`'s core: builds every layer from the config, wires them into one [`Pipeline`], runs the
//! listeners, and handles signals — SIGTERM/ctrl-c stop accepting, drain sessions (bounded by
//! `gateway.shutdown_grace_secs`) and close the audit log; SIGHUP reloads the policy atomically
//! (a bad policy file is reported and the running policy kept).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_core::{Authenticator, EgressGuard, Event, EventBody, Pipeline, Recorder, SessionId};
use gatehouse_identity::{
    CompositeAuthenticator, DevIssuer, GatewayKeyIssuer, OidcAuthenticator, ServiceAccountKeys,
};
use gatehouse_masking::{EgressGuardBuilder, MaskingEngine};
use gatehouse_policy::{CompiledPolicy, PolicyHandle};
use gatehouse_recorder::{
    AuditRecorder, CheckpointSigner, Durability, FileWitness, RecorderConfig, WebhookWitness,
};
use tokio::sync::watch;

use crate::commands::CommandError;
use crate::config::LoadedConfig;
use crate::listeners;
use crate::metrics::{CountingRecorder, Metrics};

fn failed(what: &str, e: impl std::fmt::Display) -> CommandError {
    CommandError::Failed(format!("{what}: {e}"))
}

/// Everything `serve` runs with.
pub struct Gateway {
    /// The layers.
    pub pipeline: Pipeline,
    /// The policy, swappable on SIGHUP.
    pub policy: Arc<PolicyHandle>,
    /// The policy file.
    pub policy_path: PathBuf,
    /// The audit recorder (closed on shutdown).
    pub audit: Arc<AuditRecorder>,
    /// The recorder root (`<root>/audit/<log id>`, `<root>/recordings`).
    pub audit_root: PathBuf,
    /// Counters for /metrics.
    pub metrics: Arc<Metrics>,
    /// Token exchange, when a JWT issuer is configured.
    pub exchange: Option<(Arc<GatewayKeyIssuer>, Arc<dyn Authenticator + Send + Sync>)>,
    /// The approvals broker (its held requests are abandoned at shutdown).
    pub broker: gatehouse_approvals::ApprovalBroker,
}

/// Builds the gateway's layers from a loaded config.
pub async fn build(loaded: &LoadedConfig) -> Result<Gateway, CommandError> {
    let c = &loaded.config;
    let data_dir = loaded.data_dir();
    std::fs::create_dir_all(&data_dir)
        .map_err(|e| failed(&format!("data dir {}", data_dir.display()), e))?;

    // Egress guard over every held secret, first: the recorder checks records against it.
    let mut egress = EgressGuardBuilder::new();
    for secret in listeners::held_secrets(loaded)? {
        egress
            .add_secret(&secret)
            .map_err(|e| failed("egress guard", e))?;
    }
    let egress: Arc<dyn EgressGuard + Send + Sync> =
        Arc::new(egress.build().map_err(|e| failed("egress guard", e))?);

    // Recorder: the key and the witness live apart from the log (checked by `audit_paths`).
    let paths = loaded.audit_paths()?;
    for w in &paths.warnings {
        eprintln!("gatehouse: warning: {w}");
    }
    let audit_root = paths.root.clone();
    let signing_key = paths.signing_key.clone();
    if let Some(parent) = signing_key.parent()
        && !parent.as_os_str().is_empty()
        && !parent.exists()
    {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| failed(&format!("audit key directory {}", parent.display()), e))?;
    }
    let signer = CheckpointSigner::load_or_create(&signing_key)
        .map_err(|e| failed(&format!("audit signing key {}", signing_key.display()), e))?;
    eprintln!(
        "gatehouse: audit checkpoints are signed by public key {} (pin it: gatehouse audit verify --key <it>)",
        hex::encode(signer.verifying_key().as_bytes())
    );
    let mut rc = RecorderConfig::new(c.audit.log_id.clone());
    rc.log.durability = if c.audit.durability == "os" {
        Durability::OsWrite
    } else {
        Durability::Fsync
    };
    rc.log.checkpoint_every_records = c.audit.checkpoint_every_records.max(1);
    rc.log.checkpoint_interval = Duration::from_millis(c.audit.checkpoint_interval_ms.max(10));
    rc.log.segment_max_bytes = c.audit.segment_max_bytes.max(4096);
    if let Some(w) = &paths.witness_dir {
        rc.witnesses.push(Arc::new(
            FileWitness::new(w).map_err(|e| failed("audit.witness_dir", e))?,
        ));
    }
    if let Some(w) = &c.audit.witness_s3 {
        let mut b = gatehouse_recorder::ObjectStoreWitness::prepare_s3(
            object_store::aws::AmazonS3Builder::from_env(),
            w.allow_http,
        )
        .with_bucket_name(&w.bucket);
        if let Some(endpoint) = &w.endpoint {
            b = b.with_endpoint(endpoint);
        }
        if let Some(region) = &w.region {
            b = b.with_region(region);
        }
        let store = b.build().map_err(|e| failed("audit.witness_s3", e))?;
        rc.witnesses
            .push(Arc::new(gatehouse_recorder::ObjectStoreWitness::new(
                Arc::new(store),
                w.prefix.clone(),
            )));
        eprintln!(
            "gatehouse: audit checkpoints are witnessed in s3://{}/{} (verify with --witness s3://{}/{})",
            w.bucket, w.prefix, w.bucket, w.prefix
        );
    }
    if let Some(url) = &c.audit.witness_url {
        let witness = match &c.audit.witness_ca {
            Some(ca) => {
                let ca = loaded.resolve_path(ca);
                let pem = std::fs::read(&ca)
                    .map_err(|e| failed(&format!("audit.witness_ca {}", ca.display()), e))?;
                WebhookWitness::with_pinned_ca(url, &pem)
            }
            None => WebhookWitness::new(url),
        }
        .map_err(|e| failed("audit.witness_url", e))?;
        rc.witnesses.push(Arc::new(witness));
    }
    let audit = Arc::new(
        AuditRecorder::open(&audit_root, rc, signer, Some(egress.clone()))
            .await
            .map_err(|e| failed(&format!("audit log in {}", audit_root.display()), e))?,
    );
    let metrics = Arc::new(Metrics::default());
    let recorder: Arc<dyn Recorder + Send + Sync> =
        Arc::new(CountingRecorder::new(audit.clone(), metrics.clone()));

    // Identity.
    let mut oidc_providers = c.identity.oidc.clone();
    let dev = match &c.identity.dev_issuer {
        Some(d) => {
            let key = loaded.resolve_path(&d.key);
            Some(
                DevIssuer::load_or_create(&key, d.issuer.clone(), d.audience.clone())
                    .map_err(|e| failed(&format!("dev issuer key {}", key.display()), e))?,
            )
        }
        None => None,
    };
    if let Some(dev) = &dev {
        oidc_providers.push(dev.provider_config().map_err(|e| failed("dev issuer", e))?);
    }
    let gateway_keys = Arc::new(GatewayKeyIssuer::new(Duration::from_secs(
        c.identity.gateway_key_max_ttl_secs.max(60),
    )));
    let mut composite = CompositeAuthenticator::new().with_gateway_keys(gateway_keys.clone());
    let mut exchange = None;
    if !oidc_providers.is_empty() {
        let oidc =
            Arc::new(OidcAuthenticator::new(oidc_providers).map_err(|e| failed("[identity]", e))?);
        composite = composite.with_oidc(oidc.clone());
        exchange = Some((
            gateway_keys.clone(),
            oidc as Arc<dyn Authenticator + Send + Sync>,
        ));
    }
    if !c.identity.service_accounts.is_empty() {
        let keys = ServiceAccountKeys::new(c.identity.service_accounts.clone())
            .map_err(|e| failed("[identity.service_accounts]", e))?;
        composite = composite.with_service_accounts(Arc::new(keys));
    }
    let authenticator: Arc<dyn Authenticator + Send + Sync> = Arc::new(composite);

    // Policy.
    let policy_path = loaded.resolve_path(&c.policy.file);
    let compiled =
        CompiledPolicy::from_file(&policy_path).map_err(|e| CommandError::Failed(e.to_string()))?;
    for note in compiled.warnings() {
        tracing::warn!("{note}");
    }
    let policy = Arc::new(PolicyHandle::new(compiled));

    // Masking.
    let masker = Arc::new(MaskingEngine::new(&c.masking).map_err(|e| failed("[masking]", e))?);

    // Approvals.
    let approvals_config = match &c.approvals {
        Some(a) => a.clone(),
        None => gatehouse_approvals::ApprovalsConfig {
            store: gatehouse_approvals::StoreConfig::Journal {
                path: data_dir.join("approvals.journal"),
            },
            webhook: None,
            limits: Default::default(),
        },
    };
    let broker = approvals_config
        .build(Some(recorder.clone()))
        .await
        .map_err(|e| failed("[approvals]", e))?;
    let approvals: Arc<dyn gatehouse_core::Approvals + Send + Sync> = Arc::new(broker.clone());

    let pipeline = Pipeline {
        authenticator,
        policy: policy.clone(),
        approvals,
        masker,
        egress,
        recorder,
        hooks: gatehouse_core::Pipeline::no_hooks(),
    };
    Ok(Gateway {
        pipeline,
        policy,
        policy_path,
        audit,
        audit_root,
        metrics,
        exchange,
        broker,
    })
}

/// How often the egress guard's counters are looked at (and recorded when they changed).
const COUNTERS_EVERY: Duration = Duration::from_secs(1);

/// Records a gateway-level event (startup, reload, shutdown) in the audit log.
async fn record_gateway_event(
    pipeline: &Pipeline,
    session: &SessionId,
    name: &str,
    details: serde_json::Value,
) {
    let event = Event::now(
        session.clone(),
        None,
        None,
        EventBody::Other {
            name: name.into(),
            details,
        },
    );
    if let Err(e) = pipeline.recorder.record(event).await {
        eprintln!("gatehouse: audit log refused the `{name}` event: {e}");
    }
}

/// Closes every operation this gateway holds for approval as abandoned (each recorded), at
/// shutdown: their clients go away with this process.
async fn abandon_held(gateway: &Gateway) {
    match gateway.broker.abandon_held().await {
        Ok(0) => {}
        Ok(n) => eprintln!("gatehouse: {n} held operation(s) closed as abandoned"),
        Err(e) => eprintln!("gatehouse: could not abandon held approval requests: {e}"),
    }
}

/// The gateway's tokio runtime: one worker per core, each with a stack on which SQL is parsed in
/// place ([`gatehouse_sql::PARSER_THREAD_STACK`]).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(gatehouse_sql::PARSER_THREAD_STACK)
        .build()
}

/// Runs the gateway until SIGTERM/ctrl-c. `ready` receives the bound addresses once listening.
pub async fn run(
    loaded: LoadedConfig,
    ready: Option<tokio::sync::oneshot::Sender<listeners::Bound>>,
) -> Result<(), CommandError> {
    let gateway = build(&loaded).await?;
    // Before anything is announced: a SIGTERM right after "listening" must still seal the log.
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| failed("SIGHUP handler", e))?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| failed("SIGTERM handler", e))?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| failed("SIGINT handler", e))?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let gateway_session = SessionId::generate();
    let bound = listeners::start(&loaded, &gateway, shutdown_rx.clone()).await?;
    record_gateway_event(
        &gateway.pipeline,
        &gateway_session,
        "gateway_started",
        serde_json::json!({ "version": env!("CARGO_PKG_VERSION"), "listeners": bound.describe() }),
    )
    .await;
    eprintln!(
        "gatehouse {}: listening: {}",
        env!("CARGO_PKG_VERSION"),
        bound.describe().join(", ")
    );
    if let Some(ready) = ready {
        let _ = ready.send(bound.clone());
    }

    // The egress guard's counters go into the audit log at start, within a second of every
    // change, and at shutdown: the evidence export derives the "credentials never exposed"
    // statement from them, so an export covers the guard's work up to about a second before it.
    let counters_task = {
        let pipeline = gateway.pipeline.clone();
        let session = gateway_session.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(COUNTERS_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut recorded = serde_json::Value::Null;
            loop {
                tick.tick().await;
                let counters = serde_json::to_value(pipeline.egress.counters()).unwrap_or_default();
                if counters != recorded {
                    record_gateway_event(&pipeline, &session, "egress_counters", counters.clone())
                        .await;
                    recorded = counters;
                }
            }
        })
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {
                let path = gateway.policy_path.clone();
                let result = tokio::task::spawn_blocking(move || CompiledPolicy::from_file(&path)).await;
                match result {
                    Ok(Ok(p)) => {
                        let rules = p.rule_count();
                        gateway.policy.swap(p);
                        eprintln!("gatehouse: policy reloaded ({rules} rules)");
                        record_gateway_event(&gateway.pipeline, &gateway_session, "policy_reloaded", serde_json::json!({ "rules": rules })).await;
                    }
                    Ok(Err(e)) => {
                        eprintln!("gatehouse: policy NOT reloaded, keeping the running one: {e}");
                        record_gateway_event(&gateway.pipeline, &gateway_session, "policy_reload_failed", serde_json::json!({ "error": e.to_string() })).await;
                    }
                    Err(e) => eprintln!("gatehouse: policy reload task failed: {e}"),
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    eprintln!("gatehouse: shutting down: draining sessions");
    let _ = shutdown_tx.send(true);
    // Operations held for approval lose their clients with this process: close them as abandoned
    // (recorded) first, so their clients get an answer now instead of waiting out the grace, and
    // an approval given later runs nothing. Again after the drain, for holds opened during it.
    abandon_held(&gateway).await;
    let grace = Duration::from_secs(loaded.config.gateway.shutdown_grace_secs);
    bound.drain(grace).await;
    abandon_held(&gateway).await;
    counters_task.abort();
    // A session the drain ended may still be recording its last records (its operation's result,
    // its end) on tasks of its own: give them a moment before the log is sealed.
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let counters = serde_json::to_value(gateway.pipeline.egress.counters()).unwrap_or_default();
    record_gateway_event(
        &gateway.pipeline,
        &gateway_session,
        "egress_counters",
        counters,
    )
    .await;
    record_gateway_event(
        &gateway.pipeline,
        &gateway_session,
        "gateway_stopped",
        serde_json::Value::Null,
    )
    .await;
    gateway
        .audit
        .log()
        .close()
        .await
        .map_err(|e| failed("sealing the audit log", e))?;
    match gateway.audit.log().latest_checkpoint() {
        Some(seal) if seal.sealed => eprintln!(
            "gatehouse: audit log sealed at sequence {} ({}); bye",
            seal.sequence + 1,
            seal.time
        ),
        _ => eprintln!("gatehouse: audit log closed (empty, nothing to seal); bye"),
    }
    Ok(())
}
