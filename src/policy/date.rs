//! HTTP dates as a cache reads them (RFC 9110 §5.6.7, RFC 9111 §4.2).
//!
//! All three forms are accepted: the IMF-fixdate a sender must use
//! (`Sun, 06 Nov 1994 08:49:37 GMT`) and the two obsolete forms a recipient
//! must still read, RFC 850 (`Sunday, 06-Nov-94 08:49:37 GMT`) and C's
//! `asctime()` (`Sun Nov  6 08:49:37 1994`). Day and month names and `GMT`
//! are matched in any letter case (RFC 9111 §4.2: a cache recipient reads
//! dates leniently). The day name is checked for its form only, not
//! against the date. An RFC 850 two-digit year that would be more than 50
//! years after `now` is the most recent past year with those digits.
//!
//! Anything else (an out-of-range field, trailing text, a time zone other
//! than GMT) is invalid: `None`. What an invalid date means is the
//! caller's decision (an invalid `Expires` is a time in the past).

const MONTHS: [&[u8; 3]; 12] = [
    b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov", b"dec",
];

const DAYS: [&[u8]; 7] = [
    b"monday",
    b"tuesday",
    b"wednesday",
    b"thursday",
    b"friday",
    b"saturday",
    b"sunday",
];

/// Milliseconds in a day.
const DAY_MS: i64 = 86_400_000;

/// The date `value` names, in ms since the Unix epoch (`None`: not an HTTP
/// date, or before 1970). `now` (ms since the epoch) places RFC 850's
/// two-digit years.
pub(crate) fn parse(value: &str, now: u64) -> Option<u64> {
    let s = value.trim().as_bytes();
    let (day_name, rest) = split_day_name(s)?;
    let parts = match rest.first()? {
        b',' => {
            let rest = rest.get(1..)?.strip_prefix(&[b' '][..])?;
            if day_name.len() == 3 {
                imf_fixdate(rest)?
            } else {
                rfc850(rest, now)?
            }
        }
        b' ' if day_name.len() == 3 => asctime(&rest[1..])?,
        _ => return None,
    };
    parts.to_millis()
}

/// A day name (three letters or the whole name, any case) and what follows.
fn split_day_name(s: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = s.iter().position(|b| !b.is_ascii_alphabetic())?;
    let name = &s[..end];
    let known = DAYS
        .iter()
        .any(|d| name.eq_ignore_ascii_case(&d[..3]) || name.eq_ignore_ascii_case(d));
    known.then_some((name, &s[end..]))
}

/// The fields of a date, checked for range by [`Parts::to_millis`].
struct Parts {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

impl Parts {
    fn to_millis(&self) -> Option<u64> {
        let days_in_month = match self.month {
            2 if is_leap(self.year) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        if !(1..=days_in_month).contains(&self.day)
            || self.hour > 23
            || self.minute > 59
            // 60: a leap second, read as the last second of the minute.
            || self.second > 60
        {
            return None;
        }
        let days = days_from_civil(self.year, self.month, self.day);
        let secs = i64::from(self.hour * 3600 + self.minute * 60 + self.second.min(59));
        let ms = days.checked_mul(DAY_MS)?.checked_add(secs * 1000)?;
        u64::try_from(ms).ok()
    }
}

/// `06 Nov 1994 08:49:37 GMT` (after `Sun, `).
fn imf_fixdate(s: &[u8]) -> Option<Parts> {
    let [d1, d2, b' ', m1, m2, m3, b' ', y1, y2, y3, y4, b' ', time @ .., sp, g, m, t] = s else {
        return None;
    };
    gmt(*sp, [*g, *m, *t])?;
    let (hour, minute, second) = clock(time)?;
    Some(Parts {
        year: i64::from(digits(&[*y1, *y2, *y3, *y4])?),
        month: month(&[*m1, *m2, *m3])?,
        day: digits(&[*d1, *d2])?,
        hour,
        minute,
        second,
    })
}

/// `06-Nov-94 08:49:37 GMT` (after `Sunday, `).
fn rfc850(s: &[u8], now: u64) -> Option<Parts> {
    let [d1, d2, b'-', m1, m2, m3, b'-', y1, y2, b' ', time @ .., sp, g, m, t] = s else {
        return None;
    };
    gmt(*sp, [*g, *m, *t])?;
    let (hour, minute, second) = clock(time)?;
    Some(Parts {
        year: two_digit_year(digits(&[*y1, *y2])?, now),
        month: month(&[*m1, *m2, *m3])?,
        day: digits(&[*d1, *d2])?,
        hour,
        minute,
        second,
    })
}

/// `Nov  6 08:49:37 1994` (after `Sun `): the day is two digits or a
/// space and one digit.
fn asctime(s: &[u8]) -> Option<Parts> {
    let [m1, m2, m3, b' ', d1, d2, b' ', time @ .., b' ', y1, y2, y3, y4] = s else {
        return None;
    };
    let day = match d1 {
        b' ' => digits(&[*d2])?,
        _ => digits(&[*d1, *d2])?,
    };
    let (hour, minute, second) = clock(time)?;
    Some(Parts {
        year: i64::from(digits(&[*y1, *y2, *y3, *y4])?),
        month: month(&[*m1, *m2, *m3])?,
        day,
        hour,
        minute,
        second,
    })
}

/// ` GMT`, in any case.
fn gmt(space: u8, zone: [u8; 3]) -> Option<()> {
    (space == b' ' && zone.eq_ignore_ascii_case(b"GMT")).then_some(())
}

/// `hh:mm:ss`.
fn clock(s: &[u8]) -> Option<(u32, u32, u32)> {
    let [h1, h2, b':', m1, m2, b':', s1, s2] = s else {
        return None;
    };
    Some((
        digits(&[*h1, *h2])?,
        digits(&[*m1, *m2])?,
        digits(&[*s1, *s2])?,
    ))
}

/// A month's number from its three-letter name, any case.
fn month(name: &[u8; 3]) -> Option<u32> {
    let i = MONTHS.iter().position(|m| name.eq_ignore_ascii_case(*m))?;
    Some(i as u32 + 1)
}

/// Decimal digits only.
fn digits(s: &[u8]) -> Option<u32> {
    s.iter().try_fold(0u32, |n, b| {
        b.is_ascii_digit().then(|| n * 10 + u32::from(b - b'0'))
    })
}

/// RFC 9110 §5.6.7: a two-digit year that would be more than 50 years in
/// the future is the most recent year in the past with the same digits.
fn two_digit_year(yy: u32, now: u64) -> i64 {
    let this_year = civil_year(i64::try_from(now).unwrap_or(i64::MAX) / DAY_MS);
    let century = this_year - this_year.rem_euclid(100);
    let year = century + i64::from(yy);
    if year > this_year + 50 {
        year - 100
    } else if year <= this_year - 50 {
        year + 100
    } else {
        year
    }
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The year of a day counted from 1970-01-01 (the inverse of
/// [`days_from_civil`], year only).
fn civil_year(days: i64) -> i64 {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let year = yoe + era * 400;
    if mp >= 10 {
        year + 1
    } else {
        year
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1994-11-06 08:49:37 UTC, RFC 9110's example.
    const EXAMPLE: u64 = 784_111_777_000;
    /// 2026-12-07 00:00:00 UTC.
    const NOW: u64 = 1_796_601_600_000;

    #[test]
    fn rfc9110_5_6_7_the_three_forms_name_the_same_time() {
        for s in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(parse(s, NOW), Some(EXAMPLE), "{s}");
        }
    }

    #[test]
    fn rfc9111_4_2_names_are_read_in_any_letter_case() {
        for s in [
            "sun, 06 nov 1994 08:49:37 gmt",
            "SUN, 06 NOV 1994 08:49:37 GMT",
            "sUnDaY, 06-nOv-94 08:49:37 Gmt",
            "SUN NOV  6 08:49:37 1994",
        ] {
            assert_eq!(parse(s, NOW), Some(EXAMPLE), "{s}");
        }
    }

    #[test]
    fn agrees_with_httpdate_on_valid_imf_fixdates() {
        for secs in [
            0u64,
            1,
            59,
            86_399,
            951_782_400,
            1_709_164_800,
            4_102_444_800,
        ] {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
            let s = httpdate::fmt_http_date(t);
            assert_eq!(parse(&s, NOW), Some(secs * 1000), "{s}");
        }
    }

    #[test]
    fn rfc9110_5_6_7_two_digit_years_are_never_more_than_50_years_ahead() {
        // In 2026: 76 is 2076 (exactly 50 years ahead), 77 is 1977.
        let year = |yy: &str| {
            let ms = parse(&format!("Monday, 01-Jan-{yy} 00:00:00 GMT"), NOW).unwrap();
            civil_year(ms as i64 / DAY_MS)
        };
        assert_eq!(year("26"), 2026);
        assert_eq!(year("76"), 2076);
        assert_eq!(year("77"), 1977);
        assert_eq!(year("99"), 1999);
        assert_eq!(year("00"), 2000);
    }

    /// The year arithmetic against values worked out independently: leap
    /// years by the Gregorian rule, the year of a day on both sides of
    /// each year's first and last day (before 1970 too), and two-digit
    /// years from a "now" late in a century, where they fall forward into
    /// the next one.
    #[test]
    fn year_arithmetic_agrees_with_the_calendar() {
        for (year, leap) in [
            (1900, false),
            (2000, true),
            (2023, false),
            (2024, true),
            (2100, false),
            (1600, true),
        ] {
            assert_eq!(is_leap(year), leap, "{year}");
        }
        // Days since 1970-01-01 of 1 January, counted by hand: 365 per
        // year plus one per leap year in between.
        let mut days = 0i64;
        for year in 1970..2401 {
            assert_eq!(civil_year(days), year, "1 Jan {year}");
            assert_eq!(civil_year(days - 1), year - 1, "31 Dec {}", year - 1);
            assert_eq!(days_from_civil(year, 1, 1), days, "{year}");
            // Around the end of February, where the calendar's own
            // arithmetic starts its years.
            let march = days + if is_leap(year) { 60 } else { 59 };
            assert_eq!(days_from_civil(year, 3, 1), march, "1 Mar {year}");
            for d in march - 2..=march + 1 {
                assert_eq!(civil_year(d), year, "{d} in {year}");
            }
            days += if is_leap(year) { 366 } else { 365 };
        }
        let mut days = 0i64;
        for year in (1600..1970).rev() {
            days -= if is_leap(year) { 366 } else { 365 };
            assert_eq!(civil_year(days), year, "1 Jan {year}");
            assert_eq!(civil_year(days + 364), year, "30/31 Dec {year}");
        }
        // In 2090: 40 is 2140 (exactly 50 years ahead), 39 is 2139, 41
        // is 2041, 90 is 2090; in 2060: 10 is 2110, 11 is 2011.
        let in_year = |y: i64| (days_from_civil(y, 6, 1) * DAY_MS) as u64;
        for (now, yy, year) in [
            (2090, 40, 2140),
            (2090, 39, 2139),
            (2090, 41, 2041),
            (2090, 90, 2090),
            (2060, 10, 2110),
            (2060, 11, 2011),
            (2026, 0, 2000),
        ] {
            assert_eq!(two_digit_year(yy, in_year(now)), year, "{yy} in {now}");
        }
        // A long day name is not asctime's.
        assert_eq!(parse("Sunday Nov  6 08:49:37 1994", NOW), None);
        assert_eq!(parse("Sun Nov  6 08:49:37 1994", NOW), Some(EXAMPLE));
    }

    #[test]
    fn malformed_dates_are_none() {
        for s in [
            "",
            "0",
            "-1",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 06 Nov 1994 08:49:37 +0000",
            "Sun, 6 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 GMT trailing",
            "Sun, 31 Nov 1994 08:49:37 GMT",
            "Sun, 29 Feb 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 06 Nov 1994 08:60:00 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Xyz, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06 Nov 1994 08:49:37 GMT",
            "Sun, 06-Nov-94 08:49:37 GMT",
            "Sun Nov 6 08:49:37 1994",
            "Sun, 01 Jan 1969 00:00:00 GMT",
            "Sun, 06 Nov 1994 08:49:37 GMT\u{e9}",
            "Sun, ０6 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse(s, NOW), None, "{s:?}");
        }
    }

    #[test]
    fn a_leap_day_and_a_leap_second_are_read() {
        assert_eq!(
            parse("Thu, 29 Feb 2024 00:00:00 GMT", NOW),
            Some(1_709_164_800_000)
        );
        assert_eq!(
            parse("Sat, 31 Dec 2016 23:59:60 GMT", NOW),
            parse("Sat, 31 Dec 2016 23:59:59 GMT", NOW)
        );
    }

    #[test]
    fn never_panics_on_any_prefix_of_a_date() {
        let s = "Sunday, 06-Nov-94 08:49:37 GMT";
        for end in 0..=s.len() {
            let _ = parse(&s[..end], NOW);
        }
        let s = "Sun Nov  6 08:49:37 1994";
        for end in 0..=s.len() {
            let _ = parse(&s[..end], NOW);
        }
    }
}
