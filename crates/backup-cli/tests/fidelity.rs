//! A volume restores with every attribute its tree had, as `find -printf`, `getfattr`,
//! `getfacl` and the allocated blocks see them: odd and long names, nanosecond mtimes,
//! extended attributes, POSIX ACLs (a mask wider than the group entry), a file capability,
//! hard links, symlinks, a FIFO, a device node, a sparse file, empty directories. And a file
//! that cannot be read is left out and named, not a failed night.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Command, Output};

use common::{Local as Env, stderr};

fn sh(script: &str, dir: &Path) -> String {
    let out = Command::new("sh")
        .args(["-c", script])
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("sh: {e}"));
    assert!(
        out.status.success(),
        "`{script}` in {}: {}",
        dir.display(),
        stderr(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn is_root() -> bool {
    sh("id -u", Path::new("/")).trim() == "0"
}

/// A tree with everything a restore can lose.
fn build_tree(root: &Path) {
    let t = |rel: &str| root.join(rel);
    for d in ["odd", "empty/nested", "acl-dir", "deep"] {
        std::fs::create_dir_all(t(d)).unwrap();
    }
    std::fs::write(t("odd/sp ace"), "space").unwrap();
    std::fs::write(t("odd/tab\tname"), "tab").unwrap();
    std::fs::write(t("odd/ünïcödé"), "unicode").unwrap();
    std::fs::write(
        root.join(OsStr::from_bytes(b"odd/latin1-\xe9t\xe9")),
        "not utf-8",
    )
    .unwrap();
    std::fs::write(t(&format!("odd/{}", "n".repeat(250))), "long name").unwrap();
    let deep = format!("deep/{}", ["segment-of-a-long-path"; 8].join("/"));
    std::fs::create_dir_all(t(&deep)).unwrap();
    std::fs::write(t(&format!("{deep}/leaf")), "over 100 bytes of path").unwrap();
    std::fs::write(t("plain"), "plain file\n").unwrap();
    std::fs::hard_link(t("plain"), t("plain.hardlink")).unwrap();
    std::os::unix::fs::symlink("plain", t("link")).unwrap();
    std::os::unix::fs::symlink("nowhere/at/all", t("dangling")).unwrap();
    // 100 MiB with one byte of data in the middle.
    let f = std::fs::File::create(t("sparse.img")).unwrap();
    f.set_len(100 << 20).unwrap();
    std::os::unix::fs::FileExt::write_at(&f, b"x", 50 << 20).unwrap();
    std::fs::write(t("acl-dir/shared"), "group may read, the mask allows more").unwrap();
    std::fs::write(t("setuid"), "#!/bin/sh\n").unwrap();
    sh(
        "chmod 4755 setuid && chmod 0600 plain && chmod 0700 odd \
         && mkfifo fifo && chmod 0640 fifo \
         && setfattr -n user.comment -v 'hello world' plain \
         && setfattr -n user.binary -v 0x00ff10 odd \
         && setfacl -m u:nobody:rwx,g::r--,m::rwx acl-dir/shared \
         && setfacl -d -m u:nobody:r-x acl-dir",
        root,
    );
    if is_root() {
        sh(
            "mknod null-device c 1 3 && chown 1234:5678 plain \
             && setcap cap_net_bind_service=+ep setuid \
             && echo named > owned && chown nobody:nogroup owned",
            root,
        );
    }
    // Sub-second mtimes on everything, directories last (writing into them changes theirs).
    sh(
        "find . -depth -print0 | xargs -0 touch -h -d '@1709210096.123456789'",
        root,
    );
}

/// What the tools see of a tree, in one text: `find -printf` (with allocated blocks for
/// regular files), `getfattr` of every entry and `getfacl` of files and directories.
fn listing(root: &Path) -> String {
    let find = sh(
        "find . -printf '%p %m %s %T@ %y %l %U %G %n\\n' | LC_ALL=C sort",
        root,
    );
    let blocks = sh("find . -type f -printf '%p %b\\n' | LC_ALL=C sort", root);
    let xattrs = sh(
        "find . -print0 | LC_ALL=C sort -z | xargs -0 getfattr -h -d -m - -e hex 2>/dev/null",
        root,
    );
    let acls = sh(
        "find . \\( -type f -o -type d \\) -print0 | LC_ALL=C sort -z | xargs -0 getfacl -p 2>/dev/null",
        root,
    );
    format!("{find}\n--- blocks\n{blocks}\n--- xattrs\n{xattrs}\n--- acls\n{acls}")
}

#[test]
fn every_attribute_of_a_tree_comes_back() {
    let e = Env::new();
    let src = e.p("src");
    build_tree(&src);
    let vol = format!("tree={}", src.display());
    let run = e.run(&["run", "--volume", &vol]);
    assert!(run.status.success(), "{}", stderr(&run));
    let to = e.p("restored");
    let out = e.restore(&["run", "latest", "--to", to.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (want, got) = (listing(&src), listing(&to.join("tree")));
    // The source listing holds what is compared (a tool that printed nothing would make
    // two empty listings equal).
    let mut expected = vec![
        "user.comment=",
        "user.binary=0x00ff10",
        "system.posix_acl_access=",
        "system.posix_acl_default=",
        "./fifo 640 0 1709210096.1234567890 p",
        "./dangling 777",
        "./plain 600 11 1709210096.1234567890 f  ",
    ];
    if is_root() {
        expected.extend([
            "security.capability=",
            "./null-device 644 0 1709210096.1234567890 c",
        ]);
    }
    for needle in expected {
        assert!(
            want.contains(needle),
            "source listing lacks {needle:?}:\n{want}"
        );
    }
    if want != got {
        let diff: Vec<String> = want
            .lines()
            .zip(got.lines())
            .filter(|(a, b)| a != b)
            .map(|(a, b)| format!("- {a}\n+ {b}"))
            .collect();
        panic!("restored tree differs:\n{}\n\n{got}", diff.join("\n"));
    }
    // The security case: the owning group's entry stays read-only under a wider mask.
    let acl = sh("getfacl -p acl-dir/shared", &to.join("tree"));
    assert!(
        acl.contains("group::r--") && acl.contains("mask::rwx"),
        "{acl}"
    );
    if is_root() {
        // Names beside the ids, as tar writes them (a restore elsewhere maps them back)…
        let tar = e.p("tree.tar");
        let export = e.restore(&[
            "export",
            "latest",
            "tree",
            "--output",
            tar.to_str().unwrap(),
        ]);
        assert!(export.status.success(), "{}", stderr(&export));
        let listed = sh(&format!("tar -tvf {}", tar.display()), Path::new("/"));
        assert!(
            listed
                .lines()
                .any(|l| l.contains("nobody/nogroup") && l.ends_with(" owned")),
            "{listed}"
        );
        // …and `--numeric-owner` restores the stored ids (the same here).
        let numeric = e.p("numeric");
        let out = e.restore(&[
            "run",
            "latest",
            "--numeric-owner",
            "--to",
            numeric.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(listing(&numeric.join("tree")), want);
    }
    let sparse_kib: u64 = sh("du -k sparse.img | cut -f1", &to.join("tree"))
        .trim()
        .parse()
        .unwrap();
    assert!(
        sparse_kib <= 64,
        "sparse file came back allocated: {sparse_kib} KiB"
    );
}

#[test]
fn an_unreadable_file_is_left_out_and_named_and_the_rest_is_kept() {
    let e = Env::new();
    let src = e.p("src");
    std::fs::create_dir_all(src.join("locked")).unwrap();
    std::fs::write(src.join("ok.txt"), "kept").unwrap();
    std::fs::write(src.join("secret"), "not for us").unwrap();
    std::fs::write(src.join("locked/inside"), "not for us either").unwrap();
    sh("chmod 000 secret locked", &src);
    // Root reads anything: the walk runs as an unprivileged user then.
    let backup = |args: &[&str]| -> Output {
        let mut all = vec![env!("CARGO_BIN_EXE_lifeboat-backup")];
        all.extend_from_slice(args);
        if is_root() {
            // Everything the run needs is nobody's; `secret` and `locked` too, at mode 000.
            sh(
                &format!("chown -R nobody {}", e.dir.path().display()),
                Path::new("/"),
            );
            let mut c = Command::new("runuser");
            e.with_env(c.args(["-u", "nobody", "--"]).args(&all))
                .output()
                .unwrap()
        } else {
            e.run(args)
        }
    };
    let vol = format!("tree={}", src.display());
    let out = backup(&["run", "--volume", &vol]);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(8),
        "data missing, snapshot kept: {err}"
    );
    assert!(
        err.contains("source tree: 2 entries could not be read")
            && err.contains("secret: Permission denied"),
        "{err}"
    );
    let show = e.restore(&["show", "latest", "--json"]);
    assert!(show.status.success(), "{}", stderr(&show));
    let v: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    let unreadable = &v["items"][0]["facts"]["unreadable"];
    assert_eq!(unreadable.as_array().map(Vec::len), Some(2), "{v}");

    // `unreadable = "fail"`: the item, and so the run, fails with no snapshot.
    let cfg = e.p("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[repository]\nurl = \"{}\"\npassword_file = \"{}\"\n\n[sources.tree]\ntype = \"volume\"\npath = \"{}\"\nunreadable = \"fail\"\n",
            e.p("repo").display(),
            e.p("pw").display(),
            src.display()
        ),
    )
    .unwrap();
    let strict = backup(&["-c", cfg.to_str().unwrap(), "run"]);
    assert_eq!(strict.status.code(), Some(1), "{}", stderr(&strict));
    assert!(
        stderr(&strict).contains("unreadable = \"skip\""),
        "{}",
        stderr(&strict)
    );
}
