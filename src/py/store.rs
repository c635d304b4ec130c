//! `TaskStore`, the Python face of [`crate::core::store::TaskStore`].

use std::sync::Arc;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyInt, PyList, PyString, PyTuple};

use crate::core::json::iso_string;
use crate::core::record::{Record, Tags};
use crate::core::snapshot::{OneOff, Scheduled, TaskRow};
use crate::core::store::{
    Change, NewTask, PageRequest, StoreConfig, TaskId, TaskStore as CoreStore,
};
use crate::core::write_behind::Wake;

/// Task records, their indexes, metrics, the event ring and the snapshot file.
///
/// Thread-safe: every method may be called from any thread. Methods that touch the
/// SQLite file release the GIL while they wait on it.
#[pyclass(module = "fastapi_taskflow._core", name = "TaskStore", frozen)]
pub(crate) struct TaskStore {
    /// Shared with the threads of `write_behind`.
    inner: Arc<CoreStore>,
}

/// A wake for the core: calls `wake` with the GIL (the change that calls it holds the GIL
/// already); what it raises is reported as unraisable, since the change is made.
fn call_once(wake: Py<PyAny>) -> Wake {
    Box::new(move || {
        Python::attach(|py| {
            if let Err(e) = wake.call0(py) {
                e.write_unraisable(py, Some(wake.bind(py)));
            }
        });
    })
}

fn tags_from(dict: &Bound<'_, PyDict>) -> PyResult<Option<Tags>> {
    if dict.is_empty() {
        return Ok(None);
    }
    let mut tags = Vec::with_capacity(dict.len());
    for (k, v) in dict.iter() {
        let k = k.cast::<PyString>()?.to_str()?;
        let v = v.cast::<PyString>()?.to_str()?;
        tags.push((Box::from(k), Box::from(v)));
    }
    Ok(Some(Arc::from(tags)))
}

fn record_dict<'py>(py: Python<'py>, task_id: &str, r: &Record) -> PyResult<Bound<'py, PyDict>> {
    let (i, p) = (&*r.info, &r.progress);
    let d = PyDict::new(py);
    let iso = |us: Option<i64>| us.map(iso_string);
    d.set_item(intern!(py, "task_id"), task_id)?;
    d.set_item(intern!(py, "func_name"), &*i.func_name)?;
    d.set_item(intern!(py, "status"), p.status.as_str())?;
    d.set_item(intern!(py, "created_at"), iso_string(i.created_us))?;
    d.set_item(intern!(py, "start_time"), iso(p.start_us))?;
    d.set_item(intern!(py, "end_time"), iso(p.end_us))?;
    d.set_item(intern!(py, "duration"), p.duration())?;
    d.set_item(intern!(py, "retries_used"), p.retries_used)?;
    d.set_item(intern!(py, "error"), p.error.as_deref())?;
    let logs = PyList::new(py, r.logs.iter().map(|l| &**l))?;
    d.set_item(intern!(py, "logs"), logs)?;
    d.set_item(intern!(py, "stacktrace"), p.stacktrace.as_deref())?;
    d.set_item(intern!(py, "tags"), tags_dict(py, i.tags.as_ref())?)?;
    d.set_item(intern!(py, "source"), &*i.source)?;
    d.set_item(intern!(py, "priority"), i.priority)?;
    d.set_item(intern!(py, "executor"), i.executor.as_deref())?;
    d.set_item(intern!(py, "queue"), &*i.queue)?;
    d.set_item(intern!(py, "idempotency_key"), i.idempotency_key.as_deref())?;
    d.set_item(intern!(py, "args_json"), bytes(py, &i.args_json))?;
    d.set_item(intern!(py, "kwargs_json"), bytes(py, &i.kwargs_json))?;
    d.set_item(
        intern!(py, "encrypted_payload"),
        bytes(py, &i.encrypted_payload),
    )?;
    d.set_item(intern!(py, "logs_dropped"), r.logs_dropped)?;
    d.set_item(intern!(py, "retry_of"), i.retry_of.as_deref())?;
    Ok(d)
}

fn tags_dict<'py>(py: Python<'py>, tags: Option<&Tags>) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (k, v) in tags.map(|t| &**t).unwrap_or_default() {
        d.set_item(&**k, &**v)?;
    }
    Ok(d)
}

fn bytes<'py>(py: Python<'py>, b: &Option<Arc<[u8]>>) -> Option<Bound<'py, PyBytes>> {
    b.as_deref().map(|b| PyBytes::new(py, b))
}

fn id_str<'py>(py: Python<'py>, id: &TaskId) -> Bound<'py, PyString> {
    id.with_text(|text| PyString::new(py, text))
}

fn id_and_flag<'py>(py: Python<'py>, id: &TaskId, flag: bool) -> PyResult<Bound<'py, PyTuple>> {
    PyTuple::new(
        py,
        [
            id_str(py, id).into_any(),
            PyBool::new(py, flag).to_owned().into_any(),
        ],
    )
}

fn scheduled_dict<'py>(py: Python<'py>, s: &Scheduled) -> PyResult<Bound<'py, PyDict>> {
    let t = &s.task;
    let d = PyDict::new(py);
    d.set_item(intern!(py, "run_key"), &s.run_key)?;
    d.set_item(intern!(py, "func_name"), &t.func_name)?;
    d.set_item(intern!(py, "fire_us"), s.fire_us)?;
    d.set_item(intern!(py, "created_us"), s.created_us)?;
    d.set_item(intern!(py, "args_json"), bytes(py, &t.args_json))?;
    d.set_item(intern!(py, "kwargs_json"), bytes(py, &t.kwargs_json))?;
    d.set_item(
        intern!(py, "encrypted_payload"),
        bytes(py, &t.encrypted_payload),
    )?;
    d.set_item(intern!(py, "queue"), &t.queue)?;
    d.set_item(intern!(py, "priority"), t.priority)?;
    d.set_item(intern!(py, "idempotency_key"), t.idempotency_key.as_deref())?;
    d.set_item(intern!(py, "tags"), tags_dict(py, t.tags.as_ref())?)?;
    Ok(d)
}

/// A `TaskRow` dict, its keys in the order of `TaskRow` in `backends/base.py`.
fn task_row_dict<'py>(py: Python<'py>, r: &TaskRow) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item(intern!(py, "task_id"), &r.task_id)?;
    d.set_item(intern!(py, "func_name"), &*r.func_name)?;
    d.set_item(intern!(py, "status"), &r.status)?;
    d.set_item(intern!(py, "created_us"), r.created_us)?;
    d.set_item(intern!(py, "start_us"), r.start_us)?;
    d.set_item(intern!(py, "end_us"), r.end_us)?;
    d.set_item(intern!(py, "retries_used"), r.retries_used)?;
    d.set_item(intern!(py, "error"), r.error.as_deref())?;
    d.set_item(intern!(py, "stacktrace"), r.stacktrace.as_deref())?;
    d.set_item(intern!(py, "logs_json"), &r.logs_json)?;
    d.set_item(intern!(py, "logs_dropped"), r.logs_dropped)?;
    d.set_item(intern!(py, "tags_json"), &r.tags_json)?;
    d.set_item(intern!(py, "source"), &*r.source)?;
    d.set_item(intern!(py, "priority"), r.priority)?;
    d.set_item(intern!(py, "executor"), r.executor.as_deref())?;
    d.set_item(intern!(py, "queue"), &*r.queue)?;
    d.set_item(intern!(py, "idempotency_key"), r.idempotency_key.as_deref())?;
    d.set_item(intern!(py, "args_json"), bytes(py, &r.args_json))?;
    d.set_item(intern!(py, "kwargs_json"), bytes(py, &r.kwargs_json))?;
    d.set_item(
        intern!(py, "encrypted_payload"),
        bytes(py, &r.encrypted_payload),
    )?;
    d.set_item(intern!(py, "retry_of"), r.retry_of.as_deref())?;
    d.set_item(intern!(py, "owner"), r.owner.as_deref())?;
    Ok(d)
}

/// Reads the values of one `TaskRow` dict given to `adopt`, refusing a missing key or a
/// value of another type with a `ValueError` naming the row and the key. Twin:
/// `_task_row_values` in `_pycore/store.py` (same order, same messages).
struct RowReader<'a, 'py> {
    dict: &'a Bound<'py, PyDict>,
    /// `task '<id>'`, or `row <index>` while the id is not a str.
    subject: String,
}

impl<'py> RowReader<'_, 'py> {
    fn value(&self, field: &str) -> PyResult<Bound<'py, PyAny>> {
        self.dict.get_item(field)?.ok_or_else(|| {
            PyValueError::new_err(format!("adopt: {} has no field '{field}'", self.subject))
        })
    }

    fn wrong(&self, field: &str, expected: &str, v: &Bound<'py, PyAny>) -> PyErr {
        let got = match v.get_type().name() {
            Ok(name) => name.to_string(),
            Err(e) => return e,
        };
        PyValueError::new_err(format!(
            "adopt: {}: field '{field}' must be {expected}, not {got}",
            self.subject
        ))
    }

    fn text(&self, field: &str, v: &Bound<'py, PyAny>, expected: &str) -> PyResult<String> {
        match v.cast::<PyString>() {
            Ok(s) => Ok(s.to_str()?.to_owned()),
            Err(_) => Err(self.wrong(field, expected, v)),
        }
    }

    fn str(&self, field: &str) -> PyResult<String> {
        self.text(field, &self.value(field)?, "a str")
    }

    fn opt_str(&self, field: &str) -> PyResult<Option<String>> {
        let v = self.value(field)?;
        if v.is_none() {
            return Ok(None);
        }
        self.text(field, &v, "a str or None").map(Some)
    }

    fn number(&self, field: &str, v: &Bound<'py, PyAny>, expected: &str) -> PyResult<i64> {
        // bool is an int subclass in Python, but never a number of a row.
        if v.is_instance_of::<PyBool>() || !v.is_instance_of::<PyInt>() {
            return Err(self.wrong(field, expected, v));
        }
        v.extract::<i64>().map_err(|_| {
            PyValueError::new_err(format!(
                "adopt: {}: field '{field}' must be {expected}, got {}",
                self.subject,
                v.repr().map(|r| r.to_string()).unwrap_or_default()
            ))
        })
    }

    fn int(&self, field: &str) -> PyResult<i64> {
        self.number(field, &self.value(field)?, "a 64-bit int")
    }

    fn opt_int(&self, field: &str) -> PyResult<Option<i64>> {
        let v = self.value(field)?;
        if v.is_none() {
            return Ok(None);
        }
        self.number(field, &v, "a 64-bit int or None").map(Some)
    }

    fn opt_bytes(&self, field: &str) -> PyResult<Option<Arc<[u8]>>> {
        let v = self.value(field)?;
        if v.is_none() {
            return Ok(None);
        }
        match v.cast::<PyBytes>() {
            Ok(b) => Ok(Some(Arc::from(b.as_bytes()))),
            Err(_) => Err(self.wrong(field, "bytes or None", &v)),
        }
    }
}

/// `rows[index]` as a [`TaskRow`]; the keys are read in `TaskRow`'s order, so the first
/// bad one is reported.
fn task_row_from(index: usize, item: &Bound<'_, PyAny>) -> PyResult<TaskRow> {
    let dict = item.cast::<PyDict>().map_err(|_| {
        let got = item.get_type().name().map(|n| n.to_string());
        PyTypeError::new_err(format!(
            "adopt: row {index} must be a dict, not {}",
            got.unwrap_or_default()
        ))
    })?;
    let mut r = RowReader {
        dict,
        subject: format!("row {index}"),
    };
    let task_id = r.str("task_id")?;
    r.subject = format!("task '{task_id}'");
    Ok(TaskRow {
        task_id,
        func_name: Arc::from(r.str("func_name")?),
        status: r.str("status")?,
        created_us: r.int("created_us")?,
        start_us: r.opt_int("start_us")?,
        end_us: r.opt_int("end_us")?,
        retries_used: r.int("retries_used")?,
        error: r.opt_str("error")?.map(Arc::from),
        stacktrace: r.opt_str("stacktrace")?.map(Arc::from),
        logs_json: r.str("logs_json")?,
        logs_dropped: r.int("logs_dropped")?,
        tags_json: r.str("tags_json")?,
        source: Arc::from(r.str("source")?),
        priority: r.opt_int("priority")?,
        executor: r.opt_str("executor")?.map(Arc::from),
        queue: Arc::from(r.str("queue")?),
        idempotency_key: r.opt_str("idempotency_key")?.map(Arc::from),
        args_json: r.opt_bytes("args_json")?,
        kwargs_json: r.opt_bytes("kwargs_json")?,
        encrypted_payload: r.opt_bytes("encrypted_payload")?,
        retry_of: r.opt_str("retry_of")?.map(Arc::from),
        owner: r.opt_str("owner")?,
    })
}

#[pymethods]
impl TaskStore {
    #[new]
    #[pyo3(signature = (
        db_path=None, *, max_history=10_000, ring_capacity=65_536, max_log_lines=1_000,
        idempotency_ttl=None
    ))]
    fn new(
        py: Python<'_>,
        db_path: Option<&str>,
        max_history: i64,
        ring_capacity: i64,
        max_log_lines: i64,
        idempotency_ttl: Option<f64>,
    ) -> PyResult<TaskStore> {
        let cfg = StoreConfig {
            max_history,
            ring_capacity,
            max_log_lines,
            idempotency_ttl,
        };
        let inner = py.detach(|| CoreStore::open(db_path, cfg))?;
        Ok(TaskStore { inner })
    }

    #[getter]
    fn db_path(&self) -> Option<&str> {
        self.inner.db_path()
    }

    /// A fresh UUID4 text per store: the ``owner`` of this store's journal rows.
    #[getter]
    fn instance_id(&self) -> &str {
        self.inner.instance_id()
    }

    /// Sequence number of the newest event in the ring; 0 before the first.
    #[getter]
    fn last_seq(&self) -> u64 {
        self.inner.last_seq()
    }

    /// Create a PENDING record with a fresh UUID4 id; return ``(task_id, True)``, or
    /// ``(holder_id, False)`` when the idempotency key is held.
    #[pyo3(signature = (
        func_name, *, queue="default", executor=None, priority=None, source="manual", tags=None,
        idempotency_key=None, args_json=None, kwargs_json=None, encrypted_payload=None,
        retry_of=None, journal=false
    ))]
    #[allow(clippy::too_many_arguments)]
    fn create<'py>(
        &self,
        py: Python<'py>,
        func_name: &str,
        queue: &str,
        executor: Option<&str>,
        priority: Option<i64>,
        source: &str,
        tags: Option<&Bound<'py, PyDict>>,
        idempotency_key: Option<&str>,
        args_json: Option<&[u8]>,
        kwargs_json: Option<&[u8]>,
        encrypted_payload: Option<&[u8]>,
        retry_of: Option<&str>,
        journal: bool,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let tags = match tags {
            Some(d) => tags_from(d)?,
            None => None,
        };
        let task = NewTask {
            func_name,
            queue,
            executor,
            priority,
            source,
            tags,
            idempotency_key,
            args_json,
            kwargs_json,
            encrypted_payload,
            retry_of,
            journal,
        };
        // Only a key with a file may read the file; otherwise create is a short step in memory.
        let (id, created) = if idempotency_key.is_some() && self.inner.has_disk() {
            py.detach(|| self.inner.create(task))?
        } else {
            self.inner.create(task)?
        };
        id_and_flag(py, &id, created)
    }

    /// ``create`` of the common task, without key, tags, priority or stored arguments: a
    /// PENDING, manual, unjournaled record; returns its fresh id. Positional and without
    /// the ``created`` flag because ``add_task`` makes this call once per task (no key
    /// means always created) and keyword parsing is most of a binding's cost there.
    #[pyo3(signature = (func_name, queue, executor, /))]
    fn create_plain<'py>(
        &self,
        py: Python<'py>,
        func_name: &str,
        queue: &str,
        executor: &str,
    ) -> PyResult<Bound<'py, PyString>> {
        let task = NewTask {
            queue,
            executor: Some(executor),
            ..NewTask::named(func_name)
        };
        let (id, _) = self.inner.create(task)?;
        Ok(id_str(py, &id))
    }

    /// Move a record to ``status``; False when the move is not allowed.
    #[pyo3(signature = (task_id, status, *, error=None, stacktrace=None, retries_used=None))]
    fn transition(
        &self,
        task_id: &str,
        status: &str,
        error: Option<&str>,
        stacktrace: Option<&str>,
        retries_used: Option<i64>,
    ) -> PyResult<bool> {
        Ok(self.inner.transition(
            task_id,
            status,
            Change {
                error,
                stacktrace,
                retries_used,
            },
        )?)
    }

    /// Append one line to the record's logs (bounded) and emit a ``log`` event.
    fn append_log(&self, task_id: &str, line: &str) -> PyResult<()> {
        Ok(self.inner.append_log(task_id, line)?)
    }

    /// The record as a dict, from memory or else from the snapshot file.
    fn get<'py>(&self, py: Python<'py>, task_id: &str) -> PyResult<Option<Bound<'py, PyDict>>> {
        let record = match self.inner.get_memory(task_id) {
            Some(r) => Some(r),
            None if self.inner.has_disk() => py.detach(|| self.inner.get_disk(task_id))?,
            None => None,
        };
        record.map(|r| record_dict(py, task_id, &r)).transpose()
    }

    /// The record's JSON object, or None when the id is unknown.
    fn get_json<'py>(
        &self,
        py: Python<'py>,
        task_id: &str,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let json = match self.inner.get_json_memory(task_id) {
            Some(j) => Some(j),
            None if self.inner.has_disk() => py.detach(|| self.inner.get_json(task_id))?,
            None => None,
        };
        Ok(json.map(|j| PyBytes::new(py, &j)))
    }

    /// One page of records as a JSON array, newest first, and the next cursor.
    #[pyo3(signature = (*, status=None, func_name=None, limit=100, cursor=None, tag=None))]
    fn page_json<'py>(
        &self,
        py: Python<'py>,
        status: Option<&str>,
        func_name: Option<&str>,
        limit: i64,
        cursor: Option<&str>,
        tag: Option<&str>,
    ) -> PyResult<(Bound<'py, PyBytes>, Option<String>)> {
        let req = PageRequest {
            status,
            func_name,
            tag,
            limit,
            cursor,
        };
        let page = if self.inner.has_disk() {
            py.detach(|| self.inner.page(&req))?
        } else {
            self.inner.page(&req)?
        };
        let json = PyBytes::new_with(py, page.json_len(), |buf| {
            page.write_json(buf);
            Ok(())
        })?;
        Ok((json, page.next))
    }

    /// Aggregates over every task this store has seen, memory and disk, as JSON.
    fn metrics_json<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let snapshot = self.inner.metrics();
        PyBytes::new(py, &snapshot.to_json())
    }

    /// The same aggregates as OpenMetrics 1.0 text, plus the pending depth per queue.
    fn metrics_prometheus<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.metrics_prometheus())
    }

    /// Events with a sequence number above ``after``, oldest first, at most ``limit``, and
    /// whether some were missed.
    #[pyo3(signature = (after, limit=1_000))]
    fn events_since<'py>(
        &self,
        py: Python<'py>,
        after: i64,
        limit: i64,
    ) -> PyResult<(Bound<'py, PyList>, bool)> {
        let (events, missed) = self.inner.events_since(after, limit)?;
        let items = PyList::new(
            py,
            events
                .iter()
                .map(|(seq, json)| (*seq, PyBytes::new(py, json))),
        )?;
        Ok((items, missed))
    }

    /// Write every finished record changed since the last flush and every journaled record
    /// whose row is out of date, in one transaction.
    fn flush(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(py.detach(|| self.inner.flush())?)
    }

    /// From now on, flush on a thread of the core's own, which never needs the GIL,
    /// whenever a change leaves ``threshold`` records unwritten; None stops it.
    #[pyo3(signature = (threshold, /))]
    fn write_behind(&self, threshold: Option<i64>) -> PyResult<()> {
        Ok(self.inner.write_behind(threshold)?)
    }

    /// Call ``wake()`` once, the next time a change leaves a record unwritten; None drops
    /// the callable given before.
    #[pyo3(signature = (wake, /))]
    fn on_unwritten(&self, wake: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let wake = match wake {
            Some(w) if !w.is_callable() => {
                return Err(PyTypeError::new_err(format!(
                    "on_unwritten() wants a callable or None, got {}",
                    w.get_type().name()?
                )));
            }
            Some(w) => Some(call_once(w.unbind())),
            None => None,
        };
        self.inner.on_unwritten(wake);
        Ok(())
    }

    /// Take over the unfinished rows of owners that are gone, and load them; their
    /// ``get()`` dicts, oldest first.
    fn claim_orphans<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let loaded = py.detach(|| self.inner.claim_orphans())?;
        let dicts = loaded
            .iter()
            .map(|(id, r)| record_dict(py, id, r))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, dicts)
    }

    /// The rows written to the file after ``after_seq``, in write order, at most ``limit``,
    /// and the ``sync_seq`` of the last one (``after_seq`` when there is none).
    #[pyo3(signature = (after_seq, limit=1_000))]
    fn changed_rows<'py>(
        &self,
        py: Python<'py>,
        after_seq: i64,
        limit: i64,
    ) -> PyResult<(Bound<'py, PyList>, i64)> {
        let (rows, last) = py.detach(|| self.inner.changed_rows(after_seq, limit))?;
        let dicts = rows
            .iter()
            .map(|r| task_row_dict(py, r))
            .collect::<PyResult<Vec<_>>>()?;
        Ok((PyList::new(py, dicts)?, last))
    }

    /// Take over unfinished rows of dead instances (this file's own rows of other owners
    /// included) as journaled records of this store; their ``get()`` dicts, oldest first.
    fn adopt<'py>(
        &self,
        py: Python<'py>,
        rows: Vec<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let rows = rows
            .iter()
            .enumerate()
            .map(|(i, d)| task_row_from(i, d))
            .collect::<PyResult<Vec<_>>>()?;
        let adopted = py.detach(|| self.inner.adopt(rows))?;
        let dicts = adopted
            .iter()
            .map(|(id, r)| record_dict(py, id, r))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, dicts)
    }

    /// Delete finished records that ended before ``end_before_us``; ``(from memory, from file)``.
    fn delete_finished_before(
        &self,
        py: Python<'_>,
        end_before_us: i64,
    ) -> PyResult<(usize, usize)> {
        Ok(py.detach(|| self.inner.delete_finished_before(end_before_us))?)
    }

    /// Delete one finished record from memory and the file; False when unknown or unfinished.
    fn delete(&self, py: Python<'_>, task_id: &str) -> PyResult<bool> {
        Ok(py.detach(|| self.inner.delete(task_id))?)
    }

    /// Take the schedule lock ``key`` for ``ttl`` seconds unless it is held; True when taken.
    fn acquire_lock(&self, py: Python<'_>, key: &str, ttl: f64) -> PyResult<bool> {
        Ok(py.detach(|| self.inner.acquire_lock(key, ttl))?)
    }

    /// Save (or reschedule) the one-off ``run_key``, due at ``fire_us``.
    #[pyo3(signature = (
        run_key, func_name, fire_us, *, args_json=None, kwargs_json=None, encrypted_payload=None,
        queue="default", priority=None, idempotency_key=None, tags=None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn save_scheduled(
        &self,
        py: Python<'_>,
        run_key: &str,
        func_name: &str,
        fire_us: i64,
        args_json: Option<&[u8]>,
        kwargs_json: Option<&[u8]>,
        encrypted_payload: Option<&[u8]>,
        queue: &str,
        priority: Option<i64>,
        idempotency_key: Option<&str>,
        tags: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        let task = OneOff {
            func_name: func_name.to_owned(),
            args_json: args_json.map(Arc::from),
            kwargs_json: kwargs_json.map(Arc::from),
            encrypted_payload: encrypted_payload.map(Arc::from),
            queue: queue.to_owned(),
            priority,
            idempotency_key: idempotency_key.map(Arc::from),
            tags: match tags {
                Some(d) => tags_from(d)?,
                None => None,
            },
        };
        Ok(py.detach(|| self.inner.save_scheduled(run_key, fire_us, task))?)
    }

    /// The one-offs due at ``before_us``, by ``(fire_us, run_key)``, at most ``limit``.
    #[pyo3(signature = (before_us, limit=1_000))]
    fn load_due<'py>(
        &self,
        py: Python<'py>,
        before_us: i64,
        limit: i64,
    ) -> PyResult<Bound<'py, PyList>> {
        let due = py.detach(|| self.inner.load_due(before_us, limit))?;
        let dicts = due
            .iter()
            .map(|s| scheduled_dict(py, s))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, dicts)
    }

    /// Delete the one-off ``run_key``; True when there was one.
    fn delete_scheduled(&self, py: Python<'_>, run_key: &str) -> PyResult<bool> {
        Ok(py.detach(|| self.inner.delete_scheduled(run_key))?)
    }

    /// Consume the one-off ``run_key`` and create its task; None when it is gone.
    #[pyo3(signature = (run_key, *, executor=None, journal=true))]
    fn fire_scheduled<'py>(
        &self,
        py: Python<'py>,
        run_key: &str,
        executor: Option<&str>,
        journal: bool,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let fired = py.detach(|| self.inner.fire_scheduled(run_key, executor, journal))?;
        fired
            .map(|(id, created)| id_and_flag(py, &id, created))
            .transpose()
    }

    /// Set the metadata ``key`` to ``value``.
    fn save_metadata(&self, py: Python<'_>, key: &str, value: &str) -> PyResult<()> {
        Ok(py.detach(|| self.inner.save_metadata(key, value))?)
    }

    /// The metadata value of ``key``, or None.
    fn load_metadata(&self, py: Python<'_>, key: &str) -> PyResult<Option<String>> {
        Ok(py.detach(|| self.inner.load_metadata(key))?)
    }

    /// Number of records held in memory (live and finished).
    fn memory_len(&self) -> usize {
        self.inner.memory_len()
    }

    /// Close the snapshot file. Further flushes raise ``SnapshotError``.
    fn close(&self, py: Python<'_>) {
        py.detach(|| self.inner.close());
    }
}
