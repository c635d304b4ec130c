//! One task record, its status, its id and its JSON shape.

use std::collections::VecDeque;
use std::sync::Arc;

use super::json::{
    write_int, write_opt_f64, write_opt_int, write_opt_iso, write_opt_str, write_str,
};

/// Status names in metrics order. Twin: `TaskStatus` in `python/fastapi_taskflow/models.py`
/// and `STATUSES` in `_pycore`.
pub(crate) const STATUSES: [&str; 7] = [
    "pending",
    "running",
    "success",
    "failed",
    "interrupted",
    "cancelled",
    "rejected",
];

/// A task's lifecycle state; the discriminant indexes [`STATUSES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub(crate) enum Status {
    Pending = 0,
    Running = 1,
    Success = 2,
    Failed = 3,
    Interrupted = 4,
    Cancelled = 5,
    Rejected = 6,
}

impl Status {
    pub(crate) const ALL: [Status; 7] = [
        Status::Pending,
        Status::Running,
        Status::Success,
        Status::Failed,
        Status::Interrupted,
        Status::Cancelled,
        Status::Rejected,
    ];

    pub(crate) fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "pending" => Status::Pending,
            "running" => Status::Running,
            "success" => Status::Success,
            "failed" => Status::Failed,
            "interrupted" => Status::Interrupted,
            "cancelled" => Status::Cancelled,
            "rejected" => Status::Rejected,
            _ => return None,
        })
    }

    pub(crate) fn as_str(self) -> &'static str {
        STATUSES[self as usize]
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    pub(crate) fn is_finished(self) -> bool {
        !matches!(self, Status::Pending | Status::Running)
    }

    /// A record in one of these statuses keeps its idempotency key; the others free it.
    pub(crate) fn holds_key(self) -> bool {
        matches!(self, Status::Pending | Status::Running | Status::Success)
    }

    /// The moves `transition` allows (see `_core.pyi`).
    pub(crate) fn can_move_to(self, to: Status) -> bool {
        match self {
            Status::Pending => matches!(
                to,
                Status::Running | Status::Cancelled | Status::Rejected | Status::Interrupted
            ),
            Status::Running => true,
            _ => false,
        }
    }
}

/// A message listing the valid statuses, for `ValueError`s.
pub(crate) fn unknown_status_message(s: &str) -> String {
    format!(
        "unknown status {s:?}; expected one of {}",
        STATUSES.join(", ")
    )
}

thread_local! {
    /// The process generation (see [`process_generation`]) that seeded this thread's
    /// generator; `None` before the first id.
    static SEEDED_IN: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// Forks that led to this process, counted in each child by a fork handler.
#[cfg(unix)]
static FORKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// What tells this process from its parent and from its forked children, asked on every id.
///
/// The pid would do, but asking for it is a system call (glibc no longer caches it), a tenth
/// of what a `create` costs: a fork handler counting forks makes it a load instead. Where no
/// handler could be registered (or there is no `fork`), the pid.
fn process_generation() -> u64 {
    #[cfg(unix)]
    {
        use std::sync::atomic::Ordering;
        static COUNTING: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        extern "C" fn count_fork() {
            FORKS.fetch_add(1, Ordering::Relaxed);
        }
        let counting = *COUNTING.get_or_init(|| {
            // SAFETY: the handler lives as long as the process (a plain function) and only
            // bumps an atomic, which is async-signal-safe, as the child of a fork requires.
            unsafe { libc::pthread_atfork(None, None, Some(count_fork)) == 0 }
        });
        if counting {
            return FORKS.load(Ordering::Relaxed);
        }
    }
    u64::from(std::process::id())
}

/// Seeds this thread's generator from the OS, once per thread and again in a forked child.
///
/// fastrand seeds itself from the monotonic clock and the thread id only, so processes
/// starting at the same instant (workers of one server) could draw the same ids; and a
/// child forked after the parent drew ids (a preloading server) would repeat them.
fn seed_from_os() {
    use std::hash::{BuildHasher, Hasher};
    let generation = process_generation();
    SEEDED_IN.with(|seeded| {
        if seeded.get() != Some(generation) {
            // RandomState's keys come from the OS's random source, but a forked child inherits
            // them: the pid tells siblings apart.
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u32(std::process::id());
            fastrand::seed(hasher.finish());
            seeded.set(Some(generation));
        }
    });
}

/// A fresh random (version 4) UUID as a number.
pub(crate) fn new_uuid4() -> u128 {
    seed_from_os();
    let raw = (u128::from(fastrand::u64(..)) << 64) | u128::from(fastrand::u64(..));
    (raw & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62)
}

/// The canonical lowercase hyphenated text of a UUID, on the stack.
pub(crate) struct UuidText([u8; 36]);

impl UuidText {
    pub(crate) fn new(id: u128) -> UuidText {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [b'-'; 36];
        let mut o = 0;
        for (i, b) in id.to_be_bytes().iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                o += 1;
            }
            out[o] = HEX[usize::from(b >> 4)];
            out[o + 1] = HEX[usize::from(b & 0xf)];
            o += 2;
        }
        UuidText(out)
    }

    pub(crate) fn as_str(&self) -> &str {
        // Only ASCII hex digits and hyphens are ever written.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// Parses the canonical lowercase hyphenated form (the only one this core writes).
pub(crate) fn parse_uuid(s: &str) -> Option<u128> {
    let b = s.as_bytes();
    if b.len() != 36 {
        return None;
    }
    let mut v: u128 = 0;
    for (i, &c) in b.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if c != b'-' {
                return None;
            }
            continue;
        }
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        v = (v << 4) | u128::from(d);
    }
    Some(v)
}

/// Ordered string pairs of a record's tags, as given.
pub(crate) type Tags = Arc<[(Box<str>, Box<str>)]>;

/// What a task is: fixed at creation, shared by the record, its events and flush copies.
#[derive(Clone, Debug)]
pub(crate) struct TaskInfo {
    pub(crate) func_name: Arc<str>,
    pub(crate) created_us: i64,
    pub(crate) tags: Option<Tags>,
    pub(crate) source: Arc<str>,
    pub(crate) priority: Option<i64>,
    pub(crate) executor: Option<Arc<str>>,
    pub(crate) queue: Arc<str>,
    pub(crate) idempotency_key: Option<Arc<str>>,
    pub(crate) args_json: Option<Arc<[u8]>>,
    pub(crate) kwargs_json: Option<Arc<[u8]>>,
    /// Ciphertext of encrypted arguments, kept as opaque bytes like `args_json`.
    pub(crate) encrypted_payload: Option<Arc<[u8]>>,
    /// Id of the record this one retries.
    pub(crate) retry_of: Option<Arc<str>>,
}

/// Where a task is: the fields `transition` changes. Cheap to copy into an event.
#[derive(Clone, Debug)]
pub(crate) struct Progress {
    pub(crate) status: Status,
    pub(crate) start_us: Option<i64>,
    pub(crate) end_us: Option<i64>,
    pub(crate) retries_used: i64,
    pub(crate) error: Option<Arc<str>>,
    pub(crate) stacktrace: Option<Arc<str>>,
}

impl Progress {
    pub(crate) fn new() -> Progress {
        Progress {
            status: Status::Pending,
            start_us: None,
            end_us: None,
            retries_used: 0,
            error: None,
            stacktrace: None,
        }
    }

    /// `(end - start) / 1e6` seconds, when both are set.
    pub(crate) fn duration(&self) -> Option<f64> {
        match (self.start_us, self.end_us) {
            (Some(s), Some(e)) => Some(duration_seconds(s, e)),
            _ => None,
        }
    }
}

/// One task record.
#[derive(Clone, Debug)]
pub(crate) struct Record {
    pub(crate) info: Arc<TaskInfo>,
    pub(crate) progress: Progress,
    pub(crate) logs: VecDeque<Arc<str>>,
    /// Log lines dropped by the per-record bound (the oldest go first).
    pub(crate) logs_dropped: u64,
}

impl Record {
    pub(crate) fn status(&self) -> Status {
        self.progress.status
    }

    /// Appends the record's JSON object: the 16 keys of `_core.pyi`, in order.
    pub(crate) fn write_json(&self, buf: &mut Vec<u8>, task_id: &str) {
        write_task_json(buf, task_id, &self.info, &self.progress, Some(&self.logs));
    }
}

/// The detail JSON: a record's 16-key object (`json`) followed by `"logs_dropped"` and
/// `"retry_of"`.
pub(crate) fn detail_json(json: &[u8], logs_dropped: u64, retry_of: Option<&str>) -> Vec<u8> {
    let body = json.strip_suffix(b"}").unwrap_or(json);
    let mut out = Vec::with_capacity(body.len() + 80);
    out.extend_from_slice(body);
    out.extend_from_slice(b",\"logs_dropped\":");
    write_int(&mut out, logs_dropped);
    out.extend_from_slice(b",\"retry_of\":");
    write_opt_str(&mut out, retry_of);
    out.push(b'}');
    out
}

/// Appends a task's JSON object: the 16 keys of `_core.pyi` in order, or the 15 without
/// `logs` (as carried by ring events) when `logs` is `None`.
pub(crate) fn write_task_json(
    buf: &mut Vec<u8>,
    task_id: &str,
    info: &TaskInfo,
    p: &Progress,
    logs: Option<&VecDeque<Arc<str>>>,
) {
    write_task_json_at(buf, task_id, info, info.created_us, p, logs);
}

/// [`write_task_json`] with the creation time given apart: a compact record's `info` is a
/// description shared by many records (see `compact.rs`).
pub(crate) fn write_task_json_at(
    buf: &mut Vec<u8>,
    task_id: &str,
    info: &TaskInfo,
    created_us: i64,
    p: &Progress,
    logs: Option<&VecDeque<Arc<str>>>,
) {
    buf.extend_from_slice(b"{\"task_id\":");
    write_str(buf, task_id);
    buf.extend_from_slice(b",\"func_name\":");
    write_str(buf, &info.func_name);
    buf.extend_from_slice(b",\"status\":\"");
    buf.extend_from_slice(p.status.as_str().as_bytes());
    buf.extend_from_slice(b"\",\"created_at\":");
    write_opt_iso(buf, Some(created_us));
    buf.extend_from_slice(b",\"start_time\":");
    write_opt_iso(buf, p.start_us);
    buf.extend_from_slice(b",\"end_time\":");
    write_opt_iso(buf, p.end_us);
    buf.extend_from_slice(b",\"duration\":");
    write_opt_f64(buf, p.duration());
    buf.extend_from_slice(b",\"retries_used\":");
    write_int(buf, p.retries_used);
    buf.extend_from_slice(b",\"error\":");
    write_opt_str(buf, p.error.as_deref());
    if let Some(logs) = logs {
        buf.extend_from_slice(b",\"logs\":");
        write_logs(buf, logs);
    }
    buf.extend_from_slice(b",\"stacktrace\":");
    write_opt_str(buf, p.stacktrace.as_deref());
    buf.extend_from_slice(b",\"tags\":");
    write_tags(buf, info.tags.as_deref());
    buf.extend_from_slice(b",\"source\":");
    write_str(buf, &info.source);
    buf.extend_from_slice(b",\"priority\":");
    write_opt_int(buf, info.priority);
    buf.extend_from_slice(b",\"executor\":");
    write_opt_str(buf, info.executor.as_deref());
    buf.extend_from_slice(b",\"queue\":");
    write_str(buf, &info.queue);
    buf.push(b'}');
}

/// Appends a log line to a record's `logs`, dropping the oldest beyond `max_lines` (counted
/// in `dropped`).
pub(crate) fn push_log(
    logs: &mut VecDeque<Arc<str>>,
    dropped: &mut u64,
    line: Arc<str>,
    max_lines: usize,
) {
    while !logs.is_empty() && logs.len() >= max_lines {
        logs.pop_front();
        *dropped += 1;
    }
    logs.push_back(line);
}

/// Seconds between two microsecond timestamps, as both cores compute it.
pub(crate) fn duration_seconds(start_us: i64, end_us: i64) -> f64 {
    // Python computes the integer difference exactly, then converts it to float.
    (i128::from(end_us) - i128::from(start_us)) as f64 / 1e6
}

/// Appends a JSON array of log lines.
pub(crate) fn write_logs<'a, I>(buf: &mut Vec<u8>, logs: I)
where
    I: IntoIterator<Item = &'a Arc<str>>,
{
    buf.push(b'[');
    for (i, line) in logs.into_iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        write_str(buf, line);
    }
    buf.push(b']');
}

/// Appends a JSON object of tags in their given order (`{}` when none).
pub(crate) fn write_tags(buf: &mut Vec<u8>, tags: Option<&[(Box<str>, Box<str>)]>) {
    buf.push(b'{');
    for (i, (k, v)) in tags.unwrap_or_default().iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        write_str(buf, k);
        buf.push(b':');
        write_str(buf, v);
    }
    buf.push(b'}');
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> Record {
        Record {
            info: Arc::new(TaskInfo {
                func_name: "send_email".into(),
                created_us: 1_704_110_400_000_000,
                tags: Some(Arc::from(vec![
                    ("k".into(), "v".into()),
                    ("a".into(), "b".into()),
                ])),
                source: "manual".into(),
                priority: Some(5),
                executor: None,
                queue: "default".into(),
                idempotency_key: None,
                args_json: None,
                kwargs_json: None,
                encrypted_payload: None,
                retry_of: None,
            }),
            progress: Progress {
                status: Status::Success,
                start_us: Some(1_704_110_400_000_000),
                end_us: Some(1_704_110_401_500_000),
                retries_used: 2,
                error: None,
                stacktrace: Some("Trace\n  line".into()),
            },
            logs: VecDeque::from(vec![Arc::from("a"), Arc::from("b\"c")]),
            logs_dropped: 0,
        }
    }

    #[test]
    fn statuses_parse_and_print() {
        for (i, name) in STATUSES.iter().enumerate() {
            let st = Status::parse(name).expect("known");
            assert_eq!(st.as_str(), *name);
            assert_eq!(st.index(), i);
            assert_eq!(Status::ALL[i], st);
        }
        assert_eq!(Status::parse("PENDING"), None);
        assert!(unknown_status_message("x").contains("pending, running"));
    }

    #[test]
    fn moves() {
        use Status::*;
        assert!(Pending.can_move_to(Running));
        assert!(Pending.can_move_to(Cancelled));
        assert!(!Pending.can_move_to(Success));
        assert!(!Pending.can_move_to(Pending));
        assert!(!Pending.can_move_to(Failed));
        assert!(Running.can_move_to(Running));
        assert!(Running.can_move_to(Pending));
        assert!(Running.can_move_to(Rejected));
        for f in [Success, Failed, Interrupted, Cancelled, Rejected] {
            assert!(f.is_finished());
            for to in Status::ALL {
                assert!(!f.can_move_to(to));
            }
        }
        assert!(Success.holds_key() && Running.holds_key() && !Failed.holds_key());
    }

    #[test]
    fn uuid_round_trip() {
        for _ in 0..1000 {
            let id = new_uuid4();
            let text = UuidText::new(id);
            let s = text.as_str();
            assert_eq!(s.len(), 36);
            assert_eq!(&s[14..15], "4");
            assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"));
            assert_eq!(parse_uuid(s), Some(id));
        }
        assert_eq!(
            UuidText::new(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef).as_str(),
            "01234567-89ab-cdef-0123-456789abcdef"
        );
        assert_eq!(parse_uuid("01234567-89AB-cdef-0123-456789abcdef"), None);
        assert_eq!(parse_uuid("0123456789abcdef0123456789abcdef"), None);
        assert_eq!(parse_uuid("01234567-89ab-cdef-0123-456789abcdeg"), None);
    }

    #[test]
    fn uuid_text_order_is_numeric_order() {
        let mut ids: Vec<u128> = (0..500).map(|_| new_uuid4()).collect();
        ids.push(0);
        ids.push(u128::MAX);
        let mut by_text = ids.clone();
        by_text.sort_by_key(|id| UuidText::new(*id).as_str().to_owned());
        ids.sort_unstable();
        assert_eq!(ids, by_text);
    }

    #[test]
    fn json_has_the_contract_keys_in_order() {
        let r = sample();
        let mut buf = Vec::new();
        r.write_json(&mut buf, "id-1");
        let text = String::from_utf8(buf).expect("utf8");
        assert_eq!(
            text,
            concat!(
                r#"{"task_id":"id-1","func_name":"send_email","status":"success","#,
                r#""created_at":"2024-01-01T12:00:00+00:00","start_time":"2024-01-01T12:00:00+00:00","#,
                r#""end_time":"2024-01-01T12:00:01.500000+00:00","duration":1.5,"retries_used":2,"#,
                r#""error":null,"logs":["a","b\"c"],"stacktrace":"Trace\n  line","#,
                r#""tags":{"k":"v","a":"b"},"source":"manual","priority":5,"executor":null,"#,
                r#""queue":"default"}"#
            )
        );
        let mut buf = Vec::new();
        write_task_json(&mut buf, "id-1", &r.info, &r.progress, None);
        let v: serde_json::Value = serde_json::from_slice(&buf).expect("json");
        assert_eq!(v.as_object().map(|o| o.len()), Some(15));
        assert!(v.get("logs").is_none());
    }

    #[test]
    fn detail_adds_logs_dropped_and_retry_of() {
        let mut buf = Vec::new();
        sample().write_json(&mut buf, "id-1");
        let detail = detail_json(&buf, 3, Some("id-0"));
        assert!(detail.ends_with(br#""queue":"default","logs_dropped":3,"retry_of":"id-0"}"#));
        assert!(detail_json(&buf, 0, None).ends_with(br#""logs_dropped":0,"retry_of":null}"#));
    }
}
