//! The task store: records in memory with their indexes, idempotency keys, retention,
//! metrics and the event ring under one lock, and the snapshot file beside it.
//!
//! Disk I/O never runs under the store lock: reads take what memory has first and then
//! query the file; a flush takes the dirty marks and copies the records out, writes them,
//! and only then takes the lock again, to evict (or, if the write failed, to mark them again).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use super::error::{CoreError, CoreResult};
use super::health::Health;
use super::held::{Entry, Held, IdBuild};
use super::index::{Key, SlotIndex, SlotNo};
use super::metrics::{Metrics, MetricsSnapshot};
use super::owners::Owners;
use super::prometheus;
use super::record::{
    detail_json, duration_seconds, new_uuid4, parse_uuid, unknown_status_message, Progress, Record,
    Status, Tags, TaskInfo, UuidText,
};
use super::ring::{Event, EventRing, Slot};
use super::served::ServedJson;
use super::snapshot::{
    is_in_memory, DeletedRow, DiskRecord, Doomed, MetricRow, OneOff, PageQuery, Scheduled,
    Snapshot, TaskRow,
};
use super::write_behind::{Wake, WriteBehind};

/// Fast seeded hashing for the few developer-chosen names (function, queue, source).
type NameBuild = foldhash::fast::RandomState;

/// Queue, source and executor strings beyond this many distinct values are not interned.
const MAX_INTERNED: usize = 4096;

/// One serialised event: its sequence number and JSON.
pub(crate) type EventJson = (u64, Arc<[u8]>);

/// Sizes and limits of a store, as passed to `TaskStore(...)`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StoreConfig {
    pub(crate) max_history: i64,
    pub(crate) ring_capacity: i64,
    pub(crate) max_log_lines: i64,
    /// Seconds an idempotency key stays held after its record was created; `None` = forever.
    pub(crate) idempotency_ttl: Option<f64>,
}

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        StoreConfig {
            max_history: 10_000,
            ring_capacity: 65_536,
            max_log_lines: 1_000,
            idempotency_ttl: None,
        }
    }
}

/// The seconds `ttl` (named `what`) in whole microseconds, rounded up: `now - created <
/// ttl_us` exactly when `now - created < ttl * 1e6` (both cores compare this way). Must be
/// positive; infinity saturates.
fn ttl_micros(what: &str, ttl: f64) -> CoreResult<i64> {
    if ttl.is_nan() || ttl <= 0.0 {
        return Err(CoreError::InvalidInput(format!(
            "{what} must be a positive number of seconds, got {ttl}"
        )));
    }
    // A float-to-int `as` saturates, so an infinite ttl holds keys forever.
    Ok((ttl * 1e6).ceil() as i64)
}

/// Why the schedule and metadata methods refuse a store without a file. Twin: `_NO_FILE` in
/// `_pycore/store.py`.
const NO_FILE: &str = "this TaskStore has no snapshot file (db_path is None); schedule locks, \
one-off schedules, metadata and the rows to replicate live in one: pass a db_path";

/// A row `adopt` may take (an unfinished record with a UUID, its logs and tags readable) as
/// the record it holds. The message names the task and the field. Twin: `_adoptable` in
/// `_pycore/store.py` (same checks, same order, same messages).
fn adoptable(row: TaskRow) -> CoreResult<(u128, Record)> {
    let bad = |field: &str, what: String| {
        CoreError::InvalidInput(format!(
            "adopt: task '{}': field '{field}' {what}",
            row.task_id
        ))
    };
    let Some(id) = parse_uuid(&row.task_id) else {
        return Err(bad(
            "task_id",
            "is not a UUID in canonical form (lowercase, hyphenated)".to_owned(),
        ));
    };
    let status = match Status::parse(&row.status) {
        Some(s @ (Status::Pending | Status::Running)) => s,
        _ => {
            return Err(bad(
                "status",
                format!(
                    "is '{}'; only pending and running rows can be adopted",
                    row.status
                ),
            ))
        }
    };
    if row.retries_used < 0 {
        return Err(bad(
            "retries_used",
            format!("must be at least 0, got {}", row.retries_used),
        ));
    }
    // Read strictly here: the file reads them leniently, and what memory then holds must be
    // what the row says.
    if serde_json::from_str::<Vec<String>>(&row.logs_json).is_err() {
        return Err(bad(
            "logs_json",
            "must be a JSON array of strings".to_owned(),
        ));
    }
    if row.logs_dropped < 0 {
        return Err(bad(
            "logs_dropped",
            format!("must be at least 0, got {}", row.logs_dropped),
        ));
    }
    if serde_json::from_str::<HashMap<String, String>>(&row.tags_json).is_err() {
        return Err(bad(
            "tags_json",
            "must be a JSON object of strings".to_owned(),
        ));
    }
    Ok((id, row.into_record_as(status).record))
}

/// The fields of `create`, extracted before the store lock is taken.
#[derive(Debug)]
pub(crate) struct NewTask<'a> {
    pub(crate) func_name: &'a str,
    pub(crate) queue: &'a str,
    pub(crate) executor: Option<&'a str>,
    pub(crate) priority: Option<i64>,
    pub(crate) source: &'a str,
    pub(crate) tags: Option<Tags>,
    pub(crate) idempotency_key: Option<&'a str>,
    pub(crate) args_json: Option<&'a [u8]>,
    pub(crate) kwargs_json: Option<&'a [u8]>,
    pub(crate) encrypted_payload: Option<&'a [u8]>,
    pub(crate) retry_of: Option<&'a str>,
    /// Put the record in the journal (ignored without a file).
    pub(crate) journal: bool,
}

/// The owned parts of a new record, made before the store lock is taken.
struct Payload {
    idempotency_key: Option<Arc<str>>,
    args_json: Option<Arc<[u8]>>,
    kwargs_json: Option<Arc<[u8]>>,
    encrypted_payload: Option<Arc<[u8]>>,
    retry_of: Option<Arc<str>>,
}

impl Payload {
    fn of(t: &NewTask<'_>) -> Payload {
        Payload {
            idempotency_key: t.idempotency_key.map(Arc::from),
            args_json: t.args_json.map(Arc::from),
            kwargs_json: t.kwargs_json.map(Arc::from),
            encrypted_payload: t.encrypted_payload.map(Arc::from),
            retry_of: t.retry_of.map(Arc::from),
        }
    }
}

/// A task id as `create` returns it: one made here, or a holder's id as the file stores it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TaskId {
    Uuid(u128),
    Stored(String),
}

impl TaskId {
    /// Calls `f` with the id's text (a UUID's is formatted on the stack).
    pub(crate) fn with_text<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        match self {
            TaskId::Uuid(id) => f(UuidText::new(*id).as_str()),
            TaskId::Stored(text) => f(text),
        }
    }
}

impl<'a> NewTask<'a> {
    /// A task of `func_name` with every option at its default: the common `add_task` call.
    pub(crate) fn named(func_name: &'a str) -> NewTask<'a> {
        NewTask {
            func_name,
            queue: "default",
            executor: None,
            priority: None,
            source: "manual",
            tags: None,
            idempotency_key: None,
            args_json: None,
            kwargs_json: None,
            encrypted_payload: None,
            retry_of: None,
            journal: false,
        }
    }
}

/// What firing a one-off made.
enum Fired {
    /// Its idempotency key is held by this task; nothing was created.
    Held(TaskId),
    /// A new record, its journal row (if any) committed, to hold in memory.
    Created {
        id: u128,
        name_id: usize,
        record: Record,
    },
}

/// The optional fields of `transition`.
#[derive(Debug, Default)]
pub(crate) struct Change<'a> {
    pub(crate) error: Option<&'a str>,
    pub(crate) stacktrace: Option<&'a str>,
    pub(crate) retries_used: Option<i64>,
}

/// Microseconds since the Unix epoch, now.
pub(crate) fn now_us() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

/// Function names with a dense id each (indexes and metrics are vectors by that id).
#[derive(Debug, Default)]
struct NameTable {
    ids: HashMap<Arc<str>, usize, NameBuild>,
    names: Vec<Arc<str>>,
}

impl NameTable {
    fn intern(&mut self, name: &str) -> usize {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let arc: Arc<str> = Arc::from(name);
        let id = self.names.len();
        self.names.push(Arc::clone(&arc));
        self.ids.insert(arc, id);
        id
    }

    fn get(&self, name: &str) -> Option<usize> {
        self.ids.get(name).copied()
    }
}

/// Shares the few distinct queue, source and executor strings between records.
#[derive(Debug, Default)]
struct Interner(HashSet<Arc<str>, NameBuild>);

impl Interner {
    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.0.get(s) {
            return Arc::clone(a);
        }
        let a: Arc<str> = Arc::from(s);
        if self.0.len() < MAX_INTERNED {
            self.0.insert(Arc::clone(&a));
        }
        a
    }
}

/// How a row of the file comes into memory as a journaled record (see `load_journaled`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Load {
    /// Claimed from a dead owner: open counted its row, and nothing announces it.
    Claimed,
    /// Taken over by `adopt` from the file: open counted its row, as a claimed one's; it is
    /// announced with a `created` event, as every record `adopt` loads.
    TakenOver,
    /// Inserted by `adopt` (the file never held it): counted as created here, and announced.
    Adopted,
}

#[derive(Debug)]
struct State {
    held: Held,
    /// The JSON of the records read last.
    served: ServedJson,
    /// Slots of every record in memory, by status and by name, ordered by key.
    all: SlotIndex,
    by_status: [SlotIndex; 7],
    by_name: Vec<SlotIndex>,
    names: NameTable,
    strings: Interner,
    /// Idempotency key -> holder. Keys may come from requests, so this keeps SipHash.
    keys: HashMap<Arc<str>, u128>,
    /// Finished records in memory by key: retention drops the oldest first (as `_pycore`).
    finished: SlotIndex,
    /// Finished records changed since they were last written.
    dirty: HashSet<u128, IdBuild>,
    /// Unfinished journaled records whose row is out of date (never also in `dirty`).
    journal_dirty: HashSet<u128, IdBuild>,
    /// The records the running flush is writing: their marks leave `dirty` and
    /// `journal_dirty` when it copies them, so a change meanwhile marks them again, and
    /// a flush that succeeds has nothing to clear record by record.
    writing: HashSet<u128, IdBuild>,
    /// What the flushes found (reported only with a file).
    health: Health,
    metrics: Metrics,
    /// Pending records in memory per queue name (the queue-depth gauge), kept per event.
    queue_pending: HashMap<Arc<str>, u64, NameBuild>,
    ring: EventRing<Event>,
    /// Whether finished records must reach the file before they may leave memory.
    persist: bool,
    max_history: usize,
    max_log_lines: usize,
}

impl State {
    /// Removes a finished record from memory with every trace of it (indexes, idempotency
    /// key, dirty mark).
    fn evict(&mut self, slot: SlotNo) {
        let Some(entry) = self.held.at(slot) else {
            return;
        };
        let (status, name_id) = (entry.status(), entry.name_id());
        let held = &self.held;
        let key_of = |s| held.key(s);
        self.finished.remove(slot, key_of);
        self.all.remove(slot, key_of);
        self.by_status[status.index()].remove(slot, key_of);
        if let Some(index) = self.by_name.get_mut(name_id) {
            index.remove(slot, key_of);
        }
        let Some(entry) = self.held.remove(slot) else {
            return;
        };
        let id = entry.id();
        if let Some(k) = entry.idempotency_key() {
            if self.keys.get(k.as_ref()) == Some(&id) {
                self.keys.remove(k.as_ref());
            }
        }
        self.dirty.remove(&id);
        self.served.forget(id);
    }

    /// Drops the oldest finished records beyond `max_history`; with a file, only those
    /// already written (it runs after a flush succeeded, when no write holds a record).
    fn enforce_retention(&mut self) {
        let excess = self.finished.len().saturating_sub(self.max_history);
        if excess == 0 {
            return;
        }
        if !self.persist {
            for _ in 0..excess {
                let Some(slot) = self.finished.first() else {
                    break;
                };
                self.evict(slot);
            }
            return;
        }
        let victims: Vec<SlotNo> = self
            .finished
            .iter()
            .filter(|&s| {
                self.held
                    .at(s)
                    .is_some_and(|e| !self.dirty.contains(&e.id()))
            })
            .take(excess)
            .collect();
        for slot in victims {
            self.evict(slot);
        }
    }

    /// The in-memory record holding idempotency `key`, if it still holds it: pending,
    /// running or succeeded, and created after `created_after` (µs) when there is a ttl.
    fn memory_holder(&self, key: &str, created_after: Option<i64>) -> Option<u128> {
        let &id = self.keys.get(key)?;
        let e = self.held.get(id)?;
        let fresh = created_after.is_none_or(|after| e.created_us > after);
        (e.status().holds_key() && fresh).then_some(id)
    }

    /// Whether a row the file lists as a key holder still holds: memory is newer than the
    /// file, so a record memory knows to have failed (its row not yet rewritten) does not.
    fn disk_row_holds(&self, task_id: &str) -> bool {
        parse_uuid(task_id)
            .and_then(|id| self.held.get(id))
            .is_none_or(|e| e.status().holds_key())
    }

    /// The holder of idempotency `key`: in memory, else among the stored holders `on_disk`
    /// (newest first) that memory does not know to have let it go.
    fn key_holder(
        &self,
        key: &str,
        created_after: Option<i64>,
        on_disk: Vec<String>,
    ) -> Option<TaskId> {
        if let Some(holder) = self.memory_holder(key, created_after) {
            return Some(TaskId::Uuid(holder));
        }
        on_disk
            .into_iter()
            .find(|h| self.disk_row_holds(h))
            .map(TaskId::Stored)
    }

    /// Holds `entry` and adds it to the indexes of its status and name.
    fn hold(&mut self, entry: Entry, status: Status) {
        let name_id = entry.name_id();
        let slot = self.held.insert(entry);
        let held = &self.held;
        let key_of = |s| held.key(s);
        self.all.insert(slot, key_of);
        self.by_status[status.index()].insert(slot, key_of);
        if name_id >= self.by_name.len() {
            self.by_name.resize_with(name_id + 1, SlotIndex::default);
        }
        self.by_name[name_id].insert(slot, key_of);
    }

    /// The JSON object of the record in `slot` as served: kept from the last read if it has
    /// not changed since.
    fn served_json(&mut self, slot: SlotNo) -> Option<Arc<[u8]>> {
        let State { held, served, .. } = self;
        let entry = held.at(slot)?;
        let id = entry.id();
        Some(served.get_or_write(id, entry.rev, |buf| {
            held.write_json(entry, buf, UuidText::new(id).as_str());
        }))
    }

    /// An id no record in memory has.
    fn fresh_id(&self) -> u128 {
        loop {
            let id = new_uuid4();
            if !self.held.contains(id) {
                return id;
            }
        }
    }

    /// A new pending record of `t`, created at `now`, with its name id; not held yet.
    fn new_record(&mut self, t: &NewTask<'_>, payload: Payload, now: i64) -> (usize, Record) {
        let name_id = self.names.intern(t.func_name);
        let info = Arc::new(TaskInfo {
            func_name: Arc::clone(&self.names.names[name_id]),
            created_us: now,
            tags: t.tags.clone(),
            source: self.strings.intern(t.source),
            priority: t.priority,
            executor: t.executor.map(|e| self.strings.intern(e)),
            queue: self.strings.intern(t.queue),
            idempotency_key: payload.idempotency_key,
            args_json: payload.args_json,
            kwargs_json: payload.kwargs_json,
            encrypted_payload: payload.encrypted_payload,
            retry_of: payload.retry_of,
        });
        let record = Record {
            info,
            progress: Progress::new(),
            logs: VecDeque::new(),
            logs_dropped: 0,
        };
        (name_id, record)
    }

    /// Holds a new pending record under `id`: its key, indexes, metrics, queue depth and
    /// `created` event. `journal` puts it in the journal (with a file); `written` says its
    /// journal row is in the file already, so no flush needs to write it.
    fn add(&mut self, id: u128, name_id: usize, record: Record, journal: bool, written: bool) {
        let info = &record.info;
        if let Some(k) = &info.idempotency_key {
            self.keys.insert(Arc::clone(k), id);
        }
        self.metrics.created(name_id, Status::Pending);
        *self
            .queue_pending
            .entry(Arc::clone(&info.queue))
            .or_insert(0) += 1;
        self.ring.push(Event::Task {
            created: true,
            id,
            info: Arc::clone(info),
            progress: record.progress.clone(),
        });
        let journal = journal && self.persist;
        if journal && !written {
            self.journal_dirty.insert(id);
        }
        self.hold(Entry::new(id, name_id, record, journal), Status::Pending);
    }

    /// Adds a new pending record of `t`, counts it and emits its `created` event.
    fn insert(&mut self, t: &NewTask<'_>, payload: Payload, now: i64) -> u128 {
        let id = self.fresh_id();
        let (name_id, record) = self.new_record(t, payload, now);
        self.add(id, name_id, record, t.journal, false);
        id
    }

    /// Takes a row of the file into memory as a journaled record, unless its id is already
    /// held; `how` says whether it is counted and announced.
    fn load_journaled(&mut self, d: DiskRecord, how: Load) -> Option<(String, Record)> {
        let id = parse_uuid(&d.task_id)?;
        if self.held.contains(id) {
            return None;
        }
        let mut record = d.record;
        // This store's bound applies, as to any record it holds.
        while record.logs.len() > self.max_log_lines {
            record.logs.pop_front();
            record.logs_dropped += 1;
        }
        let status = record.status();
        let name_id = self.names.intern(&record.info.func_name);
        if how == Load::Adopted {
            self.metrics.created(name_id, status);
        }
        if how != Load::Claimed {
            self.ring.push(Event::Task {
                created: true,
                id,
                info: Arc::clone(&record.info),
                progress: record.progress.clone(),
            });
        }
        if status == Status::Pending {
            *self
                .queue_pending
                .entry(Arc::clone(&record.info.queue))
                .or_insert(0) += 1;
        }
        if let Some(k) = &record.info.idempotency_key {
            if self.memory_holder(k, None).is_none() {
                self.keys.insert(Arc::clone(k), id);
            }
        }
        self.hold(Entry::new(id, name_id, record.clone(), true), status);
        Some((d.task_id, record))
    }

    /// Ids of the finished records in memory that ended before `end_before_us`.
    fn finished_before(&self, end_before_us: i64) -> Vec<u128> {
        self.finished
            .iter()
            .filter_map(|s| self.held.at(s))
            .filter(|e| e.end_us().is_some_and(|t| t < end_before_us))
            .map(Entry::id)
            .collect()
    }

    /// Removes the deleted records from memory and makes the metrics forget each once:
    /// `rows` left the file (forgotten as memory has them when memory holds them), `ids`
    /// were chosen in memory. Returns how many left memory.
    fn remove_deleted(&mut self, ids: &[u128], rows: &[DeletedRow]) -> usize {
        let mut removed = 0;
        for row in rows {
            match parse_uuid(&row.task_id).filter(|&id| self.held.contains(id)) {
                Some(id) => removed += usize::from(self.remove_finished(id)),
                None => self.forget_row(&row.row),
            }
        }
        for &id in ids {
            removed += usize::from(self.remove_finished(id));
        }
        removed
    }

    /// Removes a finished record from memory and from the metrics; false when it is not
    /// held or not finished.
    fn remove_finished(&mut self, id: u128) -> bool {
        let Some(slot) = self.held.slot_of(id) else {
            return false;
        };
        let Some(entry) = self.held.at(slot) else {
            return false;
        };
        let status = entry.status();
        if !status.is_finished() {
            return false;
        }
        let (duration, name_id) = (entry.duration(), entry.name_id());
        self.evict(slot);
        self.metrics.forget(name_id, status, duration);
        true
    }

    /// Makes the metrics forget a deleted row that memory did not hold. A name this store
    /// never counted (a row written by another store since open) has nothing to forget.
    fn forget_row(&mut self, row: &MetricRow) {
        let (Some(status), Some(name_id)) = (row.status, self.names.get(&row.func_name)) else {
            return;
        };
        let duration = match (status.is_finished(), row.start_us, row.end_us) {
            (true, Some(s), Some(e)) => Some(duration_seconds(s, e)),
            _ => None,
        };
        self.metrics.forget(name_id, status, duration);
    }

    /// Takes the marks of the records a flush must write into `writing`; copies of them.
    fn take_unwritten(&mut self) -> Vec<(u128, Record)> {
        // A swap, not a copy: `writing` is empty between flushes.
        std::mem::swap(&mut self.writing, &mut self.dirty);
        self.writing.extend(self.journal_dirty.drain());
        let held = &self.held;
        let copy = |&id: &u128| held.get(id).map(|e| (id, held.record(e)));
        self.writing.iter().filter_map(copy).collect()
    }

    /// After a failed write: marks again the records it took that are still held, as a
    /// change does, finished or not.
    fn mark_unwritten_again(&mut self) {
        for id in self.writing.drain() {
            match self.held.get(id).map(|e| e.status().is_finished()) {
                Some(true) => self.dirty.insert(id),
                Some(false) => self.journal_dirty.insert(id),
                None => false,
            };
        }
    }

    /// Records waiting to be written, counting those a write is taking (one changed
    /// while its write runs counts twice, until that write ends).
    fn unwritten(&self) -> usize {
        self.dirty.len() + self.journal_dirty.len() + self.writing.len()
    }

    /// The records a write behind may take: none while the last write failed, since the
    /// owner's retries, with their pauses, take over until one succeeds.
    fn behind(&self) -> usize {
        if self.health.ok {
            self.dirty.len() + self.journal_dirty.len()
        } else {
            0
        }
    }

    /// The flush health with the count of records waiting to be written.
    fn health_now(&self) -> Health {
        Health {
            unwritten: self.unwritten() as u64,
            ..self.health.clone()
        }
    }

    /// Slots of the memory records matching the filters with a key below `before`, newest
    /// first.
    fn page_slots(
        &self,
        status: Option<Status>,
        name_id: Option<usize>,
        tag: Option<(&str, &str)>,
        before: Option<(i64, &str)>,
        limit: usize,
    ) -> Vec<SlotNo> {
        let upto = before.map(|(c, _)| (c, u128::MAX));
        let held = &self.held;
        let index = match (status, name_id) {
            (Some(s), Some(n)) => {
                let by_s = &self.by_status[s.index()];
                let by_n = &self.by_name[n];
                if by_s.len() <= by_n.len() {
                    by_s
                } else {
                    by_n
                }
            }
            (Some(s), None) => &self.by_status[s.index()],
            (None, Some(n)) => &self.by_name[n],
            (None, None) => &self.all,
        };
        let mut out = Vec::with_capacity(limit.min(1024));
        for slot in index.newest_first(upto, |s| held.key(s)) {
            if out.len() >= limit {
                break;
            }
            let Some(entry) = held.at(slot) else {
                continue;
            };
            if let Some((c, cursor_id)) = before {
                // Ids compare as their text, which is what the cursor carries.
                if entry.created_us == c && UuidText::new(entry.id()).as_str() >= cursor_id {
                    continue;
                }
            }
            if status.is_some_and(|s| entry.status() != s)
                || name_id.is_some_and(|n| entry.name_id() != n)
                || tag.is_some_and(|t| !has_tag(entry.tags(), t))
            {
                continue;
            }
            out.push(slot);
        }
        out
    }
}

/// A parsed page cursor: the key of the last record of the previous page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub(crate) created_us: i64,
    pub(crate) task_id: String,
}

impl Cursor {
    /// Parses `"<created_us>:<task_id>"`.
    pub(crate) fn parse(s: &str) -> CoreResult<Cursor> {
        let bad = || {
            CoreError::InvalidInput(format!(
                "malformed cursor {s:?}; expected \"<created_us>:<task_id>\""
            ))
        };
        let (created, id) = s.split_once(':').ok_or_else(bad)?;
        if id.is_empty() || created.is_empty() || !created.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let created_us = created.parse::<i64>().map_err(|_| bad())?;
        Ok(Cursor {
            created_us,
            task_id: id.to_owned(),
        })
    }
}

/// One page of records: each record's JSON object, newest first, and the next cursor.
#[derive(Debug)]
pub(crate) struct Page {
    pub(crate) items: Vec<Arc<[u8]>>,
    pub(crate) next: Option<String>,
}

impl Page {
    /// Length of the page as one JSON array.
    pub(crate) fn json_len(&self) -> usize {
        let commas = self.items.len().saturating_sub(1);
        self.items.iter().map(|j| j.len()).sum::<usize>() + commas + 2
    }

    /// Writes the JSON array into `out`, which is exactly `json_len()` bytes long (the
    /// caller allocates it where the bytes must end up, so they are copied once).
    pub(crate) fn write_json(&self, out: &mut [u8]) {
        let mut at = 0;
        let mut put = |bytes: &[u8]| {
            if let Some(dst) = out.get_mut(at..at + bytes.len()) {
                dst.copy_from_slice(bytes);
            }
            at += bytes.len();
        };
        put(b"[");
        for (i, json) in self.items.iter().enumerate() {
            if i > 0 {
                put(b",");
            }
            put(json);
        }
        put(b"]");
    }
}

/// Arguments of one page read.
#[derive(Debug, Default)]
pub(crate) struct PageRequest<'a> {
    pub(crate) status: Option<&'a str>,
    pub(crate) func_name: Option<&'a str>,
    /// `"key=value"`: only records carrying that tag.
    pub(crate) tag: Option<&'a str>,
    pub(crate) limit: i64,
    pub(crate) cursor: Option<&'a str>,
}

/// Splits a `"key=value"` tag filter at its first `=`.
pub(crate) fn parse_tag(tag: &str) -> CoreResult<(&str, &str)> {
    tag.split_once('=')
        .ok_or_else(|| CoreError::InvalidInput(format!("tag must be \"key=value\", got {tag:?}")))
}

/// Whether a record's tags hold `key` with exactly `value`.
fn has_tag(tags: Option<&Tags>, (key, value): (&str, &str)) -> bool {
    tags.is_some_and(|t| t.iter().any(|(k, v)| &**k == key && &**v == value))
}

/// Thread-safe task store; see `_core.pyi` for the behaviour of each method.
#[derive(Debug)]
pub(crate) struct TaskStore {
    state: Mutex<State>,
    snapshot: Option<Snapshot>,
    /// Held through each flush and delete: a flush that copied a record before a delete
    /// removed it must not write it back after.
    file_ops: Mutex<()>,
    /// This store's owner lock; `None` without a file (or for SQLite's in-memory database).
    owners: Option<Owners>,
    /// The `owner` of this store's journal rows.
    instance_id: String,
    idempotency_ttl_us: Option<i64>,
    /// Writes started on their own, and the owner's wake (see `write_behind`).
    write_behind: WriteBehind,
    /// This store, for the threads of `write_behind`.
    me: Weak<TaskStore>,
    /// Keyed creates with a file hold it shared, firings of one-offs exclusively: a firing's
    /// key check and creation span a file write, with the record held only after the commit,
    /// so a create that checked in between could otherwise take the same key.
    firing: RwLock<()>,
}

impl TaskStore {
    /// An empty store, or one backed by the snapshot file at `db_path` (metrics rebuilt
    /// from its rows; no record loaded).
    pub(crate) fn open(db_path: Option<&str>, cfg: StoreConfig) -> CoreResult<Arc<TaskStore>> {
        let positive = |name: &str, v: i64| -> CoreResult<usize> {
            if v < 1 {
                return Err(CoreError::InvalidInput(format!(
                    "{name} must be at least 1, got {v}"
                )));
            }
            Ok(usize::try_from(v).unwrap_or(usize::MAX))
        };
        let max_history = positive("max_history", cfg.max_history)?;
        let ring_capacity = positive("ring_capacity", cfg.ring_capacity)?;
        let max_log_lines = positive("max_log_lines", cfg.max_log_lines)?;
        let idempotency_ttl_us = cfg
            .idempotency_ttl
            .map(|ttl| ttl_micros("idempotency_ttl", ttl))
            .transpose()?;
        let instance_id = UuidText::new(new_uuid4()).as_str().to_owned();
        let snapshot = db_path.map(Snapshot::open).transpose()?;
        let owners = match db_path {
            Some(path) if !is_in_memory(path) => Some(Owners::acquire(path, &instance_id)?),
            _ => None,
        };
        let mut state = State {
            held: Held::default(),
            served: ServedJson::default(),
            all: SlotIndex::default(),
            by_status: Default::default(),
            by_name: Vec::new(),
            names: NameTable::default(),
            strings: Interner::default(),
            keys: HashMap::new(),
            finished: SlotIndex::default(),
            dirty: HashSet::default(),
            journal_dirty: HashSet::default(),
            writing: HashSet::default(),
            health: Health::default(),
            metrics: Metrics::default(),
            queue_pending: HashMap::default(),
            ring: EventRing::new(ring_capacity),
            persist: snapshot.is_some(),
            max_history,
            max_log_lines,
        };
        if let Some(snap) = &snapshot {
            snap.for_each_metric_row(|row| {
                let name_id = state.names.intern(&row.func_name);
                let Some(status) = row.status else {
                    state.metrics.created_unknown(name_id);
                    return;
                };
                state.metrics.created(name_id, status);
                if let (true, Some(s), Some(e)) = (status.is_finished(), row.start_us, row.end_us) {
                    state.metrics.duration(name_id, duration_seconds(s, e));
                }
            })?;
        }
        Ok(Arc::new_cyclic(|me| TaskStore {
            state: Mutex::new(state),
            snapshot,
            file_ops: Mutex::new(()),
            owners,
            instance_id,
            idempotency_ttl_us,
            write_behind: WriteBehind::default(),
            me: me.clone(),
            firing: RwLock::new(()),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent before it can panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Taken before the state lock, never under it.
    fn lock_file_ops(&self) -> MutexGuard<'_, ()> {
        self.file_ops.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Taken before the file and the state lock, never under them.
    fn creating_with_key(&self) -> RwLockReadGuard<'_, ()> {
        self.firing.read().unwrap_or_else(|p| p.into_inner())
    }

    /// See [`TaskStore::creating_with_key`].
    fn firing(&self) -> RwLockWriteGuard<'_, ()> {
        self.firing.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The snapshot file, which schedule locks, one-offs and metadata need.
    fn file(&self) -> CoreResult<&Snapshot> {
        self.snapshot
            .as_ref()
            .ok_or_else(|| CoreError::Snapshot(NO_FILE.to_owned()))
    }

    /// Creation times after which a record still holds its idempotency key, at `now`.
    fn key_cutoff(&self, now: i64) -> Option<i64> {
        self.idempotency_ttl_us.map(|ttl| now.saturating_sub(ttl))
    }

    pub(crate) fn db_path(&self) -> Option<&str> {
        self.snapshot.as_ref().map(Snapshot::path)
    }

    pub(crate) fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// Whether reads may have to look at the file (so callers release the GIL).
    pub(crate) fn has_disk(&self) -> bool {
        self.snapshot.is_some()
    }

    pub(crate) fn last_seq(&self) -> u64 {
        self.lock().ring.last_seq()
    }

    pub(crate) fn memory_len(&self) -> usize {
        self.lock().held.len()
    }

    /// Creates a pending record, or returns the current holder of the idempotency key.
    ///
    /// With a key and a file, the file is read without the store lock (blocking I/O); the
    /// memory check is repeated under the lock, so check and creation stay one step within
    /// this store (a record is always in memory, in the file, or both).
    pub(crate) fn create(&self, t: NewTask<'_>) -> CoreResult<(TaskId, bool)> {
        let now = now_us();
        let created_after = self.key_cutoff(now);
        let payload = Payload::of(&t);
        let (on_disk, _turn) = match (t.idempotency_key, &self.snapshot) {
            (Some(key), Some(snap)) => {
                let turn = self.creating_with_key();
                if let Some(holder) = self.lock().memory_holder(key, created_after) {
                    return Ok((TaskId::Uuid(holder), false));
                }
                (snap.key_holders(key, created_after)?, Some(turn))
            }
            _ => (Vec::new(), None),
        };
        let mut st = self.lock();
        if let Some(key) = t.idempotency_key {
            if let Some(holder) = st.key_holder(key, created_after, on_disk) {
                return Ok((holder, false));
            }
        }
        let id = st.insert(&t, payload, now);
        if t.journal && st.persist {
            let behind = st.behind();
            drop(st);
            self.left_unwritten(behind);
        }
        Ok((TaskId::Uuid(id), true))
    }

    /// Takes the schedule lock `key` for `ttl` seconds unless another holder's has not
    /// expired; true when this call took it.
    pub(crate) fn acquire_lock(&self, key: &str, ttl: f64) -> CoreResult<bool> {
        if !ttl.is_finite() {
            return Err(CoreError::InvalidInput(format!(
                "ttl must be a positive finite number of seconds, got {ttl}"
            )));
        }
        let ttl_us = ttl_micros("ttl", ttl)?;
        let snap = self.file()?;
        let now = now_us();
        snap.acquire_lock(key, now, now.saturating_add(ttl_us))
    }

    /// Saves the one-off `run_key`, due at `fire_us`; saving a run key again reschedules it.
    pub(crate) fn save_scheduled(
        &self,
        run_key: &str,
        fire_us: i64,
        task: OneOff,
    ) -> CoreResult<()> {
        self.file()?.save_scheduled(&Scheduled {
            run_key: run_key.to_owned(),
            fire_us,
            created_us: now_us(),
            task,
        })
    }

    /// Up to `limit` one-offs due at `before_us`, by `(fire_us, run_key)`.
    pub(crate) fn load_due(&self, before_us: i64, limit: i64) -> CoreResult<Vec<Scheduled>> {
        if limit < 1 {
            return Err(CoreError::InvalidInput(format!(
                "limit must be at least 1, got {limit}"
            )));
        }
        self.file()?.load_due(before_us, limit)
    }

    /// Deletes the one-off `run_key`; true when there was one.
    pub(crate) fn delete_scheduled(&self, run_key: &str) -> CoreResult<bool> {
        self.file()?.delete_scheduled(run_key)
    }

    /// Fires the one-off `run_key`: consumes its row and creates its task as `create` would
    /// (source "scheduled"), journaled in the same transaction when `journal`. `None` when
    /// the row is gone; `(holder, false)` when its idempotency key is held.
    pub(crate) fn fire_scheduled(
        &self,
        run_key: &str,
        executor: Option<&str>,
        journal: bool,
    ) -> CoreResult<Option<(TaskId, bool)>> {
        let snap = self.file()?;
        let _turn = self.firing();
        let now = now_us();
        let created_after = self.key_cutoff(now);
        let fired = snap.fire(
            run_key,
            created_after,
            &self.instance_id,
            |entry, on_disk| {
                let one = &entry.task;
                let t = NewTask {
                    func_name: &one.func_name,
                    queue: &one.queue,
                    executor,
                    priority: one.priority,
                    source: "scheduled",
                    tags: one.tags.clone(),
                    idempotency_key: one.idempotency_key.as_deref(),
                    args_json: one.args_json.as_deref(),
                    kwargs_json: one.kwargs_json.as_deref(),
                    encrypted_payload: one.encrypted_payload.as_deref(),
                    retry_of: None,
                    journal,
                };
                let mut st = self.lock();
                if let Some(key) = t.idempotency_key {
                    if let Some(holder) = st.key_holder(key, created_after, on_disk) {
                        return (Fired::Held(holder), None);
                    }
                }
                let (name_id, record) = st.new_record(&t, Payload::of(&t), now);
                // Held only after the commit: a create drawing this same id in between (122
                // random bits) is as unlikely as one drawing a stored row's, which nothing checks.
                let id = st.fresh_id();
                let row = (journal && st.persist).then(|| (id, record.clone()));
                (
                    Fired::Created {
                        id,
                        name_id,
                        record,
                    },
                    row,
                )
            },
        )?;
        Ok(fired.map(|f| match f {
            Fired::Held(holder) => (holder, false),
            Fired::Created {
                id,
                name_id,
                record,
            } => {
                self.lock().add(id, name_id, record, journal, true);
                (TaskId::Uuid(id), true)
            }
        }))
    }

    /// Sets the metadata `key` to `value`.
    pub(crate) fn save_metadata(&self, key: &str, value: &str) -> CoreResult<()> {
        self.file()?.save_metadata(key, value)
    }

    /// The metadata value of `key`, if set.
    pub(crate) fn load_metadata(&self, key: &str) -> CoreResult<Option<String>> {
        self.file()?.load_metadata(key)
    }

    /// Moves a record to `status`; `Ok(false)` when the move is not allowed.
    pub(crate) fn transition(
        &self,
        task_id: &str,
        status: &str,
        change: Change<'_>,
    ) -> CoreResult<bool> {
        let to = Status::parse(status)
            .ok_or_else(|| CoreError::InvalidInput(unknown_status_message(status)))?;
        if let Some(r) = change.retries_used.filter(|&r| r < 0) {
            return Err(CoreError::InvalidInput(format!(
                "retries_used must be at least 0, got {r}"
            )));
        }
        let id = parse_uuid(task_id).ok_or_else(|| CoreError::UnknownTask(task_id.to_owned()))?;
        let error = change.error.map(Arc::<str>::from);
        let stacktrace = change.stacktrace.map(Arc::<str>::from);
        let now = now_us();
        let mut guard = self.lock();
        let st = &mut *guard;
        let unknown = || CoreError::UnknownTask(task_id.to_owned());
        let slot = st.held.slot_of(id).ok_or_else(unknown)?;
        let entry = st.held.at_mut(slot).ok_or_else(unknown)?;
        let from = entry.status();
        if !from.can_move_to(to) {
            return Ok(false);
        }
        entry.rev += 1;
        let (name_id, journal) = (entry.name_id(), entry.journal);
        // Only finished records are compact, and they do not move.
        let record = entry.full_mut().ok_or_else(unknown)?;
        let p = &mut record.progress;
        let retries_changed = change.retries_used.is_some_and(|r| r != p.retries_used);
        if error.is_some() {
            p.error = error;
        }
        if stacktrace.is_some() {
            p.stacktrace = stacktrace;
        }
        if let Some(r) = change.retries_used {
            p.retries_used = r;
        }
        if to == Status::Running && p.start_us.is_none() {
            p.start_us = Some(now);
        }
        p.status = to;
        let finished = to.is_finished();
        if finished {
            p.end_us = Some(now);
        }
        let duration = p.duration();
        let info = Arc::clone(&record.info);
        let journal_row_changed = journal && !finished && (from != to || retries_changed);
        if journal_row_changed {
            st.journal_dirty.insert(id);
        }
        st.ring.push(Event::Task {
            created: false,
            id,
            info: Arc::clone(&info),
            progress: record.progress.clone(),
        });
        if finished && !to.holds_key() {
            if let Some(k) = &info.idempotency_key {
                if st.keys.get(k.as_ref()) == Some(&id) {
                    st.keys.remove(k.as_ref());
                }
            }
        }
        let held = &st.held;
        let key_of = |s| held.key(s);
        if from != to {
            st.by_status[from.index()].remove(slot, key_of);
            st.by_status[to.index()].insert(slot, key_of);
            st.metrics.moved(name_id, from, to);
            if from == Status::Pending || to == Status::Pending {
                let depth = st.queue_pending.entry(Arc::clone(&info.queue)).or_insert(0);
                *depth = if to == Status::Pending {
                    *depth + 1
                } else {
                    depth.saturating_sub(1)
                };
            }
        }
        if finished {
            if let Some(d) = duration {
                st.metrics.duration(name_id, d);
            }
            st.finished.insert(slot, key_of);
            st.held.compact(slot);
            // From now on its row is an ordinary finished row.
            st.journal_dirty.remove(&id);
            if st.persist {
                st.dirty.insert(id);
            } else {
                st.enforce_retention();
            }
        }
        if journal_row_changed || (finished && st.persist) {
            let behind = st.behind();
            drop(guard);
            self.left_unwritten(behind);
        }
        Ok(true)
    }

    /// Appends a log line (dropping the oldest beyond the bound) and emits a `log` event.
    pub(crate) fn append_log(&self, task_id: &str, line: &str) -> CoreResult<()> {
        let id = parse_uuid(task_id).ok_or_else(|| CoreError::UnknownTask(task_id.to_owned()))?;
        let line: Arc<str> = Arc::from(line);
        let mut guard = self.lock();
        let st = &mut *guard;
        let slot = st
            .held
            .slot_of(id)
            .ok_or_else(|| CoreError::UnknownTask(task_id.to_owned()))?;
        st.held.push_log(slot, Arc::clone(&line), st.max_log_lines);
        let finished = st.held.at(slot).is_some_and(|e| e.status().is_finished());
        st.ring.push(Event::Log { id, line });
        if st.persist && finished {
            st.dirty.insert(id);
            let behind = st.behind();
            drop(guard);
            self.left_unwritten(behind);
        }
        Ok(())
    }

    /// A copy of the in-memory record with this id.
    pub(crate) fn get_memory(&self, task_id: &str) -> Option<Record> {
        let id = parse_uuid(task_id)?;
        let st = self.lock();
        st.held.get(id).map(|e| st.held.record(e))
    }

    /// The stored record with this id (blocking file read).
    pub(crate) fn get_disk(&self, task_id: &str) -> CoreResult<Option<Record>> {
        match &self.snapshot {
            Some(s) => Ok(s.get(task_id)?.map(|d| d.record)),
            None => Ok(None),
        }
    }

    /// The record from memory, else from the file.
    #[cfg(test)]
    pub(crate) fn get(&self, task_id: &str) -> CoreResult<Option<Record>> {
        match self.get_memory(task_id) {
            Some(r) => Ok(Some(r)),
            None => self.get_disk(task_id),
        }
    }

    /// The in-memory record's detail JSON (the 16 keys and `logs_dropped`).
    pub(crate) fn get_json_memory(&self, task_id: &str) -> Option<Vec<u8>> {
        let id = parse_uuid(task_id)?;
        let (json, dropped, retry_of) = {
            let mut st = self.lock();
            let slot = st.held.slot_of(id)?;
            let json = st.served_json(slot)?;
            let entry = st.held.at(slot)?;
            (json, entry.logs_dropped(), entry.retry_of().cloned())
        };
        Some(detail_json(&json, dropped, retry_of.as_deref()))
    }

    /// The record's JSON object, from memory, else from the file.
    pub(crate) fn get_json(&self, task_id: &str) -> CoreResult<Option<Vec<u8>>> {
        if let Some(json) = self.get_json_memory(task_id) {
            return Ok(Some(json));
        }
        Ok(self.get_disk(task_id)?.map(|r| {
            let mut buf = Vec::with_capacity(512);
            r.write_json(&mut buf, task_id);
            detail_json(&buf, r.logs_dropped, r.info.retry_of.as_deref())
        }))
    }

    /// One page, newest first, with the cursor of the next page.
    pub(crate) fn page(&self, req: &PageRequest<'_>) -> CoreResult<Page> {
        let status = req
            .status
            .map(|s| {
                Status::parse(s).ok_or_else(|| CoreError::InvalidInput(unknown_status_message(s)))
            })
            .transpose()?;
        if req.limit < 1 {
            return Err(CoreError::InvalidInput(format!(
                "limit must be at least 1, got {}",
                req.limit
            )));
        }
        let limit = usize::try_from(req.limit).unwrap_or(usize::MAX);
        // One record more than the page tells whether another page follows.
        let want = limit.saturating_add(1);
        let cursor = req.cursor.map(Cursor::parse).transpose()?;
        let before = cursor.as_ref().map(|c| (c.created_us, c.task_id.as_str()));
        // No tag index in memory: the filter walks the candidate index, bounded by the
        // records memory holds (max_history plus live tasks).
        let tag = req.tag.map(parse_tag).transpose()?;

        // Memory first: a record evicted after this point is then found on disk.
        let mut mem: Vec<(Key, Arc<[u8]>)> = Vec::new();
        {
            let mut guard = self.lock();
            let st = &mut *guard;
            let name_id = match req.func_name {
                Some(n) => st.names.get(n).filter(|&i| i < st.by_name.len()),
                None => None,
            };
            if req.func_name.is_none() || name_id.is_some() {
                for slot in st.page_slots(status, name_id, tag, before, want) {
                    if let Some(json) = st.served_json(slot) {
                        mem.push((st.held.key(slot), json));
                    }
                }
            }
        }
        let disk = self.disk_page(
            &mem,
            PageQuery {
                before,
                status,
                func_name: req.func_name,
                tag,
                limit: want,
            },
        )?;
        if disk.is_empty() {
            let more = mem.len() > limit;
            mem.truncate(limit);
            let next = if more {
                mem.last()
                    .map(|((c, id), _)| format!("{c}:{}", UuidText::new(*id).as_str()))
            } else {
                None
            };
            let items = mem.into_iter().map(|(_, json)| json).collect();
            return Ok(Page { items, next });
        }

        let mut items: Vec<Arc<[u8]>> = Vec::with_capacity(limit.min(mem.len() + disk.len()));
        let (mut i, mut j) = (0, 0);
        let mut last: Option<(i64, String)> = None;
        let mut more = false;
        while i < mem.len() || j < disk.len() {
            if items.len() == limit {
                more = true;
                break;
            }
            let take_mem = match (mem.get(i), disk.get(j)) {
                (Some(((mc, mid), _)), Some(d)) => {
                    let mtext = UuidText::new(*mid);
                    let ord = (*mc, mtext.as_str()).cmp(&(d.created_us, d.task_id.as_str()));
                    if ord == std::cmp::Ordering::Equal {
                        j += 1; // the same record: memory wins
                    }
                    ord != std::cmp::Ordering::Less
                }
                (Some(_), None) => true,
                _ => false,
            };
            if take_mem {
                let ((created, id), json) = &mem[i];
                items.push(Arc::clone(json));
                last = Some((*created, UuidText::new(*id).as_str().to_owned()));
                i += 1;
            } else {
                let d = &disk[j];
                let mut buf = Vec::with_capacity(512);
                d.record.write_json(&mut buf, &d.task_id);
                items.push(Arc::from(buf));
                last = Some((d.created_us, d.task_id.clone()));
                j += 1;
            }
        }
        let next = if more {
            last.map(|(c, id)| format!("{c}:{id}"))
        } else {
            None
        };
        Ok(Page { items, next })
    }

    /// Up to `q.limit` stored records for a page, newest first, without those memory holds:
    /// memory has the truth of its records (a journaled record's row lags until the next
    /// flush, and may match filters the record no longer does). The rows left out are made up
    /// for by reading on, until the rows kept and the entries of `mem` (the page's memory
    /// entries, newest first) newer than the last row read are enough for the page, or the
    /// file has no more: the page then holds no row older than one it lacks.
    fn disk_page(&self, mem: &[(Key, Arc<[u8]>)], q: PageQuery<'_>) -> CoreResult<Vec<DiskRecord>> {
        let Some(snap) = &self.snapshot else {
            return Ok(Vec::new());
        };
        let mut kept: Vec<DiskRecord> = Vec::new();
        let mut read_on: Option<(i64, String)> = None;
        loop {
            let batch = snap.page(&PageQuery {
                before: read_on
                    .as_ref()
                    .map(|(c, id)| (*c, id.as_str()))
                    .or(q.before),
                ..q
            })?;
            let full = batch.len() >= q.limit;
            let Some(last) = batch.last().map(|d| (d.created_us, d.task_id.clone())) else {
                break;
            };
            {
                let st = self.lock();
                kept.extend(
                    batch
                        .into_iter()
                        .filter(|d| parse_uuid(&d.task_id).is_none_or(|id| !st.held.contains(id))),
                );
            }
            let newer_in_memory = mem
                .iter()
                .take_while(|((c, id), _)| {
                    (*c, UuidText::new(*id).as_str()) > (last.0, last.1.as_str())
                })
                .count();
            if !full || kept.len() + newer_in_memory >= q.limit {
                break;
            }
            read_on = Some(last);
        }
        Ok(kept)
    }

    /// One page as a JSON array, newest first, with the cursor of the next page.
    #[cfg(test)]
    pub(crate) fn page_json(&self, req: &PageRequest<'_>) -> CoreResult<(Vec<u8>, Option<String>)> {
        let page = self.page(req)?;
        let mut out = vec![0; page.json_len()];
        page.write_json(&mut out);
        Ok((out, page.next))
    }

    /// Summaries of every task seen, memory and disk, and the file's health.
    pub(crate) fn metrics(&self) -> MetricsSnapshot {
        let st = self.lock();
        let health = self.snapshot.as_ref().map(|_| st.health_now());
        st.metrics.snapshot(&st.names.names, health)
    }

    /// OpenMetrics text of the same aggregates plus the pending depth per queue and, with a
    /// file, its health.
    pub(crate) fn metrics_prometheus(&self) -> Vec<u8> {
        let (groups, mut queues, health) = {
            let st = self.lock();
            let queues: Vec<(Arc<str>, u64)> = st
                .queue_pending
                .iter()
                .map(|(q, &n)| (Arc::clone(q), n))
                .collect();
            let health = self.snapshot.as_ref().map(|_| st.health_now());
            (st.metrics.groups(&st.names.names), queues, health)
        };
        queues.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        prometheus::render(&groups, &queues, health.as_ref())
    }

    #[cfg(test)]
    pub(crate) fn metrics_json(&self) -> Vec<u8> {
        self.metrics().to_json()
    }

    /// Events after `after`, oldest first, as JSON, and whether some were missed.
    pub(crate) fn events_since(
        &self,
        after: i64,
        limit: i64,
    ) -> CoreResult<(Vec<EventJson>, bool)> {
        if after < 0 {
            return Err(CoreError::InvalidInput(format!(
                "after must be at least 0, got {after}"
            )));
        }
        if limit < 1 {
            return Err(CoreError::InvalidInput(format!(
                "limit must be at least 1, got {limit}"
            )));
        }
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let (events, missed) = self.lock().ring.since(after, limit);
        // Serialised outside the lock, then kept in the ring for the next readers.
        let mut fresh: Vec<EventJson> = Vec::new();
        let out: Vec<EventJson> = events
            .into_iter()
            .map(|(seq, slot)| match slot {
                Slot::Json(json) => (seq, json),
                Slot::Value(ev) => {
                    let mut buf = Vec::with_capacity(384);
                    ev.write_json(seq, &mut buf);
                    let json: Arc<[u8]> = Arc::from(buf);
                    fresh.push((seq, Arc::clone(&json)));
                    (seq, json)
                }
            })
            .collect();
        if !fresh.is_empty() {
            let mut st = self.lock();
            for (seq, json) in fresh {
                st.ring.store_json(seq, json);
            }
        }
        Ok((out, missed))
    }

    /// Writes finished records changed since the last flush and journaled records whose
    /// row is out of date, in one transaction, then applies retention. The outcome is kept
    /// for the metrics.
    pub(crate) fn flush(&self) -> CoreResult<usize> {
        let Some(snap) = &self.snapshot else {
            return Ok(0);
        };
        let _serial = self.lock_file_ops();
        // Writing to a closed file is no failure of the file: the health stays as it was.
        snap.ensure_open()?;
        let batch = self.lock().take_unwritten();
        let result = snap.write(&batch, &self.instance_id);
        drop(batch);
        let mut st = self.lock();
        match &result {
            Ok(_) => {
                st.writing.clear();
                st.health.succeeded(now_us());
                st.enforce_retention();
            }
            Err(e) => {
                st.mark_unwritten_again();
                st.health.failed(&e.to_string());
            }
        }
        result
    }

    /// From now on, a change that leaves `threshold` records unwritten starts a flush on a
    /// thread of the store's own, which goes on flushing while that many wait; `None` stops
    /// it. Nothing starts without a file, nor while the last flush failed (the owner's
    /// retries, with their pauses, take over until one succeeds).
    ///
    /// For an owner on the hot path that holds the GIL: nothing waits for these writes, and
    /// their thread never needs the GIL (a write handed to a Python thread waits for the GIL
    /// to start and again to finish, while a run of tasks holds it). Their outcome is the
    /// file's health, as any flush's.
    pub(crate) fn write_behind(&self, threshold: Option<i64>) -> CoreResult<()> {
        let threshold = match threshold {
            Some(n) if n < 1 => {
                return Err(CoreError::InvalidInput(format!(
                    "threshold must be at least 1, got {n}"
                )));
            }
            n => n.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        };
        self.write_behind.set_threshold(threshold);
        Ok(())
    }

    /// Calls `wake` once, the next time a change leaves a record unwritten (from the thread
    /// of that change, holding no lock of the store); `None` drops the one given before.
    pub(crate) fn on_unwritten(&self, wake: Option<Wake>) {
        self.write_behind.arm(wake);
    }

    /// After a change that left a record unwritten (which only a store with a file does),
    /// out of every lock: wakes the owner, and starts a flush when `behind` records are
    /// enough (see [`State::behind`]).
    fn left_unwritten(&self, behind: usize) {
        if let Some(wake) = self.write_behind.take_wake() {
            wake();
        }
        if self.write_behind.is_due(behind) && self.write_behind.try_start() {
            self.spawn_write_behind();
        }
    }

    /// Runs the flushes of `write_behind` on a new thread, holding the right to start them.
    fn spawn_write_behind(&self) {
        let Some(store) = self.me.upgrade() else {
            self.write_behind.finished();
            return;
        };
        let started = std::thread::Builder::new()
            .name("taskflow-flush".into())
            .spawn(move || loop {
                // A failure is in the health already; its records stay unwritten.
                let _ = store.flush();
                store.write_behind.finished();
                // Records that came while it wrote: at once, if enough wait (and no other
                // thread took them).
                let behind = store.lock().behind();
                if !(store.write_behind.is_due(behind) && store.write_behind.try_start()) {
                    break;
                }
            });
        if started.is_err() {
            self.write_behind.finished();
        }
    }

    /// Takes over the unfinished rows of dead owners and loads them; returns the records
    /// loaded, oldest first.
    pub(crate) fn claim_orphans(&self) -> CoreResult<Vec<(String, Record)>> {
        let (Some(snap), Some(owners)) = (&self.snapshot, &self.owners) else {
            return Ok(Vec::new());
        };
        let claim = snap.claim(&self.instance_id, |owner| owners.is_dead(owner))?;
        let mut loaded: Vec<(String, Record)> = {
            let mut st = self.lock();
            claim
                .records
                .into_iter()
                .filter_map(|d| st.load_journaled(d, Load::Claimed))
                .collect()
        };
        for owner in &claim.dead_owners {
            owners.remove(owner);
        }
        loaded.sort_by(|(a_id, a), (b_id, b)| {
            (a.info.created_us, a_id).cmp(&(b.info.created_us, b_id))
        });
        Ok(loaded)
    }

    /// Up to `limit` rows written to the file after `after_seq`, in write order, and the
    /// `sync_seq` of the last one (`after_seq` when there is none).
    pub(crate) fn changed_rows(
        &self,
        after_seq: i64,
        limit: i64,
    ) -> CoreResult<(Vec<TaskRow>, i64)> {
        if limit < 1 {
            return Err(CoreError::InvalidInput(format!(
                "limit must be at least 1, got {limit}"
            )));
        }
        let rows = self.file()?.changed_rows(after_seq, limit)?;
        let last = rows.last().map_or(after_seq, |(_, seq)| *seq);
        Ok((rows.into_iter().map(|(row, _)| row).collect(), last))
    }

    /// Takes over unfinished rows of dead instances: writes them as journal rows of this store
    /// (one transaction) and loads them, except ids that memory holds, or whose row in the
    /// file is finished or this store's (see [`Snapshot::adopt`]). Every row is checked
    /// first; one bad row adopts nothing. Returns the records adopted, oldest first.
    pub(crate) fn adopt(&self, rows: Vec<TaskRow>) -> CoreResult<Vec<(String, Record)>> {
        let mut records = rows
            .into_iter()
            .map(adoptable)
            .collect::<CoreResult<Vec<(u128, Record)>>>()?;
        let snap = self.file()?;
        {
            let st = self.lock();
            let mut seen = HashSet::with_capacity(records.len());
            records.retain(|(id, _)| !st.held.contains(*id) && seen.insert(*id));
        }
        let adoption = snap.adopt(records, &self.instance_id)?;
        let mut st = self.lock();
        Ok(adoption
            .records
            .into_iter()
            .filter_map(|(id, record)| {
                let how = if adoption.taken_over.contains(&id) {
                    Load::TakenOver
                } else {
                    Load::Adopted
                };
                let d = DiskRecord {
                    task_id: UuidText::new(id).as_str().to_owned(),
                    created_us: record.info.created_us,
                    record,
                };
                st.load_journaled(d, how)
            })
            .collect())
    }

    /// Deletes finished records that ended before `end_before_us` from the file, then from
    /// memory (so a failed file write leaves memory unchanged); returns both counts.
    pub(crate) fn delete_finished_before(&self, end_before_us: i64) -> CoreResult<(usize, usize)> {
        let _serial = self.lock_file_ops();
        let in_memory = self.lock().finished_before(end_before_us);
        let rows = match &self.snapshot {
            Some(snap) => {
                // Their rows go whatever they say: a journaled record's row may still be
                // unfinished until the next flush.
                let ids: Vec<UuidText> = in_memory.iter().map(|&id| UuidText::new(id)).collect();
                let mut doomed = vec![Doomed::EndedBefore(end_before_us)];
                doomed.extend(ids.iter().map(|t| Doomed::Id(t.as_str())));
                snap.delete(&doomed)?
            }
            None => Vec::new(),
        };
        let removed = self.lock().remove_deleted(&in_memory, &rows);
        Ok((removed, rows.len()))
    }

    /// Deletes one finished record from the file and memory; false when it is unknown or
    /// not finished.
    pub(crate) fn delete(&self, task_id: &str) -> CoreResult<bool> {
        let _serial = self.lock_file_ops();
        let id = parse_uuid(task_id);
        let finished_in_memory = id.and_then(|id| {
            let st = self.lock();
            st.held.get(id).map(|e| e.status().is_finished())
        });
        if finished_in_memory == Some(false) {
            return Ok(false);
        }
        let rows = match &self.snapshot {
            Some(snap) => snap.delete(&[if finished_in_memory.is_some() {
                Doomed::Id(task_id)
            } else {
                Doomed::FinishedId(task_id)
            }])?,
            None => Vec::new(),
        };
        let ids: Vec<u128> = id
            .filter(|_| finished_in_memory.is_some())
            .into_iter()
            .collect();
        let removed = self.lock().remove_deleted(&ids, &rows);
        Ok(removed > 0 || !rows.is_empty())
    }

    /// Closes the snapshot file and releases the owner lock; later flushes fail, reads see
    /// memory only, and finished records leave memory as they would without a file.
    pub(crate) fn close(&self) {
        if let Some(s) = &self.snapshot {
            s.close();
            if let Some(owners) = &self.owners {
                owners.release();
            }
            let mut st = self.lock();
            st.persist = false;
            st.enforce_retention();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(id: u128) -> String {
        UuidText::new(id).as_str().to_owned()
    }

    /// `create` for ids this store made.
    fn create(s: &TaskStore, t: NewTask<'_>) -> (u128, bool) {
        match s.create(t).expect("create") {
            (TaskId::Uuid(id), created) => (id, created),
            (TaskId::Stored(id), _) => panic!("held by a stored id {id}"),
        }
    }

    fn store(max_history: i64) -> Arc<TaskStore> {
        TaskStore::open(
            None,
            StoreConfig {
                max_history,
                ..StoreConfig::default()
            },
        )
        .expect("open")
    }

    fn json(bytes: &[u8]) -> serde_json::Value {
        serde_json::from_slice(bytes).expect("json")
    }

    fn run(s: &TaskStore, name: &str, end: &str) -> String {
        let (id, _) = create(s, NewTask::named(name));
        let id = text(id);
        assert!(s
            .transition(&id, "running", Change::default())
            .expect("run"));
        assert!(s.transition(&id, end, Change::default()).expect("end"));
        id
    }

    #[test]
    fn rejects_bad_config() {
        for cfg in [
            StoreConfig {
                max_history: 0,
                ..Default::default()
            },
            StoreConfig {
                ring_capacity: 0,
                ..Default::default()
            },
            StoreConfig {
                max_log_lines: -1,
                ..Default::default()
            },
        ] {
            assert!(matches!(
                TaskStore::open(None, cfg),
                Err(CoreError::InvalidInput(_))
            ));
        }
    }

    #[test]
    fn lifecycle_and_events() {
        let s = store(100);
        let (id, created) = create(
            &s,
            NewTask {
                tags: Some(Arc::from(vec![("a".into(), "1".into())])),
                priority: Some(3),
                ..NewTask::named("f")
            },
        );
        assert!(created);
        let id = text(id);
        assert_eq!(s.last_seq(), 1);
        assert!(!s
            .transition(&id, "success", Change::default())
            .expect("not allowed"));
        assert_eq!(s.last_seq(), 1);
        assert!(s
            .transition(&id, "running", Change::default())
            .expect("run"));
        s.append_log(&id, "hello").expect("log");
        assert!(s
            .transition(
                &id,
                "running",
                Change {
                    retries_used: Some(1),
                    ..Default::default()
                }
            )
            .expect("retry"));
        assert!(s
            .transition(
                &id,
                "failed",
                Change {
                    error: Some("boom"),
                    stacktrace: Some("tb"),
                    ..Default::default()
                }
            )
            .expect("fail"));
        let r = s.get(&id).expect("get").expect("found");
        assert_eq!(r.progress.status, Status::Failed);
        assert_eq!(r.progress.retries_used, 1);
        assert_eq!(r.progress.error.as_deref(), Some("boom"));
        assert!(r.progress.start_us.is_some() && r.progress.end_us.is_some());
        let v = json(&s.get_json(&id).expect("get").expect("found"));
        assert_eq!(v["logs"][0], "hello");
        assert_eq!(v["tags"]["a"], "1");
        assert_eq!(v["priority"], 3);
        assert!(v["duration"].is_f64());

        let (events, missed) = s.events_since(0, 100).expect("events");
        assert!(!missed);
        let kinds: Vec<String> = events
            .iter()
            .map(|(seq, b)| {
                let v = json(b);
                assert_eq!(v["seq"], *seq);
                v["type"].as_str().expect("type").to_owned()
            })
            .collect();
        assert_eq!(kinds, ["created", "status", "log", "status", "status"]);
        let last = json(&events[4].1);
        assert_eq!(last["task"]["status"], "failed");
        assert!(last["task"].get("logs").is_none());
        let log = json(&events[2].1);
        assert_eq!(log["task_id"], id.as_str());
        assert_eq!(log["line"], "hello");
    }

    #[test]
    fn errors_for_unknown_ids_and_statuses() {
        let s = store(10);
        let (id, _) = create(&s, NewTask::named("f"));
        let id = text(id);
        assert!(matches!(
            s.transition(&id, "done", Change::default()),
            Err(CoreError::InvalidInput(_))
        ));
        let other = text(new_uuid4());
        assert!(matches!(
            s.transition(&other, "running", Change::default()),
            Err(CoreError::UnknownTask(_))
        ));
        assert!(matches!(
            s.transition("junk", "running", Change::default()),
            Err(CoreError::UnknownTask(_))
        ));
        assert!(matches!(
            s.append_log(&other, "x"),
            Err(CoreError::UnknownTask(_))
        ));
        assert!(s.get(&other).expect("get").is_none());
        assert!(s.get_json("junk").expect("get").is_none());
    }

    #[test]
    fn events_are_serialised_once() {
        let s = store(10);
        run(&s, "f", "success");
        let (first, _) = s.events_since(0, 10).expect("events");
        assert!(matches!(
            s.lock().ring.since(0, 10).0.as_slice(),
            [(1, Slot::Json(_)), (2, Slot::Json(_)), (3, Slot::Json(_))]
        ));
        let (again, missed) = s.events_since(1, 10).expect("events");
        assert!(!missed);
        assert_eq!(again.len(), 2);
        assert!(
            Arc::ptr_eq(&first[1].1, &again[0].1),
            "served from the ring"
        );
        assert_eq!(json(&again[1].1)["task"]["status"], "success");
    }

    #[test]
    fn cancel_before_start_has_no_duration() {
        let s = store(10);
        let (id, _) = create(&s, NewTask::named("f"));
        let id = text(id);
        assert!(s
            .transition(&id, "cancelled", Change::default())
            .expect("cancel"));
        assert!(!s
            .transition(&id, "running", Change::default())
            .expect("too late"));
        let r = s.get(&id).expect("get").expect("found");
        assert!(
            r.progress.start_us.is_none()
                && r.progress.end_us.is_some()
                && r.progress.duration().is_none()
        );
        let m = s.metrics();
        assert_eq!(m.all.by_status[Status::Cancelled.index()], 1);
        assert_eq!(m.all.p50, None);
    }

    #[test]
    fn requeue_keeps_first_start() {
        let s = store(10);
        let (id, _) = create(&s, NewTask::named("f"));
        let id = text(id);
        s.transition(&id, "running", Change::default())
            .expect("run");
        let start = s.get(&id).expect("g").expect("f").progress.start_us;
        assert!(s
            .transition(&id, "pending", Change::default())
            .expect("requeue"));
        assert!(s
            .transition(&id, "running", Change::default())
            .expect("run again"));
        assert_eq!(s.get(&id).expect("g").expect("f").progress.start_us, start);
    }

    #[test]
    fn idempotency_keys() {
        let s = store(10);
        let with_key = |k| NewTask {
            idempotency_key: Some(k),
            ..NewTask::named("f")
        };
        let (a, fresh) = create(&s, with_key("k"));
        assert!(fresh);
        assert_eq!(create(&s, with_key("k")), (a, false));
        let a = text(a);
        s.transition(&a, "running", Change::default()).expect("run");
        s.transition(&a, "success", Change::default()).expect("ok");
        assert!(!create(&s, with_key("k")).1, "success holds the key");
        let (b, fresh) = create(&s, with_key("k2"));
        assert!(fresh);
        s.transition(&text(b), "rejected", Change::default())
            .expect("reject");
        let (c, fresh) = create(&s, with_key("k2"));
        assert!(fresh && c != b, "rejected frees the key");
        assert_eq!(s.last_seq(), 6);
    }

    #[test]
    fn logs_are_bounded() {
        let s = TaskStore::open(
            None,
            StoreConfig {
                max_log_lines: 3,
                ..Default::default()
            },
        )
        .expect("open");
        let (id, _) = create(&s, NewTask::named("f"));
        let id = text(id);
        for i in 0..5 {
            s.append_log(&id, &format!("line {i}")).expect("log");
        }
        let logs: Vec<String> = s
            .get(&id)
            .expect("g")
            .expect("f")
            .logs
            .iter()
            .map(|l| l.to_string())
            .collect();
        assert_eq!(logs, ["line 2", "line 3", "line 4"]);
    }

    #[test]
    fn retention_without_file() {
        let s = store(2);
        let ids: Vec<String> = (0..5).map(|_| run(&s, "f", "success")).collect();
        assert_eq!(s.memory_len(), 2);
        assert!(s.get(&ids[0]).expect("get").is_none());
        assert!(s.get(&ids[4]).expect("get").is_some());
        let (live, _) = create(&s, NewTask::named("g"));
        assert_eq!(s.memory_len(), 3);
        assert_eq!(s.flush().expect("flush"), 0);
        let m = s.metrics();
        assert_eq!(m.all.total, 6);
        assert_eq!(m.all.by_status[Status::Success.index()], 5);
        assert!(s.get(&text(live)).expect("get").is_some());
    }

    #[test]
    fn paging_memory() {
        let s = store(1000);
        let mut ids = Vec::new();
        for i in 0..25 {
            let name = if i % 2 == 0 { "even" } else { "odd" };
            ids.push(run(&s, name, if i % 3 == 0 { "failed" } else { "success" }));
        }
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let (page, next) = s
                .page_json(&PageRequest {
                    limit: 10,
                    cursor: cursor.as_deref(),
                    ..Default::default()
                })
                .expect("page");
            let v = json(&page);
            for r in v.as_array().expect("array") {
                seen.push(r["task_id"].as_str().expect("id").to_owned());
            }
            match next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(seen.len(), 25);
        let mut sorted = seen.clone();
        sorted.sort_by_key(|id| {
            let r = s.get(id).expect("g").expect("f");
            std::cmp::Reverse((r.info.created_us, id.clone()))
        });
        assert_eq!(seen, sorted);

        let (page, next) = s
            .page_json(&PageRequest {
                status: Some("failed"),
                func_name: Some("even"),
                limit: 100,
                cursor: None,
                tag: None,
            })
            .expect("page");
        let v = json(&page);
        assert_eq!(v.as_array().expect("array").len(), 5); // i = 0, 6, 12, 18, 24
        assert!(next.is_none());
        let (page, _) = s
            .page_json(&PageRequest {
                func_name: Some("nobody"),
                limit: 5,
                ..Default::default()
            })
            .expect("page");
        assert_eq!(page, b"[]");
        for bad in [
            PageRequest {
                status: Some("nope"),
                limit: 1,
                ..Default::default()
            },
            PageRequest {
                limit: 0,
                ..Default::default()
            },
            PageRequest {
                limit: 1,
                cursor: Some("abc"),
                ..Default::default()
            },
            PageRequest {
                limit: 1,
                cursor: Some("x:y"),
                ..Default::default()
            },
        ] {
            assert!(matches!(s.page_json(&bad), Err(CoreError::InvalidInput(_))));
        }
    }

    #[test]
    fn last_page_has_no_cursor() {
        let s = store(100);
        for _ in 0..4 {
            run(&s, "f", "success");
        }
        let page = |limit, cursor: Option<&str>| {
            s.page_json(&PageRequest {
                limit,
                cursor,
                ..Default::default()
            })
            .expect("page")
        };
        assert!(page(4, None).1.is_none(), "exactly one full page");
        let (_, next) = page(3, None);
        let (rest, next2) = page(3, next.as_deref());
        assert_eq!(json(&rest).as_array().expect("array").len(), 1);
        assert!(next2.is_none());
    }

    #[test]
    fn retention_drops_oldest_created_first() {
        let s = store(1);
        let (a, _) = create(&s, NewTask::named("f"));
        let (b, _) = create(&s, NewTask::named("f"));
        let (a, b) = (text(a), text(b));
        s.transition(&b, "cancelled", Change::default()).expect("b");
        s.transition(&a, "cancelled", Change::default()).expect("a");
        assert!(s.get(&a).expect("get").is_none(), "a was created first");
        assert!(s.get(&b).expect("get").is_some());
    }

    #[test]
    fn argument_checks() {
        let s = store(10);
        let (id, _) = create(&s, NewTask::named("f"));
        let id = text(id);
        let neg = Change {
            retries_used: Some(-1),
            ..Default::default()
        };
        assert!(matches!(
            s.transition(&id, "running", neg),
            Err(CoreError::InvalidInput(_))
        ));
        assert!(matches!(
            s.events_since(-1, 10),
            Err(CoreError::InvalidInput(_))
        ));
        assert!(matches!(
            s.events_since(0, 0),
            Err(CoreError::InvalidInput(_))
        ));
        assert_eq!(s.events_since(0, 10).expect("events").0.len(), 1);
    }

    #[test]
    fn served_json_follows_changes() {
        let s = store(10);
        let (id, _) = create(&s, NewTask::named("f"));
        let id = text(id);
        let first = s.get_json(&id).expect("get").expect("found");
        assert_eq!(json(&first)["status"], "pending");
        s.transition(&id, "running", Change::default())
            .expect("run");
        assert_eq!(
            json(&s.get_json(&id).expect("g").expect("f"))["status"],
            "running"
        );
        s.append_log(&id, "x").expect("log");
        let (page, _) = s
            .page_json(&PageRequest {
                limit: 5,
                ..Default::default()
            })
            .expect("page");
        assert_eq!(json(&page)[0]["logs"][0], "x");
        let again = s.get_json(&id).expect("g").expect("f");
        assert_eq!(json(&again)["logs"][0], "x");
    }

    #[test]
    fn dropped_log_lines_are_counted() {
        let s = TaskStore::open(
            None,
            StoreConfig {
                max_log_lines: 2,
                ..StoreConfig::default()
            },
        )
        .expect("open");
        let (id, _) = create(&s, NewTask::named("f"));
        let id = text(id);
        for line in ["a", "b", "c", "d"] {
            s.append_log(&id, line).expect("log");
        }
        let v = json(&s.get_json(&id).expect("get").expect("found"));
        assert_eq!(v["logs_dropped"], 2);
        assert_eq!(v.as_object().map(|o| o.len()), Some(18));
        let (page, _) = s
            .page_json(&PageRequest {
                limit: 5,
                ..Default::default()
            })
            .expect("page");
        assert!(json(&page)[0].get("logs_dropped").is_none());
    }

    #[test]
    fn tag_filter() {
        assert_eq!(parse_tag("team=a=b").expect("tag"), ("team", "a=b"));
        assert!(parse_tag("team").is_err());
        let s = store(100);
        let mut t = NewTask::named("job");
        t.tags = Some(Arc::from(vec![("env".into(), "prod".into())]));
        let (prod, _) = create(&s, t);
        create(&s, NewTask::named("job"));
        let req = PageRequest {
            tag: Some("env=prod"),
            limit: 10,
            ..PageRequest::default()
        };
        let (body, next) = s.page_json(&req).expect("page");
        let v = json(&body);
        assert_eq!(v.as_array().map(Vec::len), Some(1));
        assert_eq!(v[0]["task_id"], text(prod));
        assert_eq!(next, None);
    }

    #[test]
    fn cursor_parse() {
        assert_eq!(
            Cursor::parse("12:abc").expect("ok"),
            Cursor {
                created_us: 12,
                task_id: "abc".into()
            }
        );
        assert!(Cursor::parse("12:").is_err());
        assert!(Cursor::parse("-12:abc").is_err());
        assert!(Cursor::parse("+12:abc").is_err());
        assert!(Cursor::parse("99999999999999999999:abc").is_err());
        assert!(Cursor::parse(":abc").is_err());
    }

    fn db_store(path: &str, max_history: i64) -> Arc<TaskStore> {
        TaskStore::open(
            Some(path),
            StoreConfig {
                max_history,
                ..Default::default()
            },
        )
        .expect("open")
    }

    #[test]
    fn flush_evict_and_read_back_from_disk() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("s.db").to_string_lossy().into_owned();
        let s = db_store(&path, 3);
        let ids: Vec<String> = (0..10)
            .map(|i| run(&s, if i < 5 { "a" } else { "b" }, "success"))
            .collect();
        let (live, _) = create(&s, NewTask::named("a"));
        assert_eq!(
            s.memory_len(),
            11,
            "nothing leaves memory before it is on disk"
        );
        assert_eq!(s.flush().expect("flush"), 10);
        assert_eq!(s.memory_len(), 4);
        assert_eq!(s.flush().expect("flush"), 0);
        // Evicted records are read from the file.
        let old = s.get(&ids[0]).expect("get").expect("on disk");
        assert_eq!(old.progress.status, Status::Success);
        let v = json(&s.get_json(&ids[0]).expect("get").expect("found"));
        assert_eq!(v["task_id"], ids[0].as_str());
        // A page merges memory and disk without duplicates.
        let (page, next) = s
            .page_json(&PageRequest {
                limit: 100,
                ..Default::default()
            })
            .expect("page");
        let listed: Vec<String> = json(&page)
            .as_array()
            .expect("array")
            .iter()
            .map(|r| r["task_id"].as_str().expect("id").to_owned())
            .collect();
        assert_eq!(listed.len(), 11);
        assert!(next.is_none());
        assert_eq!(listed[0], text(live));
        let (page, next) = s
            .page_json(&PageRequest {
                limit: 4,
                ..Default::default()
            })
            .expect("page");
        assert_eq!(json(&page).as_array().expect("array").len(), 4);
        let (page2, _) = s
            .page_json(&PageRequest {
                limit: 100,
                cursor: next.as_deref(),
                ..Default::default()
            })
            .expect("page");
        assert_eq!(json(&page2).as_array().expect("array").len(), 7);
        let (page, _) = s
            .page_json(&PageRequest {
                func_name: Some("a"),
                status: Some("success"),
                limit: 100,
                ..Default::default()
            })
            .expect("page");
        assert_eq!(json(&page).as_array().expect("array").len(), 5);

        // A log line on a flushed record makes it dirty again.
        s.append_log(&ids[9], "late").expect("log");
        assert_eq!(s.flush().expect("flush"), 1);
        let m_before = s.metrics_json();
        s.close();
        assert!(matches!(s.flush(), Err(CoreError::Snapshot(_))));
        let health = &json(&s.metrics_json())["snapshot"];
        assert_eq!(
            health["failed_writes"], 0,
            "a closed file is no failed write"
        );

        // Reopen: metrics come back from disk, no record is loaded.
        let s2 = db_store(&path, 3);
        assert_eq!(s2.memory_len(), 0);
        let m = json(&s2.metrics_json());
        let before = json(&m_before);
        assert_eq!(m["total"], 10);
        assert_eq!(m["success"], 10);
        assert_eq!(m["by_name"]["a"]["total"], 5);
        assert_eq!(m["p99_seconds"], before["p99_seconds"]);
        assert_eq!(m["avg_duration_seconds"], before["avg_duration_seconds"]);
        assert_eq!(
            json(&s2.get_json(&ids[9]).expect("get").expect("found"))["logs"][0],
            "late"
        );
    }

    #[test]
    fn failed_write_keeps_records_dirty() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("s.db").to_string_lossy().into_owned();
        let s = db_store(&path, 1);
        run(&s, "f", "success");
        run(&s, "f", "success");
        // Another connection holds the write lock past the busy timeout? Too slow for a unit
        // test; drop the table instead so the write fails.
        let conn = rusqlite::Connection::open(&path).expect("conn");
        conn.execute_batch("DROP TABLE task_history").expect("drop");
        drop(conn);
        let before = json(&s.metrics_json())["snapshot"].clone();
        assert_eq!(before["ok"], true);
        assert_eq!(before["unwritten"], 2);
        assert!(before["last_write_at"].is_null());
        assert!(matches!(s.flush(), Err(CoreError::Snapshot(m)) if m.contains(&path)));
        assert_eq!(s.memory_len(), 2, "unwritten records stay in memory");
        let failed = json(&s.metrics_json())["snapshot"].clone();
        assert_eq!(failed["ok"], false);
        assert_eq!(failed["failed_writes"], 1);
        assert_eq!(failed["unwritten"], 2);
        assert!(failed["last_error"]
            .as_str()
            .is_some_and(|m| m.contains(&path)));
        let text = String::from_utf8(s.metrics_prometheus()).expect("utf8");
        assert!(text.contains("\ntaskflow_snapshot_ok 0\n"));
        assert!(text.contains("\ntaskflow_snapshot_failed_writes_total 1\n"));
    }

    #[test]
    fn a_change_while_its_record_is_written_is_written_by_the_next_flush() {
        let (_d, path) = tmp_db();
        let s = db_store(&path, 100);
        let id = run(&s, "f", "success");
        // Another connection holds the write lock, so the flush waits after its copy.
        let other = rusqlite::Connection::open(&path).expect("conn");
        other.execute_batch("BEGIN IMMEDIATE").expect("lock");
        std::thread::scope(|scope| {
            let flush = scope.spawn(|| s.flush());
            eventually("the flush took the record", || !s.lock().writing.is_empty());
            s.append_log(&id, "late").expect("log");
            other.execute_batch("COMMIT").expect("unlock");
            assert_eq!(flush.join().expect("flush").expect("written"), 1);
        });
        assert_eq!(unwritten(&s), 1, "the log line is not on disk yet");
        assert_eq!(s.flush().expect("second"), 1);
        let logs: String = other
            .query_row(
                "SELECT logs_json FROM task_history WHERE task_id = ?1",
                [&id],
                |r| r.get(0),
            )
            .expect("row");
        assert_eq!(logs, r#"["late"]"#);
        assert_eq!(unwritten(&s), 0);
    }

    #[test]
    fn a_failed_write_marks_finished_and_journal_records_again() {
        let (_d, path) = tmp_db();
        let s = db_store(&path, 100);
        let done = parse_uuid(&run(&s, "f", "success")).expect("id");
        let (pending, _) = create(&s, journaled("j"));
        let conn = rusqlite::Connection::open(&path).expect("conn");
        conn.execute_batch("DROP TABLE task_history").expect("drop");
        assert!(s.flush().is_err());
        let st = s.lock();
        assert!(st.writing.is_empty());
        assert_eq!(st.dirty.iter().collect::<Vec<_>>(), [&done]);
        assert_eq!(st.journal_dirty.iter().collect::<Vec<_>>(), [&pending]);
    }

    fn tmp_db() -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("s.db").to_string_lossy().into_owned();
        (dir, path)
    }

    fn owner_of(path: &str, task_id: &str) -> Option<String> {
        let conn = rusqlite::Connection::open(path).expect("conn");
        conn.query_row(
            "SELECT owner FROM task_history WHERE task_id = ?1",
            [task_id],
            |r| r.get(0),
        )
        .expect("row")
    }

    fn journaled(name: &str) -> NewTask<'_> {
        NewTask {
            journal: true,
            ..NewTask::named(name)
        }
    }

    fn unwritten(s: &TaskStore) -> serde_json::Value {
        json(&s.metrics_json())["snapshot"]["unwritten"].clone()
    }

    /// Waits up to 30 s for `done`.
    fn eventually(what: &str, done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "never: {what}");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    #[test]
    fn writes_behind_once_enough_records_wait() {
        let (_d, path) = tmp_db();
        let s = db_store(&path, 100);
        s.write_behind(Some(3)).expect("threshold");
        run(&s, "f", "success");
        run(&s, "f", "success");
        assert_eq!(unwritten(&s), 2, "below the threshold, nothing is written");
        run(&s, "f", "success");
        eventually("written behind", || unwritten(&s) == 0);
        eventually("the write's thread ends", || {
            s.write_behind.try_start() && {
                s.write_behind.finished();
                true
            }
        });
        s.write_behind(None).expect("off");
        for _ in 0..3 {
            run(&s, "f", "success");
        }
        assert_eq!(unwritten(&s), 3, "stopped");
        assert!(matches!(
            s.write_behind(Some(0)),
            Err(CoreError::InvalidInput(m)) if m == "threshold must be at least 1, got 0"
        ));
    }

    #[test]
    fn nothing_is_written_behind_without_a_file() {
        let s = store(10);
        s.write_behind(Some(1)).expect("threshold");
        run(&s, "f", "success");
        assert!(s.write_behind.try_start(), "no write started");
    }

    #[test]
    fn the_wake_comes_once_per_arming_at_the_first_record_left_unwritten() {
        let (_d, path) = tmp_db();
        let s = db_store(&path, 100);
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let arm = || {
            let calls = Arc::clone(&calls);
            s.on_unwritten(Some(Box::new(move || {
                calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            })));
        };
        let count = || calls.load(std::sync::atomic::Ordering::Relaxed);
        arm();
        let (id, _) = create(&s, NewTask::named("f"));
        let id = text(id);
        s.transition(&id, "running", Change::default())
            .expect("run");
        assert_eq!(count(), 0, "a plain record's row waits for its end");
        s.transition(&id, "success", Change::default())
            .expect("end");
        assert_eq!(count(), 1);
        run(&s, "f", "failed");
        assert_eq!(count(), 1, "once per arming");
        s.flush().expect("flush");
        arm();
        s.append_log(&id, "after the end").expect("log");
        assert_eq!(count(), 2, "a log line on a finished record");
        arm();
        create(&s, journaled("j"));
        assert_eq!(count(), 3, "a journaled record's creation");
        arm();
        s.on_unwritten(None);
        run(&s, "f", "success");
        assert_eq!(count(), 3, "disarmed");
    }

    #[test]
    fn health_after_a_good_flush_and_without_a_file() {
        let (_d, path) = tmp_db();
        let s = db_store(&path, 10);
        run(&s, "f", "success");
        s.flush().expect("flush");
        let h = json(&s.metrics_json())["snapshot"].clone();
        assert_eq!(
            (h["ok"].clone(), h["unwritten"].clone()),
            (true.into(), 0.into())
        );
        assert!(h["last_write_at"]
            .as_str()
            .is_some_and(|t| t.ends_with("+00:00")));
        let mem = store(10);
        let m = mem.metrics_json();
        assert!(m.ends_with(b",\"snapshot\":null}"), "the last key");
        assert!(!String::from_utf8(mem.metrics_prometheus())
            .expect("utf8")
            .contains("taskflow_snapshot"));
    }

    #[test]
    fn ttl_is_checked_and_rounded_like_python() {
        for bad in [0.0, -1.0, f64::NAN] {
            let cfg = StoreConfig {
                idempotency_ttl: Some(bad),
                ..Default::default()
            };
            assert!(matches!(
                TaskStore::open(None, cfg),
                Err(CoreError::InvalidInput(m)) if m.contains("idempotency_ttl")
            ));
        }
        // `now - created < ttl * 1e6` for integer differences.
        assert_eq!(ttl_micros("ttl", 1.5).expect("ttl"), 1_500_000);
        assert_eq!(ttl_micros("ttl", 1e-9).expect("ttl"), 1);
        assert_eq!(ttl_micros("ttl", f64::INFINITY).expect("ttl"), i64::MAX);
    }

    #[test]
    fn idempotency_keys_expire_after_the_ttl() {
        let s = TaskStore::open(
            None,
            StoreConfig {
                idempotency_ttl: Some(0.001),
                ..Default::default()
            },
        )
        .expect("open");
        let keyed = || NewTask {
            idempotency_key: Some("k"),
            ..NewTask::named("f")
        };
        let (a, _) = create(&s, keyed());
        std::thread::sleep(std::time::Duration::from_millis(5));
        let (b, fresh) = create(&s, keyed());
        assert!(fresh && a != b, "a's key expired");
        assert_eq!(create(&s, keyed()), (b, false));
    }

    #[test]
    fn idempotency_keys_are_held_from_the_file() {
        let (_d, path) = tmp_db();
        let s = db_store(&path, 1);
        let keyed = |k| NewTask {
            idempotency_key: Some(k),
            ..NewTask::named("f")
        };
        let (a, _) = create(&s, keyed("k"));
        let a = text(a);
        s.transition(&a, "running", Change::default()).expect("run");
        s.transition(&a, "success", Change::default()).expect("ok");
        run(&s, "f", "success");
        s.flush().expect("flush");
        assert!(s.get_memory(&a).is_none(), "evicted");
        assert_eq!(
            s.create(keyed("k")).expect("create"),
            (TaskId::Stored(a.clone()), false),
            "held from the file"
        );
        // Another store on the file sees a journaled holder of this one.
        let (j, _) = create(
            &s,
            NewTask {
                journal: true,
                ..keyed("j")
            },
        );
        s.flush().expect("flush");
        let other = db_store(&path, 10);
        assert_eq!(
            other.create(keyed("j")).expect("create"),
            (TaskId::Stored(text(j)), false)
        );
        // Memory is newer than the file: a failed holder frees the key before its row says so.
        s.transition(&text(j), "cancelled", Change::default())
            .expect("cancel");
        assert!(s.create(keyed("j")).expect("create").1);
    }

    #[test]
    fn journal_rows_follow_status_and_retries() {
        let (_d, path) = tmp_db();
        let s = db_store(&path, 10);
        let (id, _) = create(&s, journaled("f"));
        let id = text(id);
        create(&s, NewTask::named("plain"));
        assert_eq!(json(&s.metrics_json())["snapshot"]["unwritten"], 1);
        assert_eq!(s.flush().expect("flush"), 1, "only the journaled record");
        assert_eq!(owner_of(&path, &id).as_deref(), Some(s.instance_id()));
        assert_eq!(s.flush().expect("flush"), 0);
        s.transition(&id, "running", Change::default())
            .expect("run");
        s.append_log(&id, "a log line alone does not rewrite the row")
            .expect("log");
        assert_eq!(s.flush().expect("flush"), 1);
        let again = |retries| Change {
            retries_used: retries,
            ..Change::default()
        };
        s.transition(&id, "running", again(None)).expect("same");
        assert_eq!(s.flush().expect("flush"), 0);
        s.transition(&id, "running", again(Some(1))).expect("retry");
        assert_eq!(s.flush().expect("flush"), 1);
        let stored = s.get_disk(&id).expect("disk").expect("row");
        assert_eq!(stored.progress.retries_used, 1);
        assert_eq!(stored.logs.len(), 1);
        s.transition(&id, "failed", Change::default())
            .expect("fail");
        assert_eq!(s.flush().expect("flush"), 1);
        assert_eq!(owner_of(&path, &id), None, "finished rows have no owner");
        // Without a file, journal is ignored.
        let mem = store(10);
        create(&mem, journaled("f"));
        assert_eq!(
            json(&mem.metrics_json())["snapshot"],
            serde_json::Value::Null
        );
        assert_eq!(mem.flush().expect("flush"), 0);
    }

    #[test]
    fn new_fields_are_kept_and_served() {
        let s = store(10);
        let (id, _) = create(
            &s,
            NewTask {
                encrypted_payload: Some(b"\x01cipher"),
                retry_of: Some("earlier"),
                ..NewTask::named("f")
            },
        );
        let id = text(id);
        let r = s.get(&id).expect("get").expect("found");
        assert_eq!(
            r.info.encrypted_payload.as_deref(),
            Some(&b"\x01cipher"[..])
        );
        let v = json(&s.get_json(&id).expect("get").expect("found"));
        assert_eq!(v["retry_of"], "earlier");
        assert!(s
            .get_json(&id)
            .expect("get")
            .expect("found")
            .ends_with(br#""logs_dropped":0,"retry_of":"earlier"}"#));
    }

    #[test]
    fn owner_lock_lives_from_open_to_close() {
        let (d, path) = tmp_db();
        let s = db_store(&path, 10);
        let other = db_store(&path, 10);
        assert_ne!(s.instance_id(), other.instance_id());
        assert!(parse_uuid(s.instance_id()).is_some());
        let lock_file = d.path().join("s.db.owners").join(s.instance_id());
        assert!(lock_file.exists());
        s.close();
        assert!(!lock_file.exists());
        drop(other);
        assert_eq!(
            std::fs::read_dir(d.path().join("s.db.owners"))
                .expect("dir")
                .count(),
            0
        );
        let mem = TaskStore::open(Some(":memory:"), StoreConfig::default()).expect("open");
        assert!(mem.claim_orphans().expect("claim").is_empty());
        assert!(!std::path::Path::new(":memory:.owners").exists());
    }

    #[test]
    fn orphans_of_a_closed_store_are_claimed_once() {
        let (_d, path) = tmp_db();
        let gone = db_store(&path, 10);
        let (pending, _) = create(
            &gone,
            NewTask {
                args_json: Some(b"[1]"),
                encrypted_payload: Some(b"ct"),
                retry_of: Some("r"),
                tags: Some(Arc::from(vec![("t".into(), "1".into())])),
                ..journaled("f")
            },
        );
        let (running, _) = create(&gone, journaled("g"));
        let (pending, running) = (text(pending), text(running));
        gone.transition(&running, "running", Change::default())
            .expect("run");
        gone.append_log(&running, "started").expect("log");
        gone.append_log(&running, "retrying").expect("log");
        gone.transition(
            &running,
            "running",
            Change {
                retries_used: Some(1),
                ..Change::default()
            },
        )
        .expect("retry");
        gone.flush().expect("flush");
        gone.close();

        let alive = db_store(&path, 10);
        let (kept, _) = create(&alive, journaled("h"));
        alive.flush().expect("flush");
        let s = TaskStore::open(
            Some(&path),
            StoreConfig {
                max_log_lines: 1,
                ..StoreConfig::default()
            },
        )
        .expect("open");
        let metrics_before = s.metrics_json();
        let claimed = s.claim_orphans().expect("claim");
        let ids: Vec<&str> = claimed.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, [pending.as_str(), running.as_str()], "oldest first");
        let (_, r) = &claimed[1];
        assert_eq!(r.status(), Status::Running);
        assert_eq!(r.progress.retries_used, 1);
        assert_eq!(
            (r.logs.len(), r.logs_dropped),
            (1, 1),
            "this store's log bound"
        );
        let (_, p) = &claimed[0];
        assert_eq!(p.info.args_json.as_deref(), Some(&b"[1]"[..]));
        assert_eq!(p.info.encrypted_payload.as_deref(), Some(&b"ct"[..]));
        assert_eq!(p.info.retry_of.as_deref(), Some("r"));
        assert!(p.info.tags.is_some());
        assert_eq!(s.metrics_json(), metrics_before, "open counted them");
        assert_eq!(s.memory_len(), 2);
        assert_eq!(owner_of(&path, &pending).as_deref(), Some(s.instance_id()));
        assert_eq!(
            owner_of(&path, &text(kept)).as_deref(),
            Some(alive.instance_id())
        );
        assert!(s.claim_orphans().expect("again").is_empty());
        assert!(
            alive.claim_orphans().expect("alive").is_empty(),
            "s is alive"
        );
        // A claimed record is journaled: it runs on, and its row follows.
        s.transition(&running, "pending", Change::default())
            .expect("requeue");
        assert_eq!(s.flush().expect("flush"), 1);
        let row = s
            .snapshot
            .as_ref()
            .and_then(|f| f.get(&running).expect("read"));
        assert!(row.is_some_and(|r| r.record.status() == Status::Pending));
    }

    #[test]
    fn orphans_of_a_crashed_store_and_of_old_versions() {
        let (d, path) = tmp_db();
        let s = db_store(&path, 10);
        let conn = rusqlite::Connection::open(&path).expect("conn");
        conn.execute_batch(
            "INSERT INTO task_history(task_id, func_name, status, created_us, owner) VALUES \
             ('00000000-0000-4000-8000-000000000001', 'f', 'running', 1, '00000000-0000-4000-8000-0000000000cc'), \
             ('00000000-0000-4000-8000-000000000002', 'f', 'pending', 2, NULL)",
        )
        .expect("rows");
        drop(conn);
        // A crashed process leaves its lock file, unlocked.
        let stale = d
            .path()
            .join("s.db.owners")
            .join("00000000-0000-4000-8000-0000000000cc");
        std::fs::write(&stale, b"").expect("stale");
        let claimed = s.claim_orphans().expect("claim");
        assert_eq!(claimed.len(), 2);
        assert!(!stale.exists(), "a dead owner's lock file goes");
        assert_eq!(s.memory_len(), 2);
    }

    #[test]
    fn delete_finished_before_cleans_memory_file_and_metrics() {
        let (_d, path) = tmp_db();
        let s = db_store(&path, 2);
        let mut tagged = NewTask::named("f");
        tagged.tags = Some(Arc::from(vec![("t".into(), "1".into())]));
        let (old, _) = create(&s, tagged);
        let old = text(old);
        s.transition(&old, "running", Change::default())
            .expect("run");
        s.transition(&old, "failed", Change::default())
            .expect("fail");
        for _ in 0..3 {
            run(&s, "f", "success");
        }
        s.flush().expect("flush"); // evicts the oldest two
                                   // Finished in memory, its unfinished journal row not yet rewritten.
        let (late, _) = create(&s, journaled("g"));
        let late = text(late);
        s.flush().expect("flush");
        s.transition(&late, "cancelled", Change::default())
            .expect("cancel");
        let (live, _) = create(&s, NewTask::named("f"));
        let cutoff = now_us() + 1;
        // Memory: two successes and `late`; file: all four first ones and `late`'s row.
        assert_eq!(s.delete_finished_before(cutoff).expect("delete"), (3, 5));
        assert_eq!(s.memory_len(), 1);
        assert!(s.get(&late).expect("get").is_none(), "row gone too");
        assert!(s.get(&old).expect("get").is_none());
        let m = json(&s.metrics_json());
        assert_eq!(
            (m["total"].clone(), m["pending"].clone()),
            (1.into(), 1.into())
        );
        assert!(m["p50_seconds"].is_null());
        assert_eq!(m["by_name"].as_object().map(|o| o.len()), Some(1));
        let conn = rusqlite::Connection::open(&path).expect("conn");
        let tags: i64 = conn
            .query_row("SELECT count(*) FROM task_tags", [], |r| r.get(0))
            .expect("count");
        assert_eq!(tags, 0);
        drop(conn);
        // What a reopen counts is what is left.
        s.flush().expect("flush");
        let reopened = db_store(&path, 2);
        assert_eq!(json(&reopened.metrics_json())["total"], 0);
        assert!(s.get(&text(live)).expect("get").is_some());
        assert_eq!(s.delete_finished_before(cutoff).expect("again"), (0, 0));
    }

    #[test]
    fn delete_one_record() {
        let (_d, path) = tmp_db();
        let s = db_store(&path, 1);
        let first = run(&s, "f", "success");
        let second = run(&s, "f", "failed");
        s.flush().expect("flush"); // `first` now only in the file
        let (live, _) = create(&s, NewTask::named("f"));
        assert!(!s.delete(&text(live)).expect("live"), "not finished");
        assert!(!s.delete(&text(new_uuid4())).expect("unknown"));
        assert!(!s.delete("not-an-id").expect("unknown"));
        assert!(s.delete(&first).expect("file only"));
        assert!(s.delete(&second).expect("memory and file"));
        assert!(!s.delete(&second).expect("gone"));
        assert!(s.get(&first).expect("get").is_none() && s.get(&second).expect("get").is_none());
        let m = json(&s.metrics_json());
        assert_eq!(
            (
                m["total"].clone(),
                m["success"].clone(),
                m["failed"].clone()
            ),
            (1.into(), 0.into(), 0.into())
        );
        let mem = store(10);
        let done = run(&mem, "f", "success");
        assert!(mem.delete(&done).expect("memory only"));
        assert_eq!(json(&mem.metrics_json())["total"], 0);
    }

    #[test]
    fn a_failed_delete_leaves_memory_unchanged() {
        let (_d, path) = tmp_db();
        let s = db_store(&path, 10);
        let done = run(&s, "f", "success");
        let conn = rusqlite::Connection::open(&path).expect("conn");
        conn.execute_batch("DROP TABLE task_history").expect("drop");
        drop(conn);
        assert!(matches!(s.delete(&done), Err(CoreError::Snapshot(m)) if m.contains(&path)));
        assert!(matches!(
            s.delete_finished_before(now_us() + 1),
            Err(CoreError::Snapshot(_))
        ));
        assert_eq!(s.memory_len(), 1);
        assert_eq!(json(&s.metrics_json())["total"], 1);
    }

    fn one_off(func_name: &str) -> OneOff {
        OneOff {
            func_name: func_name.to_owned(),
            queue: "default".to_owned(),
            ..OneOff::default()
        }
    }

    #[test]
    fn schedules_and_metadata_need_a_file() {
        let mem = store(10);
        let no_file = |r: CoreResult<()>| {
            assert!(
                matches!(&r, Err(CoreError::Snapshot(m)) if m == NO_FILE),
                "{r:?}"
            );
        };
        no_file(mem.acquire_lock("k", 1.0).map(drop));
        no_file(mem.save_scheduled("r", 0, one_off("f")));
        no_file(mem.load_due(0, 10).map(drop));
        no_file(mem.delete_scheduled("r").map(drop));
        no_file(mem.fire_scheduled("r", None, true).map(drop));
        no_file(mem.save_metadata("k", "v"));
        no_file(mem.load_metadata("k").map(drop));
        no_file(mem.changed_rows(0, 10).map(drop));
        no_file(mem.adopt(Vec::new()).map(drop));
        // Bad arguments are refused first, file or not.
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(
                matches!(mem.acquire_lock("k", bad), Err(CoreError::InvalidInput(m)) if m.contains("ttl")),
                "{bad}"
            );
        }
        assert!(matches!(
            mem.load_due(0, 0),
            Err(CoreError::InvalidInput(_))
        ));
        assert!(matches!(
            mem.changed_rows(0, 0),
            Err(CoreError::InvalidInput(m)) if m.contains("limit")
        ));
        assert!(matches!(
            mem.adopt(vec![row_of(1, "success", 1)]),
            Err(CoreError::InvalidInput(_))
        ));
    }

    #[test]
    fn schedule_locks_are_taken_for_their_ttl() {
        let (_d, path) = tmp_db();
        let s = db_store(&path, 10);
        let other = db_store(&path, 10);
        assert!(s.acquire_lock("tick", 0.05).expect("lock"));
        assert!(!other.acquire_lock("tick", 60.0).expect("held"));
        assert!(!s.acquire_lock("tick", 60.0).expect("held by itself too"));
        assert!(other
            .acquire_lock("tock", 1e300)
            .expect("a huge ttl saturates"));
        std::thread::sleep(std::time::Duration::from_millis(60));
        assert!(other.acquire_lock("tick", 60.0).expect("expired"));
    }

    #[test]
    fn firing_creates_the_task_as_create_would() {
        let (_d, path) = tmp_db();
        let s = db_store(&path, 10);
        let task = OneOff {
            args_json: Some(Arc::from(&b"[1]"[..])),
            encrypted_payload: Some(Arc::from(&b"ct"[..])),
            queue: "q".to_owned(),
            priority: Some(4),
            tags: Some(Arc::from(vec![("t".into(), "1".into())])),
            ..one_off("report")
        };
        s.save_scheduled("r", 5, task).expect("save");
        assert_eq!(s.load_due(5, 10).expect("due").len(), 1);
        let before = s.last_seq();
        let (id, created) = s
            .fire_scheduled("r", Some("thread"), true)
            .expect("fire")
            .expect("found");
        assert!(created);
        let TaskId::Uuid(id) = id else {
            panic!("a new id")
        };
        let r = s.get_memory(&text(id)).expect("held");
        let i = &r.info;
        assert_eq!(
            (r.status(), &*i.source, &*i.func_name),
            (Status::Pending, "scheduled", "report")
        );
        assert_eq!(
            (&*i.queue, i.priority, i.executor.as_deref()),
            ("q", Some(4), Some("thread"))
        );
        assert_eq!(i.args_json.as_deref(), Some(&b"[1]"[..]));
        assert_eq!(i.encrypted_payload.as_deref(), Some(&b"ct"[..]));
        assert_eq!(s.last_seq(), before + 1, "a created event");
        let m = json(&s.metrics_json());
        assert_eq!(
            (
                m["pending"].clone(),
                m["by_name"]["report"]["total"].clone()
            ),
            (1.into(), 1.into())
        );
        assert!(String::from_utf8(s.metrics_prometheus())
            .expect("utf8")
            .contains("taskflow_queue_depth{queue=\"q\"} 1"));
        // Its journal row is written already, with its tags.
        assert_eq!(owner_of(&path, &text(id)).as_deref(), Some(s.instance_id()));
        assert_eq!(m["snapshot"]["unwritten"], 0);
        assert_eq!(s.flush().expect("flush"), 0, "nothing to rewrite");
        let (page, _) = s
            .page_json(&PageRequest {
                tag: Some("t=1"),
                limit: 10,
                ..Default::default()
            })
            .expect("page");
        assert_eq!(json(&page)[0]["task_id"], text(id).as_str());
        assert!(
            s.load_due(i64::MAX, 10).expect("due").is_empty(),
            "consumed"
        );
        assert_eq!(s.fire_scheduled("r", None, true).expect("fire"), None);
        // From here on it is an ordinary journaled record.
        s.transition(&text(id), "running", Change::default())
            .expect("run");
        assert_eq!(s.flush().expect("flush"), 1);
        // Without the journal, nothing is written until it finishes.
        s.save_scheduled("plain", 0, one_off("f")).expect("save");
        let (plain, _) = s
            .fire_scheduled("plain", None, false)
            .expect("fire")
            .expect("found");
        let plain = plain.with_text(str::to_owned);
        assert!(s.get_disk(&plain).expect("disk").is_none());
        assert_eq!(s.flush().expect("flush"), 0);
    }

    #[test]
    fn firing_a_held_key_consumes_the_one_off_only() {
        let (_d, path) = tmp_db();
        let s = db_store(&path, 1);
        let keyed = || OneOff {
            idempotency_key: Some("k".into()),
            ..one_off("f")
        };
        let (live, _) = create(
            &s,
            NewTask {
                idempotency_key: Some("k"),
                ..NewTask::named("f")
            },
        );
        s.save_scheduled("r", 0, keyed()).expect("save");
        let len = s.memory_len();
        assert_eq!(
            s.fire_scheduled("r", None, true).expect("fire"),
            Some((TaskId::Uuid(live), false))
        );
        assert_eq!(s.memory_len(), len, "nothing created");
        assert!(
            s.load_due(i64::MAX, 10).expect("due").is_empty(),
            "consumed"
        );
        // A holder only the file knows of holds it too.
        s.transition(&text(live), "running", Change::default())
            .expect("run");
        s.transition(&text(live), "success", Change::default())
            .expect("ok");
        run(&s, "f", "success");
        s.flush().expect("flush");
        assert!(s.get_memory(&text(live)).is_none(), "evicted");
        s.save_scheduled("r", 0, keyed()).expect("save");
        assert_eq!(
            s.fire_scheduled("r", None, true).expect("fire"),
            Some((TaskId::Stored(text(live)), false))
        );
        // Once the key is free, the firing creates, and then holds it.
        assert!(s.delete(&text(live)).expect("delete"));
        s.save_scheduled("r", 0, keyed()).expect("save");
        let (id, created) = s
            .fire_scheduled("r", None, true)
            .expect("fire")
            .expect("found");
        assert!(created);
        let (holder, created) = s
            .create(NewTask {
                idempotency_key: Some("k"),
                ..NewTask::named("f")
            })
            .expect("create");
        assert_eq!((holder, created), (id, false));
    }

    #[test]
    fn a_fired_task_survives_its_store() {
        let (_d, path) = tmp_db();
        let gone = db_store(&path, 10);
        gone.save_scheduled("r", 0, one_off("f")).expect("save");
        let (id, _) = gone
            .fire_scheduled("r", None, true)
            .expect("fire")
            .expect("found");
        drop(gone);
        let s = db_store(&path, 10);
        let claimed = s.claim_orphans().expect("claim");
        let ids: Vec<&str> = claimed.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, [id.with_text(str::to_owned)]);
        assert_eq!(&*claimed[0].1.info.source, "scheduled");
    }

    #[test]
    fn metadata_is_kept_in_the_file() {
        let (_d, path) = tmp_db();
        let s = db_store(&path, 10);
        assert_eq!(s.load_metadata("k").expect("read"), None);
        s.save_metadata("k", "v").expect("save");
        s.close();
        assert!(
            matches!(s.save_metadata("k", "w"), Err(CoreError::Snapshot(m)) if m.contains("closed"))
        );
        assert_eq!(
            db_store(&path, 10)
                .load_metadata("k")
                .expect("read")
                .as_deref(),
            Some("v")
        );
    }

    /// A row another instance wrote: unfinished, with a tag, a log line and arguments.
    fn row_of(id: u128, status: &str, created_us: i64) -> TaskRow {
        TaskRow {
            task_id: text(id),
            func_name: "job".into(),
            status: status.to_owned(),
            created_us,
            start_us: (status == "running").then_some(created_us + 1),
            end_us: None,
            retries_used: 1,
            error: None,
            stacktrace: None,
            logs_json: r#"["one","two"]"#.to_owned(),
            logs_dropped: 3,
            tags_json: r#"{"t":"1"}"#.to_owned(),
            source: "manual".into(),
            priority: Some(2),
            executor: None,
            queue: "q".into(),
            idempotency_key: Some("k".into()),
            args_json: Some(Arc::from(&b"[1]"[..])),
            kwargs_json: None,
            encrypted_payload: None,
            retry_of: None,
            owner: Some("dead".to_owned()),
        }
    }

    #[test]
    fn one_bad_row_adopts_nothing() {
        let (_d, path) = tmp_db();
        let s = db_store(&path, 10);
        type Spoil = fn(&mut TaskRow);
        let cases: [(&str, Spoil); 7] = [
            ("'task_id' is not a UUID", |r| r.task_id = "T-1".to_owned()),
            ("'status' is 'failed'; only pending and running", |r| {
                r.status = "failed".to_owned()
            }),
            ("'status' is 'bogus'", |r| r.status = "bogus".to_owned()),
            ("'retries_used' must be at least 0, got -1", |r| {
                r.retries_used = -1
            }),
            ("'logs_json' must be a JSON array of strings", |r| {
                r.logs_json = "[1]".to_owned()
            }),
            ("'logs_dropped' must be at least 0", |r| r.logs_dropped = -2),
            ("'tags_json' must be a JSON object of strings", |r| {
                r.tags_json = r#"{"n": 1}"#.to_owned()
            }),
        ];
        for (message, spoil) in cases {
            let mut bad = row_of(2, "pending", 2);
            spoil(&mut bad);
            let who = format!("adopt: task '{}': field ", bad.task_id);
            let err = s
                .adopt(vec![row_of(1, "pending", 1), bad])
                .expect_err(message);
            assert!(
                matches!(&err, CoreError::InvalidInput(m) if m.starts_with(&who) && m.contains(message)),
                "{err:?}"
            );
        }
        assert_eq!(s.memory_len(), 0);
        assert_eq!(s.last_seq(), 0, "no event");
        assert!(
            s.get_disk(&text(1)).expect("read").is_none(),
            "nothing written"
        );
        assert_eq!(json(&s.metrics_json())["total"], 0);
    }

    #[test]
    fn adopted_rows_become_records_created_here() {
        let (_d, path) = tmp_db();
        let s = db_store(&path, 10);
        let (mine, _) = create(&s, journaled("job"));
        s.flush().expect("flush");
        let (_, since) = s.changed_rows(0, 100).expect("changed");
        let adopted = s
            .adopt(vec![
                row_of(7, "running", 20),
                row_of(mine, "pending", 1),
                row_of(5, "pending", 10),
                row_of(7, "pending", 20),
            ])
            .expect("adopt");
        let ids: Vec<&str> = adopted.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, [text(5), text(7)], "oldest first; present ids skipped");
        let (_, running) = &adopted[1];
        assert_eq!(
            running.status(),
            Status::Running,
            "the first of one id wins"
        );
        assert_eq!(running.progress.retries_used, 1);
        assert_eq!((running.logs.len(), running.logs_dropped), (2, 3));
        assert_eq!(running.info.args_json.as_deref(), Some(&b"[1]"[..]));
        assert_eq!(running.info.tags.as_deref().map(<[_]>::len), Some(1));
        // Counted as created here, with their events, and held as journaled records.
        let m = json(&s.metrics_json());
        assert_eq!(
            (
                m["total"].clone(),
                m["pending"].clone(),
                m["running"].clone()
            ),
            (3.into(), 2.into(), 1.into())
        );
        let (events, _) = s.events_since(1, 10).expect("events");
        let events: Vec<serde_json::Value> = events.iter().map(|(_, e)| json(e)).collect();
        assert_eq!(events.len(), 2);
        assert_eq!(events[1]["type"], "created");
        assert_eq!(events[1]["task"]["status"], "running");
        assert!(String::from_utf8(s.metrics_prometheus())
            .expect("utf8")
            .contains("taskflow_queue_depth{queue=\"q\"} 1"));
        assert_eq!(owner_of(&path, &text(7)).as_deref(), Some(s.instance_id()));
        let (rows, last) = s.changed_rows(since, 100).expect("changed");
        let got: Vec<(&str, Option<&str>)> = rows
            .iter()
            .map(|r| (r.task_id.as_str(), r.owner.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                (text(5).as_str(), Some(s.instance_id())),
                (text(7).as_str(), Some(s.instance_id()))
            ]
        );
        assert_eq!(last, since + 2);
        assert_eq!(s.flush().expect("flush"), 0, "their rows are written");
        // Its key is held, and it runs on as a journaled record.
        assert_eq!(
            s.create(NewTask {
                idempotency_key: Some("k"),
                ..NewTask::named("job")
            })
            .expect("create"),
            (TaskId::Uuid(5), false)
        );
        s.transition(&text(7), "success", Change::default())
            .expect("finish");
        assert_eq!(s.flush().expect("flush"), 1);
        assert_eq!(owner_of(&path, &text(7)), None);
        assert!(s
            .adopt(vec![row_of(5, "pending", 10)])
            .expect("again")
            .is_empty());
        s.close();
        assert!(matches!(
            s.adopt(vec![row_of(9, "pending", 1)]),
            Err(CoreError::Snapshot(m)) if m.contains("closed")
        ));
        assert!(
            matches!(s.changed_rows(0, 1), Err(CoreError::Snapshot(m)) if m.contains("closed"))
        );
    }

    #[test]
    fn adopt_takes_over_this_files_rows_of_a_closed_store() {
        let (_d, path) = tmp_db();
        let gone = db_store(&path, 10);
        let (left, _) = create(&gone, journaled("job"));
        let (done, _) = create(&gone, journaled("job"));
        gone.flush().expect("flush");
        // What the backend holds: the rows as replicated then.
        let (backend, _) = gone.changed_rows(0, 100).expect("changed");
        gone.transition(&text(left), "running", Change::default())
            .expect("run");
        gone.append_log(&text(left), "only in the file")
            .expect("log");
        gone.transition(&text(done), "running", Change::default())
            .expect("run");
        gone.transition(&text(done), "success", Change::default())
            .expect("finish");
        gone.flush().expect("flush");
        gone.close();
        let s = db_store(&path, 10);
        let (_, since) = s.changed_rows(0, 100).expect("changed");
        let opened = json(&s.metrics_json());
        let adopted = s.adopt(backend).expect("adopt");
        let ids: Vec<&str> = adopted.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, [text(left)], "the finished row is skipped");
        let (_, taken) = &adopted[0];
        assert_eq!(
            taken.status(),
            Status::Running,
            "the file's row, not the backend's"
        );
        assert_eq!(
            taken.logs.iter().map(|l| &**l).collect::<Vec<_>>(),
            ["only in the file"]
        );
        // Open counted its row: the metrics stay; the record is announced.
        let m = json(&s.metrics_json());
        for key in ["total", "pending", "running", "success"] {
            assert_eq!(m[key], opened[key], "{key}");
        }
        let (events, _) = s.events_since(0, 10).expect("events");
        let events: Vec<serde_json::Value> = events.iter().map(|(_, e)| json(e)).collect();
        assert_eq!(events.len(), 1);
        assert_eq!(
            (&events[0]["type"], &events[0]["task"]["status"]),
            (&"created".into(), &"running".into())
        );
        let (rows, _) = s.changed_rows(since, 100).expect("changed");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].task_id, text(left));
        assert_eq!(rows[0].owner.as_deref(), Some(s.instance_id()));
        assert_eq!(rows[0].status, "running");
        assert_eq!(owner_of(&path, &text(done)), None);
        // A journaled record of this store from now on.
        s.transition(&text(left), "success", Change::default())
            .expect("finish");
        assert_eq!(s.flush().expect("flush"), 1);
        assert_eq!(owner_of(&path, &text(left)), None);
    }
}
