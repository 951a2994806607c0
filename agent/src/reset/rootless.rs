//! The reset of the runner user's rootless Docker daemon
//! (`hardening/rootless`): the sweep kills it with every other process of
//! the user (a job had its uid and could have changed it), so after the
//! last sweep it is started afresh, and its containers, volumes, networks
//! and tags are cleaned to the baseline as the system daemon's are. A
//! daemon that does not come back fails the reset: the instance is not
//! pooled.

use super::docker::Inventory;
use super::{Baseline, ResetError, Resetter};
use crate::hardening::rootless::{Held, RootlessDocker};
use std::collections::BTreeSet;
use std::sync::Arc;

impl Resetter {
    /// Jobs' docker is the runner user's own daemon: the reset's docker
    /// CLI is aimed at its socket, whatever `reset.docker` and
    /// `reset.docker_host` say (they are the system daemon's, which a
    /// hardened runner user cannot reach).
    pub fn with_rootless(mut self, docker: Option<Arc<RootlessDocker>>) -> Resetter {
        if let Some(d) = &docker {
            self.docker.host = Some(d.host().to_owned());
        }
        self.rootless = docker;
        self
    }

    /// Before the sweep: the supervisor must not start the daemon again
    /// until the reset does.
    pub(super) async fn hold_rootless(&self) -> Option<Held<'_>> {
        match &self.rootless {
            Some(docker) => Some(docker.hold().await),
            None => None,
        }
    }

    /// After the last sweep: a fresh daemon, cleaned to the baseline.
    pub(super) async fn restart_rootless(
        &self,
        held: Held<'_>,
        baseline: &Baseline,
    ) -> Result<(Inventory, String), ResetError> {
        let inventory = baseline.docker.clone().ok_or_else(|| ResetError::Step {
            doing: "cleaning the runner user's rootless docker".into(),
            cause: "it has no baseline: it did not answer at the agent's first start".into(),
        })?;
        let took = held.restart().await.map_err(ResetError::step(
            "starting the runner user's rootless docker again",
        ))?;
        let cleaned = self.docker_steps(&inventory).await?;
        Ok((
            inventory,
            format!(
                "rootless docker restarted in {} ms; {cleaned}",
                took.as_millis()
            ),
        ))
    }

    /// The fresh daemon's processes, which the processes invariant allows:
    /// its process and every descendant of it (what it started since the
    /// reset restarted it; a job's process cannot become one).
    pub(super) fn rootless_tree(&self, live: &[crate::ps::Process]) -> BTreeSet<i32> {
        let Some(root) = self.rootless.as_ref().and_then(|d| d.pid()) else {
            return BTreeSet::new();
        };
        descendants(root, live)
    }
}

/// `root` and every process below it in `live`.
fn descendants(root: i32, live: &[crate::ps::Process]) -> BTreeSet<i32> {
    let mut tree = BTreeSet::from([root]);
    loop {
        let before = tree.len();
        for p in live {
            if tree.contains(&p.ppid) {
                tree.insert(p.pid);
            }
        }
        if tree.len() == before {
            return tree;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(pid: i32, ppid: i32) -> crate::ps::Process {
        crate::ps::Process {
            pid,
            ppid,
            pgrp: pid,
            session: pid,
            zombie: false,
            uids: [1001; 4],
            name: b"p".to_vec(),
            cgroups: Vec::new(),
        }
    }

    #[test]
    fn the_tree_is_the_root_and_what_descends_from_it_only() {
        // Listed children first: the loop must not depend on the order.
        let live = [
            process(40, 30),
            process(30, 20),
            process(20, 10),
            process(21, 1),
            process(41, 21),
        ];
        assert_eq!(descendants(20, &live), BTreeSet::from([20, 30, 40]));
        assert_eq!(descendants(99, &live), BTreeSet::from([99]));
    }
}
