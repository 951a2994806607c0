//! In-memory fakes of the machine's world, with knobs for faults. Time is
//! tokio's (paused in the tests); the wall clock follows it.

use crate::machine::{Clock, Pool};
use crate::protocol::{format_timestamp, InstanceRecord, RegistrationToken, Signal};
use crate::status::Status;
use crate::table::{ErrorKind, TableError};
use std::sync::{Arc, Mutex, MutexGuard};
use time::OffsetDateTime;
use tokio::time::Instant;

fn table_error(operation: &'static str, kind: ErrorKind) -> TableError {
    TableError {
        operation,
        table: "fake".into(),
        kind,
        message: format!("injected fault: {}", kind.label()),
    }
}

/// What DynamoDB answers every item call on a table that does not exist
/// (deleted, or recreated and still CREATING): HTTP 400 with the code
/// `ResourceNotFoundException`, which `table::ErrorKind::classify` makes
/// `TableMissing`.
fn table_missing(operation: &'static str) -> TableError {
    TableError {
        operation,
        table: "fake".into(),
        kind: ErrorKind::TableMissing,
        message: "ResourceNotFoundException: Requested resource not found".into(),
    }
}

/// A wall clock that starts at the real time and then moves with tokio's
/// (paused) clock.
#[derive(Clone)]
pub struct TestClock {
    base: OffsetDateTime,
    start: Instant,
}

impl TestClock {
    pub fn new() -> TestClock {
        TestClock {
            base: OffsetDateTime::now_utc(),
            start: Instant::now(),
        }
    }

    /// `seconds` from now, as the control plane writes timestamps.
    pub fn stamp(&self, seconds: i64) -> String {
        format_timestamp(self.now_utc() + time::Duration::seconds(seconds))
    }
}

impl Clock for TestClock {
    fn now_utc(&self) -> OffsetDateTime {
        self.base + self.start.elapsed()
    }
}

#[derive(Default)]
pub struct PoolState {
    pub record: Option<InstanceRecord>,
    /// What eventually consistent reads see instead of `record`, if set.
    pub stale: Option<Option<InstanceRecord>>,
    pub token: Option<RegistrationToken>,
    /// Signals as stored, in order.
    pub signals: Vec<(Signal, String)>,
    pub heartbeats: usize,
    pub fail_reads: bool,
    pub fail_writes: bool,
    /// What failing calls fail with (throttled unless a test says).
    pub fault: Option<ErrorKind>,
    /// The table is deleted: every read and write fails as missing.
    pub table_gone: bool,
    pub reads: usize,
    pub consistent_reads: usize,
    /// When each read was sent (tokio's clock), failed ones included.
    pub read_times: Vec<Instant>,
    /// When each heartbeat was stored.
    pub heartbeat_times: Vec<Instant>,
    /// Writes refused except every n-th attempt (a throttled table that
    /// lets a few through).
    pub writes_pass_every: Option<usize>,
    pub write_attempts: usize,
    /// What the newest heartbeat attempt carried.
    pub last_beat: Option<(Status, Option<u64>)>,
}

impl PoolState {
    /// Whether this write attempt is refused.
    fn refuse_write(&mut self) -> bool {
        self.write_attempts += 1;
        self.table_gone
            || self.fail_writes
            || self
                .writes_pass_every
                .is_some_and(|n| self.write_attempts % n != 0)
    }

    fn fault_kind(&self) -> ErrorKind {
        self.fault.unwrap_or(ErrorKind::Throttled)
    }

    fn write_error(&self, operation: &'static str) -> TableError {
        match self.table_gone {
            true => table_missing(operation),
            false => table_error(operation, self.fault_kind()),
        }
    }

    fn read(&mut self, consistent: bool) -> Result<(), TableError> {
        self.reads += 1;
        self.read_times.push(Instant::now());
        if consistent {
            self.consistent_reads += 1;
        }
        if self.table_gone {
            return Err(table_missing("GetItem"));
        }
        match self.fail_reads {
            true => Err(table_error("GetItem", self.fault_kind())),
            false => Ok(()),
        }
    }
}

/// The pool's table.
#[derive(Clone, Default)]
pub struct FakePool(Arc<Mutex<PoolState>>);

impl FakePool {
    pub fn new() -> FakePool {
        FakePool::default()
    }

    pub fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.0.lock().unwrap()
    }

    /// The control plane claims (or creates) the instance for `run_id`.
    pub fn claim(&self, run_id: &str) {
        let mut s = self.lock();
        let record = s.record.get_or_insert_with(Default::default);
        record.run_id = Some(run_id.to_owned());
        record.state = Some("claimed".into());
    }

    pub fn release(&self) {
        let mut s = self.lock();
        let record = s.record.get_or_insert_with(Default::default);
        record.run_id = None;
        record.state = Some("idle".into());
    }

    pub fn set_threshold(&self, threshold: Option<&str>) {
        let mut s = self.lock();
        let record = s.record.get_or_insert_with(Default::default);
        record.threshold = threshold.map(Into::into);
    }

    pub fn set_token(&self, token: Option<RegistrationToken>) {
        self.lock().token = token;
    }

    pub fn fail_reads(&self, fail: bool) {
        self.lock().fail_reads = fail;
    }

    /// Every read fails with `kind` (a throttle, a 5xx, no answer, access
    /// denied) until `fail_reads(false)`.
    pub fn fail_reads_as(&self, kind: ErrorKind) {
        let mut s = self.lock();
        s.fault = Some(kind);
        s.fail_reads = true;
    }

    /// Deletes the table (`true`) or creates it again, empty (`false`),
    /// as a control plane torn down or redeployed would.
    pub fn table_gone(&self, gone: bool) {
        let mut s = self.lock();
        s.table_gone = gone;
        if gone {
            s.record = None;
            s.token = None;
        }
    }

    /// The control plane deletes the instance record.
    pub fn delete_record(&self) {
        self.lock().record = None;
    }

    pub fn fail_writes(&self, fail: bool) {
        self.lock().fail_writes = fail;
    }

    pub fn signals(&self) -> Vec<(Signal, String)> {
        self.lock().signals.clone()
    }

    pub fn count(&self, signal: Signal, run_id: &str) -> usize {
        let s = self.lock();
        s.signals
            .iter()
            .filter(|(sig, r)| *sig == signal && r == run_id)
            .count()
    }

    pub fn heartbeats(&self) -> usize {
        self.lock().heartbeats
    }

    pub fn heartbeat_times(&self) -> Vec<Instant> {
        self.lock().heartbeat_times.clone()
    }

    pub fn read_times(&self) -> Vec<Instant> {
        self.lock().read_times.clone()
    }

    pub fn refuse_writes_except_every(&self, n: usize) {
        self.lock().writes_pass_every = Some(n);
    }

    pub fn reads(&self) -> usize {
        self.lock().reads
    }
}

impl Pool for FakePool {
    async fn read_instance(&self, consistent: bool) -> Result<Option<InstanceRecord>, TableError> {
        let mut s = self.lock();
        s.read(consistent)?;
        match (&s.stale, consistent) {
            (Some(stale), false) => Ok(stale.clone()),
            _ => Ok(s.record.clone()),
        }
    }

    async fn read_claim_and_token(
        &self,
    ) -> Result<(Option<InstanceRecord>, Option<RegistrationToken>), TableError> {
        let mut s = self.lock();
        s.read(true)?;
        Ok((s.record.clone(), s.token.clone()))
    }

    async fn read_token(&self) -> Result<Option<RegistrationToken>, TableError> {
        let mut s = self.lock();
        s.read(true)?;
        Ok(s.token.clone())
    }

    async fn put_signal(&self, signal: Signal, run_id: &str) -> Result<(), TableError> {
        let mut s = self.lock();
        if s.refuse_write() {
            return Err(s.write_error("PutItem(worker signal)"));
        }
        s.signals.push((signal, run_id.to_owned()));
        Ok(())
    }

    async fn put_heartbeat(
        &self,
        status: &Status,
        free_disk: Option<u64>,
    ) -> Result<(), TableError> {
        let mut s = self.lock();
        s.last_beat = Some((status.clone(), free_disk));
        if s.refuse_write() {
            return Err(s.write_error("PutItem(heartbeat)"));
        }
        s.heartbeats += 1;
        s.heartbeat_times.push(Instant::now());
        Ok(())
    }
}

/// A token valid for an hour from `clock`'s now.
pub fn token(clock: &TestClock, text: &str) -> RegistrationToken {
    RegistrationToken {
        token: text.into(),
        expires_at: Some(clock.stamp(3600)),
        timestamp: Some(clock.stamp(0)),
    }
}

mod host;
mod terminator;
pub use host::{failed, FakeHost};
pub use terminator::FakeTerminator;
