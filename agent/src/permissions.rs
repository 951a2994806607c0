//! Every AWS API action the agent calls. The list lives in
//! `runner-agent-common`, where runner-userdata renders the instance role's
//! policy from it; this path stays the agent's.

pub use runner_agent_common::permissions::*;
