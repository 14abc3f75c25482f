//! Global tables in the graph: declared beside the sub-topologies, read by
//! no task (every instance reads the whole topic, outside the consumer
//! group), looked up by processors by store name.

use std::sync::Arc;

use super::{ChangelogCodec, StoreFormat, Topology, TopologyBuilder};
use crate::error::TopologyError;

/// A global table: the topic every instance reads whole into `store`.
#[derive(Clone)]
pub struct GlobalTableSpec {
    /// Store name (processors look rows up by it).
    pub store: String,
    /// The topic.
    pub topic: String,
    /// Decides which records are rows (ones that deserialize), and their
    /// stored form; tombstones delete.
    pub codec: Arc<dyn ChangelogCodec>,
    /// Serdes, for interactive queries.
    pub format: Option<StoreFormat>,
}

impl TopologyBuilder {
    /// Declares a global table.
    pub fn add_global_table(&mut self, spec: GlobalTableSpec) {
        if self.has_store(&spec.store) || self.globals.iter().any(|g| g.store == spec.store) {
            self.errors
                .push(TopologyError::DuplicateName(spec.store.clone()));
        }
        self.globals.push(spec);
    }
}

impl Topology {
    /// The global tables.
    pub fn global_tables(&self) -> &[GlobalTableSpec] {
        &self.globals
    }
}
