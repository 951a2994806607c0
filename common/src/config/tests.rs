//! The config's tests: defaults, overrides, and errors that name the file
//! and the key.

use super::*;
use std::time::Duration;
use url::Url;

const MINIMAL: &str = r#"
table = "acme-widgets-pool"
[github]
url = "https://github.com/acme/widgets"
[runner]
version = "2.321.0"
"#;

fn load(text: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    Settings::from_toml(
        Path::new("/etc/runner-agent/config.toml"),
        text,
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
}

#[test]
fn minimal_config_gets_defaults() {
    let s = load(MINIMAL, &[]).unwrap();
    assert_eq!(s.github.url(), "https://github.com/acme/widgets");
    assert_eq!(s.runner.install_dir, PathBuf::from("/opt/actions-runner"));
    assert_eq!(s.timing.idle_poll_interval, Duration::from_millis(250));
    assert_eq!(s.timing.heartbeat_interval, Duration::from_secs(5));
    assert!(s.pre_runner.is_none());
    assert_eq!(s.runner.release_base_url.as_str(), DEFAULT_RELEASE_BASE_URL);
    assert_eq!(s.expiry.orphan_grace, Duration::from_secs(900));
    assert_eq!(s.expiry.max_idle, None);
}

#[test]
fn expiry_keys_take_durations_and_name_the_key() {
    let text = format!("{MINIMAL}[expiry]\norphan_grace = \"0s\"\nmax_idle = \"2h\"\n");
    let s = load(&text, &[]).unwrap();
    assert_eq!(s.expiry.orphan_grace, Duration::ZERO, "0 disables");
    assert_eq!(s.expiry.max_idle, Some(Duration::from_secs(7200)));
    let s = load(MINIMAL, &[("RUNNER_AGENT_EXPIRY__ORPHAN_GRACE", "3s")]).unwrap();
    assert_eq!(s.expiry.orphan_grace, Duration::from_secs(3));
    for (key, value) in [
        ("orphan_grace", "soon"),
        ("max_idle", "0s"),
        ("max_idle", "30 m"),
    ] {
        let text = format!("{MINIMAL}[expiry]\n{key} = \"{value}\"\n");
        let err = load(&text, &[]).unwrap_err().to_string();
        assert!(
            err.contains("/etc/runner-agent/config.toml") && err.contains(&format!("expiry.{key}")),
            "{err}"
        );
    }
    let err = load(&format!("{MINIMAL}[expiry]\nidle = \"1h\"\n"), &[]).unwrap_err();
    assert!(err.to_string().contains("idle"), "{err}");
}

#[test]
fn owner_and_repo_form() {
    let text = MINIMAL.replace(
        "url = \"https://github.com/acme/widgets\"",
        "owner = \"acme\"\nrepo = \"widgets\"",
    );
    let s = load(&text, &[]).unwrap();
    assert_eq!(s.github.owner, "acme");
    assert_eq!(s.github.repo, "widgets");
}

#[test]
fn env_overrides_apply_and_are_validated() {
    let s = load(
        MINIMAL,
        &[
            ("RUNNER_AGENT_RUNNER__VERSION", "2.330.1"),
            ("RUNNER_AGENT_TIMING__IDLE_POLL_INTERVAL", "100ms"),
            ("RUNNER_AGENT_RUNNER__ALLOW_RUN_AS_ROOT", "true"),
            ("UNRELATED", "x"),
        ],
    )
    .unwrap();
    assert_eq!(s.runner.version, "2.330.1");
    assert_eq!(s.timing.idle_poll_interval, Duration::from_millis(100));
    assert!(s.runner.allow_run_as_root);

    let err = load(
        MINIMAL,
        &[("RUNNER_AGENT_TIMING__HEARTBEAT_INTERVAL", "5 parsecs")],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("timing.heartbeat_interval"), "{err}");
}

#[test]
fn errors_name_file_and_key() {
    let cases = [
        (MINIMAL.replace("2.321.0", "2.321"), "runner.version"),
        (MINIMAL.replace("2.321.0", "v2.321.0"), "runner.version"),
        (MINIMAL.replace("2.321.0", "Latest"), "runner.version"),
        (
            MINIMAL.replace("[runner]", "[runner]\nsha256 = \"abc\""),
            "runner.sha256",
        ),
        (MINIMAL.replace("acme-widgets-pool", "a b"), "table"),
        (
            MINIMAL.replace("https://github.com/acme/widgets", "github.com/acme"),
            "github.url",
        ),
        (
            format!("{MINIMAL}[timing]\nidle_poll_interval = \"0ms\"\n"),
            "timing.idle_poll_interval",
        ),
        (
            format!("{MINIMAL}[agent]\npre_runner_script = \"relative.sh\"\n"),
            "agent.pre_runner_script",
        ),
    ];
    for (text, key) in cases {
        let err = load(&text, &[]).unwrap_err().to_string();
        assert!(err.contains("/etc/runner-agent/config.toml"), "{err}");
        assert!(err.contains(key), "expected {key} in {err}");
    }
}

#[test]
fn latest_resolves_through_the_release_api() {
    let s = load(&MINIMAL.replace("2.321.0", "latest"), &[]).unwrap();
    assert_eq!(s.runner.version, RunnerVersion::Latest);
    assert_eq!(
        s.runner.release_api_url.as_ref().map(Url::as_str),
        Some("https://api.github.com/")
    );
    let s = load(
        &MINIMAL.replace(
            "2.321.0\"",
            "latest\"\nrelease_api_url = \"http://127.0.0.1:9/api\"",
        ),
        &[],
    )
    .unwrap();
    assert_eq!(
        s.runner.release_api().as_str(),
        "http://127.0.0.1:9/api",
        "the configured API wins"
    );
    // A pinned version asks the API only when told to, but an upgrade
    // still knows where to ask.
    let s = load(MINIMAL, &[("RUNNER_AGENT_RUNNER__VERSION", "2.330.1")]).unwrap();
    assert_eq!(s.runner.version.pinned(), Some("2.330.1"));
    assert!(s.runner.release_api_url.is_none());
    assert_eq!(s.runner.release_api().as_str(), "https://api.github.com/");
    let s = load(MINIMAL, &[("RUNNER_AGENT_RUNNER__VERSION", "latest")]).unwrap();
    assert_eq!(s.runner.version.to_string(), "latest");

    let err = load(
        &MINIMAL.replace(
            "2.321.0\"",
            &format!("latest\"\nsha256 = \"{}\"", "a".repeat(64)),
        ),
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("key `runner.sha256`"), "{err}");
    assert!(err.contains("latest"), "{err}");
}

#[test]
fn runner_versions_compare_as_numbers() {
    assert_eq!(parse_runner_version("2.331.0"), Some([2, 331, 0]));
    assert!(parse_runner_version("2.99.0") < parse_runner_version("2.100.0"));
    for bad in [
        "2.331",
        "2.331.0.1",
        "2..0",
        "v2.331.0",
        "2.331.0 ",
        "2.1234567.0",
        "latest",
    ] {
        assert_eq!(parse_runner_version(bad), None, "{bad}");
    }
}

#[test]
fn unknown_and_missing_keys_are_errors() {
    let err = load(&format!("{MINIMAL}colour = \"blue\"\n"), &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("colour"), "{err}");
    let err = load("table = \"abc\"\n", &[]).unwrap_err().to_string();
    assert!(err.contains("github"), "{err}");
}

#[test]
fn shipped_example_config_is_valid() {
    let text = include_str!("../../../packaging/config.example.toml");
    let s = load(text, &[]).unwrap();
    assert_eq!(s.table, "acme-widgets-pool");
}

#[test]
fn durations() {
    assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
    assert!(parse_duration("10").is_err());
    assert!(parse_duration("ms").is_err());
    assert!(parse_duration("3 days").is_err());
    assert!(parse_duration("99999999999h").is_err());
}

#[test]
fn durations_in_humantime_syntax() {
    for (text, want) in [
        ("5s", Duration::from_secs(5)),
        ("2m", Duration::from_secs(120)),
        ("15min", Duration::from_secs(900)),
        ("1h30m", Duration::from_secs(5400)),
        (" 60s ", Duration::from_secs(60)),
    ] {
        assert_eq!(parse_duration(text).unwrap(), want, "{text}");
    }
    for bad in ["1 0s", "250 ms", "-5s", "8d"] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
}

#[test]
fn github_urls() {
    for (url, server, owner, repo) in [
        (
            "https://github.com/acme/widgets/",
            "https://github.com",
            "acme",
            "widgets",
        ),
        (
            "https://github.com/acme/widgets.git",
            "https://github.com",
            "acme",
            "widgets",
        ),
        (
            "http://ghe.example:8443/a/b",
            "http://ghe.example:8443",
            "a",
            "b",
        ),
    ] {
        let s = load(
            &MINIMAL.replace("https://github.com/acme/widgets", url),
            &[],
        )
        .unwrap();
        assert_eq!(
            (
                s.github.server.as_str(),
                s.github.owner.as_str(),
                s.github.repo.as_str()
            ),
            (server, owner, repo),
            "{url}"
        );
    }
    for bad in [
        "https://github.com/acme",
        "https://github.com/acme/widgets/issues",
        "https://github.com/acme/widgets?tab=x",
        "https://user:pw@github.com/acme/widgets",
        "https:///acme/widgets",
        "ssh://github.com/acme/widgets",
    ] {
        let err = load(
            &MINIMAL.replace("https://github.com/acme/widgets", bad),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("github.url"), "{bad}: {err}");
    }
}

#[test]
fn reset_is_on_by_default_and_hardening_off() {
    let s = load(MINIMAL, &[]).unwrap();
    assert!(s.reset.enabled);
    assert_eq!(s.reset.keep_work, vec![PathBuf::from("_tool")]);
    assert_eq!(s.reset.docker, DockerMode::Auto);
    assert_eq!(s.reset.image_cache_max, 20 << 30);
    assert_eq!(s.reset.min_free_space, 2 << 30);
    assert!(s
        .reset
        .home_paths
        .contains(&PathBuf::from(".docker/config.json")));
    assert!(!s.hardening.enabled);
    let defaults: Vec<String> = (s.hardening.metadata_addresses.iter())
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        defaults,
        [
            "169.254.169.254",
            "fd00:ec2::254",
            "169.254.170.2",
            "169.254.170.23",
            "fd00:ec2::23"
        ]
    );
}

#[test]
fn reset_keys_are_parsed_and_checked() {
    let text = format!(
        "{MINIMAL}user = \"runner\"\n[reset]\nkeep_work = [\"_tool\", \"cache/x\"]\nimage_cache_max = \"1.5GiB\"\n\
         min_free_space = \"512MB\"\ndocker = \"required\"\n[hardening]\nenabled = true\n"
    );
    let s = load(&text, &[]).unwrap();
    assert_eq!(s.reset.keep_work.len(), 2);
    assert_eq!(s.reset.image_cache_max, 1_610_612_736);
    assert_eq!(s.reset.min_free_space, 512_000_000);
    assert_eq!(s.reset.docker, DockerMode::Required);
    assert!(s.hardening.enabled);

    for (bad, key) in [
        ("[reset]\nkeep_work = [\"../etc\"]", "reset.keep_work"),
        ("[reset]\nhome_paths = [\"/root/.aws\"]", "reset.home_paths"),
        (
            "[reset]\nimage_cache_max = \"lots\"",
            "reset.image_cache_max",
        ),
        ("[reset]\ndocker = \"maybe\"", "reset.docker"),
        ("[reset]\ntemp_dirs = [\"tmp\"]", "reset.temp_dirs"),
        ("[reset]\ntimeout = \"0s\"", "reset.timeout"),
        (
            "[hardening]\nmetadata_addresses = [\"imds\"]",
            "hardening.metadata_addresses",
        ),
    ] {
        let err = load(&format!("{MINIMAL}{bad}\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{bad}: {err}");
    }
}

#[test]
fn hardening_needs_a_dedicated_runner_user() {
    let hardened = "[hardening]\nenabled = true\n";
    for runner in ["", "user = \"root\"\n"] {
        let err = load(&format!("{MINIMAL}{runner}{hardened}"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("key `hardening.enabled`"), "{runner}: {err}");
        assert!(err.contains("runner.user"), "{err}");
    }
    let s = load(&format!("{MINIMAL}user = \"runner\"\n{hardened}"), &[]).unwrap();
    assert!(s.hardening.enabled);
    let err = load(
        &format!("{MINIMAL}user = \"runner\"\n{hardened}metadata_addresses = []\n"),
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("hardening.metadata_addresses"), "{err}");
    // Off, the runner user does not matter.
    assert!(load(&format!("{MINIMAL}[hardening]\nenabled = false\n"), &[]).is_ok());
}

#[test]
fn metrics_are_off_by_default_and_their_keys_checked() {
    let s = load(MINIMAL, &[]).unwrap();
    assert_eq!(s.metrics, MetricsSettings::default());
    let s = load(
        &format!(
            "{MINIMAL}[metrics]\nlisten = \"127.0.0.1:9464\"\n\
             textfile = \"/var/lib/node_exporter/textfile_collector/runner-agent.prom\"\n"
        ),
        &[],
    )
    .unwrap();
    assert_eq!(s.metrics.listen, Some("127.0.0.1:9464".parse().unwrap()));
    assert_eq!(
        s.metrics.textfile.as_deref(),
        Some(Path::new(
            "/var/lib/node_exporter/textfile_collector/runner-agent.prom"
        ))
    );
    let s = load(MINIMAL, &[("RUNNER_AGENT_METRICS__LISTEN", "[::1]:9464")]).unwrap();
    assert_eq!(s.metrics.listen, Some("[::1]:9464".parse().unwrap()));
    for bad in [
        "listen = \"localhost\"",
        "listen = \"127.0.0.1\"",
        "textfile = \"metrics.prom\"",
        "textfile = \"/var/lib/node_exporter/runner-agent.txt\"",
    ] {
        let err = load(&format!("{MINIMAL}[metrics]\n{bad}\n"), &[])
            .unwrap_err()
            .to_string();
        let key = format!("metrics.{}", bad.split(' ').next().unwrap());
        assert!(err.contains(&key), "{bad}: {err}");
    }
}

/// Hardened jobs on an instance that is never cleaned: refused unless the
/// operator says, in so many words, that a weaker promise will do.
#[test]
fn hardening_without_the_reset_needs_allow_weaker() {
    let base = format!(
        "{MINIMAL}user = \"runner\"\n[hardening]\nenabled = true\n[reset]\nenabled = false\n"
    );
    let err = load(&base, &[]).unwrap_err().to_string();
    assert!(
        err.contains("key `hardening.enabled`") && err.contains("allow_weaker"),
        "{err}"
    );
    let s = load(&format!("{base}allow_weaker = true\n"), &[]).unwrap();
    assert!(s.reset.allow_weaker && !s.reset.enabled);
    assert!(!load(MINIMAL, &[]).unwrap().reset.allow_weaker);
}

/// Hardened, nothing is kept between runs unless the operator lists it:
/// neither the tool cache nor images a job pulled, built or re-tagged.
#[test]
fn hardened_mode_keeps_nothing_by_default() {
    use super::ImageMode;
    let s = load(MINIMAL, &[]).unwrap();
    assert_eq!(s.reset.keep_work, [std::path::PathBuf::from("_tool")]);
    assert_eq!(s.reset.images, ImageMode::Keep);
    let hardened = format!("{MINIMAL}user = \"runner\"\n[hardening]\nenabled = true\n");
    let s = load(&hardened, &[]).unwrap();
    assert!(s.reset.keep_work.is_empty());
    assert_eq!(s.reset.images, ImageMode::Baseline);
    let listed = format!("{hardened}[reset]\nkeep_work = [\"_tool\"]\nimages = \"keep\"\n");
    let s = load(&listed, &[]).unwrap();
    assert_eq!(s.reset.keep_work.len(), 1);
    assert_eq!(s.reset.images, ImageMode::Keep);
    let err = load(&format!("{MINIMAL}[reset]\nimages = \"all\"\n"), &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("reset.images"), "{err}");
}

#[test]
fn job_credentials_are_off_by_default_and_their_keys_checked() {
    assert_eq!(load(MINIMAL, &[]).unwrap().job_credentials, None);
    let arn = "arn:aws:iam::123456789012:role/ci/jobs";
    let s = load(
        &format!("{MINIMAL}[job_credentials]\nrole_arn = \"{arn}\"\n"),
        &[],
    )
    .unwrap();
    let jc = s.job_credentials.unwrap();
    assert_eq!(jc.role_arn, arn);
    assert_eq!(jc.duration, Duration::from_secs(3600));
    let default = format!("127.0.0.1:{DEFAULT_JOB_CREDENTIALS_PORT}");
    assert_eq!(jc.listen, default.parse().unwrap());
    let env = [
        ("RUNNER_AGENT_JOB_CREDENTIALS__ROLE_ARN", arn),
        ("RUNNER_AGENT_JOB_CREDENTIALS__DURATION", "15m"),
        ("RUNNER_AGENT_JOB_CREDENTIALS__LISTEN", "[::1]:0"),
    ];
    let jc = load(MINIMAL, &env).unwrap().job_credentials.unwrap();
    assert_eq!(jc.duration, Duration::from_secs(900));
    assert_eq!(jc.listen, "[::1]:0".parse().unwrap());
    let jc = load(
        MINIMAL,
        &[
            env[0],
            ("RUNNER_AGENT_JOB_CREDENTIALS__LISTEN", "127.0.0.2"),
        ],
    );
    let expected = format!("127.0.0.2:{DEFAULT_JOB_CREDENTIALS_PORT}");
    assert_eq!(
        jc.unwrap().job_credentials.unwrap().listen,
        expected.parse().unwrap()
    );
    for (bad, key) in [
        ("role_arn = \"ci-jobs\"", "role_arn"),
        ("role_arn = \"arn:aws:iam::123:role/x\"", "role_arn"),
        (
            "role_arn = \"arn:aws:iam::123456789012:user/x\"",
            "role_arn",
        ),
        ("duration = \"14m\"", "duration"),
        ("duration = \"13h\"", "duration"),
        ("listen = \"0.0.0.0:9611\"", "listen"),
        ("listen = \"10.0.0.1\"", "listen"),
        ("listen = \"localhost:9611\"", "listen"),
    ] {
        let role = if key == "role_arn" {
            String::new()
        } else {
            format!("role_arn = \"{arn}\"\n")
        };
        let err = load(&format!("{MINIMAL}[job_credentials]\n{role}{bad}\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("job_credentials.{key}")),
            "{bad}: {err}"
        );
        assert!(err.contains("/etc/runner-agent/config.toml"), "{err}");
    }
    // A duration without a role does nothing: said, not ignored.
    let err = load(
        &format!("{MINIMAL}[job_credentials]\nduration = \"1h\"\n"),
        &[],
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("job_credentials.role_arn"),
        "{err}"
    );
}
