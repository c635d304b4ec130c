//! Ordered sets of held records: the page order and the retention order.
//!
//! An index holds slot numbers (4 bytes each, see `held.rs`) sorted by their record's key
//! `(created_us, id)`, which the caller looks up. The slots sit in sorted chunks of at most
//! `chunk` slots. Keys arrive near the back (a record is created now), so an append fills the
//! last chunk completely before it opens the next; a key landing in a full chunk elsewhere
//! splits it in half. A key may leave from anywhere (a task that starts out of order, the
//! oldest finished record behind a long queue of pending ones): that shifts the shorter side
//! of one chunk at most, and nothing for a first key (retention, a queue served in order); an
//! emptied chunk is dropped and a nearly empty one merges into a neighbour, so the chunks
//! stay at least about half full.

use std::collections::VecDeque;

/// Newest-first ordering key of a record.
pub(crate) type Key = (i64, u128);

/// The place of a record in the store's slab.
pub(crate) type SlotNo = u32;

/// Slots per chunk: 2 KiB, a shift of which costs about as much as a cache miss or two.
const CHUNK: usize = 512;

/// A sorted set of slots, ordered by the keys a `key_of` function gives them.
#[derive(Debug)]
pub(crate) struct SlotIndex {
    /// Never empty chunks, each sorted, each ending below the next one's first key.
    chunks: Vec<VecDeque<SlotNo>>,
    chunk: usize,
    len: usize,
}

impl Default for SlotIndex {
    fn default() -> SlotIndex {
        SlotIndex::with_chunk(CHUNK)
    }
}

impl SlotIndex {
    /// An index of chunks of `chunk` slots (tests use tiny ones to reach splits and merges).
    fn with_chunk(chunk: usize) -> SlotIndex {
        SlotIndex {
            chunks: Vec::new(),
            chunk: chunk.max(4),
            len: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The chunk `key` belongs in: the first whose last key is not below it, else the last.
    fn chunk_for(&self, key: Key, key_of: &impl Fn(SlotNo) -> Key) -> usize {
        let last = self.chunks.len().saturating_sub(1);
        // New records land in the last chunk: no search for them.
        if self
            .chunks
            .get(last)
            .and_then(|c| c.front())
            .is_some_and(|&s| key_of(s) <= key)
        {
            return last;
        }
        self.chunks
            .partition_point(|c| c.back().is_some_and(|&s| key_of(s) < key))
            .min(last)
    }

    /// Adds `slot`; false when a slot of the same key is there already.
    pub(crate) fn insert(&mut self, slot: SlotNo, key_of: impl Fn(SlotNo) -> Key) -> bool {
        let key = key_of(slot);
        if self.chunks.is_empty() {
            self.chunks.push(self.new_chunk());
        }
        let at = self.chunk_for(key, &key_of);
        let is_last = at + 1 == self.chunks.len();
        let cap = self.chunk;
        let chunk = &mut self.chunks[at];
        let pos = if chunk.back().is_some_and(|&s| key_of(s) < key) {
            chunk.len()
        } else {
            match chunk.binary_search_by(|&s| key_of(s).cmp(&key)) {
                Ok(_) => return false,
                Err(pos) => pos,
            }
        };
        self.len += 1;
        if chunk.len() < cap {
            chunk.insert(pos, slot);
            return true;
        }
        let mut tail = VecDeque::with_capacity(cap);
        if is_last && pos == chunk.len() {
            // An append: the full chunk stays full.
            tail.push_back(slot);
        } else {
            let half = chunk.len() / 2;
            tail.extend(chunk.range(half..));
            chunk.truncate(half);
            if pos <= half {
                chunk.insert(pos, slot);
            } else {
                tail.insert(pos - half, slot);
            }
        }
        self.chunks.insert(at + 1, tail);
        true
    }

    fn new_chunk(&self) -> VecDeque<SlotNo> {
        VecDeque::with_capacity(self.chunk)
    }

    /// Removes `slot` (its key must be the one it was inserted with); false when absent.
    pub(crate) fn remove(&mut self, slot: SlotNo, key_of: impl Fn(SlotNo) -> Key) -> bool {
        // Retention removes the oldest: no search for it.
        let (at, pos) = if self.chunks.first().and_then(|c| c.front()) == Some(&slot) {
            (0, 0)
        } else {
            let key = key_of(slot);
            let at = self.chunk_for(key, &key_of);
            let Some(chunk) = self.chunks.get(at) else {
                return false;
            };
            match chunk.binary_search_by(|&s| key_of(s).cmp(&key)) {
                Ok(pos) if chunk[pos] == slot => (at, pos),
                _ => return false,
            }
        };
        self.chunks[at].remove(pos);
        self.len -= 1;
        self.shrink(at);
        true
    }

    /// Drops chunk `at` when empty, or merges it into a neighbour when under a quarter full
    /// and the two fit in one chunk.
    fn shrink(&mut self, at: usize) {
        let len = self.chunks[at].len();
        if len == 0 {
            self.chunks.remove(at);
            return;
        }
        if len >= self.chunk / 4 {
            return;
        }
        let fits = |i: usize| {
            self.chunks
                .get(i)
                .is_some_and(|c| c.len() + len <= self.chunk)
        };
        let into = if at > 0 && fits(at - 1) {
            at - 1
        } else if fits(at + 1) {
            at + 1
        } else {
            return;
        };
        let (first, second) = (at.min(into), at.max(into));
        let moved = self.chunks.remove(second);
        self.chunks[first].extend(moved);
    }

    /// The slot of the lowest key.
    pub(crate) fn first(&self) -> Option<SlotNo> {
        self.chunks.first().and_then(|c| c.front()).copied()
    }

    /// Slots in ascending key order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = SlotNo> + '_ {
        self.chunks.iter().flatten().copied()
    }

    /// Slots with a key `<= upto` (all when `None`), descending.
    pub(crate) fn newest_first(
        &self,
        upto: Option<Key>,
        key_of: impl Fn(SlotNo) -> Key,
    ) -> impl Iterator<Item = SlotNo> + '_ {
        let (at, end) = match upto {
            None => (self.chunks.len(), 0),
            Some(u) => {
                let at = self
                    .chunks
                    .partition_point(|c| c.back().is_some_and(|&s| key_of(s) <= u));
                let end = self
                    .chunks
                    .get(at)
                    .map_or(0, |c| c.partition_point(|&s| key_of(s) <= u));
                (at, end)
            }
        };
        let partial = self.chunks.get(at).map(|c| c.range(..end));
        partial
            .into_iter()
            .flatten()
            .rev()
            .chain(self.chunks[..at].iter().rev().flat_map(|c| c.iter().rev()))
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    /// Slot `s` has the key `keys[s]`.
    fn key_in(keys: &[Key]) -> impl Fn(SlotNo) -> Key + '_ {
        |s| keys[s as usize]
    }

    fn chunk_lens(ix: &SlotIndex) -> Vec<usize> {
        ix.chunks.iter().map(VecDeque::len).collect()
    }

    proptest! {
        #[test]
        fn behaves_like_a_btreeset(
            ops in proptest::collection::vec((any::<bool>(), 0usize..60), 0..600),
            chunk in 4usize..9,
            upto in proptest::option::of((0i64..20, any::<u128>())),
        ) {
            // 60 slots, keys with many ties on created_us.
            let keys: Vec<Key> = (0..60u128).map(|s| ((s as i64 * 7) % 20, s.wrapping_mul(0x9e37_79b9_7f4a_7c15))).collect();
            let key_of = key_in(&keys);
            let mut ours = SlotIndex::with_chunk(chunk);
            let mut model = BTreeSet::new();
            for (add, slot) in ops {
                let slot = slot as SlotNo;
                if add {
                    prop_assert_eq!(ours.insert(slot, &key_of), model.insert(key_of(slot)));
                } else {
                    prop_assert_eq!(ours.remove(slot, &key_of), model.remove(&key_of(slot)));
                }
                prop_assert_eq!(ours.len(), model.len());
                prop_assert!(chunk_lens(&ours).iter().all(|&n| (1..=chunk).contains(&n)));
            }
            let asc: Vec<Key> = ours.iter().map(&key_of).collect();
            prop_assert_eq!(&asc, &model.iter().copied().collect::<Vec<_>>());
            prop_assert_eq!(ours.first().map(&key_of), model.first().copied());
            let desc: Vec<Key> = ours.newest_first(upto, &key_of).map(&key_of).collect();
            let expected: Vec<Key> = match upto {
                Some(u) => model.range(..=u).rev().copied().collect(),
                None => model.iter().rev().copied().collect(),
            };
            prop_assert_eq!(desc, expected);
        }
    }

    #[test]
    fn appends_fill_chunks_and_inserts_elsewhere_split_them() {
        let keys: Vec<Key> = (0..40).map(|s| (i64::from(s), 0)).collect();
        let mut ix = SlotIndex::with_chunk(8);
        for s in (0..32).step_by(2) {
            assert!(ix.insert(s, key_in(&keys)));
        }
        assert_eq!(chunk_lens(&ix), [8, 8], "appends leave full chunks");
        assert!(ix.insert(3, key_in(&keys)));
        assert_eq!(chunk_lens(&ix), [5, 4, 8], "a full chunk splits in half");
        assert!(!ix.insert(3, key_in(&keys)), "already there");
    }

    #[test]
    fn removal_from_anywhere_drops_and_merges_chunks() {
        let keys: Vec<Key> = (0..24).map(|s| (i64::from(s), 0)).collect();
        let mut ix = SlotIndex::with_chunk(8);
        for s in 0..24 {
            ix.insert(s, key_in(&keys));
        }
        assert_eq!(chunk_lens(&ix), [8, 8, 8]);
        for s in 8..16 {
            assert!(ix.remove(s, key_in(&keys)));
        }
        assert_eq!(chunk_lens(&ix), [8, 8], "the emptied middle chunk is gone");
        for s in [17, 18, 19, 20, 21, 22] {
            assert!(ix.remove(s, key_in(&keys)));
        }
        // Down to 2 of 8: merged into its full neighbour only if they fit; they do not.
        assert_eq!(chunk_lens(&ix), [8, 2]);
        for s in [0, 1, 2, 3, 4, 5, 6] {
            assert!(ix.remove(s, key_in(&keys)));
        }
        assert_eq!(
            chunk_lens(&ix),
            [3],
            "the last of a chunk merges into its neighbour"
        );
        assert!(!ix.remove(0, key_in(&keys)), "not there");
        assert_eq!(ix.iter().collect::<Vec<_>>(), [7, 16, 23]);
    }

    #[test]
    fn ties_on_created_us_order_by_id() {
        let keys: Vec<Key> = vec![(5, 9), (5, 1), (4, u128::MAX), (5, 4)];
        let mut ix = SlotIndex::default();
        for s in 0..4 {
            ix.insert(s, key_in(&keys));
        }
        assert_eq!(ix.iter().collect::<Vec<_>>(), [2, 1, 3, 0]);
        let below: Vec<SlotNo> = ix.newest_first(Some((5, 4)), key_in(&keys)).collect();
        assert_eq!(below, [3, 1, 2]);
    }
}
