//! `lifeboat-backup` end to end: exit codes, config runs, the run lock, a killed run.

mod common;
use common::random_file;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "correct horse\n").unwrap();
        let e = Env { dir };
        let out = e
            .cmd(&["init", "--kdf-memory-mib", "1", "--kdf-iterations", "1"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        e
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_lifeboat-backup"));
        c.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LIFEBOAT_REPOSITORY", self.p("repo"))
            .env("LIFEBOAT_PASSWORD_FILE", self.p("pw"))
            .env("LIFEBOAT_CACHE_DIR", self.p("cache"))
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn snapshots(&self) -> Vec<serde_json::Value> {
        let out = self.run(&["snapshots", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap()
    }

    /// Chunks stored completely: a `.tmp-` file is a write still in progress (or one a killed
    /// run never finished), which no later run can find.
    fn chunk_count(&self) -> usize {
        count(&self.p("repo/chunks"))
    }
}

fn count(d: &Path) -> usize {
    std::fs::read_dir(d)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        count(&e.path())
                    } else {
                        usize::from(!e.file_name().to_string_lossy().starts_with(".tmp-"))
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn adhoc_run_prints_json_and_lists_snapshots() {
    let e = Env::new();
    std::fs::create_dir_all(e.p("vol/sub")).unwrap();
    std::fs::write(e.p("vol/sub/a.txt"), "alpha").unwrap();
    let vol = format!("files={}", e.p("vol").display());
    let out = e.run(&[
        "run",
        "--json",
        "--volume",
        &vol,
        "--command",
        "greeting=echo hello",
        "--tag",
        "adhoc",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = common::summary(&out);
    assert_eq!(report["items"].as_array().unwrap().len(), 2);
    assert_eq!(report["items"][1]["size"], 6, "`echo hello` is 6 bytes");
    let snaps = e.snapshots();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0]["tags"][0], "adhoc");
    assert_eq!(snaps[0]["id"], report["snapshot"]);
    let quiet = e.run(&["run", "--quiet", "--command", "greeting=echo hello"]);
    assert!(quiet.status.success());
    assert!(
        quiet.stdout.is_empty() && quiet.stderr.is_empty(),
        "quiet on success, for cron"
    );
    let check = e.run(&["check", "--read-data", "--json"]);
    assert!(check.status.success(), "{}", stderr(&check));
    let r: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    assert_eq!(r["problems"].as_array().unwrap().len(), 0);
}

#[test]
fn exit_codes_are_distinct_and_errors_carry_hints() {
    let e = Env::new();
    let wrong = e
        .cmd(&["snapshots"])
        .env("LIFEBOAT_PASSWORD_FILE", e.p("nope"))
        .output()
        .unwrap();
    assert_eq!(wrong.status.code(), Some(3), "{}", stderr(&wrong));
    std::fs::write(e.p("bad"), "wrong\n").unwrap();
    let wrong = e
        .cmd(&["snapshots"])
        .env("LIFEBOAT_PASSWORD_FILE", e.p("bad"))
        .output()
        .unwrap();
    assert_eq!(wrong.status.code(), Some(3));
    assert!(stderr(&wrong).contains("hint:"), "{}", stderr(&wrong));
    let missing = e
        .cmd(&["snapshots"])
        .env("LIFEBOAT_REPOSITORY", e.p("elsewhere"))
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(5), "{}", stderr(&missing));
    let usage = e.run(&["run", "--volume", "no equals sign"]);
    assert_eq!(usage.status.code(), Some(2));
    let failing = e.run(&["run", "--command", "db=echo partial; exit 4"]);
    assert_eq!(failing.status.code(), Some(1));
    assert!(
        stderr(&failing).contains("status 4"),
        "{}",
        stderr(&failing)
    );
    assert!(
        e.snapshots().is_empty(),
        "a failing command leaves no snapshot"
    );
    for level in ["99", "0"] {
        let bad = e.run(&[
            "run",
            "--compression-level",
            level,
            "--command",
            "x=echo hi",
        ]);
        assert_eq!(
            bad.status.code(),
            Some(2),
            "level {level}: {}",
            stderr(&bad)
        );
        assert!(stderr(&bad).contains("1–19"), "{}", stderr(&bad));
    }
    std::fs::write(
        e.p("c.toml"),
        format!(
            "[repository]\nurl = \"{}\"\n[backup]\ncompression_level = 99\n[sources.x]\ntype = \"command\"\ncommand = \"echo hi\"\n",
            e.p("repo").display()
        ),
    )
    .unwrap();
    let bad = e.run(&["--config", e.p("c.toml").to_str().unwrap(), "run"]);
    assert_eq!(bad.status.code(), Some(2), "config level: {}", stderr(&bad));
    assert!(e.snapshots().is_empty(), "no snapshot at a refused level");
    let argv_secret = e.run(&["snapshots", "--password", "x"]);
    assert_eq!(
        argv_secret.status.code(),
        Some(2),
        "there is no flag that takes a secret on argv"
    );
}

#[test]
fn init_refuses_typo_locations_and_foreign_directories() {
    let e = Env::new();
    let work = e.p("work");
    std::fs::create_dir(&work).unwrap();
    let init = |repo: &str| {
        e.cmd(&["init", "--kdf-memory-mib", "1", "--kdf-iterations", "1"])
            .env("LIFEBOAT_REPOSITORY", repo)
            .current_dir(&work)
            .output()
            .unwrap()
    };
    let one_slash = init("s3:/bkt/x");
    assert_eq!(one_slash.status.code(), Some(2), "{}", stderr(&one_slash));
    assert!(
        stderr(&one_slash).contains("s3://bkt/x"),
        "{}",
        stderr(&one_slash)
    );
    let empty = init("");
    assert_eq!(empty.status.code(), Some(2), "{}", stderr(&empty));
    assert_eq!(
        count(&work),
        0,
        "nothing written into the current directory"
    );
    std::fs::write(work.join("notes.txt"), "mine").unwrap();
    let foreign = init(work.to_str().unwrap());
    assert_eq!(foreign.status.code(), Some(2), "{}", stderr(&foreign));
    assert!(
        stderr(&foreign).contains("not empty"),
        "{}",
        stderr(&foreign)
    );
    assert_eq!(count(&work), 1, "the directory is as it was");
    let again = init(e.p("repo").to_str().unwrap());
    assert_ne!(
        again.status.code(),
        Some(0),
        "an existing repository is refused too"
    );
    let colon = init("./s3:dir");
    assert!(colon.status.success(), "{}", stderr(&colon));
    assert!(work.join("s3:dir/config").exists());
}

#[test]
fn config_file_runs_all_or_named_sources_into_one_snapshot() {
    let e = Env::new();
    std::fs::create_dir_all(e.p("www")).unwrap();
    std::fs::write(e.p("www/index.html"), "<h1>hi</h1>").unwrap();
    std::fs::write(e.p("www/skip.tmp"), "x").unwrap();
    let cfg = format!(
        "[repository]\nurl = \"{}\"\npassword_file = \"{}\"\n\n[backup]\ntags = [\"nightly\"]\n\n[sources.www]\ntype = \"volume\"\npath = \"{}\"\nexclude = [\"*.tmp\"]\n\n[sources.etcd]\ntype = \"command\"\ncommand = \"printf snapshot-bytes\"\nrestore_command = \"cat > {}\"\n",
        e.p("repo").display(),
        e.p("pw").display(),
        e.p("www").display(),
        e.p("etcd-restored").display()
    );
    std::fs::write(e.p("lifeboat.toml"), cfg).unwrap();
    let cfgp = e.p("lifeboat.toml");
    let cfgs = cfgp.to_str().unwrap();
    let out = e
        .cmd(&["--config", cfgs, "run", "--json"])
        .env_remove("LIFEBOAT_REPOSITORY")
        .env_remove("LIFEBOAT_PASSWORD_FILE")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let snaps = e.snapshots();
    assert_eq!(snaps.len(), 1);
    let names: Vec<_> = snaps[0]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["etcd", "www"]);
    assert_eq!(snaps[0]["tags"][0], "nightly");
    let one = e.run(&["--config", cfgs, "run", "--source", "etcd"]);
    assert!(one.status.success(), "{}", stderr(&one));
    let snaps = e.snapshots();
    assert_eq!(snaps[1]["items"].as_array().unwrap().len(), 1);
    let unknown = e.run(&["--config", cfgs, "run", "--source", "nope"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        stderr(&unknown).contains("etcd, www"),
        "lists what exists: {}",
        stderr(&unknown)
    );
}

#[test]
fn overlapping_runs_never_run_twice() {
    let e = Env::new();
    let started = e.p("first-started");
    let slow = format!("slow=touch {}; sleep 3; echo done", started.display());
    let mut first = e
        .cmd(&["run", "--quiet", "--command", &slow])
        .spawn()
        .unwrap();
    // The command runs only once the first run holds the lock.
    let t0 = Instant::now();
    while !started.exists() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(started.exists(), "first run started its source");
    // The same repository spelled another way, and without the cache: still the same lock.
    let second = e
        .cmd(&[
            "run",
            "--no-cache",
            "-r",
            "./repo/",
            "--command",
            "other=echo x",
        ])
        .current_dir(e.dir.path())
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(4), "{}", stderr(&second));
    assert!(stderr(&second).contains("lock"), "{}", stderr(&second));
    let waited = e.run(&["run", "--wait", "--command", "queued=echo y"]);
    assert!(
        waited.status.success(),
        "--wait queues behind the first run: {}",
        stderr(&waited)
    );
    assert!(first.wait().unwrap().success());
    let snaps = e.snapshots();
    assert_eq!(
        snaps.len(),
        2,
        "the first and the queued run, not the refused one"
    );
    let first_end = snaps[0]["finished"].as_str().unwrap().to_string();
    let second_start = snaps[1]["time"].as_str().unwrap().to_string();
    assert!(
        second_start >= first_end,
        "the queued run started after the first finished"
    );
}

#[test]
fn killed_backup_leaves_no_snapshot_and_the_next_run_reuses_chunks() {
    let e = Env::new();
    let data = e.p("data.bin");
    random_file(&data, 1, 16 << 20);
    // The command emits the data, then hangs: the backup is killed while waiting on it.
    let slow = format!("dump=cat {}; sleep 20", data.display());
    let mut child = e.cmd(&["run", "--command", &slow]).spawn().unwrap();
    let t0 = Instant::now();
    while e.chunk_count() < 4 && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        e.chunk_count() >= 4,
        "chunks stored before the kill: {}",
        e.chunk_count()
    );
    child.kill().unwrap();
    child.wait().unwrap();
    // Counted after the kill: more puts may have completed since the loop looked.
    let stored = e.chunk_count();
    assert!(e.snapshots().is_empty(), "a killed run leaves no snapshot");

    let ok = format!("dump=cat {}", data.display());
    let out = e.run(&["run", "--json", "--command", &ok]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r = common::summary(&out);
    let total = r["items"][0]["chunks"].as_u64().unwrap();
    let new = r["chunks_new"].as_u64().unwrap();
    assert!(
        new < total,
        "the rerun reused chunks of the killed run ({new} new of {total})"
    );
    // Every new chunk is a chunk object, but for the stream's last one, which is small and
    // goes into a pack of its own.
    assert_eq!(
        (e.chunk_count() + count(&e.p("repo/packs"))) as u64,
        stored as u64 + new
    );
}

#[test]
fn key_slots_from_the_command_line() {
    let e = Env::new();
    std::fs::write(e.p("pw2"), "second\n").unwrap();
    let pw2 = e.p("pw2");
    let add = e.run(&[
        "key",
        "add",
        "--new-password-file",
        pw2.to_str().unwrap(),
        "--label",
        "backup host",
        "--kdf-memory-mib",
        "1",
        "--kdf-iterations",
        "1",
    ]);
    assert!(add.status.success(), "{}", stderr(&add));
    let list = e.run(&["key", "list", "--json"]);
    let slots: Vec<serde_json::Value> = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(slots.len(), 2);
    let current = slots.iter().find(|s| s["current"] == true).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let other = slots.iter().find(|s| s["current"] == false).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        e.cmd(&["snapshots"])
            .env("LIFEBOAT_PASSWORD_FILE", &pw2)
            .output()
            .unwrap()
            .status
            .success()
    );
    assert!(e.run(&["key", "remove", &other]).status.success());
    let last = e.run(&["key", "remove", &current]);
    assert_ne!(last.status.code(), Some(0));
    assert!(stderr(&last).contains("last key slot"), "{}", stderr(&last));
}

#[test]
fn sigterm_stops_the_run_and_its_producer_without_a_snapshot() {
    let e = Env::new();
    let marker = e.p("producer-alive");
    let cmd = format!(
        "slow=echo start; while true; do touch {}; sleep 0.1; done",
        marker.display()
    );
    let child = e
        .cmd(&["run", "--command", &cmd])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !marker.exists() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(marker.exists(), "producer started");
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("SIGTERM"), "{}", stderr(&out));
    assert!(e.snapshots().is_empty());
    std::fs::remove_file(&marker).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(!marker.exists(), "the producer was stopped with the run");
}

#[test]
fn retention_runs_only_after_success_and_reclaims_space() {
    let e = Env::new();
    random_file(&e.p("data.bin"), 1, 3 << 20);
    let cfg = format!(
        "[repository]\nurl = \"{}\"\npassword_file = \"{}\"\n\n[retention]\nkeep_last = 1\ngrace = \"0s\"\n\n[sources.dump]\ntype = \"command\"\ncommand = \"cat {}\"\n",
        e.p("repo").display(),
        e.p("pw").display(),
        e.p("data.bin").display()
    );
    std::fs::write(e.p("lifeboat.toml"), cfg).unwrap();
    let c = e.p("lifeboat.toml");
    let c = c.to_str().unwrap();
    assert!(e.run(&["-c", c, "run", "-q"]).status.success());
    let first_chunks = e.chunk_count();
    random_file(&e.p("data.bin"), 2, 3 << 20);
    let second = e.run(&["-c", c, "run", "-q"]);
    assert!(second.status.success(), "{}", stderr(&second));
    let snaps = e.snapshots();
    assert_eq!(
        snaps.len(),
        1,
        "keep_last = 1 applied after the successful run"
    );
    assert!(
        e.chunk_count() <= first_chunks + 1,
        "the first run's chunks were collected: {} objects",
        e.chunk_count()
    );
    let check = e.run(&["check", "--read-data"]);
    assert!(check.status.success(), "{}", stderr(&check));

    // A failing run removes nothing, whatever the policy says.
    std::fs::remove_file(e.p("data.bin")).unwrap();
    let failed = e.run(&["-c", c, "run", "-q"]);
    assert_eq!(failed.status.code(), Some(1));
    assert!(
        stderr(&failed).contains("retention was not applied"),
        "{}",
        stderr(&failed)
    );
    assert_eq!(
        e.snapshots(),
        snaps,
        "the last good snapshot is still there"
    );
}

#[test]
fn forget_dry_run_shows_what_apply_does_and_protect_holds() {
    let e = Env::new();
    for i in 0..4 {
        let out = e.run(&["run", "-q", "--command", &format!("db=echo {i}")]);
        assert!(out.status.success());
    }
    let snaps = e.snapshots();
    let oldest = snaps[0]["id"].as_str().unwrap().to_string();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let refuse = e.run(&["forget", "--keep-within", "1s"]);
    assert_eq!(
        refuse.status.code(),
        Some(2),
        "a policy that removes a whole group is refused: {}",
        stderr(&refuse)
    );
    assert_eq!(e.snapshots().len(), 4);
    assert!(e.run(&["protect", &oldest[..8]]).status.success());
    let dry = e.run(&["forget", "--keep-last", "2", "--dry-run", "--json"]);
    assert!(dry.status.success(), "{}", stderr(&dry));
    let plan: serde_json::Value = serde_json::from_slice(&dry.stdout).unwrap();
    assert_eq!(
        plan["forgotten"], 1,
        "newest two kept, the oldest protected, one removed"
    );
    let decisions = plan["plan"]["groups"][0]["snapshots"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(e.snapshots().len(), 4, "dry run changed nothing");
    let applied = e.run(&["forget", "--keep-last", "2", "--json"]);
    let applied: serde_json::Value = serde_json::from_slice(&applied.stdout).unwrap();
    assert_eq!(
        applied["plan"]["groups"][0]["snapshots"]
            .as_array()
            .unwrap(),
        &decisions,
        "apply did what the dry run showed"
    );
    let left: Vec<String> = e
        .snapshots()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left.len(), 3);
    assert!(left.contains(&oldest), "protected snapshot kept");
    let dry = e.run(&["prune", "--grace", "0s", "--dry-run"]);
    let text = String::from_utf8_lossy(&dry.stdout);
    assert!(dry.status.success(), "{}", stderr(&dry));
    assert!(text.contains("would be reclaimed"), "{text}");
    assert!(
        !text.contains("B reclaimed"),
        "a dry run reclaims nothing: {text}"
    );
    let direct = e.run(&["forget", &oldest[..8]]);
    assert_ne!(
        direct.status.code(),
        Some(0),
        "protected snapshots cannot be forgotten by id either"
    );
    assert!(e.run(&["unprotect", &oldest[..8]]).status.success());
    assert!(e.run(&["forget", &oldest[..8]]).status.success());
    assert_eq!(e.snapshots().len(), 2);
}

/// The issue's reproduction, as a user runs it: two hosts (own cache directories) back up the
/// same new files at once, then two prunes at `--grace 0s` and one at the default, then `check
/// --read-data` from a cold cache: clean, and both snapshots restore.
#[test]
fn two_hosts_then_prunes_lose_nothing() {
    let e = Env::new();
    let t = e.p("t");
    std::fs::create_dir_all(&t).unwrap();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for i in 0..1500 {
        let bytes: Vec<u8> = (0..4000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(t.join(format!("f{i:05}")), bytes).unwrap();
    }
    let volume = format!("v={}", t.display());
    let host = |cache: &str| {
        let mut c = e.cmd(&["--cache-dir", cache, "run", "--quiet", "--volume", &volume]);
        c.stdout(Stdio::null()).stderr(Stdio::piped());
        c.spawn().unwrap()
    };
    let (a, b) = (
        host(&e.p("hA").to_string_lossy()),
        host(&e.p("hB").to_string_lossy()),
    );
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(e.snapshots().len(), 2);
    for grace in [&["--grace", "0s"][..], &["--grace", "0s"], &[]] {
        let mut args = vec!["--no-cache", "prune"];
        args.extend_from_slice(grace);
        let out = e.run(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(count(&e.p("repo/packs")), count(&e.p("repo/index")));
    }
    let out = e.run(&["--no-cache", "check", "--read-data"]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("no problems") && !text.contains("without an index"),
        "{text}"
    );
}

/// One damaged manifest: `snapshots` lists it as damaged and exits 0, a new backup works,
/// `prune` deletes nothing and exits 6 naming it, `forget` by its id removes it, and then
/// `prune` and `check` are clean.
#[test]
fn a_damaged_manifest_is_listed_forgotten_and_then_pruned() {
    let e = Env::new();
    let src = e.p("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), "one").unwrap();
    let vol = format!("v={}", src.display());
    assert!(
        e.run(&["run", "--quiet", "--volume", &vol])
            .status
            .success()
    );
    let first = e.snapshots()[0]["id"].as_str().unwrap().to_string();
    std::fs::write(e.p(&format!("repo/snapshots/{first}")), b"damaged").unwrap();
    std::fs::remove_dir_all(e.p("cache")).unwrap();
    let out = e.run(&["snapshots"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("DAMAGED"));
    assert!(err.contains(&first) && err.contains("forget"), "{err}");
    std::fs::write(src.join("b"), "two").unwrap();
    let out = e.run(&["run", "--quiet", "--volume", &vol]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = e.run(&["prune", "--grace", "0s"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(err.contains(&first) && err.contains("hint:"), "{err}");
    let out = e.run(&["forget", &first[..8]]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = e.run(&["prune", "--grace", "0s"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = e.run(&["check", "--read-data"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// `lifeboat-backup ARGS` against an S3 location, with static credentials and `[repository.s3]`
/// from `s3` (endpoint and settings), no environment from the host.
fn run_s3(e: &Env, url: &str, s3: &str, args: &[&str]) -> (Output, Duration) {
    let cfg = e.p("s3.toml");
    std::fs::write(
        &cfg,
        format!(
            "[repository]\nurl = \"{url}\"\npassword_file = \"{}\"\n[repository.s3]\npath_style = true\naccess_key_id = \"test\"\nsecret_access_key_file = \"{}\"\n{s3}\n",
            e.p("pw").display(),
            e.p("pw").display()
        ),
    )
    .unwrap();
    let t0 = Instant::now();
    let mut all = vec!["--config", cfg.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = e
        .cmd(&all)
        .env_remove("LIFEBOAT_REPOSITORY")
        .env_remove("LIFEBOAT_PASSWORD_FILE")
        .output()
        .unwrap();
    (out, t0.elapsed())
}

#[test]
fn a_hung_s3_endpoint_fails_within_the_operation_timeout_with_one_readable_line() {
    let e = Env::new();
    // Accepts connections and never answers.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in l.incoming() {
            held.push(c);
        }
    });
    let s3 = format!(
        "endpoint = \"http://127.0.0.1:{port}\"\nread_timeout = \"1s\"\noperation_timeout = \"3s\""
    );
    let (out, took) = run_s3(&e, "s3://hung/repo", &s3, &["snapshots"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(took < Duration::from_secs(20), "gave up in {took:?}: {err}");
    let first = err.lines().next().unwrap_or_default();
    for part in [
        &format!("endpoint http://127.0.0.1:{port}"),
        "bucket hung",
        "key repo/config",
        "gave up after",
        "operation_timeout 3s",
    ] {
        assert!(first.contains(part), "{part:?} missing: {err}");
    }
    assert!(
        !err.contains("DispatchFailure") && !err.contains(" { "),
        "no Debug dumps: {err}"
    );
    assert!(err.lines().any(|l| l.starts_with("hint: ")), "{err}");
    assert_eq!(err.lines().count(), 2, "one line and the hint: {err}");
    let bad = run_s3(
        &e,
        "s3://hung/repo",
        "read_timeout = \"0s\"",
        &["snapshots"],
    )
    .0;
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(stderr(&bad).contains("read_timeout"), "{}", stderr(&bad));
}

#[test]
fn a_missing_bucket_is_named_as_such_on_list_and_init() {
    let e = Env::new();
    let s3 = backup_core::scratch::s3::ScratchS3::start().unwrap_or_else(|err| panic!("{err}"));
    let endpoint = format!("endpoint = \"{}\"", s3.endpoint());
    for args in [&["snapshots"][..], &["init", "--kdf-memory-mib", "1"][..]] {
        let (out, _) = run_s3(&e, "s3://nobucket/repo", &endpoint, args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(5), "{args:?}: {err}");
        assert!(err.contains("bucket nobucket"), "{args:?}: {err}");
        assert!(err.contains("does not exist"), "{args:?}: {err}");
        assert!(
            !err.contains("no Lifeboat repository") && !err.contains("fix the configuration"),
            "{args:?}: {err}"
        );
    }
}

/// `--json` on run, prune and restore: stdout is JSON lines — status events while an item
/// runs, then one summary line; an error that ends the process is one JSON line on stderr.
#[test]
fn json_lines_status_while_running_then_a_summary_and_errors_as_json() {
    let e = Env::new();
    let slow = "slow=head -c 300000 /dev/urandom; sleep 2.5; head -c 300000 /dev/urandom";
    let out = e.run(&["run", "--json", "--command", slow]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|err| panic!("{err}: {l}")))
        .collect();
    let (summary, status) = lines.split_last().unwrap();
    assert_eq!(summary["message_type"], "summary");
    assert_eq!(summary["items"][0]["size"], 600000);
    assert!(status.len() >= 2, "a status line a second: {lines:?}");
    let mut before = 0;
    for s in status {
        assert_eq!(s["message_type"], "status", "{s}");
        assert_eq!(s["items"][0]["name"], "slow", "{s}");
        let done = s["bytes_done"].as_u64().unwrap();
        assert!(
            done >= before && s["seconds_elapsed"].as_f64().unwrap() > 0.0,
            "{s}"
        );
        before = done;
    }

    let pruned = e.run(&["--json", "prune", "--keep-last", "1"]);
    assert!(pruned.status.success(), "{}", stderr(&pruned));
    let p = common::summary(&pruned);
    assert_eq!(p["gc"]["chunks_deleted"], 0, "{p}");

    let to = e.p("restored");
    let restored = Command::new(common::restore_bin())
        .args(["--json", "run", "latest", "--to", to.to_str().unwrap()])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("LIFEBOAT_REPOSITORY", e.p("repo"))
        .env("LIFEBOAT_PASSWORD_FILE", e.p("pw"))
        .env("LIFEBOAT_CACHE_DIR", e.p("cache"))
        .output()
        .unwrap();
    assert!(restored.status.success(), "{}", stderr(&restored));
    let r = common::summary(&restored);
    assert_eq!(r["items"][0]["name"], "slow", "{r}");
    assert_eq!(std::fs::metadata(to.join("slow")).unwrap().len(), 600000);

    // Warnings are JSON lines on stderr too (a socket is not backed up).
    let dir = e.p("with-socket");
    std::fs::create_dir_all(&dir).unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(dir.join("sock")).unwrap();
    let vol = format!("v={}", dir.display());
    let warned = e.run(&["run", "--json", "--volume", &vol]);
    assert!(warned.status.success(), "{}", stderr(&warned));
    let err = String::from_utf8_lossy(&warned.stderr);
    let w: Vec<serde_json::Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        w.iter().any(|v| v["message_type"] == "warning"
            && v["message"] == "source v: sock: a socket, not backed up"),
        "{err}"
    );

    let failed = e.run(&["run", "--json", "--command", "broken=exit 3"]);
    assert_eq!(failed.status.code(), Some(1));
    let err = String::from_utf8_lossy(&failed.stderr);
    let last: serde_json::Value = serde_json::from_str(err.lines().last().unwrap()).unwrap();
    assert_eq!(last["message_type"], "exit_error", "{err}");
    assert_eq!(last["code"], 1);
    assert!(
        last["message"].as_str().unwrap().contains("broken"),
        "{last}"
    );
}
