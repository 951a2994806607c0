//! runner-agent: the on-instance agent of a self-hosted GitHub Actions
//! runner pool on EC2 (the pool protocol of
//! fleet-actions/ec2-runner-pool-manager).

pub mod agent;
pub mod cli;
pub mod clock;
pub mod config;
pub mod digest;
pub mod expiry;
pub mod hardening;
pub mod heartbeat;
pub mod host;
pub mod imds;
pub mod inspect;
pub mod lockfile;
pub mod logging;
pub mod machine;
pub mod metrics;
pub mod nofollow;
pub mod notify;
pub mod pace;
pub mod permissions;
pub mod pool;
pub mod prerunner;
pub mod protocol;
pub mod ps;
pub mod reset;
pub mod runner;
pub mod sdk_error;
pub mod spot;
pub mod state;
pub mod status;
pub mod table;
