//! The agent's systemd unit, as shipped in the packages and the release
//! tarball (`systemd/runner-agent.service`); the generator renders it into
//! user data when the image has none.

/// The unit file's text, comments included.
pub const UNIT_FILE: &str = include_str!("../../systemd/runner-agent.service");

/// Its `ExecStart=` line, for the agent at its packaged path; the generator
/// replaces it when the agent lives elsewhere.
pub const STOCK_EXEC_START: &str = "ExecStart=/usr/bin/runner-agent run";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_starts_the_packaged_agent() {
        assert!(UNIT_FILE.lines().any(|l| l == STOCK_EXEC_START));
    }
}
