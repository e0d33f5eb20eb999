//! The current topology of a running process, replaced when a new version arrives from the
//! topology service. Readers take a snapshot (`Arc`) and never see a half-applied change.

use std::sync::{Arc, PoisonError, RwLock};

use crate::Topology;

/// A cheaply cloned handle on the current topology.
#[derive(Debug, Clone)]
pub struct SharedTopology(Arc<RwLock<Arc<Topology>>>);

impl SharedTopology {
    pub fn new(topology: Arc<Topology>) -> Self {
        SharedTopology(Arc::new(RwLock::new(topology)))
    }

    /// A snapshot of the current topology.
    pub fn get(&self) -> Arc<Topology> {
        self.0.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Makes `topology` current for every holder of this handle.
    pub fn replace(&self, topology: Arc<Topology>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = topology;
    }
}
