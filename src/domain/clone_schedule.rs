//! Clone schedules (target side): a clone of one source that runs by itself,
//! every interval or by a cron expression. Each run is a clone like an
//! operator's, followed by whatever exchange the source approves (a Recurring
//! Clone configured there). Pure: when the next run is due is a function of
//! the previous due time and `now`, both passed in.

use super::DomainError;
use super::ids::{CloneId, Host, Name, SysId, UnixMillis};
use super::schedule::next_periodic;

/// The shortest interval, and so the closest two runs can be (five-field
/// cron has minutes as its finest unit): a clone moves a whole instance.
pub const MIN_INTERVAL_MILLIS: i64 = 60_000;
/// The longest interval: a year and a day.
pub const MAX_INTERVAL_MILLIS: i64 = 366 * 24 * 3_600_000;

/// When a schedule runs.
#[derive(Clone, Debug)]
pub enum Cadence {
    /// Every `millis`, counted from the previous due time.
    Every { millis: i64 },
    /// By a five-field cron expression (minute hour day-of-month month
    /// day-of-week), evaluated in UTC.
    Cron(Box<CronExpression>),
}

/// A parsed cron expression and the text it was parsed from.
#[derive(Clone, Debug)]
pub struct CronExpression {
    text: String,
    parsed: croner::Cron,
}

impl PartialEq for Cadence {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Cadence::Every { millis: a }, Cadence::Every { millis: b }) => a == b,
            (Cadence::Cron(a), Cadence::Cron(b)) => a.text == b.text,
            _ => false,
        }
    }
}
impl Eq for Cadence {}

impl Cadence {
    pub fn every(millis: i64) -> Result<Self, DomainError> {
        if !(MIN_INTERVAL_MILLIS..=MAX_INTERVAL_MILLIS).contains(&millis) {
            return Err(DomainError::invalid("every", "must be between one minute and 366 days"));
        }
        Ok(Cadence::Every { millis })
    }

    /// Parses a five-field cron expression (no seconds field), refusing one
    /// that never fires.
    pub fn cron(text: &str) -> Result<Self, DomainError> {
        let text = text.trim();
        if text.split_whitespace().count() != 5 {
            return Err(DomainError::invalid(
                "cron",
                "needs five fields: minute hour day-of-month month day-of-week (UTC)",
            ));
        }
        let parser = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Disallowed)
            .year(croner::parser::Year::Disallowed)
            .build();
        let parsed = parser.parse(text).map_err(|e| DomainError::invalid("cron", e.to_string()))?;
        let cadence = Cadence::Cron(Box::new(CronExpression { text: text.to_owned(), parsed }));
        // One that never fires (30 February) is a mistake, not a schedule.
        cadence.occurrence_after(UnixMillis(0))?;
        Ok(cadence)
    }

    /// The first run of a schedule created at `now`.
    pub fn first_run(&self, now: UnixMillis) -> Result<UnixMillis, DomainError> {
        match self {
            Cadence::Every { millis } => Ok(now.plus_millis(*millis)),
            Cadence::Cron(_) => self.occurrence_after(now),
        }
    }

    /// The run after the one due at `due`, run at `now`: never in the past,
    /// so after a long stop the missed runs are made up once, not once each.
    pub fn next_run(&self, due: UnixMillis, now: UnixMillis) -> Result<UnixMillis, DomainError> {
        match self {
            Cadence::Every { millis } => Ok(next_periodic(due, *millis, now)),
            Cadence::Cron(_) => self.occurrence_after(due.max(now)),
        }
    }

    /// The cron text, or None for an interval.
    pub fn cron_text(&self) -> Option<&str> {
        match self {
            Cadence::Cron(c) => Some(&c.text),
            Cadence::Every { .. } => None,
        }
    }

    pub fn every_millis(&self) -> Option<i64> {
        match self {
            Cadence::Every { millis } => Some(*millis),
            Cadence::Cron(_) => None,
        }
    }

    /// For messages and audit details: "every 3600s" or "cron 0 2 * * *".
    pub fn describe(&self) -> String {
        match self {
            Cadence::Every { millis } => format!("every {}s", millis / 1000),
            Cadence::Cron(c) => format!("cron {} (UTC)", c.text),
        }
    }

    fn occurrence_after(&self, t: UnixMillis) -> Result<UnixMillis, DomainError> {
        let Cadence::Cron(c) = self else { unreachable!("occurrence_after is for cron cadences") };
        let never = || DomainError::invalid("cron", format!("{} never runs", c.text));
        let start = chrono::DateTime::from_timestamp_millis(t.0).ok_or_else(never)?;
        let next = c.parsed.find_next_occurrence(&start, false).map_err(|_| never())?;
        Ok(UnixMillis(next.timestamp_millis()))
    }
}

/// A schedule on the target, named by its operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloneSchedule {
    pub name: Name,
    pub source: SysId,
    pub source_host: Host,
    pub cadence: Cadence,
    pub next_run_at: UnixMillis,
    pub created_at: UnixMillis,
    pub created_by: String,
    /// Clones it started.
    pub runs: u64,
    /// Runs it skipped because another clone was still running.
    pub skipped: u64,
    pub last_run_at: Option<UnixMillis>,
    pub last_clone: Option<CloneId>,
    pub last_outcome: Option<String>,
}

/// What one due run of a schedule did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScheduledRun {
    /// It started this clone.
    Started(CloneId),
    /// Another clone (this one) was running: the run is skipped, not queued,
    /// so a slow clone does not pile up runs behind it.
    Skipped(String),
}

impl CloneSchedule {
    pub fn new(
        name: Name,
        source: SysId,
        source_host: Host,
        cadence: Cadence,
        now: UnixMillis,
        created_by: String,
    ) -> Result<Self, DomainError> {
        let next_run_at = cadence.first_run(now)?;
        Ok(CloneSchedule {
            name,
            source,
            source_host,
            cadence,
            next_run_at,
            created_at: now,
            created_by,
            runs: 0,
            skipped: 0,
            last_run_at: None,
            last_clone: None,
            last_outcome: None,
        })
    }

    /// Records the run due at `due`, made at `now`, and returns when the
    /// next is due.
    pub fn ran(&mut self, run: &ScheduledRun, due: UnixMillis, now: UnixMillis) -> Result<UnixMillis, DomainError> {
        match run {
            ScheduledRun::Started(id) => {
                self.runs += 1;
                self.last_clone = Some(id.clone());
                self.last_outcome = Some(format!("started clone {id}"));
            }
            ScheduledRun::Skipped(running) => {
                self.skipped += 1;
                self.last_outcome = Some(format!("skipped: clone {running} was still running"));
            }
        }
        self.last_run_at = Some(now);
        self.next_run_at = self.cadence.next_run(due, now)?;
        Ok(self.next_run_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: i64 = 60_000;
    const HOUR: i64 = 60 * MINUTE;
    /// 2026-12-05T00:00:00Z.
    const MIDNIGHT: UnixMillis = UnixMillis(1_796_428_800_000);

    #[test]
    fn intervals_keep_their_rhythm_and_make_up_a_long_stop_once() {
        let c = Cadence::every(HOUR).unwrap();
        assert_eq!(c.first_run(MIDNIGHT).unwrap(), MIDNIGHT.plus_millis(HOUR));
        let due = MIDNIGHT.plus_millis(HOUR);
        // Ran a little late: the next keeps the hour.
        assert_eq!(c.next_run(due, due.plus_millis(5_000)).unwrap(), due.plus_millis(HOUR));
        // Down for ten hours: one run now, the next an hour later, not ten at once.
        let late = due.plus_millis(10 * HOUR);
        assert_eq!(c.next_run(due, late).unwrap(), late.plus_millis(HOUR));
        for bad in [0, MINUTE - 1, -HOUR, MAX_INTERVAL_MILLIS + 1] {
            assert!(matches!(Cadence::every(bad), Err(DomainError::InvalidArgument { .. })), "{bad}");
        }
    }

    #[test]
    fn cron_runs_at_its_times_in_utc() {
        let c = Cadence::cron(" 30 2 * * * ").unwrap();
        assert_eq!(c.cron_text(), Some("30 2 * * *"));
        let first = c.first_run(MIDNIGHT).unwrap();
        assert_eq!(first, MIDNIGHT.plus_millis(2 * HOUR + 30 * MINUTE));
        // Run at its time: the next is tomorrow's.
        assert_eq!(c.next_run(first, first).unwrap(), first.plus_millis(24 * HOUR));
        // Three days late: once now, then the next time after now.
        let late = first.plus_millis(72 * HOUR + MINUTE);
        assert_eq!(c.next_run(first, late).unwrap(), first.plus_millis(96 * HOUR));
        let weekly = Cadence::cron("0 0 * * MON").unwrap();
        // 2026-12-05 is a Saturday: the next Monday is two days on.
        assert_eq!(weekly.first_run(MIDNIGHT).unwrap(), MIDNIGHT.plus_millis(48 * HOUR));
    }

    #[test]
    fn cron_refusals_say_why() {
        for (text, says) in [
            ("* * * *", "five fields"),
            ("0 * * * * *", "five fields"),
            ("61 * * * *", ""),
            ("not a cron at all", ""),
            ("0 0 30 2 *", "never runs"),
        ] {
            match Cadence::cron(text) {
                Err(DomainError::InvalidArgument { field: "cron", reason }) => {
                    assert!(reason.contains(says), "{text}: {reason}")
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_run_is_counted_and_moves_the_next_due_time() {
        let name = Name::parse("nightly", "name").unwrap();
        let source = SysId::parse(&"a".repeat(32)).unwrap();
        let host = Host::parse("prod:7443").unwrap();
        let cadence = Cadence::every(HOUR).unwrap();
        let mut s = CloneSchedule::new(name, source, host, cadence, MIDNIGHT, "admin".into()).unwrap();
        assert_eq!((s.next_run_at, s.runs), (MIDNIGHT.plus_millis(HOUR), 0));
        let due = s.next_run_at;
        let id = CloneId::from_random([1; 16]);
        let next = s.ran(&ScheduledRun::Started(id.clone()), due, due).unwrap();
        assert_eq!((next, s.runs, s.last_clone.clone()), (due.plus_millis(HOUR), 1, Some(id)));
        s.ran(&ScheduledRun::Skipped("c1".into()), next, next).unwrap();
        assert_eq!((s.runs, s.skipped), (1, 1));
        assert!(s.last_outcome.as_deref().unwrap().contains("c1 was still running"));
    }
}
