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
        for p in family
            .packages()
            .iter()
            .copied()
            .chain(plan.extra_packages.iter().map(String::as_str))
        {
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

/// A YAML double-quoted scalar: JSON's string syntax is a subset of it.
pub fn scalar(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

/// A literal block scalar when the text allows one (readable in review),
/// else a double-quoted scalar.
fn block(y: &mut String, text: &str, indent: usize) {
    let literal_ok = !text.is_empty()
        && !text.starts_with([' ', '\n'])
        && text
            .chars()
            .all(|c| c == '\n' || c == '\t' || !c.is_control())
        && !text.contains('\u{feff}');
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
