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
//! abandoned and taken up again: [`HandedOver`]).
//!
//! Where it keeps that: each key's last change rides with the key's entry
//! in the restore's buffer (`store/restored.rs`, [`Mark`]), so the check
//! costs no lookup of its own. When the buffer is written to the store
//! and emptied before the restore ends (every 30 seconds, or when the
//! restore's buffers reach their memory budget, and before a hand-over),
//! the marks move here, into a table of key fingerprints ([`remember_all`]),
//! which the buffer asks about a key it no longer holds ([`before`]). That
//! table remembers at most [`MAX_TRACKED_KEYS`] keys per task (about
//! 786,000, in 24 MiB); past that, keys it does not know are applied
//! unchecked once the buffer has let them go. A table that large is a
//! wait for memory per key, so the restorer fetches a key's slot some
//! records before it may ask ([`prefetch`]), and [`remember_all`] fetches
//! slots a few keys before it writes them (a restore of ten million
//! distinct keys, which writes its buffer many times over: 11.3 → 9.5 s).
//!
//! [`remember_all`]: LateWriteGuard::remember_all
//! [`before`]: LateWriteGuard::before
//! [`prefetch`]: LateWriteGuard::prefetch

use std::collections::BTreeMap;
use std::hash::BuildHasher;

use super::headers::SourceMark;
use crate::coordinates::TopicPartition;
use crate::store::{robin_hood, Mark};

/// The most keys the guard remembers per task: three quarters of a table
/// of 2^20 slots of 24 bytes (24 MiB).
pub(crate) const MAX_TRACKED_KEYS: usize = 3 << 18;

/// Slots of the first table; it doubles when three quarters are taken.
const FIRST_SLOTS: usize = 1024;

/// How many keys ahead [`LateWriteGuard::remember_all`] fetches slots.
const REMEMBER_AHEAD: usize = 16;

/// One key's last change: the key by a 95-bit fingerprint of its store
/// and bytes (two independent hashes, of 63 and 32 bits: two of a million
/// keys share one with odds near 10^-17, far below those of a memory
/// error), its input partition (an index into `sources`) and offset.
/// `a == 0` marks a free slot: `a`'s top bit is always set.
#[derive(Clone, Copy, Default)]
struct Slot {
    a: u64,
    offset: i64,
    b: u32,
    source: u32,
}

/// An input partition that changes name, with its floor: its changes of
/// input before the floor are skipped (`i64::MIN`: none; see
/// [`LateWriteGuard::set_floor`]).
struct Source {
    topic: String,
    partition: i32,
    floor: i64,
}

impl Source {
    fn is(&self, topic: &str, partition: i32) -> bool {
        self.partition == partition && self.topic == topic
    }
}

/// The input partitions changes name (with their floors), and per store
/// and key the last change applied during the current restore that the
/// restore's buffer no longer holds.
///
/// Its table is built like the restore's buffer (`store/restored.rs`):
/// keys are not kept, only fingerprints, in one array of slots (open
/// addressing, linear probing in Robin Hood order: `store/robin_hood.rs`);
/// nothing is allocated per key.
#[derive(Default)]
pub(crate) struct LateWriteGuard {
    /// Input partitions seen, indexed by [`Slot::source`].
    sources: Vec<Source>,
    /// The index of the input partition of the last change checked.
    last_source: u32,
    /// A power of two of slots (or none yet).
    slots: Vec<Slot>,
    /// Slots taken.
    len: usize,
    /// Changes skipped since the last [`take_skipped`](Self::take_skipped).
    skipped: u64,
    /// Two independently seeded hashers (random per guard, so that no
    /// chosen set of keys can make the probes long); a guard handed over
    /// keeps its own.
    hash_a: foldhash::fast::RandomState,
    hash_b: foldhash::fast::RandomState,
}

impl LateWriteGuard {
    /// Forgets every key (a new restore begins, or it ended).
    pub(crate) fn clear(&mut self) {
        self.slots = Vec::new();
        self.len = 0;
        self.sources.clear();
        self.last_source = 0;
    }

    /// The restore starts at a checkpoint processing wrote at a commit,
    /// with these input `positions`: the state holds the changes of every
    /// input before them, and every such change was written to the
    /// changelog before the checkpoint's offsets, where the restore starts.
    /// A change read now whose input lies before them can only be a
    /// replay (by an instance that resumed from an older commit) or a late
    /// write.
    pub(crate) fn set_floor(&mut self, positions: &BTreeMap<TopicPartition, i64>) {
        for (tp, &at) in positions {
            let i = self.source_index(&tp.topic, tp.partition);
            self.sources[i as usize].floor = at;
        }
    }

    /// The mark a change from input `src` carries into the restore's
    /// buffer, or `None` if it is late already: its input lies before the
    /// floor of its input partition (counted as skipped). A change of a
    /// punctuation (offset below 0) names no input.
    pub(crate) fn mark(&mut self, src: &SourceMark<'_>) -> Option<Mark> {
        if src.offset < 0 {
            return Some(Mark::none());
        }
        let source = self.source_index(src.topic, src.partition);
        if src.offset < self.sources[source as usize].floor {
            self.skipped += 1;
            return None;
        }
        Some(Mark {
            source,
            offset: src.offset,
        })
    }

    /// A change the restore's buffer found older than its key's last one:
    /// counted as skipped.
    pub(crate) fn count_late(&mut self) {
        self.skipped += 1;
    }

    /// The last mark remembered for `key` of `store`, if any.
    pub(crate) fn before(&self, store: usize, key: &[u8]) -> Option<Mark> {
        if self.len == 0 {
            return None;
        }
        let (a, b) = self.fingerprint(store, key);
        let slot = &self.slots[self.find(a, b)?];
        Some(Mark {
            source: slot.source,
            offset: slot.offset,
        })
    }

    /// Remembers `mark` as the last change of `key` of `store` (the
    /// restore's buffer lets the key go). Once the table is full only
    /// keys it knows are updated.
    #[cfg(test)]
    pub(crate) fn remember(&mut self, store: usize, key: &[u8], mark: Mark) {
        let (a, b) = self.fingerprint(store, key);
        self.remember_fingerprint(a, b, mark);
    }

    /// Remembers each mark of `marks` as the last change of its key of its
    /// store (the restore's buffer lets them all go at once; once the
    /// table is full only keys it knows are updated), each key's slot
    /// fetched into the
    /// cache [`REMEMBER_AHEAD`] keys before it is written: past the
    /// processor's caches every slot is a wait for memory, and this way
    /// the waits overlap.
    pub(crate) fn remember_all<'k>(
        &mut self,
        marks: impl Iterator<Item = (usize, &'k [u8], Mark)>,
    ) {
        let mut ahead = std::collections::VecDeque::with_capacity(REMEMBER_AHEAD + 1);
        for (store, key, mark) in marks {
            let (a, b) = self.fingerprint(store, key);
            self.prefetch_slot(a);
            ahead.push_back((a, b, mark));
            if ahead.len() > REMEMBER_AHEAD {
                if let Some((a, b, mark)) = ahead.pop_front() {
                    self.remember_fingerprint(a, b, mark);
                }
            }
        }
        for (a, b, mark) in ahead {
            self.remember_fingerprint(a, b, mark);
        }
    }

    fn remember_fingerprint(&mut self, a: u64, b: u32, mark: Mark) {
        if let Some(i) = self.find(a, b) {
            let slot = &mut self.slots[i];
            slot.source = mark.source;
            slot.offset = mark.offset;
            return;
        }
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            if self.len >= MAX_TRACKED_KEYS {
                return;
            }
            self.grow();
        }
        self.insert(Slot {
            a,
            b,
            offset: mark.offset,
            source: mark.source,
        });
        self.len += 1;
    }

    /// Hints that [`before`](Self::before) may soon ask about `key` of
    /// `store`: its slot is fetched into the cache meanwhile. Nothing while
    /// the guard remembers no key; changes nothing.
    pub(crate) fn prefetch(&self, store: usize, key: &[u8]) {
        if self.len == 0 {
            return;
        }
        self.prefetch_slot(self.fingerprint_a(store, key));
    }

    /// Fetches the slot where fingerprint `a` starts its probe (and the
    /// line after it: a slot may straddle two) into the cache.
    fn prefetch_slot(&self, a: u64) {
        if self.slots.is_empty() {
            return;
        }
        let at = a as usize & (self.slots.len() - 1);
        let first = self.slots[at..].as_ptr().cast::<u8>();
        crate::store::prefetch(first);
        crate::store::prefetch(first.wrapping_add(64));
    }

    /// How many changes were skipped since the last call.
    pub(crate) fn take_skipped(&mut self) -> u64 {
        std::mem::take(&mut self.skipped)
    }

    fn fingerprint(&self, store: usize, key: &[u8]) -> (u64, u32) {
        let b = self.hash_b.hash_one((store, key)) as u32;
        (self.fingerprint_a(store, key), b)
    }

    /// The fingerprint's first half, which also places its slot by its low
    /// bits. Its top bit is set, so that it is never 0 (a free slot) and
    /// every slot can be a probe's start: with the lowest bit set instead,
    /// only odd slots were, and a search for a key the table does not hold
    /// read 3.5 slots in a table three quarters full instead of 2.9
    /// (simulated: 2^16 slots, 100,000 searches, Robin Hood order).
    fn fingerprint_a(&self, store: usize, key: &[u8]) -> u64 {
        self.hash_a.hash_one((store, key)) | 1 << 63
    }

    /// The slot holding fingerprint `(a, b)`, if any. The table is in
    /// Robin Hood order (`store/robin_hood.rs`): once it is full, most keys
    /// a restore of distinct keys asks about are not in it, and such a
    /// search ends after 2.9 slots on average instead of 8.5.
    fn find(&self, a: u64, b: u32) -> Option<usize> {
        robin_hood::find(&self.slots, a as usize, |s| s.a == a && s.b == b)
    }

    /// Places `slot`, whose fingerprint the table does not hold.
    fn insert(&mut self, slot: Slot) {
        robin_hood::insert(&mut self.slots, slot);
    }

    fn grow(&mut self) {
        let size = (self.slots.len() * 2).max(FIRST_SLOTS);
        let old = std::mem::replace(
            &mut self.slots,
            crate::huge_pages::filled(size, Slot::default),
        );
        for s in old.into_iter().filter(|s| s.a != 0) {
            self.insert(s);
        }
    }

    fn source_index(&mut self, topic: &str, partition: i32) -> u32 {
        // Changes mostly come in runs from one input partition.
        if let Some(s) = self.sources.get(self.last_source as usize) {
            if s.is(topic, partition) {
                return self.last_source;
            }
        }
        let i = match self.sources.iter().position(|s| s.is(topic, partition)) {
            Some(i) => i,
            None => {
                self.sources.push(Source {
                    topic: topic.to_string(),
                    partition,
                    floor: i64::MIN,
                });
                self.sources.len() - 1
            }
        };
        self.last_source = i as u32;
        self.last_source
    }
}

impl robin_hood::Placed for Slot {
    fn is_free(&self) -> bool {
        self.a == 0
    }
    fn home(&self) -> usize {
        self.a as usize
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
    use crate::store::RestoredEntries;

    fn src(topic: &str, partition: i32, offset: i64) -> SourceMark<'_> {
        SourceMark {
            offset,
            partition,
            topic,
        }
    }

    /// The check as `Task::restore_record` runs it: the guard, and the
    /// restore's buffer of each store.
    #[derive(Default)]
    struct Restore {
        guard: LateWriteGuard,
        buffers: [RestoredEntries; 2],
    }

    impl Restore {
        /// Whether the change is skipped as late (if not, it is applied).
        fn is_late(&mut self, store: usize, key: &[u8], src: &SourceMark<'_>) -> bool {
            let Some(mark) = self.guard.mark(src) else {
                return true;
            };
            let guard = &self.guard;
            let applied = self.buffers[store]
                .apply_marked(key, Some(b"v"), mark, || guard.before(store, key));
            if !applied {
                self.guard.count_late();
            }
            !applied
        }

        /// The buffers are written and emptied (as a flush in the middle of
        /// a restore does): their marks move to the guard.
        fn drain(&mut self) {
            let Restore { guard, buffers } = self;
            for (store, b) in buffers.iter_mut().enumerate() {
                guard.remember_all(b.marks().map(|(key, mark)| (store, key, mark)));
                b.clear();
            }
        }
    }

    /// Fingerprints place their probes on every slot, not on half of
    /// them, and are never the free slot's 0.
    #[test]
    fn should_start_probes_at_even_and_odd_slots_alike() {
        let guard = LateWriteGuard::default();
        let keys = 10_000;
        let odd = (0..keys)
            .map(|k| guard.fingerprint_a(0, format!("key-{k}").as_bytes()))
            .inspect(|&a| assert_ne!(a, 0, "0 marks a free slot"))
            .filter(|a| a & 1 == 1)
            .count();
        assert!(
            (4_000..6_000).contains(&odd),
            "{odd} of {keys} fingerprints start at odd slots"
        );
    }

    #[test]
    fn should_skip_a_change_older_than_the_keys_last_one_from_the_same_partition() {
        let mut r = Restore::default();
        assert!(!r.is_late(0, b"k", &src("in", 0, 100)));
        assert!(!r.is_late(0, b"k", &src("in", 0, 200)), "newer");
        assert!(r.is_late(0, b"k", &src("in", 0, 130)), "a late write");
        assert!(
            !r.is_late(0, b"k", &src("in", 0, 200)),
            "the same input again"
        );
        assert!(!r.is_late(0, b"k", &src("in", 0, 210)));
        assert_eq!(r.guard.take_skipped(), 1);
        assert_eq!(r.guard.take_skipped(), 0);
    }

    #[test]
    fn should_compare_only_the_same_key_store_and_input_partition() {
        let mut r = Restore::default();
        assert!(!r.is_late(0, b"k", &src("in", 0, 200)));
        assert!(!r.is_late(0, b"other", &src("in", 0, 10)), "another key");
        assert!(!r.is_late(1, b"k", &src("in", 0, 10)), "another store");
        assert!(!r.is_late(0, b"k", &src("in", 1, 10)), "another partition");
        assert!(
            !r.is_late(0, b"k", &src("in", 0, 5)),
            "the key's last change came from partition 1"
        );
        assert!(!r.is_late(0, b"k", &src("other", 0, 1)), "another topic");
    }

    #[test]
    fn should_remember_the_last_changes_of_keys_the_buffer_let_go() {
        let mut r = Restore::default();
        for i in 0..5_000i64 {
            assert!(!r.is_late(0, &i.to_be_bytes(), &src("in", 0, 1_000 + i)));
        }
        assert!(!r.is_late(1, b"k", &src("in", 1, 50)));
        r.drain();
        assert!(
            r.is_late(0, &7i64.to_be_bytes(), &src("in", 0, 5)),
            "late after the drain"
        );
        assert!(
            r.is_late(1, b"k", &src("in", 1, 49)),
            "the other store's key too"
        );
        assert!(
            !r.is_late(0, &8i64.to_be_bytes(), &src("in", 0, 2_000)),
            "newer"
        );
        assert!(
            r.is_late(0, &8i64.to_be_bytes(), &src("in", 0, 1_500)),
            "now held by the buffer"
        );
        r.drain();
        assert!(
            r.is_late(0, &8i64.to_be_bytes(), &src("in", 0, 1_500)),
            "the newer mark replaced the remembered one"
        );
        assert!(!r.is_late(0, b"new", &src("in", 0, 1)), "a key never seen");
        assert_eq!(r.guard.take_skipped(), 4);
    }

    #[test]
    fn should_keep_a_remembered_mark_through_a_change_that_names_no_input() {
        let mut r = Restore::default();
        assert!(!r.is_late(0, b"k", &src("in", 0, 200)));
        r.drain();
        assert!(
            !r.is_late(0, b"k", &src("", 0, -1)),
            "a punctuation's change"
        );
        assert!(r.is_late(0, b"k", &src("in", 0, 100)), "the mark held on");
    }

    #[test]
    fn should_skip_changes_of_input_before_a_processed_checkpoint() {
        let mut r = Restore::default();
        let positions = [(TopicPartition::new("in", 0), 500)].into();
        r.guard.set_floor(&positions);
        assert!(
            r.is_late(0, b"k", &src("in", 0, 130)),
            "before the checkpoint"
        );
        assert!(!r.is_late(0, b"k", &src("in", 0, 500)), "at it");
        assert!(!r.is_late(0, b"j", &src("in", 1, 130)), "another partition");
        assert_eq!(r.guard.take_skipped(), 1);
        r.guard.clear();
        r.buffers[0].clear();
        assert!(!r.is_late(0, b"k", &src("in", 0, 130)), "cleared");
    }

    #[test]
    fn should_keep_updating_known_keys_once_full_and_forget_new_ones() {
        let mut g = LateWriteGuard::default();
        let mark = |offset| Mark { source: 0, offset };
        for i in 0..MAX_TRACKED_KEYS as i64 {
            g.remember(0, &i.to_be_bytes(), mark(1_000 + i));
        }
        let known = 7i64.to_be_bytes();
        g.remember(0, &known, mark(9_000_000));
        assert_eq!(
            g.before(0, &known),
            Some(mark(9_000_000)),
            "a known key, updated"
        );
        let new = (-1i64).to_be_bytes();
        g.remember(0, &new, mark(5));
        assert_eq!(g.before(0, &new), None, "not remembered");
    }

    #[test]
    fn should_remember_every_mark_of_a_batch_across_growth_the_later_of_one_key_winning() {
        let mut g = LateWriteGuard::default();
        let mark = |offset| Mark { source: 0, offset };
        let keys: Vec<[u8; 8]> = (0..5_000i64).map(i64::to_be_bytes).collect();
        // More keys than the first table holds (it grows while the slots
        // fetched ahead still point into the old one), a key twice, and a
        // key of another store.
        let batch = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (0, &k[..], mark(i as i64)))
            .chain([(0, &keys[3][..], mark(-3)), (1, &keys[3][..], mark(77))]);
        g.remember_all(batch);
        for (i, k) in keys.iter().enumerate().filter(|(i, _)| *i != 3) {
            assert_eq!(g.before(0, k), Some(mark(i as i64)), "key {i}");
        }
        assert_eq!(g.before(0, &keys[3]), Some(mark(-3)), "the later mark");
        assert_eq!(g.before(1, &keys[3]), Some(mark(77)), "another store");
        assert_eq!(g.before(1, &keys[4]), None);
    }

    #[test]
    fn should_apply_changes_of_punctuations_and_forget_everything_when_cleared() {
        let mut r = Restore::default();
        assert!(!r.is_late(0, b"k", &src("in", 0, 200)));
        assert!(
            !r.is_late(0, b"k", &src("", 0, -1)),
            "a punctuation's change"
        );
        assert!(r.is_late(0, b"k", &src("in", 0, 100)));
        r.drain();
        r.guard.clear();
        assert!(!r.is_late(0, b"k", &src("in", 0, 100)));
    }
}
