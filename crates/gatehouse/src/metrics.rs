//! Gateway metrics (Prometheus text format), collected by a recorder decorator: every control event
//! passes through [`CountingRecorder`] on its way to the audit log, so the counters see exactly what
//! the auditor sees — sessions, operations by verdict, masking findings, upstream errors, and how
//! long the audit log took to acknowledge (audit lag).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use gatehouse_core::{
    BoxFuture, Event, EventBody, EventReceipt, RecordError, Recorder, RecordingKind, RecordingSink,
    SessionId, Side, Verdict,
};

/// Counters exposed on `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    sessions_started: AtomicU64,
    sessions_ended: AtomicU64,
    login_failures: AtomicU64,
    ops_allow: AtomicU64,
    ops_review: AtomicU64,
    ops_deny: AtomicU64,
    findings: AtomicU64,
    upstream_errors: AtomicU64,
    egress_blocked: AtomicU64,
    audit_records: AtomicU64,
    audit_failures: AtomicU64,
    audit_lag_us_total: AtomicU64,
    audit_lag_us_max: AtomicU64,
}

impl Metrics {
    fn observe(&self, event: &Event) {
        let c = match &event.body {
            EventBody::SessionStart { .. } => &self.sessions_started,
            EventBody::SessionEnd { .. } => &self.sessions_ended,
            EventBody::LoginFailed { .. } => &self.login_failures,
            EventBody::Operation { decision, .. } => match decision.verdict {
                Verdict::Allow => &self.ops_allow,
                Verdict::Review => &self.ops_review,
                Verdict::Deny => &self.ops_deny,
            },
            EventBody::OperationResult(r) => {
                self.findings
                    .fetch_add(r.findings.len() as u64, Ordering::Relaxed);
                return;
            }
            EventBody::Error {
                side: Side::Upstream,
                ..
            } => &self.upstream_errors,
            EventBody::EgressBlocked { hits, .. } => {
                self.egress_blocked.fetch_add(*hits, Ordering::Relaxed);
                return;
            }
            _ => return,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Renders the Prometheus exposition text; `extra` adds gauges computed at scrape time.
    pub fn render(&self, extra: &[(&str, &str, u64)]) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (labels, v) in samples {
                if labels.is_empty() {
                    out.push_str(&format!("{name} {v}\n"));
                } else {
                    out.push_str(&format!("{name}{{{labels}}} {v}\n"));
                }
            }
        };
        metric(
            "gatehouse_sessions_started_total",
            "counter",
            "Sessions authenticated and started.",
            &[("", g(&self.sessions_started))],
        );
        metric(
            "gatehouse_sessions_ended_total",
            "counter",
            "Sessions ended.",
            &[("", g(&self.sessions_ended))],
        );
        metric(
            "gatehouse_sessions_active",
            "gauge",
            "Sessions started and not yet ended.",
            &[(
                "",
                g(&self.sessions_started).saturating_sub(g(&self.sessions_ended)),
            )],
        );
        metric(
            "gatehouse_login_failures_total",
            "counter",
            "Refused logins.",
            &[("", g(&self.login_failures))],
        );
        metric(
            "gatehouse_operations_total",
            "counter",
            "Operations decided, by verdict.",
            &[
                ("verdict=\"allow\"", g(&self.ops_allow)),
                ("verdict=\"review\"", g(&self.ops_review)),
                ("verdict=\"deny\"", g(&self.ops_deny)),
            ],
        );
        metric(
            "gatehouse_masking_findings_total",
            "counter",
            "Values masked in results.",
            &[("", g(&self.findings))],
        );
        metric(
            "gatehouse_upstream_errors_total",
            "counter",
            "Errors on the upstream side.",
            &[("", g(&self.upstream_errors))],
        );
        metric(
            "gatehouse_egress_blocked_total",
            "counter",
            "Held-secret occurrences blocked by the egress guard (recorded events).",
            &[("", g(&self.egress_blocked))],
        );
        metric(
            "gatehouse_audit_records_total",
            "counter",
            "Control events acknowledged by the audit log.",
            &[("", g(&self.audit_records))],
        );
        metric(
            "gatehouse_audit_failures_total",
            "counter",
            "Control events the audit log refused (operations failed closed).",
            &[("", g(&self.audit_failures))],
        );
        out.push_str(&format!(
            "# HELP gatehouse_audit_lag_seconds_max Longest time to acknowledge a control event.\n# TYPE gatehouse_audit_lag_seconds_max gauge\ngatehouse_audit_lag_seconds_max {:.6}\n",
            g(&self.audit_lag_us_max) as f64 / 1e6
        ));
        out.push_str(&format!(
            "# HELP gatehouse_audit_lag_seconds_sum Total time spent acknowledging control events.\n# TYPE gatehouse_audit_lag_seconds_sum counter\ngatehouse_audit_lag_seconds_sum {:.6}\n",
            g(&self.audit_lag_us_total) as f64 / 1e6
        ));
        for (name, help, v) in extra {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n"
            ));
        }
        out
    }
}

/// A recorder that counts what passes through it, then hands it to the real one.
pub struct CountingRecorder {
    inner: Arc<dyn Recorder + Send + Sync>,
    metrics: Arc<Metrics>,
}

impl CountingRecorder {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Recorder + Send + Sync>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }
}

impl CountingRecorder {
    fn count(&self, result: &Result<EventReceipt, RecordError>, started: Instant) {
        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        match result {
            Ok(_) => {
                self.metrics.audit_records.fetch_add(1, Ordering::Relaxed);
                self.metrics
                    .audit_lag_us_total
                    .fetch_add(us, Ordering::Relaxed);
                self.metrics
                    .audit_lag_us_max
                    .fetch_max(us, Ordering::Relaxed);
            }
            Err(_) => {
                self.metrics.audit_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Recorder for CountingRecorder {
    fn record(&self, event: Event) -> BoxFuture<'_, Result<EventReceipt, RecordError>> {
        Box::pin(async move {
            self.metrics.observe(&event);
            let started = Instant::now();
            let result = self.inner.record(event).await;
            self.count(&result, started);
            result
        })
    }

    fn record_all(
        &self,
        events: Vec<Event>,
    ) -> BoxFuture<'_, Vec<Result<EventReceipt, RecordError>>> {
        Box::pin(async move {
            for event in &events {
                self.metrics.observe(event);
            }
            let started = Instant::now();
            let results = self.inner.record_all(events).await;
            for result in &results {
                self.count(result, started);
            }
            results
        })
    }

    fn open_recording<'a>(
        &'a self,
        session: &'a SessionId,
        kind: RecordingKind,
    ) -> BoxFuture<'a, Result<Box<dyn RecordingSink>, RecordError>> {
        self.inner.open_recording(session, kind)
    }
}
