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

    /// Called by a schedule this processor set up with
    /// [`Context::schedule`]: on stream time (when the task's stream time
    /// reaches the next multiple of the interval) or on wall-clock time.
    fn punctuate(
        &mut self,
        _ctx: &mut Context<'_>,
        _punctuation: Punctuation,
    ) -> Result<(), ProcessError> {
        Ok(())
    }

    /// Called when the task discarded its uncommitted store changes (an
    /// aborted transaction, a failed commit): a processor that keeps
    /// anything derived from its stores in its fields drops it here; the
    /// records since the last commit are processed again.
    fn rolled_back(&mut self) {}

    /// Called when the task closes (partition revoked or shutdown).
    fn close(&mut self) {}
}

/// Which clock a punctuation schedule follows (Kafka Streams'
/// `PunctuationType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PunctuationType {
    /// The task's stream time: the largest record timestamp it has seen.
    /// Does not move while no records arrive (unless the instance is
    /// configured to advance idle tasks' stream time).
    StreamTime,
    /// The wall clock, checked once per poll-loop iteration.
    WallClock,
}

/// One punctuation: which clock fired and its time (ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Punctuation {
    /// The schedule's clock.
    pub kind: PunctuationType,
    /// Stream time or wall-clock time (ms since the epoch) when it fired.
    pub time: i64,
}

/// A schedule a processor asked for: punctuate every `interval_ms` on `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ScheduleRequest {
    pub(crate) kind: PunctuationType,
    pub(crate) interval_ms: i64,
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
    pub(crate) stream_time: i64,
    pub(crate) schedules: &'a mut Vec<ScheduleRequest>,
    pub(crate) globals: Option<&'a crate::store::GlobalStores>,
}

impl<'a> Context<'a> {
    /// The context of processor `node`, which may use the stores at
    /// `allowed_stores`, while it handles a record from `origin` (`None`
    /// during init and punctuation) in the task of `partition`, at the
    /// task's `stream_time`; schedules it asks for go to `schedules`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        node: &'a str,
        allowed_stores: &'a [usize],
        stores: &'a mut StoreSet,
        forwarded: &'a mut Vec<Forward>,
        origin: Option<&'a Origin>,
        partition: i32,
        stream_time: i64,
        schedules: &'a mut Vec<ScheduleRequest>,
    ) -> Self {
        Context {
            node,
            allowed_stores,
            stores,
            forwarded,
            origin,
            partition,
            stream_time,
            schedules,
            globals: None,
        }
    }

    /// Gives the context the instance's global tables.
    pub(crate) fn with_globals(mut self, globals: &'a crate::store::GlobalStores) -> Self {
        self.globals = Some(globals);
        self
    }

    /// The global table `name` (read-only: the instance's global reader
    /// keeps it up to date).
    pub fn global_store(&self, name: &str) -> Result<&'a crate::store::GlobalTree, StoreError> {
        self.globals
            .and_then(|g| g.get(name))
            .ok_or_else(|| StoreError::Unknown(name.to_string()))
    }

    /// The task's stream time: the largest timestamp of any record it has
    /// processed (ms), never moving backwards, kept across restarts with
    /// the task's checkpoint; `-1` before the first record.
    pub fn stream_time(&self) -> i64 {
        self.stream_time
    }

    /// Asks for [`Processor::punctuate`] every `interval_ms` of `kind`
    /// time. Call it from [`Processor::init`]; a second call for the same
    /// clock replaces the first.
    pub fn schedule(&mut self, interval_ms: i64, kind: PunctuationType) {
        self.schedules.push(ScheduleRequest {
            kind,
            interval_ms: interval_ms.max(1),
        });
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

    /// The name of the node being run (borrowed for the context's whole
    /// life, so a processor may hold it while it uses the context).
    pub fn node_name(&self) -> &'a str {
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
