//! One agent per state dir: a second `runner-agent run` (by hand, beside
//! the service) would fight the first over the runner directory.

use anyhow::Context;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::path::Path;

/// Takes the exclusive lock on `dir/lock`, creating `dir` if need be. The
/// lock lasts as long as the returned guard (or the process).
pub fn lock_state_dir(dir: &Path) -> anyhow::Result<Flock<File>> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating state dir {}", dir.display()))?;
    let path = dir.join("lock");
    let file = File::create(&path).with_context(|| format!("opening {}", path.display()))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(lock),
        Err((_, Errno::EWOULDBLOCK)) => anyhow::bail!(
            "another runner-agent holds {}: refusing to run twice",
            path.display()
        ),
        Err((_, errno)) => Err(errno).with_context(|| format!("locking {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let first = lock_state_dir(&state).unwrap();
        // flock locks belong to the open file, so a second open in the same
        // process conflicts just as another agent's would.
        let err = lock_state_dir(&state).unwrap_err();
        assert!(err.to_string().contains("another runner-agent"), "{err:#}");
        drop(first);
        lock_state_dir(&state).unwrap();
    }
}
