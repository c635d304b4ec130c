//! The JSON of the records served last: pages are read again and again (a dashboard polls
//! the newest ones), and copying a record's JSON is several times cheaper than writing it.
//!
//! Bounded, so memory per held record stays what the record needs: the cache is dropped
//! whole when it fills, and the records still being read fill it again.

use std::collections::HashMap;
use std::sync::Arc;

use super::held::IdBuild;

/// Records whose JSON is kept at most.
const MAX_RECORDS: usize = 4096;

/// Records whose JSON is longer than this (long logs) are not kept.
const MAX_JSON: usize = 4096;

/// JSON by record id, with the revision it was written at.
#[derive(Debug, Default)]
pub(crate) struct ServedJson {
    by_id: HashMap<u128, (u64, Arc<[u8]>), IdBuild>,
}

impl ServedJson {
    /// The JSON of record `id` at revision `rev`: kept, or written by `write` and kept.
    pub(crate) fn get_or_write(
        &mut self,
        id: u128,
        rev: u64,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> Arc<[u8]> {
        if let Some((kept_rev, json)) = self.by_id.get(&id) {
            if *kept_rev == rev {
                return Arc::clone(json);
            }
        }
        let mut buf = Vec::with_capacity(512);
        write(&mut buf);
        let json: Arc<[u8]> = Arc::from(buf);
        if json.len() <= MAX_JSON {
            if self.by_id.len() >= MAX_RECORDS {
                self.by_id = HashMap::default();
            }
            self.by_id.insert(id, (rev, Arc::clone(&json)));
        }
        json
    }

    /// Drops what is kept of record `id` (it left memory: revisions of a record loaded again
    /// start over).
    pub(crate) fn forget(&mut self, id: u128) {
        self.by_id.remove(&id);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_id.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_until_the_revision_changes_or_forgotten() {
        let mut served = ServedJson::default();
        let write =
            |text: &'static str| move |buf: &mut Vec<u8>| buf.extend_from_slice(text.as_bytes());
        let first = served.get_or_write(1, 0, write("a"));
        let again = served.get_or_write(1, 0, write("b"));
        assert!(Arc::ptr_eq(&first, &again), "kept");
        assert_eq!(
            &*served.get_or_write(1, 1, write("c")),
            b"c",
            "a new revision"
        );
        served.forget(1);
        assert_eq!(&*served.get_or_write(1, 1, write("d")), b"d", "forgotten");
    }

    #[test]
    fn bounded() {
        let mut served = ServedJson::default();
        for id in 0..MAX_RECORDS as u128 + 10 {
            served.get_or_write(id, 0, |buf| buf.push(b'x'));
        }
        assert!(served.len() <= MAX_RECORDS && served.len() > 0);
        let long = served.get_or_write(u128::MAX, 0, |buf| buf.resize(MAX_JSON + 1, b' '));
        assert_eq!(long.len(), MAX_JSON + 1);
        assert!(!served.by_id.contains_key(&u128::MAX), "too long to keep");
    }
}
