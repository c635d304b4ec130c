//! The retention set: keys of the finished records in memory.
//!
//! Keys are `(created_us, id)`. A record finishes shortly after it was created, so keys
//! arrive near the back, and retention removes the oldest, at the front. A sorted `VecDeque`
//! makes both O(1), with far better locality than a B-tree; a key far from both ends costs a
//! shift of the shorter side, bounded by `max_history`.

use std::collections::VecDeque;

/// How many keys at either end are scanned before a binary search.
const NEAR: usize = 8;

/// Newest-first ordering key of a record.
pub(crate) type Key = (i64, u128);

/// A sorted set of keys.
#[derive(Debug, Default, Clone)]
pub(crate) struct KeyIndex {
    keys: VecDeque<Key>,
}

impl KeyIndex {
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// Adds `key`; false when it was already there.
    pub(crate) fn insert(&mut self, key: Key) -> bool {
        // Keys made in the same microsecond arrive in random id order: look near the back
        // before searching the whole set.
        let len = self.keys.len();
        for (back, k) in self.keys.iter().rev().take(NEAR).enumerate() {
            if *k < key {
                self.keys.insert(len - back, key);
                return true;
            }
            if *k == key {
                return false;
            }
        }
        if len <= NEAR {
            self.keys.push_front(key);
            return true;
        }
        match self.keys.binary_search(&key) {
            Ok(_) => false,
            Err(i) => {
                self.keys.insert(i, key);
                true
            }
        }
    }

    /// Removes `key`; false when it was not there.
    pub(crate) fn remove(&mut self, key: &Key) -> bool {
        // Removals are mostly of the oldest keys (retention) or the newest (live tasks).
        let len = self.keys.len();
        let found = if let Some(i) = self.keys.iter().take(NEAR).position(|k| k == key) {
            Some(i)
        } else if let Some(back) = self.keys.iter().rev().take(NEAR).position(|k| k == key) {
            Some(len - 1 - back)
        } else if len <= 2 * NEAR {
            None
        } else {
            self.keys.binary_search(key).ok()
        };
        match found {
            Some(i) => {
                self.keys.remove(i);
                true
            }
            None => false,
        }
    }

    /// Keys in ascending order.
    pub(crate) fn iter(&self) -> impl DoubleEndedIterator<Item = &Key> {
        self.keys.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    proptest! {
        #[test]
        fn behaves_like_a_btreeset(ops in proptest::collection::vec((any::<bool>(), 0i64..40, 0u128..4), 0..300)) {
            let mut ours = KeyIndex::default();
            let mut model = BTreeSet::new();
            for (add, c, id) in ops {
                let k = (c, id);
                if add {
                    prop_assert_eq!(ours.insert(k), model.insert(k));
                } else {
                    prop_assert_eq!(ours.remove(&k), model.remove(&k));
                }
                prop_assert_eq!(ours.len(), model.len());
            }
            let a: Vec<Key> = ours.iter().copied().collect();
            let b: Vec<Key> = model.iter().copied().collect();
            prop_assert_eq!(a, b);
        }
    }
}
