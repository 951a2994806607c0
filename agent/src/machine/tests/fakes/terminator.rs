//! The instance's end, as the expiry watchdog asks for it: the tag's
//! answer is fixed (the real one reads `AllowSelfTermination` from IMDS or
//! `ec2:DescribeTags` at each ask), and `TerminateInstances` always
//! succeeds and is counted (EC2 accepts it for a running instance).

use crate::expiry::{Ec2Error, Permission, Terminator};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Clone)]
pub struct FakeTerminator {
    permission: Permission,
    calls: Arc<AtomicUsize>,
}

impl FakeTerminator {
    pub fn new(permission: Permission) -> FakeTerminator {
        FakeTerminator {
            permission,
            calls: Arc::default(),
        }
    }

    /// TerminateInstances calls so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Terminator for FakeTerminator {
    async fn permission(&self) -> Permission {
        self.permission.clone()
    }

    async fn terminate(&self) -> Result<(), Ec2Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}
