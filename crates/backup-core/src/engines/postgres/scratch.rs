//! A throw-away PostgreSQL cluster: `initdb` + `pg_ctl` on a free port, run as the `postgres`
//! user when we are root (initdb and postgres refuse to run as root).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};
use crate::scratch::{free_port, is_root, temp_dir};

/// Server binaries directory: the newest `/usr/lib/postgresql/*/bin` with `initdb`, or PATH.
pub fn server_bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    dirs.sort();
    if let Some((_, d)) = dirs.pop() {
        return Some(d);
    }
    crate::scratch::find_program("initdb", &[]).and_then(|p| p.parent().map(Path::to_path_buf))
}

/// A running scratch cluster. Stopped (immediately) and deleted on drop unless [`keep`](Self::keep).
/// Runs a server program, as the postgres user when we are root (the server refuses root).
fn run_as_postgres(args: &[&str], what: &str) -> Result<()> {
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]);
        c.arg(args[0]);
        c
    } else {
        Command::new(args[0])
    };
    cmd.args(&args[1..]);
    let out = cmd
        .output()
        .map_err(|e| Error::io(format!("running {what}"), e))?;
    if !out.status.success() {
        return Err(Error::SourceFailed {
            item: "scratch postgres".into(),
            detail: format!(
                "{what} failed: {}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            ),
        });
    }
    Ok(())
}

#[derive(Debug)]
pub struct ScratchPostgres {
    dir: PathBuf,
    bin: PathBuf,
    /// Settings appended to the generated `postgresql.auto.conf`.
    extra_conf: String,
    port: u16,
    keep: bool,
    stopped: bool,
}

/// Role with a password, accepted only with scram-sha-256 (for tests of password handling).
pub const PASSWORD_ROLE: &str = "lifeboat_pw";

/// Role whose replication connections use the md5 method (tests of the WAL streamer).
pub const MD5_ROLE: &str = "lifeboat_md5";

impl ScratchPostgres {
    /// Initialises and starts a cluster on a free port.
    pub fn start() -> Result<ScratchPostgres> {
        ScratchPostgres::start_with("")
    }

    /// As [`ScratchPostgres::start`], with settings (`archive_mode = on` …) added to the
    /// server's configuration.
    pub fn start_with(extra_conf: &str) -> Result<ScratchPostgres> {
        let bin = server_bin_dir().ok_or_else(|| Error::Usage(
            "PostgreSQL server binaries (initdb, pg_ctl) not found: install the postgresql package".into(),
        ))?;
        let dir = temp_dir("lifeboat-pg")?;
        let mut pg = ScratchPostgres {
            dir,
            bin,
            extra_conf: extra_conf.to_string(),
            port: 0,
            keep: false,
            stopped: true,
        };
        if is_root() {
            chown_postgres(&pg.dir)?;
        }
        pg.initdb()?;
        // Another process may take the free port between our pick and the server's bind.
        for attempt in 0..5 {
            match pg.start_on_free_port() {
                Ok(()) => {
                    pg.stopped = false;
                    pg.verify_ours()?;
                    return Ok(pg);
                }
                Err(e) if attempt == 4 => return Err(e),
                Err(_) => continue,
            }
        }
        unreachable!("the loop returns")
    }

    /// A streaming standby of this server (`pg_basebackup -R`), started on a free port.
    pub fn standby(&self) -> Result<ScratchPostgres> {
        let dir = temp_dir("lifeboat-standby")?;
        if is_root() {
            chown_postgres(&dir)?;
        }
        let bb = self.bin.join("pg_basebackup").display().to_string();
        let data = dir.join("data").display().to_string();
        let port = self.port.to_string();
        run_as_postgres(
            &[
                &bb,
                "-D",
                &data,
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
            ],
            "pg_basebackup -R",
        )?;
        ScratchPostgres::adopt(&dir)
    }

    /// Starts the cluster in `dir/data` (a restored one) on a free port, leaving its
    /// configuration files as they are (port and sockets are given on the command line);
    /// stopped and removed on drop like any scratch server.
    pub fn adopt(dir: &Path) -> Result<ScratchPostgres> {
        let bin = server_bin_dir().ok_or_else(|| {
            Error::Usage(
                "PostgreSQL server binaries (pg_ctl) not found: install the postgresql package"
                    .into(),
            )
        })?;
        let mut pg = ScratchPostgres {
            dir: dir.to_path_buf(),
            bin,
            extra_conf: String::new(),
            port: free_port()?,
            keep: false,
            stopped: true,
        };
        if is_root() {
            chown_postgres(&pg.dir)?;
        }
        let pg_ctl = pg.bin.join("pg_ctl").display().to_string();
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {}",
            pg.port,
            pg.dir.display()
        );
        run_as_postgres(
            &[
                &pg_ctl,
                "-D",
                &pg.data_dir().display().to_string(),
                "-l",
                &pg.dir.join("server.log").display().to_string(),
                "-o",
                &opts,
                "-w",
                "-t",
                "120",
                "start",
            ],
            "pg_ctl start",
        )?;
        pg.stopped = false;
        Ok(pg)
    }

    /// A server already running on the cluster in `dir/data` (started by `lifeboat-restore
    /// pitr --start`, say) on `port`: stopped and removed on drop like any scratch server.
    pub fn attach(dir: &Path, port: u16) -> Result<ScratchPostgres> {
        let bin = server_bin_dir().ok_or_else(|| {
            Error::Usage(
                "PostgreSQL server binaries (pg_ctl) not found: install the postgresql package"
                    .into(),
            )
        })?;
        let pg = ScratchPostgres {
            dir: dir.to_path_buf(),
            bin,
            extra_conf: String::new(),
            port,
            keep: false,
            stopped: false,
        };
        pg.verify_ours()?;
        Ok(pg)
    }

    /// Kills the postmaster with SIGKILL, as a crash of the machine's database would: no
    /// shutdown checkpoint, nothing more archived (its backends notice and exit).
    pub fn kill9(&mut self) -> Result<()> {
        let pidfile = self.data_dir().join("postmaster.pid");
        let text = std::fs::read_to_string(&pidfile)
            .map_err(|e| Error::io(format!("reading {}", pidfile.display()), e))?;
        let pid = text.lines().next().unwrap_or("").trim().to_string();
        let out = Command::new("kill")
            .args(["-9", &pid])
            .output()
            .map_err(|e| Error::io("running kill", e))?;
        if !out.status.success() {
            return Err(Error::io(
                format!("kill -9 {pid}"),
                std::io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()),
            ));
        }
        // Wait for the backends to go, so the data directory is free to remove.
        for _ in 0..100 {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        self.stopped = true;
        Ok(())
    }

    /// A log file of the server's (the recovery log `pitr --start` writes, say).
    pub fn log_of(&self, path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    fn initdb(&self) -> Result<()> {
        let data = self.data_dir();
        let initdb = self.bin.join("initdb").display().to_string();
        run_as_postgres(
            &[
                &initdb,
                "-D",
                &data.display().to_string(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale",
                "C",
            ],
            "initdb",
        )?;
        // A role with a password only accepted over scram, so tests can exercise auth failures.
        let hba = format!(
            "local all all trust\nhost all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\nhost all all 127.0.0.1/32 trust\nhost replication {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\nhost replication {MD5_ROLE} 127.0.0.1/32 md5\nhost replication all 127.0.0.1/32 trust\n"
        );
        std::fs::write(data.join("pg_hba.conf"), hba)
            .map_err(|e| Error::io("writing pg_hba.conf", e))
    }

    fn start_on_free_port(&mut self) -> Result<()> {
        let data = self.data_dir();
        self.port = free_port()?;
        let conf = format!(
            "\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_wal_senders = 4\nwal_level = replica\n{}\n",
            self.port,
            self.dir.display(),
            self.extra_conf
        );
        let conf_path = data.join("postgresql.auto.conf");
        std::fs::write(&conf_path, conf)
            .map_err(|e| Error::io("writing postgresql.auto.conf", e))?;
        if is_root() {
            chown_postgres(&conf_path)?;
        }
        let pg_ctl = self.bin.join("pg_ctl").display().to_string();
        let log = self.dir.join("server.log").display().to_string();
        run_as_postgres(
            &[
                &pg_ctl,
                "-D",
                &data.display().to_string(),
                "-l",
                &log,
                "-w",
                "-t",
                "60",
                "start",
            ],
            "pg_ctl start",
        )
    }

    /// Confirms the server on our port is the one we started (its data directory is ours).
    fn verify_ours(&self) -> Result<()> {
        let out = self.psql("postgres", "SHOW data_directory")?;
        let got = std::fs::canonicalize(out.trim()).unwrap_or_default();
        let want = std::fs::canonicalize(self.data_dir()).unwrap_or_default();
        if got != want {
            return Err(Error::Usage(format!(
                "port {} answered with data directory {}, not ours",
                self.port,
                out.trim()
            )));
        }
        Ok(())
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Server binaries in use.
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// `postgresql://postgres@127.0.0.1:PORT/DB`.
    pub fn url(&self, db: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs SQL with psql as the superuser and returns stdout (unaligned, tuples only).
    pub fn psql(&self, db: &str, sql: &str) -> Result<String> {
        self.psql_each(db, &[sql])
    }

    /// Runs each statement as its own `-c` (so each commits on its own) in one psql, and
    /// returns stdout (unaligned, tuples only).
    pub fn psql_each(&self, db: &str, statements: &[&str]) -> Result<String> {
        let mut cmd = Command::new(
            crate::scratch::find_program("psql", std::slice::from_ref(&self.bin))
                .unwrap_or_else(|| "psql".into()),
        );
        cmd.args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &self.url(db),
        ]);
        for s in statements {
            cmd.args(["-c", s]);
        }
        let out = cmd.output().map_err(|e| Error::io("running psql", e))?;
        if !out.status.success() {
            return Err(Error::SourceFailed {
                item: "scratch postgres".into(),
                detail: format!("psql: {}", String::from_utf8_lossy(&out.stderr)),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs a SQL file with psql (`ON_ERROR_STOP`), as the superuser.
    pub fn psql_file(&self, db: &str, file: &Path) -> Result<()> {
        let out = Command::new(
            crate::scratch::find_program("psql", std::slice::from_ref(&self.bin))
                .unwrap_or_else(|| "psql".into()),
        )
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &self.url(db),
            "-f",
        ])
        .arg(file)
        .output()
        .map_err(|e| Error::io("running psql", e))?;
        if !out.status.success() {
            return Err(Error::SourceFailed {
                item: "scratch postgres".into(),
                detail: format!(
                    "psql -f {}: {}",
                    file.display(),
                    String::from_utf8_lossy(&out.stderr)
                ),
            });
        }
        Ok(())
    }

    /// Leaves the server running and its files in place after drop (drills' `--keep`).
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`), like a crash.
    pub fn kill(&mut self) -> Result<()> {
        self.stop_mode("immediate")
    }

    /// Stops the server cleanly.
    pub fn stop(&mut self) -> Result<()> {
        self.stop_mode("fast")
    }

    fn stop_mode(&mut self, mode: &str) -> Result<()> {
        if self.stopped {
            return Ok(());
        }
        let pg_ctl = self.bin.join("pg_ctl");
        let data = self.data_dir();
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&pg_ctl);
            c
        } else {
            Command::new(&pg_ctl)
        };
        let out = cmd
            .arg("-D")
            .arg(&data)
            .args(["-m", mode, "-w", "stop"])
            .output()
            .map_err(|e| Error::io("running pg_ctl stop", e))?;
        self.stopped = true;
        if !out.status.success() {
            return Err(Error::io(
                "pg_ctl stop",
                std::io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()),
            ));
        }
        Ok(())
    }
}

impl Drop for ScratchPostgres {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let _ = self.stop_mode("immediate");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Gives `p` (recursively) to the postgres user when running as root, so that the server and
/// the commands it runs (archive_command) can use it.
pub fn give_to_postgres(p: &Path) -> Result<()> {
    if is_root() {
        chown_postgres(p)?;
    }
    Ok(())
}

fn chown_postgres(p: &Path) -> Result<()> {
    let out = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(p)
        .output()
        .map_err(|e| Error::io("chown postgres", e))?;
    if !out.status.success() {
        return Err(Error::io(
            format!("chown postgres {}", p.display()),
            std::io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()),
        ));
    }
    Ok(())
}
