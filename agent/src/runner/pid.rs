//! Process group ids the agent may signal.

use nix::unistd::Pid;
use std::fmt;

/// The id of a process group the agent started (or adopted) and may
/// signal. Never 0 or 1, nor negative: `kill(-0)` reaches the agent's own
/// group, `kill(-1)` every process it may signal, and a negated negative
/// id one unrelated process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pgid(Pid);

impl Pgid {
    /// `None` for ids that do not name a group of ours: 1 and below.
    pub fn new(raw: i32) -> Option<Pgid> {
        (raw > 1).then(|| Pgid(Pid::from_raw(raw)))
    }

    /// The group of a child spawned with `process_group(0)` (it leads its
    /// own group); `None` once the child has been reaped.
    pub fn of_child(child: &tokio::process::Child) -> Option<Pgid> {
        Pgid::new(i32::try_from(child.id()?).ok()?)
    }

    pub fn as_raw(self) -> i32 {
        self.0.as_raw()
    }

    pub(crate) fn as_pid(self) -> Pid {
        self.0
    }
}

impl fmt::Display for Pgid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_ids_that_reach_other_processes() {
        for raw in [i32::MIN, -1234, -1, 0, 1] {
            assert_eq!(Pgid::new(raw), None, "{raw}");
        }
        let pgid = Pgid::new(1234).unwrap();
        assert_eq!(pgid.as_raw(), 1234);
        assert_eq!(pgid.to_string(), "1234");
    }

    #[tokio::test]
    async fn a_child_leading_its_group_has_a_pgid() {
        let mut child = tokio::process::Command::new("true")
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = Pgid::of_child(&child).unwrap();
        assert_eq!(pgid.as_raw() as u32, child.id().unwrap());
        child.wait().await.unwrap();
        // Reaped: the id may already belong to another process.
        assert_eq!(Pgid::of_child(&child), None);
    }
}
