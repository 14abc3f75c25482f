//! The compiled graph of one task: the nodes of its sub-topology only
//! (children re-indexed), dispatch, and the one place a processor's
//! [`Context`] is built.

use std::collections::HashMap;
use std::sync::Arc;

use super::collector::{RecordCollector, SinkNode};
use crate::error::{Origin, ProcessError};
use crate::graph::{NodeKind, SubTopology, TopicRef, Topology};
use crate::processor::{Context, Forward, Processor};
use crate::record::Record;
use crate::serde::DynSerde;
use crate::store::StoreSet;

enum Kind {
    Source {
        key: Arc<dyn DynSerde>,
        value: Arc<dyn DynSerde>,
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
}

/// A processor failed outside `process` (init or punctuate).
pub(crate) struct HookError {
    pub(crate) node: String,
    pub(crate) error: ProcessError,
}

/// One task's instance of its sub-topology.
pub(crate) struct TaskGraph {
    nodes: Vec<Node>,
    /// Resolved topic → (local node, reads a repartition topic).
    sources: HashMap<String, (usize, bool)>,
    input_topics: Vec<String>,
}

impl TaskGraph {
    /// Instantiates `sub` of `topology` for application `app`: fresh
    /// processors, resolved topic names.
    pub(crate) fn build(topology: &Topology, sub: &SubTopology, app: &str) -> Self {
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
                    topic: topic.resolve(app),
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
            sources,
            input_topics,
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
            Kind::Source { key, value } => Some(Source {
                node,
                internal,
                key,
                value,
            }),
            _ => None,
        }
    }

    /// Runs `hook` on processor `idx` (if it is one) with its context;
    /// returns what it forwarded.
    fn run_hook(
        &mut self,
        idx: usize,
        stores: &mut StoreSet,
        partition: i32,
        hook: &mut dyn FnMut(&mut dyn Processor, &mut Context<'_>) -> Result<(), ProcessError>,
    ) -> Result<Vec<Forward>, HookError> {
        let mut fwd = Vec::new();
        let node = &mut self.nodes[idx];
        if let Kind::Proc {
            processor,
            stores: allowed,
        } = &mut node.kind
        {
            let mut ctx = Context::new(&node.name, allowed, stores, &mut fwd, None, partition);
            hook(processor.as_mut(), &mut ctx).map_err(|error| HookError {
                node: node.name.clone(),
                error,
            })?;
        }
        Ok(fwd)
    }

    /// Runs `init` on every processor (after restore).
    pub(crate) fn init(&mut self, stores: &mut StoreSet, partition: i32) -> Result<(), HookError> {
        for idx in 0..self.nodes.len() {
            self.run_hook(idx, stores, partition, &mut |p, ctx| p.init(ctx))?;
        }
        Ok(())
    }

    /// Calls `punctuate(now_ms)` on every processor, in graph order; what
    /// each forwards runs through the graph, like a record from `origin`,
    /// before the next processor punctuates.
    pub(crate) fn punctuate(
        &mut self,
        stores: &mut StoreSet,
        partition: i32,
        now_ms: i64,
        origin: &Origin,
        out: &mut RecordCollector,
    ) -> Result<(), HookError> {
        for idx in 0..self.nodes.len() {
            let fwd = self.run_hook(idx, stores, partition, &mut |p, ctx| {
                p.punctuate(ctx, now_ms)
            })?;
            let children = self.nodes[idx].children.clone();
            for f in fwd {
                let targets: Vec<usize> = match f.child {
                    Some(i) => children.get(i).copied().into_iter().collect(),
                    None => children.clone(),
                };
                for c in targets {
                    self.dispatch(c, f.record.duplicate(), origin, stores, partition, out)
                        .map_err(|error| HookError {
                            node: self.nodes[idx].name.clone(),
                            error,
                        })?;
                }
            }
        }
        Ok(())
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
        partition: i32,
        out: &mut RecordCollector,
    ) -> Result<(), ProcessError> {
        let mut stack = vec![(start, record)];
        let mut fwd: Vec<Forward> = Vec::new();
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
                    );
                    processor.process(&mut ctx, rec)?;
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
        Ok(())
    }
}
