//! The compact form of a finished record: how memory keeps most of the history.
//!
//! A finished record of a plain task (no tags, priority, idempotency key, arguments or
//! `retry_of`) is described by its function, source, queue and executor, in which few tasks
//! differ: that description is interned once as a shape, and the record keeps a 16-bit shape
//! number, its times, retries and status (32 bytes), with error, stacktrace and logs behind
//! one optional box. Whatever does not fit (a 2^16th shape, retries beyond `u32`) stays in
//! the full form: compaction never changes what a record says.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::HashTable;

use super::record::{
    duration_seconds, push_log, write_task_json_at, Progress, Record, Status, TaskInfo,
};

/// `start_us` of a record that never started (a pending task cancelled).
const NO_START: i64 = i64::MIN;

/// A finished plain record without its id, creation time and revision (its slot has them).
#[derive(Debug)]
pub(crate) struct Compact {
    start_us: i64,
    end_us: i64,
    extra: Option<Box<Extra>>,
    retries_used: u32,
    shape: u16,
    status: Status,
}

/// What only some finished records have.
#[derive(Debug, Default)]
struct Extra {
    error: Option<Arc<str>>,
    stacktrace: Option<Arc<str>>,
    logs: VecDeque<Arc<str>>,
    logs_dropped: u64,
}

/// The interned descriptions of plain tasks: a `TaskInfo` each, with `created_us` 0.
#[derive(Debug, Default)]
pub(crate) struct Shapes {
    numbers: HashTable<u16>,
    infos: Vec<Arc<TaskInfo>>,
    hasher: foldhash::fast::RandomState,
}

/// The fields a shape stands for.
fn described_by(i: &TaskInfo) -> (&str, &str, &str, Option<&str>) {
    (&i.func_name, &i.source, &i.queue, i.executor.as_deref())
}

impl Shapes {
    /// The number of `info`'s shape, interned now if new; `None` once 2^16 are taken.
    fn intern(&mut self, info: &TaskInfo) -> Option<u16> {
        let Shapes {
            numbers,
            infos,
            hasher,
        } = self;
        let hash = hasher.hash_one(described_by(info));
        let same = |&n: &u16| described_by(&infos[usize::from(n)]) == described_by(info);
        if let Some(&n) = numbers.find(hash, same) {
            return Some(n);
        }
        let n = u16::try_from(infos.len()).ok()?;
        infos.push(Arc::new(TaskInfo {
            created_us: 0,
            ..info.clone()
        }));
        numbers.insert_unique(hash, n, |&m| {
            hasher.hash_one(described_by(&infos[usize::from(m)]))
        });
        Some(n)
    }

    fn info(&self, shape: u16) -> &TaskInfo {
        &self.infos[usize::from(shape)]
    }
}

impl Compact {
    /// The compact form of a finished `record`, if it has one: its error, stacktrace and
    /// logs are then taken out of `record`, which is left as it was otherwise.
    pub(crate) fn of(record: &mut Record, shapes: &mut Shapes) -> Option<Compact> {
        let (i, p) = (&record.info, &record.progress);
        let plain = i.tags.is_none()
            && i.priority.is_none()
            && i.idempotency_key.is_none()
            && i.args_json.is_none()
            && i.kwargs_json.is_none()
            && i.encrypted_payload.is_none()
            && i.retry_of.is_none();
        if !plain || !p.status.is_finished() {
            return None;
        }
        let start_us = match p.start_us {
            None => NO_START,
            Some(NO_START) => return None,
            Some(s) => s,
        };
        let end_us = p.end_us?;
        let retries_used = u32::try_from(p.retries_used).ok()?;
        let shape = shapes.intern(i)?;
        let p = &mut record.progress;
        let has_extra = p.error.is_some()
            || p.stacktrace.is_some()
            || !record.logs.is_empty()
            || record.logs_dropped > 0;
        let extra = has_extra.then(|| {
            Box::new(Extra {
                error: p.error.take(),
                stacktrace: p.stacktrace.take(),
                logs: std::mem::take(&mut record.logs),
                logs_dropped: record.logs_dropped,
            })
        });
        Some(Compact {
            start_us,
            end_us,
            extra,
            retries_used,
            shape,
            status: p.status,
        })
    }

    pub(crate) fn status(&self) -> Status {
        self.status
    }

    pub(crate) fn end_us(&self) -> i64 {
        self.end_us
    }

    pub(crate) fn duration(&self) -> Option<f64> {
        (self.start_us != NO_START).then(|| duration_seconds(self.start_us, self.end_us))
    }

    pub(crate) fn logs_dropped(&self) -> u64 {
        self.extra.as_ref().map_or(0, |e| e.logs_dropped)
    }

    pub(crate) fn progress(&self) -> Progress {
        let extra = self.extra.as_deref();
        Progress {
            status: self.status,
            start_us: (self.start_us != NO_START).then_some(self.start_us),
            end_us: Some(self.end_us),
            retries_used: i64::from(self.retries_used),
            error: extra.and_then(|e| e.error.clone()),
            stacktrace: extra.and_then(|e| e.stacktrace.clone()),
        }
    }

    /// The full record again, created at `created_us`.
    pub(crate) fn record(&self, created_us: i64, shapes: &Shapes) -> Record {
        Record {
            info: Arc::new(TaskInfo {
                created_us,
                ..shapes.info(self.shape).clone()
            }),
            progress: self.progress(),
            logs: self
                .extra
                .as_ref()
                .map(|e| e.logs.clone())
                .unwrap_or_default(),
            logs_dropped: self.logs_dropped(),
        }
    }

    /// Appends the record's 16-key JSON object (see `Record::write_json`).
    pub(crate) fn write_json(
        &self,
        buf: &mut Vec<u8>,
        task_id: &str,
        created_us: i64,
        shapes: &Shapes,
    ) {
        let no_logs = VecDeque::new();
        let logs = self.extra.as_ref().map_or(&no_logs, |e| &e.logs);
        let info = shapes.info(self.shape);
        write_task_json_at(buf, task_id, info, created_us, &self.progress(), Some(logs));
    }

    /// Appends a log line, dropping the oldest beyond `max_lines`.
    pub(crate) fn push_log(&mut self, line: Arc<str>, max_lines: usize) {
        let extra = self.extra.get_or_insert_with(Box::default);
        push_log(&mut extra.logs, &mut extra.logs_dropped, line, max_lines);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::record::tests::sample;

    /// A finished plain record: `sample()` without tags and priority.
    fn plain() -> Record {
        let mut r = sample();
        let info = Arc::make_mut(&mut r.info);
        info.tags = None;
        info.priority = None;
        r
    }

    fn json_of(r: &Record) -> Vec<u8> {
        let mut buf = Vec::new();
        r.write_json(&mut buf, "id");
        buf
    }

    #[test]
    fn a_plain_record_compacts_and_says_the_same() {
        let mut shapes = Shapes::default();
        for r in [plain(), {
            let mut r = plain();
            r.progress.start_us = None;
            r.progress.stacktrace = None;
            r.logs.clear();
            r
        }] {
            let c = Compact::of(&mut r.clone(), &mut shapes).expect("compact");
            let back = c.record(r.info.created_us, &shapes);
            assert_eq!(json_of(&back), json_of(&r));
            let mut buf = Vec::new();
            c.write_json(&mut buf, "id", r.info.created_us, &shapes);
            assert_eq!(buf, json_of(&r));
        }
        assert_eq!(shapes.infos.len(), 1, "one shape for both");
        assert!(std::mem::size_of::<Compact>() <= 32);
    }

    #[test]
    fn what_does_not_fit_stays_full() {
        let mut shapes = Shapes::default();
        let cases: [fn(&mut Record); 6] = [
            |r| Arc::make_mut(&mut r.info).priority = Some(1),
            |r| Arc::make_mut(&mut r.info).idempotency_key = Some("k".into()),
            |r| Arc::make_mut(&mut r.info).retry_of = Some("x".into()),
            |r| r.progress.retries_used = i64::from(u32::MAX) + 1,
            |r| r.progress.start_us = Some(NO_START),
            |r| r.progress.status = Status::Running,
        ];
        for spoil in cases {
            let mut r = plain();
            spoil(&mut r);
            let mut kept = r.clone();
            assert!(Compact::of(&mut kept, &mut shapes).is_none(), "stays full");
            assert_eq!(json_of(&kept), json_of(&r), "untouched");
        }
    }

    #[test]
    fn shapes_are_shared_by_description() {
        let mut shapes = Shapes::default();
        let with = |queue: &str, executor: Option<&str>| {
            let mut r = plain();
            let info = Arc::make_mut(&mut r.info);
            info.queue = queue.into();
            info.executor = executor.map(Arc::from);
            info.created_us += 1;
            r
        };
        let mut shape = |mut r: Record| Compact::of(&mut r, &mut shapes).expect("compact").shape;
        let a = shape(with("q", None));
        let b = shape(with("q", Some("thread")));
        let c = shape(with("r", None));
        let again = shape(with("q", None));
        assert_eq!((a, again), (0, 0));
        assert_eq!((b, c), (1, 2));
    }

    #[test]
    fn logs_appended_after_the_end_are_kept_and_bounded() {
        let mut shapes = Shapes::default();
        let mut r = plain();
        r.logs.clear();
        r.progress.stacktrace = None;
        let mut c = Compact::of(&mut r, &mut shapes).expect("compact");
        assert!(c.extra.is_none());
        for line in ["a", "b", "c"] {
            c.push_log(line.into(), 2);
        }
        let back = c.record(0, &shapes);
        assert_eq!(
            back.logs.iter().map(|l| &**l).collect::<Vec<_>>(),
            ["b", "c"]
        );
        assert_eq!((back.logs_dropped, c.logs_dropped()), (1, 1));
    }
}
