//! The site's write fences as they apply on this node, changed live when the topology service
//! publishes a new version.
//!
//! A switchover fences client writes, then drains every link: that only proves RPO 0 if no
//! write that got past the fence before it closed can still append to the digest log after
//! the drain began. So client writes pass a [`WriteGate`] that counts them in flight from the
//! fence check until their change is logged and durable, and a node reports a new fence as
//! applied only once the writes admitted before it have left ([`WriteGate::settle`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ferry_topology::model::{Site, WriteFence};

/// How often [`WriteGate::close`] looks whether the writes in flight have left.
const LEAVE_POLL: Duration = Duration::from_millis(1);

/// The fences of one node: which writers it refuses now, and the client writes in flight.
#[derive(Debug, Default)]
pub struct WriteGate {
    clients_refused: AtomicBool,
    xdr_refused: AtomicBool,
    clients_in_flight: AtomicU64,
}

/// A client write that passed the fence; it counts as in flight until dropped.
#[derive(Debug)]
pub struct Admitted<'a>(&'a WriteGate);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.clients_in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl WriteGate {
    /// A gate fenced as `site` says.
    pub fn for_site(site: &Site) -> WriteGate {
        let gate = WriteGate::default();
        gate.set(site.fence());
        gate
    }

    /// Admits a client write, or `None` while client writes are fenced. Hold the pass until
    /// the write's change is logged and durable.
    pub fn admit_client(&self) -> Option<Admitted<'_>> {
        // Counted before the fence is read, and `close` sets the fence before it reads the
        // count (both sequentially consistent): a write either sees the fence or is counted.
        self.clients_in_flight.fetch_add(1, Ordering::SeqCst);
        let admitted = Admitted(self);
        (!self.clients_refused.load(Ordering::SeqCst)).then_some(admitted)
    }

    /// The fence up now.
    pub fn current(&self) -> WriteFence {
        if self.clients_refused.load(Ordering::SeqCst) {
            WriteFence::ClientWrites
        } else if self.refuses_xdr() {
            WriteFence::XdrWrites
        } else {
            WriteFence::None
        }
    }

    /// Whether versions shipped from other sites are refused now.
    pub fn refuses_xdr(&self) -> bool {
        self.xdr_refused.load(Ordering::SeqCst)
    }

    /// Client writes in flight once a client fence is up: 0 at once without one; else waits
    /// until the writes admitted before the fence closed have left, or for `patience`.
    pub async fn settle(&self, patience: Duration) -> u64 {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            if !self.clients_refused.load(Ordering::SeqCst) {
                return 0;
            }
            let in_flight = self.clients_in_flight.load(Ordering::SeqCst);
            if in_flight == 0 || tokio::time::Instant::now() >= deadline {
                return in_flight;
            }
            tokio::time::sleep(LEAVE_POLL).await;
        }
    }

    /// Refuses the writers `fence` names from now on (see [`WriteGate::settle`]).
    pub fn set(&self, fence: WriteFence) {
        self.xdr_refused.store(fence == WriteFence::XdrWrites, Ordering::SeqCst);
        self.clients_refused.store(fence == WriteFence::ClientWrites, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_fence_refuses_new_writes_and_waits_for_those_in_flight() {
        let gate = std::sync::Arc::new(WriteGate::default());
        let in_flight = gate.admit_client().expect("open gate admits");
        let closing = {
            let gate = gate.clone();
            gate.set(WriteFence::ClientWrites);
            tokio::spawn(async move { gate.settle(Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!closing.is_finished(), "settling waits for the write in flight");
        assert!(gate.admit_client().is_none(), "a write after the fence is refused");
        drop(in_flight);
        assert_eq!(closing.await.expect("close"), 0);
        assert!(!gate.refuses_xdr());
        gate.set(WriteFence::XdrWrites);
        assert_eq!(gate.settle(Duration::ZERO).await, 0);
        assert!(gate.refuses_xdr() && gate.admit_client().is_some(), "xdr fence admits clients");
    }

    #[tokio::test]
    async fn a_stuck_write_bounds_the_wait_and_is_reported() {
        let gate = WriteGate::default();
        let _stuck = gate.admit_client().expect("admitted");
        gate.set(WriteFence::ClientWrites);
        assert_eq!(gate.settle(Duration::from_millis(10)).await, 1);
    }
}
