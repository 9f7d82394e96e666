//! Calendar quota periods — a day, an ISO week (Monday to Sunday) or a month — in a fixed
//! UTC offset: which period an instant falls in, and when that period ends. Civil dates come
//! from day counts with the proleptic Gregorian calendar's 400-year cycle.

/// How long a quota period is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Day,
    Week,
    Month,
}

/// A calendar period in a fixed UTC offset (seconds east of UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Period {
    pub unit: Unit,
    pub offset_s: i64,
}

const DAY_NS: i128 = 86_400_000_000_000;

/// (year, month 1–12, day 1–31) of the day `days` after 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of the 400-year era, 0..=146096
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of the March-based year
    let mp = (5 * doy + 2) / 153; // March = 0
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days from 1970-01-01 to (year, month, day).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = i64::from((month + 9) % 12); // March = 0
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl Period {
    /// The local day (days since 1970-01-01 in the offset) of `now_ns` (UNIX nanoseconds).
    fn local_day(&self, now_ns: u64) -> i64 {
        let local = i128::from(now_ns) + i128::from(self.offset_s) * 1_000_000_000;
        local.div_euclid(DAY_NS) as i64
    }

    /// The first local day of the period with this index.
    fn first_day(&self, index: i64) -> i64 {
        match self.unit {
            Unit::Day => index,
            // 1970-01-01 was a Thursday: the Monday before is day −3.
            Unit::Week => index * 7 - 3,
            Unit::Month => {
                days_from_civil(index.div_euclid(12), index.rem_euclid(12) as u32 + 1, 1)
            }
        }
    }

    /// The index of the period `now_ns` falls in (days, weeks or months since 1970 in the
    /// offset; consecutive periods have consecutive indices).
    pub fn index(&self, now_ns: u64) -> i64 {
        let day = self.local_day(now_ns);
        match self.unit {
            Unit::Day => day,
            Unit::Week => (day + 3).div_euclid(7),
            Unit::Month => {
                let (year, month, _) = civil_from_days(day);
                year * 12 + i64::from(month) - 1
            }
        }
    }

    /// When the period with this index ends (UNIX nanoseconds), i.e. the next one starts.
    pub fn end_ns(&self, index: i64) -> u64 {
        let day = self.first_day(index + 1);
        let utc = i128::from(day) * DAY_NS - i128::from(self.offset_s) * 1_000_000_000;
        utc.clamp(0, i128::from(u64::MAX)) as u64
    }

    /// The nominal length in seconds (RateLimit-Policy's `w`): a day, a week, 30 days.
    pub fn nominal_seconds(&self) -> u64 {
        match self.unit {
            Unit::Day => 86_400,
            Unit::Week => 7 * 86_400,
            Unit::Month => 30 * 86_400,
        }
    }
}

/// Parses a UTC offset: `"Z"`, `"+02:00"`, `"-05:30"`, `"+0530"`, up to ±14:00.
pub fn parse_offset(text: &str) -> Option<i64> {
    if text == "Z" || text == "z" {
        return Some(0);
    }
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => return None,
    };
    let digits: String = rest.chars().filter(|c| *c != ':').collect();
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) || rest.len() > 5 {
        return None;
    }
    let hours: i64 = digits[..2].parse().ok()?;
    let minutes: i64 = digits[2..].parse().ok()?;
    if minutes >= 60 || hours * 60 + minutes > 14 * 60 {
        return None;
    }
    Some(sign * (hours * 3600 + minutes * 60))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEC: u64 = 1_000_000_000;

    fn at(year: i64, month: u32, day: u32, hour: u64) -> u64 {
        days_from_civil(year, month, day) as u64 * 86_400 * SEC + hour * 3600 * SEC
    }

    #[test]
    fn known_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
        assert_eq!(
            days_from_civil(2100, 3, 1) - days_from_civil(2100, 2, 28),
            1,
            "2100 is no leap year"
        );
    }

    #[test]
    fn months_end_at_local_midnight_of_the_first() {
        let utc = Period {
            unit: Unit::Month,
            offset_s: 0,
        };
        let jan31 = at(2026, 1, 31, 23);
        let i = utc.index(jan31);
        assert_eq!(utc.end_ns(i), at(2026, 2, 1, 0));
        assert_eq!(utc.index(at(2026, 2, 1, 0)), i + 1);
        // February of a leap year, then March.
        let feb = utc.index(at(2024, 2, 10, 0));
        assert_eq!(utc.end_ns(feb), at(2024, 3, 1, 0));
        // December into January.
        let dec = utc.index(at(2026, 12, 31, 12));
        assert_eq!(utc.end_ns(dec), at(2027, 1, 1, 0));
        // +02:00: the month ends at 22:00 UTC on the last day.
        let cest = Period {
            unit: Unit::Month,
            offset_s: 7200,
        };
        assert_eq!(
            cest.index(at(2026, 1, 31, 22)),
            cest.index(at(2026, 1, 31, 21)) + 1
        );
        assert_eq!(
            cest.end_ns(cest.index(at(2026, 1, 15, 0))),
            at(2026, 1, 31, 22)
        );
        // −05:00: January 31 23:00 local is February 1 04:00 UTC, still January.
        let est = Period {
            unit: Unit::Month,
            offset_s: -5 * 3600,
        };
        assert_eq!(est.index(at(2026, 2, 1, 4)), est.index(at(2026, 1, 20, 0)));
        assert_eq!(
            est.index(at(2026, 2, 1, 5)),
            est.index(at(2026, 1, 20, 0)) + 1
        );
    }

    #[test]
    fn weeks_start_on_monday() {
        let week = Period {
            unit: Unit::Week,
            offset_s: 0,
        };
        // 2026-12-07 is a Monday.
        let sunday = week.index(at(2026, 12, 6, 23));
        assert_eq!(week.index(at(2026, 12, 7, 0)), sunday + 1);
        assert_eq!(week.end_ns(sunday), at(2026, 12, 7, 0));
        assert_eq!(week.index(at(2026, 12, 13, 23)), sunday + 1);
    }

    #[test]
    fn offsets_parse_strictly() {
        assert_eq!(parse_offset("Z"), Some(0));
        assert_eq!(parse_offset("+02:00"), Some(7200));
        assert_eq!(parse_offset("-05:30"), Some(-19_800));
        assert_eq!(parse_offset("+0530"), Some(19_800));
        for bad in ["", "02:00", "+2:00", "+15:00", "+02:60", "+02:00:00", "UTC"] {
            assert_eq!(parse_offset(bad), None, "{bad:?}");
        }
    }

    proptest! {
        /// For every unit and offset: an instant lies before the end of its period, and the
        /// end is the first instant of the next period (indices consecutive).
        #[test]
        fn periods_tile_time(
            secs in 0u64..8_000_000_000, // 1970 – 2223
            unit in prop::sample::select(vec![Unit::Day, Unit::Week, Unit::Month]),
            offset_min in -14i64 * 60..=14 * 60,
        ) {
            let period = Period { unit, offset_s: offset_min * 60 };
            let now = secs * SEC;
            let i = period.index(now);
            let end = period.end_ns(i);
            prop_assert!(end > now);
            prop_assert_eq!(period.index(end), i + 1);
            prop_assert_eq!(period.index(end - 1), i);
            prop_assert!(end - now <= 31 * 86_400 * SEC);
        }

        #[test]
        fn civil_round_trips(days in -1_000_000i64..1_000_000) {
            let (y, m, d) = civil_from_days(days);
            prop_assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
