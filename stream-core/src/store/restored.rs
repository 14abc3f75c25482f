//! Entries read by restore, before they are handed to the backend: the
//! latest value of each key of a changelog.
//!
//! A changelog holds each key many times and restore applies every record,
//! so this map sees one lookup per record read, on the restorer thread,
//! which is the one thread between the fetcher and a restored store. With a
//! `HashMap<Vec<u8>, Option<Vec<u8>>>` a lookup touched four places in
//! memory (the table's control bytes, its slot, the key's allocation and
//! the value's), and a new key cost two allocations. Here keys and values
//! live side by side in large chunks of bytes, and the table is one array
//! of 24-byte slots that hold where an entry is and 32 bits of its key's
//! hash (open addressing, linear probing in Robin Hood order,
//! `robin_hood.rs`; at most three quarters full): a lookup touches the
//! slots from the hash's place on (most often one cache line) and one
//! place in a chunk, and a new key allocates nothing until a chunk fills.
//!
//! Once the table outgrows the processor's caches (a changelog over a
//! million keys), every lookup waits for memory. The restorer reads a
//! batch of records at a time and calls [`RestoredEntries::prefetch`] for
//! a record some way ahead of the one it applies, so that the waits of
//! several lookups overlap; the table is our own for that reason (the
//! `hashbrown` table does not say where a key's slot lies). On 10 million
//! records over a million keys this cut the time spent in lookups by about
//! a third. The slots are allocated on transparent huge pages where the
//! system allows them (`huge_pages.rs`), so that a hint does not wait for
//! its address's translation either.
//!
//! Each entry also holds the [`Mark`] of its latest change (the input
//! partition and offset behind it), in 12 bytes in front of its key, where
//! the key's comparison reads anyway: restore's late-change guard
//! (`task/late_writes.rs`) decides on it in the same lookup that applies
//! the change ([`RestoredEntries::apply_marked`]), instead of a table of
//! its own that would cost every record another wait for memory.
//!
//! A value replaced by a longer one moves (key and value written anew at
//! the end of the last chunk, the old bytes left unused); a shorter one or
//! a tombstone overwrites in place. [`RestoredEntries::bytes`] counts every
//! chunk byte handed out, the unused ones too, and every slot of the
//! table, so the restore's memory budget sees what is really held.
//!
//! A write hands the table over whole ([`RestoredBatch`]) and a new one
//! takes the next records: sorting is a list of where each entry lies,
//! by key, which becomes the list of entries in its own memory (for the
//! restore's last write, which processing reads while it is written, a
//! list of slot indices), and the writer borrows keys and values from the
//! chunks. Converting the entries into owned keys and values in an
//! ordered map, as before, held each write's entries about twice over
//! and cost the restorer thread the copy: a restore of ten million distinct keys, which writes its buffer
//! a dozen times, peaked at 850–860 MiB in 9.7–10.4 s; handed over whole,
//! 555–572 MiB in 8.0–8.1 s. Once written, the table comes back for the
//! next buffer ([`RestoredEntries::keep_spare`]).

use std::hash::BuildHasher;
use std::sync::OnceLock;

use super::robin_hood;
use super::Change;

/// Size of a chunk of key and value bytes; an entry larger than this gets
/// a chunk of its own.
const CHUNK: usize = 1 << 20;

/// `value_len` of a deleted key (a tombstone read last).
const DELETED: u32 = u32::MAX;

/// Slots of the first table; it doubles when three quarters are taken.
const FIRST_SLOTS: usize = 64;

/// How many slots ahead of the one it reads a walk over the table
/// fetches an entry ([`RestoredEntries::taken`]), and a walk in key order
/// a slot ([`RestoredEntries::entries_at`]).
const WALK_AHEAD: usize = 16;

/// Bytes of an entry's [`Mark`] in front of its key: the source (4) and
/// the offset (8), little-endian.
const MARK_BYTES: usize = 12;

/// The change behind an entry's latest value: an input partition (an
/// index the caller keeps, [`Mark::NONE`] for a change that names none)
/// and the offset of the input record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark {
    /// The input partition's index; [`Mark::NONE`]: no input named.
    pub(crate) source: u32,
    /// The input record's offset.
    pub(crate) offset: i64,
}

impl Mark {
    /// The source of a change that names no input.
    pub(crate) const NONE: u32 = u32::MAX;

    /// No input named.
    pub(crate) const fn none() -> Self {
        Mark {
            source: Self::NONE,
            offset: -1,
        }
    }

    /// Whether a change marked `self` is older than one marked `last`
    /// from the same input partition.
    pub(crate) fn is_older_than(&self, last: &Mark) -> bool {
        self.source != Self::NONE && self.source == last.source && self.offset < last.offset
    }

    /// The mark a key keeps after a change marked `self`, its last one
    /// being `last`: `None` if the change is older (skip it); a change
    /// that names no input keeps the last mark.
    fn after(self, last: Option<Mark>) -> Option<Mark> {
        match last {
            Some(last) if self.is_older_than(&last) => None,
            Some(last) if self.source == Self::NONE => Some(last),
            _ => Some(self),
        }
    }

    /// Writes the mark's [`MARK_BYTES`] to `to`.
    fn write(&self, to: &mut [u8]) {
        to[..4].copy_from_slice(&self.source.to_le_bytes());
        to[4..MARK_BYTES].copy_from_slice(&self.offset.to_le_bytes());
    }
}

/// One slot of the table: the entry's [`Mark`] at `pos` in chunk
/// `chunk`, then `key_len` bytes of key, followed by `value_cap` bytes of
/// which the first `value_len` are the value. `tag` is the low 32 bits
/// of the key's hash (never 0); 0 marks a free slot.
#[derive(Clone, Copy, Default)]
struct Slot {
    tag: u32,
    chunk: u32,
    pos: u32,
    key_len: u32,
    value_len: u32,
    value_cap: u32,
}

/// The latest value (or deletion) of each key restore has read.
#[derive(Default)]
pub(crate) struct RestoredEntries {
    /// A power of two of slots (or none yet); a key's probe starts at
    /// `tag & (len - 1)`.
    slots: Vec<Slot>,
    /// Slots taken.
    len: usize,
    chunks: Vec<Vec<u8>>,
    hasher: foldhash::fast::RandomState,
    /// Bytes handed out from chunks (live and replaced).
    used: usize,
    /// The table of the buffer before this one, written and handed back
    /// ([`keep_spare`](Self::keep_spare)), which the next growth takes
    /// instead of a fresh table.
    spare: Vec<Slot>,
}

impl RestoredEntries {
    /// Records `value` (`None`: deleted) as `key`'s latest, a change that
    /// names no input.
    pub(crate) fn apply(&mut self, key: &[u8], value: Option<&[u8]>) {
        self.apply_marked(key, value, Mark::none(), || None);
    }

    /// Records `value` (`None`: deleted) as `key`'s latest unless the
    /// change, marked `mark`, is older than the key's last one from the
    /// same input partition ([`Mark::is_older_than`]); returns whether it
    /// was recorded. For a key not held, `before` gives its last mark from
    /// before this map was last emptied, if known. A change that names no
    /// input is always recorded and leaves the key's mark as it was.
    pub(crate) fn apply_marked(
        &mut self,
        key: &[u8],
        value: Option<&[u8]>,
        mark: Mark,
        before: impl FnOnce() -> Option<Mark>,
    ) -> bool {
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow();
        }
        let tag = self.tag(key);
        let Some(i) = self.find(tag, key) else {
            let Some(kept) = mark.after(before()) else {
                return false;
            };
            let slot = store(&mut self.chunks, &mut self.used, tag, kept, key, value);
            self.insert(slot);
            self.len += 1;
            return true;
        };
        let slot = self.slots[i];
        let Some(kept) = mark.after(Some(mark_of(&self.chunks, &slot))) else {
            return false;
        };
        match value {
            Some(v) if v.len() > slot.value_cap as usize => {
                self.slots[i] = store(&mut self.chunks, &mut self.used, tag, kept, key, value);
            }
            _ => {
                let chunk = &mut self.chunks[slot.chunk as usize];
                let at = slot.pos as usize;
                kept.write(&mut chunk[at..at + MARK_BYTES]);
                let slot = &mut self.slots[i];
                match value {
                    None => slot.value_len = DELETED,
                    Some(v) => {
                        let at = at + MARK_BYTES + slot.key_len as usize;
                        chunk[at..at + v.len()].copy_from_slice(v);
                        slot.value_len = v.len() as u32;
                    }
                }
            }
        }
        true
    }

    /// Every key that holds a marked change, with its mark.
    pub(crate) fn marks(&self) -> impl Iterator<Item = (&[u8], Mark)> {
        self.taken()
            .map(|s| (key_of(&self.chunks, s), mark_of(&self.chunks, s)))
            .filter(|(_, m)| m.source != Mark::NONE)
    }

    /// Asks the processor to bring the slots where `key`'s lookup starts
    /// into its cache, so that an [`apply`](Self::apply) of `key` soon
    /// after does not wait for memory. Changes nothing; a hint only.
    pub(crate) fn prefetch(&self, key: &[u8]) {
        if self.slots.is_empty() {
            return;
        }
        let at = self.tag(key) as usize & (self.slots.len() - 1);
        let first = self.slots[at..].as_ptr().cast::<u8>();
        prefetch(first);
        // A probe often runs into the next line.
        prefetch(first.wrapping_add(64));
    }

    /// `key`'s latest value: `Some(None)` if its latest record deleted it,
    /// `None` if restore has not read it.
    pub(crate) fn get(&self, key: &[u8]) -> Option<Option<&[u8]>> {
        if self.slots.is_empty() {
            return None;
        }
        self.find(self.tag(key), key)
            .map(|i| value_of(&self.chunks, &self.slots[i]))
    }

    /// Every key with its latest value, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
        self.taken()
            .map(|s| (key_of(&self.chunks, s), value_of(&self.chunks, s)))
    }

    /// Number of keys.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether no key was read.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Memory held: chunk bytes handed out and the table's slots (and
    /// the spare table's).
    pub(crate) fn bytes(&self) -> usize {
        self.used + (self.slots.len() + self.spare.len()) * std::mem::size_of::<Slot>()
    }

    /// Keeps the table of `written`, a buffer taken from this one and
    /// written, for this buffer's next growth, dropping the rest of it.
    ///
    /// A restore that writes its buffer many times over (a changelog of
    /// distinct keys) built a new table for each buffer, doubling from a
    /// few slots to millions, each on memory the system had to clear
    /// first, a page fault per 2 MiB huge page: on ten million distinct
    /// keys that clearing was a fifth of the restorer thread's time. A
    /// buffer that takes the table back starts at the size the one before
    /// reached, on pages already mapped, and only clears its slots.
    pub(crate) fn keep_spare(&mut self, written: RestoredEntries) {
        self.spare = written.slots;
    }

    /// Every entry, in key order, as owned changes; leaves the map empty.
    pub(crate) fn take_sorted(&mut self) -> Vec<Change> {
        let sorted = self
            .sorted()
            .into_iter()
            .map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)))
            .collect();
        self.clear();
        sorted
    }

    /// Every entry, in key order, borrowed from the map.
    ///
    /// Sorts where each entry lies ([`Place`]), and the sorted list
    /// becomes the entries in its own memory. A restore of ten million
    /// distinct keys writes its buffer a dozen times, and this took 38%
    /// of its writing thread's samples when it sorted slot indices into
    /// a list that grew by doubling, then built a second list reading the
    /// slots in key order, at random: a quarter of that was the system
    /// clearing fresh pages for the lists, a sixth copying the first as
    /// it grew. Now it takes a quarter of that thread's samples.
    pub(crate) fn sorted(&self) -> Vec<(&[u8], Option<&[u8]>)> {
        let chunks = &self.chunks;
        let mut places: Vec<Place> = Vec::with_capacity(self.len);
        places.extend(self.taken().map(|s| Place::of(chunks, s)));
        places.sort_unstable_by(|a, b| {
            key_order(a.prefix(), b.prefix(), || (a.key(chunks), b.key(chunks)))
        });
        entries_in_place(places, chunks)
    }

    /// The taken slots' indices in their keys' order.
    fn order(&self) -> Vec<u32> {
        let (chunks, slots) = (&self.chunks, &self.slots);
        // Sized up front: collected from a filter, the list would grow by
        // doubling, each step a copy onto fresh pages the system clears.
        let mut order: Vec<(u128, u32)> = Vec::with_capacity(self.len);
        order.extend(
            self.taken()
                .map(|s| (prefix(key_of(chunks, s)), index_of(slots, s))),
        );
        order.sort_unstable_by(|a, b| {
            key_order(a.0, b.0, || {
                (
                    key_of(chunks, &slots[a.1 as usize]),
                    key_of(chunks, &slots[b.1 as usize]),
                )
            })
        });
        order.into_iter().map(|(_, i)| i).collect()
    }

    /// The entries of the slots `at`, in that order. Key order visits the
    /// slots at random, so the slot [`WALK_AHEAD`] places on is fetched
    /// into the cache meanwhile.
    fn entries_at(&self, at: &[u32]) -> Vec<(&[u8], Option<&[u8]>)> {
        let mut out = Vec::with_capacity(at.len());
        for (n, &i) in at.iter().enumerate() {
            if let Some(&next) = at.get(n + WALK_AHEAD) {
                prefetch(self.slots[next as usize..].as_ptr().cast::<u8>());
            }
            out.push(self.entry(i));
        }
        out
    }

    /// The key and value of slot `i`.
    fn entry(&self, i: u32) -> (&[u8], Option<&[u8]>) {
        let s = &self.slots[i as usize];
        (key_of(&self.chunks, s), value_of(&self.chunks, s))
    }

    /// Takes every entry, leaving the map empty (its hasher stays).
    pub(crate) fn take(&mut self) -> Self {
        let empty = Self {
            hasher: self.hasher.clone(),
            ..Self::default()
        };
        std::mem::replace(self, empty)
    }

    /// Forgets every entry.
    pub(crate) fn clear(&mut self) {
        drop(self.take());
    }

    /// The low 32 bits of `key`'s hash, never 0.
    fn tag(&self, key: &[u8]) -> u32 {
        (self.hasher.hash_one(key) as u32).max(1)
    }

    /// The slot holding `key`, if any. The table is in Robin Hood order
    /// (`robin_hood.rs`), so a search for a new key, which is every key
    /// of a changelog of distinct keys, ends early too.
    fn find(&self, tag: u32, key: &[u8]) -> Option<usize> {
        robin_hood::find(&self.slots, tag as usize, |s| {
            s.tag == tag && key_of(&self.chunks, s) == key
        })
    }

    /// Places `slot`, whose key the table does not hold.
    fn insert(&mut self, slot: Slot) {
        robin_hood::insert(&mut self.slots, slot);
    }

    /// The taken slots in table order. Their entries lie in the chunks in
    /// the order keys were first read, so each is a wait for memory in a
    /// large map: the entry of the slot [`WALK_AHEAD`] places on is
    /// fetched into the cache meanwhile.
    fn taken(&self) -> impl Iterator<Item = &Slot> + '_ {
        self.slots.iter().enumerate().filter_map(move |(i, s)| {
            if let Some(next) = self.slots.get(i + WALK_AHEAD) {
                if next.tag != 0 {
                    let chunk = &self.chunks[next.chunk as usize];
                    prefetch(chunk.as_ptr().wrapping_add(next.pos as usize));
                }
            }
            (s.tag != 0).then_some(s)
        })
    }

    /// Doubles the table (or takes the spare table, if it is at least
    /// that large), placing every taken slot anew by its tag.
    fn grow(&mut self) {
        let size = (self.slots.len() * 2).max(FIRST_SLOTS);
        let fresh = if self.spare.len() >= size {
            let mut spare = std::mem::take(&mut self.spare);
            spare.fill(Slot::default());
            spare
        } else {
            crate::huge_pages::filled(size, Slot::default)
        };
        let old = std::mem::replace(&mut self.slots, fresh);
        for s in old.into_iter().filter(|s| s.tag != 0) {
            self.insert(s);
        }
    }
}

/// One store's entries in key order, borrowed: key, and value (`None`:
/// deleted).
pub type SortedEntries<'a> = Vec<(&'a [u8], Option<&'a [u8]>)>;

/// The restored entries of every store of a task, taken from the
/// restore's buffer to be written
/// ([`StateBackend::start_restored_batch`](super::StateBackend::start_restored_batch))
/// in the buffer's own chunks, so that handing them over copies nothing.
/// Mid-way through a restore they go unsorted, and the sort runs where
/// they are written. At its end processing follows and reads them until
/// written ([`StoreSet`](super::StoreSet) answers reads from them), by
/// range too, so they are read in key order: the list of that order is
/// built by whichever needs it first, the store writer (its write goes in
/// key order) or a range read, which waits for it if the writer is
/// building it. The restorer hands the batch over without sorting it, and
/// the task goes to processing meanwhile; its point reads use the table.
pub struct RestoredBatch {
    stores: Vec<RestoredEntries>,
    /// Per store, its taken slots in key order, built once on first use,
    /// if the batch is read in order (`None`: mid-way, unordered).
    order: Option<OnceLock<Vec<Vec<u32>>>>,
}

impl RestoredBatch {
    /// The entries taken from `stores`, one per store index, unsorted.
    pub(crate) fn new(stores: Vec<RestoredEntries>) -> Self {
        RestoredBatch {
            stores,
            order: None,
        }
    }

    /// The entries taken from `stores`, read in key order; the order is
    /// built by the first reader that needs it.
    pub(crate) fn new_sorted(stores: Vec<RestoredEntries>) -> Self {
        RestoredBatch {
            stores,
            order: Some(OnceLock::new()),
        }
    }

    /// Per store, its taken slots in key order, built on the first call
    /// (a concurrent call waits for it); `None` for an unordered batch.
    fn order(&self) -> Option<&Vec<Vec<u32>>> {
        let lock = self.order.as_ref()?;
        Some(lock.get_or_init(|| self.stores.iter().map(RestoredEntries::order).collect()))
    }

    /// Each store's entries (by store index) in key order, `None` for a
    /// deleted key.
    pub fn sorted(&self) -> Vec<SortedEntries<'_>> {
        match self.order() {
            Some(order) => self
                .stores
                .iter()
                .zip(order)
                .map(|(t, at)| t.entries_at(at))
                .collect(),
            None => self.stores.iter().map(RestoredEntries::sorted).collect(),
        }
    }

    /// The stores' entries, by store index, given back once written.
    pub(crate) fn into_stores(self) -> Vec<RestoredEntries> {
        self.stores
    }

    /// Whether the entries are read in key order ([`new_sorted`](Self::new_sorted)).
    pub(crate) fn is_sorted(&self) -> bool {
        self.order.is_some()
    }

    /// `key`'s value in store `idx`: `Some(None)` if deleted, `None` if
    /// not held.
    pub(crate) fn get(&self, idx: usize, key: &[u8]) -> Option<Option<&[u8]>> {
        self.stores.get(idx).and_then(|t| t.get(key))
    }

    /// Calls `f` with each entry of store `idx` from `from` on (all of
    /// them if `None`), in key order if sorted, until `f` returns false;
    /// unsorted, every entry, in no order.
    pub(crate) fn visit<'a>(
        &'a self,
        idx: usize,
        from: Option<&[u8]>,
        mut f: impl FnMut(&'a [u8], Option<&'a [u8]>) -> bool,
    ) {
        let Some(t) = self.stores.get(idx) else {
            return;
        };
        match self.order().and_then(|o| o.get(idx)) {
            Some(at) => {
                let start = from.map_or(0, |from| at.partition_point(|&i| t.entry(i).0 < from));
                for &i in &at[start..] {
                    let (k, v) = t.entry(i);
                    if !f(k, v) {
                        return;
                    }
                }
            }
            None => {
                for (k, v) in t.iter() {
                    if !f(k, v) {
                        return;
                    }
                }
            }
        }
    }
}

/// A hint to bring the cache line at `p` closer; never faults.
#[inline]
pub(crate) fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing and never faults, whatever the
    // address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>())
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Writes `mark`, `key` and `value` at the end of the last chunk (a new
/// one if they do not fit) and returns the slot that says where.
fn store(
    chunks: &mut Vec<Vec<u8>>,
    used: &mut usize,
    tag: u32,
    mark: Mark,
    key: &[u8],
    value: Option<&[u8]>,
) -> Slot {
    let value_len = value.map_or(0, <[u8]>::len);
    let need = MARK_BYTES + key.len() + value_len;
    let fits = chunks
        .last()
        .is_some_and(|c| c.capacity() - c.len() >= need);
    if !fits {
        chunks.push(Vec::with_capacity(need.max(CHUNK)));
    }
    let chunk = chunks.len() - 1;
    let c = &mut chunks[chunk];
    let pos = c.len();
    c.extend_from_slice(&[0; MARK_BYTES]);
    mark.write(&mut c[pos..pos + MARK_BYTES]);
    c.extend_from_slice(key);
    if let Some(v) = value {
        c.extend_from_slice(v);
    }
    *used += need;
    Slot {
        tag,
        chunk: chunk as u32,
        pos: pos as u32,
        key_len: key.len() as u32,
        value_len: value.map_or(DELETED, |v| v.len() as u32),
        value_cap: value_len as u32,
    }
}

impl robin_hood::Placed for Slot {
    fn is_free(&self) -> bool {
        self.tag == 0
    }
    fn home(&self) -> usize {
        self.tag as usize
    }
}

/// The first 16 bytes of `key` (zeros after a shorter key) as a number
/// that orders as the bytes do: two keys whose prefixes differ are in the
/// order of their prefixes; equal prefixes say nothing.
fn prefix(key: &[u8]) -> u128 {
    let mut b = [0u8; 16];
    let n = key.len().min(16);
    b[..n].copy_from_slice(&key[..n]);
    u128::from_be_bytes(b)
}

/// The order of two keys whose first 16 bytes are `a` and `b`
/// ([`prefix`]): whole keys (from `keys`) are compared only where those
/// are equal. Sorts read each key's prefix once into the list being
/// sorted, since a comparison of two keys in the chunks waits for two
/// cache lines, and a sort makes about 15 per key.
fn key_order<'k>(
    a: u128,
    b: u128,
    keys: impl FnOnce() -> (&'k [u8], &'k [u8]),
) -> std::cmp::Ordering {
    a.cmp(&b).then_with(|| {
        let (a, b) = keys();
        a.cmp(b)
    })
}

/// Where an entry lies in the chunks, with its key's first 16 bytes in
/// front (as two big-endian words), for sorting
/// ([`RestoredEntries::sorted`]). 32 bytes aligned as a pointer: the
/// size and alignment of the `(key, value)` pair it becomes, so that the
/// sorted list becomes the entries in its own memory.
#[derive(Clone, Copy)]
struct Place {
    prefix: [u64; 2],
    chunk: u32,
    pos: u32,
    key_len: u32,
    value_len: u32,
}

impl Place {
    /// Where the entry of `s` lies.
    fn of(chunks: &[Vec<u8>], s: &Slot) -> Place {
        let p = prefix(key_of(chunks, s));
        Place {
            prefix: [(p >> 64) as u64, p as u64],
            chunk: s.chunk,
            pos: s.pos,
            key_len: s.key_len,
            value_len: s.value_len,
        }
    }

    /// The key's first 16 bytes ([`prefix`]).
    fn prefix(&self) -> u128 {
        (u128::from(self.prefix[0]) << 64) | u128::from(self.prefix[1])
    }

    /// The slot this place was taken from, as far as reading goes.
    fn slot(&self) -> Slot {
        Slot {
            tag: 1,
            chunk: self.chunk,
            pos: self.pos,
            key_len: self.key_len,
            value_len: self.value_len,
            value_cap: 0,
        }
    }

    /// The key.
    fn key<'a>(&self, chunks: &'a [Vec<u8>]) -> &'a [u8] {
        key_of(chunks, &self.slot())
    }

    /// The key and value (`None`: deleted).
    fn entry<'a>(&self, chunks: &'a [Vec<u8>]) -> (&'a [u8], Option<&'a [u8]>) {
        let s = self.slot();
        (key_of(chunks, &s), value_of(chunks, &s))
    }
}

/// The entries at `places`, in that order, in the list's own memory: the
/// standard library collects a mapped `Vec` in place where the two
/// element types have the same size and alignment, as these do.
fn entries_in_place(places: Vec<Place>, chunks: &[Vec<u8>]) -> Vec<(&[u8], Option<&[u8]>)> {
    places.into_iter().map(|p| p.entry(chunks)).collect()
}

/// The index of `s`, a slot of `slots`.
fn index_of(slots: &[Slot], s: &Slot) -> u32 {
    ((s as *const Slot as usize - slots.as_ptr() as usize) / std::mem::size_of::<Slot>()) as u32
}

/// The mark of `s`.
fn mark_of(chunks: &[Vec<u8>], s: &Slot) -> Mark {
    let at = s.pos as usize;
    let b = &chunks[s.chunk as usize][at..at + MARK_BYTES];
    let mut source = [0u8; 4];
    let mut offset = [0u8; 8];
    source.copy_from_slice(&b[..4]);
    offset.copy_from_slice(&b[4..]);
    Mark {
        source: u32::from_le_bytes(source),
        offset: i64::from_le_bytes(offset),
    }
}

/// The key bytes of `s`.
fn key_of<'a>(chunks: &'a [Vec<u8>], s: &Slot) -> &'a [u8] {
    let at = s.pos as usize + MARK_BYTES;
    &chunks[s.chunk as usize][at..at + s.key_len as usize]
}

/// The value bytes of `s` (`None`: deleted).
fn value_of<'a>(chunks: &'a [Vec<u8>], s: &Slot) -> Option<&'a [u8]> {
    if s.value_len == DELETED {
        return None;
    }
    let at = s.pos as usize + MARK_BYTES + s.key_len as usize;
    Some(&chunks[s.chunk as usize][at..at + s.value_len as usize])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn should_keep_the_latest_value_of_each_key_through_growth_and_shrink() {
        let mut r = RestoredEntries::default();
        let mut model: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        // Values that grow, shrink and get deleted, over enough keys to
        // resize the table and fill several chunks.
        for round in 0..6u32 {
            for k in 0..40_000u32 {
                let key = format!("key-{k}").into_bytes();
                let value = match (k + round) % 5 {
                    0 => None,
                    n => Some(vec![b'a' + (round % 26) as u8; (n * 7 + round) as usize]),
                };
                // A hint changes nothing, whether or not the key is there.
                r.prefetch(&key);
                r.apply(&key, value.as_deref());
                model.insert(key, value);
            }
        }
        assert_eq!(r.len(), model.len());
        for (k, v) in &model {
            assert_eq!(
                r.get(k),
                Some(v.as_deref()),
                "key {}",
                String::from_utf8_lossy(k)
            );
        }
        assert_eq!(r.get(b"absent"), None);
        assert!(r.bytes() >= model.len() * std::mem::size_of::<Slot>());
        let sorted = r.take_sorted();
        assert_eq!(sorted, model.into_iter().collect::<Vec<_>>());
        assert!(r.is_empty());
        assert_eq!(r.bytes(), 0);
        assert_eq!(r.get(b"key-1"), None);
        // Emptied, the map takes entries again, and forgets them on clear.
        r.apply(b"again", Some(b"1"));
        assert_eq!(r.get(b"again"), Some(Some(&b"1"[..])));
        assert_eq!(r.len(), 1);
        r.clear();
        assert_eq!((r.len(), r.get(b"again"), r.iter().count()), (0, None, 0));
    }

    #[test]
    fn should_start_from_the_table_written_before_holding_only_new_entries() {
        let mut r = RestoredEntries::default();
        for k in 0..10_000u32 {
            r.apply(format!("k{k}").as_bytes(), Some(b"v"));
        }
        let size = r.slots.len();
        let written = r.take();
        r.keep_spare(written);
        assert_eq!(
            r.bytes(),
            size * std::mem::size_of::<Slot>(),
            "a spare table is memory held"
        );
        r.apply(b"k1", Some(b"w"));
        assert_eq!(
            r.slots.len(),
            size,
            "the first growth takes the spare table"
        );
        assert_eq!(r.len(), 1);
        assert_eq!(r.get(b"k1"), Some(Some(&b"w"[..])));
        assert_eq!(r.get(b"k2"), None, "the spare's entries are gone");
        assert_eq!(r.iter().count(), 1);
        // Taken again, the buffer starts from nothing (a spare goes only
        // where `keep_spare` puts it).
        drop(r.take());
        r.apply(b"k3", Some(b"x"));
        assert_eq!(r.slots.len(), FIRST_SLOTS);
    }

    #[test]
    fn should_turn_sorted_places_into_entries_in_the_same_memory() {
        let mut r = RestoredEntries::default();
        for i in 0..1000u32 {
            r.apply(
                format!("k{i}").as_bytes(),
                (i % 7 != 0).then_some(b"v".as_slice()),
            );
        }
        let places: Vec<Place> = r.taken().map(|s| Place::of(&r.chunks, s)).collect();
        let at = places.as_ptr() as usize;
        let entries = entries_in_place(places, &r.chunks);
        assert_eq!(entries.as_ptr() as usize, at);
        let mut want: Vec<_> = r.iter().collect();
        let mut got = entries.clone();
        want.sort();
        got.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn should_sort_keys_that_share_their_first_bytes_or_end_in_zeros() {
        let mut r = RestoredEntries::default();
        let mut keys: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"\0".to_vec(),
            b"ab".to_vec(),
            b"ab\0".to_vec(),
            b"ab\0\x01".to_vec(),
            b"ab\x01".to_vec(),
            b"\xff".to_vec(),
            vec![b'k'; 16],
            vec![b'k'; 17],
            [vec![b'k'; 16], b"\0".to_vec()].concat(),
            [vec![b'k'; 16], b"a".to_vec()].concat(),
            [vec![b'k'; 15], b"j".to_vec(), b"zz".to_vec()].concat(),
        ];
        for i in 0..2_000u32 {
            keys.push(format!("key-{i}").into_bytes());
            keys.push(format!("a-rather-long-shared-prefix-{i}").into_bytes());
        }
        for (i, k) in keys.iter().enumerate() {
            r.apply(k, Some(&i.to_be_bytes()));
        }
        let sorted: Vec<Vec<u8>> = r.take_sorted().into_iter().map(|(k, _)| k).collect();
        keys.sort();
        assert_eq!(sorted, keys);
    }

    #[test]
    fn should_hand_over_a_batch_that_reads_and_sorts_alike_sorted_or_not() {
        let fill = || {
            let mut r = RestoredEntries::default();
            for i in (0..3_000u32).rev() {
                let value = i.to_be_bytes();
                r.apply(
                    format!("k{i:05}").as_bytes(),
                    (i % 7 != 0).then_some(&value[..]),
                );
            }
            r
        };
        let want: Vec<(Vec<u8>, Option<Vec<u8>>)> = (0..3_000u32)
            .map(|i| {
                let value = (i % 7 != 0).then(|| i.to_be_bytes().to_vec());
                (format!("k{i:05}").into_bytes(), value)
            })
            .collect();
        let owned = |e: Vec<(&[u8], Option<&[u8]>)>| -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
            e.into_iter()
                .map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)))
                .collect()
        };
        for batch in [
            RestoredBatch::new(vec![fill()]),
            RestoredBatch::new_sorted(vec![fill()]),
        ] {
            let sorted = batch.sorted().into_iter().next().unwrap_or_default();
            assert_eq!(owned(sorted), want, "sorted: {}", batch.is_sorted());
            assert_eq!(batch.get(0, b"k00014"), Some(None), "a deletion");
            assert_eq!(
                batch.get(0, b"k00015"),
                Some(Some(&15u32.to_be_bytes()[..]))
            );
            assert_eq!(batch.get(0, b"k3"), None);
            assert_eq!(batch.get(1, b"k00015"), None, "no such store");
            // From a key on, until the visitor stops: in key order when
            // sorted, every entry when not.
            let mut seen = Vec::new();
            batch.visit(0, Some(b"k02990"), |k, _| {
                seen.push(k.to_vec());
                seen.len() < 5
            });
            if batch.is_sorted() {
                let first: Vec<Vec<u8>> = (2990..2995)
                    .map(|i| format!("k{i:05}").into_bytes())
                    .collect();
                assert_eq!(seen, first);
            } else {
                assert_eq!(seen.len(), 5);
            }
        }
    }

    /// A batch read in key order builds that order once, for whichever
    /// reader needs it first: range reads on two threads and the writer's
    /// sorted list, all at once, see the same order.
    #[test]
    fn should_build_a_batchs_key_order_once_for_concurrent_readers() {
        let mut r = RestoredEntries::default();
        for i in (0..20_000u32).rev() {
            r.apply(format!("k{i:06}").as_bytes(), Some(&i.to_be_bytes()));
        }
        let batch = RestoredBatch::new_sorted(vec![r]);
        let want: Vec<Vec<u8>> = (0..20_000u32)
            .map(|i| format!("k{i:06}").into_bytes())
            .collect();
        let range = || {
            let mut seen = Vec::new();
            batch.visit(0, None, |k, _| {
                seen.push(k.to_vec());
                true
            });
            seen
        };
        let (a, b, written) = std::thread::scope(|s| {
            let a = s.spawn(range);
            let b = s.spawn(range);
            let written: Vec<Vec<u8>> = batch.sorted()[0].iter().map(|(k, _)| k.to_vec()).collect();
            (a.join(), b.join(), written)
        });
        assert_eq!(a.ok(), Some(want.clone()));
        assert_eq!(b.ok(), Some(want.clone()));
        assert_eq!(written, want);
        let built = batch.order.as_ref().and_then(OnceLock::get);
        assert!(built.is_some(), "the order is kept once built");
        let first = built.map(|o| o.as_ptr());
        batch.visit(0, Some(b"k019999"), |_, _| false);
        let again = batch
            .order
            .as_ref()
            .and_then(OnceLock::get)
            .map(|o| o.as_ptr());
        assert_eq!(first, again, "built once, not per read");
    }

    #[test]
    fn should_keep_each_keys_last_mark_through_moves_and_deletes() {
        let mut r = RestoredEntries::default();
        let m = |offset| Mark { source: 0, offset };
        assert!(r.apply_marked(b"k", Some(b"1"), m(10), || None));
        let moved = b"a value longer than the first, so it moves";
        assert!(r.apply_marked(b"k", Some(moved), m(20), || None));
        assert!(!r.apply_marked(b"k", Some(b"2"), m(15), || None), "older");
        assert_eq!(r.get(b"k"), Some(Some(&moved[..])));
        assert!(r.apply_marked(b"k", None, m(30), || None));
        assert!(
            !r.apply_marked(b"k", Some(b"3"), m(25), || None),
            "older than the delete"
        );
        assert_eq!(r.get(b"k"), Some(None));
        let other = Mark {
            source: 1,
            offset: 1,
        };
        assert!(
            r.apply_marked(b"k", Some(b"4"), other, || None),
            "another partition"
        );
        r.apply(b"k", Some(b"5"));
        assert_eq!(r.get(b"k"), Some(Some(&b"5"[..])));
        assert_eq!(
            r.marks().collect::<Vec<_>>(),
            vec![(&b"k"[..], other)],
            "unchanged by a change naming no input"
        );
        // A key not held: what was known before decides.
        let known = Mark {
            source: 1,
            offset: 9,
        };
        assert!(!r.apply_marked(
            b"gone",
            Some(b"x"),
            Mark {
                source: 1,
                offset: 5
            },
            || Some(known)
        ));
        assert_eq!(r.get(b"gone"), None);
        r.apply_marked(b"back", Some(b"y"), Mark::none(), || Some(known));
        assert_eq!(
            r.marks()
                .filter(|(k, _)| *k == b"back")
                .map(|(_, m)| m)
                .next(),
            Some(known)
        );
        assert_eq!(r.take_sorted().len(), 2);
    }

    #[test]
    fn should_give_an_entry_larger_than_a_chunk_its_own_chunk() {
        let mut r = RestoredEntries::default();
        r.prefetch(b"before any slot exists");
        r.apply(b"small", Some(b"1"));
        let big = vec![7u8; CHUNK * 2];
        r.apply(b"big", Some(&big));
        r.apply(b"small", Some(b"22"));
        assert_eq!(r.get(b"big"), Some(Some(&big[..])));
        assert_eq!(r.get(b"small"), Some(Some(&b"22"[..])));
        r.apply(b"big", None);
        assert_eq!(r.get(b"big"), Some(None));
        assert_eq!(r.iter().count(), 2);
    }
}
