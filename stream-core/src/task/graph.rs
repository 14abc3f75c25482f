//! The compiled graph of one task: the nodes of its sub-topology only
//! (children re-indexed), dispatch, and the one place a processor's
//! [`Context`] is built.

use std::collections::HashMap;
use std::sync::Arc;

use super::collector::{RecordCollector, SinkNode};
use crate::error::{Origin, ProcessError};
use crate::graph::{NodeKind, SubTopology, TopicRef, Topology};
use crate::processor::{
    Context, Forward, Processor, Punctuation, PunctuationType, ScheduleRequest,
};
use crate::record::Record;
use crate::serde::DynSerde;
use crate::store::StoreSet;
use crate::time::TimestampExtractor;

enum Kind {
    Source {
        key: Arc<dyn DynSerde>,
        value: Arc<dyn DynSerde>,
        timestamps: TimestampExtractor,
    },
    Proc {
        processor: Box<dyn Processor>,
        /// Indexes into the task's stores.
        stores: Vec<usize>,
    },
    Sink(SinkNode),
}

struct Node {
    name: String,
    /// Local indexes.
    children: Vec<usize>,
    kind: Kind,
}

/// A source of the task: its node and serdes, and whether it reads a
/// repartition topic.
pub(crate) struct Source<'g> {
    pub(crate) node: usize,
    pub(crate) internal: bool,
    pub(crate) key: &'g Arc<dyn DynSerde>,
    pub(crate) value: &'g Arc<dyn DynSerde>,
    pub(crate) timestamps: &'g TimestampExtractor,
}

/// A processor failed outside `process` (init or punctuate).
pub(crate) struct HookError {
    pub(crate) node: String,
    pub(crate) error: ProcessError,
}

/// A punctuation schedule of one processor.
struct Schedule {
    node: usize,
    kind: PunctuationType,
    interval_ms: i64,
    /// When it fires next; `None` until its clock is first seen.
    next: Option<i64>,
}

impl Schedule {
    /// Whether it fires at `time`; moves `next` past `time` if so (missed
    /// intervals are skipped, not replayed). As in Kafka Streams, a
    /// stream-time schedule is aligned to 0 and fires at the first record;
    /// a wall-clock one first fires an interval after the clock is first
    /// seen (the task's first poll-loop iteration).
    fn due(&mut self, time: i64) -> bool {
        match self.next {
            None if self.kind == PunctuationType::StreamTime => {
                self.next = Some(0);
                self.due(time)
            }
            None => {
                self.next = Some(time + self.interval_ms);
                false
            }
            Some(next) if time >= next => {
                let missed = (time - next) / self.interval_ms;
                self.next = Some(next + (missed + 1) * self.interval_ms);
                true
            }
            Some(_) => false,
        }
    }
}

/// One task's instance of its sub-topology.
pub(crate) struct TaskGraph {
    nodes: Vec<Node>,
    schedules: Vec<Schedule>,
    /// Resolved topic → (local node, reads a repartition topic).
    sources: HashMap<String, (usize, bool)>,
    input_topics: Vec<String>,
    /// The instance's global tables, for lookups.
    globals: crate::store::GlobalStores,
    /// Dispatch's work list and forward buffer, kept between records.
    scratch: (Vec<(usize, Record)>, Vec<Forward>),
}

impl TaskGraph {
    /// Instantiates `sub` of `topology` for application `app`: fresh
    /// processors, resolved topic names.
    pub(crate) fn build(
        topology: &Topology,
        sub: &SubTopology,
        app: &str,
        globals: crate::store::GlobalStores,
    ) -> Self {
        let local: HashMap<usize, usize> =
            sub.nodes.iter().enumerate().map(|(l, &g)| (g, l)).collect();
        let all = topology.nodes();
        let mut sources = HashMap::new();
        let mut nodes = Vec::with_capacity(sub.nodes.len());
        for (l, &g) in sub.nodes.iter().enumerate() {
            let n = &all[g];
            let kind = match &n.kind {
                NodeKind::Source { topics, key, value } => {
                    for t in topics {
                        sources.insert(t.resolve(app), (l, matches!(t, TopicRef::Internal(_))));
                    }
                    Kind::Source {
                        key: key.clone(),
                        value: value.clone(),
                        timestamps: topology.timestamp_extractor(g),
                    }
                }
                NodeKind::Processor { factory, stores } => Kind::Proc {
                    processor: factory(),
                    stores: stores
                        .iter()
                        .filter_map(|s| sub.stores.iter().position(|x| x == s))
                        .collect(),
                },
                NodeKind::Sink {
                    topic,
                    key,
                    value,
                    partitioner,
                } => Kind::Sink(SinkNode {
                    topic: topic.resolve(app).into(),
                    key: key.clone(),
                    value: value.clone(),
                    partitioner: partitioner.clone(),
                    internal: matches!(topic, TopicRef::Internal(_)),
                }),
            };
            nodes.push(Node {
                name: n.name.clone(),
                children: n
                    .children
                    .iter()
                    .filter_map(|c| local.get(c).copied())
                    .collect(),
                kind,
            });
        }
        let mut input_topics: Vec<String> = sources.keys().cloned().collect();
        input_topics.sort();
        TaskGraph {
            nodes,
            schedules: Vec::new(),
            sources,
            input_topics,
            globals,
            scratch: (Vec::new(), Vec::new()),
        }
    }

    /// Topics (resolved) this task reads.
    pub(crate) fn input_topics(&self) -> &[String] {
        &self.input_topics
    }

    /// Whether the task reads `topic`.
    pub(crate) fn reads(&self, topic: &str) -> bool {
        self.sources.contains_key(topic)
    }

    /// The source reading `topic`.
    pub(crate) fn source(&self, topic: &str) -> Option<Source<'_>> {
        let &(node, internal) = self.sources.get(topic)?;
        match &self.nodes[node].kind {
            Kind::Source {
                key,
                value,
                timestamps,
            } => Some(Source {
                node,
                internal,
                key,
                value,
                timestamps,
            }),
            _ => None,
        }
    }

    /// Keeps the schedules processor `node` asked for.
    fn register(&mut self, node: usize, requests: Vec<ScheduleRequest>) {
        for r in requests {
            self.schedules
                .retain(|s| !(s.node == node && s.kind == r.kind));
            self.schedules.push(Schedule {
                node,
                kind: r.kind,
                interval_ms: r.interval_ms,
                next: None,
            });
        }
    }

    /// Runs `hook` on processor `idx` (if it is one) with its context;
    /// returns what it forwarded.
    fn run_hook(
        &mut self,
        idx: usize,
        stores: &mut StoreSet,
        at: (i32, i64),
        hook: &mut dyn FnMut(&mut dyn Processor, &mut Context<'_>) -> Result<(), ProcessError>,
    ) -> Result<Vec<Forward>, HookError> {
        let (partition, stream_time) = at;
        let mut fwd = Vec::new();
        let mut requests = Vec::new();
        let node = &mut self.nodes[idx];
        if let Kind::Proc {
            processor,
            stores: allowed,
        } = &mut node.kind
        {
            let mut ctx = Context::new(
                &node.name,
                allowed,
                stores,
                &mut fwd,
                None,
                partition,
                stream_time,
                &mut requests,
            )
            .with_globals(&self.globals);
            hook(processor.as_mut(), &mut ctx).map_err(|error| HookError {
                node: node.name.clone(),
                error,
            })?;
        }
        self.register(idx, requests);
        Ok(fwd)
    }

    /// Runs `init` on every processor (after restore).
    pub(crate) fn init(
        &mut self,
        stores: &mut StoreSet,
        partition: i32,
        stream_time: i64,
    ) -> Result<(), HookError> {
        for idx in 0..self.nodes.len() {
            self.run_hook(idx, stores, (partition, stream_time), &mut |p, ctx| {
                p.init(ctx)
            })?;
        }
        Ok(())
    }

    /// Whether any processor scheduled a punctuation on `kind`.
    pub(crate) fn has_schedule(&self, kind: PunctuationType) -> bool {
        self.schedules.iter().any(|s| s.kind == kind)
    }

    /// Fires the schedules on `kind` that are due at `time`, in the order
    /// they were set up; what each processor forwards runs through the
    /// graph, like a record from `origin`, before the next one fires.
    /// Returns how many fired.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn punctuate(
        &mut self,
        kind: PunctuationType,
        time: i64,
        stream_time: i64,
        stores: &mut StoreSet,
        partition: i32,
        origin: &Origin,
        out: &mut RecordCollector,
    ) -> Result<usize, HookError> {
        let due: Vec<usize> = self
            .schedules
            .iter_mut()
            .filter(|s| s.kind == kind)
            .filter_map(|s| s.due(time).then_some(s.node))
            .collect();
        let punctuation = Punctuation { kind, time };
        for &idx in &due {
            let fwd = self.run_hook(idx, stores, (partition, stream_time), &mut |p, ctx| {
                p.punctuate(ctx, punctuation)
            })?;
            let children = self.nodes[idx].children.clone();
            for f in fwd {
                let targets: Vec<usize> = match f.child {
                    Some(i) => children.get(i).copied().into_iter().collect(),
                    None => children.clone(),
                };
                for c in targets {
                    self.dispatch(
                        c,
                        f.record.duplicate(),
                        origin,
                        stores,
                        (partition, stream_time),
                        out,
                    )
                    .map_err(|error| HookError {
                        node: self.nodes[idx].name.clone(),
                        error,
                    })?;
                }
            }
        }
        Ok(due.len())
    }

    /// Runs `rolled_back` on every processor.
    pub(crate) fn rolled_back(&mut self) {
        for node in &mut self.nodes {
            if let Kind::Proc { processor, .. } = &mut node.kind {
                processor.rolled_back();
            }
        }
    }

    /// Runs `close` on every processor.
    pub(crate) fn close(&mut self) {
        for node in &mut self.nodes {
            if let Kind::Proc { processor, .. } = &mut node.kind {
                processor.close();
            }
        }
    }

    /// Runs `record` from node `start` through the graph, depth first;
    /// sinks hand their records to `out`.
    pub(crate) fn dispatch(
        &mut self,
        start: usize,
        record: Record,
        origin: &Origin,
        stores: &mut StoreSet,
        at: (i32, i64),
        out: &mut RecordCollector,
    ) -> Result<(), ProcessError> {
        let (partition, stream_time) = at;
        let (mut stack, mut fwd) = std::mem::take(&mut self.scratch);
        stack.clear();
        fwd.clear();
        stack.push((start, record));
        let mut requests = Vec::new();
        while let Some((idx, rec)) = stack.pop() {
            let node = &mut self.nodes[idx];
            match &mut node.kind {
                Kind::Source { .. } => fwd.push(Forward {
                    child: None,
                    record: rec,
                }),
                Kind::Proc {
                    processor,
                    stores: allowed,
                } => {
                    let mut ctx = Context::new(
                        &node.name,
                        allowed,
                        stores,
                        &mut fwd,
                        Some(origin),
                        partition,
                        stream_time,
                        &mut requests,
                    )
                    .with_globals(&self.globals);
                    processor.process(&mut ctx, rec)?;
                    if !requests.is_empty() {
                        let r = std::mem::take(&mut requests);
                        self.register(idx, r);
                    }
                }
                Kind::Sink(sink) => {
                    out.sink(sink, rec)?;
                    continue;
                }
            }
            let children = &self.nodes[idx].children;
            for f in fwd.drain(..).rev() {
                match f.child {
                    Some(i) => {
                        if let Some(&c) = children.get(i) {
                            stack.push((c, f.record));
                        }
                    }
                    None => {
                        if let Some((&first, rest)) = children.split_first() {
                            for &c in rest.iter().rev() {
                                stack.push((c, f.record.duplicate()));
                            }
                            stack.push((first, f.record));
                        }
                    }
                }
            }
        }
        self.scratch = (stack, fwd);
        Ok(())
    }
}
