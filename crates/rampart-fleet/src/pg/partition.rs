//! Daily partitions of `rampart_events`: named by their UTC date
//! (`rampart_events_p20261207`), created ahead and on demand, dropped whole
//! for retention.

use time::{Date, Month};

use super::schema::EVENTS;

/// One day in milliseconds.
pub const DAY_MS: i64 = 86_400_000;

/// The first instant a day partition can hold: 0001-01-01T00:00:00Z.
pub const MIN_MS: i64 = -62_135_596_800_000;
/// The end of the last day a partition can hold: 10000-01-01T00:00:00Z.
pub const MAX_MS: i64 = 253_402_300_800_000;

/// Partition of the times before [`MIN_MS`]; always older than any cutoff.
pub const BEFORE_MIN: &str = "rampart_events_before_year_1";
/// Partition of the times from [`MAX_MS`] on.
pub const AFTER_MAX: &str = "rampart_events_after_year_9999";

/// The day (days since the epoch) of `time_ms`, when a day partition can hold it.
pub fn day_of(time_ms: i64) -> Option<i64> {
    (MIN_MS..MAX_MS)
        .contains(&time_ms)
        .then(|| time_ms.div_euclid(DAY_MS))
}

/// The date of `day` (days since the epoch).
fn date_of(day: i64) -> Option<Date> {
    let epoch = Date::from_calendar_date(1970, Month::January, 1).ok()?;
    epoch.checked_add(time::Duration::days(day))
}

/// The partition table of `day`.
pub fn name(day: i64) -> Option<String> {
    let d = date_of(day)?;
    Some(format!(
        "{EVENTS}_p{:04}{:02}{:02}",
        d.year(),
        u8::from(d.month()),
        d.day()
    ))
}

/// The day a partition table name stands for (`None` for other tables).
pub fn parse_name(table: &str) -> Option<i64> {
    let digits = table.strip_prefix(EVENTS)?.strip_prefix("_p")?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let year: i32 = digits[..4].parse().ok()?;
    let month: u8 = digits[4..6].parse().ok()?;
    let day: u8 = digits[6..].parse().ok()?;
    let date = Date::from_calendar_date(year, Month::try_from(month).ok()?, day).ok()?;
    let epoch = Date::from_calendar_date(1970, Month::January, 1).ok()?;
    Some((date - epoch).whole_days())
}

/// DDL creating `day`'s partition if missing. The statement holds only
/// numbers and a name made of digits: nothing from an event or a user.
pub fn create_sql(day: i64) -> Option<String> {
    let table = name(day)?;
    let from = day * DAY_MS;
    let to = from + DAY_MS;
    Some(format!(
        "CREATE TABLE IF NOT EXISTS {table} PARTITION OF {EVENTS} FOR VALUES FROM ({from}) TO ({to})"
    ))
}

/// DDL of the two edge partitions.
pub fn edge_partitions_sql() -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {BEFORE_MIN} PARTITION OF {EVENTS} FOR VALUES FROM (MINVALUE) TO ({MIN_MS});\n\
         CREATE TABLE IF NOT EXISTS {AFTER_MAX} PARTITION OF {EVENTS} FOR VALUES FROM ({MAX_MS}) TO (MAXVALUE);"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_names_round_trip_and_bounds_hold() {
        let day = day_of(1_796_601_600_000).unwrap(); // 2026-12-07T00:00:00Z
        assert_eq!(name(day).as_deref(), Some("rampart_events_p20261207"));
        assert_eq!(parse_name("rampart_events_p20261207"), Some(day));
        assert_eq!(day_of(1_796_601_600_000 - 1), Some(day - 1));
        assert_eq!(day_of(-1), Some(-1));
        assert_eq!(name(-1).as_deref(), Some("rampart_events_p19691231"));
        assert_eq!(day_of(MIN_MS - 1), None);
        assert_eq!(day_of(MAX_MS), None);
        assert_eq!(
            name(day_of(MIN_MS).unwrap()).as_deref(),
            Some("rampart_events_p00010101")
        );
        assert_eq!(
            name(day_of(MAX_MS - 1).unwrap()).as_deref(),
            Some("rampart_events_p99991231")
        );
        assert_eq!(parse_name(BEFORE_MIN), None);
        assert_eq!(parse_name("rampart_events_p2026120"), None);
    }
}
