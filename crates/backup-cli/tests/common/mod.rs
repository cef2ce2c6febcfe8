//! What the binary's integration tests share: a repository with its config (local or the S3
//! test server, optionally behind a proxy that can go down), a PostgreSQL server archiving
//! into it through the built binary, synthetic WAL, and polling helpers.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backup_core::config::ConfigFile;
use backup_core::engines::postgres::scratch::{ScratchPostgres, give_to_postgres};
use backup_core::engines::postgres::wal::header::synthetic_segment;
use backup_core::engines::postgres::wal::{ClusterId, WalName};
use backup_core::repository::Repository;
use backup_core::scratch::s3::ScratchS3;
use backup_core::store::{S3Options, S3Store};

/// `len` incompressible bytes (xorshift from `seed`) written to `path`.
pub fn random_file(path: &Path, seed: u64, len: usize) {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut buf = Vec::with_capacity(len);
    while buf.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(path, &buf[..len]).unwrap();
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The JSON a successful command printed (for run, prune and restore, the summary line that
/// ends their JSON lines).
pub fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|_| summary(o))
}

/// The last of a long command's JSON lines: its summary, whatever its exit code.
pub fn summary(o: &Output) -> serde_json::Value {
    let text = stdout(o);
    let last = text
        .lines()
        .last()
        .unwrap_or_else(|| panic!("no output; stderr: {}", stderr(o)));
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(v["message_type"], "summary", "{text}");
    v
}

/// `lifeboat-restore`, built next to this crate's binary by `cargo test --workspace`.
pub fn restore_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_lifeboat-backup")).with_file_name("lifeboat-restore");
    assert!(
        p.exists(),
        "{} not built: run the tests with `cargo test --workspace` (the restored server's restore_command runs it)",
        p.display()
    );
    p
}

/// A repository, its config file and password, all usable by the postgres user.
pub struct Env {
    pub dir: tempfile::TempDir,
    /// The test's own cache (root's), apart from the archiver's in `dir` (the postgres
    /// user's): each must own its lock directory.
    cache: tempfile::TempDir,
    /// The S3 test server (and the proxy in front of it), when the repository is there.
    pub s3: Option<(ScratchS3, Proxy)>,
}

impl Env {
    /// A local repository.
    pub fn new() -> Env {
        let e = Env {
            dir: tempfile::tempdir().unwrap(),
            cache: tempfile::tempdir().unwrap(),
            s3: None,
        };
        e.write_config(&format!("url = \"{}\"\n", e.p("repo").display()), "");
        e.init();
        e
    }

    /// A repository in the S3 test server, reached through a proxy that can be taken down;
    /// short timeouts, so a push fails in seconds while it is down. With `lock_days`, the
    /// bucket has Object Lock and every object that many days of governance retention.
    pub async fn s3(lock_days: Option<u32>) -> Env {
        let s3 = ScratchS3::start().expect("the S3 test server (ministack) must start");
        let mut o = S3Options::from_url("s3://pitr").unwrap();
        o.endpoint = Some(s3.endpoint());
        o.path_style = true;
        o.access_key_id = Some("test".into());
        o.secret_access_key = Some("test".into());
        S3Store::new(o)
            .await
            .unwrap()
            .create_bucket(lock_days.is_some())
            .await
            .unwrap();
        let proxy = Proxy::start(s3.port());
        let e = Env {
            dir: tempfile::tempdir().unwrap(),
            cache: tempfile::tempdir().unwrap(),
            s3: None,
        };
        std::fs::write(e.p("s3-secret"), "test").unwrap();
        let lock = lock_days
            .map(|d| format!("object_lock = {{ mode = \"governance\", days = {d} }}\n"))
            .unwrap_or_default();
        e.write_config(
            "url = \"s3://pitr/repo\"\n",
            &format!(
                "[repository.s3]\nendpoint = \"http://127.0.0.1:{}\"\npath_style = true\naccess_key_id = \"test\"\nsecret_access_key_file = \"{}\"\nconnect_timeout = \"1s\"\nread_timeout = \"5s\"\noperation_timeout = \"4s\"\n{lock}",
                proxy.port,
                e.p("s3-secret").display()
            ),
        );
        let e = Env {
            s3: Some((s3, proxy)),
            ..e
        };
        e.init();
        e
    }

    /// The proxy in front of the S3 test server.
    pub fn proxy(&self) -> &Proxy {
        &self.s3.as_ref().expect("an S3 environment").1
    }

    fn write_config(&self, repo_line: &str, extra: &str) {
        std::fs::write(self.p("pw"), "wal secret\n").unwrap();
        std::fs::write(
            self.p("c.toml"),
            format!(
                "[repository]\n{repo_line}password_file = \"{}\"\n{extra}",
                self.p("pw").display()
            ),
        )
        .unwrap();
    }

    pub fn init(&self) {
        let out = self.run(&["init", "--kdf-memory-mib", "1", "--kdf-iterations", "1"]);
        assert!(out.status.success(), "init: {}", stderr(&out));
        give_to_postgres(self.dir.path()).unwrap();
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(env!("CARGO_BIN_EXE_lifeboat-backup"), args)
    }

    pub fn restore(&self, args: &[&str]) -> Output {
        self.command(restore_bin().to_str().unwrap(), args)
    }

    fn command(&self, program: &str, args: &[&str]) -> Output {
        self.prepare(program, args).output().unwrap()
    }

    fn prepare(&self, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new(program);
        c.arg("--config")
            .arg(self.p("c.toml"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LIFEBOAT_CACHE_DIR", self.cache.path())
            .stdin(Stdio::null());
        c
    }

    /// `lifeboat-backup ARGS…` running in the background, its stderr in `log`.
    pub fn spawn(&self, args: &[&str], log: &Path) -> std::process::Child {
        self.prepare(env!("CARGO_BIN_EXE_lifeboat-backup"), args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap()
    }

    /// A server whose archive_command is this binary pushing into this repository.
    pub fn archiving_server(&self) -> ScratchPostgres {
        self.archiving_server_with("")
    }

    pub fn archiving_server_with(&self, extra: &str) -> ScratchPostgres {
        let archive = format!(
            "LIFEBOAT_CACHE_DIR={} {} --config {} --quiet wal push %p",
            self.p("cache").display(),
            env!("CARGO_BIN_EXE_lifeboat-backup"),
            self.p("c.toml").display()
        );
        ScratchPostgres::start_with(&format!(
            "archive_mode = on\narchive_command = '{archive}'\n{extra}"
        ))
        .unwrap()
    }

    /// A base backup of `pg` named `pg`, with extra `run` flags.
    pub fn base_backup(&self, pg: &ScratchPostgres, extra: &[&str]) {
        let spec = format!("pg={}", pg.url("postgres"));
        let mut args = vec!["run", "--pg-base", &spec];
        args.extend_from_slice(extra);
        let out = self.run(&args);
        assert!(out.status.success(), "base backup: {}", stderr(&out));
        give_to_postgres(self.dir.path()).unwrap();
    }

    /// `lifeboat-restore pitr pg --to-pgdata DIR/data ARGS…`.
    pub fn pitr(&self, dir: &Path, args: &[&str]) -> Output {
        let data = dir.join("data").display().to_string();
        let mut all = vec!["pitr", "pg", "--to-pgdata", data.as_str()];
        all.extend_from_slice(args);
        self.restore(&all)
    }

    /// `pitr … --start` on a free port with its socket in `dir`; the running server.
    pub fn pitr_started(&self, dir: &Path, args: &[&str]) -> (ScratchPostgres, serde_json::Value) {
        let port = backup_core::scratch::free_port().unwrap().to_string();
        let sock = dir.display().to_string();
        let mut all = vec![
            "--json",
            "pitr",
            "pg",
            "--start",
            "--port",
            &port,
            "--socket-dir",
            &sock,
        ];
        let data = dir.join("data").display().to_string();
        all.extend_from_slice(&["--to-pgdata", &data, "--start-timeout", "2m"]);
        all.extend_from_slice(args);
        give_to_postgres(dir).unwrap();
        let out = self.restore(&all);
        assert!(
            out.status.success(),
            "pitr --start {args:?}: {}",
            stderr(&out)
        );
        let report = json(&out);
        let pg = ScratchPostgres::attach(dir, port.parse().unwrap()).unwrap();
        (pg, report)
    }

    /// The repository, opened in this process.
    pub async fn repo(&self) -> Repository {
        let cfg = ConfigFile::load(&self.p("c.toml")).unwrap();
        let flags = backup_core::config::RepoArgs::default();
        let resolved = flags.resolve(Some(&cfg)).unwrap();
        resolved.open().await.unwrap()
    }

    /// `wal status --json`.
    pub fn status(&self) -> serde_json::Value {
        json(&self.run(&["--json", "wal", "status"]))
    }
}

/// `pgbench ARGS… postgres` against `pg`, its output discarded.
pub fn pgbench(pg: &ScratchPostgres, args: &[&str]) -> Command {
    let mut c = Command::new(pg.bin_dir().join("pgbench"));
    c.args([
        "-h",
        "127.0.0.1",
        "-p",
        &pg.port().to_string(),
        "-U",
        "postgres",
    ])
    .args(args)
    .arg("postgres")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    c
}

/// Polls `sql` on `pg` until it prints `want`.
pub fn wait_for(pg: &ScratchPostgres, sql: &str, want: &str, what: &str) {
    let t0 = Instant::now();
    loop {
        let got = pg.psql("postgres", sql).unwrap_or_default();
        if got.trim() == want {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "{what}: {sql} gave {got:?}\n{}",
            pg.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Switches to a new segment and waits until the one just closed is archived.
pub fn switch_and_archive(pg: &ScratchPostgres) -> String {
    let closed = pg
        .psql(
            "postgres",
            "SELECT pg_walfile_name(pg_current_wal_lsn()) FROM (SELECT pg_switch_wal()) s",
        )
        .unwrap()
        .trim()
        .to_string();
    wait_for(
        pg,
        &format!("SELECT coalesce(last_archived_wal >= '{closed}', false) FROM pg_stat_archiver"),
        "t",
        &format!("{closed} is archived"),
    );
    closed
}

/// `now()` of the server as RFC 3339 (a recovery target).
pub fn server_now(pg: &ScratchPostgres) -> String {
    pg.psql(
        "postgres",
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    )
    .unwrap()
    .trim()
    .to_string()
}

/// A `pg_wal` with `n` synthetic 1 MiB segments of `cluster`, distinct content, all marked
/// ready (a 1 MiB segment size keeps the tests small; the archive follows the header).
pub fn fake_pg_wal(dir: &Path, cluster: ClusterId, n: u8) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir.join("archive_status")).unwrap();
    (1..=n)
        .map(|i| {
            let name = WalName::parse(&format!("0000000100000000000000{i:02X}")).unwrap();
            std::fs::write(
                dir.join(name.as_str()),
                synthetic_segment(&name, cluster, 1 << 20, i),
            )
            .unwrap();
            std::fs::write(dir.join("archive_status").join(format!("{name}.ready")), "").unwrap();
            dir.join(name.as_str())
        })
        .collect()
}

/// A TCP proxy to a local port that can refuse service (an S3 endpoint going down and
/// coming back), on threads of its own so that it runs whatever the test blocks on.
pub struct Proxy {
    pub port: u16,
    down: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    pub fn start(to: u16) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let down = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (d, o) = (down.clone(), open.clone());
        std::thread::spawn(move || {
            for client in l.incoming().flatten() {
                if d.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                    continue;
                };
                o.lock().unwrap().push(client.try_clone().unwrap());
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        Proxy { port, down, open }
    }

    /// Refuses new connections and cuts the open ones.
    pub fn go_down(&self) {
        self.down.store(true, Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    pub fn come_back(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 64 << 10];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}

/// A local repository reached through the environment (`LIFEBOAT_REPOSITORY`,
/// `LIFEBOAT_PASSWORD_FILE`, `LIFEBOAT_CACHE_DIR`), no config file: the plain setting of the
/// tests that need nothing else.
pub struct Local {
    pub dir: tempfile::TempDir,
}

impl Local {
    /// A fresh, initialised repository at `repo` with the passphrase in `pw`.
    pub fn new() -> Local {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "correct horse\n").unwrap();
        let e = Local { dir };
        let init = e.run(&["init", "--kdf-memory-mib", "1", "--kdf-iterations", "1"]);
        assert!(init.status.success(), "{}", stderr(&init));
        e
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `cmd` with this repository's environment and nothing else of ours.
    pub fn with_env<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("LIFEBOAT_REPOSITORY", self.p("repo"))
            .env("LIFEBOAT_PASSWORD_FILE", self.p("pw"))
            .env("LIFEBOAT_CACHE_DIR", self.p("cache"))
            .stdin(Stdio::null())
    }

    /// `lifeboat-backup ARGS`.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_lifeboat-backup"));
        self.with_env(c.args(args)).output().unwrap()
    }

    /// `lifeboat-restore ARGS`.
    pub fn restore(&self, args: &[&str]) -> Output {
        let mut c = Command::new(restore_bin());
        self.with_env(c.args(args)).output().unwrap()
    }
}
