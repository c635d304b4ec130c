//! `TaskStore`, the Python face of [`crate::core::store::TaskStore`].

use std::sync::Arc;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use crate::core::json::iso_string;
use crate::core::record::{Record, Tags};
use crate::core::store::{Change, NewTask, PageRequest, StoreConfig, TaskStore as CoreStore};

/// Task records, their indexes, metrics, the event ring and the snapshot file.
///
/// Thread-safe: every method may be called from any thread. Methods that touch the
/// SQLite file release the GIL while they wait on it.
#[pyclass(module = "fastapi_taskflow._core", name = "TaskStore", frozen)]
pub(crate) struct TaskStore {
    inner: CoreStore,
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
    let tags = PyDict::new(py);
    for (k, v) in i.tags.as_deref().unwrap_or_default() {
        tags.set_item(&**k, &**v)?;
    }
    d.set_item(intern!(py, "tags"), tags)?;
    d.set_item(intern!(py, "source"), &*i.source)?;
    d.set_item(intern!(py, "priority"), i.priority)?;
    d.set_item(intern!(py, "executor"), i.executor.as_deref())?;
    d.set_item(intern!(py, "queue"), &*i.queue)?;
    d.set_item(intern!(py, "idempotency_key"), i.idempotency_key.as_deref())?;
    let bytes = |b: &Option<Arc<[u8]>>| b.as_deref().map(|b| PyBytes::new(py, b));
    d.set_item(intern!(py, "args_json"), bytes(&i.args_json))?;
    d.set_item(intern!(py, "kwargs_json"), bytes(&i.kwargs_json))?;
    d.set_item(
        intern!(py, "encrypted_payload"),
        bytes(&i.encrypted_payload),
    )?;
    d.set_item(intern!(py, "logs_dropped"), r.logs_dropped)?;
    d.set_item(intern!(py, "retry_of"), i.retry_of.as_deref())?;
    Ok(d)
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
        let id = id.with_text(|text| PyString::new(py, text));
        PyTuple::new(
            py,
            [
                id.into_any(),
                pyo3::types::PyBool::new(py, created).to_owned().into_any(),
            ],
        )
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

    /// Number of records held in memory (live and finished).
    fn memory_len(&self) -> usize {
        self.inner.memory_len()
    }

    /// Close the snapshot file. Further flushes raise ``SnapshotError``.
    fn close(&self, py: Python<'_>) {
        py.detach(|| self.inner.close());
    }
}
