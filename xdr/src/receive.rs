//! The receiving side of XDR on a node: validates each batch completely, checks that the
//! sending site has an enabled link into this site carrying the namespace, applies the
//! records through an [`Applier`] (the node's conflict-resolving store) and acknowledges with
//! the counts once the applied records are durable.

use std::future::Future;
use std::sync::Arc;

use ferry_topology::SharedTopology;
use ferry_topology::model::SiteName;
use ferry_transport::{Frame, Handler, HandlerError, RequestContext};
use tracing::Instrument as _;

use crate::ack::{self, Ack, Refusal, Refused};
use crate::batch::Batch;
use crate::sitemap::SiteMap;
use crate::stats::{Registry, add};

/// What an apply did with a batch's records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyOutcome {
    pub applied: u32,
    pub stale: u32,
    /// Records refused for good (they break a limit here), with the reason.
    pub refused: Vec<Refused>,
}

/// Why a whole batch was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApplyRefusal {
    /// Whether the sender should send it again later (e.g. writes fenced for now).
    pub retryable: bool,
    pub message: String,
}

/// How a batch reached this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// From a site's shipper over a DR link: records of partitions another node of this site
    /// owns are forwarded to it.
    Link,
    /// Forwarded by a node of this site: applied here as it is, never forwarded again (so a
    /// stale map cannot bounce records between nodes).
    Forwarded,
}

/// Applies shipped versions to local storage; resolves once the winners are durable. Knows
/// the site's partition map, which shippers learn through it.
pub trait Applier: Send + Sync + 'static {
    fn apply(
        &self,
        batch: &Batch,
        delivery: Delivery,
    ) -> impl Future<Output = Result<ApplyOutcome, ApplyRefusal>> + Send;

    /// The site's membership epoch as this node knows it (sent with every acknowledgement).
    fn epoch(&self) -> u64;

    /// The site's partition map at that epoch.
    fn site_map(&self) -> SiteMap;
}

/// Inflated batch bytes a receiver holds at once, in KiB: a batch waits for its share before
/// it is decompressed, so many small compressed batches cannot inflate past it.
const INFLATE_BUDGET_KIB: usize = 256 << 10;

/// The XDR request handler of a node's QUIC endpoint.
#[derive(Debug)]
pub struct Receiver<A> {
    topology: SharedTopology,
    local_site: SiteName,
    applier: Arc<A>,
    stats: Arc<Registry>,
    inflate_budget: tokio::sync::Semaphore,
}

impl<A: Applier> Receiver<A> {
    /// A receiver for `local_site` that follows the current `topology`.
    pub fn new(
        topology: SharedTopology,
        local_site: SiteName,
        applier: Arc<A>,
        stats: Arc<Registry>,
    ) -> Self {
        let inflate_budget = tokio::sync::Semaphore::new(INFLATE_BUDGET_KIB);
        Receiver { topology, local_site, applier, stats, inflate_budget }
    }

    fn reject(&self, retryable: bool, message: String) -> HandlerError {
        add(&self.stats.receiver.rejected, 1);
        tracing::warn!(message, retryable, "XDR batch refused");
        HandlerError { retryable, message }
    }

    /// Checks the batch against the topology: the sender's site, its id, its link. Then each
    /// record's origin: the sender's own writes, or — over a link that forwards — writes of
    /// another site of the topology, never of this one; a record that fails is refused alone.
    fn admit(&self, ctx: &RequestContext, batch: &mut Batch) -> Result<Vec<Refused>, HandlerError> {
        let site = &ctx.peer.site;
        let topology = self.topology.get();
        let Some(sender) = topology.site(site.as_str()) else {
            return Err(self.reject(true, format!("site '{site}' is not in the topology")));
        };
        if sender.src_id.get() != batch.source_site {
            return Err(self.reject(
                true,
                format!(
                    "batch claims src-id {} but the sender's site '{site}' has src-id {}",
                    batch.source_site,
                    sender.src_id.get()
                ),
            ));
        }
        let link = topology
            .links
            .iter()
            .find(|l| l.from.as_str() == site.as_str() && l.to == self.local_site);
        match link {
            None => Err(self.reject(true, format!("no link {site} -> {}", self.local_site))),
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
            Some(link) => {
                let local = topology.site(self.local_site.as_str()).map(|s| s.src_id.get());
                let may_come = |origin: u8| {
                    origin == batch.source_site
                        || (link.forward
                            && Some(origin) != local
                            && topology.sites.iter().any(|s| s.src_id.get() == origin))
                };
                let (kept, refused): (Vec<_>, Vec<_>) = std::mem::take(&mut batch.records)
                    .into_iter()
                    .partition(|r| may_come(r.stamp.origin_site));
                batch.records = kept;
                for record in &refused {
                    tracing::warn!(site = %site, origin = record.stamp.origin_site, digest = %record.digest, "shipped version from an origin this link does not carry");
                }
                Ok(refused
                    .into_iter()
                    .map(|r| Refused { digest: r.digest, refusal: Refusal::Origin })
                    .collect())
            }
        }
    }
}

impl<A: Applier> Receiver<A> {
    /// Validates, applies and acknowledges one batch.
    async fn receive(
        &self,
        ctx: &RequestContext,
        request: &Frame,
        delivery: Delivery,
    ) -> Result<Frame, HandlerError> {
        add(&self.stats.receiver.batches, 1);
        if delivery == Delivery::Forwarded && ctx.peer.site.as_str() != self.local_site.as_str() {
            return Err(self.reject(
                false,
                format!(
                    "{} is not a node of {}: only they forward",
                    ctx.peer.uri(),
                    self.local_site
                ),
            ));
        }
        // Held until the batch is applied: its records live until then.
        let raw_kib = Batch::declared_raw_len(&request.payload).div_ceil(1024);
        let _inflated = self
            .inflate_budget
            .acquire_many(u32::try_from(raw_kib).unwrap_or(u32::MAX))
            .await
            .map_err(|_| self.reject(true, "the receiver is closing".to_owned()))?;
        let mut batch = Batch::decode(&request.payload).map_err(|e| {
            self.reject(false, format!("malformed batch from {}: {e}", ctx.peer.uri()))
        })?;
        let refused_origins =
            if delivery == Delivery::Link { self.admit(ctx, &mut batch)? } else { Vec::new() };
        let span = tracing::debug_span!(
            "xdr.apply",
            site = %self.local_site,
            from = %ctx.peer.site,
            peer = %ctx.peer.node,
            batch = batch.id,
            records = batch.records.len(),
            forwarded = delivery == Delivery::Forwarded
        );
        let mut outcome = self
            .applier
            .apply(&batch, delivery)
            .instrument(span)
            .await
            .map_err(|refusal| self.reject(refusal.retryable, refusal.message))?;
        outcome.refused.extend(refused_origins);
        // A forwarded batch was counted by the node that received it over the link, so a
        // site's counters sum to what its links delivered.
        let receiver = &self.stats.receiver;
        if delivery == Delivery::Link {
            add(&receiver.applied, u64::from(outcome.applied));
            add(&receiver.lost_conflict, u64::from(outcome.stale));
            add(&receiver.refused, outcome.refused.len() as u64);
        } else {
            add(&receiver.forwarded_in, u64::from(outcome.applied + outcome.stale));
        }
        let ack = Ack {
            batch: batch.id,
            applied: outcome.applied,
            stale: outcome.stale,
            refused: outcome.refused,
            epoch: self.applier.epoch(),
        };
        Ok(Frame::new(ack::frame_type(ack::ACK), ack.encode()))
    }
}

impl<A: Applier> Handler for Receiver<A> {
    async fn handle(&self, ctx: RequestContext, request: Frame) -> Result<Frame, HandlerError> {
        match request.frame_type.code() {
            ack::HEARTBEAT => Ok(Frame::new(ack::frame_type(ack::ACK), bytes::Bytes::new())),
            ack::BATCH => self.receive(&ctx, &request, Delivery::Link).await,
            ack::FORWARD => self.receive(&ctx, &request, Delivery::Forwarded).await,
            ack::MAP => Ok(Frame::new(ack::frame_type(ack::MAP), self.applier.site_map().encode())),
            other => Err(self.reject(false, format!("unknown XDR message type 0x{other:02x}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Mutex;
    use std::sync::atomic::Ordering;

    use bytes::Bytes;
    use ferry_tests::{Link, Namespace, Role, Site, TopologyBuilder};
    use ferry_topology::Topology;
    use ferry_transport::PeerIdentity;

    use super::*;
    use crate::batch::{Compression, ShippedRecord};
    use ferry_digestlog::Digest;

    /// An applier that records its calls and answers with a fixed result.
    #[derive(Debug)]
    struct FakeApplier {
        calls: Mutex<Vec<(String, Vec<ShippedRecord>)>>,
        answer: Result<ApplyOutcome, ApplyRefusal>,
    }

    impl FakeApplier {
        fn answering(answer: Result<ApplyOutcome, ApplyRefusal>) -> Arc<FakeApplier> {
            Arc::new(FakeApplier { calls: Mutex::new(Vec::new()), answer })
        }

        fn calls(&self) -> Vec<(String, Vec<ShippedRecord>)> {
            self.calls.lock().expect("calls lock").clone()
        }
    }

    impl Applier for FakeApplier {
        async fn apply(
            &self,
            batch: &Batch,
            _delivery: Delivery,
        ) -> Result<ApplyOutcome, ApplyRefusal> {
            let call = (batch.namespace.clone(), batch.records.clone());
            self.calls.lock().expect("calls lock").push(call);
            self.answer.clone()
        }

        fn epoch(&self) -> u64 {
            3
        }

        fn site_map(&self) -> SiteMap {
            SiteMap { epoch: 3, namespaces: Default::default() }
        }
    }

    /// Sites `a` (1), `b` (2, the local site), `c` (3) and `d` (4), each of one node with
    /// namespaces `test` and `other`; links `a -> b` (`test`), `c -> b` (disabled) and `b -> d`.
    fn topology() -> Arc<Topology> {
        let builder = ["a", "b", "c", "d"]
            .into_iter()
            .fold(TopologyBuilder::new("receive-test"), |b, name| {
                b.add_site(Site::new(name, 1).role(Role::Active))
            })
            .namespace(Namespace::new("test"))
            .namespace(Namespace::new("other"))
            .link(Link::new("a", "b"))
            .link(Link::new("c", "b").enabled(false))
            .link(Link::new("b", "d"))
            .ports_from(20_000);
        let text = builder.build().text;
        Arc::new(ferry_topology::parse_topology("t.toml", &text).expect("valid").topology)
    }

    struct Fixture {
        receiver: Receiver<FakeApplier>,
        applier: Arc<FakeApplier>,
        stats: Arc<Registry>,
    }

    fn fixture(answer: Result<ApplyOutcome, ApplyRefusal>) -> Fixture {
        let applier = FakeApplier::answering(answer);
        let stats: Arc<Registry> = Arc::default();
        let local = SiteName::try_from("b").expect("site name");
        let receiver =
            Receiver::new(SharedTopology::new(topology()), local, applier.clone(), stats.clone());
        Fixture { receiver, applier, stats }
    }

    fn applied(applied: u32, stale: u32, refused: u8) -> Result<ApplyOutcome, ApplyRefusal> {
        let refused = (0..refused)
            .map(|i| Refused { digest: Digest([i; 20]), refusal: Refusal::TooBig })
            .collect();
        Ok(ApplyOutcome { applied, stale, refused })
    }

    fn from(site: &str) -> RequestContext {
        RequestContext {
            peer: PeerIdentity::named(site, &format!("{site}-0")).expect("identity"),
            remote: SocketAddr::from(([127, 0, 0, 1], 4_000)),
        }
    }

    /// A record with 64 bytes of bin data, so batches of a few compress.
    fn record(i: u8) -> ShippedRecord {
        let mut record = crate::batch::sample_record(i, false);
        record.bins[0].data = Bytes::from(vec![i; 64]);
        record
    }

    fn batch(source_site: u8, namespace: &str, records: usize) -> Batch {
        Batch {
            id: 0x0102_0304_0506,
            source_site,
            namespace: namespace.into(),
            records: (0..records).map(|i| record(i as u8)).collect(),
        }
    }

    fn frame(batch: &Batch) -> Frame {
        let (bytes, _) = batch.encode(Compression { level: 1, threshold: 128 });
        Frame::new(ack::frame_type(ack::BATCH), bytes)
    }

    fn load(counter: &std::sync::atomic::AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    #[tokio::test]
    async fn a_batch_from_a_linked_site_is_applied_and_acknowledged_with_the_counts() {
        let f = fixture(applied(2, 1, 1));
        let sent = batch(1, "test", 4);
        let request = frame(&sent);
        assert_eq!(request.payload[5], 1, "flags: compressed");
        let reply = f.receiver.handle(from("a"), request).await.expect("accepted");
        assert_eq!(reply.frame_type, ack::frame_type(ack::ACK));
        let ack = Ack::decode(&reply.payload).expect("ack");
        let refused = vec![Refused { digest: Digest([0; 20]), refusal: Refusal::TooBig }];
        assert_eq!(ack, Ack { batch: sent.id, applied: 2, stale: 1, refused, epoch: 3 });
        assert_eq!(f.applier.calls(), vec![("test".to_owned(), sent.records.clone())]);
        let r = &f.stats.receiver;
        assert_eq!(
            (load(&r.batches), load(&r.applied), load(&r.lost_conflict), load(&r.refused)),
            (1, 2, 1, 1)
        );
        assert_eq!(load(&r.rejected), 0);
    }

    #[tokio::test]
    async fn records_from_an_origin_the_link_does_not_carry_are_refused_alone() {
        let f = fixture(applied(1, 0, 0));
        let mut sent = batch(1, "test", 3);
        sent.records[1].stamp.origin_site = 3; // site c's write; the link a -> b does not forward
        sent.records[2].stamp.origin_site = 2; // b's own write coming back
        let reply = f.receiver.handle(from("a"), frame(&sent)).await.expect("accepted");
        let ack = Ack::decode(&reply.payload).expect("ack");
        let refused: Vec<Refused> = [1, 2]
            .map(|i| Refused { digest: sent.records[i].digest, refusal: Refusal::Origin })
            .into();
        assert_eq!(ack, Ack { batch: sent.id, applied: 1, stale: 0, refused, epoch: 3 });
        assert_eq!(f.applier.calls(), vec![("test".to_owned(), vec![sent.records[0].clone()])]);
        assert_eq!(load(&f.stats.receiver.refused), 2);
    }

    #[tokio::test]
    async fn counters_accumulate_over_batches() {
        let f = fixture(applied(3, 0, 0));
        for records in [3, 1, 0] {
            let sent = batch(1, "test", records);
            let reply = f.receiver.handle(from("a"), frame(&sent)).await.expect("accepted");
            assert_eq!(Ack::decode(&reply.payload).expect("ack").batch, sent.id);
        }
        let r = &f.stats.receiver;
        assert_eq!((load(&r.batches), load(&r.applied), load(&r.rejected)), (3, 9, 0));
        let sizes: Vec<usize> =
            f.applier.calls().iter().map(|(_, records)| records.len()).collect();
        assert_eq!(sizes, vec![3, 1, 0]);
    }

    #[tokio::test]
    async fn uncompressed_batches_are_accepted_too() {
        let f = fixture(applied(1, 0, 0));
        let sent = batch(1, "test", 1);
        let (bytes, _) = sent.encode(Compression { level: 1, threshold: usize::MAX });
        assert_eq!(bytes[5], 0, "flags: not compressed");
        let request = Frame::new(ack::frame_type(ack::BATCH), bytes);
        let reply = f.receiver.handle(from("a"), request).await.expect("accepted");
        assert_eq!(Ack::decode(&reply.payload).expect("ack").applied, 1);
        assert_eq!(f.applier.calls()[0].1, sent.records);
    }

    #[tokio::test]
    async fn heartbeats_are_answered_with_an_empty_ack_frame() {
        let f = fixture(applied(0, 0, 0));
        let request = Frame::new(ack::frame_type(ack::HEARTBEAT), Bytes::new());
        let reply = f.receiver.handle(from("a"), request).await.expect("answered");
        assert_eq!(reply.frame_type, ack::frame_type(ack::ACK));
        assert!(reply.payload.is_empty());
        assert!(f.applier.calls().is_empty());
        assert_eq!((load(&f.stats.receiver.batches), load(&f.stats.receiver.rejected)), (0, 0));
    }

    #[tokio::test]
    async fn malformed_batches_are_refused_for_good_without_applying() {
        let f = fixture(applied(1, 0, 0));
        let good = frame(&batch(1, "test", 2)).payload;
        let mut corrupt = good.to_vec();
        corrupt[0] ^= 0xff;
        let cases: [&[u8]; 4] = [&[], b"not a batch", &good[..good.len() - 1], &corrupt];
        for (i, bytes) in cases.into_iter().enumerate() {
            let request = Frame::new(ack::frame_type(ack::BATCH), Bytes::copy_from_slice(bytes));
            let error = f.receiver.handle(from("a"), request).await.expect_err("malformed");
            assert!(!error.retryable, "case {i}: {error:?}");
            assert!(error.message.contains("malformed batch"), "case {i}: {}", error.message);
            assert!(error.message.contains("ferry://site/a/node/a-0"), "{}", error.message);
            assert_eq!(load(&f.stats.receiver.rejected), i as u64 + 1);
        }
        assert!(f.applier.calls().is_empty());
        assert_eq!(load(&f.stats.receiver.batches), 4);
        assert_eq!(load(&f.stats.receiver.applied), 0);
    }

    #[tokio::test]
    async fn a_batch_claiming_another_src_id_than_its_sender_is_refused_until_the_topology_agrees()
    {
        let f = fixture(applied(1, 0, 0));
        for claimed in [2, 3, 99] {
            let error = f
                .receiver
                .handle(from("a"), frame(&batch(claimed, "test", 1)))
                .await
                .expect_err("src-id mismatch");
            assert!(error.retryable, "{error:?}");
            assert!(error.message.contains(&format!("src-id {claimed}")), "{}", error.message);
        }
        assert!(f.applier.calls().is_empty());
        assert_eq!(load(&f.stats.receiver.rejected), 3);
    }

    #[tokio::test]
    async fn a_site_without_a_link_here_is_refused_until_the_topology_agrees() {
        let f = fixture(applied(1, 0, 0));
        // `d` is in the topology and only receives from `b`; `b` itself has no link to itself.
        for (site, src_id) in [("d", 4), ("b", 2)] {
            let error = f
                .receiver
                .handle(from(site), frame(&batch(src_id, "test", 1)))
                .await
                .expect_err("no link");
            assert!(error.retryable, "{error:?}");
            assert_eq!(error.message, format!("no link {site} -> b"));
        }
        assert!(f.applier.calls().is_empty());
        assert_eq!(load(&f.stats.receiver.rejected), 2);
    }

    #[tokio::test]
    async fn a_site_outside_the_topology_is_refused_until_the_topology_agrees() {
        let f = fixture(applied(1, 0, 0));
        let error = f
            .receiver
            .handle(from("zz"), frame(&batch(1, "test", 1)))
            .await
            .expect_err("unknown site");
        assert!(error.retryable);
        assert!(error.message.contains("'zz' is not in the topology"), "{}", error.message);
        assert!(f.applier.calls().is_empty());
        assert_eq!(load(&f.stats.receiver.rejected), 1);
    }

    #[tokio::test]
    async fn a_disabled_link_is_refused_for_now() {
        let f = fixture(applied(1, 0, 0));
        let error =
            f.receiver.handle(from("c"), frame(&batch(3, "test", 1))).await.expect_err("disabled");
        assert!(error.retryable, "{error:?}");
        assert_eq!(error.message, "link c -> b is disabled");
        assert!(f.applier.calls().is_empty());
        assert_eq!(load(&f.stats.receiver.rejected), 1);
    }

    #[tokio::test]
    async fn a_namespace_the_link_does_not_carry_is_refused_for_now() {
        let f = fixture(applied(1, 0, 0));
        for namespace in ["other", "unknown"] {
            let error = f
                .receiver
                .handle(from("a"), frame(&batch(1, namespace, 1)))
                .await
                .expect_err("namespace not carried");
            assert!(error.retryable, "{error:?}");
            assert!(error.message.contains(&format!("'{namespace}'")), "{}", error.message);
        }
        assert!(f.applier.calls().is_empty());
        assert_eq!(load(&f.stats.receiver.rejected), 2);
    }

    #[tokio::test]
    async fn an_applier_refusal_passes_its_retryability_through() {
        for retryable in [true, false] {
            let message = format!("fenced (retryable: {retryable})");
            let f = fixture(Err(ApplyRefusal { retryable, message: message.clone() }));
            let sent = batch(1, "test", 2);
            let error = f.receiver.handle(from("a"), frame(&sent)).await.expect_err("refused");
            assert_eq!(error, HandlerError { retryable, message });
            assert_eq!(f.applier.calls(), vec![("test".to_owned(), sent.records)]);
            let r = &f.stats.receiver;
            assert_eq!((load(&r.rejected), load(&r.applied), load(&r.batches)), (1, 0, 1));
        }
    }

    #[tokio::test]
    async fn unknown_message_types_are_refused() {
        let f = fixture(applied(1, 0, 0));
        let good = frame(&batch(1, "test", 1));
        for code in [ack::ACK, 0x15, 0xff] {
            let request = Frame::new(ack::frame_type(code), good.payload.clone());
            let error = f.receiver.handle(from("a"), request).await.expect_err("unknown type");
            assert!(!error.retryable);
            assert_eq!(error.message, format!("unknown XDR message type 0x{code:02x}"));
        }
        assert!(f.applier.calls().is_empty());
        assert_eq!((load(&f.stats.receiver.rejected), load(&f.stats.receiver.batches)), (3, 0));
    }

    #[tokio::test]
    async fn a_map_request_is_answered_with_the_sites_map() {
        let f = fixture(applied(1, 0, 0));
        let request = Frame::new(ack::frame_type(ack::MAP), Bytes::new());
        let reply = f.receiver.handle(from("a"), request).await.expect("answered");
        assert_eq!(reply.frame_type, ack::frame_type(ack::MAP));
        assert_eq!(SiteMap::decode(&reply.payload), Ok(f.applier.site_map()));
        assert!(f.applier.calls().is_empty());
    }

    #[tokio::test]
    async fn forwarded_batches_come_only_from_nodes_of_this_site() {
        let f = fixture(applied(2, 0, 0));
        let sent = batch(1, "test", 2);
        let forward = |b: &Batch| Frame::new(ack::frame_type(ack::FORWARD), frame(b).payload);
        let error = f.receiver.handle(from("a"), forward(&sent)).await.expect_err("not local");
        assert!(!error.retryable);
        assert!(error.message.contains("only they forward"), "{}", error.message);
        assert!(f.applier.calls().is_empty());
        // From a node of `b` itself: applied without any link check (src-id 1 is `a`'s).
        let reply = f.receiver.handle(from("b"), forward(&sent)).await.expect("forwarded");
        assert_eq!(Ack::decode(&reply.payload).expect("ack").applied, 2);
        assert_eq!(f.applier.calls(), vec![("test".to_owned(), sent.records)]);
    }
}
