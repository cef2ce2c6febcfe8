//! `lifeboat-restore` end to end against repositories written through the library.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use backup_core::codec::keys::KdfParams;
use backup_core::commands::backup::{BackupOptions, backup};
use backup_core::engines::command::CommandSource;
use backup_core::engines::volume::{VolumeOptions, VolumeSource};
use backup_core::repository::{CacheOptions, InitOptions, Repository};
use backup_core::secret::Secret;
use backup_core::source::Source;
use backup_core::store::LocalStore;

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The repository, opened through the library (no cache).
    async fn repo(&self) -> Repository {
        Repository::open(
            Arc::new(LocalStore::new(self.p("repo"))),
            &Secret::Passphrase(b"hunter2".to_vec().into()),
            CacheOptions {
                disabled: true,
                dir: None,
            },
        )
        .await
        .unwrap()
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_lifeboat-restore"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LIFEBOAT_REPOSITORY", self.p("repo"))
            .env("LIFEBOAT_PASSWORD", "hunter2")
            .env("LIFEBOAT_CACHE_DIR", self.p("cache"))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A repository with one snapshot: a volume `site` and a command item `dump`.
async fn setup() -> Env {
    let e = Env {
        dir: tempfile::tempdir().unwrap(),
    };
    std::fs::create_dir_all(e.p("site/img")).unwrap();
    std::fs::write(e.p("site/index.html"), "<p>home</p>").unwrap();
    std::fs::write(e.p("site/img/logo.svg"), "<svg/>").unwrap();
    let repo = Repository::init(
        Arc::new(LocalStore::new(e.p("repo"))),
        &Secret::Passphrase(b"hunter2".to_vec().into()),
        InitOptions {
            kdf: KdfParams {
                memory_kib: 1024,
                iterations: 1,
                parallelism: 1,
            },
            cache: CacheOptions {
                disabled: true,
                dir: None,
            },
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let sources: Vec<Box<dyn Source>> = vec![
        Box::new(VolumeSource::new(
            "site",
            e.p("site"),
            VolumeOptions::default(),
        )),
        Box::new(CommandSource::new("dump", "printf 'CREATE TABLE t;\\n'")),
    ];
    backup(&repo, sources, &BackupOptions::default())
        .await
        .unwrap();
    e
}

#[tokio::test]
async fn list_show_and_plan() {
    let e = setup().await;
    let list = e.run(&["list", "--json"]);
    assert!(list.status.success(), "{}", stderr(&list));
    let v: Vec<serde_json::Value> = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0]["items"].as_array().unwrap().len(), 2);
    let human = String::from_utf8(e.run(&["list"]).stdout).unwrap();
    assert!(human.contains("dump,site"), "{human}");
    let show = e.run(&["show", "latest", "--json"]);
    let s: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(s["items"][0]["name"], "site");
    assert_eq!(s["items"][0]["facts"]["files"], 2, "volume facts are shown");
    assert!(
        s["items"][0]["chunks"].as_u64().is_some_and(|n| n >= 1),
        "chunk lists are summarised as counts: {}",
        s["items"][0]["chunks"]
    );
    let plan = e.run(&[
        "plan",
        "latest",
        "--to",
        e.p("out").to_str().unwrap(),
        "--json",
    ]);
    let p: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(p["items"][0]["target_state"], "missing");
    assert!(!e.p("out").exists(), "plan touches nothing");
    let bad = e.run(&["show", "ffffffffff"]);
    assert_eq!(bad.status.code(), Some(1), "{}", stderr(&bad));
    assert!(
        stderr(&bad).contains("lifeboat-restore list"),
        "hint names the next step: {}",
        stderr(&bad)
    );
}

#[tokio::test]
async fn run_restores_selected_items_and_refuses_occupied_targets() {
    let e = setup().await;
    let out = e.p("out");
    let outs = out.to_str().unwrap();
    let dry = e.run(&["run", "latest", "--to", outs, "--dry-run"]);
    assert!(dry.status.success());
    assert!(!out.exists(), "--dry-run touches nothing");
    let r = e.run(&["run", "latest", "--to", outs, "--only", "site"]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert_eq!(
        std::fs::read_to_string(out.join("site/img/logo.svg")).unwrap(),
        "<svg/>"
    );
    assert!(
        !out.join("dump").exists(),
        "--only restores only the named item"
    );
    let again = e.run(&["run", "latest", "--to", outs, "--skip", "dump"]);
    assert_eq!(again.status.code(), Some(7), "{}", stderr(&again));
    let forced = e.run(&["run", "latest", "--to", outs, "--force"]);
    assert!(forced.status.success(), "{}", stderr(&forced));
    assert_eq!(
        std::fs::read_to_string(out.join("dump")).unwrap(),
        "CREATE TABLE t;\n"
    );
    let unknown = e.run(&["run", "latest", "--only", "nope", "--to", outs]);
    assert_ne!(unknown.status.code(), Some(0));
    assert!(
        stderr(&unknown).contains("dump, site"),
        "{}",
        stderr(&unknown)
    );
}

#[tokio::test]
async fn export_to_stdout_and_file_and_corruption_exit_code() {
    let e = setup().await;
    let out = e.run(&["export", "latest", "dump", "-o", "-"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, b"CREATE TABLE t;\n");
    let tar = e.p("site.tar");
    let out = e.run(&["export", "latest", "site", "-o", tar.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listing = Command::new("tar").arg("-tf").arg(&tar).output().unwrap();
    let names = String::from_utf8_lossy(&listing.stdout);
    assert!(names.contains("img/logo.svg"), "a standard tar: {names}");
    let again = e.run(&["export", "latest", "site", "-o", tar.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(7), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("already exists") && stderr(&again).contains("--force"),
        "an existing file is named as one: {}",
        stderr(&again)
    );

    // Corrupt every chunk object, loose or packed (a byte in every 16 hits each object in a
    // pack): restore fails with the integrity exit code and names the chunk.
    let mut objects = Vec::new();
    for dir in ["repo/chunks", "repo/packs"] {
        for d in std::fs::read_dir(e.p(dir)).into_iter().flatten().flatten() {
            for f in std::fs::read_dir(d.path()).unwrap().flatten() {
                objects.push(f.path());
            }
        }
    }
    assert!(!objects.is_empty());
    for c in &objects {
        let mut b = std::fs::read(c).unwrap();
        for i in (0..b.len()).step_by(16) {
            b[i] ^= 0xff;
        }
        std::fs::write(c, b).unwrap();
    }
    let bad = e.run(&[
        "export",
        "latest",
        "dump",
        "-o",
        e.p("dump.sql").to_str().unwrap(),
    ]);
    assert_eq!(bad.status.code(), Some(6), "{}", stderr(&bad));
    assert!(
        stderr(&bad).contains("chunk") && stderr(&bad).contains("dump"),
        "{}",
        stderr(&bad)
    );
    assert!(
        !e.p("dump.sql").exists(),
        "no unverified output file is left"
    );
}

/// A damaged last chunk: the items before it are restored and named, the failed one is named
/// with what was left at its target, and the exit code is the integrity one.
#[tokio::test]
async fn a_failed_item_is_named_with_what_was_restored_before_it() {
    let e = setup().await;
    let mut packs = Vec::new();
    for d in std::fs::read_dir(e.p("repo/packs")).unwrap().flatten() {
        for f in std::fs::read_dir(d.path()).unwrap().flatten() {
            packs.push(f.path());
        }
    }
    assert_eq!(packs.len(), 1, "both items' small chunks share one pack");
    // Chunks are packed in stream order: the command item's chunk is the last object.
    let mut data = std::fs::read(&packs[0]).unwrap();
    let last = data.len() - 1;
    data[last] ^= 1;
    std::fs::write(&packs[0], &data).unwrap();
    let out = e.p("out");
    let r = e.run(&["run", "latest", "--to", out.to_str().unwrap()]);
    let err = stderr(&r);
    assert_eq!(r.status.code(), Some(6), "{err}");
    assert!(
        err.contains("item dump FAILED") && err.contains("was left as it was"),
        "{err}"
    );
    assert!(err.contains("restored and verified: site"), "{err}");
    assert!(out.join("site/index.html").exists());
}

/// A repository whose volume `site` holds `mib` MiB of incompressible data (a restore that
/// takes long enough to be interrupted in the middle).
async fn setup_big(mib: usize) -> Env {
    let e = setup().await;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut data = vec![0u8; mib << 20];
    for w in data.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        w.copy_from_slice(&x.to_le_bytes());
    }
    std::fs::write(e.p("site/big.bin"), data).unwrap();
    let repo = e.repo().await;
    let site: Vec<Box<dyn Source>> = vec![Box::new(VolumeSource::new(
        "site",
        e.p("site"),
        VolumeOptions::default(),
    ))];
    backup(&repo, site, &BackupOptions::default())
        .await
        .unwrap();
    e
}

/// Hidden `.site.lifeboat-*` siblings of the restore target `out/site`.
fn leftovers(out: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(out)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".site.lifeboat-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Starts `run latest --only site --to OUT` and sends `signal` once the partial copy exists
/// and holds data; returns the finished process's output.
fn restore_killed_midway(e: &Env, signal: &str) -> Output {
    let out = e.p("out");
    std::fs::create_dir_all(&out).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_lifeboat-restore"))
        .args([
            "run",
            "latest",
            "--only",
            "site",
            "--to",
            out.to_str().unwrap(),
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("LIFEBOAT_REPOSITORY", e.p("repo"))
        .env("LIFEBOAT_PASSWORD", "hunter2")
        .env("LIFEBOAT_CACHE_DIR", e.p("cache"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    let midway = loop {
        let partial = leftovers(&out)
            .first()
            .map(|n| out.join(n).join("big.bin"))
            .and_then(|p| std::fs::metadata(p).ok())
            .is_some_and(|m| m.len() > 1 << 20);
        if partial || t0.elapsed() > std::time::Duration::from_secs(30) {
            break partial;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    };
    assert!(midway, "the restore wrote a partial copy to interrupt");
    let killed = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    child.wait_with_output().unwrap()
}

#[tokio::test]
async fn an_interrupted_restore_removes_its_partial_copy_and_says_so() {
    let e = setup_big(96).await;
    for signal in ["-INT", "-TERM"] {
        let r = restore_killed_midway(&e, signal);
        assert!(!r.status.success(), "{signal}: the restore was interrupted");
        let err = stderr(&r);
        assert!(err.contains("interrupted by SIG"), "{signal}: {err}");
        assert!(
            err.contains("partial copy next to")
                && err.contains("was removed and the target left as it was"),
            "{signal}: {err}"
        );
        assert_eq!(
            leftovers(&e.p("out")),
            Vec::<String>::new(),
            "{signal}: {err}"
        );
        assert!(
            !e.p("out/site").exists(),
            "{signal}: the target was not created"
        );
    }
}

#[tokio::test]
async fn the_next_restore_removes_what_a_killed_one_left_and_names_it() {
    let e = setup_big(96).await;
    let r = restore_killed_midway(&e, "-KILL");
    assert!(!r.status.success());
    let stale = leftovers(&e.p("out"));
    assert_eq!(stale.len(), 1, "SIGKILL leaves the partial copy: {stale:?}");
    let next = e.run(&[
        "run",
        "latest",
        "--only",
        "site",
        "--to",
        e.p("out").to_str().unwrap(),
    ]);
    assert!(next.status.success(), "{}", stderr(&next));
    let said = String::from_utf8_lossy(&next.stdout);
    assert!(
        said.contains(&stale[0]) && said.contains("left by an interrupted restore"),
        "names what it removed: {said}"
    );
    assert_eq!(leftovers(&e.p("out")), Vec::<String>::new());
    assert_eq!(
        std::fs::read(e.p("out/site/big.bin")).unwrap(),
        std::fs::read(e.p("site/big.bin")).unwrap()
    );
}

#[tokio::test]
async fn latest_is_this_hosts_newest_snapshot_holding_the_items_asked_for() {
    let e = setup().await;
    let repo = e.repo().await;
    let full = repo.snapshots().await.unwrap()[0].id.to_hex();
    // A partial run here, then another host's full run.
    let dump: Vec<Box<dyn Source>> = vec![Box::new(CommandSource::new("dump", "echo partial"))];
    backup(&repo, dump, &BackupOptions::default())
        .await
        .unwrap();
    let mut site: Vec<Box<dyn Source>> = vec![Box::new(VolumeSource::new(
        "site",
        e.p("site"),
        VolumeOptions::default(),
    ))];
    site.push(Box::new(CommandSource::new("dump", "echo other")));
    let elsewhere = BackupOptions {
        host: Some("elsewhere".into()),
        ..Default::default()
    };
    let other = backup(&repo, site, &elsewhere)
        .await
        .unwrap()
        .snapshot
        .to_hex();
    let id_of = |args: &[&str]| -> String {
        let mut all = vec!["show", "--json"];
        all.extend_from_slice(args);
        let o = e.run(&all);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["id"].as_str().unwrap().to_string()
    };
    let partial = id_of(&["latest"]);
    assert!(partial != full && partial != other, "this host's newest");
    assert_eq!(
        id_of(&["latest", "--source", "site"]),
        full,
        "the newest holding site"
    );
    assert_eq!(id_of(&["latest", "--any-host"]), other);
    assert_eq!(id_of(&["latest", "--host", "elsewhere"]), other);
    let plan = e.run(&[
        "plan",
        "latest",
        "--only",
        "site",
        "--to",
        "/nonexistent",
        "--json",
    ]);
    let p: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(p["snapshot"].as_str().unwrap(), full, "{p}");
    let listed = e.run(&["list", "--host", "elsewhere", "--json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(rows.len(), 1);
    let nobody = e.run(&["show", "latest", "--host", "nobody"]);
    assert_eq!(nobody.status.code(), Some(1));
    let err = stderr(&nobody);
    assert!(
        err.contains("of host nobody") && err.contains("elsewhere") && err.contains("--any-host"),
        "{err}"
    );
}

#[tokio::test]
async fn wal_fetch_prefetches_the_next_segments_and_exits_1_for_a_file_the_archive_lacks() {
    use backup_core::codec::ObjectType;
    use backup_core::engines::postgres::wal::header::synthetic_segment;
    use backup_core::engines::postgres::wal::{ClusterId, WalName, push_one};
    use backup_core::store::PutMode;
    let e = setup().await;
    let repo = e.repo().await;
    let cluster = ClusterId(5);
    let name = |i: u32| WalName::parse(&format!("0000000100000000000000{i:02X}")).unwrap();
    let segs: Vec<Vec<u8>> = (1..=6)
        .map(|i| synthetic_segment(&name(i), cluster, 1 << 20, i as u8))
        .collect();
    for (i, seg) in segs.iter().enumerate() {
        assert!(
            !push_one(&repo, cluster, &name(i as u32 + 1), seg)
                .await
                .unwrap()
        );
    }
    let history = WalName::parse("00000002.history").unwrap();
    push_one(
        &repo,
        cluster,
        &history,
        b"1\t0/3000000\tno recovery target specified\n",
    )
    .await
    .unwrap();
    // A data directory as recovery sees it: its pg_control names the cluster.
    std::fs::create_dir_all(e.p("data/global")).unwrap();
    std::fs::create_dir_all(e.p("data/pg_wal")).unwrap();
    std::fs::write(e.p("data/global/pg_control"), 5u64.to_le_bytes()).unwrap();
    let dest = e.p("data/pg_wal/RECOVERYXLOG");
    let fetch = |n: &str| e.run(&["--json", "wal", "fetch", n, dest.to_str().unwrap()]);
    let first = fetch(name(1).as_str());
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(std::fs::read(&dest).unwrap() == segs[0]);
    // A worker fetches what follows, up to the end of the archive, into the spool.
    let spool = e.p("data/pg_wal/.lifeboat-prefetch");
    let t0 = std::time::Instant::now();
    let spooled = || {
        let mut v: Vec<String> = std::fs::read_dir(&spool)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    while spooled().len() < 5 {
        assert!(t0.elapsed().as_secs() < 30, "prefetched: {:?}", spooled());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(
        spooled(),
        (2..=6).map(|i| name(i).to_string()).collect::<Vec<_>>()
    );
    for i in 2..=6 {
        let out = fetch(name(i).as_str());
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["prefetched"], true, "{v}");
        assert!(std::fs::read(&dest).unwrap() == segs[i as usize - 1], "{i}");
    }
    assert!(spooled().is_empty());
    let missing = fetch(name(7).as_str());
    assert_eq!(missing.status.code(), Some(1), "{}", stderr(&missing));
    let hist = e.p("data/pg_wal/RECOVERYHISTORY");
    let out = e.run(&["wal", "fetch", "00000002.history", hist.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Anything but a missing file stops recovery (exit > 125) instead of ending it early.
    let bad = e.run(&["wal", "fetch", "pg_wal/000000010000000000000008", "x"]);
    assert_eq!(bad.status.code(), Some(126), "{}", stderr(&bad));
    let wrong_key = e.run(&[
        "wal",
        "fetch",
        "--password-command",
        "echo nope",
        name(1).as_str(),
        "y",
    ]);
    assert!(
        wrong_key.status.code().unwrap() > 125,
        "{}",
        stderr(&wrong_key)
    );

    // WAL archived by Lifeboat before the per-cluster layout (wal/<timeline>/<name>, bound
    // to the name alone) is still fetched.
    let old = name(9);
    let sealed = repo
        .keys()
        .seal(ObjectType::Wal, old.as_str().as_bytes(), b"old layout", 3);
    repo.store()
        .put(&format!("wal/00000001/{old}"), sealed, PutMode::CreateOnly)
        .await
        .unwrap();
    let out = e.run(&[
        "wal",
        "fetch",
        "--prefetch",
        "0",
        old.as_str(),
        e.p("old").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(e.p("old")).unwrap(), b"old layout");
    // A segment there is handed only to its own cluster.
    let seg10 = synthetic_segment(&name(10), cluster, 1 << 20, 10);
    let sealed = repo
        .keys()
        .seal(ObjectType::Wal, name(10).as_str().as_bytes(), &seg10, 3);
    repo.store()
        .put(
            &format!("wal/00000001/{}", name(10)),
            sealed,
            PutMode::CreateOnly,
        )
        .await
        .unwrap();
    let fetch_as = |c: &str| {
        e.run(&[
            "wal",
            "fetch",
            "--prefetch",
            "0",
            "--cluster",
            c,
            name(10).as_str(),
            e.p("ten").to_str().unwrap(),
        ])
    };
    assert_eq!(
        fetch_as("6").status.code(),
        Some(1),
        "another cluster's segment is not handed out"
    );
    assert!(fetch_as("5").status.success());
    assert!(std::fs::read(e.p("ten")).unwrap() == seg10);
    // Outside a data directory, with more than one cluster in the archive, --cluster decides.
    push_one(&repo, ClusterId(6), &history, b"other")
        .await
        .unwrap();
    let out = e.run(&[
        "wal",
        "fetch",
        "00000002.history",
        e.p("h").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(126), "{}", stderr(&out));
    assert!(stderr(&out).contains("--cluster"), "{}", stderr(&out));
    let out = e.run(&[
        "wal",
        "fetch",
        "--cluster",
        "6",
        "00000002.history",
        e.p("h").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(e.p("h")).unwrap(), b"other");
}
