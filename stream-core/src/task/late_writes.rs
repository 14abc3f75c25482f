//! The restore's guard against changes written late: a changelog record
//! for a key whose input is older than that of a change to the same key
//! already applied, from the same input partition.
//!
//! Under at-least-once such a record is one of two things:
//!
//! - a replay: after a crash or a rollback the task reprocesses from its
//!   last commit and writes the changes since then again. The same
//!   input from the same state gives the same values, so skipping the
//!   replayed change keeps the value the later change already holds
//!   (where the result depends on how several input partitions
//!   interleave, the value kept is the first run's, as valid an
//!   at-least-once result as the replay's);
//! - a late write of an instance paused (SIGSTOP, a frozen VM) while
//!   another took its task over: librdkafka sends the requests it built
//!   before the pause when the process wakes, after the new owner's
//!   changes, computed from the state of the moment it stopped. Applied,
//!   the restore would end at the stale value and the counts after it
//!   would stay short by everything the new owner counted meanwhile.
//!   `runtime::pause_watch` keeps the paused instance from writing
//!   anything new; this keeps a restore right about what got through.
//!
//! Under exactly-once neither is ever read (aborted transactions), so
//! nothing is skipped.
//!
//! The guard compares per key, not per changelog partition: a store's
//! changelog may have several partitions, read in any interleaving, and a
//! rollback after a timed-out send may leave holes (a change lost for one
//! key while later ones for other keys arrived), which a per-partition
//! high mark would turn into lost changes. Changes that name no input
//! (punctuations) are always applied.
//!
//! A restore that starts at a checkpoint processing wrote (at a commit)
//! also skips every change whose input lies before the checkpoint's
//! positions: the state already holds the changes of all of them, and
//! all of those were written before the checkpoint's changelog offsets.
//!
//! Beyond that, it knows the changes read since processing last wrote the
//! local state: one restore, carried on by the next restore of the task
//! on the same instance when nothing but restoring touched the state in
//! between (a standby closed and then assigned the task, a restore
//! abandoned and taken up again: [`HandedOver`]). It remembers at most
//! [`MAX_TRACKED_KEYS`] keys per task; past that, new keys are applied
//! unchecked.

use std::collections::{BTreeMap, HashMap};

use super::headers::SourceMark;
use crate::coordinates::TopicPartition;

/// The most keys the guard remembers per task (about 64 bytes plus the
/// key each).
pub(crate) const MAX_TRACKED_KEYS: usize = 1 << 20;

/// One store's keys → (input partition index, input offset) of their last
/// change applied.
type LastChanges = HashMap<Box<[u8]>, (u32, i64)>;

/// Per store and key: the input partition and offset of the last change
/// applied during the current restore.
#[derive(Default)]
pub(crate) struct LateWriteGuard {
    /// Input partitions seen, indexed by the `u32` in `last`.
    sources: Vec<(String, i32)>,
    /// Per store (by index): key → (input partition, offset).
    last: Vec<LastChanges>,
    /// Keys remembered, all stores.
    tracked: usize,
    /// Input positions of a checkpoint processing wrote (see
    /// [`set_floor`](Self::set_floor)).
    floor: Vec<(String, i32, i64)>,
    /// Changes skipped since the last [`take_skipped`](Self::take_skipped).
    skipped: u64,
}

impl LateWriteGuard {
    /// Forgets every key (a new restore begins, or it ended).
    pub(crate) fn clear(&mut self) {
        self.last = Vec::new();
        self.sources.clear();
        self.tracked = 0;
        self.floor.clear();
    }

    /// The restore starts at a checkpoint processing wrote at a commit,
    /// with these input `positions`: the state holds the changes of every
    /// input before them, and every such change was written to the
    /// changelog before the checkpoint's offsets, where the restore starts.
    /// A change read now whose input lies before them can only be a
    /// replay (by an instance that resumed from an older commit) or a late
    /// write.
    pub(crate) fn set_floor(&mut self, positions: &BTreeMap<TopicPartition, i64>) {
        self.floor = positions
            .iter()
            .map(|(tp, &at)| (tp.topic.clone(), tp.partition, at))
            .collect();
    }

    /// Whether the change to `key` of `store` from input `src` is late
    /// (skip it); if not, remembers it as the key's last change.
    pub(crate) fn is_late(&mut self, store: usize, key: &[u8], src: &SourceMark<'_>) -> bool {
        if src.offset < 0 {
            return false;
        }
        let below_floor = self
            .floor
            .iter()
            .any(|(t, p, at)| *p == src.partition && t == src.topic && src.offset < *at);
        if below_floor {
            self.skipped += 1;
            return true;
        }
        let source = self.source_index(src.topic, src.partition);
        if self.last.len() <= store {
            self.last.resize_with(store + 1, HashMap::new);
        }
        let keys = &mut self.last[store];
        if let Some((s, at)) = keys.get_mut(key) {
            if *s == source && src.offset < *at {
                self.skipped += 1;
                return true;
            }
            *s = source;
            *at = src.offset;
            return false;
        }
        if self.tracked < MAX_TRACKED_KEYS {
            keys.insert(key.into(), (source, src.offset));
            self.tracked += 1;
        }
        false
    }

    /// How many changes were skipped since the last call.
    pub(crate) fn take_skipped(&mut self) -> u64 {
        std::mem::take(&mut self.skipped)
    }

    fn source_index(&mut self, topic: &str, partition: i32) -> u32 {
        match self
            .sources
            .iter()
            .position(|(t, p)| *p == partition && t == topic)
        {
            Some(i) => i as u32,
            None => {
                self.sources.push((topic.to_string(), partition));
                (self.sources.len() - 1) as u32
            }
        }
    }
}

/// A task's guard, kept after the task closed without processing (a
/// standby, an abandoned restore) for its next restore on this instance,
/// with the changelog offsets its local state had reached: the guard is
/// valid only while the state is still exactly there.
pub struct HandedOver {
    pub(crate) guard: LateWriteGuard,
    pub(crate) changelog_offsets: BTreeMap<TopicPartition, i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(topic: &str, partition: i32, offset: i64) -> SourceMark<'_> {
        SourceMark {
            offset,
            partition,
            topic,
        }
    }

    #[test]
    fn should_skip_a_change_older_than_the_keys_last_one_from_the_same_partition() {
        let mut g = LateWriteGuard::default();
        assert!(!g.is_late(0, b"k", &src("in", 0, 100)));
        assert!(!g.is_late(0, b"k", &src("in", 0, 200)), "newer");
        assert!(g.is_late(0, b"k", &src("in", 0, 130)), "a late write");
        assert!(
            !g.is_late(0, b"k", &src("in", 0, 200)),
            "the same input again"
        );
        assert!(!g.is_late(0, b"k", &src("in", 0, 210)));
        assert_eq!(g.take_skipped(), 1);
        assert_eq!(g.take_skipped(), 0);
    }

    #[test]
    fn should_compare_only_the_same_key_store_and_input_partition() {
        let mut g = LateWriteGuard::default();
        assert!(!g.is_late(0, b"k", &src("in", 0, 200)));
        assert!(!g.is_late(0, b"other", &src("in", 0, 10)), "another key");
        assert!(!g.is_late(1, b"k", &src("in", 0, 10)), "another store");
        assert!(!g.is_late(0, b"k", &src("in", 1, 10)), "another partition");
        assert!(
            !g.is_late(0, b"k", &src("in", 0, 5)),
            "the key's last change came from partition 1"
        );
        assert!(!g.is_late(0, b"k", &src("other", 0, 1)), "another topic");
    }

    #[test]
    fn should_skip_changes_of_input_before_a_processed_checkpoint() {
        let mut g = LateWriteGuard::default();
        let positions = [(TopicPartition::new("in", 0), 500)].into();
        g.set_floor(&positions);
        assert!(
            g.is_late(0, b"k", &src("in", 0, 130)),
            "before the checkpoint"
        );
        assert!(!g.is_late(0, b"k", &src("in", 0, 500)), "at it");
        assert!(!g.is_late(0, b"j", &src("in", 1, 130)), "another partition");
        assert_eq!(g.take_skipped(), 1);
        g.clear();
        assert!(!g.is_late(0, b"k", &src("in", 0, 130)), "cleared");
    }

    #[test]
    fn should_apply_changes_of_punctuations_and_forget_everything_when_cleared() {
        let mut g = LateWriteGuard::default();
        assert!(!g.is_late(0, b"k", &src("in", 0, 200)));
        assert!(
            !g.is_late(0, b"k", &src("", 0, -1)),
            "a punctuation's change"
        );
        assert!(g.is_late(0, b"k", &src("in", 0, 100)));
        g.clear();
        assert!(!g.is_late(0, b"k", &src("in", 0, 100)));
    }
}
