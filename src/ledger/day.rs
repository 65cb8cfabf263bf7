//! The local calendar day (for free daily messages) at a fixed UTC offset, without a
//! timezone database: resellers' days roll over at their local midnight.

const MILLIS_PER_DAY: i64 = 86_400_000;

/// `YYYY-MM-DD` of the instant `unix_millis` at `offset_minutes` east of UTC.
pub fn local_day(unix_millis: i64, offset_minutes: i32) -> String {
    let local = unix_millis + i64::from(offset_minutes) * 60_000;
    let (y, m, d) = civil_from_days(local.div_euclid(MILLIS_PER_DAY));
    format!("{y:04}-{m:02}-{d:02}")
}

/// RFC 3339 time of `unix_millis` at `offset_minutes` east of UTC, to the second
/// (`2026-11-22T23:59:59+08:00`), as WeChat Pay's `time_expire` takes it.
pub fn rfc3339(unix_millis: i64, offset_minutes: i32) -> String {
    let local = unix_millis.div_euclid(1000) + i64::from(offset_minutes) * 60;
    let (y, m, d) = civil_from_days(local.div_euclid(86_400));
    let secs = local.rem_euclid(86_400);
    let sign = if offset_minutes < 0 { '-' } else { '+' };
    let off = offset_minutes.unsigned_abs();
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}{sign}{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60,
        off / 60,
        off % 60
    )
}

/// Year, month, day of the `days`-th day after 1970-01-01 (proleptic Gregorian),
/// after Howard Hinnant's `civil_from_days`.
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

/// Parses `+08:00`, `-05:30`, `Z` or `UTC` into minutes east of UTC.
pub fn parse_offset(text: &str) -> Option<i32> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("z") || t.eq_ignore_ascii_case("utc") {
        return Some(0);
    }
    let (sign, rest) = match t.as_bytes().first()? {
        b'+' => (1, &t[1..]),
        b'-' => (-1, &t[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':').unwrap_or((rest, "0"));
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
    (h <= 14 && m < 60).then_some(sign * (h * 60 + m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_roll_over_at_local_midnight() {
        assert_eq!(local_day(0, 0), "1970-01-01");
        // 2026-11-22T15:59:59Z is 23:59:59 in Beijing; one second later is the next day there.
        let t = 1_795_363_199_000;
        assert_eq!(local_day(t, 0), "2026-11-22");
        assert_eq!(local_day(t, 480), "2026-11-22");
        assert_eq!(local_day(t + 1000, 480), "2026-11-23");
        assert_eq!(local_day(t + 1000, 0), "2026-11-22");
        assert_eq!(local_day(951_782_400_000, 0), "2000-02-29");
        assert_eq!(local_day(-1, 0), "1969-12-31");
    }

    #[test]
    fn times_format_as_rfc3339() {
        let t = 1_795_363_199_000;
        assert_eq!(rfc3339(t, 480), "2026-11-22T23:59:59+08:00");
        assert_eq!(rfc3339(t + 1000, 480), "2026-11-23T00:00:00+08:00");
        assert_eq!(rfc3339(t, 0), "2026-11-22T15:59:59+00:00");
        assert_eq!(rfc3339(t, -330), "2026-11-22T10:29:59-05:30");
    }

    #[test]
    fn offsets_parse() {
        assert_eq!(parse_offset("+08:00"), Some(480));
        assert_eq!(parse_offset("-05:30"), Some(-330));
        assert_eq!(parse_offset("UTC"), Some(0));
        assert_eq!(parse_offset("+8"), Some(480));
        assert_eq!(parse_offset("Asia/Shanghai"), None);
        assert_eq!(parse_offset("+25:00"), None);
    }
}
