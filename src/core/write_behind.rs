//! What a store with a file does when a change leaves records unwritten: it wakes its owner
//! once (a callback given for the next such change), and it writes behind on a thread of
//! its own once enough records wait.
//!
//! Both exist for the hot path. A task that finishes costs its owner nothing: the owner is
//! woken by the first record that waits, not asked by each one. And a run of tasks that
//! holds the caller's thread (and, in Python, the GIL) is written while it runs, on the
//! other CPU, rather than after it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Called once, the next time a change leaves a record unwritten.
pub(crate) type Wake = Box<dyn FnOnce() + Send>;

#[derive(Default)]
pub(crate) struct WriteBehind {
    /// Unwritten records from which a write starts on its own; 0 = never.
    threshold: AtomicUsize,
    /// Whether a write started here still runs.
    running: AtomicBool,
    /// Whether `wake` holds a callback: read without the lock on every change.
    armed: AtomicBool,
    wake: Mutex<Option<Wake>>,
}

impl std::fmt::Debug for WriteBehind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteBehind")
            .field("threshold", &self.threshold.load(Ordering::Relaxed))
            .field("running", &self.running.load(Ordering::Relaxed))
            .field("armed", &self.armed.load(Ordering::Relaxed))
            .finish()
    }
}

impl WriteBehind {
    /// Writes start on their own from `threshold` (at least 1) unwritten records; `None`
    /// stops them.
    pub(crate) fn set_threshold(&self, threshold: Option<usize>) {
        self.threshold
            .store(threshold.unwrap_or(0), Ordering::Release);
    }

    /// Whether `unwritten` records call for a write of their own: a threshold is set and
    /// reached.
    pub(crate) fn is_due(&self, unwritten: usize) -> bool {
        let threshold = self.threshold.load(Ordering::Acquire);
        threshold > 0 && unwritten >= threshold
    }

    /// Claims the right to start a write; false while the last one still runs.
    pub(crate) fn try_start(&self) -> bool {
        !self.running.swap(true, Ordering::AcqRel)
    }

    /// Gives the right back once the write ended (or could not start).
    pub(crate) fn finished(&self) {
        self.running.store(false, Ordering::Release);
    }

    /// Replaces the callback for the next change (`None` drops it).
    pub(crate) fn arm(&self, wake: Option<Wake>) {
        let mut slot = self.wake.lock().unwrap_or_else(|p| p.into_inner());
        self.armed.store(wake.is_some(), Ordering::Release);
        *slot = wake;
    }

    /// The callback, taken: the caller calls it once it holds no lock of the store.
    pub(crate) fn take_wake(&self) -> Option<Wake> {
        if !self.armed.load(Ordering::Acquire) {
            return None;
        }
        let mut slot = self.wake.lock().unwrap_or_else(|p| p.into_inner());
        self.armed.store(false, Ordering::Release);
        slot.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_threshold_says_when_a_write_is_due() {
        let w = WriteBehind::default();
        assert!(!w.is_due(1_000_000), "no threshold, never due");
        w.set_threshold(Some(3));
        assert!(!w.is_due(2));
        assert!(w.is_due(3) && w.is_due(4));
        w.set_threshold(None);
        assert!(!w.is_due(3));
    }

    #[test]
    fn one_write_runs_at_a_time() {
        let w = WriteBehind::default();
        assert!(w.try_start());
        assert!(!w.try_start());
        w.finished();
        assert!(w.try_start());
    }

    #[test]
    fn the_wake_is_taken_once() {
        let w = WriteBehind::default();
        assert!(w.take_wake().is_none());
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&calls);
        w.arm(Some(Box::new(move || {
            seen.fetch_add(1, Ordering::Relaxed);
        })));
        w.take_wake().expect("armed")();
        assert!(w.take_wake().is_none(), "taken already");
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        w.arm(Some(Box::new(|| {})));
        w.arm(None);
        assert!(w.take_wake().is_none(), "disarmed");
    }
}
