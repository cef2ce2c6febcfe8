//! A scratch Prometheus Pushgateway (Debian package `prometheus-pushgateway`) on a free
//! loopback port, for the tests of metrics pushes; killed on drop.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;
use crate::error::{Error, Result};

const BIN: &str = "prometheus-pushgateway";

/// A running Pushgateway that keeps nothing on disk.
#[derive(Debug)]
pub struct ScratchPushgateway {
    child: Child,
    port: u16,
}

impl ScratchPushgateway {
    /// Starts it and waits until it answers `/-/ready`.
    pub fn start() -> Result<ScratchPushgateway> {
        let port = free_port()?;
        let child = Command::new(BIN)
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            // Empty: no persistence file, nothing left behind.
            .arg("--persistence.file=")
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                Error::io(
                    format!("starting {BIN} (install the Debian package prometheus-pushgateway; .ci/run does)"),
                    e,
                )
            })?;
        let mut p = ScratchPushgateway { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = p.child.try_wait() {
                return Err(Error::io(
                    BIN,
                    std::io::Error::other(format!("exited with {st}")),
                ));
            }
            if p.get("/-/ready")
                .is_ok_and(|r| r.starts_with("HTTP/1.0 200") || r.starts_with("HTTP/1.1 200"))
            {
                return Ok(p);
            }
            if Instant::now() > deadline {
                return Err(Error::io(BIN, std::io::Error::other("not ready after 20s")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What Prometheus would scrape: the exposition text of every pushed group.
    pub fn scrape(&self) -> Result<String> {
        let r = self
            .get("/metrics")
            .map_err(|e| Error::io("scraping the Pushgateway", e))?;
        match r.split_once("\r\n\r\n") {
            Some((_, body)) => Ok(body.to_string()),
            None => Ok(String::new()),
        }
    }

    /// One HTTP/1.0 GET: the whole response, head and body.
    fn get(&self, path: &str) -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }
}

impl Drop for ScratchPushgateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
