//! The agent's settings. The schema and its validation live in
//! `runner-agent-common`, shared with runner-userdata, which checks the
//! config it writes with the same code; this path stays the agent's.

pub use runner_agent_common::config::*;
