//! Health of the snapshot file as the flushes find it, for the metrics' `snapshot` object
//! and the `taskflow_snapshot_*` families.
//!
//! Twin: the snapshot health of `_pycore` (same keys, same order, same rules).

use std::sync::Arc;

use super::json::{write_int, write_opt_iso, write_opt_str};

/// What the flushes since open have found.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Health {
    /// Whether the last flush succeeded (true before the first).
    pub(crate) ok: bool,
    /// Records waiting to be written; the store fills it in when the health is read.
    pub(crate) unwritten: u64,
    pub(crate) failed_writes: u64,
    /// The last failure's message, until a flush succeeds again.
    pub(crate) last_error: Option<Arc<str>>,
    /// When the last successful flush ended (µs since epoch).
    pub(crate) last_write_us: Option<i64>,
}

impl Default for Health {
    fn default() -> Health {
        Health {
            ok: true,
            unwritten: 0,
            failed_writes: 0,
            last_error: None,
            last_write_us: None,
        }
    }
}

impl Health {
    pub(crate) fn succeeded(&mut self, now_us: i64) {
        self.ok = true;
        self.last_error = None;
        self.last_write_us = Some(now_us);
    }

    pub(crate) fn failed(&mut self, message: &str) {
        self.ok = false;
        self.failed_writes += 1;
        self.last_error = Some(Arc::from(message));
    }

    /// Appends `{"ok", "unwritten", "failed_writes", "last_error", "last_write_at"}`.
    pub(crate) fn write_json(&self, buf: &mut Vec<u8>) {
        buf.extend_from_slice(if self.ok {
            b"{\"ok\":true".as_slice()
        } else {
            b"{\"ok\":false"
        });
        buf.extend_from_slice(b",\"unwritten\":");
        write_int(buf, self.unwritten);
        buf.extend_from_slice(b",\"failed_writes\":");
        write_int(buf, self.failed_writes);
        buf.extend_from_slice(b",\"last_error\":");
        write_opt_str(buf, self.last_error.as_deref());
        buf.extend_from_slice(b",\"last_write_at\":");
        write_opt_iso(buf, self.last_write_us);
        buf.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(h: &Health) -> String {
        let mut buf = Vec::new();
        h.write_json(&mut buf);
        String::from_utf8(buf).expect("utf8")
    }

    #[test]
    fn fresh_health_is_ok() {
        assert_eq!(
            json(&Health::default()),
            r#"{"ok":true,"unwritten":0,"failed_writes":0,"last_error":null,"last_write_at":null}"#
        );
    }

    #[test]
    fn a_failure_shows_until_the_next_success() {
        let mut h = Health::default();
        h.succeeded(1_704_110_400_000_000);
        h.failed("/a.db: disk \"full\"");
        h.unwritten = 3;
        assert_eq!(
            json(&h),
            concat!(
                r#"{"ok":false,"unwritten":3,"failed_writes":1,"last_error":"/a.db: disk \"full\"","#,
                r#""last_write_at":"2024-01-01T12:00:00+00:00"}"#
            )
        );
        h.succeeded(1_704_110_401_500_000);
        assert!(h.ok && h.last_error.is_none());
        assert_eq!(h.failed_writes, 1, "failures since open are kept");
        assert_eq!(h.last_write_us, Some(1_704_110_401_500_000));
    }
}
