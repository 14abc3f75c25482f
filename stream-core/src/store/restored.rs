//! Entries read by restore, before they are handed to the backend: the
//! latest value of each key of a changelog.
//!
//! A changelog holds each key many times and restore applies every record,
//! so this map sees one lookup per record read, on the restorer thread,
//! which is the one thread between the fetcher and a restored store. With a
//! `HashMap<Vec<u8>, Option<Vec<u8>>>` a lookup touched four places in
//! memory (the table's control bytes, its slot, the key's allocation and
//! the value's), and a new key cost two allocations. Here keys and values
//! live side by side in large chunks of bytes and the table holds only
//! where they are: a lookup touches the control bytes, a 20-byte slot and
//! one place in a chunk, and a new key allocates nothing until a chunk
//! fills.
//!
//! A value replaced by a longer one moves (key and value written anew at
//! the end of the last chunk, the old bytes left unused); a shorter one or
//! a tombstone overwrites in place. [`RestoredEntries::bytes`] counts every
//! chunk byte handed out, the unused ones too, so the restore's memory
//! budget sees what is really held.

use hashbrown::HashTable;
use std::hash::BuildHasher;

use super::Change;

/// Size of a chunk of key and value bytes; an entry larger than this gets
/// a chunk of its own.
const CHUNK: usize = 1 << 20;

/// `value_len` of a deleted key (a tombstone read last).
const DELETED: u32 = u32::MAX;

/// Where one entry's bytes are: `key_len` bytes of key at `pos` in chunk
/// `chunk`, followed by `value_cap` bytes of which the first `value_len`
/// are the value.
#[derive(Clone, Copy)]
struct Slot {
    chunk: u32,
    pos: u32,
    key_len: u32,
    value_len: u32,
    value_cap: u32,
}

/// The latest value (or deletion) of each key restore has read.
#[derive(Default)]
pub(crate) struct RestoredEntries {
    table: HashTable<Slot>,
    chunks: Vec<Vec<u8>>,
    hasher: foldhash::fast::RandomState,
    /// Bytes handed out from chunks (live and replaced).
    used: usize,
}

/// Memory of one entry beside its bytes: the table's slot and control byte.
const SLOT_BYTES: usize = std::mem::size_of::<Slot>() + 1;

impl RestoredEntries {
    /// Records `value` (`None`: deleted) as `key`'s latest.
    pub(crate) fn apply(&mut self, key: &[u8], value: Option<&[u8]>) {
        let hash = self.hasher.hash_one(key);
        let Self {
            table,
            chunks,
            hasher,
            used,
        } = self;
        if let Some(slot) = table.find_mut(hash, |s| key_of(chunks, s) == key) {
            match value {
                None => slot.value_len = DELETED,
                Some(v) if v.len() <= slot.value_cap as usize => {
                    let at = slot.pos as usize + slot.key_len as usize;
                    chunks[slot.chunk as usize][at..at + v.len()].copy_from_slice(v);
                    slot.value_len = v.len() as u32;
                }
                Some(_) => *slot = store(chunks, used, key, value),
            }
            return;
        }
        let slot = store(chunks, used, key, value);
        table.insert_unique(hash, slot, |s| hasher.hash_one(key_of(chunks, s)));
    }

    /// `key`'s latest value: `Some(None)` if its latest record deleted it,
    /// `None` if restore has not read it.
    pub(crate) fn get(&self, key: &[u8]) -> Option<Option<&[u8]>> {
        let hash = self.hasher.hash_one(key);
        self.table
            .find(hash, |s| key_of(&self.chunks, s) == key)
            .map(|s| value_of(&self.chunks, s))
    }

    /// Every key with its latest value, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
        self.table
            .iter()
            .map(|s| (key_of(&self.chunks, s), value_of(&self.chunks, s)))
    }

    /// Number of keys.
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no key was read.
    pub(crate) fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Memory held: chunk bytes handed out and the table's slots.
    pub(crate) fn bytes(&self) -> usize {
        self.used + self.table.capacity() * SLOT_BYTES
    }

    /// Every entry, in key order, as owned changes; leaves the map empty.
    pub(crate) fn take_sorted(&mut self) -> Vec<Change> {
        let chunks = std::mem::take(&mut self.chunks);
        let mut slots: Vec<Slot> = std::mem::take(&mut self.table).into_iter().collect();
        slots.sort_unstable_by(|a, b| key_of(&chunks, a).cmp(key_of(&chunks, b)));
        self.used = 0;
        slots
            .iter()
            .map(|s| {
                (
                    key_of(&chunks, s).to_vec(),
                    value_of(&chunks, s).map(<[u8]>::to_vec),
                )
            })
            .collect()
    }

    /// Forgets every entry.
    pub(crate) fn clear(&mut self) {
        self.table = HashTable::new();
        self.chunks = Vec::new();
        self.used = 0;
    }
}

/// Writes `key` and `value` at the end of the last chunk (a new one if
/// they do not fit) and returns where.
fn store(chunks: &mut Vec<Vec<u8>>, used: &mut usize, key: &[u8], value: Option<&[u8]>) -> Slot {
    let value_len = value.map_or(0, <[u8]>::len);
    let need = key.len() + value_len;
    let fits = chunks
        .last()
        .is_some_and(|c| c.capacity() - c.len() >= need);
    if !fits {
        chunks.push(Vec::with_capacity(need.max(CHUNK)));
    }
    let chunk = chunks.len() - 1;
    let c = &mut chunks[chunk];
    let pos = c.len();
    c.extend_from_slice(key);
    if let Some(v) = value {
        c.extend_from_slice(v);
    }
    *used += need;
    Slot {
        chunk: chunk as u32,
        pos: pos as u32,
        key_len: key.len() as u32,
        value_len: value.map_or(DELETED, |v| v.len() as u32),
        value_cap: value_len as u32,
    }
}

/// The key bytes of `s`.
fn key_of<'a>(chunks: &'a [Vec<u8>], s: &Slot) -> &'a [u8] {
    let at = s.pos as usize;
    &chunks[s.chunk as usize][at..at + s.key_len as usize]
}

/// The value bytes of `s` (`None`: deleted).
fn value_of<'a>(chunks: &'a [Vec<u8>], s: &Slot) -> Option<&'a [u8]> {
    if s.value_len == DELETED {
        return None;
    }
    let at = s.pos as usize + s.key_len as usize;
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
        assert!(r.bytes() >= model.len() * SLOT_BYTES);
        let sorted = r.take_sorted();
        assert_eq!(sorted, model.into_iter().collect::<Vec<_>>());
        assert!(r.is_empty());
        assert_eq!(r.bytes(), 0);
    }

    #[test]
    fn should_give_an_entry_larger_than_a_chunk_its_own_chunk() {
        let mut r = RestoredEntries::default();
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
