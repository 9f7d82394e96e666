//! HTTP-date (RFC 9110 §5.6.7): IMF-fixdate, and the obsolete RFC 850 and asctime formats a
//! recipient must also accept. Parsed to seconds since the Unix epoch; anything else is None.

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn time_of_day(text: &str) -> Option<i64> {
    let parts: Vec<&str> = text.split(':').collect();
    let [h, m, s] = parts.as_slice() else {
        return None;
    };
    let field = |t: &str, max: i64| -> Option<i64> {
        (t.len() == 2 && t.bytes().all(|b| b.is_ascii_digit()))
            .then(|| t.parse().ok())
            .flatten()
            .filter(|v| *v <= max)
    };
    // Seconds up to 60 (a leap second).
    Some(field(h, 23)? * 3600 + field(m, 59)? * 60 + field(s, 60)?)
}

fn date(year: i64, month: &str, day: &str) -> Option<i64> {
    let month = MONTHS.iter().position(|m| *m == month)? as i64 + 1;
    let day: i64 = day.parse().ok().filter(|d| (1..=31).contains(d))?;
    Some(days_from_civil(year, month, day))
}

const DAY_NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const DAY_NAMES_LONG: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// Exactly `n` ASCII digits.
fn digits(text: &str, n: usize) -> Option<i64> {
    (text.len() == n && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

/// Parses an HTTP-date to seconds since the epoch. The grammar is exact (§5.6.7): single
/// spaces where it has SP, fixed-width fields, case-sensitive names; so an `Expires` with,
/// say, two spaces inside is invalid (and means "already expired", RFC 9111 §5.3). Only
/// whitespace around the whole value is dropped (it is not part of a field value).
pub fn parse(bytes: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(bytes).ok()?.trim_matches([' ', '\t']);
    let fields: Vec<&str> = text.split(' ').collect();
    let days_and_time = match fields.as_slice() {
        // IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT
        [weekday, day, month, year, time, "GMT"]
            if DAY_NAMES
                .iter()
                .any(|d| weekday.strip_suffix(',') == Some(*d)) =>
        {
            digits(day, 2)?;
            (date(digits(year, 4)?, month, day)?, time_of_day(time)?)
        }
        // RFC 850: Sunday, 06-Nov-94 08:49:37 GMT (two-digit years: §5.6.7, a year more than
        // 50 years in the future is taken as the past century).
        [weekday, dmy, time, "GMT"]
            if DAY_NAMES_LONG
                .iter()
                .any(|d| weekday.strip_suffix(',') == Some(*d)) =>
        {
            let parts: Vec<&str> = dmy.split('-').collect();
            let [day, month, year] = parts.as_slice() else {
                return None;
            };
            digits(day, 2)?;
            let short = digits(year, 2)?;
            let year = if short >= 70 {
                1900 + short
            } else {
                2000 + short
            };
            (date(year, month, day)?, time_of_day(time)?)
        }
        // asctime: Sun Nov  6 08:49:37 1994 (a one-digit day is preceded by a second space,
        // which splits into an empty field here).
        [weekday, month, "", day, time, year] if DAY_NAMES.contains(weekday) => {
            digits(day, 1)?;
            (date(digits(year, 4)?, month, day)?, time_of_day(time)?)
        }
        [weekday, month, day, time, year] if DAY_NAMES.contains(weekday) => {
            digits(day, 2)?;
            (date(digits(year, 4)?, month, day)?, time_of_day(time)?)
        }
        _ => return None,
    };
    Some(days_and_time.0 * 86_400 + days_and_time.1)
}

/// Formats seconds since the epoch as an IMF-fixdate.
pub fn format(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let secs = seconds.rem_euclid(86_400);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize];
    // Civil from days (inverse of days_from_civil).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    format!(
        "{weekday}, {day:02} {} {year:04} {:02}:{:02}:{:02} GMT",
        MONTHS[(month - 1) as usize],
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 9110 §5.6.7's three examples name the same instant.
    #[test]
    fn the_three_formats_of_rfc_9110() {
        assert_eq!(parse(b"Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(parse(b"Sunday, 06-Nov-94 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(parse(b"Sun Nov  6 08:49:37 1994"), Some(784_111_777));
    }

    #[test]
    fn garbage_is_none() {
        for bad in [
            &b""[..],
            b"0",
            b"-1",
            b"tomorrow",
            b"Sun, 06 Nov 1994 25:00:00 GMT",
            b"Sun, 32 Nov 1994 08:49:37 GMT",
            b"Sun, 06 Foo 1994 08:49:37 GMT",
            b"Sun, 06 Nov 1994 08:49:37 PST",
            b"\xff\xfe",
            // Not exactly the grammar (RFC 9110 §5.6.7): extra or missing spaces, one-digit
            // day in IMF-fixdate, lowercase names, a made-up day name.
            b"Sun,  06 Nov 1994 08:49:37 GMT",
            b"Sun, 06 Nov 1994  08:49:37 GMT",
            b"Sun,06 Nov 1994 08:49:37 GMT",
            b"Sun, 6 Nov 1994 08:49:37 GMT",
            b"sun, 06 nov 1994 08:49:37 GMT",
            b"Xyz, 06 Nov 1994 08:49:37 GMT",
            b"Sun, 06 Nov 94 08:49:37 GMT",
            b"Sun Nov 6 08:49:37 1994",
            b"Sunday, 6-Nov-94 08:49:37 GMT",
        ] {
            assert_eq!(parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    proptest! {
        #[test]
        fn format_round_trips(seconds in 0i64..4_102_444_800) {
            prop_assert_eq!(parse(format(seconds).as_bytes()), Some(seconds));
        }

        #[test]
        fn never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse(&bytes);
        }
    }
}
