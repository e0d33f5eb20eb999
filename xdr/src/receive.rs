//! The receiving side of XDR on a node: validates each batch completely, checks that the
//! sending site has an enabled link into this site carrying the namespace, applies the
//! records through an [`Applier`] (the node's conflict-resolving store) and acknowledges with
//! the counts once the applied records are durable.

use std::future::Future;
use std::sync::Arc;

use ferry_topology::Topology;
use ferry_topology::model::SiteName;
use ferry_transport::{Frame, Handler, HandlerError, RequestContext};

use crate::ack::{self, Ack};
use crate::batch::{Batch, ShippedRecord};
use crate::stats::{Registry, add};

/// What an apply did with a batch's records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyOutcome {
    pub applied: u32,
    pub stale: u32,
    pub failed: u32,
}

/// Why a whole batch was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApplyRefusal {
    /// Whether the sender should send it again later (e.g. writes fenced for now).
    pub retryable: bool,
    pub message: String,
}

/// Applies shipped versions to local storage; resolves once the winners are durable.
pub trait Applier: Send + Sync + 'static {
    fn apply(
        &self,
        namespace: &str,
        records: &[ShippedRecord],
    ) -> impl Future<Output = Result<ApplyOutcome, ApplyRefusal>> + Send;
}

/// The XDR request handler of a node's QUIC endpoint.
#[derive(Debug)]
pub struct Receiver<A> {
    topology: Arc<Topology>,
    local_site: SiteName,
    applier: Arc<A>,
    stats: Arc<Registry>,
}

impl<A: Applier> Receiver<A> {
    pub fn new(
        topology: Arc<Topology>,
        local_site: SiteName,
        applier: Arc<A>,
        stats: Arc<Registry>,
    ) -> Self {
        Receiver { topology, local_site, applier, stats }
    }

    fn reject(&self, retryable: bool, message: String) -> HandlerError {
        add(&self.stats.receiver.rejected, 1);
        tracing::warn!(message, retryable, "XDR batch refused");
        HandlerError { retryable, message }
    }

    /// Checks the batch against the topology: the sender's site, its id, its link.
    fn admit(&self, ctx: &RequestContext, batch: &Batch) -> Result<(), HandlerError> {
        let site = &ctx.peer.site;
        let Some(sender) = self.topology.site(site.as_str()) else {
            return Err(self.reject(false, format!("site '{site}' is not in the topology")));
        };
        if sender.src_id.get() != batch.source_site {
            return Err(self.reject(
                false,
                format!(
                    "batch claims src-id {} but the sender's site '{site}' has src-id {}",
                    batch.source_site,
                    sender.src_id.get()
                ),
            ));
        }
        let link = self.topology.links.iter().find(|l| l.from == *site && l.to == self.local_site);
        match link {
            None => Err(self.reject(false, format!("no link {site} -> {}", self.local_site))),
            Some(link) if !link.enabled => {
                Err(self.reject(true, format!("link {site} -> {} is disabled", self.local_site)))
            }
            Some(link) if !link.namespaces.iter().any(|ns| *ns == *batch.namespace) => Err(self
                .reject(
                    true,
                    format!(
                        "link {site} -> {} does not carry namespace '{}'",
                        self.local_site, batch.namespace
                    ),
                )),
            Some(_) => Ok(()),
        }
    }
}

impl<A: Applier> Handler for Receiver<A> {
    async fn handle(&self, ctx: RequestContext, request: Frame) -> Result<Frame, HandlerError> {
        match request.frame_type.code() {
            ack::HEARTBEAT => Ok(Frame::new(ack::frame_type(ack::ACK), bytes::Bytes::new())),
            ack::BATCH => {
                add(&self.stats.receiver.batches, 1);
                let batch = Batch::decode(&request.payload).map_err(|e| {
                    self.reject(false, format!("malformed batch from {}: {e}", ctx.peer.uri()))
                })?;
                self.admit(&ctx, &batch)?;
                let outcome = self
                    .applier
                    .apply(&batch.namespace, &batch.records)
                    .await
                    .map_err(|refusal| self.reject(refusal.retryable, refusal.message))?;
                let receiver = &self.stats.receiver;
                add(&receiver.applied, u64::from(outcome.applied));
                add(&receiver.lost_conflict, u64::from(outcome.stale));
                add(&receiver.failed, u64::from(outcome.failed));
                let ack = Ack {
                    batch: batch.id,
                    applied: outcome.applied,
                    stale: outcome.stale,
                    failed: outcome.failed,
                };
                Ok(Frame::new(ack::frame_type(ack::ACK), ack.encode()))
            }
            other => Err(self.reject(false, format!("unknown XDR message type 0x{other:02x}"))),
        }
    }
}
