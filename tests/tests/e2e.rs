//! The end-to-end suite: the shipped binaries as processes against the
//! local stack. One module per concern; one test binary for all of them
//! (`cargo test --test e2e lifecycle::` runs one module).

mod artifacts;
mod cli;
mod dynamodb_faults;
mod faults;
mod firewall;
mod hardened;
mod hostile;
mod iam;
mod inspect;
mod install;
mod job_credentials;
mod lifecycle;
mod matrix;
mod metrics;
mod orphan;
mod reset;
mod rootless;
mod supervision;
mod userdata;
mod userdata_e2e;
