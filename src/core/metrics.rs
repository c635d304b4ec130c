//! Incremental aggregates: counts per current status, durations and their histogram, overall
//! and per function name. O(1) per event, O(names) per read.

use std::sync::{Arc, OnceLock};

use super::health::Health;
use super::json::{round6, write_f64, write_int, write_opt_f64, write_str};
use super::record::{Status, STATUSES};

/// Number of histogram bounds: `10^(k/20)` seconds for `k = -120..=80` (1 µs .. 10^4 s).
/// Twin: `_HIST_BOUNDS` in `_pycore` (the identical definition).
pub(super) const BOUNDS: usize = 201;
/// One bucket per bound plus an overflow bucket for durations above the last bound.
const BUCKETS: usize = BOUNDS + 1;

pub(super) fn bounds() -> &'static [f64; BOUNDS] {
    static B: OnceLock<[f64; BOUNDS]> = OnceLock::new();
    B.get_or_init(|| {
        let mut b = [0.0; BOUNDS];
        for (i, slot) in b.iter_mut().enumerate() {
            let k = i as f64 - 120.0;
            *slot = 10f64.powf(k / 20.0);
        }
        b
    })
}

/// Index of the bucket `d` falls in: the first bound `>= d`, or the overflow bucket.
fn bucket_of(d: f64) -> usize {
    bounds().partition_point(|&b| b < d)
}

/// Aggregates of one group of tasks (all of them, or one function name).
#[derive(Clone, Debug)]
pub(crate) struct Counts {
    pub(super) by_status: [u64; 7],
    pub(super) total: u64,
    pub(super) dur_sum: f64,
    pub(super) dur_count: u64,
    dur_min: f64,
    dur_max: f64,
    pub(super) hist: Box<[u64; BUCKETS]>,
}

impl Default for Counts {
    fn default() -> Counts {
        Counts {
            by_status: [0; 7],
            total: 0,
            dur_sum: 0.0,
            dur_count: 0,
            dur_min: f64::INFINITY,
            dur_max: f64::NEG_INFINITY,
            hist: Box::new([0; BUCKETS]),
        }
    }
}

impl Counts {
    fn created(&mut self, status: Status) {
        self.total += 1;
        self.by_status[status.index()] += 1;
    }

    fn moved(&mut self, from: Status, to: Status) {
        let old = &mut self.by_status[from.index()];
        *old = old.saturating_sub(1);
        self.by_status[to.index()] += 1;
    }

    fn duration(&mut self, d: f64) {
        if d.is_nan() {
            return;
        }
        self.dur_sum += d;
        self.dur_count += 1;
        self.dur_min = self.dur_min.min(d);
        self.dur_max = self.dur_max.max(d);
        self.hist[bucket_of(d)] += 1;
    }

    /// Undoes `created` and `duration` for a deleted record.
    fn forget(&mut self, status: Status, duration: Option<f64>) {
        self.total = self.total.saturating_sub(1);
        let n = &mut self.by_status[status.index()];
        *n = n.saturating_sub(1);
        if let Some(d) = duration.filter(|d| !d.is_nan()) {
            self.forget_duration(d);
        }
    }

    /// Min and max cannot be undone: they stay until no duration is left, so percentiles
    /// may clamp to a bound one deleted record set (they remain within its bucket).
    fn forget_duration(&mut self, d: f64) {
        let bucket = &mut self.hist[bucket_of(d)];
        if *bucket == 0 {
            return; // never counted here (written by another store after this one opened)
        }
        *bucket -= 1;
        self.dur_count -= 1;
        if self.dur_count == 0 {
            self.dur_sum = 0.0;
            self.dur_min = f64::INFINITY;
            self.dur_max = f64::NEG_INFINITY;
        } else {
            self.dur_sum -= d;
        }
    }

    fn percentile(&self, q: f64) -> Option<f64> {
        if self.dur_count == 0 {
            return None;
        }
        let rank = ((q * self.dur_count as f64).ceil() as u64).max(1);
        let mut cumulative = 0u64;
        let mut value = self.dur_max;
        for (i, &n) in self.hist.iter().enumerate() {
            cumulative += n;
            if cumulative >= rank {
                value = if i < BOUNDS {
                    bounds()[i]
                } else {
                    self.dur_max
                };
                break;
            }
        }
        Some(round6(value.max(self.dur_min).min(self.dur_max)))
    }

    /// The read-side figures of this group.
    pub(crate) fn summary(&self) -> Summary {
        let success = self.by_status[Status::Success.index()];
        Summary {
            total: self.total,
            by_status: self.by_status,
            success_rate: if self.total == 0 {
                0.0
            } else {
                success as f64 / self.total as f64
            },
            avg_duration_seconds: if self.dur_count == 0 {
                0.0
            } else {
                round6(self.dur_sum / self.dur_count as f64)
            },
            p50: self.percentile(0.50),
            p95: self.percentile(0.95),
            p99: self.percentile(0.99),
        }
    }

    #[cfg(test)]
    fn hist_count(&self) -> u64 {
        self.hist.iter().sum()
    }
}

/// Figures of one group, ready to serialise.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Summary {
    pub(crate) total: u64,
    pub(crate) by_status: [u64; 7],
    pub(crate) success_rate: f64,
    pub(crate) avg_duration_seconds: f64,
    pub(crate) p50: Option<f64>,
    pub(crate) p95: Option<f64>,
    pub(crate) p99: Option<f64>,
}

impl Summary {
    /// Writes the keys (without braces) in contract order.
    fn write_fields(&self, buf: &mut Vec<u8>) {
        buf.extend_from_slice(b"\"total\":");
        write_int(buf, self.total);
        for (name, n) in STATUSES.iter().zip(self.by_status) {
            buf.extend_from_slice(b",\"");
            buf.extend_from_slice(name.as_bytes());
            buf.extend_from_slice(b"\":");
            write_int(buf, n);
        }
        buf.extend_from_slice(b",\"success_rate\":");
        write_f64(buf, self.success_rate);
        buf.extend_from_slice(b",\"avg_duration_seconds\":");
        write_f64(buf, self.avg_duration_seconds);
        buf.extend_from_slice(b",\"p50_seconds\":");
        write_opt_f64(buf, self.p50);
        buf.extend_from_slice(b",\"p95_seconds\":");
        write_opt_f64(buf, self.p95);
        buf.extend_from_slice(b",\"p99_seconds\":");
        write_opt_f64(buf, self.p99);
    }
}

/// Overall and per-name summaries taken under the store lock, serialised outside it.
#[derive(Clone, Debug)]
pub(crate) struct MetricsSnapshot {
    pub(crate) all: Summary,
    /// Sorted by name.
    pub(crate) by_name: Vec<(Arc<str>, Summary)>,
    /// `None` without a snapshot file.
    pub(crate) snapshot: Option<Health>,
}

impl MetricsSnapshot {
    pub(crate) fn to_json(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(256 + 256 * self.by_name.len());
        buf.push(b'{');
        self.all.write_fields(&mut buf);
        buf.extend_from_slice(b",\"by_name\":{");
        for (i, (name, s)) in self.by_name.iter().enumerate() {
            if i > 0 {
                buf.push(b',');
            }
            write_str(&mut buf, name);
            buf.extend_from_slice(b":{");
            s.write_fields(&mut buf);
            buf.push(b'}');
        }
        buf.extend_from_slice(b"},\"snapshot\":");
        match &self.snapshot {
            Some(h) => h.write_json(&mut buf),
            None => buf.extend_from_slice(b"null"),
        }
        buf.push(b'}');
        buf
    }
}

/// Aggregates over every task seen; per-name groups are indexed by the store's name ids.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    all: Counts,
    by_name: Vec<Counts>,
}

impl Metrics {
    fn group(&mut self, name_id: usize) -> &mut Counts {
        if name_id >= self.by_name.len() {
            self.by_name.resize_with(name_id + 1, Counts::default);
        }
        &mut self.by_name[name_id]
    }

    pub(crate) fn created(&mut self, name_id: usize, status: Status) {
        self.all.created(status);
        self.group(name_id).created(status);
    }

    /// A stored record whose status this version does not know: counted in `total` only.
    pub(crate) fn created_unknown(&mut self, name_id: usize) {
        self.all.total += 1;
        self.group(name_id).total += 1;
    }

    pub(crate) fn moved(&mut self, name_id: usize, from: Status, to: Status) {
        if from == to {
            return;
        }
        self.all.moved(from, to);
        self.group(name_id).moved(from, to);
    }

    pub(crate) fn duration(&mut self, name_id: usize, seconds: f64) {
        self.all.duration(seconds);
        self.group(name_id).duration(seconds);
    }

    /// A deleted record leaves the counts and, with its duration, the histogram, as if it
    /// had never been seen (what a reopen of the file would count).
    pub(crate) fn forget(&mut self, name_id: usize, status: Status, duration: Option<f64>) {
        self.all.forget(status, duration);
        self.group(name_id).forget(status, duration);
    }

    /// Copies of the per-name groups that have seen a task, sorted by name (for the
    /// Prometheus text, rendered outside the store lock).
    pub(crate) fn groups(&self, names: &[Arc<str>]) -> Vec<(Arc<str>, Counts)> {
        let mut groups: Vec<(Arc<str>, Counts)> = self
            .by_name
            .iter()
            .zip(names)
            .filter(|(c, _)| c.total > 0)
            .map(|(c, name)| (Arc::clone(name), c.clone()))
            .collect();
        groups.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        groups
    }

    /// Summaries of everything; `names[i]` is the name of group `i`.
    pub(crate) fn snapshot(&self, names: &[Arc<str>], health: Option<Health>) -> MetricsSnapshot {
        let mut by_name: Vec<(Arc<str>, Summary)> = self
            .by_name
            .iter()
            .zip(names)
            .filter(|(c, _)| c.total > 0)
            .map(|(c, name)| (Arc::clone(name), c.summary()))
            .collect();
        by_name.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        MetricsSnapshot {
            all: self.all.summary(),
            by_name,
            snapshot: health,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bounds_cover_a_microsecond_to_hours() {
        let b = bounds();
        assert!((b[0] - 1e-6).abs() < 1e-18);
        assert_eq!(b[120], 1.0);
        assert!((b[200] - 1e4).abs() < 1e-9);
        assert!(b.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(bucket_of(0.0), 0);
        assert_eq!(bucket_of(1.0), 120);
        assert_eq!(bucket_of(1.0000001), 121);
        assert_eq!(bucket_of(2e4), BOUNDS);
    }

    #[test]
    fn empty_metrics_json() {
        let m = Metrics::default();
        let json = String::from_utf8(m.snapshot(&[], None).to_json()).expect("utf8");
        assert_eq!(
            json,
            concat!(
                r#"{"total":0,"pending":0,"running":0,"success":0,"failed":0,"interrupted":0,"#,
                r#""cancelled":0,"rejected":0,"success_rate":0.0,"avg_duration_seconds":0.0,"#,
                r#""p50_seconds":null,"p95_seconds":null,"p99_seconds":null,"by_name":{},"#,
                r#""snapshot":null}"#
            )
        );
        let with_file = m.snapshot(&[], Some(Health::default())).to_json();
        assert!(with_file.ends_with(
            br#""by_name":{},"snapshot":{"ok":true,"unwritten":0,"failed_writes":0,"last_error":null,"last_write_at":null}}"#
        ));
    }

    #[test]
    fn counts_follow_current_status() {
        let mut m = Metrics::default();
        let names: Vec<Arc<str>> = vec!["b".into(), "a".into()];
        m.created(0, Status::Pending);
        m.created(1, Status::Pending);
        m.moved(0, Status::Pending, Status::Running);
        m.moved(0, Status::Running, Status::Success);
        m.duration(0, 0.5);
        let s = m.snapshot(&names, None);
        assert_eq!(s.all.total, 2);
        assert_eq!(s.all.by_status, [1, 0, 1, 0, 0, 0, 0]);
        assert_eq!(s.all.success_rate, 0.5);
        assert_eq!(s.all.avg_duration_seconds, 0.5);
        assert_eq!(s.all.p50, Some(0.5));
        assert_eq!(s.by_name[0].0.as_ref(), "a");
        assert_eq!(s.by_name[1].1.by_status[2], 1);
        let v: serde_json::Value = serde_json::from_slice(&s.to_json()).expect("json");
        assert_eq!(v["by_name"]["b"]["p99_seconds"], 0.5);
        assert!(v["by_name"]["a"]["p99_seconds"].is_null());
    }

    #[test]
    fn percentiles_use_bucket_upper_bounds_clamped() {
        let mut c = Counts::default();
        for d in [0.010, 0.011, 0.012, 0.1, 3.0] {
            c.duration(d);
        }
        // rank(0.5 * 5) = 3 -> third value 0.012 lies in the bucket ending at 10^(-38/20).
        assert_eq!(c.percentile(0.5), Some(round6(10f64.powf(-38.0 / 20.0))));
        // rank 5 -> bucket of 3.0, upper bound 10^(10/20) = 3.162.. clamped to max 3.0.
        assert_eq!(c.percentile(0.99), Some(3.0));
        let mut c = Counts::default();
        c.duration(5e4);
        c.duration(6e4);
        assert_eq!(c.percentile(0.5), Some(6e4));
        let mut c = Counts::default();
        c.duration(1e-9);
        assert_eq!(c.percentile(0.5), Some(0.0));
    }

    #[test]
    fn forget_undoes_counts_and_durations() {
        let names: Vec<Arc<str>> = vec!["f".into()];
        let mut m = Metrics::default();
        for d in [0.5, 2.0] {
            m.created(0, Status::Pending);
            m.moved(0, Status::Pending, Status::Success);
            m.duration(0, d);
        }
        m.forget(0, Status::Success, Some(2.0));
        let s = m.snapshot(&names, None);
        assert_eq!(s.all.total, 1);
        assert_eq!(s.all.by_status[Status::Success.index()], 1);
        assert_eq!(s.all.avg_duration_seconds, 0.5);
        assert_eq!(s.all.p99, Some(round6(bounds()[bucket_of(0.5)].min(2.0))));
        assert_eq!(s.by_name[0].1.total, 1);
        m.forget(0, Status::Success, Some(0.5));
        let s = m.snapshot(&names, None);
        assert!(
            s.by_name.is_empty(),
            "a name with nothing left is not listed"
        );
        assert_eq!(
            (s.all.total, s.all.p50, s.all.avg_duration_seconds),
            (0, None, 0.0)
        );
        assert_eq!(m.all.dur_sum, 0.0);
        // Durations never counted here are ignored; counts never go below zero.
        m.forget(0, Status::Failed, Some(7.0));
        assert_eq!(
            (m.all.total, m.all.dur_count, m.all.hist_count()),
            (0, 0, 0)
        );
        m.created(0, Status::Pending);
        m.moved(0, Status::Pending, Status::Success);
        m.duration(0, 0.25);
        let s = m.snapshot(&names, None);
        assert_eq!((s.all.p50, s.all.avg_duration_seconds), (Some(0.25), 0.25));
    }

    proptest! {
        #[test]
        fn invariants(ops in proptest::collection::vec((0usize..4, 0usize..7, 0usize..7, 0.0f64..2e4), 0..200)) {
            let mut m = Metrics::default();
            let mut current: Vec<(usize, Status)> = Vec::new();
            let mut durations = 0u64;
            for (name, a, b, d) in ops {
                let from = Status::ALL[a];
                m.created(name, from);
                let to = Status::ALL[b];
                m.moved(name, from, to);
                if to.is_finished() {
                    m.duration(name, d);
                    durations += 1;
                }
                current.push((name, to));
            }
            let names: Vec<Arc<str>> = (0..4).map(|i| Arc::from(i.to_string())).collect();
            let s = m.snapshot(&names, None);
            prop_assert_eq!(s.all.total, current.len() as u64);
            prop_assert_eq!(s.all.by_status.iter().sum::<u64>(), s.all.total);
            prop_assert_eq!(m.all.hist_count(), durations);
            prop_assert_eq!(m.all.dur_count, durations);
            let named: u64 = s.by_name.iter().map(|(_, x)| x.total).sum();
            prop_assert_eq!(named, s.all.total);
            for (_, x) in &s.by_name {
                prop_assert_eq!(x.by_status.iter().sum::<u64>(), x.total);
            }
            if let (Some(p50), Some(p95), Some(p99)) = (s.all.p50, s.all.p95, s.all.p99) {
                prop_assert!(p50 <= p95 && p95 <= p99);
                prop_assert!(p99 <= round6(m.all.dur_max));
                prop_assert!(p50 >= round6(m.all.dur_min));
            } else {
                prop_assert_eq!(durations, 0);
            }
        }
    }
}
