//! The check before an instance goes back to the pool: room on the
//! runner's volume for the next run.

use bytesize::ByteSize;
use nix::sys::statvfs::statvfs;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    pub free_bytes: u64,
    pub free_inodes: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("statvfs {}: {source}", path.display())]
pub struct RoomError {
    path: PathBuf,
    source: nix::Error,
}

/// Too little room for the next run.
#[derive(Debug, thiserror::Error)]
pub enum Short {
    #[error("{} free on the runner's volume, below the {} minimum", ByteSize::b(*free), ByteSize::b(*min))]
    Space { free: u64, min: u64 },
    #[error("{free} free inodes on the runner's volume, below the {min} minimum")]
    Inodes { free: u64, min: u64 },
}

/// Space and inodes an unprivileged user can still use on `path`'s volume.
pub fn room(path: &Path) -> Result<Room, RoomError> {
    let s = statvfs(path).map_err(|source| RoomError {
        path: path.to_owned(),
        source,
    })?;
    Ok(Room {
        free_bytes: s.blocks_available() as u64 * s.fragment_size() as u64,
        free_inodes: s.files_available() as u64,
    })
}

/// Why `room` is not enough, if it is not.
pub fn verdict(room: Room, min_bytes: u64, min_inodes: u64) -> Result<(), Short> {
    if room.free_bytes < min_bytes {
        return Err(Short::Space {
            free: room.free_bytes,
            min: min_bytes,
        });
    }
    if room.free_inodes < min_inodes {
        return Err(Short::Inodes {
            free: room.free_inodes,
            min: min_inodes,
        });
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
        let err = verdict(room, 2 << 30, 0).unwrap_err().to_string();
        assert!(
            err.starts_with("1.1 GB free") || err.starts_with("1.0 GiB free"),
            "{err}"
        );
        assert!(verdict(room, 0, 501)
            .unwrap_err()
            .to_string()
            .contains("inodes"));
        let here = super::room(Path::new("/")).unwrap();
        assert!(here.free_bytes > 0);
    }
}
