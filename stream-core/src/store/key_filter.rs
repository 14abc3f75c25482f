//! Which keys a store's sled tree may hold: a Bloom filter over every key
//! written to it, so that a point read of a key the tree never held
//! answers "absent" without reading sled.
//!
//! **Why.** A count or an aggregate reads each key before it writes it,
//! and the first read of a new key finds nothing. sled finds the bucket a
//! key would be in (`buckets.rs`) by iterating backwards from the key,
//! and each such step copies the whole leaf page it lands on. On the
//! watchlist benchmark 154,218 of its 333,711 reads are of a company not
//! seen before, and the store's reads were 15% of the stream thread's
//! samples, 9% in sled (`docs/performance.md`, "Key filters").
//!
//! **What it answers.** Every key in the tree has its bits set, so
//! "absent" is always right. "Maybe" reads sled as before: for a key since
//! deleted (bits are never cleared) and for a false positive, about 1%
//! per stage. Bits are set before the bucket holding a key is written
//! (`BucketTree::apply`), so a reader that could see the key in sled sees
//! its bits. When a task's tree opens, its keys are added by the walk that
//! counts them (`BucketTree::count_and_fill`); a global table's filter is
//! complete at once if the table is empty, and otherwise stays unfilled
//! until the table is cleared (`BucketTree::fill_if_empty`). Until a
//! filter is filled, and once it is off, every answer is "maybe".
//!
//! **Growth.** A filter is a list of *stages*, each a bit array sized for
//! a number of keys at [`BITS_PER_KEY`]. New keys go into the last stage;
//! before a write whose keys would overfill it, a stage twice as large
//! (at least) is added. A read checks every stage: one 64-bit word each
//! (a blocked Bloom filter: all of a key's bits in one word), so about one
//! cache miss per stage instead of a sled descent.
//!
//! **Memory.** The filters of one state directory share a budget
//! ([`FilterBudget`], a quarter of `StreamsConfig::state_cache_bytes`).
//! A stage the budget cannot pay for turns its filter off: its stages are
//! freed and its reads go to sled, as without filters. So memory stays
//! within the budget however many keys the stores hold, and stores of
//! many millions of keys read sled as before.
//!
//! **Sharing.** Every handle of one tree shares one filter ([`KeyFilters`],
//! one per state directory), so a key written through any handle is seen
//! through all of them.
//!
//! Kafka Streams' RocksDB stores answer such reads with the Bloom filters
//! of their SST files; sled keeps none.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};

/// Bits per key a stage is sized for. With four bits of one 64-bit word
/// per key, a full stage answers "maybe" for about 1% of absent keys.
const BITS_PER_KEY: usize = 12;

/// Keys the first stage of a filter is sized for (6 KiB), unless the
/// first write or the tree's checkpoint asks for more.
const FIRST_STAGE_KEYS: usize = 4096;

/// Spreads a key's hash over a stage's words; each stage mixes it with
/// its own odd multiplier so that keys sharing a word in one stage do
/// not share it in the next.
const MIX: u64 = 0x9E37_79B9_7F4A_7C15;

/// Keys ahead whose words an insert fetches into the cache.
const PREFETCH_AHEAD: usize = 8;

/// The bytes all key filters of one state directory may take together.
pub(crate) struct FilterBudget {
    left: AtomicUsize,
}

impl FilterBudget {
    /// A budget of `bytes`.
    pub(crate) fn new(bytes: usize) -> Arc<Self> {
        Arc::new(FilterBudget {
            left: AtomicUsize::new(bytes),
        })
    }

    /// Takes `bytes` from the budget if it has them.
    fn take(&self, bytes: usize) -> bool {
        self.left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(bytes)
            })
            .is_ok()
    }

    /// Gives `bytes` back.
    fn give(&self, bytes: usize) {
        self.left.fetch_add(bytes, Ordering::AcqRel);
    }

    /// Bytes not taken.
    #[cfg(test)]
    pub(crate) fn left(&self) -> usize {
        self.left.load(Ordering::Acquire)
    }
}

/// One bit array of a filter.
struct Stage {
    words: Box<[AtomicU64]>,
    /// Shift that turns a mixed hash into a word index (64 − log2 words).
    shift: u32,
    /// Mixes the hash for this stage.
    mix: u64,
    /// Keys the stage is sized for.
    capacity: usize,
    /// New keys counted into the stage so far.
    added: AtomicUsize,
}

impl Stage {
    /// A stage for at least `keys` keys, the `index`-th of its filter.
    fn new(keys: usize, index: usize) -> Stage {
        let words = (keys.saturating_mul(BITS_PER_KEY) / 64)
            .max(64)
            .next_power_of_two();
        Stage {
            words: crate::huge_pages::filled(words, || AtomicU64::new(0)).into_boxed_slice(),
            shift: 64 - words.trailing_zeros(),
            mix: MIX.wrapping_add((index as u64) << 1),
            capacity: words * 64 / BITS_PER_KEY,
            added: AtomicUsize::new(0),
        }
    }

    fn bytes(&self) -> usize {
        self.words.len() * 8
    }

    fn word(&self, hash: u64) -> &AtomicU64 {
        &self.words[(hash.wrapping_mul(self.mix) >> self.shift) as usize]
    }

    fn room(&self) -> usize {
        self.capacity
            .saturating_sub(self.added.load(Ordering::Relaxed))
    }
}

/// The four bits of one word a key with `hash` sets.
fn bits(hash: u64) -> u64 {
    (1 << (hash & 63))
        | (1 << ((hash >> 6) & 63))
        | (1 << ((hash >> 12) & 63))
        | (1 << ((hash >> 18) & 63))
}

/// Whether a filter's answers can be trusted.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    /// Keys already in the tree are still being added: every answer is
    /// "maybe".
    Filling,
    /// Every key of the tree is in the stages.
    Complete,
    /// Over budget: stages freed, every answer "maybe".
    Off,
}

struct Inner {
    stages: Vec<Stage>,
    state: State,
}

/// The Bloom filter of one tree (module docs).
pub(crate) struct KeyFilter {
    inner: RwLock<Inner>,
    hasher: foldhash::fast::FixedState,
    budget: Arc<FilterBudget>,
}

impl KeyFilter {
    /// A filter still to be filled with the tree's keys
    /// ([`completed`](Self::completed) once they are in), paid from
    /// `budget`.
    pub(crate) fn new(budget: Arc<FilterBudget>) -> Self {
        KeyFilter {
            inner: RwLock::new(Inner {
                stages: Vec::new(),
                state: State::Filling,
            }),
            hasher: foldhash::fast::FixedState::with_seed(0x005e_ed0f_6b65_7973),
            budget,
        }
    }

    /// A filter for a tree known to be empty: complete at once.
    #[cfg(test)]
    pub(crate) fn empty(budget: Arc<FilterBudget>) -> Self {
        let f = Self::new(budget);
        f.completed();
        f
    }

    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the tree may hold `key`; `false` only if it does not.
    pub(crate) fn may_contain(&self, key: &[u8]) -> bool {
        let inner = self.read();
        if inner.state != State::Complete {
            return true;
        }
        let hash = self.hash(key);
        let want = bits(hash);
        // Relaxed: bits are set before the write they announce, and reach
        // a reader through whatever ordered its read after that write (for
        // a task's stores, the state writer's reply, which the store waits
        // for before it stops answering from the written changes itself).
        // A read of a global table beside the write of its key may answer
        // either way, as it may from sled.
        inner
            .stages
            .iter()
            .any(|s| s.word(hash).load(Ordering::Relaxed) & want == want)
    }

    /// Adds `keys`, before the buckets holding them are written. Keys
    /// already in the tree may be among them; [`count_new`](Self::count_new)
    /// counts those that were not, once known. A last stage without room
    /// for all of them gets a larger one after it first, or the filter
    /// turns off if the budget cannot pay for it. Bits are set under the
    /// read lock (they are atomic), so reads of the tree go on meanwhile.
    pub(crate) fn insert<'k>(&self, keys: impl IntoIterator<Item = &'k [u8]>) {
        if self.read().state == State::Off {
            return;
        }
        let hashes: Vec<u64> = keys.into_iter().map(|k| self.hash(k)).collect();
        if hashes.is_empty() {
            return;
        }
        loop {
            {
                let inner = self.read();
                if inner.state == State::Off {
                    return;
                }
                if let Some(stage) = inner.stages.last().filter(|s| s.room() >= hashes.len()) {
                    for (i, &hash) in hashes.iter().enumerate() {
                        if let Some(&ahead) = hashes.get(i + PREFETCH_AHEAD) {
                            super::prefetch(stage.word(ahead).as_ptr().cast::<u8>());
                        }
                        stage.word(hash).fetch_or(bits(hash), Ordering::Relaxed);
                    }
                    return;
                }
            }
            self.grow(hashes.len(), hashes.len() * 2);
        }
    }

    /// Unless the last stage has room for `room` more keys, adds one sized
    /// for `size` keys (and at least twice the last one); turns the filter
    /// off if the budget cannot pay for it.
    fn grow(&self, room: usize, size: usize) {
        let mut inner = self.write();
        if inner.state == State::Off || inner.stages.last().is_some_and(|s| s.room() >= room) {
            return;
        }
        let at_least = inner
            .stages
            .last()
            .map_or(FIRST_STAGE_KEYS, |s| s.capacity * 2);
        let stage = Stage::new(at_least.max(size), inner.stages.len());
        if self.budget.take(stage.bytes()) {
            inner.stages.push(stage);
        } else {
            self.turn_off(&mut inner);
        }
    }

    /// Counts `n` keys of the last [`insert`](Self::insert) as new to the
    /// tree, towards its stage's capacity.
    pub(crate) fn count_new(&self, n: u64) {
        if let Some(stage) = self.read().stages.last() {
            stage
                .added
                .fetch_add(usize::try_from(n).unwrap_or(usize::MAX), Ordering::Relaxed);
        }
    }

    /// Makes room for `keys` keys in one stage ahead of adding them (a
    /// tree's count from its checkpoint, before the walk that fills it).
    pub(crate) fn reserve(&self, keys: usize) {
        if keys > 0 {
            self.grow(keys, keys);
        }
    }

    /// Every key already in the tree has been added: answers can be
    /// trusted from now on (unless the filter is off).
    pub(crate) fn completed(&self) {
        let mut inner = self.write();
        if inner.state == State::Filling {
            inner.state = State::Complete;
        }
    }

    /// The tree was emptied: no key is in it, and the filter starts over
    /// (on again if it was off).
    pub(crate) fn reset(&self) {
        let mut inner = self.write();
        self.free(&mut inner);
        inner.state = State::Complete;
    }

    fn turn_off(&self, inner: &mut Inner) {
        self.free(inner);
        inner.state = State::Off;
        tracing::debug!("a store's key filter is over its budget; its reads go to sled");
    }

    fn free(&self, inner: &mut Inner) {
        let bytes: usize = inner.stages.iter().map(Stage::bytes).sum();
        inner.stages.clear();
        self.budget.give(bytes);
    }

    /// Number of stages (tests).
    #[cfg(test)]
    pub(crate) fn stages(&self) -> usize {
        self.read().stages.len()
    }

    /// Whether the filter answers from its stages (tests).
    #[cfg(test)]
    pub(crate) fn is_complete(&self) -> bool {
        self.read().state == State::Complete
    }
}

impl Drop for KeyFilter {
    fn drop(&mut self) {
        let inner = self.inner.get_mut().unwrap_or_else(PoisonError::into_inner);
        let bytes: usize = inner.stages.iter().map(Stage::bytes).sum();
        self.budget.give(bytes);
    }
}

/// The key filters of one state directory's trees, shared by every handle
/// of a tree, and their budget.
pub(crate) struct KeyFilters {
    budget: Arc<FilterBudget>,
    live: Mutex<HashMap<String, Weak<KeyFilter>>>,
}

impl KeyFilters {
    /// Filters sharing `budget_bytes`.
    pub(crate) fn new(budget_bytes: usize) -> Self {
        KeyFilters {
            budget: FilterBudget::new(budget_bytes),
            live: Mutex::new(HashMap::new()),
        }
    }

    /// The filter of the tree named `tree`, and whether it is new (the
    /// caller then fills it with the tree's keys and marks it
    /// [`completed`](KeyFilter::completed)). A filter lives as long as
    /// some handle of its tree (or a write in flight) holds it.
    pub(crate) fn of(&self, tree: &str) -> (Arc<KeyFilter>, bool) {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(f) = live.get(tree).and_then(Weak::upgrade) {
            return (f, false);
        }
        live.retain(|_, f| f.strong_count() > 0);
        let f = Arc::new(KeyFilter::new(self.budget.clone()));
        live.insert(tree.to_string(), Arc::downgrade(&f));
        (f, true)
    }

    /// The budget (tests).
    #[cfg(test)]
    pub(crate) fn budget(&self) -> &FilterBudget {
        &self.budget
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(from: u64, to: u64) -> Vec<Vec<u8>> {
        (from..to)
            .map(|i| format!("key-{i}").into_bytes())
            .collect()
    }

    fn insert_new(f: &KeyFilter, keys: &[Vec<u8>]) {
        f.insert(keys.iter().map(Vec::as_slice));
        f.count_new(keys.len() as u64);
    }

    #[test]
    fn should_never_call_a_written_key_absent_as_it_grows() {
        let f = KeyFilter::empty(FilterBudget::new(usize::MAX));
        for batch in 0..200u64 {
            insert_new(&f, &keys(batch * 1000, batch * 1000 + 1000));
        }
        assert!(
            f.stages() > 1,
            "200,000 keys need more than the first stage"
        );
        let missing = keys(0, 200_000)
            .iter()
            .filter(|k| !f.may_contain(k))
            .count();
        assert_eq!(missing, 0);
        let maybe = keys(1_000_000, 1_100_000)
            .iter()
            .filter(|k| f.may_contain(k))
            .count();
        assert!(
            maybe < 100_000 / 20,
            "{maybe} of 100,000 absent keys answered maybe"
        );
    }

    #[test]
    fn should_grow_on_new_keys_not_on_updates() {
        let f = KeyFilter::empty(FilterBudget::new(usize::MAX));
        let same = keys(0, 1000);
        insert_new(&f, &same);
        for _ in 0..1000 {
            f.insert(same.iter().map(Vec::as_slice));
            f.count_new(0);
        }
        assert_eq!(f.stages(), 1);
    }

    #[test]
    fn should_answer_maybe_until_filled_and_once_over_budget() {
        let budget = FilterBudget::new(64 * 1024);
        let f = KeyFilter::new(budget.clone());
        assert!(f.may_contain(b"anything"), "not filled yet");
        f.completed();
        assert!(!f.may_contain(b"anything"));
        insert_new(&f, &keys(0, 10_000));
        assert!(budget.left() < 64 * 1024);
        insert_new(&f, &keys(10_000, 100_000));
        assert!(!f.is_complete(), "100,000 keys need more than 64 KiB");
        assert!(f.may_contain(b"anything"));
        assert_eq!(
            budget.left(),
            64 * 1024,
            "an filter turned off frees its stages"
        );
        f.reset();
        assert!(!f.may_contain(b"key-5"), "emptied and on again");
        insert_new(&f, &keys(0, 10));
        assert!(f.may_contain(b"key-5"));
        drop(f);
        assert_eq!(
            budget.left(),
            64 * 1024,
            "a dropped filter gives its bytes back"
        );
    }

    #[test]
    fn should_share_one_filter_per_tree_while_a_handle_holds_it() {
        let filters = KeyFilters::new(1 << 20);
        let (a, fresh) = filters.of("t");
        assert!(fresh);
        let (b, fresh) = filters.of("t");
        assert!(!fresh && Arc::ptr_eq(&a, &b));
        let (_, fresh) = filters.of("u");
        assert!(fresh, "another tree");
        drop((a, b));
        let (_, fresh) = filters.of("t");
        assert!(fresh, "no handle held it");
        assert!(filters.budget().left() <= 1 << 20);
    }

    #[test]
    fn should_size_a_reserved_stage_for_the_keys_to_come() {
        let f = KeyFilter::new(FilterBudget::new(usize::MAX));
        f.reserve(100_000);
        for batch in 0..100u64 {
            insert_new(&f, &keys(batch * 1000, batch * 1000 + 1000));
        }
        f.completed();
        assert_eq!(f.stages(), 1);
        assert!(keys(0, 100_000).iter().all(|k| f.may_contain(k)));
    }
}
