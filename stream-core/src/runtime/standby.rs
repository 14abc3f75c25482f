//! Standby replicas: which instance keeps a warm copy of which task
//! (`StreamsConfig::num_standby_replicas`, Kafka Streams' name).
//!
//! librdkafka offers no custom assignor, so standbys are not assigned by
//! the group leader as in Kafka Streams; each instance works them out from
//! the group's description instead, which every member sees alike: members
//! in order of member id; a task's owner is the member assigned its input
//! partition; its standbys are the next `num_standby_replicas` members
//! after the owner (wrapping around), never the owner itself. An instance
//! finds itself by its member id. Each instance re-checks every few
//! seconds and after every rebalance.
//!
//! A standby task is opened over the instance's own local state (the same
//! sled trees the task would use when active) and follows the task's
//! changelog partitions on the restore thread with the exact-restore
//! filter: it applies a changelog record only once the input behind it is
//! committed in the group, and waits at the first one that is not. When
//! the task moves to this instance, the standby is closed with its
//! checkpoint, and the task's restore reads only the changelog after it.

use std::collections::{BTreeMap, BTreeSet};

use rdkafka::consumer::Consumer;

use crate::graph::Topology;
use crate::task::TaskId;

/// A member of the group as the standby rule sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupMember {
    /// The broker-assigned member id (orders the members).
    pub(crate) id: String,
    /// Its assigned partitions.
    pub(crate) partitions: BTreeSet<(String, i32)>,
}

/// Every stateful task of `topology` with the input partitions it reads
/// (one task per partition).
pub(crate) fn stateful_tasks(
    topology: &Topology,
    application_id: &str,
    tasks_per_subtopology: &[i32],
) -> BTreeMap<TaskId, Vec<(String, i32)>> {
    let mut out = BTreeMap::new();
    for st in topology.subtopologies() {
        if st.stores.is_empty() {
            continue;
        }
        let n = tasks_per_subtopology.get(st.id).copied().unwrap_or(0);
        for p in 0..n {
            let inputs = st
                .sources
                .iter()
                .map(|t| (t.resolve(application_id), p))
                .collect();
            out.insert(
                TaskId {
                    subtopology: st.id,
                    partition: p,
                },
                inputs,
            );
        }
    }
    out
}

/// The consumer's own member id in its group (`None` before it joined).
pub(crate) fn member_id<C: rdkafka::consumer::ConsumerContext>(
    consumer: &rdkafka::consumer::BaseConsumer<C>,
) -> Option<String> {
    let rk = consumer.client().native_ptr();
    // SAFETY: `rk` is the live client handle of `consumer`;
    // rd_kafka_memberid returns NULL or a NUL-terminated string allocated by
    // librdkafka, which is copied and then freed with rd_kafka_mem_free, as
    // librdkafka's documentation requires.
    unsafe {
        let raw = rdkafka::bindings::rd_kafka_memberid(rk);
        if raw.is_null() {
            return None;
        }
        let id = std::ffi::CStr::from_ptr(raw).to_string_lossy().into_owned();
        rdkafka::bindings::rd_kafka_mem_free(rk, raw.cast());
        (!id.is_empty()).then_some(id)
    }
}

/// The tasks member `me` stands by for, out of `tasks`, with `replicas`
/// standbys per task.
pub(crate) fn standby_tasks(
    members: &[GroupMember],
    me: &str,
    tasks: &BTreeMap<TaskId, Vec<(String, i32)>>,
    replicas: usize,
) -> BTreeSet<TaskId> {
    let mut sorted: Vec<&GroupMember> = members.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let n = sorted.len();
    let Some(me) = (0..n).find(|&i| sorted[i].id == me) else {
        return BTreeSet::new();
    };
    let me = &me;
    let mut out = BTreeSet::new();
    for (task, inputs) in tasks {
        let Some(owner) =
            (0..n).find(|&i| inputs.iter().any(|tp| sorted[i].partitions.contains(tp)))
        else {
            continue;
        };
        if (1..n).take(replicas).any(|j| (owner + j) % n == *me) {
            out.insert(*task);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, parts: &[i32]) -> GroupMember {
        GroupMember {
            id: id.into(),
            partitions: parts.iter().map(|p| ("in".to_string(), *p)).collect(),
        }
    }

    fn task(p: i32) -> TaskId {
        TaskId {
            subtopology: 0,
            partition: p,
        }
    }

    #[test]
    fn should_put_standbys_on_the_next_members_never_on_the_owner() {
        let members = [member("c", &[2]), member("a", &[0]), member("b", &[1])];
        let tasks: BTreeMap<TaskId, Vec<(String, i32)>> = (0..3)
            .map(|p| (task(p), vec![("in".to_string(), p)]))
            .collect();
        // Sorted a(0), b(1), c(2): one replica goes to the next member.
        assert_eq!(
            standby_tasks(&members, "a", &tasks, 1),
            BTreeSet::from([task(2)])
        );
        assert_eq!(
            standby_tasks(&members, "b", &tasks, 1),
            BTreeSet::from([task(0)])
        );
        assert_eq!(
            standby_tasks(&members, "c", &tasks, 1),
            BTreeSet::from([task(1)])
        );
        // Two replicas: every other task; more replicas than members: the same.
        assert_eq!(
            standby_tasks(&members, "a", &tasks, 2),
            BTreeSet::from([task(1), task(2)])
        );
        assert_eq!(
            standby_tasks(&members, "a", &tasks, 5),
            BTreeSet::from([task(1), task(2)])
        );
        // A member assigned nothing stands by too; alone or unknown: none.
        let two = [member("a", &[0, 1, 2]), member("b", &[])];
        assert_eq!(standby_tasks(&two, "b", &tasks, 1).len(), 3);
        assert!(standby_tasks(&two, "a", &tasks, 1).is_empty());
        assert!(standby_tasks(&members[..1], "c", &tasks, 1).is_empty());
        assert!(standby_tasks(&members, "zz", &tasks, 1).is_empty());
    }
}
