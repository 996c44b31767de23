//! Cron schedules: parsing (the cron crate's 6/7-field syntax, seconds first, Sunday = 1, and
//! the classic 5-field form normalised to it), timezones, and the slot arithmetic behind
//! catch-up (the latest slot at or before a time).
//!
//! A configured line is parsed once, when the configuration is read, into a [`CronLine`]; with a
//! [`Timezone`] it becomes a [`CronSchedule`] that answers "which slot comes next".

use std::fmt;
use std::str::FromStr;

use chrono::{TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::clock::{Millis, to_datetime};

/// A parsed schedule in its timezone.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    schedule: cron::Schedule,
    tz: Tz,
    source: String,
}

/// Classic day-of-week names, Sunday first (0).
const DAY_NAMES: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// Parses a day-of-week value of the classic form: 0–7 (0 and 7 are Sunday) or a name.
fn classic_day(value: &str) -> Result<u32, String> {
    let lower = value.to_ascii_lowercase();
    if let Some(i) = DAY_NAMES.iter().position(|n| *n == lower) {
        return Ok(i as u32);
    }
    match lower.parse::<u32>() {
        Ok(n) if n <= 7 => Ok(n % 7),
        _ => Err(format!(
            "day of week `{value}` is not 0-7 or a name (sun, mon, …)"
        )),
    }
}

/// Turns a classic day-of-week field (`1-5`, `0,6`, `*/2`, `mon-fri`) into the cron crate's
/// numbering (Sunday = 1 … Saturday = 7) as an explicit list.
fn classic_days_of_week(field: &str) -> Result<String, String> {
    if field == "*" || field == "?" {
        return Ok(field.to_string());
    }
    let mut days = [false; 7];
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("step `{s}` in `{item}` is not a positive number"))?,
            ),
            None => (item, 1),
        };
        let (from, to) = if range == "*" {
            (0, 6)
        } else if let Some((a, b)) = range.split_once('-') {
            let a = classic_day(a)?;
            // `5-7` means Friday to Sunday: 7 stays the end of the week here.
            let b = if b == "7" { 7 } else { classic_day(b)? };
            if b < a {
                return Err(format!("range `{range}` runs backwards"));
            }
            (a, b)
        } else {
            let d = classic_day(range)?;
            (d, if step > 1 { 6 } else { d })
        };
        let mut d = from;
        while d <= to {
            days[(d % 7) as usize] = true;
            d += step;
        }
    }
    let list: Vec<String> = (0..7)
        .filter(|d| days[*d])
        .map(|d| (d + 1).to_string())
        .collect();
    if list.is_empty() {
        return Err(format!("day-of-week field `{field}` names no day"));
    }
    Ok(list.join(","))
}

/// Normalises a schedule to the cron crate's syntax: 6 or 7 fields are taken as they are
/// (seconds first, Sunday = 1); a classic 5-field line (`min hour dom mon dow`, Sunday = 0 or
/// 7) gets a `0` seconds field and its day-of-week renumbered.
pub fn normalise(expr: &str) -> Result<String, String> {
    let fields: Vec<&str> = expr.split_whitespace().collect();
    match fields.len() {
        5 => {
            let dow = classic_days_of_week(fields[4])?;
            Ok(format!(
                "0 {} {} {} {} {dow}",
                fields[0], fields[1], fields[2], fields[3]
            ))
        }
        6 | 7 => Ok(fields.join(" ")),
        n => Err(format!(
            "`{expr}` has {n} fields; use 6 or 7 (sec min hour day-of-month month day-of-week [year], Sunday = 1) or the classic 5 (min hour day-of-month month day-of-week, Sunday = 0)"
        )),
    }
}

impl CronSchedule {
    /// Parses `expr` (see [`normalise`]) in the timezone named `tz` (an IANA name such as
    /// `UTC` or `Europe/Berlin`).
    pub fn parse(expr: &str, tz: &str) -> Result<CronSchedule, String> {
        let tz = parse_timezone(tz)?;
        let schedule = parse_line(expr)?;
        CronSchedule::new(schedule, tz, expr)
    }

    fn new(schedule: cron::Schedule, tz: Tz, source: &str) -> Result<CronSchedule, String> {
        if schedule.upcoming(tz).next().is_none() {
            return Err(format!("`{source}` never fires"));
        }
        Ok(CronSchedule {
            schedule,
            tz,
            source: source.to_string(),
        })
    }

    /// The expression as configured.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The first slot strictly after `after`.
    pub fn next_after(&self, after: Millis) -> Option<Millis> {
        let at = self.tz.from_utc_datetime(&to_datetime(after).naive_utc());
        self.schedule
            .after(&at)
            .next()
            .map(|t| t.with_timezone(&Utc).timestamp_millis())
    }

    /// The latest slot at or before `at`.
    pub fn latest_at_or_before(&self, at: Millis) -> Option<Millis> {
        // Slots have whole seconds: every slot at or before `at` is before the next second.
        let bound = at - at.rem_euclid(1000) + 1000;
        let from = self.tz.from_utc_datetime(&to_datetime(bound).naive_utc());
        self.schedule
            .after(&from)
            .next_back()
            .map(|t| t.with_timezone(&Utc).timestamp_millis())
            .filter(|t| *t <= at)
    }
}

/// Normalises and parses one cron expression.
fn parse_line(expr: &str) -> Result<cron::Schedule, String> {
    let normalised = normalise(expr)?;
    cron::Schedule::from_str(&normalised)
        .map_err(|e| format!("`{expr}` is not a valid schedule ({normalised}): {e}"))
}

/// A cron line as configured: its text and what parsing it once gave. An empty line means the
/// schedule is off. A line that did not parse keeps its error for validation to report with
/// the key that holds it.
#[derive(Clone)]
pub struct CronLine {
    source: String,
    parsed: Result<Option<cron::Schedule>, String>,
}

impl CronLine {
    /// Parses `expr` (see [`normalise`]); blank means off.
    pub fn parse(expr: &str) -> CronLine {
        let parsed = if expr.trim().is_empty() {
            Ok(None)
        } else {
            parse_line(expr).map(Some)
        };
        CronLine {
            source: expr.to_string(),
            parsed,
        }
    }

    /// A schedule that never runs.
    pub fn off() -> CronLine {
        CronLine::parse("")
    }

    /// The line as configured.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the schedule is off (the line is blank).
    pub fn is_off(&self) -> bool {
        matches!(self.parsed, Ok(None))
    }

    /// The schedule in `tz`, `None` when off, or what is wrong with the line.
    pub fn in_zone(&self, tz: &Timezone) -> Result<Option<CronSchedule>, String> {
        let tz = tz.tz()?;
        match &self.parsed {
            Ok(None) => Ok(None),
            Ok(Some(schedule)) => CronSchedule::new(schedule.clone(), tz, &self.source).map(Some),
            Err(why) => Err(why.clone()),
        }
    }
}

impl Default for CronLine {
    fn default() -> Self {
        CronLine::off()
    }
}

impl From<&str> for CronLine {
    fn from(expr: &str) -> Self {
        CronLine::parse(expr)
    }
}

impl From<String> for CronLine {
    fn from(expr: String) -> Self {
        CronLine::parse(&expr)
    }
}

impl PartialEq for CronLine {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl fmt::Debug for CronLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.source, f)
    }
}

impl Serialize for CronLine {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for CronLine {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(CronLine::from)
    }
}

/// A timezone as configured: its name and what parsing it gave (see [`parse_timezone`]).
#[derive(Clone)]
pub struct Timezone {
    name: String,
    parsed: Result<Tz, String>,
}

impl Timezone {
    /// Parses an IANA name; a name that does not parse keeps its error for validation.
    pub fn parse(name: &str) -> Timezone {
        Timezone {
            name: name.to_string(),
            parsed: parse_timezone(name),
        }
    }

    /// The name as configured.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The timezone, or what is wrong with its name.
    pub fn tz(&self) -> Result<Tz, String> {
        self.parsed.clone()
    }
}

impl Default for Timezone {
    fn default() -> Self {
        Timezone::parse("UTC")
    }
}

impl From<&str> for Timezone {
    fn from(name: &str) -> Self {
        Timezone::parse(name)
    }
}

impl From<String> for Timezone {
    fn from(name: String) -> Self {
        Timezone::parse(&name)
    }
}

impl PartialEq for Timezone {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl fmt::Debug for Timezone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.name, f)
    }
}

impl Serialize for Timezone {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.name)
    }
}

impl<'de> Deserialize<'de> for Timezone {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Timezone::from)
    }
}

/// Parses an IANA timezone name.
pub fn parse_timezone(name: &str) -> Result<Tz, String> {
    Tz::from_str(name.trim()).map_err(|_| {
        format!("`{name}` is not a known timezone (an IANA name such as UTC or Europe/Berlin)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(rfc: &str) -> Millis {
        chrono::DateTime::parse_from_rfc3339(rfc)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn classic_five_fields_are_normalised() {
        assert_eq!(normalise("0 0,12 * * *").unwrap(), "0 0 0,12 * * *");
        // Monday to Friday is 2-6 in the cron crate's numbering.
        assert_eq!(normalise("30 9 * * 1-5").unwrap(), "0 30 9 * * 2,3,4,5,6");
        assert_eq!(normalise("0 0 * * 0").unwrap(), "0 0 0 * * 1");
        assert_eq!(normalise("0 0 * * 7").unwrap(), "0 0 0 * * 1");
        assert_eq!(normalise("0 0 * * 5-7").unwrap(), "0 0 0 * * 1,6,7");
        assert_eq!(normalise("0 0 * * sat,sun").unwrap(), "0 0 0 * * 1,7");
        assert_eq!(normalise("0 0 * * */2").unwrap(), "0 0 0 * * 1,3,5,7");
        assert_eq!(normalise("0 0 0 * * 1").unwrap(), "0 0 0 * * 1");
        assert!(normalise("* * *").unwrap_err().contains("3 fields"));
        assert!(normalise("0 0 * * 9").unwrap_err().contains("day of week"));
    }

    #[test]
    fn a_classic_weekday_schedule_fires_on_weekdays_only() {
        let s = CronSchedule::parse("0 9 * * 1-5", "UTC").unwrap();
        // 2026-01-02 is a Friday; the next slot after Friday 09:00 is Monday 09:00.
        assert_eq!(
            s.next_after(ms("2026-01-02T09:00:00Z")),
            Some(ms("2026-01-05T09:00:00Z"))
        );
    }

    #[test]
    fn latest_slot_at_or_before() {
        let s = CronSchedule::parse("0 0 0,12 * * *", "UTC").unwrap();
        assert_eq!(
            s.latest_at_or_before(ms("2026-01-01T12:00:00Z")),
            Some(ms("2026-01-01T12:00:00Z"))
        );
        assert_eq!(
            s.latest_at_or_before(ms("2026-01-01T11:59:59.999Z")),
            Some(ms("2026-01-01T00:00:00Z"))
        );
        assert_eq!(
            s.latest_at_or_before(ms("2026-01-04T07:00:00Z")),
            Some(ms("2026-01-04T00:00:00Z"))
        );
        assert_eq!(
            s.next_after(ms("2026-01-01T12:00:00Z")),
            Some(ms("2026-01-02T00:00:00Z"))
        );
    }

    #[test]
    fn timezones_shift_slots() {
        let s = CronSchedule::parse("0 0 9 * * *", "Europe/Berlin").unwrap();
        // 09:00 in Berlin in January is 08:00 UTC.
        assert_eq!(
            s.next_after(ms("2026-01-01T00:00:00Z")),
            Some(ms("2026-01-01T08:00:00Z"))
        );
        assert!(CronSchedule::parse("0 0 9 * * *", "Mars/Base").is_err());
    }
    #[test]
    fn a_line_is_parsed_once_and_placed_in_a_zone() {
        let line = CronLine::parse("0 9 * * 1-5");
        assert!(!line.is_off());
        let s = line
            .in_zone(&Timezone::parse("Europe/Berlin"))
            .unwrap()
            .unwrap();
        // 09:00 in Berlin on Monday 2026-01-05 is 08:00 UTC.
        assert_eq!(
            s.next_after(ms("2026-01-02T09:00:00Z")),
            Some(ms("2026-01-05T08:00:00Z"))
        );
        assert_eq!(s.source(), "0 9 * * 1-5");

        assert!(CronLine::parse("  ").is_off());
        assert!(
            CronLine::off()
                .in_zone(&Timezone::default())
                .unwrap()
                .is_none()
        );
        let bad = CronLine::parse("* * *");
        assert!(
            bad.in_zone(&Timezone::default())
                .unwrap_err()
                .contains("3 fields")
        );
        let err = line.in_zone(&Timezone::parse("Mars/Base")).unwrap_err();
        assert!(err.contains("not a known timezone"), "{err}");
        let never = CronLine::parse("0 0 0 1 1 * 2001");
        assert!(
            never
                .in_zone(&Timezone::default())
                .unwrap_err()
                .contains("never fires")
        );
    }

    #[test]
    fn lines_and_zones_read_and_write_as_their_text() {
        let line: CronLine = serde_json::from_str("\"0 0 0,12 * * *\"").unwrap();
        assert_eq!(line, CronLine::from("0 0 0,12 * * *"));
        assert_eq!(serde_json::to_string(&line).unwrap(), "\"0 0 0,12 * * *\"");
        let tz: Timezone = serde_json::from_str("\"UTC\"").unwrap();
        assert_eq!(tz, Timezone::default());
        assert_eq!(tz.name(), "UTC");
        assert_eq!(serde_json::to_string(&tz).unwrap(), "\"UTC\"");
    }
}
