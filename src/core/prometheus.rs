//! OpenMetrics 1.0 text of the incremental metrics, O(task names + queues) per read.
//!
//! Twin: `_pycore/prometheus.py` renders the same state to the same bytes. Floats are written
//! as Python's `repr` writes them (shortest round trip), which is also the canonical form
//! OpenMetrics parsers require for `le` labels.

use std::sync::Arc;

use super::health::Health;
use super::metrics::{bounds, Counts, BOUNDS};
use super::record::{Status, STATUSES};

/// Every `BUCKET_STEP`-th internal histogram bound is exported (10^(k/20) with k a multiple
/// of 10: two buckets per decade). Twin: `BUCKET_STEP` in `_pycore/prometheus.py`.
const BUCKET_STEP: usize = 10;

/// Writes `x` as Python's `repr(float)` does (finite values; the sums and bounds here are).
pub(crate) fn write_py_float(buf: &mut Vec<u8>, x: f64) {
    if !x.is_finite() {
        buf.extend_from_slice(match x {
            x if x.is_nan() => b"NaN".as_slice(),
            x if x > 0.0 => b"+Inf",
            _ => b"-Inf",
        });
        return;
    }
    // `{:e}` gives the shortest round-trip digits, as Python's repr does.
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (neg, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: Vec<u8> = mantissa.bytes().filter(|&b| b != b'.').collect();
    if neg {
        buf.push(b'-');
    }
    // Position of the decimal point after the first digit, as CPython's `format_float_short`.
    let decpt = exp + 1;
    if !(-4 < decpt && decpt <= 16) {
        buf.push(digits[0]);
        if digits.len() > 1 {
            buf.push(b'.');
            buf.extend_from_slice(&digits[1..]);
        }
        buf.extend_from_slice(
            format!("e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs()).as_bytes(),
        );
    } else if decpt <= 0 {
        buf.extend_from_slice(b"0.");
        buf.extend(std::iter::repeat_n(b'0', decpt.unsigned_abs() as usize));
        buf.extend_from_slice(&digits);
    } else {
        let point = decpt as usize;
        if point >= digits.len() {
            buf.extend_from_slice(&digits);
            buf.extend(std::iter::repeat_n(b'0', point - digits.len()));
            buf.extend_from_slice(b".0");
        } else {
            buf.extend_from_slice(&digits[..point]);
            buf.push(b'.');
            buf.extend_from_slice(&digits[point..]);
        }
    }
}

/// Writes a label value escaped as OpenMetrics requires (backslash, double quote, newline).
fn write_label(buf: &mut Vec<u8>, value: &str) {
    buf.push(b'"');
    for b in value.bytes() {
        match b {
            b'\\' => buf.extend_from_slice(b"\\\\"),
            b'"' => buf.extend_from_slice(b"\\\""),
            b'\n' => buf.extend_from_slice(b"\\n"),
            _ => buf.push(b),
        }
    }
    buf.push(b'"');
}

fn family(buf: &mut Vec<u8>, name: &str, kind: &str, help: &str, unit: Option<&str>) {
    buf.extend_from_slice(format!("# HELP {name} {help}\n# TYPE {name} {kind}\n").as_bytes());
    if let Some(unit) = unit {
        buf.extend_from_slice(format!("# UNIT {name} {unit}\n").as_bytes());
    }
}

fn sample(
    buf: &mut Vec<u8>,
    name: &str,
    labels: &[(&str, &str)],
    value: impl FnOnce(&mut Vec<u8>),
) {
    buf.extend_from_slice(name.as_bytes());
    if !labels.is_empty() {
        buf.push(b'{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                buf.push(b',');
            }
            buf.extend_from_slice(k.as_bytes());
            buf.push(b'=');
            write_label(buf, v);
        }
        buf.push(b'}');
    }
    buf.push(b' ');
    value(buf);
    buf.push(b'\n');
}

fn int(n: u64) -> impl FnOnce(&mut Vec<u8>) {
    move |buf| buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes())
}

/// The exposition of per-name groups (sorted by name), pending depth per queue (sorted) and,
/// with a snapshot file, its health.
pub(crate) fn render(
    groups: &[(Arc<str>, Counts)],
    queues: &[(Arc<str>, u64)],
    health: Option<&Health>,
) -> Vec<u8> {
    let mut buf = Vec::with_capacity(1024 + groups.len() * 2048 + queues.len() * 64);
    let name = "taskflow_tasks_created";
    family(
        &mut buf,
        name,
        "counter",
        "Tasks created, by function name.",
        None,
    );
    for (func, c) in groups {
        sample(
            &mut buf,
            "taskflow_tasks_created_total",
            &[("func_name", func)],
            int(c.total),
        );
    }
    let name = "taskflow_tasks_finished";
    family(
        &mut buf,
        name,
        "counter",
        "Tasks that reached a finished status.",
        None,
    );
    for (func, c) in groups {
        for s in Status::ALL.iter().filter(|s| s.is_finished()) {
            let labels = [("func_name", func.as_ref()), ("status", s.as_str())];
            sample(
                &mut buf,
                "taskflow_tasks_finished_total",
                &labels,
                int(c.by_status[s.index()]),
            );
        }
    }
    let name = "taskflow_tasks_live";
    family(
        &mut buf,
        name,
        "gauge",
        "Tasks pending or running now.",
        None,
    );
    for (func, c) in groups {
        for s in [Status::Pending, Status::Running] {
            let labels = [
                ("func_name", func.as_ref()),
                ("status", STATUSES[s.index()]),
            ];
            sample(&mut buf, name, &labels, int(c.by_status[s.index()]));
        }
    }
    let name = "taskflow_task_duration_seconds";
    family(
        &mut buf,
        name,
        "histogram",
        "Run time of finished tasks.",
        Some("seconds"),
    );
    let bucket = "taskflow_task_duration_seconds_bucket";
    for (func, c) in groups {
        let mut cumulative = 0u64;
        for (i, &n) in c.hist.iter().take(BOUNDS).enumerate() {
            cumulative += n;
            if i % BUCKET_STEP == 0 {
                let mut le = Vec::with_capacity(24);
                write_py_float(&mut le, bounds()[i]);
                let le = String::from_utf8(le).unwrap_or_default();
                sample(
                    &mut buf,
                    bucket,
                    &[("func_name", func), ("le", &le)],
                    int(cumulative),
                );
            }
        }
        let labels = [("func_name", func.as_ref())];
        sample(
            &mut buf,
            bucket,
            &[("func_name", func), ("le", "+Inf")],
            int(c.dur_count),
        );
        sample(
            &mut buf,
            "taskflow_task_duration_seconds_count",
            &labels,
            int(c.dur_count),
        );
        sample(
            &mut buf,
            "taskflow_task_duration_seconds_sum",
            &labels,
            |b| write_py_float(b, c.dur_sum),
        );
    }
    let name = "taskflow_queue_depth";
    family(&mut buf, name, "gauge", "Pending tasks per queue.", None);
    for (queue, n) in queues {
        sample(&mut buf, name, &[("queue", queue)], int(*n));
    }
    if let Some(h) = health {
        render_health(&mut buf, h);
    }
    buf.extend_from_slice(b"# EOF\n");
    buf
}

/// The three snapshot families. Twin: the same HELP texts in `_pycore/prometheus.py`.
fn render_health(buf: &mut Vec<u8>, h: &Health) {
    let name = "taskflow_snapshot_ok";
    let help = "Whether the last snapshot write succeeded (1) or failed (0).";
    family(buf, name, "gauge", help, None);
    sample(buf, name, &[], int(u64::from(h.ok)));
    let name = "taskflow_snapshot_unwritten";
    let help = "Records waiting to be written to the snapshot file.";
    family(buf, name, "gauge", help, None);
    sample(buf, name, &[], int(h.unwritten));
    let name = "taskflow_snapshot_failed_writes";
    let help = "Snapshot writes that failed since the file was opened.";
    family(buf, name, "counter", help, None);
    sample(
        buf,
        "taskflow_snapshot_failed_writes_total",
        &[],
        int(h.failed_writes),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repr(x: f64) -> String {
        let mut b = Vec::new();
        write_py_float(&mut b, x);
        String::from_utf8(b).expect("utf8")
    }

    #[test]
    fn floats_like_python_repr() {
        assert_eq!(repr(1e-6), "1e-06");
        assert_eq!(repr(3.162277660168379e-06), "3.162277660168379e-06");
        assert_eq!(repr(0.0001), "0.0001");
        assert_eq!(repr(0.00031622776601683794), "0.00031622776601683794");
        assert_eq!(repr(1.0), "1.0");
        assert_eq!(repr(0.0), "0.0");
        assert_eq!(repr(-2.5), "-2.5");
        assert_eq!(repr(10000.0), "10000.0");
        assert_eq!(repr(3162.2776601683795), "3162.2776601683795");
        assert_eq!(repr(1e16), "1e+16");
        assert_eq!(repr(9999999999999998.0), "9999999999999998.0");
        assert_eq!(repr(1.5e-5), "1.5e-05");
        assert_eq!(repr(1e100), "1e+100");
    }

    #[test]
    fn labels_are_escaped() {
        let mut b = Vec::new();
        write_label(&mut b, "a\\b\"c\nd");
        assert_eq!(b, br#""a\\b\"c\nd""#);
    }

    #[test]
    fn empty_text_has_every_family() {
        let text = String::from_utf8(render(&[], &[], None)).expect("utf8");
        assert!(text.ends_with("# EOF\n"));
        assert_eq!(text.matches("# TYPE ").count(), 5);
        assert!(!text.contains("snapshot"));
    }

    #[test]
    fn snapshot_health_follows_the_queue_depth() {
        let h = Health {
            ok: false,
            unwritten: 4,
            failed_writes: 2,
            ..Health::default()
        };
        let queues = [(Arc::from("default"), 1)];
        let text = String::from_utf8(render(&[], &queues, Some(&h))).expect("utf8");
        let tail = text
            .split_once("taskflow_queue_depth{queue=\"default\"} 1\n")
            .expect("depth")
            .1;
        assert_eq!(
            tail,
            concat!(
                "# HELP taskflow_snapshot_ok Whether the last snapshot write succeeded (1) or failed (0).\n",
                "# TYPE taskflow_snapshot_ok gauge\n",
                "taskflow_snapshot_ok 0\n",
                "# HELP taskflow_snapshot_unwritten Records waiting to be written to the snapshot file.\n",
                "# TYPE taskflow_snapshot_unwritten gauge\n",
                "taskflow_snapshot_unwritten 4\n",
                "# HELP taskflow_snapshot_failed_writes Snapshot writes that failed since the file was opened.\n",
                "# TYPE taskflow_snapshot_failed_writes counter\n",
                "taskflow_snapshot_failed_writes_total 2\n",
                "# EOF\n",
            )
        );
    }
}
