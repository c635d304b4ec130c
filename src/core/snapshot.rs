//! The SQLite snapshot file: schema and migrations, history and journal flush, reads for
//! pages, details and idempotency keys, orphan claims, deletions, the metric rows read at
//! open, schedule locks, one-off schedules, metadata, and the outbox of rows to replicate
//! (`sync_seq`, changed rows, adoption).
//!
//! The file format is shared with the pure-Python core (`_pycore`): either core opens the
//! other's files. One writer and one reader connection, each behind its own lock, so reads
//! proceed while a flush writes (WAL).

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use rusqlite::types::{Value, ValueRef};
use rusqlite::{
    params, Connection, ErrorCode, OptionalExtension, Transaction, TransactionBehavior, MAIN_DB,
};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

use super::error::{CoreError, CoreResult};
use super::record::{
    parse_uuid, write_logs, write_tags, Progress, Record, Status, Tags, TaskInfo, UuidText,
};

/// Schema scripts; entry `i` migrates version `i` to `i + 1`.
/// Twin: `MIGRATIONS` in `_pycore/snapshot.py` (identical SQL).
///
/// Version 6 makes a finished row cheaper to write: two of the seven b-trees a successful
/// task's row went into are off its path. The status index leaves out `success`, most rows
/// by far: a page of successes walks the creation index and skips the few others (a page
/// of another status states [`NOT_SUCCESS`] to use the index). Retention finds old rows
/// through the creation index, since a row that ended before a time was created before it,
/// so `task_history_end` is dropped.
///
/// Version 7 leaves the task id out of the creation and name indexes: an entry shrinks from
/// about 50 bytes to about 12, so a row costs fewer page splits and fewer pages written per
/// commit (about a fifth of a flush into a new file), and the file about 80 bytes less.
/// Pages still sort by `(created_us, task_id)`: SQLite walks the index and sorts only the
/// rows of one `created_us` ("TEMP B-TREE FOR RIGHT PART OF ORDER BY"). That sorter costs
/// a page read from the file about 1-2 µs a row (0.3-0.5 ms for 100 rows, against 0.25-0.35
/// before): every finished task is written, while pages are read when someone looks.
const MIGRATIONS: &[&str] = &["\
CREATE TABLE task_history (task_id TEXT PRIMARY KEY, func_name TEXT NOT NULL, status TEXT NOT NULL, \
created_us INTEGER NOT NULL, start_us INTEGER, end_us INTEGER, retries_used INTEGER NOT NULL DEFAULT 0, \
error TEXT, stacktrace TEXT, logs_json TEXT NOT NULL DEFAULT '[]', tags_json TEXT NOT NULL DEFAULT '{}', \
source TEXT NOT NULL DEFAULT 'manual', priority INTEGER, executor TEXT, queue TEXT NOT NULL DEFAULT 'default', \
idempotency_key TEXT, args_json BLOB, kwargs_json BLOB);
CREATE INDEX task_history_created ON task_history(created_us, task_id);
CREATE INDEX task_history_status ON task_history(status, created_us, task_id);
CREATE INDEX task_history_name ON task_history(func_name, created_us, task_id);
", "\
CREATE TABLE task_tags (task_id TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, \
created_us INTEGER NOT NULL, PRIMARY KEY (key, value, created_us, task_id)) WITHOUT ROWID;
INSERT OR IGNORE INTO task_tags (task_id, key, value, created_us) \
SELECT h.task_id, j.key, j.value, h.created_us FROM task_history AS h, \
json_each(CASE WHEN json_valid(h.tags_json) AND json_type(h.tags_json) = 'object' THEN h.tags_json ELSE '{}' END) AS j \
WHERE j.type = 'text';
ALTER TABLE task_history ADD COLUMN logs_dropped INTEGER NOT NULL DEFAULT 0;
", "\
ALTER TABLE task_history ADD COLUMN owner TEXT;
ALTER TABLE task_history ADD COLUMN encrypted_payload BLOB;
ALTER TABLE task_history ADD COLUMN retry_of TEXT;
CREATE INDEX task_history_owner ON task_history(owner) WHERE owner IS NOT NULL;
CREATE INDEX task_history_idempotency ON task_history(idempotency_key, created_us) WHERE idempotency_key IS NOT NULL;
CREATE INDEX task_history_end ON task_history(end_us) WHERE end_us IS NOT NULL;
", "\
CREATE TABLE task_schedule_locks (lock_key TEXT PRIMARY KEY, expires_us INTEGER NOT NULL);
CREATE TABLE task_scheduled_once (run_key TEXT PRIMARY KEY, func_name TEXT NOT NULL, fire_us INTEGER NOT NULL, \
created_us INTEGER NOT NULL, args_json BLOB, kwargs_json BLOB, encrypted_payload BLOB, \
queue TEXT NOT NULL DEFAULT 'default', priority INTEGER, idempotency_key TEXT, tags_json TEXT NOT NULL DEFAULT '{}');
CREATE INDEX task_scheduled_once_fire ON task_scheduled_once(fire_us, run_key);
CREATE TABLE task_metadata (key TEXT PRIMARY KEY, value TEXT NOT NULL);
", "\
ALTER TABLE task_history ADD COLUMN sync_seq INTEGER;
CREATE INDEX task_history_sync ON task_history(sync_seq) WHERE sync_seq IS NOT NULL;
", "\
DROP INDEX task_history_end;
DROP INDEX task_history_status;
CREATE INDEX task_history_status ON task_history(status, created_us, task_id) WHERE status <> 'success';
", "\
DROP INDEX task_history_created;
CREATE INDEX task_history_created ON task_history(created_us);
DROP INDEX task_history_name;
CREATE INDEX task_history_name ON task_history(func_name, created_us);
"];

/// The condition of `task_history_status`, which a query must state, word for word, for
/// SQLite to use that partial index (it does not infer it from `status = 'failed'`).
const NOT_SUCCESS: &str = "status <> 'success'";

/// The columns of a row, in the order [`read_row`] reads them.
const COLUMNS: &str = "task_id, func_name, status, created_us, start_us, end_us, retries_used, error, \
stacktrace, logs_json, tags_json, source, priority, executor, queue, idempotency_key, args_json, kwargs_json, \
logs_dropped, encrypted_payload, retry_of, owner";

/// The highest `sync_seq` this file has given: the column's maximum (a walk to the end of
/// `task_history_sync`), or the floor a deletion of the newest rows left behind, so that a
/// number is never given twice. Read once per write transaction, which numbers its rows up
/// from here. Twin: `_SYNC_SEQ_HIGH` in `_pycore/snapshot.py`.
const SYNC_SEQ_HIGH: &str =
    "SELECT max(coalesce((SELECT max(sync_seq) FROM task_history WHERE sync_seq IS NOT NULL), 0), \
coalesce((SELECT CAST(value AS INTEGER) FROM task_metadata WHERE key = 'sync_seq_floor'), 0))";

/// Run after a deletion with `?1` = the [`SYNC_SEQ_HIGH`] read before it: when the rows
/// holding the highest numbers are gone, the number is kept as the floor. Twin:
/// `_KEEP_SYNC_FLOOR` in `_pycore/snapshot.py`.
const KEEP_SYNC_FLOOR: &str = "INSERT INTO task_metadata (key, value) SELECT 'sync_seq_floor', ?1 \
WHERE ?1 > coalesce((SELECT max(sync_seq) FROM task_history WHERE sync_seq IS NOT NULL), 0) \
ON CONFLICT(key) DO UPDATE SET value = excluded.value";

/// Writes one record. A row already there is the same record written before, and a record's
/// `TaskInfo` (name, creation time, tags, arguments, key...) never changes: the update sets
/// only what progress changes, so SQLite leaves the entries of the indexes on the other
/// columns (creation time, name, key) alone instead of deleting and re-adding them.
const UPSERT: &str = "INSERT INTO task_history(task_id, func_name, status, created_us, start_us, end_us, \
retries_used, error, stacktrace, logs_json, tags_json, source, priority, executor, queue, idempotency_key, \
args_json, kwargs_json, logs_dropped, encrypted_payload, retry_of, owner, sync_seq) VALUES (?1, ?2, ?3, ?4, ?5, \
?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23) \
ON CONFLICT(task_id) DO UPDATE SET status = excluded.status, start_us = excluded.start_us, \
end_us = excluded.end_us, retries_used = excluded.retries_used, error = excluded.error, \
stacktrace = excluded.stacktrace, logs_json = excluded.logs_json, logs_dropped = excluded.logs_dropped, \
owner = excluded.owner, sync_seq = excluded.sync_seq";

/// [`UPSERT`] for a *plain* row (see [`is_plain`]): the columns it leaves out take their
/// defaults, which are the values such a row holds, on insert and on update alike. Most
/// rows are plain, and binding 13 parameters instead of 23 makes each about a fifth cheaper
/// to write.
const UPSERT_PLAIN: &str = "INSERT INTO task_history(task_id, func_name, status, created_us, start_us, \
end_us, retries_used, source, executor, queue, args_json, kwargs_json, sync_seq) VALUES (?1, ?2, ?3, ?4, \
?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) \
ON CONFLICT(task_id) DO UPDATE SET status = excluded.status, start_us = excluded.start_us, \
end_us = excluded.end_us, retries_used = excluded.retries_used, error = excluded.error, \
stacktrace = excluded.stacktrace, logs_json = excluded.logs_json, logs_dropped = excluded.logs_dropped, \
owner = excluded.owner, sync_seq = excluded.sync_seq";

/// The statuses that end a task, as an SQL list. Twin of the finished statuses of `record.rs`.
const FINISHED_SQL: &str = "('success', 'failed', 'interrupted', 'cancelled', 'rejected')";

/// Unfinished rows, found through the status index.
const UNFINISHED: &str = "status IN ('pending', 'running') AND status <> 'success'";

/// Tags never change after a record is created, so a re-flushed record re-inserts the same
/// rows: ignoring duplicates replaces the delete (which, keyed by tag, would scan the table).
const INSERT_TAG: &str =
    "INSERT OR IGNORE INTO task_tags (task_id, key, value, created_us) VALUES (?1, ?2, ?3, ?4)";

/// The idempotency key holders of `?1` created after `?2`; walks `task_history_idempotency`,
/// then filters the few rows of one key. Twin: `_KEY_HOLDERS` in `_pycore/snapshot.py`.
const KEY_HOLDERS: &str =
    "SELECT task_id FROM task_history WHERE idempotency_key = ?1 AND created_us > ?2 \
AND status IN ('pending', 'running', 'success') ORDER BY created_us DESC";

/// The columns of a one-off schedule, in the order of [`Scheduled`]'s fields.
const SCHEDULED_COLUMNS: &str = "run_key, func_name, fire_us, created_us, args_json, kwargs_json, \
encrypted_payload, queue, priority, idempotency_key, tags_json";

/// Saving a run key again reschedules it: every column is replaced. Twin: `_SAVE_SCHEDULED`.
const SAVE_SCHEDULED: &str = "INSERT OR REPLACE INTO task_scheduled_once (run_key, func_name, fire_us, \
created_us, args_json, kwargs_json, encrypted_payload, queue, priority, idempotency_key, tags_json) \
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";

/// [`COLUMNS`] qualified with the history table's alias `h`, for joins.
fn h_columns() -> &'static str {
    static COLS: OnceLock<String> = OnceLock::new();
    COLS.get_or_init(|| {
        COLUMNS
            .split(", ")
            .map(|c| format!("h.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    })
}

/// Page cache per connection, in KiB (a negative `cache_size`): SQLite's default 2 MiB
/// spills a large flush to the WAL and reads it back. The cache only grows as it is used.
const CACHE_KIB: i64 = -65_536;

/// Pages of the main file are read through a memory map up to this size, not copied in.
const MMAP_BYTES: i64 = 256 << 20;

/// WAL frames (pages) from which a write, once committed, checkpoints the WAL into the main
/// file. SQLite's auto-checkpoint (at 1,000 frames) is off on the writer: it runs inside the
/// commit of whichever write crosses it, and so often that the pages every flush rewrites
/// (the right edge of each index; with random ids, most of the primary key's leaves) are
/// copied into the file again and again. A larger WAL copies each page once per checkpoint,
/// however many flushes rewrote it.
const CHECKPOINT_FRAMES: i32 = 4096;

/// A WAL grown past this by one large write is cut back to it when the WAL restarts.
const WAL_KEEP_BYTES: i64 = 64 << 20;

/// One finished record as read from the file, with its id as stored.
#[derive(Clone, Debug)]
pub(crate) struct DiskRecord {
    pub(crate) task_id: String,
    pub(crate) created_us: i64,
    pub(crate) record: Record,
}

/// One `task_history` row as the shared backends store it (`TaskRow` in `backends/base.py`):
/// what `changed_rows` reads and `adopt` takes. Read leniently (see [`read_row`]); a value
/// a column should not hold becomes its default.
#[derive(Clone, Debug)]
pub(crate) struct TaskRow {
    pub(crate) task_id: String,
    pub(crate) func_name: Arc<str>,
    /// As stored: a status this version does not know stays readable here.
    pub(crate) status: String,
    pub(crate) created_us: i64,
    pub(crate) start_us: Option<i64>,
    pub(crate) end_us: Option<i64>,
    pub(crate) retries_used: i64,
    pub(crate) error: Option<Arc<str>>,
    pub(crate) stacktrace: Option<Arc<str>>,
    /// A JSON array of the log lines.
    pub(crate) logs_json: String,
    pub(crate) logs_dropped: i64,
    /// A JSON object of the tags.
    pub(crate) tags_json: String,
    pub(crate) source: Arc<str>,
    pub(crate) priority: Option<i64>,
    pub(crate) executor: Option<Arc<str>>,
    pub(crate) queue: Arc<str>,
    pub(crate) idempotency_key: Option<Arc<str>>,
    pub(crate) args_json: Option<Arc<[u8]>>,
    pub(crate) kwargs_json: Option<Arc<[u8]>>,
    pub(crate) encrypted_payload: Option<Arc<[u8]>>,
    pub(crate) retry_of: Option<Arc<str>>,
    pub(crate) owner: Option<String>,
}

impl TaskRow {
    /// The record the row holds; `None` when its status is unknown.
    pub(crate) fn into_record(self) -> Option<DiskRecord> {
        let status = Status::parse(&self.status)?;
        Some(self.into_record_as(status))
    }

    /// The record the row holds, with `status` (the row's, parsed). Unreadable logs or tags
    /// are none (the row stays listable).
    pub(crate) fn into_record_as(self, status: Status) -> DiskRecord {
        let logs: VecDeque<Arc<str>> = serde_json::from_str::<Vec<String>>(&self.logs_json)
            .unwrap_or_default()
            .into_iter()
            .map(Arc::from)
            .collect();
        let record = Record {
            info: Arc::new(TaskInfo {
                func_name: self.func_name,
                created_us: self.created_us,
                tags: parse_tags(&self.tags_json),
                source: self.source,
                priority: self.priority,
                executor: self.executor,
                queue: self.queue,
                idempotency_key: self.idempotency_key,
                args_json: self.args_json,
                kwargs_json: self.kwargs_json,
                encrypted_payload: self.encrypted_payload,
                retry_of: self.retry_of,
            }),
            progress: Progress {
                status,
                start_us: self.start_us,
                end_us: self.end_us,
                retries_used: self.retries_used,
                error: self.error,
                stacktrace: self.stacktrace,
            },
            logs,
            logs_dropped: u64::try_from(self.logs_dropped).unwrap_or(0),
        };
        DiskRecord {
            task_id: self.task_id,
            created_us: self.created_us,
            record,
        }
    }
}

/// One row of the metric rebuild at open.
pub(crate) struct MetricRow {
    pub(crate) func_name: String,
    pub(crate) status: Option<Status>,
    pub(crate) start_us: Option<i64>,
    pub(crate) end_us: Option<i64>,
}

/// A row deleted from the file, with what the metrics must forget.
pub(crate) struct DeletedRow {
    pub(crate) task_id: String,
    pub(crate) row: MetricRow,
}

/// Rows to delete.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Doomed<'a> {
    /// Finished rows that ended before this time (µs).
    EndedBefore(i64),
    /// This row whatever its status (its record finished in memory; the row may lag).
    Id(&'a str),
    /// This row if it is finished.
    FinishedId(&'a str),
}

/// What one claim took over.
pub(crate) struct Claim {
    /// The claimed rows, now owned by the claimer (those of ids that are UUIDs).
    pub(crate) records: Vec<DiskRecord>,
    /// Owners found dead, whose lock files may go.
    pub(crate) dead_owners: Vec<String>,
}

/// What one adoption made this store's.
#[derive(Default)]
pub(crate) struct Adoption {
    /// The records whose rows the adopter now owns, oldest first: those inserted as given,
    /// and those taken over as the file held them.
    pub(crate) records: Vec<(u128, Record)>,
    /// The ids of the records taken over (their rows were in the file already).
    pub(crate) taken_over: HashSet<u128>,
}

/// Filters and position of one page read.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PageQuery<'a> {
    pub(crate) before: Option<(i64, &'a str)>,
    pub(crate) status: Option<Status>,
    pub(crate) func_name: Option<&'a str>,
    /// Only records carrying this `(key, value)` tag.
    pub(crate) tag: Option<(&'a str, &'a str)>,
    pub(crate) limit: usize,
}

/// What a one-off schedule runs: the task it creates when it fires.
#[derive(Clone, Debug, Default)]
pub(crate) struct OneOff {
    pub(crate) func_name: String,
    pub(crate) args_json: Option<Arc<[u8]>>,
    pub(crate) kwargs_json: Option<Arc<[u8]>>,
    pub(crate) encrypted_payload: Option<Arc<[u8]>>,
    pub(crate) queue: String,
    pub(crate) priority: Option<i64>,
    pub(crate) idempotency_key: Option<Arc<str>>,
    pub(crate) tags: Option<Tags>,
}

/// A stored one-off schedule (a row of `task_scheduled_once`).
#[derive(Clone, Debug)]
pub(crate) struct Scheduled {
    pub(crate) run_key: String,
    /// When it is due, µs since the epoch.
    pub(crate) fire_us: i64,
    /// When it was (last) saved.
    pub(crate) created_us: i64,
    pub(crate) task: OneOff,
}

/// Whether `path` names SQLite's private in-memory database rather than a file.
pub(crate) fn is_in_memory(path: &str) -> bool {
    path.is_empty() || path == ":memory:"
}

/// An open snapshot file.
pub(crate) struct Snapshot {
    path: String,
    writer: Mutex<Option<Connection>>,
    /// `None` for an in-memory database, which only the writer connection can see.
    reader: Option<Mutex<Option<Connection>>>,
    /// Frames in the WAL after the writer's last commit, as its WAL hook reports them; 0 once
    /// a checkpoint copied them all (and always for an in-memory database).
    wal_frames: Arc<AtomicI32>,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("path", &self.path)
            .finish()
    }
}

/// What to do about a damaged file or one that is not SQLite.
const CORRUPT_ADVICE: &str =
    "restore it from a backup, or move it aside to start with an empty history";

/// Whether SQLite found the file damaged or not a database at all.
fn is_corrupt(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt)
    )
}

/// How an SQLite error is turned into a core error.
type Describe = fn(&str, &str, &rusqlite::Error) -> CoreError;

/// What to tell the user about an SQLite error on `path`.
fn describe(path: &str, doing: &str, e: &rusqlite::Error) -> CoreError {
    if is_corrupt(e) {
        return CoreError::Snapshot(format!(
            "{path}: cannot {doing} the snapshot database: it is damaged or not a SQLite database \
             ({e}); {CORRUPT_ADVICE}"
        ));
    }
    let advice = match e.sqlite_error_code() {
        Some(ErrorCode::CannotOpen) => {
            "check that its directory exists and is writable, or pass another db_path"
        }
        Some(ErrorCode::ReadOnly) | Some(ErrorCode::PermissionDenied) => {
            "make the file and its directory writable, or pass another db_path"
        }
        Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => {
            "another process holds a lock on it; retry later or stop that process"
        }
        Some(ErrorCode::DiskFull) => "the disk is full; free some space",
        _ => "check the file, or move it aside to start with an empty history",
    };
    CoreError::Snapshot(format!(
        "{path}: cannot {doing} the snapshot database ({e}); {advice}"
    ))
}

/// [`describe`] while the store opens, where a damaged file gets its own error type.
fn describe_open(path: &str, doing: &str, e: &rusqlite::Error) -> CoreError {
    if is_corrupt(e) {
        return CoreError::CorruptSnapshot(format!(
            "{path}: the file is damaged or not a SQLite database ({e}); {CORRUPT_ADVICE}"
        ));
    }
    describe(path, doing, e)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves the connection usable; SQLite rolls back.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How long a statement waits for another connection's lock before it fails with "database
/// is locked". Twin: `BUSY_TIMEOUT` in `_pycore/snapshot.py`.
const BUSY_TIMEOUT: Duration = Duration::from_millis(5000);

/// The longest pause between two attempts of [`switch_to_wal`].
const WAL_RETRY_PAUSE_MAX: Duration = Duration::from_millis(20);

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "cache_size", CACHE_KIB)?;
    conn.pragma_update(None, "mmap_size", MMAP_BYTES)
}

/// Switches the file to WAL mode; returns the journal mode it is in afterwards.
///
/// On a file still in rollback mode (a new one), the switch reads the header under a shared
/// lock and then upgrades it to a write lock; SQLite fails that upgrade at once instead of
/// calling the busy handler, because two connections each holding a shared lock and
/// waiting for the other's would wait forever. So when several processes open a new file
/// together, all but one get "database is locked" here: they retry, backing off, for as long
/// as the busy timeout would have waited. Once the file is in WAL mode the switch writes
/// nothing and cannot meet that case. Twin: `_switch_to_wal` in `_pycore/snapshot.py`.
fn switch_to_wal(conn: &Connection) -> rusqlite::Result<String> {
    let deadline = Instant::now() + BUSY_TIMEOUT;
    let mut pause = Duration::from_millis(1);
    loop {
        match conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0)) {
            Err(e)
                if e.sqlite_error_code() == Some(ErrorCode::DatabaseBusy)
                    && Instant::now() + pause < deadline =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(WAL_RETRY_PAUSE_MAX);
            }
            done => return done,
        }
    }
}

/// The stored schema version (0 for an empty file), or `None` for a SQLite file of
/// something else (other tables and no `schema_version`).
fn schema_version(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    let (ours, others): (i64, i64) = conn.query_row(
        "SELECT count(*) FILTER (WHERE name = 'schema_version'), \
         count(*) FILTER (WHERE name <> 'schema_version' AND substr(name, 1, 7) <> 'sqlite_') \
         FROM sqlite_master WHERE type = 'table'",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    if ours == 0 {
        return Ok(if others == 0 { Some(0) } else { None });
    }
    let v: Option<i64> =
        conn.query_row("SELECT max(version) FROM schema_version", [], |r| r.get(0))?;
    Ok(Some(v.unwrap_or(0)))
}

fn foreign(path: &str) -> CoreError {
    CoreError::Snapshot(format!(
        "{path}: this SQLite file is not a fastapi-taskflow snapshot (it has other tables and no \
         schema_version); pass another db_path"
    ))
}

fn too_new(path: &str, version: i64) -> CoreError {
    CoreError::Snapshot(format!(
        "{path}: snapshot schema version {version} is newer than this fastapi_taskflow supports ({}); \
         upgrade fastapi-taskflow-rs, or pass another db_path",
        MIGRATIONS.len()
    ))
}

/// What one migration step found.
enum Step {
    Applied,
    /// Another process stored this version first.
    AlreadyAt(i64),
    Foreign,
}

fn migrate(path: &str, conn: &mut Connection) -> CoreResult<()> {
    let known = MIGRATIONS.len() as i64;
    let version = schema_version(conn)
        .map_err(|e| describe_open(path, "read", &e))?
        .ok_or_else(|| foreign(path))?;
    if version > known {
        return Err(too_new(path, version));
    }
    for target in (version + 1)..=known {
        let mut step = || -> rusqlite::Result<Step> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // Read inside the write transaction: another process may be migrating the file.
            let Some(current) = schema_version(&tx)? else {
                return Ok(Step::Foreign);
            };
            if current >= target {
                return Ok(Step::AlreadyAt(current));
            }
            tx.execute_batch(
                "CREATE TABLE IF NOT EXISTS schema_version(version INTEGER NOT NULL)",
            )?;
            tx.execute_batch(MIGRATIONS[(target - 1) as usize])?;
            tx.execute("DELETE FROM schema_version", [])?;
            tx.execute("INSERT INTO schema_version(version) VALUES (?1)", [target])?;
            tx.commit()?;
            Ok(Step::Applied)
        };
        match step() {
            Ok(Step::Foreign) => return Err(foreign(path)),
            Ok(Step::AlreadyAt(current)) if current > known => return Err(too_new(path, current)),
            Ok(_) => {}
            Err(e) => {
                return Err(describe_open(
                    path,
                    &format!("migrate (to version {target})"),
                    &e,
                ))
            }
        }
    }
    Ok(())
}

fn text(v: ValueRef<'_>) -> Option<String> {
    match v {
        ValueRef::Text(t) | ValueRef::Blob(t) => Some(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Integer(i) => Some(i.to_string()),
        ValueRef::Real(f) => Some(f.to_string()),
        ValueRef::Null => None,
    }
}

fn blob(v: ValueRef<'_>) -> Option<Arc<[u8]>> {
    match v {
        ValueRef::Text(t) | ValueRef::Blob(t) => Some(Arc::from(t)),
        _ => None,
    }
}

fn int(v: ValueRef<'_>) -> Option<i64> {
    match v {
        ValueRef::Integer(i) => Some(i),
        ValueRef::Real(f) => Some(f as i64),
        _ => None,
    }
}

fn arc_text(v: ValueRef<'_>, default: &str) -> Arc<str> {
    Arc::from(text(v).as_deref().unwrap_or(default))
}

/// Tags parsed from `tags_json`, keeping the stored order.
struct OrderedTags(Vec<(Box<str>, Box<str>)>);

impl<'de> Deserialize<'de> for OrderedTags {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OrderedTags;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object of tags")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedTags, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, serde_json::Value>()? {
                    let v = match v {
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    };
                    out.push((k.into_boxed_str(), v.into_boxed_str()));
                }
                Ok(OrderedTags(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Rows of finished records that ended before `?1`, found through the creation index: a
/// row that ended before `?1` was created before it. The unary plus keeps the planner off
/// the status index, which would walk every finished row of a status.
/// Twin: `_ENDED_BEFORE` in `_pycore/snapshot.py`.
fn ended_before_condition() -> String {
    format!("created_us < ?1 AND end_us < ?1 AND +status IN {FINISHED_SQL}")
}

/// The SQL and arguments of a page read (see [`Snapshot::page`]).
fn page_query(q: &PageQuery<'_>) -> (String, Vec<Value>) {
    let mut args: Vec<Value> = Vec::with_capacity(7);
    let mut conds: Vec<&str> = Vec::with_capacity(5);
    // With a tag, the walk goes down the tag table's key (same order, same cursor) and
    // joins each hit to its history row.
    let (mut sql, order) = match q.tag {
        Some((key, value)) => {
            conds.push("t.key = ?");
            conds.push("t.value = ?");
            args.push(Value::Text(key.to_owned()));
            args.push(Value::Text(value.to_owned()));
            (
                format!(
                    "SELECT {} FROM task_tags AS t JOIN task_history AS h ON h.task_id = t.task_id",
                    h_columns()
                ),
                " ORDER BY t.created_us DESC, t.task_id DESC LIMIT ?",
            )
        }
        None => (
            format!("SELECT {} FROM task_history AS h", h_columns()),
            " ORDER BY h.created_us DESC, h.task_id DESC LIMIT ?",
        ),
    };
    if let Some((created_us, task_id)) = q.before {
        conds.push(if q.tag.is_some() {
            "(t.created_us, t.task_id) < (?, ?)"
        } else {
            "(h.created_us, h.task_id) < (?, ?)"
        });
        args.push(Value::Integer(created_us));
        args.push(Value::Text(task_id.to_owned()));
    }
    if let Some(status) = q.status {
        // Successes are not in the status index; told `status = 'success'` (a value it may
        // plan with), SQLite would rather scan the table and sort it than walk the creation
        // index and sort only ties, so the `+` keeps the term off every index.
        if status == Status::Success {
            conds.push("+h.status = ?");
        } else {
            conds.extend(["h.status = ?", NOT_SUCCESS]);
        }
        args.push(Value::Text(status.as_str().to_owned()));
    }
    if let Some(name) = q.func_name {
        conds.push("h.func_name = ?");
        args.push(Value::Text(name.to_owned()));
    }
    if !conds.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conds.join(" AND "));
    }
    sql.push_str(order);
    args.push(Value::Integer(i64::try_from(q.limit).unwrap_or(i64::MAX)));
    (sql, args)
}

/// Appends the records `sql` selects (the [`COLUMNS`]; rows of unknown status are skipped).
fn collect_rows(
    tx: &Transaction<'_>,
    sql: &str,
    args: impl rusqlite::Params,
    out: &mut Vec<DiskRecord>,
) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare(sql)?;
    let mut rows = stmt.query(args)?;
    while let Some(row) = rows.next()? {
        if let Some(r) = row_to_record(row)? {
            out.push(r);
        }
    }
    Ok(())
}

/// Deletes the history rows matching `condition` (one parameter, `?1`) with their tag rows.
fn delete_where(
    tx: &Transaction<'_>,
    condition: &str,
    arg: Value,
    out: &mut Vec<DeletedRow>,
) -> rusqlite::Result<()> {
    let mut select = tx.prepare_cached(&format!(
        "SELECT task_id, func_name, status, created_us, start_us, end_us, tags_json \
         FROM task_history WHERE {condition}"
    ))?;
    let victims = select
        .query_map([arg], |r| {
            let row = MetricRow {
                func_name: text(r.get_ref(1)?).unwrap_or_default(),
                status: text(r.get_ref(2)?).as_deref().and_then(Status::parse),
                start_us: int(r.get_ref(4)?),
                end_us: int(r.get_ref(5)?),
            };
            let task_id = text(r.get_ref(0)?).unwrap_or_default();
            Ok((task_id, row, int(r.get_ref(3)?), text(r.get_ref(6)?)))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    // The tag table's key leads with the tag, so its rows go one by one by primary key.
    let mut delete_tag = tx.prepare_cached(
        "DELETE FROM task_tags WHERE key = ?1 AND value = ?2 AND created_us = ?3 AND task_id = ?4",
    )?;
    let mut delete_row = tx.prepare_cached("DELETE FROM task_history WHERE task_id = ?1")?;
    for (task_id, row, created_us, tags_json) in victims {
        let tags = tags_json
            .and_then(|t| serde_json::from_str::<OrderedTags>(&t).ok())
            .map(|t| t.0)
            .unwrap_or_default();
        for (key, value) in &tags {
            delete_tag.execute(params![&**key, &**value, created_us, task_id])?;
        }
        if delete_row.execute([&task_id])? > 0 {
            out.push(DeletedRow { task_id, row });
        }
    }
    Ok(())
}

/// A stored row of [`COLUMNS`], read leniently: a column holding a value of another type
/// (written by some other program) is read as its text or number where that makes sense,
/// else as the column's default.
fn read_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<TaskRow> {
    Ok(TaskRow {
        task_id: text(row.get_ref(0)?).unwrap_or_default(),
        func_name: arc_text(row.get_ref(1)?, ""),
        status: text(row.get_ref(2)?).unwrap_or_default(),
        created_us: int(row.get_ref(3)?).unwrap_or(0),
        start_us: int(row.get_ref(4)?),
        end_us: int(row.get_ref(5)?),
        retries_used: int(row.get_ref(6)?).unwrap_or(0),
        error: text(row.get_ref(7)?).map(Arc::from),
        stacktrace: text(row.get_ref(8)?).map(Arc::from),
        logs_json: text(row.get_ref(9)?).unwrap_or_else(|| "[]".to_owned()),
        tags_json: text(row.get_ref(10)?).unwrap_or_else(|| "{}".to_owned()),
        source: arc_text(row.get_ref(11)?, "manual"),
        priority: int(row.get_ref(12)?),
        executor: text(row.get_ref(13)?).map(Arc::from),
        queue: arc_text(row.get_ref(14)?, "default"),
        idempotency_key: text(row.get_ref(15)?).map(Arc::from),
        args_json: blob(row.get_ref(16)?),
        kwargs_json: blob(row.get_ref(17)?),
        logs_dropped: int(row.get_ref(18)?).unwrap_or(0),
        encrypted_payload: blob(row.get_ref(19)?),
        retry_of: text(row.get_ref(20)?).map(Arc::from),
        owner: text(row.get_ref(21)?),
    })
}

/// A stored row as a record; `None` when the row is unusable (unknown status).
fn row_to_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<Option<DiskRecord>> {
    Ok(read_row(row)?.into_record())
}

/// Tags stored as JSON text, in their stored order; `None` when empty or unreadable.
fn parse_tags(json: &str) -> Option<Tags> {
    serde_json::from_str::<OrderedTags>(json)
        .ok()
        .filter(|t| !t.0.is_empty())
        .map(|t| Arc::from(t.0))
}

/// A row of [`SCHEDULED_COLUMNS`].
fn row_to_scheduled(row: &rusqlite::Row<'_>) -> rusqlite::Result<Scheduled> {
    Ok(Scheduled {
        run_key: text(row.get_ref(0)?).unwrap_or_default(),
        fire_us: int(row.get_ref(2)?).unwrap_or(0),
        created_us: int(row.get_ref(3)?).unwrap_or(0),
        task: OneOff {
            func_name: text(row.get_ref(1)?).unwrap_or_default(),
            args_json: blob(row.get_ref(4)?),
            kwargs_json: blob(row.get_ref(5)?),
            encrypted_payload: blob(row.get_ref(6)?),
            queue: text(row.get_ref(7)?).unwrap_or_else(|| "default".to_owned()),
            priority: int(row.get_ref(8)?),
            idempotency_key: text(row.get_ref(9)?).map(Arc::from),
            tags: text(row.get_ref(10)?).as_deref().and_then(parse_tags),
        },
    })
}

/// Ids of the stored holders of idempotency `key` (see [`KEY_HOLDERS`]).
fn key_holders_in(
    conn: &Connection,
    key: &str,
    created_after: Option<i64>,
) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(KEY_HOLDERS)?;
    let rows = stmt.query_map(params![key, created_after.unwrap_or(i64::MIN)], |r| {
        Ok(text(r.get_ref(0)?))
    })?;
    rows.filter_map(Result::transpose).collect()
}

/// The record of a stored row that `adopt` takes over for `me`: an unfinished row owned by
/// anyone else. The file's row, not the one the backend handed out: a row this file wrote is
/// at least as fresh here as in the backend (the backend only holds what was replicated of
/// it). A row this store owns is its own already; a finished row is done.
fn take_over(row: TaskRow, me: &str) -> Option<Record> {
    if row.owner.as_deref() == Some(me) {
        return None;
    }
    match Status::parse(&row.status)? {
        status @ (Status::Pending | Status::Running) => Some(row.into_record_as(status).record),
        _ => None,
    }
}

/// See [`SYNC_SEQ_HIGH`].
fn sync_seq_high(tx: &Transaction<'_>) -> rusqlite::Result<i64> {
    tx.prepare_cached(SYNC_SEQ_HIGH)?
        .query_row([], |r| r.get(0))
}

/// Whether a record's row holds only what every finished task has: no owner (it is
/// finished), error, stacktrace, logs, tags, priority, idempotency key, encrypted arguments
/// or retry origin. Such a row is written with [`UPSERT_PLAIN`].
fn is_plain(r: &Record) -> bool {
    let (i, p) = (&r.info, &r.progress);
    p.status.is_finished()
        && p.error.is_none()
        && p.stacktrace.is_none()
        && r.logs.is_empty()
        && r.logs_dropped == 0
        && i.tags.as_deref().unwrap_or_default().is_empty()
        && i.priority.is_none()
        && i.idempotency_key.is_none()
        && i.encrypted_payload.is_none()
        && i.retry_of.is_none()
}

/// Upserts `records` with their tag rows; unfinished records are journal rows owned by
/// `owner`, finished ones have no owner. Each row gets the next `sync_seq`, in the order of
/// `(created_us, id)`. Called at most once per transaction.
fn upsert_records(
    tx: &Transaction<'_>,
    records: &[(u128, Record)],
    owner: &str,
) -> rusqlite::Result<()> {
    let mut logs_buf = Vec::with_capacity(256);
    let mut tags_buf = Vec::with_capacity(64);
    let mut seq = sync_seq_high(tx)?;
    let mut stmt = tx.prepare_cached(UPSERT)?;
    let mut plain_stmt = tx.prepare_cached(UPSERT_PLAIN)?;
    let mut tag_stmt = tx.prepare_cached(INSERT_TAG)?;
    // In key order of the three time-leading indexes, each insert lands at (or near) their
    // right edge, where SQLite skips the descent from the root, and the pages it touches
    // stay hot; only the primary key is random.
    let mut sorted: Vec<&(u128, Record)> = records.iter().collect();
    sorted.sort_unstable_by_key(|(id, r)| (r.info.created_us, *id));
    for (id, r) in sorted {
        seq += 1;
        let id_text = UuidText::new(*id);
        let (i, p) = (&r.info, &r.progress);
        if is_plain(r) {
            plain_stmt.execute(params![
                id_text.as_str(),
                &*i.func_name,
                p.status.as_str(),
                i.created_us,
                p.start_us,
                p.end_us,
                p.retries_used,
                &*i.source,
                i.executor.as_deref(),
                &*i.queue,
                i.args_json.as_deref(),
                i.kwargs_json.as_deref(),
                seq,
            ])?;
            continue;
        }
        logs_buf.clear();
        write_logs(&mut logs_buf, &r.logs);
        tags_buf.clear();
        write_tags(&mut tags_buf, r.info.tags.as_deref());
        // Both buffers hold JSON built from `&str`s, hence valid UTF-8.
        let logs_json = std::str::from_utf8(&logs_buf).unwrap_or("[]");
        let tags_json = std::str::from_utf8(&tags_buf).unwrap_or("{}");
        let row_owner = (!p.status.is_finished()).then_some(owner);
        stmt.execute(params![
            id_text.as_str(),
            &*i.func_name,
            p.status.as_str(),
            i.created_us,
            p.start_us,
            p.end_us,
            p.retries_used,
            p.error.as_deref(),
            p.stacktrace.as_deref(),
            logs_json,
            tags_json,
            &*i.source,
            i.priority,
            i.executor.as_deref(),
            &*i.queue,
            i.idempotency_key.as_deref(),
            i.args_json.as_deref(),
            i.kwargs_json.as_deref(),
            i64::try_from(r.logs_dropped).unwrap_or(i64::MAX),
            i.encrypted_payload.as_deref(),
            i.retry_of.as_deref(),
            row_owner,
            seq,
        ])?;
        for (key, value) in i.tags.as_deref().unwrap_or_default() {
            tag_stmt.execute(params![id_text.as_str(), &**key, &**value, i.created_us])?;
        }
    }
    Ok(())
}

impl Snapshot {
    /// Opens (creating if needed) and migrates the file at `path`.
    pub(crate) fn open(path: &str) -> CoreResult<Snapshot> {
        let in_memory = is_in_memory(path);
        let mut writer = Connection::open(path).map_err(|e| describe_open(path, "open", &e))?;
        configure(&writer).map_err(|e| describe_open(path, "open", &e))?;
        if !in_memory {
            let mode = switch_to_wal(&writer).map_err(|e| describe_open(path, "open", &e))?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(CoreError::Snapshot(format!(
                    "{path}: cannot switch the snapshot database to WAL mode (it stays in {mode:?} mode); \
                     make the file and its directory writable, or pass another db_path"
                )));
            }
        }
        if writer.is_readonly(MAIN_DB).unwrap_or(false) {
            return Err(CoreError::Snapshot(format!(
                "{path}: the snapshot database is read-only; make the file and its directory writable, \
                 or pass another db_path"
            )));
        }
        let wal_frames = Arc::new(AtomicI32::new(0));
        if !in_memory {
            // The hook replaces SQLite's auto-checkpoint on this connection (see
            // CHECKPOINT_FRAMES); `in_write_tx` checkpoints instead.
            let frames = Arc::clone(&wal_frames);
            writer
                .wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, pages| {
                    frames.store(pages, Ordering::Relaxed);
                    Ok(())
                }))
                .map_err(|e| describe_open(path, "open", &e))?;
            writer
                .pragma_update(None, "journal_size_limit", WAL_KEEP_BYTES)
                .map_err(|e| describe_open(path, "open", &e))?;
        }
        migrate(path, &mut writer)?;
        let reader = if in_memory {
            None
        } else {
            let conn = Connection::open(path).map_err(|e| describe_open(path, "open", &e))?;
            configure(&conn).map_err(|e| describe_open(path, "open", &e))?;
            Some(Mutex::new(Some(conn)))
        };
        Ok(Snapshot {
            path: path.to_owned(),
            writer: Mutex::new(Some(writer)),
            reader,
            wal_frames,
        })
    }

    pub(crate) fn path(&self) -> &str {
        &self.path
    }

    fn closed(&self) -> CoreError {
        CoreError::Snapshot(format!(
            "{}: the snapshot database is closed; create a new TaskStore to open it again",
            self.path
        ))
    }

    /// Runs `f` on the reader connection; `Ok(None)` once the file is closed.
    fn with_reader<T>(
        &self,
        doing: &str,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> CoreResult<Option<T>> {
        self.read_with(describe, doing, f)
    }

    fn read_with<T>(
        &self,
        describe: Describe,
        doing: &str,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> CoreResult<Option<T>> {
        let guard = lock(self.reader.as_ref().unwrap_or(&self.writer));
        match guard.as_ref() {
            None => Ok(None),
            Some(conn) => f(conn)
                .map(Some)
                .map_err(|e| describe(&self.path, doing, &e)),
        }
    }

    /// Runs `f` in one write transaction (`BEGIN IMMEDIATE`) and commits it, then checkpoints
    /// the WAL if it has grown to [`CHECKPOINT_FRAMES`].
    fn in_write_tx<T>(
        &self,
        doing: &str,
        f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T>,
    ) -> CoreResult<T> {
        let mut guard = lock(&self.writer);
        let conn = guard.as_mut().ok_or_else(|| self.closed())?;
        let result = (|| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })();
        let out = result.map_err(|e| describe(&self.path, doing, &e))?;
        if self.wal_frames.load(Ordering::Relaxed) >= CHECKPOINT_FRAMES {
            self.checkpoint(conn);
        }
        Ok(out)
    }

    /// Copies the WAL into the main file, passively: it never waits, and leaves the frames a
    /// reader still needs to the next write's call. The writes are committed already, so a
    /// checkpoint that fails loses nothing (SQLite's auto-checkpoint ignores failures too).
    fn checkpoint(&self, conn: &Connection) {
        let all_copied = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok(r.get::<_, i64>(1)? == r.get::<_, i64>(2)?)
        });
        if matches!(all_copied, Ok(true)) {
            self.wal_frames.store(0, Ordering::Relaxed);
        }
    }

    /// Calls `each` for every stored record's name, status and times (for metrics at open,
    /// so a damaged page met here is reported as a damaged file).
    pub(crate) fn for_each_metric_row(&self, mut each: impl FnMut(MetricRow)) -> CoreResult<()> {
        self.read_with(describe_open, "read", |conn| {
            let mut stmt =
                conn.prepare("SELECT func_name, status, start_us, end_us FROM task_history ORDER BY created_us, task_id")?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                each(MetricRow {
                    func_name: text(row.get_ref(0)?).unwrap_or_default(),
                    status: text(row.get_ref(1)?).as_deref().and_then(Status::parse),
                    start_us: int(row.get_ref(2)?),
                    end_us: int(row.get_ref(3)?),
                });
            }
            Ok(())
        })
        .map(|_| ())
    }

    /// Upserts `records` in one transaction; returns how many were written. Unfinished
    /// records are journal rows owned by `owner`; finished ones have no owner.
    pub(crate) fn write(&self, records: &[(u128, Record)], owner: &str) -> CoreResult<usize> {
        if records.is_empty() {
            return self.ensure_open().map(|()| 0);
        }
        self.in_write_tx("write", |tx| {
            upsert_records(tx, records, owner)?;
            Ok(records.len())
        })
    }

    /// Ids of the stored records holding the idempotency `key`: pending, running or
    /// succeeded, created after `created_after` (µs; `None` = ever), newest first. Empty
    /// once closed.
    pub(crate) fn key_holders(
        &self,
        key: &str,
        created_after: Option<i64>,
    ) -> CoreResult<Vec<String>> {
        self.with_reader("read", |conn| key_holders_in(conn, key, created_after))
            .map(Option::unwrap_or_default)
    }

    /// Takes over the unfinished rows of dead owners (see [`Claim`]) in one write
    /// transaction, so two stores on one file never both take a row.
    pub(crate) fn claim(&self, me: &str, is_dead: impl Fn(&str) -> bool) -> CoreResult<Claim> {
        let sql = format!("SELECT {COLUMNS} FROM task_history WHERE {UNFINISHED}");
        self.in_write_tx("claim unfinished rows in", |tx| {
            let owners: Vec<String> = {
                let mut stmt = tx.prepare(&format!(
                    "SELECT DISTINCT owner FROM task_history WHERE owner IS NOT NULL AND owner <> ?1 \
                     AND {UNFINISHED}"
                ))?;
                let rows = stmt.query_map([me], |r| Ok(text(r.get_ref(0)?)))?;
                rows.filter_map(Result::transpose)
                    .collect::<rusqlite::Result<_>>()?
            };
            let dead_owners: Vec<String> = owners.into_iter().filter(|o| is_dead(o)).collect();
            let mut records = Vec::new();
            // Rows without an owner were written by a version before the journal.
            collect_rows(tx, &format!("{sql} AND owner IS NULL"), [], &mut records)?;
            for owner in &dead_owners {
                collect_rows(tx, &format!("{sql} AND owner = ?1"), [owner], &mut records)?;
            }
            // Memory holds records by UUID: rows of other ids (never written by either core)
            // are left alone rather than taken and never run.
            records.retain(|r| parse_uuid(&r.task_id).is_some());
            // Numbered oldest first, as the Python core numbers them.
            records.sort_unstable_by(|a, b| {
                (a.created_us, &a.task_id).cmp(&(b.created_us, &b.task_id))
            });
            let mut seq = sync_seq_high(tx)?;
            let mut update = tx
                .prepare("UPDATE task_history SET owner = ?1, sync_seq = ?2 WHERE task_id = ?3")?;
            for r in &records {
                seq += 1;
                update.execute(params![me, seq, r.task_id])?;
            }
            Ok(Claim {
                records,
                dead_owners,
            })
        })
    }

    /// Up to `limit` rows with a `sync_seq` above `after`, in `sync_seq` order, each with
    /// its number: a walk of `task_history_sync`. Twin: `_CHANGED` in `_pycore/snapshot.py`.
    pub(crate) fn changed_rows(&self, after: i64, limit: i64) -> CoreResult<Vec<(TaskRow, i64)>> {
        let sql = format!(
            "SELECT {COLUMNS}, sync_seq FROM task_history WHERE sync_seq > ?1 ORDER BY sync_seq LIMIT ?2"
        );
        self.read_open("read", |conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![after, limit], |r| Ok((read_row(r)?, r.get(22)?)))?;
            rows.collect()
        })
    }

    /// Makes `records` journal rows owned by `owner`, in one transaction: an id without a row
    /// is inserted; an id whose row is unfinished and owned by anyone else is taken over, the
    /// file's row (not the given one) rewritten as `owner`'s; any other id is left alone.
    pub(crate) fn adopt(&self, records: Vec<(u128, Record)>, owner: &str) -> CoreResult<Adoption> {
        if records.is_empty() {
            return self.ensure_open().map(|()| Adoption::default());
        }
        let sql = format!("SELECT {COLUMNS} FROM task_history WHERE task_id = ?1");
        self.in_write_tx("adopt rows into", |tx| {
            let mut adoption = Adoption::default();
            {
                let mut stored = tx.prepare_cached(&sql)?;
                for (id, record) in records {
                    let row = stored
                        .query_row([UuidText::new(id).as_str()], read_row)
                        .optional()?;
                    match row {
                        None => adoption.records.push((id, record)),
                        Some(row) => {
                            if let Some(theirs) = take_over(row, owner) {
                                adoption.taken_over.insert(id);
                                adoption.records.push((id, theirs));
                            }
                        }
                    }
                }
            }
            if !adoption.records.is_empty() {
                upsert_records(tx, &adoption.records, owner)?;
            }
            adoption
                .records
                .sort_unstable_by_key(|(id, r)| (r.info.created_us, *id));
            Ok(adoption)
        })
    }

    /// Deletes the rows `doomed` selects, with their tags, in one transaction; returns them.
    pub(crate) fn delete(&self, doomed: &[Doomed<'_>]) -> CoreResult<Vec<DeletedRow>> {
        self.in_write_tx("delete from", |tx| {
            let high = sync_seq_high(tx)?;
            let mut deleted = Vec::new();
            for d in doomed {
                let (condition, arg) = match d {
                    Doomed::EndedBefore(us) => (ended_before_condition(), Value::Integer(*us)),
                    Doomed::Id(id) => ("task_id = ?1".to_owned(), Value::Text((*id).to_owned())),
                    Doomed::FinishedId(id) => (
                        format!("task_id = ?1 AND status IN {FINISHED_SQL}"),
                        Value::Text((*id).to_owned()),
                    ),
                };
                delete_where(tx, &condition, arg, &mut deleted)?;
            }
            if !deleted.is_empty() {
                tx.prepare_cached(KEEP_SYNC_FLOOR)?.execute([high])?;
            }
            Ok(deleted)
        })
    }

    /// The stored record with this id, if any (`None` too once closed).
    pub(crate) fn get(&self, task_id: &str) -> CoreResult<Option<DiskRecord>> {
        let sql = format!("SELECT {COLUMNS} FROM task_history WHERE task_id = ?1");
        self.with_reader("read", |conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            Ok(stmt
                .query_row([task_id], row_to_record)
                .optional()?
                .flatten())
        })
        .map(Option::flatten)
    }

    /// Up to `q.limit` stored records below `q.before`, newest first (empty once closed).
    pub(crate) fn page(&self, q: &PageQuery<'_>) -> CoreResult<Vec<DiskRecord>> {
        let (sql, args) = page_query(q);
        self.with_reader("read", |conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                if let Some(r) = row_to_record(row)? {
                    out.push(r);
                }
            }
            Ok(out)
        })
        .map(Option::unwrap_or_default)
    }

    /// Runs `f` on the reader connection; the error of a closed file once it is.
    fn read_open<T>(
        &self,
        doing: &str,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> CoreResult<T> {
        self.with_reader(doing, f)?.ok_or_else(|| self.closed())
    }

    /// Takes the schedule lock `key` until `expires_us` unless someone holds it: locks that
    /// expired by `now_us` go first. True when this call took it.
    pub(crate) fn acquire_lock(&self, key: &str, now_us: i64, expires_us: i64) -> CoreResult<bool> {
        self.in_write_tx("take a schedule lock in", |tx| {
            tx.prepare_cached("DELETE FROM task_schedule_locks WHERE expires_us <= ?1")?
                .execute([now_us])?;
            let inserted = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO task_schedule_locks (lock_key, expires_us) VALUES (?1, ?2)",
                )?
                .execute(params![key, expires_us])?;
            Ok(inserted == 1)
        })
    }

    /// Saves (or reschedules) the one-off `entry`.
    pub(crate) fn save_scheduled(&self, entry: &Scheduled) -> CoreResult<()> {
        let mut tags_buf = Vec::with_capacity(64);
        let t = &entry.task;
        write_tags(&mut tags_buf, t.tags.as_deref());
        // JSON built from `&str`s, hence valid UTF-8.
        let tags_json = std::str::from_utf8(&tags_buf).unwrap_or("{}");
        self.in_write_tx("save a one-off schedule in", |tx| {
            tx.prepare_cached(SAVE_SCHEDULED)?.execute(params![
                entry.run_key,
                t.func_name,
                entry.fire_us,
                entry.created_us,
                t.args_json.as_deref(),
                t.kwargs_json.as_deref(),
                t.encrypted_payload.as_deref(),
                t.queue,
                t.priority,
                t.idempotency_key.as_deref(),
                tags_json,
            ])?;
            Ok(())
        })
    }

    /// Up to `limit` one-offs due at `before_us`, by `(fire_us, run_key)`.
    pub(crate) fn load_due(&self, before_us: i64, limit: i64) -> CoreResult<Vec<Scheduled>> {
        let sql = format!(
            "SELECT {SCHEDULED_COLUMNS} FROM task_scheduled_once WHERE fire_us <= ?1 \
             ORDER BY fire_us, run_key LIMIT ?2"
        );
        self.read_open("read", |conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![before_us, limit], row_to_scheduled)?;
            rows.collect()
        })
    }

    /// Deletes the one-off `run_key`; true when there was one.
    pub(crate) fn delete_scheduled(&self, run_key: &str) -> CoreResult<bool> {
        self.in_write_tx("delete a one-off schedule from", |tx| {
            let deleted = tx
                .prepare_cached("DELETE FROM task_scheduled_once WHERE run_key = ?1")?
                .execute([run_key])?;
            Ok(deleted > 0)
        })
    }

    /// Fires the one-off `run_key` in one write transaction: reads and deletes its row,
    /// finds the stored holders of its idempotency key (created after `created_after`), and
    /// lets `decide` say what the firing made and which record to journal, owned by `owner`.
    /// `Ok(None)` when the row is gone. Either all of it reaches the file or none of it.
    pub(crate) fn fire<T>(
        &self,
        run_key: &str,
        created_after: Option<i64>,
        owner: &str,
        decide: impl FnOnce(Scheduled, Vec<String>) -> (T, Option<(u128, Record)>),
    ) -> CoreResult<Option<T>> {
        let select =
            format!("SELECT {SCHEDULED_COLUMNS} FROM task_scheduled_once WHERE run_key = ?1");
        self.in_write_tx("fire a one-off schedule in", |tx| {
            let Some(entry) = tx
                .prepare_cached(&select)?
                .query_row([run_key], row_to_scheduled)
                .optional()?
            else {
                return Ok(None);
            };
            tx.prepare_cached("DELETE FROM task_scheduled_once WHERE run_key = ?1")?
                .execute([run_key])?;
            let on_disk = match entry.task.idempotency_key.as_deref() {
                Some(key) => key_holders_in(tx, key, created_after)?,
                None => Vec::new(),
            };
            let (fired, journal) = decide(entry, on_disk);
            if let Some(record) = journal {
                upsert_records(tx, std::slice::from_ref(&record), owner)?;
            }
            Ok(Some(fired))
        })
    }

    /// Sets the metadata `key` to `value`.
    pub(crate) fn save_metadata(&self, key: &str, value: &str) -> CoreResult<()> {
        self.in_write_tx("write metadata to", |tx| {
            tx.prepare_cached("INSERT OR REPLACE INTO task_metadata (key, value) VALUES (?1, ?2)")?
                .execute([key, value])?;
            Ok(())
        })
    }

    /// The metadata value of `key`, if set.
    pub(crate) fn load_metadata(&self, key: &str) -> CoreResult<Option<String>> {
        self.read_open("read", |conn| {
            conn.prepare_cached("SELECT value FROM task_metadata WHERE key = ?1")?
                .query_row([key], |r| Ok(text(r.get_ref(0)?)))
                .optional()
                .map(Option::flatten)
        })
    }

    /// Closes both connections; later writes fail and reads find nothing.
    pub(crate) fn close(&self) {
        if let Some(reader) = &self.reader {
            drop(lock(reader).take());
        }
        drop(lock(&self.writer).take());
    }

    /// The error of a closed file, if it is.
    pub(crate) fn ensure_open(&self) -> CoreResult<()> {
        match lock(&self.writer).is_none() {
            true => Err(self.closed()),
            false => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::record::tests::sample;

    fn tmp() -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("h.db").to_string_lossy().into_owned();
        (dir, path)
    }

    /// The version a file has once opened.
    fn current() -> Option<i64> {
        i64::try_from(MIGRATIONS.len()).ok()
    }

    #[test]
    fn creates_schema_and_reopens() {
        let (_d, path) = tmp();
        let s = Snapshot::open(&path).expect("open");
        let conn = Connection::open(&path).expect("conn");
        assert_eq!(schema_version(&conn).expect("version"), current());
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .expect("mode");
        assert_eq!(mode, "wal");
        drop(s);
        Snapshot::open(&path).expect("reopen");
    }

    #[test]
    fn writes_reads_and_upserts() {
        let (_d, path) = tmp();
        let s = Snapshot::open(&path).expect("open");
        let mut a = sample();
        let ai = Arc::make_mut(&mut a.info);
        ai.args_json = Some(Arc::from(&b"[1,2]"[..]));
        ai.idempotency_key = Some("k1".into());
        let mut b = sample();
        let bi = Arc::make_mut(&mut b.info);
        bi.created_us += 1;
        bi.tags = None;
        b.progress.status = Status::Failed;
        assert_eq!(
            s.write(&[(1, a.clone()), (2, b.clone())], "me")
                .expect("write"),
            2
        );
        a.logs.push_back("later".into());
        s.write(&[(1, a.clone())], "me").expect("upsert");
        let id1 = UuidText::new(1);
        let got = s.get(id1.as_str()).expect("get").expect("found");
        assert_eq!(got.task_id, id1.as_str());
        assert_eq!(got.record.logs.len(), 3);
        assert_eq!(got.record.info.args_json.as_deref(), Some(&b"[1,2]"[..]));
        assert_eq!(got.record.info.idempotency_key.as_deref(), Some("k1"));
        let tags = got.record.info.tags.clone().expect("tags");
        assert_eq!(&*tags[0].0, "k");
        assert_eq!(&*tags[1].0, "a");
        assert!(s.get("nope").expect("get").is_none());

        let all = s
            .page(&PageQuery {
                limit: 10,
                ..Default::default()
            })
            .expect("page");
        assert_eq!(
            all.iter().map(|r| r.task_id.clone()).collect::<Vec<_>>(),
            vec![
                UuidText::new(2).as_str().to_owned(),
                id1.as_str().to_owned()
            ]
        );
        let failed = s
            .page(&PageQuery {
                status: Some(Status::Failed),
                limit: 10,
                ..Default::default()
            })
            .expect("page");
        assert_eq!(failed.len(), 1);
        let before = s
            .page(&PageQuery {
                before: Some((b.info.created_us, UuidText::new(2).as_str())),
                limit: 10,
                ..Default::default()
            })
            .expect("page");
        assert_eq!(before.len(), 1);
        assert_eq!(before[0].task_id, id1.as_str());
        let by_name = s
            .page(&PageQuery {
                func_name: Some("other"),
                limit: 10,
                ..Default::default()
            })
            .expect("page");
        assert!(by_name.is_empty());

        let mut rows = 0;
        s.for_each_metric_row(|r| {
            rows += 1;
            assert_eq!(r.func_name, "send_email");
            assert!(r.status.is_some() && r.start_us.is_some());
        })
        .expect("metrics");
        assert_eq!(rows, 2);

        s.close();
        assert!(s.ensure_open().is_err());
        assert!(
            matches!(s.write(&[(3, sample())], "me"), Err(CoreError::Snapshot(m)) if m.contains("closed"))
        );
        assert!(s.get(id1.as_str()).expect("get").is_none());
    }

    #[test]
    fn refuses_files_it_cannot_use() {
        let (d, path) = tmp();
        std::fs::write(&path, vec![b'x'; 4096]).expect("junk");
        let err = Snapshot::open(&path).expect_err("junk");
        assert!(
            matches!(&err, CoreError::CorruptSnapshot(m) if m.contains(&path)
                && m.contains("not a SQLite database")
                && m.contains("restore it from a backup, or move it aside")),
            "{err}"
        );

        let missing = d
            .path()
            .join("no/such/dir/h.db")
            .to_string_lossy()
            .into_owned();
        let err = Snapshot::open(&missing).expect_err("missing dir");
        assert!(
            matches!(&err, CoreError::Snapshot(m) if m.contains(&missing) && m.contains("directory")),
            "{err}"
        );

        let newer = d.path().join("new.db").to_string_lossy().into_owned();
        drop(Snapshot::open(&newer).expect("open"));
        let conn = Connection::open(&newer).expect("conn");
        conn.execute("UPDATE schema_version SET version = 99", [])
            .expect("bump");
        drop(conn);
        let err = Snapshot::open(&newer).expect_err("newer");
        assert!(
            matches!(&err, CoreError::Snapshot(m) if m.contains("newer") && m.contains("99")),
            "{err}"
        );

        let other = d.path().join("other.db").to_string_lossy().into_owned();
        let conn = Connection::open(&other).expect("conn");
        conn.execute_batch("CREATE TABLE users(id INTEGER)")
            .expect("create");
        drop(conn);
        let err = Snapshot::open(&other).expect_err("foreign");
        assert!(
            matches!(&err, CoreError::Snapshot(m) if m.contains("not a fastapi-taskflow snapshot")),
            "{err}"
        );
    }

    #[test]
    fn in_memory_database_reads_through_the_writer() {
        let s = Snapshot::open(":memory:").expect("open");
        s.write(&[(7, sample())], "me").expect("write");
        assert!(s.get(UuidText::new(7).as_str()).expect("get").is_some());
    }

    #[test]
    fn tolerates_rows_from_other_writers() {
        let (_d, path) = tmp();
        drop(Snapshot::open(&path).expect("open"));
        let conn = Connection::open(&path).expect("conn");
        conn.execute_batch(
            "INSERT INTO task_history(task_id, func_name, status, created_us, logs_json, tags_json, args_json) \
             VALUES ('custom-id', 'f', 'success', 5, '[\"x\", \"y\"]', '{\"b\": \"1\", \"a\": 2}', 'text-args'); \
             INSERT INTO task_history(task_id, func_name, status, created_us) VALUES ('odd', 'f', 'weird', 6);",
        )
        .expect("insert");
        drop(conn);
        let s = Snapshot::open(&path).expect("open");
        let r = s.get("custom-id").expect("get").expect("found");
        assert_eq!(r.record.logs.len(), 2);
        let tags = r.record.info.tags.clone().expect("tags");
        assert_eq!((&*tags[0].0, &*tags[0].1), ("b", "1"));
        assert_eq!((&*tags[1].0, &*tags[1].1), ("a", "2"));
        assert_eq!(r.record.info.args_json.as_deref(), Some(&b"text-args"[..]));
        assert!(s.get("odd").expect("get").is_none());
        assert_eq!(
            s.page(&PageQuery {
                limit: 5,
                ..Default::default()
            })
            .expect("page")
            .len(),
            1
        );
    }

    /// A record of `sample()` shape with this status (and no end when unfinished).
    fn with_status(status: Status, created_us: i64) -> Record {
        let mut r = sample();
        r.progress.status = status;
        if !status.is_finished() {
            r.progress.end_us = None;
        }
        Arc::make_mut(&mut r.info).created_us = created_us;
        r
    }

    fn owner_of(path: &str, task_id: &str) -> Option<String> {
        let conn = Connection::open(path).expect("conn");
        conn.query_row(
            "SELECT owner FROM task_history WHERE task_id = ?1",
            [task_id],
            |r| r.get(0),
        )
        .expect("row")
    }

    fn plan(path: &str, sql: &str) -> String {
        plan_with(path, sql, Vec::new())
    }

    fn plan_with(path: &str, sql: &str, args: Vec<Value>) -> String {
        let conn = Connection::open(path).expect("conn");
        let mut stmt = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .expect("plan");
        let rows = stmt
            .query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3))
            .expect("rows");
        rows.map(|r| r.expect("row")).collect::<Vec<_>>().join("; ")
    }

    /// `sql` with each `?` replaced by its argument, as a literal: the statement SQLite plans
    /// again once its values are bound, since this build has STAT4.
    fn with_literals(sql: &str, args: &[Value]) -> String {
        let mut parts = sql.split('?');
        let first = parts.next().unwrap_or_default().to_owned();
        parts.zip(args).fold(first, |out, (part, arg)| match arg {
            Value::Integer(n) => format!("{out}{n}{part}"),
            Value::Text(t) => format!("{out}'{t}'{part}"),
            other => panic!("no literal for {other:?}"),
        })
    }

    #[test]
    fn pages_walk_the_index_of_their_filter() {
        let (_d, path) = tmp();
        Snapshot::open(&path).expect("open").close();
        // The plans of a first page and of a later one, with parameters and with their values.
        let page_plan = |status: Option<Status>, func_name: Option<&str>| {
            [None, Some((5, "x"))]
                .into_iter()
                .flat_map(|before| {
                    let (sql, args) = page_query(&PageQuery {
                        before,
                        status,
                        func_name,
                        limit: 10,
                        ..PageQuery::default()
                    });
                    let literal = plan(&path, &with_literals(&sql, &args));
                    [plan_with(&path, &sql, args), literal]
                })
                .collect::<Vec<_>>()
        };
        // Each walks its index; at most the rows of one creation time are sorted.
        let walks = |status: Option<Status>, func_name: Option<&str>, index: &str| {
            for p in page_plan(status, func_name) {
                assert!(p.contains(index), "{status:?} {func_name:?}: {p}");
                assert!(
                    !p.contains("TEMP B-TREE FOR ORDER BY"),
                    "{status:?} {func_name:?}: {p}"
                );
            }
        };
        for status in [Status::Failed, Status::Pending, Status::Cancelled] {
            walks(Some(status), None, "USING INDEX task_history_status");
        }
        walks(None, None, "USING INDEX task_history_created");
        walks(
            Some(Status::Success),
            None,
            "USING INDEX task_history_created",
        );
        walks(None, Some("f"), "USING INDEX task_history_name");
        walks(
            Some(Status::Success),
            Some("f"),
            "USING INDEX task_history_name",
        );
        let claim =
            format!("SELECT task_id FROM task_history WHERE {UNFINISHED} AND owner IS NULL");
        assert!(plan(&path, &claim).contains("USING INDEX task_history_status"));
        for p in page_plan(Some(Status::Failed), Some("f")) {
            assert!(!p.contains("TEMP B-TREE"), "{p}");
        }
    }

    /// A new file at schema `version`, as that version's code made it.
    fn file_at_version(path: &str, version: usize) -> Connection {
        let conn = Connection::open(path).expect("conn");
        conn.execute_batch("CREATE TABLE schema_version(version INTEGER NOT NULL)")
            .expect("version table");
        for script in &MIGRATIONS[..version] {
            conn.execute_batch(script).expect("migration");
        }
        conn.execute(
            "INSERT INTO schema_version VALUES (?1)",
            [i64::try_from(version).expect("small")],
        )
        .expect("version");
        conn
    }

    #[test]
    fn migrates_version_2_files() {
        let (_d, path) = tmp();
        let conn = file_at_version(&path, 2);
        conn.execute_batch(
            "INSERT INTO task_history(task_id, func_name, status, created_us) VALUES ('old', 'f', 'success', 5);",
        )
        .expect("v2 row");
        drop(conn);
        let s = Snapshot::open(&path).expect("open");
        let old = s.get("old").expect("get").expect("found");
        assert!(old.record.info.encrypted_payload.is_none() && old.record.info.retry_of.is_none());
        let conn = Connection::open(&path).expect("conn");
        assert_eq!(schema_version(&conn).expect("version"), current());
        let indexes: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND sql LIKE '%WHERE%' ORDER BY name")
            .expect("stmt")
            .query_map([], |r| r.get(0))
            .expect("rows")
            .map(|r| r.expect("name"))
            .collect();
        assert_eq!(
            indexes,
            [
                "task_history_idempotency",
                "task_history_owner",
                "task_history_status",
                "task_history_sync"
            ]
        );
    }

    fn table_names(path: &str) -> Vec<String> {
        let conn = Connection::open(path).expect("conn");
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_master WHERE type IN ('table', 'index') AND name LIKE 'task_%' ORDER BY name")
            .expect("stmt");
        let names = stmt.query_map([], |r| r.get(0)).expect("rows");
        names.map(|n| n.expect("name")).collect()
    }

    #[test]
    fn migrates_version_3_files_to_the_current_version() {
        let (_d, path) = tmp();
        let conn = file_at_version(&path, 3);
        conn.execute_batch(
            "INSERT INTO task_history(task_id, func_name, status, created_us) VALUES ('old', 'f', 'success', 5);",
        )
        .expect("v3 row");
        drop(conn);
        assert!(!table_names(&path).contains(&"task_metadata".to_owned()));
        let s = Snapshot::open(&path).expect("open");
        assert!(s.get("old").expect("get").is_some(), "history kept");
        let conn = Connection::open(&path).expect("conn");
        assert_eq!(schema_version(&conn).expect("version"), current());
        drop(conn);
        let names = table_names(&path);
        for new in [
            "task_metadata",
            "task_schedule_locks",
            "task_scheduled_once",
            "task_scheduled_once_fire",
        ] {
            assert!(names.contains(&new.to_owned()), "{new} in {names:?}");
        }
        s.save_metadata("k", "v").expect("metadata");
        drop(s);
        let again = Snapshot::open(&path).expect("a current file opens");
        assert_eq!(
            again.load_metadata("k").expect("read").as_deref(),
            Some("v")
        );
    }

    fn one_off(run_key: &str, fire_us: i64) -> Scheduled {
        Scheduled {
            run_key: run_key.to_owned(),
            fire_us,
            created_us: 1,
            task: OneOff {
                func_name: "send".to_owned(),
                queue: "default".to_owned(),
                ..OneOff::default()
            },
        }
    }

    fn due_keys(s: &Snapshot, before_us: i64, limit: i64) -> Vec<String> {
        let due = s.load_due(before_us, limit).expect("due");
        due.into_iter().map(|d| d.run_key).collect()
    }

    #[test]
    fn schedule_locks_are_taken_once_until_they_expire() {
        let (_d, path) = tmp();
        let s = Snapshot::open(&path).expect("open");
        assert!(s.acquire_lock("a", 10, 20).expect("lock"));
        assert!(!s.acquire_lock("a", 19, 100).expect("held"));
        assert!(s.acquire_lock("b", 19, 30).expect("another key"));
        assert!(s.acquire_lock("a", 20, 40).expect("expired at 20"));
        assert!(!s.acquire_lock("a", 39, 50).expect("held again"));
        let conn = Connection::open(&path).expect("conn");
        let rows: Vec<(String, i64)> = conn
            .prepare("SELECT lock_key, expires_us FROM task_schedule_locks")
            .expect("stmt")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("rows")
            .map(|r| r.expect("row"))
            .collect();
        assert_eq!(rows, [("a".to_owned(), 40)], "b expired at 30 and went");
    }

    #[test]
    fn one_offs_are_saved_rescheduled_listed_and_deleted() {
        let (_d, path) = tmp();
        let s = Snapshot::open(&path).expect("open");
        let mut full = one_off("b", 10);
        full.task = OneOff {
            func_name: "report".to_owned(),
            args_json: Some(Arc::from(&b"[1]"[..])),
            kwargs_json: Some(Arc::from(&b"{}"[..])),
            encrypted_payload: Some(Arc::from(&b"\x00ct"[..])),
            queue: "slow".to_owned(),
            priority: Some(-2),
            idempotency_key: Some("k".into()),
            tags: Some(Arc::from(vec![
                ("z".into(), "1".into()),
                ("a".into(), "2".into()),
            ])),
        };
        s.save_scheduled(&full).expect("save");
        s.save_scheduled(&one_off("a", 10)).expect("save");
        s.save_scheduled(&one_off("c", 5)).expect("save");
        s.save_scheduled(&one_off("d", 50)).expect("save");
        assert_eq!(
            due_keys(&s, 10, 100),
            ["c", "a", "b"],
            "by (fire_us, run_key)"
        );
        assert_eq!(due_keys(&s, 10, 2), ["c", "a"]);
        assert!(due_keys(&s, 4, 100).is_empty());
        let got = s.load_due(10, 100).expect("due").remove(2);
        assert_eq!((got.fire_us, got.created_us), (10, 1));
        let t = &got.task;
        assert_eq!((t.func_name.as_str(), t.queue.as_str()), ("report", "slow"));
        assert_eq!(t.args_json.as_deref(), Some(&b"[1]"[..]));
        assert_eq!(t.kwargs_json.as_deref(), Some(&b"{}"[..]));
        assert_eq!(t.encrypted_payload.as_deref(), Some(&b"\x00ct"[..]));
        assert_eq!(
            (t.priority, t.idempotency_key.as_deref()),
            (Some(-2), Some("k"))
        );
        let tags = t.tags.clone().expect("tags");
        assert_eq!((&*tags[0].0, &*tags[1].0), ("z", "a"), "stored order");
        // The same run key again replaces every column.
        let mut moved = one_off("b", 60);
        moved.created_us = 2;
        s.save_scheduled(&moved).expect("reschedule");
        assert_eq!(due_keys(&s, 100, 100), ["c", "a", "d", "b"]);
        let got = s.load_due(100, 100).expect("due").remove(3);
        assert_eq!((got.fire_us, got.created_us), (60, 2));
        assert!(got.task.args_json.is_none() && got.task.tags.is_none());
        assert!(got.task.idempotency_key.is_none() && got.task.priority.is_none());
        assert!(s.delete_scheduled("a").expect("delete"));
        assert!(!s.delete_scheduled("a").expect("gone"));
        assert_eq!(due_keys(&s, 100, 100), ["c", "d", "b"]);
        assert!(plan(
            &path,
            "SELECT run_key FROM task_scheduled_once WHERE fire_us <= 5 ORDER BY fire_us, run_key LIMIT 3"
        )
        .contains("task_scheduled_once_fire"));
        s.close();
        assert!(matches!(s.load_due(100, 1), Err(CoreError::Snapshot(m)) if m.contains("closed")));
        assert!(
            matches!(s.load_metadata("k"), Err(CoreError::Snapshot(m)) if m.contains("closed"))
        );
    }

    #[test]
    fn one_offs_written_by_others_are_read_leniently() {
        let (_d, path) = tmp();
        let s = Snapshot::open(&path).expect("open");
        let conn = Connection::open(&path).expect("conn");
        conn.execute_batch(
            "INSERT INTO task_scheduled_once(run_key, func_name, fire_us, created_us, tags_json) \
             VALUES ('odd', 'f', 1, 0, 'not json'), ('mixed', 'f', 2, 0, '{\"n\": 2, \"s\": \"x\"}')",
        )
        .expect("rows");
        drop(conn);
        let due = s.load_due(10, 10).expect("due");
        assert!(due[0].task.tags.is_none());
        assert_eq!(due[0].task.queue, "default");
        let tags = due[1].task.tags.clone().expect("tags");
        assert_eq!((&*tags[0].1, &*tags[1].1), ("2", "x"));
    }

    #[test]
    fn firing_consumes_the_row_and_journals_in_one_transaction() {
        let (_d, path) = tmp();
        let s = Snapshot::open(&path).expect("open");
        let mut keyed = one_off("r", 1);
        keyed.task.idempotency_key = Some("k".into());
        s.save_scheduled(&keyed).expect("save");
        let mut holder = with_status(Status::Pending, 3);
        Arc::make_mut(&mut holder.info).idempotency_key = Some("k".into());
        s.write(&[(9, holder)], "other").expect("holder");
        let fired = s
            .fire("r", Some(2), "me", |entry, on_disk| {
                assert_eq!(entry.run_key, "r");
                assert_eq!(on_disk, [UuidText::new(9).as_str()]);
                ("made", Some((1, with_status(Status::Pending, 10))))
            })
            .expect("fire");
        assert_eq!(fired, Some("made"));
        assert_eq!(
            owner_of(&path, UuidText::new(1).as_str()).as_deref(),
            Some("me")
        );
        assert!(due_keys(&s, 100, 10).is_empty());
        // Only holders created after the cutoff count.
        s.save_scheduled(&keyed).expect("save");
        s.fire("r", Some(3), "me", |_, on_disk| {
            assert!(on_disk.is_empty());
            ((), None)
        })
        .expect("fire")
        .expect("found");
        assert!(s
            .fire("r", None, "me", |_, _| -> ((), Option<(u128, Record)>) {
                unreachable!("no row to decide on")
            })
            .expect("fire")
            .is_none());
        // A journal row that cannot be written leaves the one-off scheduled.
        s.save_scheduled(&one_off("x", 1)).expect("save");
        let conn = Connection::open(&path).expect("conn");
        conn.execute_batch("DROP TABLE task_tags").expect("drop");
        drop(conn);
        let err = s
            .fire("x", None, "me", |_, _| ((), Some((2, sample()))))
            .expect_err("no tag table");
        assert!(
            matches!(&err, CoreError::Snapshot(m) if m.contains(&path)),
            "{err}"
        );
        assert_eq!(due_keys(&s, 100, 10), ["x"]);
        assert!(s.get(UuidText::new(2).as_str()).expect("get").is_none());
    }

    #[test]
    fn metadata_round_trips() {
        let (_d, path) = tmp();
        let s = Snapshot::open(&path).expect("open");
        assert_eq!(s.load_metadata("k").expect("read"), None);
        s.save_metadata("k", "1").expect("save");
        s.save_metadata("k", "2").expect("replace");
        s.save_metadata("other", "").expect("save");
        assert_eq!(s.load_metadata("k").expect("read").as_deref(), Some("2"));
        assert_eq!(s.load_metadata("other").expect("read").as_deref(), Some(""));
    }

    #[test]
    fn journal_rows_carry_their_owner_and_the_new_columns() {
        let (_d, path) = tmp();
        let s = Snapshot::open(&path).expect("open");
        let mut live = with_status(Status::Running, 10);
        let info = Arc::make_mut(&mut live.info);
        info.encrypted_payload = Some(Arc::from(&b"\x00secret"[..]));
        info.retry_of = Some("first".into());
        let done = with_status(Status::Failed, 11);
        s.write(&[(1, live), (2, done)], "me").expect("write");
        assert_eq!(
            owner_of(&path, UuidText::new(1).as_str()).as_deref(),
            Some("me")
        );
        assert_eq!(owner_of(&path, UuidText::new(2).as_str()), None);
        let got = s
            .get(UuidText::new(1).as_str())
            .expect("get")
            .expect("found");
        assert_eq!(
            got.record.info.encrypted_payload.as_deref(),
            Some(&b"\x00secret"[..])
        );
        assert_eq!(got.record.info.retry_of.as_deref(), Some("first"));
        // Once finished, the row has no owner.
        s.write(&[(1, with_status(Status::Success, 10))], "me")
            .expect("rewrite");
        assert_eq!(owner_of(&path, UuidText::new(1).as_str()), None);
        let conn = Connection::open(&path).expect("conn");
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("check");
        assert_eq!(check, "ok", "rows and indexes agree after the updates");
    }

    #[test]
    fn an_update_rewrites_progress_and_keeps_the_rest() {
        let (_d, path) = tmp();
        let s = Snapshot::open(&path).expect("open");
        let mut r = with_status(Status::Running, 10);
        Arc::make_mut(&mut r.info).idempotency_key = Some("k".into());
        s.write(&[(1, r.clone())], "me").expect("write");
        r.progress.status = Status::Failed;
        r.progress.end_us = Some(99);
        r.progress.error = Some("boom".into());
        r.logs.push_back("last".into());
        r.logs_dropped = 4;
        s.write(&[(1, r)], "me").expect("update");
        let got = s
            .get(UuidText::new(1).as_str())
            .expect("get")
            .expect("found");
        let (p, i) = (&got.record.progress, &got.record.info);
        assert_eq!((p.status, p.end_us), (Status::Failed, Some(99)));
        assert_eq!(p.error.as_deref(), Some("boom"));
        assert_eq!((got.record.logs.len(), got.record.logs_dropped), (3, 4));
        assert_eq!((&*i.func_name, i.created_us), ("send_email", 10));
        assert_eq!(i.idempotency_key.as_deref(), Some("k"));
        assert_eq!(owner_of(&path, UuidText::new(1).as_str()), None);
        let conn = Connection::open(&path).expect("conn");
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("check");
        assert_eq!(check, "ok");
    }

    /// A row as stored, every column as text (NULL as "NULL").
    fn stored_row(path: &str, task_id: &str) -> Vec<String> {
        let conn = Connection::open(path).expect("conn");
        conn.query_row(
            &format!("SELECT {COLUMNS} FROM task_history WHERE task_id = ?1"),
            [task_id],
            |r| {
                (0..r.as_ref().column_count())
                    .map(|i| {
                        Ok(match r.get_ref(i)? {
                            ValueRef::Null => "NULL".to_owned(),
                            ValueRef::Integer(n) => n.to_string(),
                            ValueRef::Real(x) => x.to_string(),
                            ValueRef::Text(t) | ValueRef::Blob(t) => {
                                String::from_utf8_lossy(t).into_owned()
                            }
                        })
                    })
                    .collect()
            },
        )
        .expect("row")
    }

    #[test]
    fn a_plain_row_is_the_row_the_full_statement_writes() {
        let (_d, path) = tmp();
        let s = Snapshot::open(&path).expect("open");
        let mut plain = with_status(Status::Success, 10);
        {
            let i = Arc::make_mut(&mut plain.info);
            (i.tags, i.priority) = (None, None);
            i.args_json = Some(Arc::from(&b"[1]"[..]));
        }
        (plain.progress.stacktrace, plain.logs) = (None, VecDeque::new());
        assert!(is_plain(&plain));
        let mut full = plain.clone();
        full.logs_dropped = 1; // written by the full statement
        assert!(!is_plain(&full));
        // A journal row first, then its end: the plain statement's update clears the owner.
        let mut running = plain.clone();
        running.progress.status = Status::Running;
        running.progress.error = Some("an earlier attempt".into());
        s.write(&[(1, running.clone()), (2, running)], "me")
            .expect("journal rows");
        assert_eq!(
            owner_of(&path, UuidText::new(1).as_str()).as_deref(),
            Some("me")
        );
        s.write(&[(1, plain), (2, full)], "me").expect("ends");
        let (a, b) = (
            stored_row(&path, UuidText::new(1).as_str()),
            stored_row(&path, UuidText::new(2).as_str()),
        );
        let differ: Vec<&str> = COLUMNS
            .split(", ")
            .zip(a.iter().zip(&b))
            .filter(|(_, (x, y))| x != y)
            .map(|(c, _)| c)
            .collect();
        assert_eq!(differ, ["task_id", "logs_dropped"]);
        assert_eq!(owner_of(&path, UuidText::new(1).as_str()), None);
        let got = s.get(UuidText::new(1).as_str()).expect("get").expect("row");
        assert_eq!(
            got.record.progress.error, None,
            "the plain end has no error"
        );
    }

    #[test]
    fn checkpoints_after_the_commit_that_fills_the_wal() {
        let (_d, path) = tmp();
        let s = Snapshot::open(&path).expect("open");
        let main_len = || std::fs::metadata(&path).expect("file").len();
        let empty = main_len();
        let records = |ids: std::ops::Range<u128>| -> Vec<(u128, Record)> {
            ids.map(|id| {
                let mut r = sample();
                Arc::make_mut(&mut r.info).args_json = Some(Arc::from(vec![b'x'; 512 << 10]));
                (id, r)
            })
            .collect()
        };
        // Past SQLite's own auto-checkpoint (1,000 frames), still short of ours.
        s.write(&records(0..12), "me").expect("write");
        let frames = s.wal_frames.load(Ordering::Relaxed);
        assert!(
            (1_000..CHECKPOINT_FRAMES).contains(&frames),
            "{frames} frames"
        );
        assert_eq!(main_len(), empty, "the rows are in the WAL only");
        // The write that fills the WAL is followed by a checkpoint that copies all of it.
        s.write(&records(12..40), "me").expect("write");
        assert_eq!(s.wal_frames.load(Ordering::Relaxed), 0);
        assert!(main_len() > 20 << 20, "{} bytes", main_len());
        let got = s.get(UuidText::new(39).as_str()).expect("get");
        assert_eq!(
            got.and_then(|d| d.record.info.args_json.clone())
                .map(|a| a.len()),
            Some(512 << 10)
        );
    }

    #[test]
    fn key_holders_read_the_key_index() {
        let (_d, path) = tmp();
        let s = Snapshot::open(&path).expect("open");
        let keyed = |status, created_us| {
            let mut r = with_status(status, created_us);
            Arc::make_mut(&mut r.info).idempotency_key = Some("k".into());
            r
        };
        s.write(
            &[
                (1, keyed(Status::Success, 10)),
                (2, keyed(Status::Failed, 30)),
                (3, keyed(Status::Pending, 20)),
            ],
            "me",
        )
        .expect("write");
        let ids = |after| s.key_holders("k", after).expect("read");
        assert_eq!(
            ids(None),
            [UuidText::new(3).as_str(), UuidText::new(1).as_str()]
        );
        assert_eq!(ids(Some(10)), [UuidText::new(3).as_str()]);
        assert!(ids(Some(20)).is_empty());
        assert!(s.key_holders("other", None).expect("read").is_empty());
        assert!(plan(
            &path,
            "SELECT task_id FROM task_history WHERE idempotency_key = 'k' AND created_us > 0 \
             AND status IN ('pending', 'running', 'success') ORDER BY created_us DESC"
        )
        .contains("task_history_idempotency"));
    }

    #[test]
    fn claims_rows_of_dead_owners_and_of_none() {
        let (_d, path) = tmp();
        let s = Snapshot::open(&path).expect("open");
        s.write(&[(1, with_status(Status::Pending, 1))], "dead")
            .expect("w");
        s.write(&[(2, with_status(Status::Running, 2))], "alive")
            .expect("w");
        s.write(&[(3, with_status(Status::Running, 3))], "me")
            .expect("w");
        s.write(&[(4, with_status(Status::Success, 4))], "dead")
            .expect("w");
        let conn = Connection::open(&path).expect("conn");
        conn.execute_batch(
            "INSERT INTO task_history(task_id, func_name, status, created_us) VALUES \
             ('00000000-0000-4000-8000-000000000005', 'f', 'pending', 5), ('custom', 'f', 'pending', 6)",
        )
        .expect("legacy rows");
        drop(conn);
        let claim = s.claim("me", |owner| owner == "dead").expect("claim");
        assert_eq!(claim.dead_owners, ["dead"]);
        let mut ids: Vec<String> = claim.records.iter().map(|r| r.task_id.clone()).collect();
        ids.sort();
        assert_eq!(
            ids,
            [
                UuidText::new(1).as_str(),
                "00000000-0000-4000-8000-000000000005"
            ]
        );
        assert_eq!(
            owner_of(&path, UuidText::new(1).as_str()).as_deref(),
            Some("me")
        );
        assert_eq!(
            owner_of(&path, "00000000-0000-4000-8000-000000000005").as_deref(),
            Some("me")
        );
        assert_eq!(
            owner_of(&path, UuidText::new(2).as_str()).as_deref(),
            Some("alive")
        );
        let again = s.claim("me", |_| true).expect("claim again");
        assert_eq!(again.dead_owners, ["alive"]);
        assert_eq!(again.records.len(), 1, "only alive's row was left to take");
    }

    #[test]
    fn deletes_rows_with_their_tags() {
        let (_d, path) = tmp();
        let s = Snapshot::open(&path).expect("open");
        let ended = |status, end_us| {
            let mut r = with_status(status, 1);
            r.progress.start_us = Some(0);
            r.progress.end_us = Some(end_us);
            r
        };
        s.write(
            &[
                (1, ended(Status::Success, 100)),
                (2, ended(Status::Failed, 200)),
                (3, ended(Status::Cancelled, 300)),
                (4, with_status(Status::Running, 1)),
                (5, ended(Status::Success, 50)),
            ],
            "me",
        )
        .expect("write");
        let (id3, id4, id5) = (UuidText::new(3), UuidText::new(4), UuidText::new(5));
        let gone = s
            .delete(&[
                Doomed::EndedBefore(200),
                Doomed::FinishedId(id4.as_str()),
                Doomed::Id(id5.as_str()),
            ])
            .expect("delete");
        let mut ids: Vec<&str> = gone.iter().map(|d| d.task_id.as_str()).collect();
        ids.sort_unstable();
        assert_eq!(ids, [UuidText::new(1).as_str(), id5.as_str()]);
        assert_eq!(gone[0].row.status, Some(Status::Success));
        assert_eq!(gone[0].row.func_name, "send_email");
        let conn = Connection::open(&path).expect("conn");
        let left: i64 = conn
            .query_row("SELECT count(*) FROM task_history", [], |r| r.get(0))
            .expect("count");
        let tags: i64 = conn
            .query_row("SELECT count(*) FROM task_tags", [], |r| r.get(0))
            .expect("count");
        assert_eq!((left, tags), (3, 6), "two tags per remaining row");
        let gone = s.delete(&[Doomed::Id(id4.as_str())]).expect("any status");
        assert_eq!(gone.len(), 1);
        assert!(s
            .delete(&[Doomed::FinishedId(id3.as_str())])
            .expect("finished")
            .first()
            .is_some_and(|d| d.row.end_us == Some(300)));
        let sweep = format!(
            "SELECT task_id FROM task_history WHERE {}",
            ended_before_condition().replace("?1", "5")
        );
        assert!(plan(&path, &sweep).contains("task_history_created (created_us<?)"));
        s.close();
        assert!(matches!(
            s.delete(&[Doomed::EndedBefore(1)]),
            Err(CoreError::Snapshot(m)) if m.contains("closed")
        ));
    }

    #[test]
    fn damage_is_its_own_error_only_at_open() {
        let e = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
            None,
        );
        assert!(
            matches!(describe_open("/a.db", "open", &e), CoreError::CorruptSnapshot(m) if m.starts_with("/a.db: "))
        );
        assert!(
            matches!(describe("/a.db", "write", &e), CoreError::Snapshot(m) if m.contains("restore it from a backup"))
        );
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        );
        assert!(matches!(
            describe_open("/a.db", "open", &busy),
            CoreError::Snapshot(_)
        ));
    }

    /// `(task_id, sync_seq)` of every row written since `after`, in order.
    fn changed(s: &Snapshot, after: i64) -> Vec<(String, i64)> {
        let rows = s.changed_rows(after, 100).expect("changed");
        rows.into_iter().map(|(r, seq)| (r.task_id, seq)).collect()
    }

    fn id(n: u128) -> String {
        UuidText::new(n).as_str().to_owned()
    }

    #[test]
    fn every_write_numbers_its_rows_after_all_others() {
        let (_d, path) = tmp();
        let s = Snapshot::open(&path).expect("open");
        // Numbered by (created_us, id), whatever order they come in.
        s.write(
            &[
                (2, with_status(Status::Pending, 20)),
                (1, with_status(Status::Success, 10)),
                (3, with_status(Status::Running, 10)),
            ],
            "me",
        )
        .expect("write");
        assert_eq!(changed(&s, 0), [(id(1), 1), (id(3), 2), (id(2), 3)]);
        // A rewrite moves the row to a later number.
        s.write(&[(1, with_status(Status::Success, 10))], "me")
            .expect("rewrite");
        assert_eq!(changed(&s, 0), [(id(3), 2), (id(2), 3), (id(1), 4)]);
        assert_eq!(changed(&s, 3), [(id(1), 4)]);
        assert!(changed(&s, 4).is_empty());
        // A claim numbers what it takes; so does a firing its journal row.
        s.claim("other", |owner| owner == "me").expect("claim");
        assert_eq!(changed(&s, 4), [(id(3), 5), (id(2), 6)]);
        let (row, _) = &s.changed_rows(4, 1).expect("changed")[0];
        assert_eq!(row.owner.as_deref(), Some("other"));
        s.save_scheduled(&one_off("r", 1)).expect("save");
        s.fire("r", None, "me", |_, _| {
            ((), Some((9, with_status(Status::Pending, 1))))
        })
        .expect("fire");
        assert_eq!(changed(&s, 6), [(id(9), 7)]);
        assert_eq!(s.changed_rows(0, 2).expect("limit").len(), 2);
        assert!(plan(&path, SYNC_SEQ_HIGH).contains("task_history_sync"));
        let walk = format!(
            "SELECT {COLUMNS}, sync_seq FROM task_history WHERE sync_seq > 3 ORDER BY sync_seq LIMIT 5"
        );
        let walk = plan(&path, &walk);
        assert!(
            walk.contains("task_history_sync") && !walk.contains("TEMP B-TREE"),
            "{walk}"
        );
        s.close();
        assert!(
            matches!(s.changed_rows(0, 1), Err(CoreError::Snapshot(m)) if m.contains("closed"))
        );
    }

    #[test]
    fn a_number_is_never_given_twice_even_after_deletions() {
        let (_d, path) = tmp();
        let s = Snapshot::open(&path).expect("open");
        let done = |created_us| {
            let mut r = with_status(Status::Success, created_us);
            r.progress.end_us = Some(created_us + 1);
            r
        };
        s.write(&[(1, done(1)), (2, done(2)), (3, done(3))], "me")
            .expect("write");
        let (id1, id3) = (UuidText::new(1), UuidText::new(3));
        // The newest row goes: its number stays taken.
        assert_eq!(
            s.delete(&[Doomed::Id(id3.as_str())]).expect("delete").len(),
            1
        );
        assert_eq!(
            s.load_metadata("sync_seq_floor").expect("floor").as_deref(),
            Some("3")
        );
        s.write(&[(4, done(4))], "me").expect("write");
        assert_eq!(changed(&s, 2), [(id(4), 4)]);
        // An older row goes: the column's maximum still says it all.
        s.save_metadata("sync_seq_floor", "0").expect("reset");
        s.delete(&[Doomed::Id(id1.as_str())]).expect("delete");
        assert_eq!(
            s.load_metadata("sync_seq_floor").expect("floor").as_deref(),
            Some("0")
        );
        // Every row gone: the floor alone remembers.
        s.delete(&[Doomed::EndedBefore(100)]).expect("sweep");
        s.write(&[(5, done(5))], "me").expect("write");
        assert_eq!(changed(&s, 0), [(id(5), 5)]);
        // A deletion that finds nothing changes nothing.
        s.delete(&[Doomed::FinishedId("missing")]).expect("nothing");
        assert_eq!(
            s.load_metadata("sync_seq_floor").expect("floor").as_deref(),
            Some("4")
        );
    }

    /// A connection in the middle of a write to `path`, still in rollback mode: what another
    /// opener of a new file meets.
    fn writing(path: &str) -> Connection {
        let conn = Connection::open(path).expect("conn");
        conn.execute_batch("CREATE TABLE t(x); BEGIN IMMEDIATE; INSERT INTO t VALUES (1);")
            .expect("hold the write lock");
        conn
    }

    #[test]
    fn switching_to_wal_waits_for_a_writer_of_the_new_file() {
        let (_d, path) = tmp();
        let writer = writing(&path);
        let opener = Connection::open(&path).expect("conn");
        configure(&opener).expect("configure");
        let started = Instant::now();
        let commit = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            writer.execute_batch("COMMIT").expect("commit");
        });
        // SQLite answers this switch "database is locked" at once, without its busy handler.
        let mode = switch_to_wal(&opener).expect("switched once the writer is done");
        commit.join().expect("writer");
        assert_eq!(mode, "wal");
        assert!(started.elapsed() >= Duration::from_millis(150), "it waited");
    }

    #[test]
    fn switching_to_wal_gives_up_after_the_busy_timeout() {
        let (_d, path) = tmp();
        let _writer = writing(&path);
        let opener = Connection::open(&path).expect("conn");
        configure(&opener).expect("configure");
        let started = Instant::now();
        let err = switch_to_wal(&opener).expect_err("still locked");
        let waited = started.elapsed();
        assert_eq!(err.sqlite_error_code(), Some(ErrorCode::DatabaseBusy));
        assert!(
            waited >= BUSY_TIMEOUT - WAL_RETRY_PAUSE_MAX && waited < BUSY_TIMEOUT * 2,
            "{waited:?}"
        );
    }

    #[test]
    fn adopt_inserts_new_ids_and_takes_over_unfinished_rows_of_other_owners() {
        let (_d, path) = tmp();
        let s = Snapshot::open(&path).expect("open");
        let mut theirs = with_status(Status::Running, 1);
        theirs.logs.push_back(Arc::from("only in the file"));
        s.write(&[(1, theirs)], "dead").expect("write");
        s.write(&[(3, with_status(Status::Success, 3))], "dead")
            .expect("write");
        s.write(&[(4, with_status(Status::Pending, 4))], "me")
            .expect("write");
        let high = changed(&s, 0).last().map_or(0, |(_, seq)| *seq);
        // The backend's copy of row 1 lags the file's: pending, no logs, and (to tell the
        // two apart in the numbering) another creation time.
        let mut stale = with_status(Status::Pending, 50);
        stale.logs.clear();
        let adoption = s
            .adopt(
                vec![
                    (1, stale),
                    (2, with_status(Status::Running, 2)),
                    (3, with_status(Status::Pending, 3)),
                    (4, with_status(Status::Running, 4)),
                ],
                "me",
            )
            .expect("adopt");
        let ids: Vec<u128> = adoption.records.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [1, 2], "finished and own rows skipped; oldest first");
        assert_eq!(adoption.taken_over, HashSet::from([1]));
        let (_, taken) = &adoption.records[0];
        assert_eq!(taken.status(), Status::Running, "the file's row");
        assert_eq!(taken.info.created_us, 1);
        assert_eq!(taken.logs.back().map(|l| &**l), Some("only in the file"));
        for (n, owner) in [(1, Some("me")), (2, Some("me")), (3, None), (4, Some("me"))] {
            assert_eq!(owner_of(&path, &id(n)).as_deref(), owner, "row {n}");
        }
        // Numbered by the file's creation time; the rows left alone keep theirs.
        assert_eq!(changed(&s, high), [(id(1), high + 1), (id(2), high + 2)]);
        let kept = s.get(&id(1)).expect("get").expect("row").record;
        assert_eq!(kept.status(), Status::Running);
        assert_eq!(kept.logs, taken.logs, "rewritten as read");
        assert_eq!(
            s.get(&id(3)).expect("get").expect("row").record.status(),
            Status::Success
        );
        let got = s.get(&id(2)).expect("get").expect("row");
        assert_eq!(got.record.status(), Status::Running);
        assert!(got.record.info.tags.is_some(), "with its tags");
        let again = s
            .adopt(vec![(1, with_status(Status::Pending, 1))], "me")
            .expect("again");
        assert!(again.records.is_empty(), "its own row now");
        assert!(s
            .adopt(Vec::new(), "me")
            .expect("nothing")
            .records
            .is_empty());
        s.close();
        assert!(
            matches!(s.adopt(Vec::new(), "me"), Err(CoreError::Snapshot(m)) if m.contains("closed"))
        );
    }

    #[test]
    fn migrates_version_4_files_to_5() {
        let (_d, path) = tmp();
        let conn = file_at_version(&path, 4);
        conn.execute_batch(&format!(
            "INSERT INTO task_history(task_id, func_name, status, created_us, owner) \
             VALUES ('{}', 'f', 'pending', 5, 'gone');",
            id(1)
        ))
        .expect("v4 row");
        drop(conn);
        let s = Snapshot::open(&path).expect("open");
        let conn = Connection::open(&path).expect("conn");
        assert_eq!(schema_version(&conn).expect("version"), current());
        let seq: Option<i64> = conn
            .query_row("SELECT sync_seq FROM task_history", [], |r| r.get(0))
            .expect("row");
        assert_eq!(seq, None, "rows from before version 5 have no number");
        drop(conn);
        assert!(table_names(&path).contains(&"task_history_sync".to_owned()));
        assert!(changed(&s, 0).is_empty(), "and are not replicated");
        s.write(&[(2, with_status(Status::Pending, 6))], "me")
            .expect("write");
        s.claim("me", |_| true).expect("claim");
        assert_eq!(changed(&s, 0), [(id(2), 1), (id(1), 2)]);
    }

    #[test]
    fn migrates_version_5_files_to_6() {
        let (_d, path) = tmp();
        drop(file_at_version(&path, 5));
        let rows = [
            (1, Status::Success, 10),
            (2, Status::Failed, 20),
            (3, Status::Success, 30),
            (4, Status::Cancelled, 40),
        ];
        // Written as version 5 wrote them: the statement is the same.
        {
            let mut conn = Connection::open(&path).expect("conn");
            let tx = conn.transaction().expect("tx");
            let records: Vec<(u128, Record)> = rows
                .iter()
                .map(|&(n, status, end)| {
                    let mut r = with_status(status, n as i64);
                    r.progress.end_us = Some(end);
                    (n, r)
                })
                .collect();
            upsert_records(&tx, &records, "me").expect("v5 rows");
            tx.commit().expect("commit");
        }
        let s = Snapshot::open(&path).expect("open");
        let conn = Connection::open(&path).expect("conn");
        assert_eq!(schema_version(&conn).expect("version"), current());
        drop(conn);
        let names = table_names(&path);
        assert!(!names.contains(&"task_history_end".to_owned()));
        let ids = |status| -> Vec<String> {
            let page = s
                .page(&PageQuery {
                    status: Some(status),
                    limit: 10,
                    ..PageQuery::default()
                })
                .expect("page");
            page.into_iter().map(|d| d.task_id).collect()
        };
        assert_eq!(ids(Status::Success), [id(3), id(1)]);
        assert_eq!(ids(Status::Failed), [id(2)]);
        let gone = s.delete(&[Doomed::EndedBefore(30)]).expect("sweep");
        let mut gone: Vec<String> = gone.into_iter().map(|d| d.task_id).collect();
        gone.sort_unstable();
        assert_eq!(gone, [id(1), id(2)], "ended before 30");
    }

    #[test]
    fn migrates_version_6_files_to_slim_indexes_that_page_ties_in_order() {
        let (_d, path) = tmp();
        drop(file_at_version(&path, 6));
        // Six rows, two names, two creation times: pages of two end inside a run of ties.
        let records: Vec<(u128, Record)> = (1..=6)
            .map(|n: u128| {
                let mut r = with_status(Status::Success, 10 * ((n as i64 + 2) / 3));
                let name = if n.is_multiple_of(3) { "g" } else { "f" };
                Arc::make_mut(&mut r.info).func_name = name.into();
                (n, r)
            })
            .collect();
        {
            let mut conn = Connection::open(&path).expect("conn");
            let tx = conn.transaction().expect("tx");
            upsert_records(&tx, &records, "me").expect("v6 rows");
            tx.commit().expect("commit");
        }
        let s = Snapshot::open(&path).expect("open");
        let conn = Connection::open(&path).expect("conn");
        assert_eq!(schema_version(&conn).expect("version"), current());
        for (index, columns) in [
            ("task_history_created", "(created_us)"),
            ("task_history_name", "(func_name, created_us)"),
        ] {
            let sql: String = conn
                .query_row(
                    "SELECT sql FROM sqlite_master WHERE name = ?1",
                    [index],
                    |r| r.get(0),
                )
                .expect("index");
            assert!(sql.ends_with(columns), "{sql}");
        }
        // Pages of two, newest first, each after the last one's cursor.
        let walk = |func_name: Option<&str>| -> Vec<String> {
            let mut out: Vec<DiskRecord> = Vec::new();
            loop {
                let before = out.last().map(|d| (d.created_us, d.task_id.as_str()));
                let page = s
                    .page(&PageQuery {
                        before,
                        func_name,
                        limit: 2,
                        ..PageQuery::default()
                    })
                    .expect("page");
                if page.is_empty() {
                    return out.into_iter().map(|d| d.task_id).collect();
                }
                out.extend(page);
            }
        };
        assert_eq!(walk(None), [id(6), id(5), id(4), id(3), id(2), id(1)]);
        assert_eq!(walk(Some("f")), [id(5), id(4), id(2), id(1)]);
    }
}
