//! Users a test creates: the dedicated runner user of a hostile-job test,
//! the users whose isolation hardened mode checks. Made afresh (a leftover
//! of a killed run is removed first) and removed again when dropped, with
//! whatever crontab, at jobs and processes they still have.

use std::path::Path;
use std::process::{Command, Output};

pub struct TestUser {
    pub name: &'static str,
    pub uid: u32,
    pub gid: u32,
}

fn sh(args: &[&str]) -> Output {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
    out
}

impl TestUser {
    /// A system user with no home and no login shell, in `groups`.
    pub fn create(name: &'static str, groups: &[&str]) -> TestUser {
        let list = groups.join(",");
        let mut args = vec!["--no-create-home", "--shell", "/usr/sbin/nologin"];
        if !groups.is_empty() {
            args.extend(["--groups", &list]);
        }
        Self::add(name, &args)
    }

    /// A user whose home is `home` (made and given to it), with bash as
    /// its shell: what a runner user has on an instance.
    pub fn with_home(name: &'static str, home: &Path) -> TestUser {
        let home_text = home.to_string_lossy().into_owned();
        let user = Self::add(
            name,
            &[
                "--home-dir",
                &home_text,
                "--no-create-home",
                "--shell",
                "/bin/bash",
            ],
        );
        std::fs::create_dir_all(home).unwrap();
        std::os::unix::fs::chown(home, Some(user.uid), Some(user.gid)).unwrap();
        user
    }

    fn add(name: &'static str, extra: &[&str]) -> TestUser {
        remove(name);
        let mut args = vec!["useradd", "--system"];
        args.extend(extra);
        args.push(name);
        sh(&args);
        let id = |flag: &str| {
            String::from_utf8(sh(&["id", flag, name]).stdout)
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        TestUser {
            name,
            uid: id("-u"),
            gid: id("-g"),
        }
    }

    /// `command` run as this user (uid, gid, its groups), as a job would.
    pub fn run(&self, script: &str) -> Output {
        Command::new("setpriv")
            .arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--init-groups")
            .args(["bash", "-c", script])
            .output()
            .unwrap()
    }
}

fn remove(name: &str) {
    let _ = Command::new("pkill").args(["-KILL", "-u", name]).output();
    let _ = Command::new("crontab").args(["-r", "-u", name]).output();
    let _ = Command::new("userdel").arg(name).output();
}

impl Drop for TestUser {
    fn drop(&mut self) {
        remove(self.name);
    }
}
