//! Cross-datacenter replication: one shipping pipeline per DR link and the receiver that applies
//! remote versions under the namespace's conflict-resolution policy (see DESIGN.md §6–7).
