//! The SQLite snapshot file: schema and migrations, history flush, reads for pages and
//! details, and the metric rows read at open.
//!
//! The file format is shared with the pure-Python core (`_pycore`): either core opens the
//! other's files. One writer and one reader connection, each behind its own lock, so reads
//! proceed while a flush writes (WAL).

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use rusqlite::types::{Value, ValueRef};
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, TransactionBehavior, MAIN_DB};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

use super::error::{CoreError, CoreResult};
use super::record::{write_logs, write_tags, Progress, Record, Status, TaskInfo, UuidText};

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
"];

const COLUMNS: &str = "task_id, func_name, status, created_us, start_us, end_us, retries_used, error, \
stacktrace, logs_json, tags_json, source, priority, executor, queue, idempotency_key, args_json, kwargs_json, \
logs_dropped";

const UPSERT: &str = "INSERT INTO task_history(task_id, func_name, status, created_us, start_us, end_us, \
retries_used, error, stacktrace, logs_json, tags_json, source, priority, executor, queue, idempotency_key, \
args_json, kwargs_json, logs_dropped) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, \
?19) \
ON CONFLICT(task_id) DO UPDATE SET func_name = excluded.func_name, status = excluded.status, \
created_us = excluded.created_us, start_us = excluded.start_us, end_us = excluded.end_us, \
retries_used = excluded.retries_used, error = excluded.error, stacktrace = excluded.stacktrace, \
logs_json = excluded.logs_json, tags_json = excluded.tags_json, source = excluded.source, \
priority = excluded.priority, executor = excluded.executor, queue = excluded.queue, \
idempotency_key = excluded.idempotency_key, args_json = excluded.args_json, kwargs_json = excluded.kwargs_json, \
logs_dropped = excluded.logs_dropped";

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

/// An open snapshot file.
pub(crate) struct Snapshot {
    path: String,
    writer: Mutex<Option<Connection>>,
    /// `None` for an in-memory database, which only the writer connection can see.
    reader: Option<Mutex<Option<Connection>>>,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("path", &self.path)
            .finish()
    }
}

/// What to tell the user about an SQLite error on `path`.
fn describe(path: &str, doing: &str, e: &rusqlite::Error) -> CoreError {
    let advice = match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => {
            return CoreError::Snapshot(format!(
                "{path}: file is not a SQLite database; move it aside or delete it to start with an empty history"
            ))
        }
        Some(ErrorCode::DatabaseCorrupt) => {
            "the file is corrupt; move it aside or delete it to start with an empty history"
        }
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
        .map_err(|e| describe(path, "read", &e))?
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
                return Err(describe(
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
        let in_memory = path.is_empty() || path == ":memory:";
        let mut writer = Connection::open(path).map_err(|e| describe(path, "open", &e))?;
        configure(&writer).map_err(|e| describe(path, "open", &e))?;
        if !in_memory {
            let mode: String = writer
                .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
                .map_err(|e| describe(path, "open", &e))?;
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
        migrate(path, &mut writer)?;
        let reader = if in_memory {
            None
        } else {
            let conn = Connection::open(path).map_err(|e| describe(path, "open", &e))?;
            configure(&conn).map_err(|e| describe(path, "open", &e))?;
            Some(Mutex::new(Some(conn)))
        };
        Ok(Snapshot {
            path: path.to_owned(),
            writer: Mutex::new(Some(writer)),
            reader,
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
        let guard = lock(self.reader.as_ref().unwrap_or(&self.writer));
        match guard.as_ref() {
            None => Ok(None),
            Some(conn) => f(conn)
                .map(Some)
                .map_err(|e| describe(&self.path, doing, &e)),
        }
    }

    /// Calls `each` for every stored record's name, status and times (for metrics at open).
    pub(crate) fn for_each_metric_row(&self, mut each: impl FnMut(MetricRow)) -> CoreResult<()> {
        self.with_reader("read", |conn| {
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

    /// Upserts `records` in one transaction; returns how many were written.
    pub(crate) fn write(&self, records: &[(u128, Record)]) -> CoreResult<usize> {
        let mut guard = lock(&self.writer);
        let conn = guard.as_mut().ok_or_else(|| self.closed())?;
        let mut logs_buf = Vec::with_capacity(256);
        let mut tags_buf = Vec::with_capacity(64);
        let result = (|| -> rusqlite::Result<()> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
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
                    ])?;
                    for (key, value) in i.tags.as_deref().unwrap_or_default() {
                        tag_stmt.execute(params![
                            id_text.as_str(),
                            &**key,
                            &**value,
                            i.created_us
                        ])?;
                    }
                }
            }
            tx.commit()
        })();
        result.map_err(|e| describe(&self.path, "write", &e))?;
        Ok(records.len())
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

    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.writer).is_none()
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
        assert_eq!(schema_version(&conn).expect("version"), Some(2));
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
            s.write(&[(1, a.clone()), (2, b.clone())]).expect("write"),
            2
        );
        a.logs.push_back("later".into());
        s.write(&[(1, a.clone())]).expect("upsert");
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
        assert!(s.is_closed());
        assert!(
            matches!(s.write(&[(3, sample())]), Err(CoreError::Snapshot(m)) if m.contains("closed"))
        );
        assert!(s.get(id1.as_str()).expect("get").is_none());
    }

    #[test]
    fn refuses_files_it_cannot_use() {
        let (d, path) = tmp();
        std::fs::write(&path, vec![b'x'; 4096]).expect("junk");
        let err = Snapshot::open(&path).expect_err("junk");
        assert!(
            matches!(&err, CoreError::Snapshot(m) if m.contains(&path) && m.contains("not a SQLite database")),
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
        s.write(&[(7, sample())]).expect("write");
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
}
