//! `runner-agent status`: the agent's state file, plus whether its process
//! is alive.

use crate::config::Settings;
use crate::state::StateStore;
use anyhow::Context;
use std::process::ExitCode;

pub fn run(settings: &Settings, json: bool) -> anyhow::Result<ExitCode> {
    let store = StateStore::new(&settings.state_dir);
    let state = store.load().context("reading agent state")?;
    let running = state.pid.is_some_and(crate::ps::exists);
    if json {
        let mut value = serde_json::to_value(&state)?;
        value["running"] = serde_json::Value::Bool(running);
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    let or_dash = |s: Option<&str>| s.unwrap_or("-").to_owned();
    println!(
        "agent:        {}",
        if running { "running" } else { "not running" }
    );
    println!("instance:     {}", or_dash(state.instance_id.as_deref()));
    println!(
        "phase:        {} (since {})",
        state.phase.name(),
        or_dash(Some(state.phase_since.as_str()).filter(|s| !s.is_empty()))
    );
    match &state.registration() {
        Some(r) => println!("registration: {} for run {}", r.runner_name, r.run_id),
        None => println!("registration: none"),
    }
    match &state.last_signal {
        Some(s) => println!(
            "last signal:  {} (run {:?}) at {}",
            s.signal, s.run_id, s.at
        ),
        None => println!("last signal:  none"),
    }
    if let crate::state::Phase::Orphaned { reason } = &state.phase {
        println!("OUT OF POOL:  {reason} (never serves again; terminated only if tagged AllowSelfTermination=true)");
    }
    if let Some(why) = &state.unclean {
        println!("UNCLEAN:      {why} (claims are refused; replace the instance)");
    }
    println!("registrations so far: {}", state.registration_counter);
    Ok(ExitCode::SUCCESS)
}
