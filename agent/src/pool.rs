//! The pool's table as the state machine, the heartbeat and the expiry
//! watchdog see it: a trait, so the machine runs in-process against a fake
//! (`machine/tests/fakes/`), and its implementation on DynamoDB.

use crate::protocol::{InstanceRecord, RegistrationToken, Signal};
use crate::status::Status;
use crate::table::{Table, TableError};
use std::future::Future;

/// The pool's DynamoDB table, seen from one instance.
pub trait Pool: Clone + Send + Sync + 'static {
    /// The instance record; `Ok(None)` when the control plane has none.
    fn read_instance(
        &self,
        consistent: bool,
    ) -> impl Future<Output = Result<Option<InstanceRecord>, TableError>> + Send;
    /// The instance record and the registration token, strongly consistent.
    fn read_claim_and_token(
        &self,
    ) -> impl Future<Output = Result<(Option<InstanceRecord>, Option<RegistrationToken>), TableError>>
           + Send;
    fn read_token(
        &self,
    ) -> impl Future<Output = Result<Option<RegistrationToken>, TableError>> + Send;
    fn put_signal(
        &self,
        signal: Signal,
        run_id: &str,
    ) -> impl Future<Output = Result<(), TableError>> + Send;
    fn put_heartbeat(
        &self,
        status: &Status,
        free_disk: Option<u64>,
    ) -> impl Future<Output = Result<(), TableError>> + Send;
}

impl Pool for Table {
    async fn read_instance(&self, consistent: bool) -> Result<Option<InstanceRecord>, TableError> {
        Table::read_instance(self, consistent).await
    }

    async fn read_claim_and_token(
        &self,
    ) -> Result<(Option<InstanceRecord>, Option<RegistrationToken>), TableError> {
        Table::read_claim_and_token(self).await
    }

    async fn read_token(&self) -> Result<Option<RegistrationToken>, TableError> {
        Table::read_token(self).await
    }

    async fn put_signal(&self, signal: Signal, run_id: &str) -> Result<(), TableError> {
        Table::put_signal(self, signal, run_id).await
    }

    async fn put_heartbeat(
        &self,
        status: &Status,
        free_disk: Option<u64>,
    ) -> Result<(), TableError> {
        Table::put_heartbeat(self, status, free_disk).await
    }
}
