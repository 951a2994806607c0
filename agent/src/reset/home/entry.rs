//! One entry of the home as the baseline records it, and how an entry
//! found later is compared with it: kind, owner, mode, and the stat that
//! proves a file unchanged (its inode, size, mtime and ctime).

use crate::nofollow::{Entry, Kind};
use nix::sys::stat::FileStat;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Item {
    Dir,
    File { size: u64, sha256: String },
    Link { target: PathBuf },
}

/// One entry as recorded; `seen` is the stat that proves it unchanged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Recorded {
    pub(super) item: Item,
    pub(super) mode: u32,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) seen: Seen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Seen {
    pub(super) ino: u64,
    pub(super) size: i64,
    pub(super) mtime: (i64, i64),
    pub(super) ctime: (i64, i64),
}

impl Seen {
    pub(super) fn of(stat: &FileStat) -> Seen {
        Seen {
            ino: stat.st_ino,
            size: stat.st_size,
            mtime: (stat.st_mtime, stat.st_mtime_nsec),
            ctime: (stat.st_ctime, stat.st_ctime_nsec),
        }
    }
}

pub(super) fn record(item: Item, stat: &FileStat) -> Recorded {
    Recorded {
        item,
        mode: stat.st_mode & 0o7777,
        uid: stat.st_uid,
        gid: stat.st_gid,
        seen: Seen::of(stat),
    }
}

pub(super) fn is_regular(stat: &FileStat) -> bool {
    stat.st_mode & nix::libc::S_IFMT == nix::libc::S_IFREG
}

pub(super) fn matches_kind(item: &Item, entry: &Entry) -> bool {
    match item {
        Item::Dir => entry.kind() == Kind::Dir,
        Item::Link { .. } => entry.kind() == Kind::Link,
        Item::File { .. } => is_regular(&entry.stat),
    }
}

pub(super) fn owned_as(stat: &FileStat, recorded: &Recorded) -> bool {
    stat.st_uid == recorded.uid
        && stat.st_gid == recorded.gid
        && (stat.st_mode & 0o7777 == recorded.mode || matches!(recorded.item, Item::Link { .. }))
}
