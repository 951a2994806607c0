//! The input's tests: defaults, flags, and errors that name the field.

use super::*;
use runner_agent_common::config::Settings;

const MINIMAL: &str = r#"
[agent_config]
table = "acme-widgets-pool"
[agent_config.github]
url = "https://github.com/acme/widgets"
[agent_config.runner]
version = "2.331.0"
"#;

fn parse(text: &str) -> Result<Plan, InputError> {
    Plan::parse(
        Path::new("in.toml"),
        text,
        Path::new("."),
        &Overrides::default(),
    )
}

fn error(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn minimal_input_uses_the_image_agent_and_detects_the_os() {
    let plan = parse(MINIMAL).unwrap();
    assert_eq!(plan.format, Format::Shell);
    assert_eq!(plan.os, OsChoice::Auto);
    assert_eq!(plan.agent_path, IMAGE_AGENT_PATH);
    assert!(plan.downloads.is_empty());
    assert!(plan.config_toml.contains("table = \"acme-widgets-pool\""));
}

#[test]
fn flags_fill_in_the_agent_config() {
    let overrides = Overrides {
        table: Some("t-pool".into()),
        github_url: Some("https://github.com/o/r".into()),
        runner_version: Some("2.330.0".into()),
        runner_user: Some("runner".into()),
        ..Default::default()
    };
    let plan = Plan::parse(Path::new("x"), "", Path::new("."), &overrides).unwrap();
    assert_eq!(plan.runner_user.as_deref(), Some("runner"));
    let settings =
        Settings::from_toml(Path::new("x"), &plan.config_toml, std::iter::empty()).unwrap();
    assert_eq!(settings.table, "t-pool");
    assert_eq!(settings.runner.version, "2.330.0");
    // Owner and repo replace the file's URL.
    let by_name = Overrides {
        github_owner: Some("acme".into()),
        github_repo: Some("gadgets".into()),
        ..Default::default()
    };
    let plan = Plan::parse(Path::new("x"), MINIMAL, Path::new("."), &by_name).unwrap();
    assert!(!plan.config_toml.contains("url ="), "{}", plan.config_toml);
    assert!(plan.config_toml.contains("repo = \"gadgets\""));
}

#[test]
fn bad_input_names_the_field() {
    let cases: &[(&str, &str)] = &[
        ("colour = 1\n", "unknown field `colour`"),
        ("os = \"gentoo\"\n", "`os`"),
        ("[agent_config]\ntable = \"t-pool\"\n", "agent_config"),
        (
            "[agent.download.x86_64]\nurl = \"http://example.com/a.tar.gz\"\nsha256 = \"00\"\n",
            "`agent.download.x86_64.url`: \"http://example.com/a.tar.gz\": use https",
        ),
        (
            "[agent.download.x86_64]\nurl = \"https://example.com/a.tar.gz\"\nsha256 = \"abc\"\n",
            "`agent.download.x86_64.sha256`",
        ),
        (
            "[agent.download.riscv64]\nurl = \"https://example.com/a\"\nsha256 = \"abc\"\n",
            "`agent.download.riscv64`",
        ),
        ("extra_packages = [\"git; rm -rf /\"]\n", "`extra_packages`"),
        ("[agent]\npath = \"bin/runner-agent\"\n", "`agent.path`"),
        ("runner_user_sudo = true\n", "`runner_user_sudo`"),
        (
            "pre_runner_script = \"does-not-exist.sh\"\n",
            "`pre_runner_script`: reading",
        ),
    ];
    for (extra, expected) in cases {
        let text = if extra.contains("agent_config") {
            extra.to_string()
        } else {
            format!("{extra}{MINIMAL}")
        };
        let message = error(&text);
        assert!(
            message.contains(expected),
            "{text}\n=> {message}\n(wanted {expected})"
        );
    }
}

#[test]
fn agent_config_errors_come_from_the_agents_parser() {
    let text = MINIMAL.replace("2.331.0", "2.331");
    assert!(
        error(&text).contains("agent_config.runner.version"),
        "{}",
        error(&text)
    );
    let text = format!("{MINIMAL}sha256 = \"xyz\"\n");
    assert!(error(&text).contains("agent_config.runner.sha256"));
    let text = format!("{MINIMAL}colour = \"red\"\n");
    assert!(error(&text).contains("unknown field `colour`"));
}

#[test]
fn hardened_input_turns_hardened_mode_on_in_the_agent_config() {
    let with_user = format!("{MINIMAL}user = \"runner\"\n");
    for (text, overrides) in [
        (
            format!("hardened = true\n{with_user}"),
            Overrides::default(),
        ),
        (
            with_user.clone(),
            Overrides {
                hardened: true,
                ..Default::default()
            },
        ),
    ] {
        let plan = Plan::parse(Path::new("in.toml"), &text, Path::new("."), &overrides).unwrap();
        assert!(plan.hardened);
        let settings = Settings::from_toml(Path::new("x"), &plan.config_toml, []).unwrap();
        assert!(settings.hardening.enabled, "{}", plan.config_toml);
        // The docker socket is root: the user is taken out, never put in.
        for format in [Format::Shell, Format::PoolManager] {
            let plan = Plan {
                format,
                ..plan.clone()
            };
            let script = String::from_utf8(crate::render(&plan, false).unwrap().bytes).unwrap();
            assert!(script.contains("gpasswd -d 'runner' docker"), "{script}");
            assert!(!script.contains("usermod -aG docker"), "{script}");
            // What the agent's rootless docker for the user needs.
            assert!(script.contains("chmod 666 /dev/net/tun"), "{script}");
            assert!(
                script.contains("debian-12) packages=(ca-certificates curl docker.io git gzip libicu72 libkrb5-3 libssl3 tar zlib1g rootlesskit slirp4netns uidmap)"),
                "{script}"
            );
            assert!(
                !script.contains("libicu74 libkrb5-3 libssl3t64 tar zlib1g)"),
                "{script}"
            );
        }
    }
    // Off by default: the user joins docker as before.
    let plan = parse(&with_user).unwrap();
    assert!(!plan.hardened);
    assert!(
        !plan.config_toml.contains("hardening"),
        "{}",
        plan.config_toml
    );
    let script = String::from_utf8(crate::render(&plan, false).unwrap().bytes).unwrap();
    assert!(script.contains("usermod -aG docker 'runner'"), "{script}");
    assert!(!script.contains("rootlesskit"), "{script}");
    assert!(!script.contains("/dev/net/tun"), "{script}");
}

#[test]
fn hardened_input_is_checked() {
    let with_user = format!("{MINIMAL}user = \"runner\"\n");
    let cases: &[(String, &str)] = &[
        // The agent's parser refuses hardened mode without a runner user.
        (
            format!("hardened = true\n{MINIMAL}"),
            "agent_config.hardening.enabled",
        ),
        (
            format!("hardened = true\nrunner_user_sudo = true\n{with_user}"),
            "`runner_user_sudo`: not with hardened mode",
        ),
        (
            format!("hardened = true\n{with_user}[agent_config.hardening]\nenabled = false\n"),
            "`agent_config.hardening.enabled`: false",
        ),
    ];
    for (text, expected) in cases {
        let message = error(text);
        assert!(message.contains(expected), "{text}\n=> {message}");
    }
    // Set in [agent_config] directly, it counts as hardened too.
    let plan = parse(&format!(
        "{with_user}[agent_config.hardening]\nenabled = true\n"
    ))
    .unwrap();
    assert!(plan.hardened);
}

#[test]
fn the_job_role_is_read_for_the_iam_policy() {
    let role = "arn:aws:iam::123456789012:role/ci-job";
    let config: toml::Table =
        toml::from_str(&format!("[job_credentials]\nrole_arn = \"{role}\"\n")).unwrap();
    assert_eq!(agent_config::job_role_arn(&config).as_deref(), Some(role));
    assert_eq!(agent_config::job_role_arn(&toml::Table::new()), None);
    assert_eq!(parse(MINIMAL).unwrap().job_role_arn, None);
}
