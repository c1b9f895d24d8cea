//! Time conditions in UTC: daily windows, days of week, dated campaign windows (flash
//! sales). Decides whether an instant is inside a schedule; holds no clock of its own, the
//! caller passes the time so tests can move it freely.

/// A daily window in minutes since midnight UTC, `start` inclusive, `end` exclusive.
/// `start > end` wraps past midnight (22:00–02:00).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindow {
    pub start: u16,
    pub end: u16,
}

impl TimeWindow {
    /// Parse `HH:MM` bounds (`24:00` is allowed as an end).
    pub fn parse(start: &str, end: &str) -> Result<Self, String> {
        let s = parse_hhmm(start).ok_or_else(|| format!("start '{start}' is not HH:MM"))?;
        let e = parse_hhmm(end).ok_or_else(|| format!("end '{end}' is not HH:MM"))?;
        if s == e {
            return Err("start and end are equal: the window is empty".into());
        }
        if s >= 24 * 60 {
            return Err(format!("start '{start}' must be before 24:00"));
        }
        Ok(Self { start: s, end: e })
    }

    fn contains(&self, minute: u16) -> bool {
        if self.start < self.end {
            self.start <= minute && minute < self.end
        } else {
            minute >= self.start || minute < self.end
        }
    }
}

fn parse_hhmm(s: &str) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let h: u16 = h.parse().ok()?;
    let m: u16 = m.parse().ok()?;
    if m >= 60 || h > 24 || (h == 24 && m != 0) {
        return None;
    }
    Some(h * 60 + m)
}

/// A compiled time condition. Each part given must hold; within a part any entry may.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schedule {
    pub windows: Vec<TimeWindow>,
    /// Bit 0 = Monday … bit 6 = Sunday; 0 = any day.
    pub days: u8,
    /// Unix seconds, `[start, end)`.
    pub campaigns: Vec<(i64, i64)>,
}

impl Schedule {
    /// Whether the instant (unix milliseconds) is inside the schedule.
    pub fn contains(&self, now_ms: u64) -> bool {
        let secs = (now_ms / 1000) as i64;
        let day_index = secs.div_euclid(86_400);
        let minute = (secs.rem_euclid(86_400) / 60) as u16;
        // 1970-01-01 was a Thursday (index 3 with Monday = 0).
        let weekday = (day_index + 3).rem_euclid(7) as u8;
        (self.days == 0 || self.days & (1 << weekday) != 0)
            && (self.windows.is_empty() || self.windows.iter().any(|w| w.contains(minute)))
            && (self.campaigns.is_empty()
                || self.campaigns.iter().any(|&(s, e)| s <= secs && secs < e))
    }
}

/// Day name (`mon`, `monday`, any case) → index with Monday = 0.
pub fn parse_day(s: &str) -> Option<u8> {
    let s = s.to_ascii_lowercase();
    const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    const LONG: [&str; 7] = [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ];
    DAYS.iter()
        .position(|d| *d == s)
        .or_else(|| LONG.iter().position(|d| *d == s))
        .map(|i| i as u8)
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Civil date `(year, month, day)` of a count of days since 1970-01-01 (proleptic
/// Gregorian): the inverse of `days_from_civil` (Howard Hinnant's algorithms).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `2026-11-27T08:00:00Z`: the UTC RFC 3339 form of unix seconds, the inverse of
/// [`parse_rfc3339`] (which also accepts offsets and fractions).
pub fn format_rfc3339(unix_s: i64) -> String {
    let (date, time) = split_date_time(unix_s);
    format!("{date}T{time}Z")
}

/// `2026-11-27 08:00:00`: the same instant for people (UTC, no `T`/`Z`).
pub fn format_utc(unix_s: i64) -> String {
    let (date, time) = split_date_time(unix_s);
    format!("{date} {time}")
}

fn split_date_time(unix_s: i64) -> (String, String) {
    let (y, m, d) = civil_from_days(unix_s.div_euclid(86_400));
    let secs = unix_s.rem_euclid(86_400);
    (
        format!("{y:04}-{m:02}-{d:02}"),
        format!(
            "{:02}:{:02}:{:02}",
            secs / 3600,
            secs % 3600 / 60,
            secs % 60
        ),
    )
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// Parse an RFC 3339 timestamp (`2026-11-27T00:00:00Z`, fractional seconds and `±hh:mm`
/// offsets allowed) into unix seconds.
pub fn parse_rfc3339(s: &str) -> Result<i64, String> {
    let bad = || format!("'{s}' is not an RFC 3339 timestamp like 2026-11-27T08:00:00Z");
    let b = s.as_bytes();
    if b.len() < 20 || !s.is_ascii() {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<u32, String> {
        s.get(r)
            .filter(|p| p.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|p| p.parse().ok())
            .ok_or_else(bad)
    };
    if b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b'T' || b[10] == b't' || b[10] == b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let (y, mo, d, h, mi, se) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    if !(1..=12).contains(&mo)
        || d == 0
        || d > days_in_month(i64::from(y), mo)
        || h > 23
        || mi > 59
        || se > 60
    {
        return Err(bad());
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return Err(bad());
        }
        rest = &frac[digits..];
    }
    let offset_s: i64 = match rest {
        "Z" | "z" => 0,
        _ => {
            let rb = rest.as_bytes();
            if rb.len() != 6 || rb[3] != b':' || !(rb[0] == b'+' || rb[0] == b'-') {
                return Err(bad());
            }
            let oh: i64 = rest[1..3].parse().map_err(|_| bad())?;
            let om: i64 = rest[4..6].parse().map_err(|_| bad())?;
            if oh > 23 || om > 59 {
                return Err(bad());
            }
            let sign = if rb[0] == b'-' { -1 } else { 1 };
            sign * (oh * 3600 + om * 60)
        }
    };
    let days = days_from_civil(i64::from(y), mo, d);
    Ok(days * 86_400 + i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(se.min(59)) - offset_s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_rfc3339("2026-11-27T00:00:00Z"), Ok(1_795_737_600));
        assert_eq!(
            parse_rfc3339("2026-11-27T01:00:00+01:00"),
            Ok(1_795_737_600)
        );
        assert_eq!(parse_rfc3339("2026-11-27T00:00:00.250Z"), Ok(1_795_737_600));
        assert_eq!(parse_rfc3339("2024-02-29T00:00:00Z"), Ok(1_709_164_800));
        for bad in [
            "2026-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-27",
            "2026-11-27T00:00:00",
            "x026-11-27T00:00:00Z",
            "2026-11-27T00:00:00+1:00",
            "２026-11-27T00:00:00Z",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad} must be rejected");
        }
    }

    #[test]
    fn format_is_the_inverse_of_parse() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(1_795_737_600), "2026-11-27T00:00:00Z");
        assert_eq!(
            format_rfc3339(1_709_164_800 + 3_723),
            "2024-02-29T01:02:03Z"
        );
        assert_eq!(format_utc(1_795_737_600 + 59), "2026-11-27 00:00:59");
        assert_eq!(format_rfc3339(-1), "1969-12-31T23:59:59Z");
        // Every day of four centuries round-trips (leap years and century rules).
        let mut t = parse_rfc3339("1900-01-01T00:00:00Z").unwrap();
        let end = parse_rfc3339("2300-01-01T00:00:00Z").unwrap();
        while t < end {
            let s = format_rfc3339(t + 45_296);
            assert_eq!(parse_rfc3339(&s), Ok(t + 45_296), "{s}");
            let (y, m, d) = civil_from_days(t / 86_400);
            assert_eq!(days_from_civil(y, m, d), t / 86_400);
            t += 86_400;
        }
    }

    #[test]
    fn windows_and_days() {
        // 2026-11-25 (a Wednesday) 12:30 UTC.
        let now = (parse_rfc3339("2026-11-25T12:30:00Z").unwrap() * 1000) as u64;
        let w = |a, b| TimeWindow::parse(a, b).unwrap();
        let s = Schedule {
            windows: vec![w("12:00", "13:00")],
            ..Default::default()
        };
        assert!(s.contains(now));
        let s = Schedule {
            windows: vec![w("13:00", "12:31")],
            ..Default::default()
        };
        assert!(s.contains(now), "wrapping window includes 12:30");
        let s = Schedule {
            windows: vec![w("22:00", "02:00")],
            ..Default::default()
        };
        assert!(!s.contains(now));
        let wed = Schedule {
            days: 1 << parse_day("wed").unwrap(),
            ..Default::default()
        };
        assert!(wed.contains(now));
        let thu = Schedule {
            days: 1 << parse_day("Thursday").unwrap(),
            ..Default::default()
        };
        assert!(!thu.contains(now));
        assert!(TimeWindow::parse("10:00", "10:00").is_err());
        assert!(TimeWindow::parse("25:00", "10:00").is_err());
        assert!(TimeWindow::parse("10:00", "24:00").is_ok());
    }

    #[test]
    fn campaigns() {
        let start = parse_rfc3339("2026-11-27T00:00:00Z").unwrap();
        let end = parse_rfc3339("2026-11-28T00:00:00Z").unwrap();
        let s = Schedule {
            campaigns: vec![(start, end)],
            ..Default::default()
        };
        assert!(!s.contains((start * 1000 - 1) as u64));
        assert!(s.contains((start * 1000) as u64));
        assert!(!s.contains((end * 1000) as u64));
    }
}
