//! MIME multipart user data: our shell script as a `text/x-shellscript`
//! part, then the operator's own parts, as cloud-init's `make-mime` would
//! write them, with a boundary derived from the content (same input, same
//! bytes).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::fmt::Write;

/// The file name of our shell part.
pub const SCRIPT_PART_NAME: &str = "runner-agent.sh";

/// The MIME types cloud-init's user-data handlers take (others it skips).
pub const CLOUD_INIT_PART_TYPES: &[&str] = &[
    "text/cloud-boothook",
    "text/cloud-config",
    "text/cloud-config-archive",
    "text/jinja2",
    "text/part-handler",
    "text/x-include-once-url",
    "text/x-include-url",
    "text/x-shellscript",
    "text/x-shellscript-per-boot",
    "text/x-shellscript-per-instance",
    "text/x-shellscript-per-once",
];

/// One part of the document: ours, or one of the input's `mime_parts`.
#[derive(Debug, Clone)]
pub struct MimePart {
    pub filename: String,
    pub content_type: String,
    pub body: String,
}

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
            m.push_str(&base64_lines(p.body.as_bytes()));
        }
    }
    let _ = writeln!(m, "--{boundary}--");
    m
}

/// Base64 in lines of 76 characters, each ending in a newline: RFC 2045's
/// limit for an encoded body.
fn base64_lines(data: &[u8]) -> String {
    let encoded = BASE64.encode(data);
    let mut out = String::with_capacity(encoded.len() + encoded.len() / 76 + 1);
    for chunk in encoded.as_bytes().chunks(76) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ascii"));
        out.push('\n');
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
            let lines = if encoded.is_empty() {
                String::new()
            } else {
                format!("{encoded}\n")
            };
            assert_eq!(base64_lines(plain.as_bytes()), lines);
        }
    }

    #[test]
    fn base64_lines_are_76_characters() {
        let text = base64_lines(&[0xa5; 100]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.iter().map(|l| l.len()).collect::<Vec<_>>(), [76, 60]);
        assert_eq!(BASE64.decode(lines.concat()).unwrap(), [0xa5; 100]);
    }
}
