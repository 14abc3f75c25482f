//! A task's progress: where its input stands, which repartition records it
//! already applied, how far its changelogs reach, what the last commit
//! recorded, and the restore filter. The exactly-once and exact-restore
//! logic, in one place.
//!
//! Keys are [`TopicPartition`]s and [`UpstreamKey`]s, as in the sled
//! checkpoint. A task has a handful of each, so the per-record lookups scan
//! them by `&str` rather than build a key.

use std::collections::{BTreeMap, HashMap};

use super::headers::{SourceMark, UpstreamMark};
use super::{CommittedOffset, TaskId};
use crate::coordinates::{TopicPartition, UpstreamKey};
use crate::store::Checkpoint;

/// The value of `topic`/`partition` in `map`, found without allocating.
fn lookup<V: Copy>(map: &BTreeMap<TopicPartition, V>, topic: &str, partition: i32) -> Option<V> {
    map.iter()
        .find(|(k, _)| k.is(topic, partition))
        .map(|(_, v)| *v)
}

/// Positions, dedup marks, changelog offsets and stream time, and their
/// committed copies.
#[derive(Debug)]
pub(crate) struct Progress {
    /// The largest event time processed (`-1`: none).
    stream_time: i64,
    committed_stream_time: i64,
    /// Next input offset to process, per input partition.
    positions: BTreeMap<TopicPartition, i64>,
    /// Per repartition topic and upstream partition: the last applied
    /// upstream `(offset, seq)`.
    dedup: BTreeMap<UpstreamKey, (i64, u32)>,
    /// Per changelog partition: the offset after the last acknowledged
    /// record (restore starts there).
    changelog_offsets: BTreeMap<TopicPartition, i64>,
    /// During restore: changes whose input offset is at or past this are
    /// skipped (their input was never committed).
    restore_limits: BTreeMap<TopicPartition, i64>,
    committed_positions: BTreeMap<TopicPartition, i64>,
    committed_dedup: BTreeMap<UpstreamKey, (i64, u32)>,
    /// What a sealed commit records (positions, marks and stream time at
    /// the commit point), until it is written.
    sealed: Option<Checkpoint>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            stream_time: -1,
            committed_stream_time: -1,
            positions: BTreeMap::new(),
            dedup: BTreeMap::new(),
            changelog_offsets: BTreeMap::new(),
            restore_limits: BTreeMap::new(),
            committed_positions: BTreeMap::new(),
            committed_dedup: BTreeMap::new(),
            sealed: None,
        }
    }
}

/// An upstream record arriving through a repartition topic.
pub(crate) struct Arrival<'a> {
    via: &'a str,
    up_topic: &'a str,
    up_partition: i32,
    mark: (i64, u32),
}

impl Progress {
    /// The task's stream time (`-1` before the first record).
    pub(crate) fn stream_time(&self) -> i64 {
        self.stream_time
    }

    /// A record with event time `ts` was processed (or idle time passed):
    /// stream time moves to `ts` if that is later. Returns whether it moved.
    pub(crate) fn observe(&mut self, ts: i64) -> bool {
        if ts > self.stream_time {
            self.stream_time = ts;
            true
        } else {
            false
        }
    }

    /// Next offset to process per input partition.
    pub(crate) fn positions(&self) -> &BTreeMap<TopicPartition, i64> {
        &self.positions
    }

    /// Next offset to process of `topic`/`partition`.
    pub(crate) fn position(&self, topic: &str, partition: i32) -> Option<i64> {
        lookup(&self.positions, topic, partition)
    }

    /// The input position of `topic`/`partition` the last written commit recorded.
    pub(crate) fn committed_position(&self, topic: &str, partition: i32) -> Option<i64> {
        lookup(&self.committed_positions, topic, partition)
    }

    /// Records that `topic`/`partition` was processed up to `next` (exclusive).
    pub(crate) fn advance(&mut self, topic: &str, partition: i32, next: i64) {
        match self
            .positions
            .iter_mut()
            .find(|(k, _)| k.is(topic, partition))
        {
            Some((_, v)) => *v = next,
            None => {
                self.positions
                    .insert(TopicPartition::new(topic, partition), next);
            }
        }
    }

    /// Checks a repartition record's upstream mark: `Err(())` if it was
    /// already applied (an upstream replay), else what to record once it
    /// is processed.
    pub(crate) fn arrive<'a>(
        &self,
        topic: &'a str,
        up: &UpstreamMark<'a>,
    ) -> Result<Arrival<'a>, ()> {
        let known = self
            .dedup
            .iter()
            .find(|(k, _)| k.is(topic, up.topic, up.partition));
        match known {
            Some((_, &mark)) if up.position() <= mark => Err(()),
            _ => Ok(Arrival {
                via: topic,
                up_topic: up.topic,
                up_partition: up.partition,
                mark: up.position(),
            }),
        }
    }

    /// Records a processed repartition record.
    pub(crate) fn applied(&mut self, a: Arrival<'_>) {
        let known = self
            .dedup
            .iter_mut()
            .find(|(k, _)| k.is(a.via, a.up_topic, a.up_partition));
        match known {
            Some((_, v)) => *v = a.mark,
            None => {
                let key = UpstreamKey {
                    via: a.via.to_string(),
                    upstream: TopicPartition::new(a.up_topic, a.up_partition),
                };
                self.dedup.insert(key, a.mark);
            }
        }
    }

    /// Prepares a restore: decides where input resumes (see
    /// [`super::Task::begin_restore`] for the rules) from the group's
    /// committed offsets, this task's `checkpoint`, and whether the
    /// topology `keeps_state`. `reads` says which partitions are the task's.
    pub(crate) fn plan(
        &mut self,
        task: TaskId,
        keeps_state: bool,
        reads: impl Fn(&TopicPartition) -> bool,
        committed: &BTreeMap<TopicPartition, CommittedOffset>,
        checkpoint: Option<&Checkpoint>,
    ) {
        let local = checkpoint.map(|c| &c.positions);
        let mut limits: BTreeMap<TopicPartition, i64> = BTreeMap::new();
        for (tp, c) in committed.iter().filter(|(tp, _)| reads(tp)) {
            if c.ours {
                limits.insert(tp.clone(), c.offset);
                continue;
            }
            match local.and_then(|l| l.get(tp)) {
                Some(&at) if at != c.offset => tracing::warn!(
                    task = %task,
                    "input {tp}: the group's committed offset {} was committed by {}; resuming at offset {at}, the position of this application's local state (records in between are processed, not skipped)",
                    c.offset,
                    c.committer()
                ),
                Some(_) => {}
                None if !keeps_state => {
                    tracing::warn!(
                        task = %task,
                        "input {tp}: the group's committed offset {} was committed by {}; this task keeps no state, so it continues at offset {}",
                        c.offset,
                        c.committer(),
                        c.offset
                    );
                    limits.insert(tp.clone(), c.offset);
                }
                None => tracing::warn!(
                    task = %task,
                    "input {tp}: the group's committed offset {} was committed by {} and no local state proves what this application processed; counting from offset 0, the beginning of the partition",
                    c.offset,
                    c.committer()
                ),
            }
        }
        match checkpoint {
            Some(cp) => {
                for (k, &v) in &cp.positions {
                    let e = limits.entry(k.clone()).or_insert(v);
                    *e = (*e).max(v);
                }
                self.dedup = cp.dedup.clone();
                self.changelog_offsets = cp.changelog_offsets.clone();
                self.stream_time = cp.stream_time;
            }
            None => {
                self.dedup.clear();
                self.changelog_offsets.clear();
                self.stream_time = -1;
            }
        }
        self.positions = limits.clone();
        self.restore_limits = limits;
    }

    /// Raises restore limits and positions to these committed offsets
    /// (a standby following a running task).
    pub(crate) fn advance_limits(
        &mut self,
        committed: impl Iterator<Item = (TopicPartition, i64)>,
    ) {
        for (tp, offset) in committed {
            for m in [&mut self.restore_limits, &mut self.positions] {
                let e = m.entry(tp.clone()).or_insert(offset);
                *e = (*e).max(offset);
            }
        }
    }

    /// Moves positions ahead of `local` (the checkpoint's) back to it;
    /// returns `(topic/partition, from, to)` for each one moved.
    pub(crate) fn fall_back(
        &mut self,
        local: &BTreeMap<TopicPartition, i64>,
    ) -> Vec<(TopicPartition, i64, i64)> {
        let mut moved = Vec::new();
        for (tp, pos) in self.positions.iter_mut() {
            let at = local.get(tp).copied().unwrap_or(0);
            if *pos > at {
                moved.push((tp.clone(), *pos, at));
                *pos = at;
            }
        }
        self.restore_limits = self.positions.clone();
        moved
    }

    /// The restore filter: whether a changelog record with these headers
    /// is applied (its input was committed, or it names no input).
    pub(crate) fn admits(&self, headers: &[(String, Vec<u8>)]) -> bool {
        self.admits_mark(SourceMark::find(headers).as_ref())
    }

    /// [`admits`](Self::admits) for a record's decoded `sx.src` mark.
    pub(crate) fn admits_mark(&self, src: Option<&SourceMark<'_>>) -> bool {
        match src {
            Some(src) => {
                let limit = lookup(&self.restore_limits, src.topic, src.partition).unwrap_or(0);
                src.offset < limit
            }
            None => true,
        }
    }

    /// A restored change from input `src` carried an upstream mark (in
    /// `headers`): the repartition record behind it was applied.
    pub(crate) fn restored_mark(&mut self, headers: &[(String, Vec<u8>)], src: &SourceMark<'_>) {
        let Some(up) = UpstreamMark::find(headers) else {
            return;
        };
        let seen = self
            .dedup
            .iter_mut()
            .find(|(k, _)| k.is(src.topic, up.topic, up.partition));
        match seen {
            Some((_, e)) => {
                if up.position() > *e {
                    *e = up.position();
                }
            }
            None => {
                let key = UpstreamKey {
                    via: src.topic.to_string(),
                    upstream: TopicPartition::new(up.topic, up.partition),
                };
                self.dedup.insert(key, up.position());
            }
        }
    }

    /// Every changelog partition's offset restore starts from.
    pub(crate) fn changelog_offsets(&self) -> &BTreeMap<TopicPartition, i64> {
        &self.changelog_offsets
    }

    /// The changelog offset restore starts from for `tp`.
    pub(crate) fn changelog_offset(&self, tp: &TopicPartition) -> Option<i64> {
        self.changelog_offsets.get(tp).copied()
    }

    /// Restore has read changelog partition `tp` up to `next`.
    pub(crate) fn set_changelog_offset(&mut self, tp: TopicPartition, next: i64) {
        self.changelog_offsets.insert(tp, next);
    }

    /// Takes the acknowledged changelog offsets of `partitions` from `acked`.
    pub(crate) fn acknowledged(
        &mut self,
        partitions: impl Iterator<Item = TopicPartition>,
        acked: &HashMap<TopicPartition, i64>,
    ) {
        for k in partitions {
            if let Some(&o) = acked.get(&k) {
                let e = self.changelog_offsets.entry(k).or_insert(o);
                *e = (*e).max(o);
            }
        }
    }

    /// What the next sled write records beside the state.
    pub(crate) fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            changelog_offsets: self.changelog_offsets.clone(),
            positions: self.positions.clone(),
            dedup: self.dedup.clone(),
            entries: Vec::new(),
            stream_time: self.stream_time,
            processed: false,
        }
    }

    /// The commit point: keeps what the checkpoint will record (its
    /// changelog offsets are filled in once acknowledged). A newer seal
    /// replaces an unwritten one (it covers everything the older did).
    pub(crate) fn seal(&mut self) {
        self.sealed = Some(Checkpoint {
            processed: true,
            ..self.checkpoint()
        });
    }

    /// Whether a sealed commit waits to be written.
    pub(crate) fn is_sealed(&self) -> bool {
        self.sealed.is_some()
    }

    /// Takes the sealed checkpoint, its changelog offsets the acknowledged
    /// ones; `sources` are the partitions of source topics that serve as
    /// changelogs (covered up to the sealed input position).
    pub(crate) fn take_sealed(
        &mut self,
        sources: impl Iterator<Item = TopicPartition>,
    ) -> Option<Checkpoint> {
        let mut cp = self.sealed.take()?;
        for tp in sources {
            if let Some(&p) = cp.positions.get(&tp) {
                let e = self.changelog_offsets.entry(tp).or_insert(p);
                *e = (*e).max(p);
            }
        }
        cp.changelog_offsets = self.changelog_offsets.clone();
        Some(cp)
    }

    /// `cp` was written: keep its copies to roll back to.
    pub(crate) fn committed(&mut self, cp: Checkpoint) {
        self.committed_positions = cp.positions;
        self.committed_dedup = cp.dedup;
        self.committed_stream_time = cp.stream_time;
    }

    /// Back to the last commit (an aborted transaction is reprocessed).
    pub(crate) fn rollback(&mut self) {
        self.sealed = None;
        self.positions = self.committed_positions.clone();
        self.dedup = self.committed_dedup.clone();
        self.stream_time = self.committed_stream_time;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours(offset: i64) -> CommittedOffset {
        CommittedOffset {
            offset,
            ours: true,
            metadata: String::new(),
        }
    }

    fn foreign(offset: i64) -> CommittedOffset {
        CommittedOffset {
            offset,
            ours: false,
            metadata: "other".into(),
        }
    }

    fn checkpoint(positions: &[(&str, i64)]) -> Checkpoint {
        Checkpoint {
            positions: positions.iter().map(|(k, v)| (tp(k), *v)).collect(),
            ..Checkpoint::default()
        }
    }

    fn tp(s: &str) -> TopicPartition {
        s.parse().unwrap()
    }

    const T: TaskId = TaskId {
        subtopology: 0,
        partition: 0,
    };

    #[test]
    fn should_trust_only_its_own_offsets_and_else_the_checkpoint() {
        let committed: BTreeMap<_, _> = [
            (tp("in/0"), ours(50)),
            (tp("in/1"), foreign(900)),
            (tp("in/2"), foreign(900)),
        ]
        .into();
        let cp = checkpoint(&[("in/0", 40), ("in/1", 70)]);
        let mut p = Progress::default();
        p.plan(T, true, |_| true, &committed, Some(&cp));
        assert_eq!(p.position("in", 0), Some(50), "ours, ahead of sled");
        assert_eq!(p.position("in", 1), Some(70), "foreign: sled's");
        assert_eq!(p.position("in", 2), None, "foreign, no state: from 0");
        let mut p = Progress::default();
        p.plan(T, false, |_| true, &committed, None);
        assert_eq!(p.position("in", 2), Some(900), "stateless: foreign");
        let mut p = Progress::default();
        p.plan(T, true, |t| t.is("in", 0), &committed, None);
        assert_eq!(p.positions().len(), 1, "only the task's partitions");
    }

    #[test]
    fn should_admit_only_committed_changes_and_fall_back_when_asked() {
        let committed: BTreeMap<_, _> = [(tp("in/0"), ours(10))].into();
        let mut p = Progress::default();
        p.plan(
            T,
            true,
            |_| true,
            &committed,
            Some(&checkpoint(&[("in/0", 4)])),
        );
        let h = |off| {
            vec![(
                super::super::headers::SOURCE_HEADER.to_string(),
                SourceMark {
                    offset: off,
                    partition: 0,
                    topic: "in",
                }
                .encode(),
            )]
        };
        assert!(p.admits(&h(9)));
        assert!(!p.admits(&h(10)));
        assert!(p.admits(&[]), "no mark: applied");
        let moved = p.fall_back(&checkpoint(&[("in/0", 4)]).positions);
        assert_eq!(moved, vec![(tp("in/0"), 10, 4)]);
        assert!(!p.admits(&h(4)));
    }

    #[test]
    fn should_roll_back_positions_and_marks_to_the_last_commit() {
        let mut p = Progress::default();
        p.advance("in", 0, 5);
        let up = UpstreamMark {
            offset: 3,
            seq: 0,
            partition: 1,
            topic: "up",
        };
        let a = p.arrive("rep", &up).ok().unwrap();
        p.applied(a);
        p.seal();
        let cp = p.take_sealed(std::iter::empty()).unwrap();
        p.committed(cp);
        assert!(p.arrive("rep", &up).is_err(), "already applied");
        p.advance("in", 0, 9);
        let later = UpstreamMark { offset: 4, ..up };
        let a = p.arrive("rep", &later).ok().unwrap();
        p.applied(a);
        p.rollback();
        assert_eq!(p.position("in", 0), Some(5));
        assert!(p.arrive("rep", &later).is_ok(), "rolled back mark");
    }
}
