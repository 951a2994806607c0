//! The text of the agent's unit as user data writes it: the packaged unit
//! with ExecStart at the agent's path, or a drop-in that moves ExecStart.
//! (`shell.rs` writes them on the instance.)

use runner_agent_common::unit::{STOCK_EXEC_START, UNIT_FILE};

/// First line of the unit we write, so a later run knows the file is ours.
pub(crate) const UNIT_MARKER: &str =
    "# Written by runner-userdata: the agent's unit, with ExecStart at the agent's path.";

/// The agent's own unit, with ExecStart pointing at `agent_path`, without
/// comments and blank lines: the release tarball and docs/operations.md
/// keep the reasoning, user data has 16 KB for everything. `marker` puts
/// [`UNIT_MARKER`] first, so that a later run recognises the file as ours.
pub fn unit_text(agent_path: &str, marker: bool) -> String {
    let mut text = String::new();
    if marker {
        text.push_str(UNIT_MARKER);
        text.push('\n');
    }
    for line in UNIT_FILE.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if line == STOCK_EXEC_START {
            text.push_str(&format!("ExecStart={agent_path} run\n"));
        } else {
            text.push_str(line);
            text.push('\n');
        }
    }
    text
}

/// Points a packaged or baked unit at an agent installed elsewhere.
pub fn drop_in_text(agent_path: &str) -> String {
    format!("[Service]\nExecStart=\nExecStart={agent_path} run\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_points_at_the_agent() {
        let unit = unit_text("/usr/local/bin/runner-agent", true);
        assert!(unit.starts_with(UNIT_MARKER));
        assert!(unit.contains("\nExecStart=/usr/local/bin/runner-agent run\n"));
    }
}
