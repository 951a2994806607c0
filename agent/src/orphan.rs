//! Orphans: an instance the control plane has forgotten, or one left idle
//! past `expiry.max_idle`, leaves the pool for good (and ends itself when
//! tagged `AllowSelfTermination=true`, like an expired one: `expiry.rs`).
//!
//! Only two answers of the table say "forgotten" for certain: the table
//! does not exist (DynamoDB's `ResourceNotFoundException`), or the instance
//! record, seen before, is gone. Everything else (a throttle, a 5xx, a
//! timeout, access denied, a malformed item) says nothing about the
//! control plane and starts the count again. [`OrphanWatch`] counts how
//! long the definite answers have lasted; the machine feeds it the reads
//! of its idle poll, so a run (a claim or a job) is never counted.
//!
//! This module imports nothing of the crate: the machine turns a read into
//! an [`Answer`], and the reason is persisted in the state (`state.rs`).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;
use tokio::time::Instant;

/// Why an instance left the pool for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Orphan {
    /// The pool's table does not exist (`ResourceNotFoundException`).
    TableGone,
    /// The instance record, seen before, is not in the table.
    RecordGone,
    /// Idle (no claim, no job) longer than `expiry.max_idle`.
    MaxIdle,
}

impl Orphan {
    /// Its name in metrics' `reason` label and in the heartbeat.
    pub fn label(self) -> &'static str {
        match self {
            Orphan::TableGone => "table_gone",
            Orphan::RecordGone => "record_gone",
            Orphan::MaxIdle => "max_idle",
        }
    }
}

impl fmt::Display for Orphan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Orphan::TableGone => "orphan: the pool's table does not exist",
            Orphan::RecordGone => "orphan: the instance record is gone from the table",
            Orphan::MaxIdle => "idle longer than expiry.max_idle",
        })
    }
}

/// One read of the instance record, as orphan detection sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The record names a run: not idle.
    Claimed,
    /// The record is there, naming no run.
    Unclaimed,
    /// A definite "forgotten": the table is gone, or the record seen before
    /// is (the machine only says so once it has seen the record).
    Forgotten(Orphan),
    /// Anything that says nothing about the control plane: an error other
    /// than a missing table, or no record yet since the agent started.
    Unknown,
}

/// How long the control plane has definitely forgotten the instance, and
/// how long it has been idle.
#[derive(Debug, Clone)]
pub struct OrphanWatch {
    /// `None`: orphan detection is off (`expiry.orphan_grace = 0`).
    grace: Option<Duration>,
    max_idle: Option<Duration>,
    /// The latest definite answer and when the unbroken run of them began.
    forgotten: Option<(Orphan, Instant)>,
    idle_since: Instant,
}

impl OrphanWatch {
    /// `grace` zero: orphan detection off; `max_idle` `None`: no limit.
    pub fn new(grace: Duration, max_idle: Option<Duration>) -> OrphanWatch {
        OrphanWatch {
            grace: Some(grace).filter(|g| !g.is_zero()),
            max_idle,
            forgotten: None,
            idle_since: Instant::now(),
        }
    }

    /// An idle period starts (at start, after every run): counts from zero.
    pub fn idle(&mut self, now: Instant) {
        self.forgotten = None;
        self.idle_since = now;
    }

    /// Takes one answer; returns why the instance should leave, if it
    /// should now.
    pub fn answer(&mut self, answer: Answer, now: Instant) -> Option<Orphan> {
        match answer {
            Answer::Claimed => {
                self.forgotten = None;
                self.idle_since = now;
            }
            Answer::Unclaimed | Answer::Unknown => self.forgotten = None,
            // The table gone then back without the record (recreated by a
            // redeploy) is forgotten all along: the count goes on, and the
            // reason is the latest.
            Answer::Forgotten(why) => {
                let since = self.forgotten.map_or(now, |(_, since)| since);
                self.forgotten = Some((why, since));
            }
        }
        if let (Some(grace), Some((why, since))) = (self.grace, self.forgotten) {
            if now.duration_since(since) >= grace {
                return Some(why);
            }
        }
        let idle = now.duration_since(self.idle_since);
        self.max_idle
            .is_some_and(|max| idle >= max)
            .then_some(Orphan::MaxIdle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(900);

    /// Feeds `answer` every 4 s (a failing table's paced idle poll) for
    /// `span`; the first reason returned, if any.
    fn feed(
        watch: &mut OrphanWatch,
        answer: Answer,
        start: Instant,
        span: Duration,
    ) -> Option<Orphan> {
        let step = Duration::from_secs(4);
        let mut at = start;
        while at <= start + span {
            if let Some(why) = watch.answer(answer, at) {
                return Some(why);
            }
            at += step;
        }
        None
    }

    #[test]
    fn definite_answers_for_the_whole_grace_and_only_then() {
        let t0 = Instant::now();
        let mut watch = OrphanWatch::new(GRACE, None);
        let gone = Answer::Forgotten(Orphan::TableGone);
        assert_eq!(
            feed(&mut watch, gone, t0, GRACE - Duration::from_secs(4)),
            None
        );
        assert_eq!(watch.answer(Answer::Unclaimed, t0 + GRACE), None, "back");
        assert_eq!(
            watch.answer(gone, t0 + GRACE + Duration::from_secs(1)),
            None
        );
        let t1 = t0 + GRACE * 2;
        assert_eq!(feed(&mut watch, gone, t1, GRACE), Some(Orphan::TableGone));
    }

    #[test]
    fn anything_not_definite_starts_the_count_again() {
        let t0 = Instant::now();
        let mut watch = OrphanWatch::new(GRACE, None);
        let gone = Answer::Forgotten(Orphan::RecordGone);
        for at in (0..GRACE.as_secs() * 2).step_by(60) {
            let at = t0 + Duration::from_secs(at);
            // A throttle every minute, between definite answers.
            assert_eq!(watch.answer(gone, at), None);
            assert_eq!(
                watch.answer(Answer::Unknown, at + Duration::from_secs(30)),
                None
            );
        }
        assert_eq!(feed(&mut watch, Answer::Unknown, t0, GRACE * 3), None);
    }

    #[test]
    fn a_table_recreated_without_the_record_goes_on_counting() {
        let t0 = Instant::now();
        let mut watch = OrphanWatch::new(GRACE, None);
        assert_eq!(watch.answer(Answer::Forgotten(Orphan::TableGone), t0), None);
        let back = Answer::Forgotten(Orphan::RecordGone);
        assert_eq!(watch.answer(back, t0 + GRACE / 2), None);
        assert_eq!(watch.answer(back, t0 + GRACE), Some(Orphan::RecordGone));
    }

    #[test]
    fn a_zero_grace_disables_orphans_but_not_max_idle() {
        let t0 = Instant::now();
        let gone = Answer::Forgotten(Orphan::TableGone);
        let mut off = OrphanWatch::new(Duration::ZERO, None);
        assert_eq!(feed(&mut off, gone, t0, GRACE * 4), None);
        let hour = Duration::from_secs(3600);
        let mut idle = OrphanWatch::new(Duration::ZERO, Some(hour));
        idle.idle(t0);
        assert_eq!(
            feed(&mut idle, gone, t0, hour - Duration::from_secs(4)),
            None
        );
        assert_eq!(
            idle.answer(Answer::Unknown, t0 + hour),
            Some(Orphan::MaxIdle)
        );
    }

    #[test]
    fn a_claim_restarts_the_idle_count() {
        let t0 = Instant::now();
        let hour = Duration::from_secs(3600);
        let mut watch = OrphanWatch::new(Duration::ZERO, Some(hour));
        watch.idle(t0);
        assert_eq!(watch.answer(Answer::Unclaimed, t0 + hour / 2), None);
        assert_eq!(watch.answer(Answer::Claimed, t0 + hour / 2), None);
        assert_eq!(watch.answer(Answer::Unclaimed, t0 + hour), None);
        let late = t0 + hour / 2 + hour;
        assert_eq!(watch.answer(Answer::Unclaimed, late), Some(Orphan::MaxIdle));
    }
}
