//! Starting a restored data directory and following its recovery to the end: the point it
//! actually reached (PostgreSQL says it in its log), how long replay took, and a clear failure
//! when the target cannot be reached.
//!
//! The server is started with `pg_ctl` without waiting (a long replay outlasts `pg_ctl -w`),
//! as the data directory's owner when we are root (the server refuses root), with
//! `lc_messages = C` so that the lines read here are the English ones. Recovery is over when
//! the server accepts read-write connections; it failed when the postmaster is gone first.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::scratch::server_bin_dir;
use crate::error::{Error, Result};
use crate::scratch::is_root;

/// How to start the server on the restored data directory.
#[derive(Debug, Clone)]
pub struct StartOptions {
    pub pgdata: PathBuf,
    /// Server binaries (`pg_ctl`); default: the newest installed.
    pub bin_dir: Option<PathBuf>,
    pub port: u16,
    /// `listen_addresses` (default: the restored configuration's).
    pub listen: Option<String>,
    /// `unix_socket_directories` (default: the restored configuration's).
    pub socket_dir: Option<PathBuf>,
    /// Give up (and stop the server) after this long; none: wait for as long as replay takes.
    pub timeout: Option<Duration>,
}

/// What recovery reached, as the server reported it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RecoveryReport {
    pub pgdata: PathBuf,
    pub port: u16,
    /// Where replay stopped and why (`recovery stopping before commit of transaction 745,
    /// time …`), when a target stopped it.
    pub stopped: Option<String>,
    /// The LSN replay ended at.
    pub redo_done_at: Option<String>,
    /// The commit time of the last transaction replayed, as PostgreSQL printed it.
    pub last_transaction: Option<String>,
    /// The timeline the promoted server writes on.
    pub new_timeline: Option<u32>,
    pub seconds: f64,
    pub log: PathBuf,
}

/// Starts the server and waits until recovery has ended and it accepts connections.
/// `progress` sees PostgreSQL's `redo in progress` lines.
pub fn start_and_wait(opts: &StartOptions, progress: &dyn Fn(&str)) -> Result<RecoveryReport> {
    let t0 = Instant::now();
    let log = opts.pgdata.join("lifeboat-recovery.log");
    let _ = std::fs::remove_file(&log);
    pg_ctl(opts, &log)?;
    let mut report = RecoveryReport {
        pgdata: opts.pgdata.clone(),
        port: opts.port,
        log: log.clone(),
        ..Default::default()
    };
    let mut seen = 0;
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        for line in text.get(seen..).unwrap_or("").lines() {
            if line.contains("redo in progress") {
                progress(line);
            }
        }
        seen = text.len();
        read_outcome(&text, &mut report);
        if text.contains("database system is ready to accept connections") {
            report.seconds = t0.elapsed().as_secs_f64();
            let _ = super::wal::PrefetchSpool::of_data_dir(&opts.pgdata).remove();
            return Ok(report);
        }
        let gone =
            !opts.pgdata.join("postmaster.pid").exists() && t0.elapsed() > Duration::from_secs(2);
        let late = opts.timeout.is_some_and(|t| t0.elapsed() > t);
        if gone || late {
            if late {
                let _ = stop(opts, "immediate");
            }
            return Err(Error::RecoveryFailed {
                pgdata: opts.pgdata.clone(),
                detail: failure(&text, late, opts.timeout),
            });
        }
    }
}

/// Stops the server (`fast` or `immediate`).
pub fn stop(opts: &StartOptions, mode: &str) -> Result<()> {
    let bin = bin_dir(opts)?;
    let out = as_owner(&opts.pgdata, &bin.join("pg_ctl"))?
        .arg("-D")
        .arg(&opts.pgdata)
        .args(["-m", mode, "-w", "stop"])
        .output()
        .map_err(|e| Error::io("running pg_ctl stop", e))?;
    if !out.status.success() {
        return Err(Error::io(
            "pg_ctl stop",
            std::io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()),
        ));
    }
    Ok(())
}

fn bin_dir(opts: &StartOptions) -> Result<PathBuf> {
    opts.bin_dir.clone().or_else(server_bin_dir).ok_or_else(|| {
        Error::Usage(
            "PostgreSQL server binaries (pg_ctl) not found: install the server package or give --pg-bin-dir".into(),
        )
    })
}

fn pg_ctl(opts: &StartOptions, log: &Path) -> Result<()> {
    let bin = bin_dir(opts)?;
    let mut o = format!("-p {} -c lc_messages=C", opts.port);
    if let Some(l) = &opts.listen {
        o.push_str(&format!(" -c listen_addresses={l}"));
    }
    if let Some(k) = &opts.socket_dir {
        o.push_str(&format!(" -k {}", k.display()));
    }
    // A restored Debian cluster keeps its configuration in /etc: the data directory may have
    // no postgresql.conf, which the server insists on (postgresql.auto.conf holds ours).
    let conf = opts.pgdata.join("postgresql.conf");
    if !conf.exists() {
        std::fs::write(&conf, "# created by lifeboat-restore pitr --start\n")
            .map_err(|e| Error::io(format!("creating {}", conf.display()), e))?;
        let owner = std::fs::metadata(opts.pgdata.join("PG_VERSION"))
            .map_err(|e| Error::io("reading PG_VERSION", e))?;
        use std::os::unix::fs::MetadataExt;
        std::os::unix::fs::chown(&conf, Some(owner.uid()), Some(owner.gid()))
            .map_err(|e| Error::io(format!("chown {}", conf.display()), e))?;
    }
    let mut cmd = as_owner(&opts.pgdata, &bin.join("pg_ctl"))?;
    // The restore_command written into the cluster names its repository and key itself: the
    // caller's LIFEBOAT_* variables (inherited by the server and so by the command) must not
    // point it elsewhere.
    for v in [
        "LIFEBOAT_CONFIG",
        "LIFEBOAT_REPOSITORY",
        "LIFEBOAT_PASSWORD",
        "LIFEBOAT_PASSWORD_FILE",
        "LIFEBOAT_PASSWORD_COMMAND",
        "LIFEBOAT_KEY_FILE",
    ] {
        cmd.env_remove(v);
    }
    let out = cmd
        .arg("-D")
        .arg(&opts.pgdata)
        .arg("-l")
        .arg(log)
        .args(["-o", &o, "-W", "start"])
        .output()
        .map_err(|e| Error::io("running pg_ctl start", e))?;
    if !out.status.success() {
        return Err(Error::RecoveryFailed {
            pgdata: opts.pgdata.clone(),
            detail: format!(
                "pg_ctl start failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(())
}

/// `program`, run as the owner of `pgdata` when we are root.
fn as_owner(pgdata: &Path, program: &Path) -> Result<Command> {
    use std::os::unix::fs::MetadataExt;
    if !is_root() {
        return Ok(Command::new(program));
    }
    let uid = std::fs::metadata(pgdata)
        .map_err(|e| Error::io(format!("reading {}", pgdata.display()), e))?
        .uid();
    let user = user_name(uid).ok_or_else(|| {
        Error::Usage(format!(
            "{} belongs to uid {uid}, which has no user name: the server must run as its owner",
            pgdata.display()
        ))
    })?;
    if uid == 0 {
        return Err(Error::Usage(format!(
            "{} belongs to root, and PostgreSQL refuses to run as root: chown it to the server's user",
            pgdata.display()
        )));
    }
    let mut c = Command::new("runuser");
    c.args(["-u", &user, "--"]).arg(program);
    Ok(c)
}

fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 2 && f[2].parse() == Ok(uid)).then(|| f[0].to_string())
    })
}

/// Fills what the log says recovery reached.
fn read_outcome(log: &str, r: &mut RecoveryReport) {
    let after = |line: &str, key: &str| line.split(key).nth(1).map(|s| s.trim().to_string());
    for line in log.lines() {
        if let Some(s) = after(line, "LOG:  recovery stopping ") {
            r.stopped = Some(format!("recovery stopping {s}"));
        }
        if let Some(s) = after(line, "redo done at ") {
            r.redo_done_at = s.split_whitespace().next().map(str::to_string);
        }
        if let Some(s) = after(line, "last completed transaction was at log time ") {
            r.last_transaction = Some(s);
        }
        if let Some(s) = after(line, "selected new timeline ID: ") {
            r.new_timeline = s.parse().ok();
        }
    }
}

/// Why recovery did not finish: PostgreSQL's FATAL/PANIC lines, or the timeout.
fn failure(log: &str, late: bool, timeout: Option<Duration>) -> String {
    let fatal: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("FATAL:") || l.contains("PANIC:"))
        .collect();
    let mut why = if late {
        format!(
            "recovery had not ended after {}s",
            timeout.unwrap_or_default().as_secs()
        )
    } else {
        "the server stopped before recovery ended".to_string()
    };
    if !fatal.is_empty() {
        why.push_str(": ");
        why.push_str(&fatal.join("; "));
    }
    why
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_recovery_reached_is_read_from_the_log() {
        let log = "2026-12-06 05:00:01.000 UTC [9] LOG:  starting point-in-time recovery to 2026-12-06 05:00:00+00\n\
                   2026-12-06 05:00:01.100 UTC [9] LOG:  restored log file \"000000010000000000000003\" from archive\n\
                   2026-12-06 05:00:01.200 UTC [9] LOG:  recovery stopping before commit of transaction 745, time 2026-12-06 05:00:00.5+00\n\
                   2026-12-06 05:00:01.200 UTC [9] LOG:  redo done at 0/3000148 system usage: CPU: user: 0.00 s\n\
                   2026-12-06 05:00:01.200 UTC [9] LOG:  last completed transaction was at log time 2026-12-06 04:59:59.9+00\n\
                   2026-12-06 05:00:01.300 UTC [9] LOG:  selected new timeline ID: 2\n";
        let mut r = RecoveryReport::default();
        read_outcome(log, &mut r);
        assert_eq!(
            r.stopped.as_deref(),
            Some(
                "recovery stopping before commit of transaction 745, time 2026-12-06 05:00:00.5+00"
            )
        );
        assert_eq!(r.redo_done_at.as_deref(), Some("0/3000148"));
        assert_eq!(
            r.last_transaction.as_deref(),
            Some("2026-12-06 04:59:59.9+00")
        );
        assert_eq!(r.new_timeline, Some(2));
        let f = failure(
            "LOG: x\nFATAL:  recovery ended before configured recovery target was reached\n",
            false,
            None,
        );
        assert!(
            f.contains("stopped before recovery ended: FATAL:  recovery ended before"),
            "{f}"
        );
    }
}
