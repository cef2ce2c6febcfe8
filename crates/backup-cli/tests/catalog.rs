//! File catalogs end to end: `ls`, `find` over ten snapshots, `diff`, `dump` and
//! `restore run --include` against what the source trees really were; GC keeps catalogs;
//! one file from a large volume in the S3 test server fetches a small share of it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::{Env, Local, json, random_file, stderr, stdout, summary};

/// path → (size, mtime in ns) of every file below `root`.
fn files(root: &Path) -> BTreeMap<String, (u64, i64)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let md = std::fs::symlink_metadata(e.path()).unwrap();
            let rel = e
                .path()
                .strip_prefix(root)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            if md.is_dir() {
                stack.push(e.path());
            } else {
                out.insert(
                    rel,
                    (md.len(), md.mtime() * 1_000_000_000 + md.mtime_nsec()),
                );
            }
        }
    }
    out
}

/// Every path (files and directories) below `root`, relative.
fn paths(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.insert(p.strip_prefix(root).unwrap().to_str().unwrap().to_string());
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

/// Round `i`'s edit of the tree: rewrite one file, add one, remove one, leave the rest.
fn edit(src: &Path, round: usize) {
    let f = |n: usize| src.join(format!("d{}/f{n}.txt", n % 3));
    if round == 0 {
        for n in 0..12 {
            std::fs::create_dir_all(f(n).parent().unwrap()).unwrap();
            std::fs::write(f(n), format!("file {n} first\n")).unwrap();
        }
        random_file(&src.join("big.bin"), 7, 3 << 20);
        return;
    }
    // A new size each time, so every version differs from every other.
    std::fs::write(f(round % 5), "x".repeat(100 + round)).unwrap();
    std::fs::write(f(100 + round), format!("added in round {round}\n")).unwrap();
    if round.is_multiple_of(3) {
        std::fs::remove_file(f(round / 3 + 5)).unwrap();
    }
}

fn diff_of(a: &BTreeMap<String, (u64, i64)>, b: &BTreeMap<String, (u64, i64)>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (p, v) in a {
        match b.get(p) {
            None => out.insert(format!("- v/{p}")),
            Some(w) if w != v => out.insert(format!("M v/{p}")),
            Some(_) => false,
        };
    }
    for p in b.keys().filter(|p| !a.contains_key(*p)) {
        out.insert(format!("+ v/{p}"));
    }
    out
}

#[test]
fn find_over_ten_snapshots_and_diff_name_exactly_what_the_trees_held() {
    let env = Local::new();
    let src = env.p("src");
    let mut ids = Vec::new();
    let mut trees = Vec::new();
    for round in 0..10 {
        edit(&src, round);
        let out = env.run(&["run", "--volume", &format!("v={}", src.display()), "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        ids.push(summary(&out)["snapshot"].as_str().unwrap().to_string());
        trees.push(files(&src));
    }

    // find: for every path and version (size, mtime), exactly the snapshots that held it.
    let out = env.restore(&["find", "f*.txt", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut found: BTreeMap<(String, u64, i64), BTreeSet<String>> = BTreeMap::new();
    for h in json(&out)["hits"].as_array().unwrap() {
        let e = &h["entry"];
        let key = (
            e["path"].as_str().unwrap().to_string(),
            e["size"].as_u64().unwrap_or(0),
            e["mtime_ns"].as_i64().unwrap(),
        );
        found
            .entry(key)
            .or_default()
            .insert(h["snapshot"].as_str().unwrap().to_string());
    }
    let mut want: BTreeMap<(String, u64, i64), BTreeSet<String>> = BTreeMap::new();
    for (id, tree) in ids.iter().zip(&trees) {
        for (p, (size, mtime)) in tree.iter().filter(|(p, _)| p.ends_with(".txt")) {
            want.entry((p.clone(), *size, *mtime))
                .or_default()
                .insert(id.clone());
        }
    }
    assert!(
        want.len() > 20,
        "the model has many versions: {}",
        want.len()
    );
    assert!(want.values().any(|s| s.len() == 10) && want.values().any(|s| s.len() == 1));
    assert_eq!(found, want);

    // diff: exactly the files that changed, between neighbours and across several rounds.
    for (a, b) in [(0, 1), (2, 6), (0, 9)] {
        let out = env.restore(&["diff", &ids[a], &ids[b]]);
        assert!(out.status.success(), "{}", stderr(&out));
        let got: BTreeSet<String> = stdout(&out)
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(got, diff_of(&trees[a], &trees[b]), "diff {a} {b}");
    }

    // ls: every path of the last tree, from the catalog alone.
    let out = env.restore(&["ls", "latest", "v", "--recursive", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listed: BTreeSet<String> = json(&out)
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, paths(&src));

    // Forget the first five and collect garbage: the others' catalogs stay readable.
    let out = env.run(&["forget", "--keep-last", "5"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.run(&["prune", "--grace", "0s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.run(&["check", "--read-data"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let out = env.restore(&["diff", &ids[5], &ids[9]]);
    assert!(out.status.success(), "{}", stderr(&out));
    let got: BTreeSet<String> = stdout(&out)
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(got, diff_of(&trees[5], &trees[9]));
    let out = env.restore(&["ls", &ids[0], "v"]);
    assert!(!out.status.success(), "a forgotten snapshot is gone");
}

#[test]
fn dump_and_include_restore_exactly_the_chosen_files_and_what_they_need() {
    let env = Local::new();
    let src = env.p("src");
    std::fs::create_dir_all(src.join("etc/app")).unwrap();
    std::fs::create_dir_all(src.join("data")).unwrap();
    std::fs::write(src.join("etc/app/a.conf"), "a = 1\n").unwrap();
    std::fs::write(src.join("etc/app/b.txt"), "b\n").unwrap();
    random_file(&src.join("data/big.bin"), 3, 5 << 20);
    random_file(&src.join("data/other.bin"), 4, 5 << 20);
    std::fs::hard_link(src.join("data/big.bin"), src.join("etc/big-link")).unwrap();
    std::fs::set_permissions(
        src.join("etc/app"),
        std::os::unix::fs::PermissionsExt::from_mode(0o750),
    )
    .unwrap();
    let out = env.run(&["run", "--volume", &format!("v={}", src.display())]);
    assert!(out.status.success(), "{}", stderr(&out));

    // dump: one file's bytes; a hard link's are its file's.
    for p in ["data/big.bin", "etc/big-link", "etc/app/a.conf"] {
        let out = env.restore(&["dump", "latest", "v", p]);
        assert!(out.status.success(), "{}", stderr(&out));
        let want = std::fs::read(src.join(p)).unwrap();
        assert!(
            out.stdout == want,
            "dump {p}: {} bytes, want {}",
            out.stdout.len(),
            want.len()
        );
    }
    // A directory as tar.
    let out = env.restore(&[
        "dump",
        "latest",
        "v",
        "etc/app",
        "-o",
        env.p("app.tar").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let tar = std::process::Command::new("tar")
        .arg("-tf")
        .arg(env.p("app.tar"))
        .output()
        .unwrap();
    let names: BTreeSet<_> = String::from_utf8_lossy(&tar.stdout)
        .lines()
        .map(|l| l.trim_end_matches('/').to_string())
        .collect();
    assert_eq!(
        names,
        ["etc/app", "etc/app/a.conf", "etc/app/b.txt"]
            .map(String::from)
            .into()
    );
    let missing = env.restore(&["dump", "latest", "v", "etc/nope"]);
    assert!(
        !missing.status.success() && stderr(&missing).contains("no entry etc/nope"),
        "{}",
        stderr(&missing)
    );

    // --include: the chosen files, the directories above them (with their modes), and the
    // file a chosen hard link names — nothing else.
    let to = env.p("out");
    let out = env.restore(&[
        "run",
        "latest",
        "--include",
        "*.conf",
        "--include",
        "etc/big-link",
        "--to",
        to.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let restored = paths(&to.join("v"));
    let want: BTreeSet<String> = [
        "etc",
        "etc/app",
        "etc/app/a.conf",
        "etc/big-link",
        "data",
        "data/big.bin",
    ]
    .map(String::from)
    .into();
    assert_eq!(restored, want);
    for p in ["etc/app/a.conf", "etc/big-link", "data/big.bin"] {
        assert_eq!(
            std::fs::read(to.join("v").join(p)).unwrap(),
            std::fs::read(src.join(p)).unwrap(),
            "{p}"
        );
    }
    let mode = std::fs::metadata(to.join("v/etc/app")).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o750);
    let sel = &summary(&out)["items"][0]["selection"];
    assert_eq!(sel["entries"], 2, "{sel}");
    assert!(
        sel["chunks_fetched"].as_u64().unwrap() < sel["chunks_total"].as_u64().unwrap(),
        "{sel}"
    );

    // Into an occupied target with --force: refused, nothing touched.
    let again = env.restore(&[
        "run",
        "latest",
        "--include",
        "*.conf",
        "--to",
        to.to_str().unwrap(),
        "--force",
        "--yes",
    ]);
    assert!(
        !again.status.success() && stderr(&again).contains("only the selected files"),
        "{}",
        stderr(&again)
    );
    assert_eq!(paths(&to.join("v")), want);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_file_from_a_large_volume_on_s3_fetches_under_5_percent_of_it() {
    let env = Env::s3(None).await;
    let src = env.p("vol");
    std::fs::create_dir_all(&src).unwrap();
    for n in 0..20 {
        random_file(&src.join(format!("big{n:02}.bin")), 100 + n, 20 << 20);
    }
    random_file(&src.join("wanted.bin"), 42, 10 << 20);
    for n in 0..2000 {
        std::fs::write(
            src.join(format!("small{n}.txt")),
            format!("small file {n}\n"),
        )
        .unwrap();
    }
    let out = env.run(&[
        "run",
        "--volume",
        &format!("vol={}", src.display()),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stored = summary(&out)["items"][0]["stored_bytes"].as_u64().unwrap();
    assert!(stored > 400 << 20, "stored {stored}");

    let file = env.p("wanted.out");
    let out = env.restore(&[
        "dump",
        "latest",
        "vol",
        "wanted.bin",
        "-o",
        file.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(std::fs::read(&file).unwrap() == std::fs::read(src.join("wanted.bin")).unwrap());
    let report: serde_json::Value =
        serde_json::from_str(stderr(&out).lines().last().unwrap()).unwrap();
    let fetched = report["bytes_fetched"].as_u64().unwrap();
    assert!(
        fetched >= 10 << 20,
        "the file's own bytes were fetched: {fetched}"
    );
    assert!(
        fetched * 20 <= stored,
        "dump fetched {fetched} of {stored} stored bytes"
    );

    let to = env.p("restored");
    let out = env.restore(&[
        "run",
        "latest",
        "--include",
        "wanted.bin",
        "--to",
        to.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        std::fs::read(to.join("vol/wanted.bin")).unwrap()
            == std::fs::read(src.join("wanted.bin")).unwrap()
    );
    let fetched = summary(&out)["items"][0]["selection"]["bytes_fetched"]
        .as_u64()
        .unwrap();
    assert!(
        fetched * 20 <= stored,
        "--include fetched {fetched} of {stored} stored bytes"
    );
    assert_eq!(paths(&to.join("vol")), ["wanted.bin".to_string()].into());
}

/// Every loose chunk object of the repository.
fn loose_chunks(repo: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for d in std::fs::read_dir(repo.join("chunks")).unwrap() {
        for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
            out.push(f.unwrap().path());
        }
    }
    out.sort();
    out
}

#[test]
fn partial_restore_of_a_damaged_volume_restores_every_file_the_damage_does_not_touch() {
    let env = Local::new();
    let src = env.p("src");
    std::fs::create_dir_all(src.join("big")).unwrap();
    for n in 0..6 {
        random_file(&src.join(format!("big/f{n}.bin")), 50 + n, 3 << 20);
    }
    for n in 0..200 {
        std::fs::write(src.join(format!("small{n}.txt")), format!("{n}\n")).unwrap();
    }
    std::fs::hard_link(src.join("big/f0.bin"), src.join("link-to-f0")).unwrap();
    let out = env.run(&["run", "--volume", &format!("v={}", src.display())]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Loose chunks are the big files' data (small files are packed): losing one costs one file.
    let chunks = loose_chunks(&env.p("repo"));
    assert!(chunks.len() >= 6, "{chunks:?}");
    std::fs::remove_file(&chunks[chunks.len() / 2]).unwrap();

    // Without --partial: the item fails, nothing is placed.
    let to = env.p("out");
    let out = env.restore(&["run", "latest", "--to", to.to_str().unwrap()]);
    assert!(
        !out.status.success() && stderr(&out).contains("missing"),
        "{}",
        stderr(&out)
    );
    assert!(!to.join("v").exists());

    let out = env.restore(&[
        "run",
        "latest",
        "--to",
        to.to_str().unwrap(),
        "--partial",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
    let damaged: Vec<String> = summary(&out)["items"][0]["damaged"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    let lost: Vec<&String> = damaged.iter().filter(|p| p.starts_with("big/")).collect();
    assert_eq!(lost.len(), 1, "one big file lost: {damaged:?}");
    if lost[0] == "big/f0.bin" {
        assert!(damaged.contains(&"link-to-f0".to_string()), "{damaged:?}");
    }
    // Everything else is back, exactly; the lost file is absent, not torn.
    let restored = files(&to.join("v"));
    for (p, _) in files(&src) {
        if damaged.contains(&p) {
            assert!(!restored.contains_key(&p), "{p} must not be restored");
        } else {
            assert_eq!(
                std::fs::read(to.join("v").join(&p)).unwrap(),
                std::fs::read(src.join(&p)).unwrap(),
                "{p}"
            );
        }
    }
    assert_eq!(restored.len() + damaged.len(), files(&src).len());
}
