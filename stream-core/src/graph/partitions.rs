//! The partition planner: how many partitions each topic of a topology has
//! and how many tasks each sub-topology runs, from the counts of the
//! external source topics. Used by the runtime's topic preparation and by
//! the [`TestDriver`](crate::driver::TestDriver) alike.

use std::collections::HashMap;
use std::fmt;

use super::{Changelog, TopicRef, Topology};

/// Partition counts and task counts of a topology.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionPlan {
    /// Partitions per topic (resolved names): sources, repartition topics
    /// and internal changelogs.
    pub partitions: HashMap<String, i32>,
    /// Tasks per sub-topology (its sources' partition count).
    pub tasks: Vec<i32>,
}

/// Two topics read by one sub-topology have different partition counts:
/// their records cannot be co-partitioned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoPartitionMismatch {
    /// The topic whose count differs.
    pub topic: String,
    /// Its partition count.
    pub count: i32,
    /// The first topic of the sub-topology.
    pub first: String,
    /// Its partition count.
    pub first_count: i32,
}

impl fmt::Display for CoPartitionMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` has {} partitions but `{}`, read by the same sub-topology, has {}; co-partitioned topics need equal counts",
            self.topic, self.count, self.first, self.first_count
        )
    }
}

impl std::error::Error for CoPartitionMismatch {}

impl Topology {
    /// Gives the repartition topics a sub-topology reads, when it reads no
    /// external topic, one count: the largest (a fixed count that differs
    /// is a mismatch).
    fn align_internal_sources(
        &self,
        app: &str,
        st: &super::SubTopology,
        plan: &mut PartitionPlan,
    ) -> Result<(), CoPartitionMismatch> {
        let mut internal = Vec::new();
        for t in &st.sources {
            match t {
                TopicRef::External(_) => return Ok(()),
                TopicRef::Internal(suffix) => internal.push((suffix, t.resolve(app))),
            }
        }
        let Some((max_topic, max)) = internal
            .iter()
            .filter_map(|(_, name)| Some((name.clone(), *plan.partitions.get(name)?)))
            .max_by_key(|(_, n)| *n)
        else {
            return Ok(());
        };
        for (suffix, name) in internal {
            match self.repartition_topics().get(suffix).copied().flatten() {
                Some(m) if m != max => {
                    return Err(CoPartitionMismatch {
                        topic: name,
                        count: m,
                        first: max_topic,
                        first_count: max,
                    })
                }
                _ => {
                    plan.partitions.insert(name, max);
                }
            }
        }
        Ok(())
    }

    /// Plans partitions for application `app` given `external`, the
    /// partition count of every external source topic (missing ones count
    /// as 1). Repartition topics take their configured count or their
    /// upstream sub-topology's; a sub-topology runs as many tasks as its
    /// sources have partitions; internal changelogs get one partition per
    /// task.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use stream_core::graph::{TopicRef, TopologyBuilder};
    /// # use stream_core::serde::{erase, StringSerde};
    /// # let s = || erase::<String>(Arc::new(StringSerde));
    /// let mut b = TopologyBuilder::new();
    /// let src = b.add_source("in", vec![TopicRef::External("in".into())], s(), s());
    /// b.add_sink("out", TopicRef::External("out".into()), s(), s(), None, &[src]);
    /// let plan = b.build().unwrap().plan_partitions("app", &[("in".to_string(), 4)].into()).unwrap();
    /// assert_eq!(plan.tasks, vec![4]);
    /// assert_eq!(plan.partitions["in"], 4);
    /// ```
    pub fn plan_partitions(
        &self,
        app: &str,
        external: &HashMap<String, i32>,
    ) -> Result<PartitionPlan, CoPartitionMismatch> {
        let subs = self.subtopologies();
        let mut plan = PartitionPlan::default();
        let mut tasks: Vec<Option<i32>> = vec![None; subs.len()];
        for st in subs {
            let mut first: Option<(&str, i32)> = None;
            for t in &st.sources {
                if let TopicRef::External(name) = t {
                    let n = external.get(name).copied().unwrap_or(1).max(1);
                    plan.partitions.insert(name.clone(), n);
                    match first {
                        None => first = Some((name, n)),
                        Some((f, m)) if m != n => {
                            return Err(CoPartitionMismatch {
                                topic: name.clone(),
                                count: n,
                                first: f.to_string(),
                                first_count: m,
                            })
                        }
                        Some(_) => {}
                    }
                }
            }
            tasks[st.id] = first.map(|(_, n)| n);
        }
        // A repartition topic read beside external topics (a join after a
        // key change) is co-partitioned with them: it takes their count.
        let mut joined: HashMap<&str, (i32, String)> = HashMap::new();
        for st in subs {
            let Some(n) = tasks[st.id] else { continue };
            let external = st.sources.iter().find_map(|t| match t {
                TopicRef::External(name) => Some(name.clone()),
                TopicRef::Internal(_) => None,
            });
            for t in &st.sources {
                if let (TopicRef::Internal(suffix), Some(ext)) = (t, &external) {
                    let fixed = self.repartition_topics().get(suffix).copied().flatten();
                    if let Some(m) = fixed.filter(|m| *m != n) {
                        return Err(CoPartitionMismatch {
                            topic: t.resolve(app),
                            count: m,
                            first: ext.clone(),
                            first_count: n,
                        });
                    }
                    joined.insert(suffix.as_str(), (n, ext.clone()));
                }
            }
        }
        // A chain of repartitions settles within one pass per sub-topology.
        for _ in 0..=subs.len() {
            for st in subs {
                for t in &st.sinks {
                    if let TopicRef::Internal(suffix) = t {
                        let fixed = self.repartition_topics().get(suffix).copied().flatten();
                        let co = joined.get(suffix.as_str()).map(|(n, _)| *n);
                        if let Some(n) = co.or(fixed).or(tasks[st.id]) {
                            plan.partitions.insert(t.resolve(app), n);
                        }
                    }
                }
            }
            // Repartition topics joined with each other (no external topic
            // beside them) take the largest of their counts.
            for st in subs {
                self.align_internal_sources(app, st, &mut plan)?;
            }
            for st in subs {
                if tasks[st.id].is_none() {
                    tasks[st.id] = st
                        .sources
                        .iter()
                        .filter_map(|t| plan.partitions.get(&t.resolve(app)).copied())
                        .max();
                }
            }
        }
        plan.tasks = tasks.iter().map(|c| c.unwrap_or(1)).collect();
        for suffix in self.repartition_topics().keys() {
            let name = super::internal_topic_name(app, suffix);
            plan.partitions.entry(name).or_insert(1);
        }
        for st in subs {
            for s in &st.stores {
                if let Some(spec) = self.store(s) {
                    if matches!(spec.changelog, Changelog::Internal) {
                        let name = super::changelog_topic_name(app, s);
                        plan.partitions.insert(name, plan.tasks[st.id]);
                    }
                }
            }
        }
        Ok(plan)
    }
}
