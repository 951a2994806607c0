//! MIME multipart user data: our shell script as a `text/x-shellscript`
//! part, then the operator's own parts, as cloud-init's `make-mime` would
//! write them, with a boundary derived from the content (same input, same
//! bytes).

use crate::input::MimePart;
use sha2::{Digest, Sha256};
use std::fmt::Write;

/// The file name of our shell part.
pub const SCRIPT_PART_NAME: &str = "runner-agent.sh";

pub fn render(script: &str, extra: &[MimePart]) -> String {
    let mut parts = vec![MimePart {
        filename: SCRIPT_PART_NAME.into(),
        content_type: "text/x-shellscript".into(),
        body: script.to_owned(),
    }];
    parts.extend(extra.iter().cloned());

    let mut hash = Sha256::new();
    for p in &parts {
        hash.update(p.content_type.as_bytes());
        hash.update(p.body.as_bytes());
    }
    let digest = hash.finalize();
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    let boundary = format!("==runner-userdata-{hex}==");

    let mut m = String::new();
    let _ = write!(
        m,
        "Content-Type: multipart/mixed; boundary=\"{boundary}\"\nMIME-Version: 1.0\n\n"
    );
    for p in &parts {
        let ascii = p.body.is_ascii();
        let seven_bit = ascii && p.body.lines().all(|l| l.len() <= 998) && !p.body.contains('\r');
        let _ = write!(
            m,
            "--{boundary}\nContent-Type: {}; charset=\"{}\"\nMIME-Version: 1.0\nContent-Transfer-Encoding: {}\nContent-Disposition: attachment; filename=\"{}\"\n\n",
            p.content_type,
            if ascii { "us-ascii" } else { "utf-8" },
            if seven_bit { "7bit" } else { "base64" },
            p.filename.replace(['"', '\\', '\n'], "_"),
        );
        if seven_bit {
            // The line break before a boundary belongs to the boundary
            // (RFC 2046), so the part keeps its own final newline.
            m.push_str(&p.body);
            m.push('\n');
        } else {
            let encoded = base64(p.body.as_bytes());
            for chunk in encoded.as_bytes().chunks(76) {
                m.push_str(std::str::from_utf8(chunk).expect("base64 is ascii"));
                m.push('\n');
            }
        }
    }
    let _ = writeln!(m, "--{boundary}--");
    m
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }
}
