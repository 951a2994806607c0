//! runner-agent: the on-instance agent of a self-hosted GitHub Actions
//! runner pool on EC2 (the pool protocol of
//! fleet-actions/ec2-runner-pool-manager).

mod agent;
mod cli;
mod clock;
pub mod config;
mod credentials;
mod digest;
mod expiry;
mod hardening;
mod heartbeat;
mod host;
mod imds;
mod inspect;
mod lockfile;
mod logging;
mod machine;
mod metrics;
mod nofollow;
mod notify;
mod orphan;
mod os_signals;
mod pace;
mod pool;
mod prerunner;
mod protocol;
mod ps;
mod reset;
mod runner;
mod sdk_error;
mod spot;
mod state;
mod status;
mod table;

// What the binary and the test stack (`tests/`) use; everything else is
// the crate's own, so the compiler reports what nothing uses.
pub use cli::main;
pub use inspect::query;

/// The runner's install, which the test stack drives against its fake
/// GitHub without an agent process.
pub mod install {
    pub use crate::runner::install::present::VERSION_MARKER;
    pub use crate::runner::install::{
        ensure_installed, upgrade, InstallError, InstallOutcome, UpgradeOutcome,
    };
}
