//! Robin Hood order for restore's open-addressing tables: the restore
//! buffer's (`restored.rs`) and the late-write guard's
//! (`task/late_writes.rs`).
//!
//! Both tables place an entry by bits of its hash and probe linearly
//! from there, and both grow when three quarters of their slots are
//! taken. In Robin Hood order an entry being placed takes the slot of the
//! first entry along its probe that lies nearer its own start than the
//! new one would, and that entry moves on the same way. So along any
//! probe the slots passed lie at least as far from their starts as the
//! probe has come from its own, up to where the key sought would be: a
//! search for a key the table does not hold ends at the first slot
//! nearer its start than that (or a free one), not only at a free slot.
//!
//! That matters for keys the tables do not hold, which a restore of
//! distinct keys asks about for nearly every record. In a table three
//! quarters full (simulated: 786,432 random keys in 2^20 slots, a million
//! searches for absent keys), plain linear probing read 8.5 slots per
//! such search, about four cache lines of 24-byte slots where the
//! restorer's hint fetches two; in Robin Hood order, 2.9 slots, two lines.
//! On a restore of ten million distinct keys, where the late-write guard
//! stays full for most of the restore, the restorer thread's CPU fell
//! from 5.27 to 4.77 s (medians of five).
//!
//! Nothing is ever removed from these tables (they are emptied whole), so
//! the order needs no deletion.

/// A slot of a table kept in Robin Hood order.
pub(crate) trait Placed {
    /// Whether the slot is free.
    fn is_free(&self) -> bool;
    /// The hash bits that place the slot's entry: its probe starts at
    /// these bits masked to the table's size.
    fn home(&self) -> usize;
}

/// The slot holding the entry `is` recognises, whose probe starts at
/// `home` (masked to the table's size), if any; `slots` is a power of two
/// of slots in Robin Hood order, or none.
pub(crate) fn find<S: Placed>(slots: &[S], home: usize, is: impl Fn(&S) -> bool) -> Option<usize> {
    if slots.is_empty() {
        return None;
    }
    let mask = slots.len() - 1;
    let mut i = home & mask;
    let mut dist = 0;
    loop {
        let s = &slots[i];
        if s.is_free() || distance(s.home(), i, mask) < dist {
            return None;
        }
        if is(s) {
            return Some(i);
        }
        i = (i + 1) & mask;
        dist += 1;
    }
}

/// Places `slot`, whose entry the table does not hold, in Robin Hood
/// order: along its probe it takes the place of the first slot nearer its
/// own start than `slot` is to its start, and that slot moves on the same
/// way, until one lands in a free slot. `slots` is a power of two of
/// slots with at least one free.
pub(crate) fn insert<S: Placed>(slots: &mut [S], mut slot: S) {
    let mask = slots.len() - 1;
    let mut i = slot.home() & mask;
    let mut dist = 0;
    loop {
        let s = &mut slots[i];
        if s.is_free() {
            *s = slot;
            return;
        }
        let theirs = distance(s.home(), i, mask);
        if theirs < dist {
            std::mem::swap(s, &mut slot);
            dist = theirs;
        }
        i = (i + 1) & mask;
        dist += 1;
    }
}

/// How far slot `i` lies past `home`, the start of its entry's probe, in
/// a table of `mask + 1` slots.
fn distance(home: usize, i: usize, mask: usize) -> usize {
    i.wrapping_sub(home & mask) & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, Default, Debug, PartialEq)]
    struct S(usize);

    impl Placed for S {
        fn is_free(&self) -> bool {
            self.0 == 0
        }
        fn home(&self) -> usize {
            self.0
        }
    }

    /// A table of `size` slots three quarters filled with keys from a
    /// simple generator (never 0), and the keys.
    fn filled(size: usize, seed: u64) -> (Vec<S>, Vec<usize>) {
        let mut x = seed;
        let mut slots = vec![S::default(); size];
        let mut keys = Vec::new();
        while keys.len() * 4 < size * 3 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let k = (x as usize) | 1 << 40;
            if find(&slots, k, |s| s.0 == k).is_none() {
                insert(&mut slots, S(k));
                keys.push(k);
            }
        }
        (slots, keys)
    }

    #[test]
    fn should_find_every_key_placed_and_no_other_in_a_full_table() {
        let (slots, keys) = filled(1 << 12, 0x9e37_79b9_7f4a_7c15);
        for &k in &keys {
            let i = find(&slots, k, |s| s.0 == k).expect("placed");
            assert_eq!(slots[i], S(k));
        }
        for absent in (0..10_000usize).map(|n| n * 7919 + (1 << 41)) {
            assert_eq!(find(&slots, absent, |s| s.0 == absent), None);
        }
        assert_eq!(find::<S>(&[], 5, |_| true), None, "no table, no slot");
    }

    #[test]
    fn should_keep_slots_along_a_probe_no_nearer_their_start_than_the_slot_before_plus_one() {
        let (slots, _) = filled(1 << 10, 12345);
        let mask = slots.len() - 1;
        for i in 0..slots.len() {
            let (here, next) = (slots[i], slots[(i + 1) & mask]);
            if here.is_free() || next.is_free() {
                continue;
            }
            // The invariant behind the early end of a search.
            assert!(
                distance(next.home(), (i + 1) & mask, mask) <= distance(here.home(), i, mask) + 1,
                "slot {i}"
            );
        }
    }
}
