//! What runner-agent and runner-userdata both need: the config file's
//! schema and validation, the AWS calls the agent makes, its systemd unit,
//! atomic file writes and the command-line exit contract. One source, so
//! the generator writes what the agent accepts and renders the unit and
//! IAM policy the agent needs.

pub mod cli;
pub mod config;
pub mod digest;
pub mod fs;
pub mod http_url;
pub mod permissions;
pub mod unit;
