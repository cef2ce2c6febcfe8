//! A replication connection: startup with `replication=true`, authentication, simple
//! queries (`IDENTIFY_SYSTEM`, `TIMELINE_HISTORY`, slot commands) and the COPY BOTH stream of
//! `START_REPLICATION`, read and written from separate halves so that status updates go out
//! while the reader is held back.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

use super::auth::{Scram, md5_password};
use super::params::ConnParams;
use crate::error::{Error, Result};

/// Any byte stream a connection runs over (TCP or a Unix socket).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The largest backend message accepted: XLogData carries at most 128 KiB of WAL, rows of
/// `TIMELINE_HISTORY` a history file.
const MAX_MESSAGE: usize = 64 << 20;

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// A server time (PostgreSQL's microseconds since 2000) as a system time.
pub fn pg_time(us: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros((us + PG_EPOCH_OFFSET_US).max(0) as u64)
}

fn pg_now() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    since.as_micros() as i64 - PG_EPOCH_OFFSET_US
}

/// The read half: whole messages, cancellation-safe (bytes read are kept for the next call).
pub struct Reader {
    inner: ReadHalf<Box<dyn Io>>,
    buf: Vec<u8>,
    server: String,
}

/// The write half.
pub struct Writer {
    inner: WriteHalf<Box<dyn Io>>,
    server: String,
}

/// One backend message: its type byte and body.
#[derive(Debug)]
pub struct Message {
    pub tag: u8,
    pub body: Vec<u8>,
}

/// What the server sends while streaming.
#[derive(Debug)]
pub enum StreamEvent {
    /// WAL from `start`; the server had written up to `server_end` when it sent it.
    Data {
        start: u64,
        server_end: u64,
        sent: SystemTime,
        data: Vec<u8>,
    },
    /// Nothing new; the server is at `server_end` and may want an answer now.
    Keepalive { server_end: u64, reply: bool },
    /// The server ended the timeline streamed (it was promoted or follows a new one);
    /// [`Reader::end_timeline`] says where streaming goes on.
    TimelineEnded,
}

/// A result row of a simple query (text format; NULL as `None`).
pub type Row = Vec<Option<String>>;

impl Reader {
    /// The next whole message; an ErrorResponse is an error.
    pub async fn message(&mut self) -> Result<Message> {
        let m = self.raw().await?;
        if m.tag == b'E' {
            return Err(self.fail(server_error(&m.body)));
        }
        Ok(m)
    }

    /// The next whole message, ErrorResponse included; notices and parameter changes skipped.
    async fn raw(&mut self) -> Result<Message> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if !(4..=MAX_MESSAGE).contains(&len) {
                    return Err(self.fail(format!("a message of {len} bytes")));
                }
                if self.buf.len() > len {
                    let tag = self.buf[0];
                    let body = self.buf[5..1 + len].to_vec();
                    self.buf.drain(..1 + len);
                    if tag == b'N' || tag == b'S' {
                        continue; // notices and parameter changes
                    }
                    return Ok(Message { tag, body });
                }
            }
            let mut chunk = [0u8; 64 * 1024];
            let n = self
                .inner
                .read(&mut chunk)
                .await
                .map_err(|e| self.fail(format!("reading: {e}")))?;
            if n == 0 {
                return Err(self.fail("the server closed the connection".into()));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn fail(&self, detail: String) -> Error {
        Error::Replication {
            server: self.server.clone(),
            detail,
        }
    }

    /// Rows of a simple query's results, up to ReadyForQuery (also after an error, so the
    /// connection stays usable).
    async fn rows(&mut self) -> Result<Vec<Row>> {
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let m = self.raw().await?;
            match m.tag {
                b'D' => rows.push(data_row(&m.body).ok_or_else(|| self.fail("a bad row".into()))?),
                b'E' => error = Some(self.fail(server_error(&m.body))),
                b'Z' => return error.map_or(Ok(rows), Err),
                b'T' | b'C' | b'I' => {}
                t => return Err(self.fail(format!("unexpected message {:?}", t as char))),
            }
        }
    }

    /// The next streaming event. Cancel-safe: it awaits nothing but whole messages (`raw`
    /// keeps partial ones in the buffer), so the streamer can poll it in a `select!` beside its
    /// uploads. After `TimelineEnded` the caller must call [`Reader::end_timeline`].
    pub async fn event(&mut self) -> Result<StreamEvent> {
        let m = self.message().await?;
        match m.tag {
            b'd' => self.copy_data(&m.body),
            b'c' => Ok(StreamEvent::TimelineEnded),
            t => Err(self.fail(format!(
                "unexpected message {:?} while streaming",
                t as char
            ))),
        }
    }

    /// The end-of-timeline exchange after `TimelineEnded`: answer CopyDone, read where the
    /// server goes on, up to ReadyForQuery. Not cancel-safe (it writes and reads several
    /// messages), so it runs outside any `select!`; afterwards the connection is back to simple
    /// queries. Returns the next timeline and where it starts.
    pub async fn end_timeline(&mut self, w: &mut Writer) -> Result<(u32, u64)> {
        w.send(b'c', &[]).await?;
        let mut next = None;
        loop {
            let m = self.message().await?;
            match m.tag {
                b'D' => {
                    let row = data_row(&m.body).unwrap_or_default();
                    let tli = row.first().cloned().flatten().and_then(|t| t.parse().ok());
                    let lsn = row
                        .get(1)
                        .cloned()
                        .flatten()
                        .and_then(|l| crate::engines::postgres::wal::parse_lsn(&l));
                    next = tli.zip(lsn);
                }
                b'Z' => break,
                _ => {}
            }
        }
        next.ok_or_else(|| self.fail("streaming ended without naming the next timeline".into()))
    }

    fn copy_data(&self, b: &[u8]) -> Result<StreamEvent> {
        let be64 = |o: usize| u64::from_be_bytes(b[o..o + 8].try_into().unwrap());
        match b.first() {
            Some(b'w') if b.len() >= 25 => Ok(StreamEvent::Data {
                start: be64(1),
                server_end: be64(9),
                sent: pg_time(be64(17) as i64),
                data: b[25..].to_vec(),
            }),
            Some(b'k') if b.len() >= 18 => Ok(StreamEvent::Keepalive {
                server_end: be64(1),
                reply: b[17] != 0,
            }),
            _ => Err(self.fail("a malformed streaming message".into())),
        }
    }
}

impl Writer {
    async fn send(&mut self, tag: u8, body: &[u8]) -> Result<()> {
        let mut m = Vec::with_capacity(5 + body.len());
        m.push(tag);
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        self.write(&m).await
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let r = async {
            self.inner.write_all(bytes).await?;
            self.inner.flush().await
        }
        .await;
        r.map_err(|e| Error::Replication {
            server: self.server.clone(),
            detail: format!("writing: {e}"),
        })
    }

    /// Sends a simple query.
    pub async fn query(&mut self, sql: &str) -> Result<()> {
        let mut body = sql.as_bytes().to_vec();
        body.push(0);
        self.send(b'Q', &body).await
    }

    /// Standby status update: `received` is written, `durable` flushed and applied (what the
    /// server may release from the slot, and what synchronous commits wait for).
    pub async fn status(&mut self, received: u64, durable: u64, reply: bool) -> Result<()> {
        let mut b = vec![b'r'];
        for v in [received, durable, durable, pg_now() as u64] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        b.push(reply as u8);
        self.send(b'd', &b).await
    }

    /// Ends the session politely.
    pub async fn terminate(&mut self) {
        let _ = self.send(b'X', &[]).await;
    }
}

/// An open replication connection.
pub struct Connection {
    pub reader: Reader,
    pub writer: Writer,
}

impl Connection {
    /// The server, as messages name it.
    pub fn server(&self) -> &str {
        &self.reader.server
    }

    /// Connects, authenticates and waits until the server is ready for queries.
    pub async fn open(p: &ConnParams) -> Result<Connection> {
        let server = p.describe();
        let mut c = Connection::over(p.dial().await?, server);
        c.startup(p).await?;
        Ok(c)
    }

    fn over(io: Box<dyn Io>, server: String) -> Connection {
        let (r, w) = tokio::io::split(io);
        Connection {
            reader: Reader {
                inner: r,
                buf: Vec::new(),
                server: server.clone(),
            },
            writer: Writer { inner: w, server },
        }
    }

    async fn startup(&mut self, p: &ConnParams) -> Result<()> {
        let mut body = 196608u32.to_be_bytes().to_vec(); // protocol 3.0
        for (k, v) in [
            ("user", p.user.as_str()),
            ("replication", "true"),
            ("application_name", p.application_name.as_str()),
        ] {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut m = (body.len() as u32 + 4).to_be_bytes().to_vec();
        m.extend_from_slice(&body);
        self.writer.write(&m).await?;
        self.authenticate(p).await?;
        loop {
            let m = self.reader.message().await?;
            if m.tag == b'Z' {
                return Ok(());
            }
        }
    }

    async fn authenticate(&mut self, p: &ConnParams) -> Result<()> {
        let mut scram: Option<Scram> = None;
        loop {
            let m = self.reader.message().await?;
            if m.tag != b'R' || m.body.len() < 4 {
                return Err(self
                    .reader
                    .fail(format!("expected authentication, got {:?}", m.tag as char)));
            }
            let code = u32::from_be_bytes(m.body[..4].try_into().unwrap());
            let rest = &m.body[4..];
            match code {
                0 => return Ok(()),
                3 => {
                    let pw = self.password(p)?;
                    self.writer.send(b'p', &cstr(&pw)).await?;
                }
                5 if rest.len() >= 4 => {
                    let pw = self.password(p)?;
                    let salt: [u8; 4] = rest[..4].try_into().unwrap();
                    self.writer
                        .send(b'p', &cstr(&md5_password(&p.user, &pw, &salt)))
                        .await?;
                }
                10 => {
                    let offered = String::from_utf8_lossy(rest);
                    if !offered.split('\0').any(|m| m == Scram::MECHANISM) {
                        return Err(self.reader.fail(format!(
                            "the server offers only SASL mechanisms {offered:?}"
                        )));
                    }
                    let s = Scram::new(&self.password(p)?);
                    let first = s.client_first();
                    let mut body = cstr(Scram::MECHANISM);
                    body.extend_from_slice(&(first.len() as u32).to_be_bytes());
                    body.extend_from_slice(first.as_bytes());
                    self.writer.send(b'p', &body).await?;
                    scram = Some(s);
                }
                11 => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| self.reader.fail("SASL out of order".into()))?;
                    let fin = s
                        .client_final(&String::from_utf8_lossy(rest))
                        .map_err(|e| self.reader.fail(e))?;
                    self.writer.send(b'p', fin.as_bytes()).await?;
                }
                12 => {
                    let s = scram
                        .as_ref()
                        .ok_or_else(|| self.reader.fail("SASL out of order".into()))?;
                    s.verify_final(&String::from_utf8_lossy(rest))
                        .map_err(|e| self.reader.fail(e))?;
                }
                c => {
                    return Err(self
                        .reader
                        .fail(format!("authentication method {c} is not supported (trust, password, md5 and scram-sha-256 are)")));
                }
            }
        }
    }

    fn password(&self, p: &ConnParams) -> Result<String> {
        p.password.clone().ok_or_else(|| {
            self.reader.fail(format!(
                "the server asks user {} for a password and none is given (password= in the connection string, PGPASSWORD or ~/.pgpass)",
                p.user
            ))
        })
    }

    /// Runs a simple query and returns its rows.
    pub async fn query(&mut self, sql: &str) -> Result<Vec<Row>> {
        self.writer.query(sql).await?;
        self.reader.rows().await
    }

    /// Sends `START_REPLICATION` and waits for the stream to open.
    pub async fn start(&mut self, slot: &str, from: u64, timeline: u32) -> Result<()> {
        let sql = format!(
            "START_REPLICATION SLOT \"{slot}\" PHYSICAL {} TIMELINE {timeline}",
            crate::engines::postgres::wal::format_lsn(from)
        );
        self.writer.query(&sql).await?;
        let m = self.reader.message().await?;
        match m.tag {
            b'W' => Ok(()),
            t => Err(self.reader.fail(format!(
                "START_REPLICATION answered {:?} instead of a copy stream",
                t as char
            ))),
        }
    }
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn data_row(b: &[u8]) -> Option<Row> {
    let n = u16::from_be_bytes(b.get(..2)?.try_into().ok()?) as usize;
    let mut at = 2;
    let mut row = Vec::with_capacity(n);
    for _ in 0..n {
        let len = i32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?);
        at += 4;
        if len < 0 {
            row.push(None);
            continue;
        }
        let v = b.get(at..at + len as usize)?;
        at += len as usize;
        row.push(Some(String::from_utf8_lossy(v).into_owned()));
    }
    Some(row)
}

/// "ERROR 42704: message (detail; hint)" from an ErrorResponse's fields.
fn server_error(b: &[u8]) -> String {
    let mut fields = std::collections::BTreeMap::new();
    for f in b.split(|c| *c == 0).filter(|f| !f.is_empty()) {
        fields.insert(f[0], String::from_utf8_lossy(&f[1..]).into_owned());
    }
    let mut s = format!(
        "{} {}: {}",
        fields.get(&b'S').map_or("ERROR", String::as_str),
        fields.get(&b'C').map_or("", String::as_str),
        fields.get(&b'M').map_or("", String::as_str)
    );
    for k in [b'D', b'H'] {
        if let Some(v) = fields.get(&k) {
            s.push_str(&format!(" ({v})"));
        }
    }
    s
}

/// The SQLSTATE in a message made by [`server_error`].
pub fn sqlstate(detail: &str) -> Option<&str> {
    let (_, rest) = detail.split_once(' ')?;
    rest.split(':').next().filter(|c| c.len() == 5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_and_errors_decode() {
        let mut b = 2u16.to_be_bytes().to_vec();
        b.extend_from_slice(&3i32.to_be_bytes());
        b.extend_from_slice(b"abc");
        b.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(data_row(&b), Some(vec![Some("abc".into()), None]));
        assert_eq!(data_row(&b[..6]), None);
        let e = b"SERROR\0C42710\0Mreplication slot \"x\" already exists\0\0";
        let msg = server_error(e);
        assert_eq!(msg, "ERROR 42710: replication slot \"x\" already exists");
        assert_eq!(sqlstate(&msg), Some("42710"));
    }

    #[test]
    fn server_times_are_counted_from_2000() {
        let t = pg_time(0);
        assert_eq!(t.duration_since(UNIX_EPOCH).unwrap().as_secs(), 946_684_800);
        let now = pg_now();
        let back = pg_time(now);
        let d = SystemTime::now().duration_since(back).unwrap_or_default();
        assert!(d < Duration::from_secs(5));
    }

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    /// The streamer polls `event` in a `select!` and drops it whenever an upload finishes
    /// first; a dropped call must lose nothing, and the timeline switch must still be read
    /// whole afterwards (it once was cut in half and the next call met the RowDescription).
    #[tokio::test]
    async fn a_cancelled_event_loses_nothing_and_the_timeline_switch_is_read_whole() {
        let (ours, mut server) = tokio::io::duplex(1 << 16);
        let mut c = Connection::over(Box::new(ours), "test".into());
        let mut keepalive = vec![b'k'];
        keepalive.extend_from_slice(&7u64.to_be_bytes());
        keepalive.extend_from_slice(&0u64.to_be_bytes());
        keepalive.push(0);
        let whole = msg(b'd', &keepalive);
        server.write_all(&whole[..9]).await.unwrap();
        let cut = tokio::time::timeout(Duration::from_millis(50), c.reader.event()).await;
        assert!(cut.is_err(), "half a message must not make an event");
        server.write_all(&whole[9..]).await.unwrap();
        match c.reader.event().await.unwrap() {
            StreamEvent::Keepalive { server_end, reply } => {
                assert_eq!((server_end, reply), (7, false))
            }
            e => panic!("{e:?}"),
        }
        server.write_all(&msg(b'c', &[])).await.unwrap();
        assert!(matches!(
            c.reader.event().await.unwrap(),
            StreamEvent::TimelineEnded
        ));
        // The server's side of the exchange, after it reads our CopyDone.
        let mut row = 2i16.to_be_bytes().to_vec();
        for v in ["2", "0/3000000"] {
            row.extend_from_slice(&(v.len() as i32).to_be_bytes());
            row.extend_from_slice(v.as_bytes());
        }
        let answer = [
            msg(b'T', b"-"),
            msg(b'D', &row),
            msg(b'C', b"SELECT\0"),
            msg(b'c', &[]),
        ]
        .concat();
        let server_side = async move {
            let mut done = [0u8; 5];
            server.read_exact(&mut done).await.unwrap();
            assert_eq!(done[0], b'c');
            server.write_all(&answer).await.unwrap();
            server
                .write_all(&msg(b'C', b"START_STREAMING\0"))
                .await
                .unwrap();
            server.write_all(&msg(b'Z', b"I")).await.unwrap();
            server
        };
        let (ended, _server) = tokio::join!(c.reader.end_timeline(&mut c.writer), server_side);
        assert_eq!(ended.unwrap(), (2, 0x300_0000));
    }
}
