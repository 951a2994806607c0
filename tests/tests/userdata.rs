//! runner-userdata's output checked by the tools that own each format: every
//! format for every OS family through `bash -n` and `shellcheck`, the
//! cloud-config through `cloud-init schema` (and its runcmd script through
//! shellcheck), the MIME document parsed back by Python's email package;
//! golden files for the inputs in tests/golden (the README's examples);
//! byte-identical output, gzip, the size limit, and bad input.
//!
//! `RA_UPDATE_GOLDEN=1` rewrites the golden files.

use stack::agent::userdata_binary;
use stack::golden;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const FORMATS: [&str; 4] = ["shell", "cloud-config", "mime", "pool-manager"];
const OSES: [&str; 5] = [
    "auto",
    "al2023",
    "ubuntu-22.04",
    "ubuntu-24.04",
    "debian-12",
];

fn userdata(args: &[&str]) -> Output {
    Command::new(userdata_binary())
        .args(args)
        .output()
        .expect("running runner-userdata")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn rendered(args: &[&str]) -> Vec<u8> {
    let out = userdata(args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    out.stdout
}

fn check_tool(mut command: Command, what: &str) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e} (scripts/setup.sh installs it)"));
    assert!(
        out.status.success(),
        "{what}: {command:?}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
}

fn shellcheck(files: &[PathBuf]) {
    for file in files {
        let mut bash = Command::new("bash");
        bash.arg("-n").arg(file);
        check_tool(bash, "bash -n");
    }
    let mut sc = Command::new("shellcheck");
    sc.args(["-s", "bash"]).args(files);
    check_tool(sc, "shellcheck");
}

/// Debian's python3 (cloud-init's dependency brings PyYAML).
fn python(code: &str, file: &Path) -> String {
    let out = Command::new("/usr/bin/python3")
        .args(["-c", code])
        .arg(file)
        .output()
        .expect("/usr/bin/python3");
    assert!(out.status.success(), "python: {}", stderr(&out));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn every_format_for_every_os_passes_its_own_checker() {
    let dir = tempfile::tempdir().unwrap();
    let input = golden::dir().join("stock-ami.toml");
    let input = input.to_str().unwrap();
    let mut scripts = Vec::new();
    for os in OSES {
        for format in FORMATS {
            let bytes = rendered(&["render", input, "--format", format, "--os", os]);
            let file = dir.path().join(format!("{format}-{os}"));
            std::fs::write(&file, &bytes).unwrap();
            match format {
                "shell" | "pool-manager" => scripts.push(file),
                "cloud-config" => {
                    let mut schema = Command::new("cloud-init");
                    schema.args(["schema", "--config-file"]).arg(&file);
                    check_tool(schema, "cloud-init schema");
                    // The runcmd script, out of write_files, and the files'
                    // modes.
                    let listing = python(
                        "import sys, yaml\nd = yaml.safe_load(open(sys.argv[1]))\nfor f in d['write_files']:\n    print(f['path'], f['permissions'])\nprint('runcmd', d['runcmd'])\nopen(sys.argv[1] + '.sh', 'w').write(d['write_files'][-1]['content'])",
                        &file,
                    );
                    assert!(
                        listing.contains("/etc/runner-agent/config.toml 0600"),
                        "{listing}"
                    );
                    assert!(
                        listing.contains("/etc/runner-agent/pre-runner.sh 0700"),
                        "{listing}"
                    );
                    assert!(
                        listing
                            .contains("runcmd [['bash', '/var/lib/runner-userdata/bootstrap.sh']]"),
                        "{listing}"
                    );
                    scripts.push(dir.path().join(format!("cloud-config-{os}.sh")));
                }
                "mime" => {
                    // Parsed back: one text/x-shellscript part, byte for
                    // byte the shell format.
                    let parts = python(
                        "import sys, email\nm = email.message_from_binary_file(open(sys.argv[1], 'rb'))\nassert m.get_content_type() == 'multipart/mixed', m.get_content_type()\nfor p in m.walk():\n    if not p.is_multipart():\n        print(p.get_content_type(), p.get_filename())\n        open(sys.argv[1] + '.part', 'wb').write(p.get_payload(decode=True))",
                        &file,
                    );
                    assert_eq!(parts, "text/x-shellscript runner-agent.sh\n");
                    let shell = rendered(&["render", input, "--format", "shell", "--os", os]);
                    let part = std::fs::read(format!("{}.part", file.display())).unwrap();
                    assert!(part == shell, "{os}: the MIME part is not the shell format");
                }
                _ => unreachable!(),
            }
        }
    }
    shellcheck(&scripts);
}

/// The README's examples: each input in tests/golden renders to exactly
/// its golden file, and the golden scripts pass the checkers.
#[test]
fn golden_inputs_render_to_their_golden_files() {
    let cases = [
        ("baked-ami", "sh"),
        ("stock-ami", "sh"),
        ("cloud-config", "yaml"),
        ("pool-manager", "sh"),
        ("mime", "mime"),
    ];
    let mut differ = Vec::new();
    for (name, ext) in cases {
        let input = golden::dir().join(format!("{name}.toml"));
        let bytes = rendered(&["render", input.to_str().unwrap()]);
        let file = format!("{name}.{ext}");
        if !golden::matches(&file, &bytes) {
            differ.push(golden::dir().join(file).display().to_string());
        }
    }
    assert!(
        differ.is_empty(),
        "rendered output differs from {differ:?}; review the change, then RA_UPDATE_GOLDEN=1 scripts/test"
    );
    let dir = golden::dir();
    shellcheck(&[
        dir.join("baked-ami.sh"),
        dir.join("stock-ami.sh"),
        dir.join("pool-manager.sh"),
    ]);
    let mut schema = Command::new("cloud-init");
    schema
        .args(["schema", "--config-file"])
        .arg(dir.join("cloud-config.yaml"));
    check_tool(schema, "cloud-init schema");
    let mime = python(
        "import sys, email\nm = email.message_from_binary_file(open(sys.argv[1], 'rb'))\nfor p in m.walk():\n    if not p.is_multipart():\n        print(p.get_content_type(), p.get_filename(), len(p.get_payload(decode=True)))",
        &dir.join("mime.mime"),
    );
    let lines: Vec<&str> = mime.lines().collect();
    assert_eq!(lines.len(), 2, "{mime}");
    assert!(lines[0].starts_with("text/x-shellscript runner-agent.sh "));
    assert!(lines[1].starts_with("text/cloud-config extra-cloud-config.yaml "));
}

/// Same input, same bytes (also gzipped); the SHA-256 on stderr is the
/// output's; --gzip output is what cloud-init's gunzip gives back.
#[test]
fn output_is_byte_identical_and_its_digest_is_on_stderr() {
    let input = golden::dir().join("stock-ami.toml");
    let input = input.to_str().unwrap();
    for format in ["shell", "cloud-config", "mime"] {
        let first = userdata(&["render", input, "--format", format]);
        let second = userdata(&["render", input, "--format", format]);
        assert_eq!(first.stdout, second.stdout);
        let digest = stack::github::sha256_hex(&first.stdout);
        assert!(
            stderr(&first).starts_with(&format!("sha256 {digest}  {} bytes", first.stdout.len()))
        );

        let gz = userdata(&["render", input, "--format", format, "--gzip"]);
        assert!(gz.status.success(), "{}", stderr(&gz));
        assert_eq!(
            gz.stdout,
            userdata(&["render", input, "--format", format, "--gzip"]).stdout
        );
        assert!(gz.stdout.len() < first.stdout.len() / 2);
        let mut plain = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(gz.stdout.as_slice()),
            &mut plain,
        )
        .unwrap();
        assert_eq!(plain, first.stdout);
        let gz_digest = stack::github::sha256_hex(&gz.stdout);
        assert!(stderr(&gz).contains(&gz_digest));
    }
}

/// Bad input: exit 1, the field named on stderr, nothing written.
#[test]
fn bad_input_is_refused_with_the_field_named_and_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(golden::dir().join("stock-ami.toml")).unwrap();
    std::fs::copy(
        golden::dir().join("pre-runner.sh"),
        dir.path().join("pre-runner.sh"),
    )
    .unwrap();
    let big: String = (0..1500)
        .map(|i| format!("echo step {i} $RANDOM\n"))
        .collect();
    let noise: String = (0..9000u32)
        .map(|i| format!("{:04x}", i.wrapping_mul(2_654_435_761) >> 16))
        .collect();
    std::fs::write(dir.path().join("big.sh"), &big).unwrap();
    std::fs::write(dir.path().join("noise.sh"), format!("# {noise}\n")).unwrap();
    std::fs::write(dir.path().join("eof.sh"), "cat <<EOF\nhello\nEOF\n").unwrap();
    let cases: Vec<(String, &[&str], &str)> = vec![
        (
            format!("colour = \"red\"\n{base}"),
            &[],
            "unknown field `colour`",
        ),
        (
            base.replace("table = \"acme-widgets-pool\"\n", ""),
            &[],
            "agent_config",
        ),
        (
            base.replace(
                "https://github.com/runner-agent",
                "http://mirror.example.com/runner-agent",
            ),
            &[],
            "`agent.download.aarch64.url`",
        ),
        (
            base.replace(
                "5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef",
                "5f70bf18",
            ),
            &[],
            "`agent.download.x86_64.sha256`: \"5f70bf18\" is not 64 hexadecimal characters",
        ),
        (
            base.replace("version = \"2.331.0\"", "version = \"2.331\""),
            &[],
            "`agent_config`: key `agent_config.runner.version`",
        ),
        (base.clone(), &["--os", "windows"], "`os`"),
        (
            base.replace("pre-runner.sh", "noise.sh"),
            &[],
            "over EC2's user-data limit of 16384 bytes (try --gzip); `pre_runner_script` alone is 36003 bytes",
        ),
        (
            base.replace("pre-runner.sh", "eof.sh"),
            &["--format", "pool-manager"],
            "`pre_runner_script`: has a line `EOF`",
        ),
        (
            base.clone(),
            &["--format", "pool-manager", "--gzip"],
            "--gzip",
        ),
    ];
    for (text, flags, expected) in &cases {
        let input = dir.path().join("input.toml");
        std::fs::write(&input, text).unwrap();
        let output = dir.path().join("out");
        let mut args = vec![
            "render",
            input.to_str().unwrap(),
            "-o",
            output.to_str().unwrap(),
        ];
        args.extend_from_slice(flags);
        let out = userdata(&args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{flags:?} {expected}: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains(expected),
            "wanted {expected:?} in {}",
            stderr(&out)
        );
        assert!(!output.exists(), "{expected}: wrote output");
    }
    // A large but compressible script fits once gzipped.
    std::fs::write(
        dir.path().join("input.toml"),
        base.replace("pre-runner.sh", "big.sh"),
    )
    .unwrap();
    let input = dir.path().join("input.toml");
    let plain = userdata(&["render", input.to_str().unwrap()]);
    assert_eq!(plain.status.code(), Some(1));
    let gz = userdata(&["render", input.to_str().unwrap(), "--gzip"]);
    assert!(gz.status.success(), "{}", stderr(&gz));
    // Usage errors are exit 2.
    assert_eq!(
        userdata(&["render", "--format", "yaml"]).status.code(),
        Some(2)
    );
}

#[test]
fn iam_policy_scopes_the_table_and_the_control_plane_side() {
    let input = golden::dir().join("stock-ami.toml");
    let out = rendered(&[
        "iam-policy",
        input.to_str().unwrap(),
        "--region",
        "eu-west-1",
        "--account",
        "123456789012",
    ]);
    let policy: serde_json::Value = serde_json::from_slice(&out).unwrap();
    for table_statement in [0, 1] {
        assert_eq!(
            policy["Statement"][table_statement]["Resource"],
            "arn:aws:dynamodb:eu-west-1:123456789012:table/acme-widgets-pool"
        );
    }
    // Instances in scope, and of those the calling instance only.
    let instances = "arn:aws:ec2:eu-west-1:123456789012:instance/";
    let terminate = &policy["Statement"][3];
    assert_eq!(terminate["Resource"], format!("{instances}*"));
    assert_eq!(
        terminate["Condition"]["ArnLike"]["ec2:SourceInstanceARN"],
        format!("{instances}${{ec2:InstanceID}}")
    );
    assert_eq!(
        policy["Statement"].as_array().unwrap().len(),
        4,
        "no job role, no STS"
    );
    let job_role = "arn:aws:iam::123456789012:role/ci-job";
    let out = rendered(&[
        "iam-policy",
        input.to_str().unwrap(),
        "--job-role-arn",
        job_role,
    ]);
    let policy: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(policy["Statement"][4]["Sid"], "AssumeJobRole");
    assert_eq!(policy["Statement"][4]["Resource"], job_role);
    let out = rendered(&[
        "iam-policy",
        "--control-plane",
        "--role-arn",
        "arn:aws:iam::123456789012:role/runner-agent",
    ]);
    let policy: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(policy["Statement"][0]["Action"], "iam:PassRole");
    assert_eq!(
        policy["Statement"][0]["Condition"]["StringEquals"]["iam:PassedToService"],
        "ec2.amazonaws.com"
    );
    for bad in [
        vec!["iam-policy", "--table", "acme-pool", "--account", "42"],
        vec![
            "iam-policy",
            "--control-plane",
            "--role-arn",
            "arn:aws:s3:::bucket",
        ],
        vec!["iam-policy"],
        vec![
            "iam-policy",
            "--table",
            "acme-pool",
            "--job-role-arn",
            "arn:aws:s3:::bucket",
        ],
    ] {
        assert_eq!(userdata(&bad).status.code(), Some(1), "{bad:?}");
    }
    let usage = [
        "iam-policy",
        "--control-plane",
        "--role-arn",
        "arn:aws:iam::123456789012:role/runner-agent",
        "--job-role-arn",
        job_role,
    ];
    assert_eq!(userdata(&usage).status.code(), Some(2));
}

/// The e2e tests' `systemctl` stand-in is shell too.
#[test]
fn the_sandbox_systemctl_stub_passes_shellcheck() {
    let dir = tempfile::tempdir().unwrap();
    let stub = dir.path().join("systemctl");
    std::fs::write(&stub, stack::sandbox::SYSTEMCTL_STUB).unwrap();
    shellcheck(&[stub]);
}

/// Whatever the operator's script holds comes back from cloud-init's YAML
/// parser byte for byte: text that reads well as a literal block is one,
/// the rest is a double-quoted scalar with YAML's escapes.
#[test]
fn cloud_config_carries_any_script_text_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(golden::dir().join("cloud-config.toml")).unwrap();
    let texts = [
        "#!/bin/bash\n---\n...\n\techo tab-indented\n# comment: with colon\n\n\necho 'quotes' \"and\" \\backslash\n",
        "no final newline",
        "trailing spaces   \n   \nline sep\u{2028}next\u{85}nel \u{7f} del \u{feff} bom \u{fffe} tail\n\n\n",
        " leading space, emoji \u{1F680}, accents éü\n",
    ];
    for (n, text) in texts.iter().enumerate() {
        std::fs::write(dir.path().join("pre-runner.sh"), text).unwrap();
        let input = dir.path().join("input.toml");
        std::fs::write(&input, &base).unwrap();
        let out = dir.path().join(format!("out-{n}.yaml"));
        rendered(&[
            "render",
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ]);
        let mut schema = Command::new("cloud-init");
        schema.args(["schema", "--config-file"]).arg(&out);
        check_tool(schema, "cloud-init schema");
        python(
            "import sys, yaml\nd = yaml.safe_load(open(sys.argv[1], encoding='utf-8'))\nf = [f for f in d['write_files'] if f['path'] == '/etc/runner-agent/pre-runner.sh'][0]\nopen(sys.argv[1] + '.content', 'w', encoding='utf-8', newline='').write(f['content'])",
            &out,
        );
        let back = std::fs::read_to_string(format!("{}.content", out.display())).unwrap();
        assert_eq!(&back, text, "case {n}");
    }
}

/// The package names the script installs exist in this host's apt index,
/// when the host is one of the apt families (CI runs on Debian 12). Other
/// families' names are checked only by review: no AL2023 or Ubuntu index
/// is reachable on loopback.
#[test]
fn package_names_resolve_in_the_hosts_apt_index() {
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let field = |key: &str| {
        os_release
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(|v| v.trim_matches('"').to_owned())
            .unwrap_or_default()
    };
    let family = match (field("ID").as_str(), field("VERSION_ID").as_str()) {
        ("debian", "12") => "debian-12",
        ("ubuntu", "22.04") => "ubuntu-22.04",
        ("ubuntu", "24.04") => "ubuntu-24.04",
        other => {
            eprintln!("host {other:?} is not an apt family the generator knows: nothing to check");
            return;
        }
    };
    // Names with a candidate version, from one `apt-cache policy` call
    // (a block per known name: "name:" then "  Candidate: ...").
    let with_candidate = |packages: &[&str]| -> Vec<String> {
        let out = Command::new("apt-cache")
            .arg("policy")
            .args(packages)
            .output()
            .expect("apt-cache");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut found = Vec::new();
        let mut current = None;
        for line in text.lines() {
            if !line.starts_with(' ') {
                current = line.strip_suffix(':').map(str::to_owned);
            } else if line.trim().starts_with("Candidate:") && !line.contains("(none)") {
                found.extend(current.take());
            }
        }
        found
    };
    let has_candidate = |package: &str| with_candidate(&[package]).len() == 1;
    if !has_candidate("bash") {
        eprintln!(
            "no apt package index on this host (apt-get update has not run): nothing to check"
        );
        return;
    }
    let input = golden::dir().join("stock-ami.toml");
    let script = String::from_utf8(rendered(&[
        "render",
        input.to_str().unwrap(),
        "--os",
        family,
    ]))
    .unwrap();
    let prefix = format!("    {family}) packages=(");
    let list = script
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|l| l.strip_suffix(") ;;"))
        .unwrap_or_else(|| panic!("no package list for {family} in:\n{script}"));
    let packages: Vec<&str> = list.split(' ').collect();
    let found = with_candidate(&packages);
    let missing: Vec<&&str> = packages
        .iter()
        .filter(|p| !found.iter().any(|f| f == *p))
        .collect();
    assert!(missing.is_empty(), "{family}: no such packages {missing:?}");
}
