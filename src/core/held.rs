//! The records a store holds in memory: a slab of slots, found by id.
//!
//! Slots sit in one `Vec` and are reused through a free list, so memory follows the number
//! of records held: a growing `Vec` never touches its spare capacity, where a hash map of
//! whole records touches every bucket of each doubled table. The id table stores 4-byte slot
//! numbers only, and the ordered indexes (`index.rs`) store the same numbers.

use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use hashbrown::HashTable;

use super::compact::{Compact, Shapes};
use super::index::{Key, SlotNo};
use super::record::{push_log, Record, Status, Tags};

/// A record in memory: the full form while it runs (or when it is not plain), the compact
/// form once it finished (see `compact.rs`).
#[derive(Debug)]
enum Body {
    Full(Box<Record>),
    Compact(Compact),
}

/// One held record with what the store keeps beside it.
#[derive(Debug)]
pub(crate) struct Entry {
    /// The id's halves: a `u128` would align the entry to 16 bytes and pad it.
    id: [u64; 2],
    pub(crate) created_us: i64,
    /// Bumped on every change: what is kept of the record's JSON is kept for one revision.
    pub(crate) rev: u64,
    name_id: u32,
    /// Whether its unfinished row is kept in the file, owned by this store.
    pub(crate) journal: bool,
    body: Body,
}

impl Entry {
    /// A new entry holding `record` in full.
    pub(crate) fn new(id: u128, name_id: usize, record: Record, journal: bool) -> Entry {
        Entry {
            id: [(id >> 64) as u64, id as u64],
            created_us: record.info.created_us,
            rev: 0,
            name_id: u32::try_from(name_id).unwrap_or(u32::MAX),
            journal,
            body: Body::Full(Box::new(record)),
        }
    }

    pub(crate) fn id(&self) -> u128 {
        (u128::from(self.id[0]) << 64) | u128::from(self.id[1])
    }

    pub(crate) fn key(&self) -> Key {
        (self.created_us, self.id())
    }

    pub(crate) fn name_id(&self) -> usize {
        self.name_id as usize
    }

    pub(crate) fn status(&self) -> Status {
        match &self.body {
            Body::Full(r) => r.status(),
            Body::Compact(c) => c.status(),
        }
    }

    pub(crate) fn end_us(&self) -> Option<i64> {
        match &self.body {
            Body::Full(r) => r.progress.end_us,
            Body::Compact(c) => Some(c.end_us()),
        }
    }

    pub(crate) fn duration(&self) -> Option<f64> {
        match &self.body {
            Body::Full(r) => r.progress.duration(),
            Body::Compact(c) => c.duration(),
        }
    }

    pub(crate) fn logs_dropped(&self) -> u64 {
        match &self.body {
            Body::Full(r) => r.logs_dropped,
            Body::Compact(c) => c.logs_dropped(),
        }
    }

    /// The record in full form, which a running record always is.
    pub(crate) fn full_mut(&mut self) -> Option<&mut Record> {
        match &mut self.body {
            Body::Full(r) => Some(r),
            Body::Compact(_) => None,
        }
    }

    /// Fields only full records have (a compact one has none of them).
    fn full(&self) -> Option<&Record> {
        match &self.body {
            Body::Full(r) => Some(r),
            Body::Compact(_) => None,
        }
    }

    pub(crate) fn idempotency_key(&self) -> Option<&Arc<str>> {
        self.full().and_then(|r| r.info.idempotency_key.as_ref())
    }

    pub(crate) fn tags(&self) -> Option<&Tags> {
        self.full().and_then(|r| r.info.tags.as_ref())
    }

    pub(crate) fn retry_of(&self) -> Option<&Arc<str>> {
        self.full().and_then(|r| r.info.retry_of.as_ref())
    }
}

/// Hashes a random UUID by folding its halves: ids are generated here, never chosen by input.
fn id_hash(id: u128) -> u64 {
    (id as u64) ^ ((id >> 64) as u64)
}

/// [`id_hash`] as a `Hasher`, for the maps and sets of ids.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = id_hash(v);
    }
}

pub(crate) type IdBuild = BuildHasherDefault<IdHasher>;

/// The held records.
#[derive(Debug, Default)]
pub(crate) struct Held {
    slots: Vec<Option<Entry>>,
    free: Vec<SlotNo>,
    by_id: HashTable<SlotNo>,
    shapes: Shapes,
}

impl Held {
    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    pub(crate) fn slot_of(&self, id: u128) -> Option<SlotNo> {
        let slots = &self.slots;
        self.by_id
            .find(id_hash(id), |&s| {
                slots[s as usize].as_ref().is_some_and(|e| e.id() == id)
            })
            .copied()
    }

    pub(crate) fn contains(&self, id: u128) -> bool {
        self.slot_of(id).is_some()
    }

    pub(crate) fn get(&self, id: u128) -> Option<&Entry> {
        self.slot_of(id).and_then(|s| self.at(s))
    }

    pub(crate) fn at(&self, slot: SlotNo) -> Option<&Entry> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }

    pub(crate) fn at_mut(&mut self, slot: SlotNo) -> Option<&mut Entry> {
        self.slots.get_mut(slot as usize).and_then(Option::as_mut)
    }

    /// The ordering key of the record in `slot` (the indexes hold only occupied slots).
    pub(crate) fn key(&self, slot: SlotNo) -> Key {
        self.at(slot).map_or((i64::MIN, 0), Entry::key)
    }

    /// Holds `entry` (its id must not be held yet) and returns its slot.
    pub(crate) fn insert(&mut self, entry: Entry) -> SlotNo {
        let hash = id_hash(entry.id());
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some(entry);
                s
            }
            None => {
                self.slots.push(Some(entry));
                SlotNo::try_from(self.slots.len() - 1).unwrap_or(SlotNo::MAX)
            }
        };
        let slots = &self.slots;
        self.by_id.insert_unique(hash, slot, |&s| {
            slots[s as usize].as_ref().map_or(0, |e| id_hash(e.id()))
        });
        slot
    }

    /// Lets go of the record in `slot`; its slot is reused by a later insert.
    pub(crate) fn remove(&mut self, slot: SlotNo) -> Option<Entry> {
        let entry = self.slots.get_mut(slot as usize)?.take()?;
        if let Ok(found) = self.by_id.find_entry(id_hash(entry.id()), |&s| s == slot) {
            found.remove();
        }
        self.free.push(slot);
        Some(entry)
    }

    /// A copy of the record in `slot`, in full.
    pub(crate) fn record(&self, entry: &Entry) -> Record {
        match &entry.body {
            Body::Full(r) => Record::clone(r),
            Body::Compact(c) => c.record(entry.created_us, &self.shapes),
        }
    }

    /// Appends the record's 16-key JSON object.
    pub(crate) fn write_json(&self, entry: &Entry, buf: &mut Vec<u8>, task_id: &str) {
        match &entry.body {
            Body::Full(r) => r.write_json(buf, task_id),
            Body::Compact(c) => c.write_json(buf, task_id, entry.created_us, &self.shapes),
        }
    }

    /// Appends a log line to the record in `slot`, dropping the oldest beyond `max_lines`.
    pub(crate) fn push_log(&mut self, slot: SlotNo, line: Arc<str>, max_lines: usize) {
        let Some(entry) = self.at_mut(slot) else {
            return;
        };
        entry.rev += 1;
        match &mut entry.body {
            Body::Full(r) => push_log(&mut r.logs, &mut r.logs_dropped, line, max_lines),
            Body::Compact(c) => c.push_log(line, max_lines),
        }
    }

    /// Turns the finished record in `slot` into its compact form, if it has one.
    pub(crate) fn compact(&mut self, slot: SlotNo) {
        let Held { slots, shapes, .. } = self;
        let Some(entry) = slots.get_mut(slot as usize).and_then(Option::as_mut) else {
            return;
        };
        if let Body::Full(record) = &mut entry.body {
            if let Some(c) = Compact::of(record, shapes) {
                entry.body = Body::Compact(c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::record::tests::sample;

    /// `sample()` under `created_us`, in `status`, without tags and priority (a plain task).
    fn plain(created_us: i64, status: Status) -> Record {
        let mut r = sample();
        let info = Arc::make_mut(&mut r.info);
        (info.tags, info.priority, info.created_us) = (None, None, created_us);
        r.progress.status = status;
        r
    }

    #[test]
    fn entries_stay_small() {
        assert!(std::mem::size_of::<Option<Entry>>() <= 72);
    }

    #[test]
    fn slots_are_found_by_id_and_reused() {
        let mut held = Held::default();
        let a = held.insert(Entry::new(10, 0, plain(1, Status::Pending), false));
        let b = held.insert(Entry::new(20, 0, plain(2, Status::Pending), false));
        assert_eq!(
            (held.slot_of(10), held.slot_of(20), held.len()),
            (Some(a), Some(b), 2)
        );
        assert_eq!(held.key(b), (2, 20));
        let gone = held.remove(a).expect("held");
        assert_eq!(gone.id(), 10);
        assert!(held.remove(a).is_none(), "already gone");
        assert!(!held.contains(10) && held.at(a).is_none());
        let c = held.insert(Entry::new(30, 0, plain(3, Status::Pending), false));
        assert_eq!(c, a, "the freed slot is reused");
        assert_eq!(
            (held.slot_of(30), held.slot_of(10), held.len()),
            (Some(a), None, 2)
        );
        // Many ids, removed and added again: every one still found in its slot.
        let ids: Vec<u128> = (100..2100).map(|i| i * 0x1_0000_0001_0000_0001).collect();
        let slots: Vec<SlotNo> = ids
            .iter()
            .map(|&id| held.insert(Entry::new(id, 0, plain(4, Status::Pending), false)))
            .collect();
        for &s in slots.iter().step_by(2) {
            held.remove(s);
        }
        for (i, (&id, &s)) in ids.iter().zip(&slots).enumerate() {
            assert_eq!(held.slot_of(id), (i % 2 == 1).then_some(s));
        }
        assert_eq!(
            held.slots.len(),
            2 + 2000,
            "no slot beyond the most ever held"
        );
    }

    #[test]
    fn finished_plain_records_compact_and_read_the_same() {
        let mut held = Held::default();
        let record = plain(5, Status::Failed);
        let slot = held.insert(Entry::new(7, 0, record.clone(), false));
        let json = |held: &Held| {
            let mut buf = Vec::new();
            held.write_json(held.at(slot).expect("held"), &mut buf, "t");
            buf
        };
        let before = json(&held);
        held.compact(slot);
        let entry = held.at(slot).expect("held");
        assert!(matches!(entry.body, Body::Compact(_)));
        assert_eq!(json(&held), before);
        assert_eq!(entry.end_us(), record.progress.end_us);
        assert_eq!(entry.duration(), record.progress.duration());
        assert_eq!(entry.status(), Status::Failed);
        let copy = held.record(entry);
        assert_eq!(copy.info.created_us, 5);
        assert_eq!(copy.progress.stacktrace, record.progress.stacktrace);
        held.push_log(slot, "late".into(), 2);
        let entry = held.at(slot).expect("held");
        assert_eq!((entry.rev, entry.logs_dropped()), (1, 1));
        // A running record and a keyed one stay full.
        let running = held.insert(Entry::new(8, 0, plain(6, Status::Running), false));
        let mut keyed = plain(7, Status::Success);
        Arc::make_mut(&mut keyed.info).idempotency_key = Some("k".into());
        let keyed = held.insert(Entry::new(9, 0, keyed, false));
        for slot in [running, keyed] {
            held.compact(slot);
            assert!(matches!(
                held.at(slot).map(|e| &e.body),
                Some(Body::Full(_))
            ));
        }
        assert_eq!(
            held.at(keyed)
                .and_then(Entry::idempotency_key)
                .map(|k| &**k),
            Some("k")
        );
    }
}
