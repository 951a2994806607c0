//! `#cloud-config`: the config and the operator's script as write_files,
//! the packages of a fixed OS in `packages`, and the rest of the bootstrap
//! (agent binary, unit, start) as a script that runcmd runs.

use crate::input::{Plan, PRE_RUNNER_PATH};
use crate::os::OsChoice;
use crate::shell::{self, Variant, CONFIG_PATH};
use std::fmt::Write;

/// Where write_files puts the runcmd part of the bootstrap.
pub const BOOTSTRAP_PATH: &str = "/var/lib/runner-userdata/bootstrap.sh";

pub fn render(plan: &Plan) -> String {
    let mut y = String::from("#cloud-config\n");
    let _ = writeln!(
        y,
        "# runner-agent, rendered by runner-userdata {} (os {}). Re-render rather than edit.",
        env!("CARGO_PKG_VERSION"),
        plan.os.name()
    );
    if let (true, OsChoice::Fixed(family)) = (plan.packages, plan.os) {
        y.push_str("package_update: true\npackages:\n");
        for p in plan.package_list(family) {
            let _ = writeln!(y, "  - {}", scalar(p));
        }
    }
    y.push_str("write_files:\n");
    file(&mut y, CONFIG_PATH, "0600", &plan.config_toml);
    if let Some(script) = &plan.pre_runner {
        file(&mut y, PRE_RUNNER_PATH, "0700", script);
    }
    file(
        &mut y,
        BOOTSTRAP_PATH,
        "0700",
        &shell::render(plan, Variant::CloudConfigRuncmd),
    );
    let _ = writeln!(y, "runcmd:\n  - [bash, {}]", scalar(BOOTSTRAP_PATH));
    y
}

fn file(y: &mut String, path: &str, permissions: &str, content: &str) {
    let _ = writeln!(
        y,
        "  - path: {}\n    owner: root:root\n    permissions: {}",
        scalar(path),
        scalar(permissions)
    );
    y.push_str("    content: ");
    block(y, content, 6);
}

/// A YAML double-quoted scalar. Everything outside YAML's printable set,
/// and every character a YAML parser takes as a line break, is escaped.
pub fn scalar(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{85}' => out.push_str("\\N"),
            '\u{2028}' => out.push_str("\\L"),
            '\u{2029}' => out.push_str("\\P"),
            c if yaml_printable(c) => out.push(c),
            c if (c as u32) <= 0xff => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if (c as u32) <= 0xffff => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    out.push('"');
    out
}

/// YAML 1.1's printable characters (what PyYAML, cloud-init's parser,
/// accepts), without the ones it reads as line breaks.
fn yaml_printable(c: char) -> bool {
    matches!(c, '\t' | ' '..='~' | '\u{a0}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..)
        && !matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}')
}

/// A literal block scalar when the text allows one (readable in review),
/// else a double-quoted scalar.
fn block(y: &mut String, text: &str, indent: usize) {
    let literal_ok = !text.is_empty()
        && !text.starts_with([' ', '\n'])
        && text.chars().all(|c| c == '\n' || yaml_printable(c))
        // Whitespace at a line's end, or a line of only whitespace, reads
        // back differently (or not at all) from a block.
        && text
            .split('\n')
            .all(|line| !line.ends_with([' ', '\t']));
    if !literal_ok {
        y.push_str(&scalar(text));
        y.push('\n');
        return;
    }
    // "|" keeps one final newline, "|-" none, "|+" all of them.
    let trailing = text.len() - text.trim_end_matches('\n').len();
    let chomp = match trailing {
        0 => "-",
        1 => "",
        _ => "+",
    };
    let _ = writeln!(y, "|{chomp}");
    let pad = " ".repeat(indent);
    for line in text.trim_end_matches('\n').split('\n') {
        if line.is_empty() {
            y.push('\n');
        } else {
            let _ = writeln!(y, "{pad}{line}");
        }
    }
    for _ in 1..trailing {
        y.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_keep_their_trailing_newlines() {
        for (text, header) in [("a\nb\n", "|\n"), ("a", "|-\n"), ("a\n\n", "|+\n")] {
            let mut y = String::new();
            block(&mut y, text, 2);
            assert!(y.starts_with(header), "{y:?}");
        }
        let mut y = String::new();
        block(&mut y, " leading space\n", 2);
        assert_eq!(y, "\" leading space\\n\"\n");
    }
}
