//! The SQLite snapshot file: schema and migrations, history and journal flush, reads for
//! pages, details and idempotency keys, orphan claims, deletions, and the metric rows read
//! at open.
//!
//! The file format is shared with the pure-Python core (`_pycore`): either core opens the
//! other's files. One writer and one reader connection, each behind its own lock, so reads
//! proceed while a flush writes (WAL).

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use rusqlite::types::{Value, ValueRef};
use rusqlite::{
    params, Connection, ErrorCode, OptionalExtension, Transaction, TransactionBehavior, MAIN_DB,
};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

use super::error::{CoreError, CoreResult};
use super::record::{
    parse_uuid, write_logs, write_tags, Progress, Record, Status, TaskInfo, UuidText,
};

/// Schema scripts; entry `i` migrates version `i` to `i + 1`.
/// Twin: `_MIGRATIONS` in `_pycore` (identical SQL).
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
"];

/// The columns of a record (the `owner` of a journal row is not part of it).
const COLUMNS: &str = "task_id, func_name, status, created_us, start_us, end_us, retries_used, error, \
stacktrace, logs_json, tags_json, source, priority, executor, queue, idempotency_key, args_json, kwargs_json, \
logs_dropped, encrypted_payload, retry_of";

/// Writes one record. A row already there is the same record written before, and a record's
/// `TaskInfo` (name, creation time, tags, arguments, key...) never changes: the update sets
/// only what progress changes, so SQLite leaves the entries of the indexes on the other
/// columns (creation time, name, key) alone instead of deleting and re-adding them.
const UPSERT: &str = "INSERT INTO task_history(task_id, func_name, status, created_us, start_us, end_us, \
retries_used, error, stacktrace, logs_json, tags_json, source, priority, executor, queue, idempotency_key, \
args_json, kwargs_json, logs_dropped, encrypted_payload, retry_of, owner) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, \
?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22) \
ON CONFLICT(task_id) DO UPDATE SET status = excluded.status, start_us = excluded.start_us, \
end_us = excluded.end_us, retries_used = excluded.retries_used, error = excluded.error, \
stacktrace = excluded.stacktrace, logs_json = excluded.logs_json, logs_dropped = excluded.logs_dropped, \
owner = excluded.owner";

/// The statuses that end a task, as an SQL list. Twin of the finished statuses of `record.rs`.
const FINISHED_SQL: &str = "('success', 'failed', 'interrupted', 'cancelled', 'rejected')";

/// The statuses of unfinished rows, as an SQL list.
const UNFINISHED_SQL: &str = "('pending', 'running')";

/// Tags never change after a record is created, so a re-flushed record re-inserts the same
/// rows: ignoring duplicates replaces the delete (which, keyed by tag, would scan the table).
const INSERT_TAG: &str =
    "INSERT OR IGNORE INTO task_tags (task_id, key, value, created_us) VALUES (?1, ?2, ?3, ?4)";

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
    /// Finished rows that ended before this time (µs), found through `task_history_end`.
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

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_millis(5000))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "cache_size", CACHE_KIB)?;
    conn.pragma_update(None, "mmap_size", MMAP_BYTES)
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

/// Rows of finished records that ended before `?1`. The unary plus keeps the planner off
/// the status index, which would walk every finished row, and on `task_history_end`.
fn ended_before_condition() -> String {
    format!("end_us < ?1 AND +status IN {FINISHED_SQL}")
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

/// A stored row as a record; `None` when the row is unusable (unknown status).
fn row_to_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<Option<DiskRecord>> {
    let Some(status) = text(row.get_ref(2)?).as_deref().and_then(Status::parse) else {
        return Ok(None);
    };
    let task_id = text(row.get_ref(0)?).unwrap_or_default();
    let created_us = int(row.get_ref(3)?).unwrap_or(0);
    let logs: VecDeque<Arc<str>> = text(row.get_ref(9)?)
        .and_then(|s| serde_json::from_str::<Vec<String>>(&s).ok())
        .unwrap_or_default()
        .into_iter()
        .map(Arc::from)
        .collect();
    let tags = text(row.get_ref(10)?)
        .and_then(|s| serde_json::from_str::<OrderedTags>(&s).ok())
        .filter(|t| !t.0.is_empty())
        .map(|t| Arc::from(t.0));
    let record = Record {
        info: Arc::new(TaskInfo {
            func_name: arc_text(row.get_ref(1)?, ""),
            created_us,
            tags,
            source: arc_text(row.get_ref(11)?, "manual"),
            priority: int(row.get_ref(12)?),
            executor: text(row.get_ref(13)?).map(Arc::from),
            queue: arc_text(row.get_ref(14)?, "default"),
            idempotency_key: text(row.get_ref(15)?).map(Arc::from),
            args_json: blob(row.get_ref(16)?),
            kwargs_json: blob(row.get_ref(17)?),
            encrypted_payload: blob(row.get_ref(19)?),
            retry_of: text(row.get_ref(20)?).map(Arc::from),
        }),
        progress: Progress {
            status,
            start_us: int(row.get_ref(4)?),
            end_us: int(row.get_ref(5)?),
            retries_used: int(row.get_ref(6)?).unwrap_or(0),
            error: text(row.get_ref(7)?).map(Arc::from),
            stacktrace: text(row.get_ref(8)?).map(Arc::from),
        },
        logs,
        logs_dropped: int(row.get_ref(18)?).map_or(0, |n| u64::try_from(n).unwrap_or(0)),
        rev: 0,
    };
    Ok(Some(DiskRecord {
        task_id,
        created_us,
        record,
    }))
}

impl Snapshot {
    /// Opens (creating if needed) and migrates the file at `path`.
    pub(crate) fn open(path: &str) -> CoreResult<Snapshot> {
        let in_memory = is_in_memory(path);
        let mut writer = Connection::open(path).map_err(|e| describe_open(path, "open", &e))?;
        configure(&writer).map_err(|e| describe_open(path, "open", &e))?;
        if !in_memory {
            let mode: String = writer
                .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
                .map_err(|e| describe_open(path, "open", &e))?;
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
        let mut logs_buf = Vec::with_capacity(256);
        let mut tags_buf = Vec::with_capacity(64);
        self.in_write_tx("write", |tx| {
            let mut stmt = tx.prepare_cached(UPSERT)?;
            let mut tag_stmt = tx.prepare_cached(INSERT_TAG)?;
            // In key order of the three time-leading indexes, each insert lands at (or
            // near) their right edge, where SQLite skips the descent from the root, and the
            // pages it touches stay hot; only the primary key is random.
            let mut sorted: Vec<&(u128, Record)> = records.iter().collect();
            sorted.sort_unstable_by_key(|(id, r)| (r.info.created_us, *id));
            for (id, r) in sorted {
                logs_buf.clear();
                write_logs(&mut logs_buf, &r.logs);
                tags_buf.clear();
                write_tags(&mut tags_buf, r.info.tags.as_deref());
                let id_text = UuidText::new(*id);
                // Both buffers hold JSON built from `&str`s, hence valid UTF-8.
                let logs_json = std::str::from_utf8(&logs_buf).unwrap_or("[]");
                let tags_json = std::str::from_utf8(&tags_buf).unwrap_or("{}");
                let (i, p) = (&r.info, &r.progress);
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
                ])?;
                for (key, value) in i.tags.as_deref().unwrap_or_default() {
                    tag_stmt.execute(params![id_text.as_str(), &**key, &**value, i.created_us])?;
                }
            }
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
        self.with_reader("read", |conn| {
            // Walks `task_history_idempotency`; the few rows of one key are then filtered.
            let mut stmt = conn.prepare_cached(
                "SELECT task_id FROM task_history WHERE idempotency_key = ?1 AND created_us > ?2 \
                 AND status IN ('pending', 'running', 'success') ORDER BY created_us DESC",
            )?;
            let rows = stmt.query_map(params![key, created_after.unwrap_or(i64::MIN)], |r| {
                Ok(text(r.get_ref(0)?))
            })?;
            rows.filter_map(Result::transpose).collect()
        })
        .map(Option::unwrap_or_default)
    }

    /// Takes over the unfinished rows of dead owners (see [`Claim`]) in one write
    /// transaction, so two stores on one file never both take a row.
    pub(crate) fn claim(&self, me: &str, is_dead: impl Fn(&str) -> bool) -> CoreResult<Claim> {
        let sql = format!("SELECT {COLUMNS} FROM task_history WHERE status IN {UNFINISHED_SQL}");
        self.in_write_tx("claim unfinished rows in", |tx| {
            let owners: Vec<String> = {
                let mut stmt = tx.prepare(&format!(
                    "SELECT DISTINCT owner FROM task_history WHERE owner IS NOT NULL AND owner <> ?1 \
                     AND status IN {UNFINISHED_SQL}"
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
            let mut update = tx.prepare("UPDATE task_history SET owner = ?1 WHERE task_id = ?2")?;
            for r in &records {
                update.execute([me, r.task_id.as_str()])?;
            }
            Ok(Claim {
                records,
                dead_owners,
            })
        })
    }

    /// Deletes the rows `doomed` selects, with their tags, in one transaction; returns them.
    pub(crate) fn delete(&self, doomed: &[Doomed<'_>]) -> CoreResult<Vec<DeletedRow>> {
        self.in_write_tx("delete from", |tx| {
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
                    format!("SELECT {} FROM task_tags AS t JOIN task_history AS h ON h.task_id = t.task_id", h_columns()),
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
            conds.push("h.status = ?");
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

    #[test]
    fn creates_schema_and_reopens() {
        let (_d, path) = tmp();
        let s = Snapshot::open(&path).expect("open");
        let conn = Connection::open(&path).expect("conn");
        assert_eq!(schema_version(&conn).expect("version"), Some(3));
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
        let conn = Connection::open(path).expect("conn");
        let mut stmt = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .expect("plan");
        let rows = stmt.query_map([], |r| r.get::<_, String>(3)).expect("rows");
        rows.map(|r| r.expect("row")).collect::<Vec<_>>().join("; ")
    }

    #[test]
    fn migrates_version_2_files_to_3() {
        let (_d, path) = tmp();
        let conn = Connection::open(&path).expect("conn");
        conn.execute_batch("CREATE TABLE schema_version(version INTEGER NOT NULL)")
            .expect("version table");
        conn.execute_batch(MIGRATIONS[0]).expect("v1");
        conn.execute_batch(MIGRATIONS[1]).expect("v2");
        conn.execute_batch(
            "INSERT INTO schema_version VALUES (2); \
             INSERT INTO task_history(task_id, func_name, status, created_us) VALUES ('old', 'f', 'success', 5);",
        )
        .expect("v2 row");
        drop(conn);
        let s = Snapshot::open(&path).expect("open");
        let old = s.get("old").expect("get").expect("found");
        assert!(old.record.info.encrypted_payload.is_none() && old.record.info.retry_of.is_none());
        let conn = Connection::open(&path).expect("conn");
        assert_eq!(schema_version(&conn).expect("version"), Some(3));
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
                "task_history_end",
                "task_history_idempotency",
                "task_history_owner"
            ]
        );
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
        assert!(plan(&path, &sweep).contains("task_history_end"));
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
}
