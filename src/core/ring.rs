//! Bounded ring of events with gap-free sequence numbers (SSE resume).
//!
//! Events are kept as the values they carry and serialised only when first read: most
//! events are never read, and a value is several times smaller than its JSON. Once read, a
//! slot holds its JSON instead, so the many readers of a live stream serialise it once.

use std::collections::VecDeque;
use std::sync::Arc;

use super::json::{write_int, write_str};
use super::record::{write_task_json, Progress, TaskInfo, UuidText};

/// One kept event: its value until first read, then its JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Slot<T> {
    Value(T),
    Json(Arc<[u8]>),
}

/// Keeps the newest `capacity` events. Sequence numbers start at 1 and increase by one.
#[derive(Debug)]
pub(crate) struct EventRing<T> {
    events: VecDeque<(u64, Slot<T>)>,
    capacity: usize,
    last_seq: u64,
}

impl<T: Clone> EventRing<T> {
    /// `capacity` must be at least 1 (checked by the store).
    pub(crate) fn new(capacity: usize) -> EventRing<T> {
        let capacity = capacity.max(1);
        EventRing {
            events: VecDeque::with_capacity(capacity.min(4096)),
            capacity,
            last_seq: 0,
        }
    }

    /// Sequence number of the newest event; 0 before the first.
    pub(crate) fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Appends an event and returns its sequence number.
    pub(crate) fn push(&mut self, event: T) -> u64 {
        let seq = self.last_seq + 1;
        if self.events.len() >= self.capacity {
            self.events.pop_front();
        }
        self.events.push_back((seq, Slot::Value(event)));
        self.last_seq = seq;
        seq
    }

    /// Events with a sequence number above `after`, oldest first, at most `limit`, and whether
    /// some events after `after` have already been dropped.
    pub(crate) fn since(&self, after: i64, limit: usize) -> (Vec<(u64, Slot<T>)>, bool) {
        let Some(&(oldest, _)) = self.events.front() else {
            return (Vec::new(), false);
        };
        let oldest = i128::from(oldest);
        let after = i128::from(after);
        let missed = after + 1 < oldest;
        let skip = usize::try_from((after + 1 - oldest).max(0))
            .unwrap_or(usize::MAX)
            .min(self.events.len());
        let items = self.events.range(skip..).take(limit).cloned().collect();
        (items, missed)
    }

    /// Keeps `json` as the form of event `seq`, if that event is still kept as a value.
    pub(crate) fn store_json(&mut self, seq: u64, json: Arc<[u8]>) {
        let Some(&(oldest, _)) = self.events.front() else {
            return;
        };
        let Some(i) = seq
            .checked_sub(oldest)
            .and_then(|i| usize::try_from(i).ok())
        else {
            return;
        };
        if let Some((s, slot)) = self.events.get_mut(i) {
            if *s == seq && matches!(slot, Slot::Value(_)) {
                *slot = Slot::Json(json);
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.events.len()
    }
}

/// One ring event, kept as values and serialised when read.
#[derive(Clone, Debug)]
pub(crate) enum Event {
    /// A record was created (`created`) or changed status: the record as it was then.
    Task {
        created: bool,
        id: u128,
        info: Arc<TaskInfo>,
        progress: Progress,
    },
    /// A log line was appended to a record.
    Log { id: u128, line: Arc<str> },
}

impl Event {
    /// `{"seq","type":"created"|"status","task":{..no logs..}}` or
    /// `{"seq","type":"log","task_id","line"}` (see `_core.pyi`).
    pub(crate) fn write_json(&self, seq: u64, buf: &mut Vec<u8>) {
        buf.extend_from_slice(b"{\"seq\":");
        write_int(buf, seq);
        match self {
            Event::Task {
                created,
                id,
                info,
                progress,
            } => {
                buf.extend_from_slice(if *created {
                    b",\"type\":\"created\",\"task\":"
                } else {
                    b",\"type\":\"status\",\"task\":"
                });
                write_task_json(buf, UuidText::new(*id).as_str(), info, progress, None);
            }
            Event::Log { id, line } => {
                buf.extend_from_slice(b",\"type\":\"log\",\"task_id\":\"");
                buf.extend_from_slice(UuidText::new(*id).as_str().as_bytes());
                buf.extend_from_slice(b"\",\"line\":");
                write_str(buf, line);
            }
        }
        buf.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ring_with(capacity: usize, n: u64) -> EventRing<String> {
        let mut r = EventRing::new(capacity);
        for i in 1..=n {
            r.push(i.to_string());
        }
        r
    }

    #[test]
    fn empty_ring() {
        let r: EventRing<String> = EventRing::new(4);
        assert_eq!(r.last_seq(), 0);
        assert_eq!(r.since(0, 10), (vec![], false));
    }

    #[test]
    fn keeps_newest_and_reports_gaps() {
        let r = ring_with(3, 5);
        assert_eq!(r.last_seq(), 5);
        assert_eq!(r.len(), 3);
        let (items, missed) = r.since(0, 10);
        assert!(missed);
        assert_eq!(items.iter().map(|e| e.0).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert_eq!(items[0].1, Slot::Value("3".to_owned()));
        // after = 2 is exactly the one before the oldest kept: nothing missed.
        assert!(!r.since(2, 10).1);
        assert!(r.since(1, 10).1);
        assert_eq!(r.since(4, 10).0.len(), 1);
        assert_eq!(r.since(5, 10).0.len(), 0);
        assert_eq!(r.since(99, 10), (vec![], false));
        assert_eq!(r.since(-5, 1).0.len(), 1);
        assert_eq!(r.since(0, 0), (vec![], true));
    }

    #[test]
    fn json_replaces_the_value_once() {
        let mut r = ring_with(3, 5);
        r.store_json(4, Arc::from(&b"four"[..]));
        r.store_json(2, Arc::from(&b"gone"[..]));
        r.store_json(9, Arc::from(&b"later"[..]));
        r.store_json(4, Arc::from(&b"again"[..]));
        let (items, _) = r.since(0, 10);
        assert_eq!(items[0].1, Slot::Value("3".to_owned()));
        assert_eq!(items[1].1, Slot::Json(Arc::from(&b"four"[..])));
        assert_eq!(items[2].1, Slot::Value("5".to_owned()));
        r.push("6".to_owned());
        r.push("7".to_owned());
        assert_eq!(r.since(0, 1).0[0], (5, Slot::Value("5".to_owned())));
    }

    #[test]
    fn event_json_shapes() {
        let r = crate::core::record::tests::sample();
        let ev = Event::Task {
            created: true,
            id: 1,
            info: r.info.clone(),
            progress: r.progress.clone(),
        };
        let mut buf = Vec::new();
        ev.write_json(7, &mut buf);
        let v: serde_json::Value = serde_json::from_slice(&buf).expect("json");
        assert_eq!(v["seq"], 7);
        assert_eq!(v["type"], "created");
        assert_eq!(v["task"]["task_id"], "00000000-0000-0000-0000-000000000001");
        assert!(v["task"].get("logs").is_none());
        let mut buf = Vec::new();
        Event::Log {
            id: 2,
            line: "hi \"there\"".into(),
        }
        .write_json(8, &mut buf);
        assert_eq!(
            String::from_utf8(buf).expect("utf8"),
            r#"{"seq":8,"type":"log","task_id":"00000000-0000-0000-0000-000000000002","line":"hi \"there\""}"#
        );
    }

    proptest! {
        #[test]
        fn wrap_around(capacity in 1usize..50, n in 0u64..300, after in -3i64..320, limit in 0usize..80) {
            let r = ring_with(capacity, n);
            prop_assert_eq!(r.last_seq(), n);
            prop_assert_eq!(r.len() as u64, n.min(capacity as u64));
            let oldest = n.saturating_sub(capacity as u64) + 1;
            let (items, missed) = r.since(after, limit);
            prop_assert_eq!(missed, n > 0 && after + 1 < oldest as i64);
            let first = (after + 1).max(oldest as i64).max(1) as u64;
            let expected: Vec<u64> = (first..=n).take(limit).collect();
            let got: Vec<u64> = items.iter().map(|e| e.0).collect();
            prop_assert_eq!(&got, &expected);
            for (seq, slot) in &items {
                prop_assert_eq!(slot, &Slot::Value(seq.to_string()));
            }
        }
    }
}
