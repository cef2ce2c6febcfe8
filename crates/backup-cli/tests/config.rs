//! `config validate [--connect]` and `config example`: every problem of a config named in one
//! run (exit 2), unknown keys with their line, the example parses.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use backup_core::scratch::s3::ScratchS3;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn backup(args: &[&str], envs: &[(&str, &Path)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lifeboat-backup"));
    c.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::null());
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().unwrap()
}

#[test]
fn validate_connect_names_a_down_database_a_missing_password_file_and_a_missing_bucket() {
    let s3 = ScratchS3::start().expect("the S3 test server (ministack) must start");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("s3-secret"), "test").unwrap();
    std::fs::create_dir_all(dir.path().join("www")).unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let pg_port = closed.local_addr().unwrap().port();
    drop(closed);
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[repository]\nurl = \"s3://no-such-bucket/repo\"\npassword_file = \"{0}/missing-pw\"\n\n[repository.s3]\nendpoint = \"{1}\"\npath_style = true\naccess_key_id = \"test\"\nsecret_access_key_file = \"{0}/s3-secret\"\nmax_attempts = 1\n\n[sources.app]\ntype = \"postgres\"\nurl = \"postgresql://postgres@127.0.0.1:{pg_port}/app?connect_timeout=3\"\n\n[sources.www]\ntype = \"volume\"\npath = \"{0}/www\"\n\n[retention]\nkeep_daily = 7\nkeep_weekly = 4\n",
            dir.path().display(),
            s3.endpoint()
        ),
    )
    .unwrap();
    let out = backup(
        &["config", "validate", "--connect", cfg.to_str().unwrap()],
        &[],
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(2), "{text}{}", stderr(&out));
    let problems: Vec<&str> = text.lines().filter(|l| l.starts_with("PROBLEM")).collect();
    assert_eq!(problems.len(), 3, "{text}");
    assert!(
        problems[0].contains("repository: password_file") && problems[0].contains("missing-pw"),
        "{text}"
    );
    assert!(
        problems[1].contains("repository:") && problems[1].contains("no-such-bucket"),
        "{text}"
    );
    assert!(
        problems[2].starts_with("PROBLEM source app: PostgreSQL at"),
        "{text}"
    );
    assert!(text.contains("ok      source www:"), "{text}");
    assert!(
        text.contains("retention: keeps one per day for 7 days, one per week for 4 weeks"),
        "{text}"
    );
    assert!(text.ends_with("3 problem(s)\n"), "{text}");

    // Without --connect only the files are checked.
    let offline = backup(&["config", "validate", cfg.to_str().unwrap()], &[]);
    assert_eq!(offline.status.code(), Some(2));
    assert_eq!(
        stdout(&offline).matches("PROBLEM").count(),
        1,
        "{}",
        stdout(&offline)
    );
}

#[test]
fn unknown_keys_are_refused_with_their_line_and_the_example_validates() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[repository]\nurl = \"/srv/repo\"\n\n[backup]\ntags = []\ncompresion_level = 3\n",
    )
    .unwrap();
    let out = backup(&["config", "validate", cfg.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("line 6: unknown field `compresion_level`"),
        "{}",
        stderr(&out)
    );

    let example = backup(&["config", "example"], &[]);
    assert!(example.status.success());
    std::fs::write(&cfg, &example.stdout).unwrap();
    std::fs::write(dir.path().join("password"), "pw\n").unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
    let out = backup(
        &["config", "validate", cfg.to_str().unwrap()],
        &[
            ("LIFEBOAT_DEMO_DIR", dir.path()),
            ("LIFEBOAT_FIXTURES", &fixtures),
        ],
    );
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("is valid"), "{}", stdout(&out));
}

/// The systemd units in deploy/systemd pass `systemd-analyze verify` (warnings count as
/// failures), with the binary path pointed at this build.
#[test]
fn the_shipped_systemd_units_verify() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/systemd");
    let dir = tempfile::tempdir().unwrap();
    let mut units = Vec::new();
    for e in std::fs::read_dir(&src).unwrap().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap().replace(
            "/usr/local/bin/lifeboat-backup",
            env!("CARGO_BIN_EXE_lifeboat-backup"),
        );
        let dest = dir.path().join(e.file_name());
        std::fs::write(&dest, text).unwrap();
        units.push(dest);
    }
    assert_eq!(units.len(), 3, "service, timer, WAL streaming template");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .expect("systemd-analyze not found (apt-get install systemd)");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
}

/// `completions SHELL` gives a script the shell accepts, naming the subcommands; `man` a page
/// groff renders without a warning. The same helper serves lifeboat-restore and lifeboat-drill.
#[test]
fn completions_and_the_man_page() {
    let bash = backup(&["completions", "bash"], &[]);
    assert!(bash.status.success(), "{}", stderr(&bash));
    let script = stdout(&bash);
    assert!(
        script.contains("validate") && script.contains("completions"),
        "{script}"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.bash"), &script).unwrap();
    let checked = Command::new("bash")
        .arg("-n")
        .arg(dir.path().join("c.bash"))
        .output()
        .unwrap();
    assert!(checked.status.success(), "{}", stderr(&checked));
    let man = backup(&["man"], &[]);
    assert!(man.status.success(), "{}", stderr(&man));
    let page = stdout(&man);
    assert!(page.contains(".TH lifeboat-backup 1"), "{page}");
    for sub in ["run", "snapshots", "prune", "config", "wal"] {
        assert!(page.contains(sub), "the page names {sub}");
    }
    std::fs::write(dir.path().join("lifeboat-backup.1"), &page).unwrap();
    let rendered = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .arg(dir.path().join("lifeboat-backup.1"))
        .output()
        .expect("groff not found (apt-get install groff-base)");
    assert!(
        rendered.status.success() && rendered.stderr.is_empty(),
        "{}",
        stderr(&rendered)
    );
}
