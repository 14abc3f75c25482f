//! A task's store as a sled tree of *buckets*: each sled entry holds a
//! sorted run of the store's entries, so sled keeps one entry per run
//! rather than one per key.
//!
//! sled splits a leaf page once it holds more than 16 entries and keeps
//! some hundreds of bytes of bookkeeping per page in memory, evicted or
//! not, so with one sled entry per key its memory grew by about 40 bytes
//! per short key whatever its cache size (`bench-store-memory`). Runs of
//! up to [`SPLIT_BYTES`] bytes cut the number of sled entries, and so of
//! pages, by the number of keys per run.
//!
//! Layout: a bucket's sled key is its *fence*, and it holds the entries
//! with `fence <= key < next fence` (the first bucket's fence is the empty
//! key unless that bucket was emptied and removed). A key is read from the
//! bucket with the greatest fence at or below it. A change rewrites the
//! whole bucket: a bucket that grows past [`SPLIT_BYTES`] is cut into
//! pieces of about half that, the later pieces written first under their
//! first keys, then the first piece over the old bucket; an emptied bucket
//! is removed. sled recovers a prefix of its log, so a crash inside a split
//! leaves the old bucket holding entries that a later piece now covers.
//! Those are out of the old bucket's bounds and ignored: reads never reach
//! them, scans and counts skip them, and the next rewrite of the bucket
//! drops them (so does removing the bucket after it, which would otherwise
//! bring them back in bounds). Buckets are not merged when they shrink:
//! a store that deletes at random keeps small buckets, never more than one
//! per key.
//!
//! Encoding of a bucket: a version byte, then per entry the key's length,
//! the key, the value's length and the value, lengths as LEB128 varints,
//! keys strictly ascending. A bucket that does not decode is damage: the
//! task's state is rebuilt from its changelogs.
//!
//! **Reads beside a write.** The stream thread reads a tree while the
//! state writer thread writes it. A point read finds the greatest fence
//! at or below its key with sled's reverse iteration. sled cuts leaves at
//! shortened separators, so the leaf a key falls in may hold no fence at
//! or below it; the iteration then reads the leaf before it, a moment
//! later. A split writes its later pieces first (they can land in the
//! key's leaf) and the first piece over the old bucket last (in the leaf
//! before): a read that sees the key's leaf before the split and the leaf
//! before it after the split finds the first piece alone, without the
//! key the split moved out of it, and would answer "absent" for a key
//! that is there (a stream–table join would drop a record as if its row
//! were missing). So an absent answer that overlapped a split
//! ([`SPLITS`]) is checked by reading forward from the fence found up to
//! the key: forward reads see the leaves in the order the split writes
//! them, so the last fence they find at or below the key is the bucket
//! that holds it. A value found is never wrong: a key the write in
//! progress changes is still read from the writing layer above the tree
//! (`store::StoreSet`), and every piece of a split holds the other keys'
//! values unchanged. Range reads go forward from the bucket of their
//! start already.

use std::ops::Bound;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::Arc;

use super::key_filter::KeyFilter;
use crate::error::StoreError;

/// A bucket is cut into pieces once its encoding is larger than this.
pub const SPLIT_BYTES: usize = 1024;
/// Pieces of a cut bucket are about this large, leaving room to grow.
const PIECE_BYTES: usize = SPLIT_BYTES / 2;
/// Version byte of the bucket encoding.
const BUCKET_V1: u8 = 1;

/// One entry of a bucket, borrowed from its encoding or from a commit.
type Entry<'a> = (&'a [u8], &'a [u8]);

/// Splits begun, over every tree of the process. A point read that
/// started while a split was under way (more begun than [`SPLITS_ENDED`])
/// or saw one begin checks an absent answer (module docs). Counting over
/// all trees keeps it right whichever handles a tree was opened through
/// and however many threads write; a split elsewhere only costs a read
/// that overlapped it one more lookup.
static SPLITS: AtomicU64 = AtomicU64::new(0);

/// Splits whose writes are all done (see [`SPLITS`]).
static SPLITS_ENDED: AtomicU64 = AtomicU64::new(0);

/// Entries read back, owned, in key order.
pub(crate) type Owned = super::Entries;

/// The changes of one store in a commit, in key order (`None` deletes).
pub(crate) type Changes<'a> = [(&'a [u8], Option<&'a [u8]>)];

/// One store of one task, bucketed in a sled tree.
#[derive(Clone)]
pub(crate) struct BucketTree {
    tree: sled::Tree,
    /// Names the store in errors.
    name: String,
    /// Which keys the tree may hold, shared by every handle of it
    /// (`key_filter.rs`).
    filter: Arc<KeyFilter>,
}

impl BucketTree {
    /// The store kept in `tree`; `name` says which in errors. `filter` is
    /// the tree's key filter: the one its other handles share, or a new
    /// one that [`count_and_fill`](Self::count_and_fill) fills.
    pub(crate) fn new(tree: sled::Tree, name: String, filter: Arc<KeyFilter>) -> Self {
        BucketTree { tree, name, filter }
    }

    fn sled_err(&self, source: sled::Error) -> StoreError {
        StoreError::Sled {
            store: self.name.clone(),
            source,
        }
    }

    fn damaged(&self, fence: &[u8]) -> StoreError {
        StoreError::Damaged {
            store: self.name.clone(),
            reason: format!(
                "the bucket at {} does not decode",
                String::from_utf8_lossy(fence)
            ),
        }
    }

    /// The bucket whose range holds `key`: its fence and encoding.
    fn bucket_of(&self, key: &[u8]) -> Result<Option<(sled::IVec, sled::IVec)>, StoreError> {
        self.tree
            .range::<&[u8], _>(..=key)
            .next_back()
            .transpose()
            .map_err(|e| self.sled_err(e))
    }

    /// Removes every entry.
    pub(crate) fn clear(&self) -> Result<(), StoreError> {
        self.tree.clear().map_err(|e| self.sled_err(e))?;
        self.filter.reset();
        Ok(())
    }

    /// The sled tree itself, for tests that damage it.
    #[cfg(test)]
    pub(crate) fn raw(&self) -> &sled::Tree {
        &self.tree
    }

    /// The value of `key`. Safe beside the state writer's writes (module
    /// docs).
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if !self.filter.may_contain(key) {
            return Ok(None);
        }
        // Ended first: equal counts then mean no split was under way when
        // `begun` was read.
        let ended = SPLITS_ENDED.load(Ordering::Acquire);
        let begun = SPLITS.load(Ordering::Acquire);
        let found = self.bucket_of(key)?;
        if let Some((fence, raw)) = &found {
            if let Some(v) = find(raw, key).ok_or_else(|| self.damaged(fence))? {
                return Ok(Some(v.to_vec()));
            }
        }
        // The tree reads above come before the counter's second read.
        fence(Ordering::Acquire);
        if begun == ended && SPLITS.load(Ordering::Relaxed) == begun {
            return Ok(None);
        }
        self.get_forward(key, found.as_ref().map(|(f, _)| f.as_ref()))
    }

    /// `key`'s value from the last bucket whose fence lies after `after`
    /// and at or below `key`, read forward; `None` if there is no such
    /// bucket (the bucket at `after` was read whole and lacks the key).
    fn get_forward(&self, key: &[u8], after: Option<&[u8]>) -> Result<Option<Vec<u8>>, StoreError> {
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut last = None;
        for bucket in self.tree.range::<&[u8], _>((from, Bound::Included(key))) {
            last = Some(bucket.map_err(|e| self.sled_err(e))?);
        }
        let Some((fence, raw)) = last else {
            return Ok(None);
        };
        find(&raw, key)
            .ok_or_else(|| self.damaged(&fence))
            .map(|v| v.map(<[u8]>::to_vec))
    }

    /// Entries with `from <= key` and `key < to` (no bound if `None`), in
    /// key order.
    pub(crate) fn range(&self, from: &[u8], to: Option<&[u8]>) -> Result<Owned, StoreError> {
        // Without a bucket at or below `from` the scan starts at the first
        // bucket, which is where a scan from `from` would start too.
        let start = match self.bucket_of(from)? {
            Some((fence, _)) => fence.to_vec(),
            None => Vec::new(),
        };
        let mut out = Vec::new();
        self.each_bucket(start.as_slice(), |fence, entries, next| {
            if to.is_some_and(|to| fence >= to) {
                return false;
            }
            out.extend(
                entries
                    .iter()
                    .filter(|(k, _)| *k >= from && to.is_none_or(|to| *k < to))
                    .filter(|(k, _)| next.is_none_or(|n| *k < n))
                    .map(|(k, v)| (k.to_vec(), v.to_vec())),
            );
            true
        })?;
        Ok(out)
    }

    /// Entries whose key starts with `prefix`, in key order.
    pub(crate) fn scan_prefix(&self, prefix: &[u8]) -> Result<Owned, StoreError> {
        let end = prefix_end(prefix);
        self.range(prefix, end.as_deref())
    }

    /// Whether the key filter answers reads (tests).
    #[cfg(test)]
    pub(crate) fn filter_in_use(&self) -> bool {
        self.filter.is_complete()
    }

    /// Number of entries (reads every bucket; a bucket that does not
    /// decode is an error).
    pub(crate) fn count(&self) -> Result<u64, StoreError> {
        self.count_entries(false)
    }

    /// [`count`](Self::count), adding every key to the tree's key filter
    /// if `fill` (a filter just made for the tree), which is complete once
    /// every bucket was read. `expected` (the checkpoint's count, if any)
    /// sizes the filter ahead. A filter the count fails to fill answers
    /// "maybe" to every read.
    pub(crate) fn count_and_fill(&self, fill: bool, expected: u64) -> Result<u64, StoreError> {
        if !fill {
            return self.count();
        }
        self.filter
            .reserve(usize::try_from(expected).unwrap_or(usize::MAX));
        let n = self.count_entries(true)?;
        self.filter.completed();
        Ok(n)
    }

    /// Completes a new key filter at once if the tree is empty (a global
    /// table's first load, or one rebuilt). A table that already holds
    /// rows is not walked when it opens, unlike a task's stores, whose
    /// entries are counted then anyway: its filter answers "maybe" and
    /// every read goes to sled, until the table is cleared.
    pub(crate) fn fill_if_empty(&self) -> sled::Result<()> {
        if self.tree.first()?.is_none() {
            self.filter.completed();
        }
        Ok(())
    }

    /// Counts the entries in bounds, bucket by bucket, adding their keys to
    /// the key filter if `fill`.
    fn count_entries(&self, fill: bool) -> Result<u64, StoreError> {
        let mut n = 0u64;
        self.each_bucket(&[], |fence, entries, next| {
            let keys = entries
                .iter()
                .map(|(k, _)| *k)
                .filter(|k| *k >= fence && next.is_none_or(|n| *k < n));
            n += if fill {
                let keys: Vec<&[u8]> = keys.collect();
                self.filter.insert(keys.iter().copied());
                self.filter.count_new(keys.len() as u64);
                keys.len() as u64
            } else {
                keys.count() as u64
            };
            true
        })?;
        Ok(n)
    }

    /// Calls `f(fence, entries, next fence)` for each bucket from the one
    /// at `start` on, in order, while it returns `true`.
    fn each_bucket(
        &self,
        start: &[u8],
        mut f: impl FnMut(&[u8], &[Entry<'_>], Option<&[u8]>) -> bool,
    ) -> Result<(), StoreError> {
        let mut iter = self.tree.range::<&[u8], _>(start..);
        let mut current = iter.next().transpose().map_err(|e| self.sled_err(e))?;
        while let Some((fence, raw)) = current {
            let next = iter.next().transpose().map_err(|e| self.sled_err(e))?;
            let entries = decode(&raw).ok_or_else(|| self.damaged(&fence))?;
            if !f(&fence, &entries, next.as_ref().map(|(k, _)| k.as_ref())) {
                break;
            }
            current = next;
        }
        Ok(())
    }

    /// Writes `changes`, adding the entries added and subtracting those
    /// removed to `count`. Writing the same changes again gives the same
    /// entries. Changes out of key order are sorted first (the last change
    /// of a key wins); commits come sorted.
    pub(crate) fn apply(&self, changes: &Changes<'_>, count: &mut u64) -> Result<(), StoreError> {
        if changes.windows(2).all(|w| w[0].0 < w[1].0) {
            return self.apply_sorted(changes, count);
        }
        let sorted: std::collections::BTreeMap<&[u8], Option<&[u8]>> =
            changes.iter().copied().collect();
        let sorted: Vec<(&[u8], Option<&[u8]>)> = sorted.into_iter().collect();
        self.apply_sorted(&sorted, count)
    }

    /// [`apply`](Self::apply) for changes in strictly ascending key order.
    ///
    /// Buckets are visited in key order through one forward cursor: each
    /// bucket's successor comes from the cursor, and a change a few buckets
    /// further on is reached by walking it, so that a commit touching many
    /// neighbouring buckets pays one tree descent per leaf page rather
    /// than two per bucket (every sled lookup of a neighbour copies its
    /// whole leaf page). A change further than [`WALK_BUCKETS`] on is
    /// sought afresh, and once most changes were, the rest of the commit
    /// seeks every bucket (its changes are sparse for their store, and a
    /// walk that fails costs more than a descent). A task's trees are written by one commit at a
    /// time, and each bucket's pieces go between its fence and its
    /// successor's, so what the cursor read ahead is still current when it
    /// is reached.
    fn apply_sorted(&self, changes: &Changes<'_>, count: &mut u64) -> Result<(), StoreError> {
        // Keys go into the filter before any bucket holding them is
        // written; those already in the tree set bits already set.
        self.filter
            .insert(changes.iter().filter(|(_, v)| v.is_some()).map(|(k, _)| *k));
        let mut new_keys = 0;
        let mut rest = changes;
        let mut cursor: Option<Cursor> = None;
        while let Some(((first, _), _)) = rest.split_first() {
            let (fence, raw, next) = match cursor.as_mut().and_then(|c| c.reach(first)) {
                Some(found) => found.map_err(|e| self.sled_err(e))?,
                None => {
                    let (mut c, found) =
                        Cursor::seek(&self.tree, first).map_err(|e| self.sled_err(e))?;
                    if let Some(old) = &cursor {
                        (c.walked, c.too_far) = (old.walked, old.too_far);
                    }
                    cursor = Some(c);
                    found
                }
            };
            let take = next.as_ref().map_or(rest.len(), |n| {
                gallop_partition(rest, |(k, _)| *k < n.as_ref())
            });
            let (here, later) = rest.split_at(take);
            rest = later;
            let old = match &raw {
                Some(raw) => decode(raw).ok_or_else(|| self.damaged(&fence))?,
                None => Vec::new(),
            };
            let in_bounds =
                |k: &[u8]| k >= fence.as_ref() && next.as_ref().is_none_or(|n| k < n.as_ref());
            let old: Vec<Entry<'_>> = old.into_iter().filter(|(k, _)| in_bounds(k)).collect();
            let (merged, added, removed) = merge(&old, here);
            *count = (*count + added).saturating_sub(removed);
            new_keys += added;
            if merged.is_empty() {
                if raw.is_some() {
                    self.remove_bucket(&fence)?;
                }
                continue;
            }
            let pieces = split(&merged);
            let _split = (pieces.len() > 1).then(SplitMark::begin);
            for piece in pieces.iter().skip(1).rev() {
                self.tree
                    .insert(piece[0].0, encode(piece))
                    .map_err(|e| self.sled_err(e))?;
            }
            self.tree
                .insert(fence.as_ref(), encode(pieces[0]))
                .map_err(|e| self.sled_err(e))?;
        }
        self.filter.count_new(new_keys);
        Ok(())
    }

    /// Removes the (empty) bucket at `fence`, first dropping from the
    /// bucket before it any entries at or after `fence` a crash inside a
    /// split left there (they would come back in bounds).
    fn remove_bucket(&self, fence: &[u8]) -> Result<(), StoreError> {
        let before = self
            .tree
            .range::<&[u8], _>(..fence)
            .next_back()
            .transpose()
            .map_err(|e| self.sled_err(e))?;
        if let Some((prev, raw)) = before {
            let entries = decode(&raw).ok_or_else(|| self.damaged(&prev))?;
            if entries.iter().any(|(k, _)| *k >= fence) {
                let kept: Vec<Entry<'_>> =
                    entries.into_iter().filter(|(k, _)| *k < fence).collect();
                self.tree
                    .insert(&prev, encode(&kept))
                    .map_err(|e| self.sled_err(e))?;
            }
        }
        self.tree.remove(fence).map_err(|e| self.sled_err(e))?;
        Ok(())
    }
}

/// `slice.partition_point(pred)` found from the front: `pred` holds for a
/// prefix of `slice`, and the prefix is probed at 1, 2, 4, … entries
/// before a binary search inside the last step. A bucket takes a few of
/// a commit's many changes, so this costs about twice the logarithm of
/// the bucket's share rather than of all the changes left; a binary
/// search over all of them was 2% of the state writer's samples on the
/// watchlist.
fn gallop_partition<T>(slice: &[T], pred: impl Fn(&T) -> bool) -> usize {
    let mut lo = 0;
    let mut step = 1;
    while lo + step <= slice.len() && pred(&slice[lo + step - 1]) {
        lo += step;
        step *= 2;
    }
    let hi = (lo + step).min(slice.len());
    lo + slice[lo..hi].partition_point(&pred)
}

/// A split being written: counted in [`SPLITS`] at
/// [`begin`](Self::begin), before its first write, and in
/// [`SPLITS_ENDED`] when dropped, after its last write (or its error).
struct SplitMark;

impl SplitMark {
    fn begin() -> SplitMark {
        SPLITS.fetch_add(1, Ordering::AcqRel);
        SplitMark
    }
}

impl Drop for SplitMark {
    fn drop(&mut self) {
        SPLITS_ENDED.fetch_add(1, Ordering::Release);
    }
}

/// The first key after every key starting with `prefix` (`None`: none).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// A bucket found for a change: its fence (empty and `None` encoding
/// when the change comes before every bucket), its encoding, and the
/// fence of the bucket after it.
type Found = (sled::IVec, Option<sled::IVec>, Option<sled::IVec>);

/// Buckets further on than this are sought afresh rather than walked to.
const WALK_BUCKETS: usize = 8;

/// A forward walk over the buckets of a tree, one bucket read ahead.
struct Cursor {
    iter: sled::Iter,
    /// The bucket after the last one handed out.
    ahead: Option<(sled::IVec, sled::IVec)>,
    /// Changes reached by walking, and changes further than
    /// [`WALK_BUCKETS`] on (sought afresh after the walk).
    walked: u32,
    too_far: u32,
}

impl Cursor {
    /// The bucket holding `key` and a cursor past it.
    fn seek(tree: &sled::Tree, key: &[u8]) -> sled::Result<(Cursor, Found)> {
        let at = tree.range::<&[u8], _>(..=key).next_back().transpose()?;
        let (fence, raw, mut iter) = match at {
            Some((fence, raw)) => {
                let iter =
                    tree.range::<&[u8], _>((Bound::Excluded(fence.as_ref()), Bound::Unbounded));
                (fence, Some(raw), iter)
            }
            None => (sled::IVec::default(), None, tree.iter()),
        };
        let ahead = iter.next().transpose()?;
        let next = ahead.as_ref().map(|(k, _)| k.clone());
        Ok((
            Cursor {
                iter,
                ahead,
                walked: 0,
                too_far: 0,
            },
            (fence, raw, next),
        ))
    }

    /// Whether the changes so far lay mostly further apart than a walk
    /// goes: the cursor then walks no more.
    fn sparse(&self) -> bool {
        self.too_far > self.walked + 4
    }

    /// The bucket holding `key`, walking at most [`WALK_BUCKETS`] from the
    /// last one handed out; `None` if `key` is further or behind, or the
    /// cursor is [`sparse`](Self::sparse).
    fn reach(&mut self, key: &[u8]) -> Option<sled::Result<Found>> {
        if self.sparse() {
            return None;
        }
        let mut step = || -> sled::Result<Option<Found>> {
            for _ in 0..WALK_BUCKETS {
                let Some((fence, raw)) = self.ahead.take() else {
                    return Ok(None);
                };
                if key < fence.as_ref() {
                    self.ahead = Some((fence, raw));
                    return Ok(None);
                }
                self.ahead = self.iter.next().transpose()?;
                let next = self.ahead.as_ref().map(|(k, _)| k.clone());
                if next.as_ref().is_none_or(|n| key < n.as_ref()) {
                    self.walked += 1;
                    return Ok(Some((fence, Some(raw), next)));
                }
            }
            self.too_far += 1;
            Ok(None)
        };
        step().transpose()
    }
}

/// `old` with `changes` applied, and how many entries were added and removed.
fn merge<'a>(old: &[Entry<'a>], changes: &'a Changes<'a>) -> (Vec<Entry<'a>>, u64, u64) {
    let mut out = Vec::with_capacity(old.len() + changes.len());
    let (mut added, mut removed) = (0, 0);
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < changes.len() {
        let take_old = j == changes.len() || (i < old.len() && old[i].0 < changes[j].0);
        if take_old {
            out.push(old[i]);
            i += 1;
            continue;
        }
        let (key, value) = changes[j];
        let existed = i < old.len() && old[i].0 == key;
        if existed {
            i += 1;
        }
        match value {
            Some(v) => {
                out.push((key, v));
                added += u64::from(!existed);
            }
            None => removed += u64::from(existed),
        }
        j += 1;
    }
    (out, added, removed)
}

/// `entries` cut into pieces of about [`PIECE_BYTES`] if they encode to
/// more than [`SPLIT_BYTES`] (each piece holds at least one entry).
fn split<'e, 'a>(entries: &'e [Entry<'a>]) -> Vec<&'e [Entry<'a>]> {
    if encoded_len(entries) <= SPLIT_BYTES {
        return vec![entries];
    }
    let mut pieces = Vec::new();
    let (mut start, mut size) = (0, 1);
    for (i, e) in entries.iter().enumerate() {
        let len = entry_len(e);
        if i > start && size + len > PIECE_BYTES {
            pieces.push(&entries[start..i]);
            (start, size) = (i, 1);
        }
        size += len;
    }
    pieces.push(&entries[start..]);
    pieces
}

fn varint_len(mut n: usize) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

fn entry_len((k, v): &Entry<'_>) -> usize {
    varint_len(k.len()) + k.len() + varint_len(v.len()) + v.len()
}

fn encoded_len(entries: &[Entry<'_>]) -> usize {
    1 + entries.iter().map(entry_len).sum::<usize>()
}

fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn take_varint(raw: &mut &[u8]) -> Option<usize> {
    let mut n = 0usize;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = raw.split_first()?;
        *raw = rest;
        n |= usize::from(b & 0x7f).checked_shl(shift)?;
        if b < 0x80 {
            return Some(n);
        }
    }
    None
}

fn take<'a>(raw: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if raw.len() < n {
        return None;
    }
    let (head, rest) = raw.split_at(n);
    *raw = rest;
    Some(head)
}

/// The encoding of a bucket holding `entries` (in key order).
fn encode(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_len(entries));
    out.push(BUCKET_V1);
    for (k, v) in entries {
        put_varint(&mut out, k.len());
        out.extend_from_slice(k);
        put_varint(&mut out, v.len());
        out.extend_from_slice(v);
    }
    out
}

/// The next entry of a bucket's encoding (`Some(None)` at its end, `None`
/// if it does not decode).
fn next_entry<'a>(raw: &mut &'a [u8]) -> Option<Option<Entry<'a>>> {
    if raw.is_empty() {
        return Some(None);
    }
    let n = take_varint(raw)?;
    let k = take(raw, n)?;
    let n = take_varint(raw)?;
    let v = take(raw, n)?;
    Some(Some((k, v)))
}

/// A bucket's entries; `None` if it does not decode or its keys are not
/// strictly ascending.
fn decode(raw: &[u8]) -> Option<Vec<Entry<'_>>> {
    let (&version, mut rest) = raw.split_first()?;
    if version != BUCKET_V1 {
        return None;
    }
    let mut out: Vec<Entry<'_>> = Vec::new();
    while let Some(entry) = next_entry(&mut rest)? {
        if out.last().is_some_and(|(last, _)| *last >= entry.0) {
            return None;
        }
        out.push(entry);
    }
    Some(out)
}

/// The value of `key` in a bucket (`Some(None)`: not there), without
/// decoding the rest; `None` if the bucket does not decode up to it.
fn find<'a>(raw: &'a [u8], key: &[u8]) -> Option<Option<&'a [u8]>> {
    let (&version, mut rest) = raw.split_first()?;
    if version != BUCKET_V1 {
        return None;
    }
    while let Some((k, v)) = next_entry(&mut rest)? {
        match k.cmp(key) {
            std::cmp::Ordering::Less => {}
            std::cmp::Ordering::Equal => return Some(Some(v)),
            std::cmp::Ordering::Greater => return Some(None),
        }
    }
    Some(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn tree() -> (tempfile::TempDir, BucketTree) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let t = BucketTree::new(db.open_tree("t").unwrap(), "t".into(), unlimited_filter());
        t.filter.completed();
        (dir, t)
    }

    fn unlimited_filter() -> Arc<KeyFilter> {
        Arc::new(KeyFilter::new(super::super::key_filter::FilterBudget::new(
            usize::MAX,
        )))
    }

    #[test]
    fn should_find_the_same_partition_point_from_the_front() {
        for len in 0..70usize {
            let v: Vec<usize> = (0..len).collect();
            for cut in 0..=len {
                assert_eq!(
                    gallop_partition(&v, |&x| x < cut),
                    cut,
                    "len {len} cut {cut}"
                );
            }
        }
    }

    /// `t`'s tree as a new handle finds it when the directory opens: a
    /// new key filter, filled by the count (left unfilled if the count
    /// fails).
    fn reopened(t: &BucketTree) -> BucketTree {
        let t = BucketTree::new(t.tree.clone(), t.name.clone(), unlimited_filter());
        let _ = t.count_and_fill(true, 0);
        t
    }

    /// A small deterministic generator (xorshift).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn owned(v: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<(Vec<u8>, Vec<u8>)> {
        v
    }

    /// Applies `changes` to `t` and to `model`.
    fn commit(
        t: &BucketTree,
        changes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
        model: &mut BTreeMap<Vec<u8>, Vec<u8>>,
        count: &mut u64,
    ) {
        let borrowed: Vec<(&[u8], Option<&[u8]>)> = changes
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_deref()))
            .collect();
        t.apply(&borrowed, count).unwrap();
        for (k, v) in changes {
            match v {
                Some(v) => model.insert(k, v),
                None => model.remove(&k),
            };
        }
    }

    #[test]
    fn should_round_trip_a_bucket_and_refuse_damage() {
        let entries: Vec<Entry<'_>> = vec![(b"", b"x"), (b"a", b""), (&[b'z'; 200], &[1; 300])];
        let raw = encode(&entries);
        assert_eq!(raw.len(), encoded_len(&entries));
        assert_eq!(decode(&raw).unwrap(), entries);
        assert_eq!(find(&raw, b"a"), Some(Some(&b""[..])));
        assert_eq!(find(&raw, b"b"), Some(None));
        assert!(decode(&raw[..raw.len() - 1]).is_none(), "truncated");
        assert!(decode(b"x").is_none(), "unknown version");
        let unordered = encode(&[(b"b", b"1"), (b"a", b"2")]);
        assert!(decode(&unordered).is_none(), "keys out of order");
    }

    #[test]
    fn should_find_the_end_of_a_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 255, 255]), Some(vec![2]));
        assert_eq!(prefix_end(&[255]), None);
        assert_eq!(prefix_end(b""), None);
    }

    /// Random commits of puts and deletes, checked after each against a
    /// `BTreeMap`: reads, ranges, prefixes and the count.
    #[test]
    fn should_read_what_was_written_through_splits_and_removals() {
        let (_dir, t) = tree();
        let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        let mut count = 0u64;
        for round in 0..300 {
            let mut changes: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
            let deleting = round % 7 >= 4;
            for _ in 0..(rng.next() % 60) {
                let key = format!("k{:03}", rng.next() % 700).into_bytes();
                let value = if deleting && !rng.next().is_multiple_of(3) {
                    None
                } else {
                    Some(vec![b'v'; (rng.next() % 90) as usize])
                };
                changes.insert(key, value);
            }
            commit(&t, changes, &mut model, &mut count);
            assert_eq!(count, model.len() as u64, "round {round}");
            assert_eq!(t.count().unwrap(), model.len() as u64, "round {round}");
            let probe = format!("k{:03}", rng.next() % 700).into_bytes();
            assert_eq!(t.get(&probe).unwrap(), model.get(&probe).cloned());
            let to = format!("k{:03}", rng.next() % 700).into_bytes();
            let want: Vec<_> = model
                .range(probe.clone()..)
                .take_while(|(k, _)| **k < to)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            assert_eq!(owned(t.range(&probe, Some(&to)).unwrap()), want);
            let prefix = &probe[..3];
            let want: Vec<_> = model
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            assert_eq!(t.scan_prefix(prefix).unwrap(), want);
        }
        let all: Vec<_> = model.into_iter().collect();
        assert_eq!(t.range(b"", None).unwrap(), all);
        assert!(t.tree.len() > 5, "entries are spread over several buckets");
        assert!(t.tree.len() * 4 < all.len(), "buckets hold several entries");
    }

    /// Commits whose changes lie next to each other (walked to), far apart
    /// (sought afresh) and at both ends of a store of many buckets, with
    /// values that grow and split buckets and deletes that empty them.
    #[test]
    fn should_apply_near_and_far_changes_over_many_buckets() {
        let (_dir, t) = tree();
        let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut count = 0u64;
        let key = |i: u64| format!("key-{i:06}").into_bytes();
        for round in 0..60u64 {
            let mut changes: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
            // A dense run somewhere, a few far-away keys, and the ends.
            let start = rng.next() % 20_000;
            for i in start..start + rng.next() % 400 {
                changes.insert(
                    key(i),
                    Some(vec![b'a' + (round % 26) as u8; (i % 40) as usize]),
                );
            }
            for _ in 0..(rng.next() % 20) {
                let i = rng.next() % 20_000;
                let v =
                    (!rng.next().is_multiple_of(4)).then(|| vec![b'x'; (rng.next() % 60) as usize]);
                changes.insert(key(i), v);
            }
            if round % 5 == 0 {
                changes.insert(b"".to_vec(), Some(b"first".to_vec()));
                changes.insert(key(99_999), (round % 10 == 0).then(|| b"last".to_vec()));
            }
            if round % 9 == 8 {
                // Empties a run of buckets.
                let from = rng.next() % 20_000;
                for i in from..from + 300 {
                    changes.insert(key(i), None);
                }
            }
            commit(&t, changes, &mut model, &mut count);
            assert_eq!(count, model.len() as u64, "round {round}");
        }
        assert_eq!(t.count().unwrap(), model.len() as u64);
        let all: Vec<_> = model.clone().into_iter().collect();
        assert_eq!(t.range(b"", None).unwrap(), all);
        for (k, v) in model.iter().step_by(97) {
            assert_eq!(t.get(k).unwrap().as_ref(), Some(v));
        }
        assert!(
            t.tree.len() > 4 * WALK_BUCKETS,
            "far changes are sought afresh"
        );
    }

    /// A crash between a split's writes leaves the old bucket with entries
    /// a later piece covers: they are never read, counted or scanned, and
    /// removing the later bucket does not bring them back.
    #[test]
    fn should_ignore_what_a_split_interrupted_by_a_crash_left_behind() {
        let (_dir, t) = tree();
        let stale: Vec<Entry<'_>> = vec![(b"a", b"1"), (b"m", b"old"), (b"z", b"old")];
        t.tree.insert(b"", encode(&stale)).unwrap();
        t.tree.insert(b"m", encode(&[(b"m", b"new")])).unwrap();
        let t = reopened(&t);
        assert_eq!(t.get(b"m").unwrap(), Some(b"new".to_vec()));
        assert_eq!(t.get(b"z").unwrap(), None);
        assert_eq!(t.count().unwrap(), 2);
        assert_eq!(
            t.range(b"", None).unwrap(),
            vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"m".to_vec(), b"new".to_vec())
            ]
        );
        let mut count = 2;
        t.apply(&[(b"m", None)], &mut count).unwrap();
        assert_eq!(count, 1);
        assert_eq!(t.get(b"m").unwrap(), None, "stale entry stays gone");
        assert_eq!(t.get(b"z").unwrap(), None);
        assert_eq!(t.count().unwrap(), 1);
    }

    #[test]
    fn should_call_a_bucket_that_does_not_decode_damaged() {
        let (_dir, t) = tree();
        t.tree.insert(b"", b"\x09junk".as_slice()).unwrap();
        let t = reopened(&t);
        assert!(matches!(t.get(b"a"), Err(StoreError::Damaged { .. })));
        assert!(matches!(t.count(), Err(StoreError::Damaged { .. })));
        assert!(matches!(
            t.apply(&[(b"a", Some(b"1"))], &mut 0),
            Err(StoreError::Damaged { .. })
        ));
    }

    /// The forward check of an absent answer finds a key from any bucket
    /// at or before its own, and no key that is not there.
    #[test]
    fn should_read_forward_from_an_earlier_bucket() {
        let (_dir, t) = tree();
        let mut model = BTreeMap::new();
        let mut count = 0;
        let rows: BTreeMap<Vec<u8>, Option<Vec<u8>>> = (0..2_000u32)
            .map(|i| (format!("user-{i}").into_bytes(), Some(vec![b'c'; 20])))
            .collect();
        commit(&t, rows, &mut model, &mut count);
        let fences: Vec<Vec<u8>> = t.raw().iter().keys().map(|k| k.unwrap().to_vec()).collect();
        assert!(fences.len() > 20, "{} buckets", fences.len());
        for key in model.keys().step_by(37) {
            // `after` is a fence whose bucket lacks the key: any before
            // the key's own.
            let own = fences.iter().rposition(|f| f <= key).unwrap();
            for after in [None, Some(0), own.checked_sub(1)] {
                if after.is_some_and(|a| a >= own) {
                    continue;
                }
                let after = after.map(|a| fences[a].as_slice());
                assert_eq!(
                    t.get_forward(key, after).unwrap(),
                    model.get(key).cloned(),
                    "{key:?} after {after:?}"
                );
            }
            let mut absent = key.clone();
            absent.push(b'x');
            assert_eq!(t.get_forward(&absent, Some(&fences[0])).unwrap(), None);
            assert_eq!(t.get(&absent).unwrap(), None);
        }
    }

    /// Keys already written are found while the state writer grows the
    /// tree from empty, splitting buckets all over it (users arriving in
    /// the partitioner's order): reads from three threads, for a few
    /// seconds, while another writer splits buckets of a tree of its own
    /// (as another task's commit does). Without the check of absent
    /// answers a few point reads a second find written keys absent; range
    /// reads, one in four, find their start bucket the same way and then
    /// read forward, so they need no check.
    #[test]
    fn should_find_written_keys_while_splits_are_written() {
        use std::sync::atomic::{AtomicBool, AtomicUsize};
        use std::sync::Arc;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(6);
        let other = std::thread::spawn(move || {
            let mut rng = Rng(0x2545_F491_4F6C_DD1D);
            while std::time::Instant::now() < deadline {
                let (_dir, t) = tree();
                let mut count = 0;
                for _ in 0..20 {
                    let mut batch: Vec<Vec<u8>> = (0..500)
                        .map(|_| format!("other-{}", rng.next() % 1_000_000).into_bytes())
                        .collect();
                    batch.sort();
                    batch.dedup();
                    let changes: Vec<(&[u8], Option<&[u8]>)> = batch
                        .iter()
                        .map(|k| (k.as_slice(), Some(&b"1"[..])))
                        .collect();
                    t.apply(&changes, &mut count).unwrap();
                }
            }
        });
        let (mut reads, mut misses) = (0u64, Vec::new());
        let mut round = 0u64;
        while std::time::Instant::now() < deadline {
            round += 1;
            let (_dir, t) = tree();
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ round);
            let mut keys: Vec<Vec<u8>> = (0..20_000u32)
                .map(|i| format!("user-{i}").into_bytes())
                .collect();
            for i in (1..keys.len()).rev() {
                keys.swap(i, (rng.next() % (i as u64 + 1)) as usize);
            }
            let keys = Arc::new(keys);
            let written = Arc::new(AtomicUsize::new(0));
            let stop = Arc::new(AtomicBool::new(false));
            let readers: Vec<_> = (0..3usize)
                .map(|r| {
                    let (t, keys, written, stop) =
                        (t.clone(), keys.clone(), written.clone(), stop.clone());
                    std::thread::spawn(move || {
                        let (mut i, mut reads, mut misses) = (r * 977, 0u64, Vec::new());
                        while !stop.load(Ordering::Relaxed) {
                            let n = written.load(Ordering::Acquire);
                            if n == 0 {
                                std::thread::yield_now();
                                continue;
                            }
                            i = i.wrapping_add(7919);
                            let key = &keys[i % n];
                            reads += 1;
                            // One read in four is a range of the key alone:
                            // it finds its start bucket as a point read does.
                            let (how, found) = if i % 4 != 3 {
                                ("get", t.get(key).unwrap().is_some())
                            } else {
                                let mut end = key.clone();
                                end.push(0);
                                ("range", t.range(key, Some(&end)).unwrap().len() == 1)
                            };
                            if !found {
                                let key = String::from_utf8_lossy(key);
                                misses.push(format!("{how} {key}"));
                            }
                        }
                        (reads, misses)
                    })
                })
                .collect();
            let (mut at, mut size, mut count) = (0, 50, 0u64);
            while at < keys.len() {
                let end = (at + size).min(keys.len());
                let mut batch: Vec<(&[u8], Option<&[u8]>)> = keys[at..end]
                    .iter()
                    .map(|k| (k.as_slice(), Some(&b"company-17"[..])))
                    .collect();
                batch.sort();
                t.apply(&batch, &mut count).unwrap();
                written.store(end, Ordering::Release);
                (at, size) = (end, (size * 3 / 2).min(3_000));
            }
            stop.store(true, Ordering::SeqCst);
            for r in readers {
                let (n, m) = r.join().unwrap();
                reads += n;
                misses.extend(m);
            }
        }
        other.join().unwrap();
        assert!(reads > 10_000, "only {reads} reads");
        assert!(
            misses.is_empty(),
            "{} of {reads} reads in {round} rounds found written keys absent, e.g. {:?}",
            misses.len(),
            &misses[..misses.len().min(5)]
        );
    }
}
