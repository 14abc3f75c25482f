//! Restoring a task: where its input resumes, which changelog records
//! it applies, and how far restore has read.

use std::borrow::Cow;
use std::collections::BTreeMap;

use super::headers::SourceMark;
use super::late_writes::HandedOver;
use super::{CommittedOffset, RestoreTarget, Task};
use crate::coordinates::TopicPartition;
use crate::error::StoreError;

impl Task {
    /// Prepares a restore. `committed` holds the input offsets the consumer
    /// group holds (`topic/partition` → offset, and whether this
    /// application committed it). Returns the changelog partitions to read
    /// and their start offsets: the checkpoint's offsets when local state
    /// exists, the beginning otherwise.
    ///
    /// Where input resumes, per partition:
    /// - an offset this application committed: the larger of it and the
    ///   local checkpoint's position (everything before either was
    ///   acknowledged, and the changelog's tail fills the gap);
    /// - an offset another program committed in the same group is not
    ///   trusted: the local checkpoint's position when local state exists,
    ///   else the beginning of the partition for a task with stores (only a
    ///   recount is exact: the changelog cannot tell which of its records
    ///   were committed); in a topology without stores there is nothing to
    ///   recount and the task continues at the foreign offset (a stateless
    ///   task that feeds a stateful one through a repartition topic
    ///   recounts too: the downstream task drops what it already applied).
    ///   Each case logs one warning line naming the partition and both
    ///   offsets;
    /// - no committed offset: the checkpoint's position, or the beginning.
    pub fn begin_restore(
        &mut self,
        committed: &BTreeMap<TopicPartition, CommittedOffset>,
    ) -> Result<Vec<RestoreTarget>, StoreError> {
        let checkpoint = self.stores.checkpoint()?;
        let (graph, layout, partition) = (&self.graph, self.config.layout, self.id.partition);
        let reads = |tp: &TopicPartition| {
            graph.reads(&tp.topic) && layout.task_of(tp.partition) == partition
        };
        self.late_writes.clear();
        if let Some(cp) = checkpoint.as_ref().filter(|cp| cp.processed) {
            self.late_writes.set_floor(&cp.positions);
        }
        self.progress.plan(
            self.id,
            self.topology_keeps_state,
            reads,
            committed,
            checkpoint.as_ref(),
        );
        Ok(self
            .changelog_partitions()
            .into_iter()
            .map(|(store, topic, partition)| RestoreTarget {
                start: self
                    .progress
                    .changelog_offset(&TopicPartition::new(&topic, partition))
                    .unwrap_or(0),
                end: self
                    .out
                    .is_source(store)
                    .then(|| self.progress.position(&topic, partition).unwrap_or(0)),
                store,
                topic,
                partition,
            })
            .collect())
    }

    /// Whether restore would apply a changelog record with these headers
    /// now (its input was committed, or it names none). A standby stops at
    /// the first record it may not apply yet.
    pub fn restore_admits(&self, headers: &[(String, Vec<u8>)]) -> bool {
        self.progress.admits(headers)
    }

    /// A standby learns the group's newer committed offsets: changelog
    /// records of input before them may be applied.
    pub fn advance_standby(&mut self, committed: &BTreeMap<TopicPartition, CommittedOffset>) {
        let (graph, layout, partition) = (&self.graph, self.config.layout, self.id.partition);
        let reads = |tp: &TopicPartition| {
            graph.reads(&tp.topic) && layout.task_of(tp.partition) == partition
        };
        self.progress.advance_limits(
            committed
                .iter()
                .filter(|(tp, c)| c.ours && reads(tp))
                .map(|(tp, c)| (tp.clone(), c.offset)),
        );
    }

    /// The changelog cannot be read, so nothing past the local checkpoint
    /// can be restored: input positions ahead of the checkpoint's (an
    /// offset this application committed after a sled write that a crash
    /// lost) go back to it, and restore skips nothing. Returns the moved
    /// partitions as `(partition, from, to)`.
    pub fn fall_back_to_checkpoint(
        &mut self,
    ) -> Result<Vec<(TopicPartition, i64, i64)>, StoreError> {
        let local = self
            .stores
            .checkpoint()?
            .map(|c| c.positions)
            .unwrap_or_default();
        Ok(self.progress.fall_back(&local))
    }

    /// Whether input resumes anywhere but the beginning (a position is
    /// known for some input partition).
    pub fn has_positions(&self) -> bool {
        !self.progress.positions().is_empty()
    }

    /// Applies one changelog record read during restore. Returns whether it
    /// changed the store (records of others, uncommitted ones and ones
    /// written late, see `late_writes`, are skipped).
    pub fn restore_record(
        &mut self,
        store: usize,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(String, Vec<u8>)],
        timestamp: i64,
    ) -> bool {
        // A table's source topic is read only up to where input resumes,
        // all of it processed: its records need no marks (and may carry
        // another application's).
        let source = self.out.is_source(store);
        // Decoded once: the filter, the guard and the dedup marks read it.
        let mark = if source {
            None
        } else {
            SourceMark::find(headers)
        };
        if !self.progress.admits_mark(mark.as_ref()) {
            self.restore_skipped += 1;
            return false;
        }
        let key = key.unwrap_or(&[]);
        let entry: Option<RestoredEntry<'_>> = match (self.out.codec(store), value) {
            (None, v) => Some((Cow::Borrowed(key), v.map(Cow::Borrowed))),
            (Some(codec), Some(v)) => codec
                .decode(key, v)
                .map(|(k, v)| (Cow::Owned(k), Some(Cow::Owned(v)))),
            // A tombstone deletes a table's row; in a shared topic with
            // its own schema it is someone else's.
            (Some(_), None) => source.then_some((Cow::Borrowed(key), None)),
        };
        let Some((k, v)) = entry else {
            self.restore_skipped += 1;
            return false;
        };
        // Changes written late are skipped (`late_writes`); the restore's
        // buffer holds each key's last mark and decides as it applies.
        let applied = match &mark {
            None => {
                self.stores.apply_restored(store, &k, v.as_deref());
                true
            }
            Some(src) => match self.late_writes.mark(src) {
                None => false,
                Some(m) => {
                    let guard = &self.late_writes;
                    let applied =
                        self.stores
                            .apply_restored_marked(store, &k, v.as_deref(), m, || {
                                guard.before(store, &k)
                            });
                    if !applied {
                        self.late_writes.count_late();
                    }
                    applied
                }
            },
        };
        if !applied {
            self.restore_skipped += 1;
            return false;
        }
        if let Some(companion) = self.lineage.get(store).copied().flatten() {
            let list = match &v {
                None => None,
                Some(_) => super::headers::find(headers, super::lineage::LINEAGE_HEADER),
            };
            // A record written with lineage off leaves the list as it was.
            if list.is_some() || v.is_none() {
                self.stores.apply_restored(companion, &k, list);
            }
        }
        if let Some(src) = &mark {
            self.progress.restored_mark(headers, src);
        }
        // Changelog records carry the stream time of their change.
        self.progress.observe(timestamp);
        self.restored += 1;
        true
    }

    /// Hints that a changelog record with `key` for `store` will be
    /// applied soon, so that its store's lookup, and the late-write
    /// guard's for a key the store's buffer no longer holds, do not wait
    /// for memory then (see [`restore_record`](Self::restore_record)).
    /// Only stores that keep the record's own key are hinted; changes
    /// nothing.
    pub fn prefetch_restore(&self, store: usize, key: Option<&[u8]>) {
        if self.out.codec(store).is_none() {
            let key = key.unwrap_or(&[]);
            self.stores.prefetch_restored(store, key);
            self.late_writes.prefetch(store, key);
        }
    }

    /// The restore's late-write guard (see `late_writes`), taken from a
    /// task closed without processing (a standby, an abandoned restore)
    /// after its restored state was written, for the task's next restore
    /// on this instance.
    pub fn hand_over_late_writes(&mut self) -> HandedOver {
        HandedOver {
            guard: std::mem::take(&mut self.late_writes),
            changelog_offsets: self.progress.changelog_offsets().clone(),
        }
    }

    /// Carries on a guard [handed over](Self::hand_over_late_writes) by
    /// this task's last restore, after [`begin_restore`](Self::begin_restore):
    /// only if the local state still starts where that restore left it.
    /// Returns whether it was taken.
    pub fn take_over_late_writes(&mut self, handed: HandedOver) -> bool {
        if &handed.changelog_offsets != self.progress.changelog_offsets() {
            return false;
        }
        self.late_writes = handed.guard;
        true
    }

    /// Records how far restore has read a changelog partition.
    pub fn restore_progress(&mut self, topic: &str, partition: i32, next_offset: i64) {
        self.progress
            .set_changelog_offset(TopicPartition::new(topic, partition), next_offset);
    }

    /// Writes restored state and the restore position durably, so that an
    /// interrupted restore resumes here; the late-change guard remembers
    /// the last change of every key written (the restore goes on, or hands
    /// the guard over).
    pub fn flush_restore(&mut self) -> Result<(), StoreError> {
        self.late_writes.remember_all(self.stores.restored_marks());
        let cp = self.progress.checkpoint();
        self.stores.spill_restored(&cp)?;
        self.progress.committed(cp);
        Ok(())
    }

    /// [`flush_restore`](Self::flush_restore) at the end of a restore,
    /// when processing follows ([`init`](Self::init) forgets the guard).
    pub fn finish_restore(&mut self) -> Result<(), StoreError> {
        let cp = self.progress.checkpoint();
        self.stores.commit_restored(&cp)?;
        self.progress.committed(cp);
        Ok(())
    }
}

/// A changelog record's key and value (`None`: deleted) as a store keeps
/// them: the record's own bytes, or what a codec decoded from them.
type RestoredEntry<'a> = (Cow<'a, [u8]>, Option<Cow<'a, [u8]>>);
