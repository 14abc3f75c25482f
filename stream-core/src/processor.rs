//! The processor trait and the context a processor works through.

use crate::error::{Origin, ProcessError, StoreError};
use crate::record::Record;
use crate::store::{StoreSet, StoreView};

/// One operator of the processor graph.
///
/// Only [`process`](Processor::process) is required; the hooks default to
/// doing nothing. A task creates its own instance of every processor, so a
/// processor's fields are private to one task (one partition).
pub trait Processor: Send {
    /// Handles one record; forwards results through the context.
    fn process(&mut self, ctx: &mut Context<'_>, record: Record) -> Result<(), ProcessError>;

    /// Called once when the task starts, after its stores are restored.
    fn init(&mut self, _ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        Ok(())
    }

    /// Called when the task's clock advances (wall-clock punctuation).
    fn punctuate(&mut self, _ctx: &mut Context<'_>, _now_ms: i64) -> Result<(), ProcessError> {
        Ok(())
    }

    /// Called when the task closes (partition revoked or shutdown).
    fn close(&mut self) {}
}

/// A record forwarded by a processor: to every child, or to one by index.
pub(crate) struct Forward {
    pub(crate) child: Option<usize>,
    pub(crate) record: Record,
}

/// What a processor can do while it handles a record: forward records,
/// reach its stores, and learn where the current record came from.
pub struct Context<'a> {
    pub(crate) node: &'a str,
    pub(crate) allowed_stores: &'a [usize],
    pub(crate) stores: &'a mut StoreSet,
    pub(crate) forwarded: &'a mut Vec<Forward>,
    pub(crate) origin: Option<&'a Origin>,
    pub(crate) partition: i32,
}

impl<'a> Context<'a> {
    /// The context of processor `node`, which may use the stores at
    /// `allowed_stores`, while it handles a record from `origin` (`None`
    /// during init and punctuation) in the task of `partition`.
    pub(crate) fn new(
        node: &'a str,
        allowed_stores: &'a [usize],
        stores: &'a mut StoreSet,
        forwarded: &'a mut Vec<Forward>,
        origin: Option<&'a Origin>,
        partition: i32,
    ) -> Self {
        Context {
            node,
            allowed_stores,
            stores,
            forwarded,
            origin,
            partition,
        }
    }

    /// Forwards a record to every child of this node.
    pub fn forward(&mut self, record: Record) {
        self.forwarded.push(Forward {
            child: None,
            record,
        });
    }

    /// Forwards a record to one child, by its position among the children
    /// (the order in which they were attached).
    pub fn forward_to(&mut self, child: usize, record: Record) {
        self.forwarded.push(Forward {
            child: Some(child),
            record,
        });
    }

    /// The store with this name, if it is connected to this processor.
    pub fn store(&mut self, name: &str) -> Result<StoreView<'_>, StoreError> {
        let idx = self
            .stores
            .index_of(name)
            .filter(|i| self.allowed_stores.contains(i))
            .ok_or_else(|| StoreError::Unknown(name.to_string()))?;
        Ok(self.stores.view(idx))
    }

    /// The name of the node being run.
    pub fn node_name(&self) -> &str {
        self.node
    }

    /// Topic, partition and offset of the input record being processed
    /// (`None` during punctuation or init).
    pub fn origin(&self) -> Option<&Origin> {
        self.origin
    }

    /// The partition of the task running this processor.
    pub fn partition(&self) -> i32 {
        self.partition
    }
}
