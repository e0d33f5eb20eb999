//! What this node was told to do that changes the deployment (link controls), recorded for the
//! audit trail: every event is logged at once (target `ferry::audit`) and, when the node
//! follows a topology service, reported to it (`POST /v1/audit`, with the node's own token) by
//! a background task, so the handler that acted never waits on the service.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ferry_topology::audit::AuditEvent;
use ferry_topology::service::TopologyClient;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

/// Events waiting to be reported; past this, an event is only logged (and that is logged).
const QUEUE: usize = 1024;
/// Attempts to report one event before it is given up (it stays in the node's log).
const ATTEMPTS: u32 = 5;

/// Where this node's audit events go.
#[derive(Debug, Default)]
pub struct AuditSink {
    reporter: OnceLock<mpsc::Sender<AuditEvent>>,
    /// Events queued or being reported.
    pending: Arc<AtomicUsize>,
}

impl AuditSink {
    /// Reports every later event to the topology service `client` asks (once; later calls
    /// are ignored).
    pub fn report_to(&self, client: TopologyClient) {
        let (sender, receiver) = mpsc::channel(QUEUE);
        if self.reporter.set(sender).is_ok() {
            tokio::spawn(report(client, receiver, self.pending.clone()));
        }
    }

    /// Logs `event` and queues it for the topology service.
    pub fn record(&self, event: AuditEvent) {
        event.log();
        let Some(reporter) = self.reporter.get() else { return };
        self.pending.fetch_add(1, Ordering::SeqCst);
        let sent = reporter.try_send(event);
        if sent.is_err() {
            self.pending.fetch_sub(1, Ordering::SeqCst);
        }
        match sent {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                tracing::warn!("audit events queue full: an event was logged but not reported");
            }
            Err(TrySendError::Closed(_)) => {
                tracing::warn!("audit reporter stopped: an event was logged but not reported");
            }
        }
    }
}

impl AuditSink {
    /// Waits up to `within` for the events queued so far to be reported (a stopping node);
    /// says how many were not (they stay in the node's log).
    pub async fn flush(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while self.pending.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.pending.load(Ordering::SeqCst);
        if left > 0 {
            tracing::warn!(left, "audit events not reported before the node stopped");
        }
    }
}

async fn report(
    client: TopologyClient,
    mut events: mpsc::Receiver<AuditEvent>,
    pending: Arc<AtomicUsize>,
) {
    while let Some(event) = events.recv().await {
        let mut backoff = Duration::from_millis(200);
        for attempt in 1..=ATTEMPTS {
            match client.record(&event).await {
                Ok(_) => break,
                Err(error) if attempt == ATTEMPTS => {
                    tracing::warn!(%error, action = %event.action, "audit event not reported");
                }
                Err(_) => {
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
            }
        }
        pending.fetch_sub(1, Ordering::SeqCst);
    }
}
