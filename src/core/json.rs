//! Small JSON and time writers for the hot serialisation paths.
//!
//! Records and events are written by hand into a reused buffer: the key order is part of the
//! contract (`_core.pyi`), and this avoids building an intermediate value per record.

/// Which bytes a JSON string must escape: control characters, `"` and `\\`.
const NEEDS_ESCAPE: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// Appends `s` as a JSON string literal (escaping as serde_json does: UTF-8 kept as is).
pub(crate) fn write_str(buf: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    buf.reserve(bytes.len() + 2);
    buf.push(b'"');
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !NEEDS_ESCAPE[usize::from(b)] {
            continue;
        }
        buf.extend_from_slice(&bytes[start..i]);
        match b {
            b'"' => buf.extend_from_slice(b"\\\""),
            b'\\' => buf.extend_from_slice(b"\\\\"),
            b'\n' => buf.extend_from_slice(b"\\n"),
            b'\r' => buf.extend_from_slice(b"\\r"),
            b'\t' => buf.extend_from_slice(b"\\t"),
            0x08 => buf.extend_from_slice(b"\\b"),
            0x0c => buf.extend_from_slice(b"\\f"),
            _ => buf.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]),
        }
        start = i + 1;
    }
    buf.extend_from_slice(&bytes[start..]);
    buf.push(b'"');
}

/// Appends `s` as a JSON string, or `null`.
pub(crate) fn write_opt_str(buf: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => write_str(buf, s),
        None => buf.extend_from_slice(b"null"),
    }
}

pub(crate) fn write_int<I: itoa::Integer>(buf: &mut Vec<u8>, n: I) {
    let mut b = itoa::Buffer::new();
    buf.extend_from_slice(b.format(n).as_bytes());
}

pub(crate) fn write_opt_int(buf: &mut Vec<u8>, n: Option<i64>) {
    match n {
        Some(n) => write_int(buf, n),
        None => buf.extend_from_slice(b"null"),
    }
}

/// Appends a float the way serde_json does (shortest round trip, `1.0` not `1`; non-finite
/// values become `null`).
pub(crate) fn write_f64(buf: &mut Vec<u8>, x: f64) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buf, &x);
}

pub(crate) fn write_opt_f64(buf: &mut Vec<u8>, x: Option<f64>) {
    match x {
        Some(x) => write_f64(buf, x),
        None => buf.extend_from_slice(b"null"),
    }
}

/// Python's `round(x, 6)`: the double nearest to `x` correctly rounded (half to even on the
/// exact binary value) to six decimals. Rust's fixed-precision formatting rounds the same way.
pub(crate) fn round6(x: f64) -> f64 {
    if !x.is_finite() {
        return x;
    }
    format!("{x:.6}").parse().unwrap_or(x)
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01 (H. Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn put2(out: &mut [u8], at: usize, n: u32) {
    out[at] = b'0' + (n / 10) as u8;
    out[at + 1] = b'0' + (n % 10) as u8;
}

/// Appends microseconds since the epoch as Python's aware-UTC `datetime.isoformat()`
/// writes them, without quotes: `2024-01-01T12:00:00.123456+00:00`, fraction omitted at 0.
pub(crate) fn write_iso_raw(buf: &mut Vec<u8>, us: i64) {
    let secs = us.div_euclid(1_000_000);
    let micros = us.rem_euclid(1_000_000) as u32;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400) as u32;
    let (y, m, d) = civil_from_days(days);
    if !(0..=9999).contains(&y) {
        // Outside what `datetime` can hold; keep the shape readable anyway.
        write_int(buf, y);
        buf.extend_from_slice(b"-01-01T00:00:00+00:00");
        return;
    }
    let mut out = *b"0000-00-00T00:00:00.000000+00:00";
    let y = y as u32;
    put2(&mut out, 0, y / 100);
    put2(&mut out, 2, y % 100);
    put2(&mut out, 5, m);
    put2(&mut out, 8, d);
    put2(&mut out, 11, sod / 3600);
    put2(&mut out, 14, sod / 60 % 60);
    put2(&mut out, 17, sod % 60);
    if micros == 0 {
        buf.extend_from_slice(&out[..19]);
        buf.extend_from_slice(b"+00:00");
    } else {
        put2(&mut out, 20, micros / 10_000);
        put2(&mut out, 22, micros / 100 % 100);
        put2(&mut out, 24, micros % 100);
        buf.extend_from_slice(&out);
    }
}

/// Appends a quoted ISO timestamp, or `null`.
pub(crate) fn write_opt_iso(buf: &mut Vec<u8>, us: Option<i64>) {
    match us {
        Some(us) => {
            buf.push(b'"');
            write_iso_raw(buf, us);
            buf.push(b'"');
        }
        None => buf.extend_from_slice(b"null"),
    }
}

/// The ISO string of a timestamp (for Python dicts).
pub(crate) fn iso_string(us: i64) -> String {
    let mut buf = Vec::with_capacity(32);
    write_iso_raw(&mut buf, us);
    String::from_utf8(buf).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut b = Vec::new();
        f(&mut b);
        String::from_utf8(b).expect("utf8")
    }

    #[test]
    fn strings_escape_like_serde_json() {
        for input in [
            "plain",
            "quote\" back\\ nl\n tab\t",
            "\u{1}\u{1f}\u{8}\u{c}\r",
            "héllo ✓ 😀",
            "",
        ] {
            let ours = s(|b| write_str(b, input));
            assert_eq!(ours, serde_json::to_string(input).expect("json"));
            let back: String = serde_json::from_str(&ours).expect("parse");
            assert_eq!(back, input);
        }
    }

    #[test]
    fn floats_and_ints() {
        assert_eq!(s(|b| write_f64(b, 1.0)), "1.0");
        assert_eq!(s(|b| write_f64(b, 0.000_001)), "1e-6");
        assert_eq!(s(|b| write_opt_f64(b, None)), "null");
        assert_eq!(s(|b| write_int(b, -42i64)), "-42");
        assert_eq!(s(|b| write_opt_int(b, None)), "null");
    }

    #[test]
    fn round6_matches_python() {
        // Values checked against CPython's round(x, 6).
        assert_eq!(round6(0.007_812_5), 0.007_812);
        assert_eq!(round6(0.023_437_5), 0.023_438);
        assert_eq!(round6(2.5e-6), 3e-6);
        assert_eq!(round6(1.5e-6), 2e-6);
        assert_eq!(round6(5e-7), 0.0);
        assert_eq!(round6(1.234_567_89), 1.234_568);
    }

    #[test]
    fn iso_like_python() {
        assert_eq!(iso_string(0), "1970-01-01T00:00:00+00:00");
        assert_eq!(
            iso_string(1_704_110_400_123_456),
            "2024-01-01T12:00:00.123456+00:00"
        );
        assert_eq!(
            iso_string(1_704_110_400_000_000),
            "2024-01-01T12:00:00+00:00"
        );
        assert_eq!(
            iso_string(1_704_110_400_000_010),
            "2024-01-01T12:00:00.000010+00:00"
        );
        assert_eq!(iso_string(951_825_600_000_000), "2000-02-29T12:00:00+00:00");
        assert_eq!(iso_string(-1), "1969-12-31T23:59:59.999999+00:00");
        assert_eq!(
            iso_string(253_402_300_799_000_000),
            "9999-12-31T23:59:59+00:00"
        );
        assert_eq!(
            iso_string(-62_135_596_800_000_000),
            "0001-01-01T00:00:00+00:00"
        );
    }

    #[test]
    fn civil_round_trip_over_many_days() {
        let mut prev = civil_from_days(-800_000);
        for day in -799_999..800_000 {
            let cur = civil_from_days(day);
            assert!(cur > prev, "{day}: {cur:?} after {prev:?}");
            prev = cur;
        }
    }
}
