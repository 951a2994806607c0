//! The check before an instance goes back to the pool: room on the
//! runner's volume for the next run.

use nix::sys::statvfs::statvfs;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    pub free_bytes: u64,
    pub free_inodes: u64,
}

/// Space and inodes an unprivileged user can still use on `path`'s volume.
pub fn room(path: &Path) -> Result<Room, String> {
    let s = statvfs(path).map_err(|e| format!("statvfs {}: {e}", path.display()))?;
    Ok(Room {
        free_bytes: s.blocks_available() as u64 * s.fragment_size() as u64,
        free_inodes: s.files_available() as u64,
    })
}

/// Why `room` is not enough, if it is not.
pub fn verdict(room: Room, min_bytes: u64, min_inodes: u64) -> Result<(), String> {
    if room.free_bytes < min_bytes {
        return Err(format!(
            "{} free on the runner's volume, below the {} minimum",
            bytesize::ByteSize::b(room.free_bytes),
            bytesize::ByteSize::b(min_bytes)
        ));
    }
    if room.free_inodes < min_inodes {
        return Err(format!(
            "{} free inodes on the runner's volume, below the {min_inodes} minimum",
            room.free_inodes
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_and_inodes_are_both_checked() {
        let room = Room {
            free_bytes: 1 << 30,
            free_inodes: 500,
        };
        assert!(verdict(room, 1 << 30, 500).is_ok());
        let err = verdict(room, 2 << 30, 0).unwrap_err();
        assert!(
            err.starts_with("1.1 GB free") || err.starts_with("1.0 GiB free"),
            "{err}"
        );
        assert!(verdict(room, 0, 501).unwrap_err().contains("inodes"));
        let here = super::room(Path::new("/")).unwrap();
        assert!(here.free_bytes > 0);
    }
}
