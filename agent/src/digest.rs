//! SHA-256 of a stream, in hex, while it is copied: the install manifest
//! hashes a 200 MB runner, the home baseline stores and restores files by
//! digest, and none of them holds a whole file in memory.

use sha2::{Digest, Sha256};
use std::io::{Read, Write};

/// Copies `from` into `to` (`io::sink()` to only hash) in 64 KiB chunks;
/// returns the byte count and the hex SHA-256 of what was copied.
pub fn copy_hashed(from: &mut impl Read, to: &mut impl Write) -> std::io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
    Ok((total, hex(&hasher.finalize())))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_and_hashes_what_it_copied() {
        let data = vec![7u8; 200_000];
        let mut out = Vec::new();
        let (n, digest) = copy_hashed(&mut data.as_slice(), &mut out).unwrap();
        assert_eq!((n, out.len()), (200_000, 200_000));
        assert_eq!(digest, hex(&Sha256::digest(&data)));
        let (_, empty) = copy_hashed(&mut std::io::empty(), &mut std::io::sink()).unwrap();
        assert_eq!(
            empty,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
