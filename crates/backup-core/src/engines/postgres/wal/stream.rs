//! `wal stream`: WAL over streaming replication into the repository as small sealed pieces,
//! every few seconds or every few MiB, the server told only what is durable there.
//!
//! One piece is uploaded at a time, one more waits sealed, and one fills: memory stays near
//! three pieces whatever the WAL rate. When the store is slow or down the uploads retry, the
//! reader stops taking WAL off the socket and the physical slot keeps it on the server:
//! nothing is confirmed that is not durable, nothing is dropped. A piece that ends a segment
//! is followed by the whole segment (assembled from the pieces, archived as `archive_command`
//! archives it, identical if both ran) and its pieces are removed.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::archive::push_one;
use super::name::{ClusterId, WalName, format_lsn};
use super::pieces;
use super::status::Archive;
use super::timeline::parse_history;
use crate::engines::postgres::replication::{ConnParams, Connection, StreamEvent, SystemInfo};
use crate::error::{Error, Result};
use crate::repository::Repository;

/// Whole segments larger than this are left as pieces (assembling one holds it in memory).
const MAX_CONSOLIDATE: u64 = 64 << 20;

/// How `wal stream` runs (no `Debug`: it holds a password).
#[derive(Clone)]
pub struct StreamOptions {
    /// libpq connection string of the server (a role with REPLICATION).
    pub conninfo: String,
    /// The password when the connection string has none (a configured password file's).
    pub password: Option<zeroize::Zeroizing<String>>,
    /// The physical replication slot that keeps WAL on the server until it is durable here.
    pub slot: String,
    /// Create the slot when it does not exist.
    pub create_slot: bool,
    /// What the server knows the streamer as (`synchronous_standby_names`).
    pub application_name: String,
    /// A piece is sealed once its first byte is this old...
    pub piece_interval: Duration,
    /// ...or once it holds this many bytes (a segment's end always seals one).
    pub piece_bytes: usize,
    /// Seal as soon as the server has nothing more to send: for `synchronous_standby_names`,
    /// where every commit waits for its WAL to be durable in the repository.
    pub synchronous: bool,
    /// Status updates at least this often (the server drops a silent standby after
    /// `wal_sender_timeout`, 60 s by default).
    pub status_interval: Duration,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            conninfo: String::new(),
            password: None,
            slot: "lifeboat".into(),
            create_slot: true,
            application_name: "lifeboat".into(),
            piece_interval: Duration::from_secs(2),
            piece_bytes: 8 << 20,
            synchronous: false,
            status_interval: Duration::from_secs(10),
        }
    }
}

/// Where the streamer stands; shared with whoever renders or exports it (and read back by
/// `wal status --stream-status`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StreamStatus {
    /// When this was written out (set by whoever writes it).
    #[serde(default)]
    pub updated_at: Option<DateTime<Utc>>,
    pub cluster: Option<ClusterId>,
    pub timeline: u32,
    pub connected: bool,
    /// WAL received from the server, and the part of it durable in the repository.
    pub received_lsn: u64,
    pub durable_lsn: u64,
    /// The server's newest WAL, as it last said.
    pub server_lsn: u64,
    pub last_durable_at: Option<DateTime<Utc>>,
    /// How old the oldest WAL not yet durable is (0 when everything received is durable).
    pub lag_seconds: f64,
    /// The server's WAL not yet durable here (what the slot holds back).
    pub lag_bytes: u64,
    pub pieces: u64,
    pub bytes: u64,
    pub segments: u64,
    pub store_errors: u64,
    pub connections: u64,
    pub last_error: Option<String>,
}

impl StreamStatus {
    /// Prometheus gauges and counters.
    pub fn to_prometheus(&self) -> String {
        let mut m = crate::metrics::Metrics::new();
        let cluster = self.cluster.map(|c| c.to_string()).unwrap_or_default();
        let l: &[(&str, &str)] = &[("cluster", &cluster)];
        let g = [
            (
                "lifeboat_wal_lag_seconds",
                "Age of the oldest WAL received but not yet durable in the repository (0: all durable).",
                self.lag_seconds,
            ),
            (
                "lifeboat_wal_lag_bytes",
                "Bytes of the server's WAL not yet durable in the repository.",
                self.lag_bytes as f64,
            ),
            (
                "lifeboat_wal_durable_lsn",
                "Newest WAL position durable in the repository.",
                self.durable_lsn as f64,
            ),
            (
                "lifeboat_wal_last_durable_timestamp_seconds",
                "When WAL last became durable in the repository.",
                self.last_durable_at
                    .map_or(0.0, |t| t.timestamp_millis() as f64 / 1000.0),
            ),
            (
                "lifeboat_wal_stream_connected",
                "1 while connected to the server.",
                self.connected as u8 as f64,
            ),
            (
                "lifeboat_wal_stream_timeline",
                "The timeline streamed.",
                self.timeline as f64,
            ),
            (
                "lifeboat_wal_stream_pieces_total",
                "Pieces written.",
                self.pieces as f64,
            ),
            (
                "lifeboat_wal_stream_bytes_total",
                "WAL bytes written in pieces.",
                self.bytes as f64,
            ),
            (
                "lifeboat_wal_stream_segments_total",
                "Whole segments archived from pieces.",
                self.segments as f64,
            ),
            (
                "lifeboat_wal_stream_store_errors_total",
                "Failed repository writes (retried).",
                self.store_errors as f64,
            ),
            (
                "lifeboat_wal_stream_connections_total",
                "Connections made to the server.",
                self.connections as f64,
            ),
        ];
        for (name, help, v) in g {
            m.gauge(name, help, l, v);
        }
        if let Some(t) = self.updated_at {
            let age = (Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0;
            m.gauge(
                "lifeboat_wal_stream_status_age_seconds",
                "How old these streamer figures are (a stopped streamer's stay behind).",
                l,
                age,
            );
        }
        m.render()
    }
}

/// What the streamer tells its caller as it goes.
#[derive(Debug, Clone)]
pub enum StreamNote {
    Connected {
        server: String,
        timeline: u32,
        from: u64,
        slot_created: bool,
    },
    /// The connection failed; another attempt follows.
    Lost { error: String, retry_in: Duration },
    /// A piece could not be written; it is retried.
    StoreFailed { error: String },
    /// The server moved to another timeline.
    Timeline { from: u32, to: u32, at: u64 },
    /// A whole segment could not be archived from its pieces (they stay, and are read).
    ConsolidateFailed { segment: WalName, error: String },
}

/// Runs until `stop` is cancelled (then seals and uploads what it holds, for at most
/// `drain`) or a fatal error (wrong cluster, a conflicting archive, WAL the server no longer
/// has). Connection losses are retried with backoff.
pub async fn stream(
    repo: &Repository,
    opts: &StreamOptions,
    status: Arc<Mutex<StreamStatus>>,
    stop: CancellationToken,
    notes: &(dyn Fn(StreamNote) + Sync),
) -> Result<()> {
    let params = ConnParams::from_conninfo(
        &opts.conninfo,
        &opts.application_name,
        opts.password.as_deref().map(String::as_str),
    )?;
    let mut s = Streamer {
        repo,
        opts,
        status,
        notes,
        cluster: None,
        seg_size: 0,
        timeline: 0,
        received: 0,
        durable: None,
        pending: Vec::new(),
        pending_since: None,
        queue: VecDeque::new(),
        inflight: None,
        recv_times: VecDeque::new(),
    };
    let mut backoff = Duration::from_secs(1);
    loop {
        let began = Instant::now();
        let r = s.session(&params, &stop).await;
        s.update(|st| st.connected = false);
        match r {
            Ok(()) => return Ok(()),
            Err(e) if fatal(&e) => return Err(e),
            Err(e) => {
                // What was received before the loss is WAL all the same: made durable now,
                // so a server that died with it is not missed.
                s.seal();
                tokio::select! {
                    r = s.drain() => r?,
                    _ = stop.cancelled() => {
                        // Stopping: what is held still gets its minute (the server that sent
                        // it may be gone), as on a stop while connected.
                        let _ = tokio::time::timeout(Duration::from_secs(60), s.drain()).await;
                        return Ok(());
                    }
                }
                if began.elapsed() > Duration::from_secs(60) {
                    backoff = Duration::from_secs(1);
                }
                s.update(|st| st.last_error = Some(e.to_string()));
                notes(StreamNote::Lost {
                    error: e.to_string(),
                    retry_in: backoff,
                });
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Errors retrying cannot mend.
fn fatal(e: &Error) -> bool {
    match e {
        Error::Replication { detail, .. } => {
            let code = crate::engines::postgres::replication::client::sqlstate(detail);
            // WAL gone from the server, authentication refused, no such role / slot misuse.
            matches!(code, Some("58P01" | "28P01" | "28000" | "42501" | "55000"))
                || detail.contains("authentication method")
                || detail.contains("none is given")
                || detail.contains("SCRAM")
        }
        Error::Store { .. } | Error::Io { .. } => false,
        _ => true,
    }
}

/// A piece ready to upload.
struct Sealed {
    segment: WalName,
    /// Offset in the segment.
    start: u64,
    data: Vec<u8>,
    end_lsn: u64,
    /// It ends its segment.
    completes: bool,
}

/// What woke the streaming loop.
enum Step {
    Stop,
    Uploaded(Result<(u64, bool)>),
    Event(Result<StreamEvent>),
    IdleSeal,
    Tick,
}

type Upload<'a> = Pin<Box<dyn Future<Output = Result<(u64, bool)>> + Send + 'a>>;

struct Streamer<'a> {
    repo: &'a Repository,
    opts: &'a StreamOptions,
    status: Arc<Mutex<StreamStatus>>,
    notes: &'a (dyn Fn(StreamNote) + Sync),
    cluster: Option<ClusterId>,
    seg_size: u64,
    timeline: u32,
    received: u64,
    /// Timeline and position durable in the repository, once known.
    durable: Option<(u32, u64)>,
    pending: Vec<u8>,
    pending_since: Option<Instant>,
    queue: VecDeque<Sealed>,
    /// The piece being uploaded.
    inflight: Option<Upload<'a>>,
    /// When each message received and not yet durable ended, for the lag.
    recv_times: VecDeque<(u64, SystemTime)>,
}

impl<'a> Streamer<'a> {
    fn update(&self, f: impl FnOnce(&mut StreamStatus)) {
        f(&mut self.status.lock().expect("status lock"));
    }

    /// One connection, from connecting to its loss or to `stop`.
    async fn session(&mut self, params: &ConnParams, stop: &CancellationToken) -> Result<()> {
        let mut conn = Connection::open(params).await?;
        let sys = conn.identify().await?;
        match self.cluster {
            Some(c) if c != sys.cluster => {
                return Err(Error::Usage(format!(
                    "{} is now cluster {}, not cluster {c} streamed so far; start a new `wal stream` for it",
                    params.describe(),
                    sys.cluster
                )));
            }
            _ => self.cluster = Some(sys.cluster),
        }
        self.seg_size = conn.segment_size().await?;
        let created = self.opts.create_slot && conn.ensure_slot(&self.opts.slot).await?;
        self.archive_histories(&mut conn, sys.timeline).await?;
        let (tli, from) = self.start_point(&mut conn, &sys).await?;
        self.begin(&mut conn, tli, from).await?;
        (self.notes)(StreamNote::Connected {
            server: params.describe(),
            timeline: tli,
            from,
            slot_created: created,
        });
        self.update(|st| {
            st.cluster = Some(sys.cluster);
            st.connected = true;
            st.connections += 1;
            st.server_lsn = st.server_lsn.max(sys.position);
        });
        self.run(&mut conn, stop).await
    }

    /// Starts streaming `tli` from `from`; anything held from before is dropped (it was not
    /// confirmed, and the server sends it again).
    async fn begin(&mut self, conn: &mut Connection, tli: u32, from: u64) -> Result<()> {
        self.pending.clear();
        self.pending_since = None;
        self.queue.clear();
        self.inflight = None;
        self.recv_times.clear();
        self.timeline = tli;
        self.received = from;
        // Everything before `from` on this timeline is durable (start_point's promise; on a
        // new timeline, the switch segment is written again from its start).
        self.durable = Some((tli, from));
        self.update(|st| {
            st.timeline = tli;
            st.received_lsn = from;
            st.durable_lsn = st.durable_lsn.max(from);
        });
        conn.start(&self.opts.slot, from, tli).await
    }

    /// Where to stream from: on from what the repository holds of this cluster (pieces and
    /// whole segments), along the server's history; from the start of the server's current
    /// segment when it holds nothing.
    async fn start_point(&mut self, conn: &mut Connection, sys: &SystemInfo) -> Result<(u32, u64)> {
        let seg = self.seg_size;
        let held = match self.durable {
            Some(d) => Some(d),
            None => {
                let archive = Archive::list(self.repo).await?;
                let mut newest: Option<(u32, u64)> = None;
                for f in archive.files(sys.cluster) {
                    if let Some(no) = f.name.segment_no(seg) {
                        let end = no * seg + f.streamed_to.unwrap_or(seg);
                        newest = newest.max(Some((f.name.timeline(), end)));
                    }
                }
                self.consolidate_left(&archive, sys.cluster).await;
                newest
            }
        };
        let Some((tli, end)) = held else {
            return Ok((sys.timeline, sys.position - sys.position % seg));
        };
        if tli > sys.timeline || (tli == sys.timeline && end > sys.position) {
            return Err(Error::Usage(format!(
                "the archive of cluster {} holds WAL up to {} on timeline {tli}, beyond what the server has ({} on timeline {}): this server was restored from a backup without a new timeline, or is another copy of the cluster; stream a server that follows the archive",
                sys.cluster,
                format_lsn(end),
                format_lsn(sys.position),
                sys.timeline
            )));
        }
        if tli == sys.timeline {
            return Ok((tli, end));
        }
        let (_, text) = conn.timeline_history(sys.timeline).await?;
        let history =
            parse_history(&String::from_utf8_lossy(&text)).map_err(|e| Error::Replication {
                server: conn.server().to_string(),
                detail: format!("its history of timeline {}: {e}", sys.timeline),
            })?;
        let Some(i) = history.iter().position(|a| a.timeline == tli) else {
            return Err(Error::Usage(format!(
                "the archive of cluster {} ends on timeline {tli}, which is not in the history of the server's timeline {}; stream a server that descends from it, or a new archive",
                sys.cluster, sys.timeline
            )));
        };
        let switch = history[i].switchpoint;
        if end < switch {
            // Finish the old timeline first; the server switches when it gets there.
            return Ok((tli, end));
        }
        let next = history.get(i + 1).map_or(sys.timeline, |a| a.timeline);
        Ok((next, switch - switch % seg))
    }

    /// Archives the history files of the server's timelines (recovery needs them to follow).
    async fn archive_histories(&self, conn: &mut Connection, timeline: u32) -> Result<()> {
        let cluster = self.cluster.expect("known after IDENTIFY_SYSTEM");
        for t in 2..=timeline {
            let Ok((name, content)) = conn.timeline_history(t).await else {
                continue;
            };
            let name = WalName::parse(&name)?;
            push_one(self.repo, cluster, &name, &content).await?;
        }
        Ok(())
    }

    /// Whole segments whose pieces were left from an earlier run: archived now.
    async fn consolidate_left(&self, archive: &Archive, cluster: ClusterId) {
        for f in archive.files(cluster) {
            let whole = f.streamed_to == Some(self.seg_size);
            let leftover = f.streamed_to.is_none() && !f.pieces.is_empty();
            if whole || leftover {
                self.consolidate(cluster, &f.name).await;
            }
        }
    }

    async fn consolidate(&self, cluster: ClusterId, segment: &WalName) {
        if let Err(e) = consolidate(self.repo, cluster, segment, self.seg_size).await {
            (self.notes)(StreamNote::ConsolidateFailed {
                segment: segment.clone(),
                error: e.to_string(),
            });
        }
    }

    /// The streaming loop.
    async fn run(&mut self, conn: &mut Connection, stop: &CancellationToken) -> Result<()> {
        let mut last_status = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            if self.inflight.is_none()
                && let Some(p) = self.queue.pop_front()
            {
                self.inflight = Some(self.upload(p));
            }
            let inflight = &mut self.inflight;
            // Reading stops while a sealed piece waits: the slot holds WAL meanwhile.
            let room = self.queue.is_empty();
            let idle_seal = self.opts.synchronous && !self.pending.is_empty() && room;
            let step = tokio::select! {
                biased;
                _ = stop.cancelled() => Step::Stop,
                done = async { inflight.as_mut().expect("guarded").await }, if inflight.is_some() => Step::Uploaded(done),
                ev = conn.reader.event(), if room => Step::Event(ev),
                _ = std::future::ready(()), if idle_seal => Step::IdleSeal,
                _ = tick.tick() => Step::Tick,
            };
            let mut reply = false;
            match step {
                Step::Stop => return self.finish(conn).await,
                Step::Uploaded(done) => {
                    self.inflight = None;
                    let (end, completes) = done?;
                    self.durable_at(end, completes);
                    reply = true;
                }
                Step::Event(ev) => match ev? {
                    StreamEvent::Data {
                        start,
                        server_end,
                        sent,
                        data,
                    } => {
                        self.take(start, &data, sent)?;
                        self.update(|st| st.server_lsn = st.server_lsn.max(server_end));
                    }
                    StreamEvent::Keepalive {
                        server_end,
                        reply: r,
                    } => {
                        self.update(|st| st.server_lsn = st.server_lsn.max(server_end));
                        reply = r;
                    }
                    StreamEvent::TimelineEnded => {
                        // Outside the select: this exchange must not be cancelled halfway.
                        let (next, start) = conn.reader.end_timeline(&mut conn.writer).await?;
                        self.seal();
                        self.drain().await?;
                        (self.notes)(StreamNote::Timeline {
                            from: self.timeline,
                            to: next,
                            at: start,
                        });
                        self.archive_histories(conn, next).await?;
                        self.begin(conn, next, start - start % self.seg_size)
                            .await?;
                    }
                },
                Step::IdleSeal => self.seal(),
                Step::Tick => {
                    let old = self
                        .pending_since
                        .is_some_and(|t| t.elapsed() >= self.opts.piece_interval);
                    if old && room {
                        self.seal();
                    }
                    // While reading is held back, the server hears from us every second
                    // (it cannot ask: its keepalives wait unread).
                    let every = if room {
                        self.opts.status_interval
                    } else {
                        Duration::from_secs(1)
                    };
                    reply = last_status.elapsed() >= every;
                    self.refresh_lag();
                }
            }
            if reply {
                conn.writer
                    .status(self.received, self.durable_lsn(), false)
                    .await?;
                last_status = Instant::now();
            }
        }
    }

    /// Adds WAL from the server to the pending piece, sealing at segment ends and at the size
    /// limit.
    fn take(&mut self, start: u64, data: &[u8], sent: SystemTime) -> Result<()> {
        if start != self.received {
            return Err(Error::Replication {
                server: self.opts.application_name.clone(),
                detail: format!(
                    "WAL arrived from {} while {} was expected",
                    format_lsn(start),
                    format_lsn(self.received)
                ),
            });
        }
        let seg = self.seg_size;
        let mut off = 0usize;
        while off < data.len() {
            let pos = start + off as u64;
            let seg_end = (pos / seg + 1) * seg;
            let n = ((seg_end - pos) as usize).min(data.len() - off);
            if self.pending.is_empty() {
                self.pending_since = Some(Instant::now());
            }
            self.pending.extend_from_slice(&data[off..off + n]);
            off += n;
            self.received = pos + n as u64;
            if self.received == seg_end || self.pending.len() >= self.opts.piece_bytes {
                self.seal();
            }
        }
        if !data.is_empty() {
            self.recv_times
                .push_back((self.received, sent.min(SystemTime::now())));
        }
        self.update(|st| st.received_lsn = self.received);
        Ok(())
    }

    /// Moves the pending bytes into the upload queue.
    fn seal(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let data = std::mem::take(&mut self.pending);
        self.pending_since = None;
        let end_lsn = self.received;
        let start_lsn = end_lsn - data.len() as u64;
        let seg = self.seg_size;
        self.queue.push_back(Sealed {
            segment: WalName::segment(self.timeline, start_lsn / seg, seg),
            start: start_lsn % seg,
            data,
            end_lsn,
            completes: end_lsn.is_multiple_of(seg),
        });
    }

    fn durable_lsn(&self) -> u64 {
        self.durable.map_or(0, |(_, l)| l)
    }

    fn durable_at(&mut self, end: u64, completes: bool) {
        self.durable = Some((self.timeline, end));
        while self.recv_times.front().is_some_and(|(e, _)| *e <= end) {
            self.recv_times.pop_front();
        }
        self.update(|st| {
            st.durable_lsn = end;
            st.last_durable_at = Some(Utc::now());
            st.segments += completes as u64;
        });
        self.refresh_lag();
    }

    fn refresh_lag(&self) {
        let oldest = self.recv_times.front().map(|(_, t)| *t);
        let durable = self.durable_lsn();
        self.update(|st| {
            st.lag_seconds = oldest
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .map_or(0.0, |d| d.as_secs_f64());
            st.lag_bytes = st.server_lsn.max(st.received_lsn).saturating_sub(durable);
        });
    }

    /// Uploads one piece, retrying until the store takes it; then archives the whole segment
    /// when the piece ends one.
    fn upload(&self, p: Sealed) -> Upload<'a> {
        let (repo, status, notes) = (self.repo, self.status.clone(), self.notes);
        let cluster = self.cluster.expect("known while streaming");
        let seg_size = self.seg_size;
        Box::pin(async move {
            let mut delay = Duration::from_millis(500);
            loop {
                match pieces::put(repo, cluster, &p.segment, p.start, &p.data).await {
                    Ok(()) => break,
                    Err(e) if fatal(&e) => return Err(e),
                    Err(e) => {
                        {
                            let mut st = status.lock().expect("status lock");
                            st.store_errors += 1;
                            st.last_error = Some(e.to_string());
                        }
                        notes(StreamNote::StoreFailed {
                            error: e.to_string(),
                        });
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(10));
                    }
                }
            }
            {
                let mut st = status.lock().expect("status lock");
                st.pieces += 1;
                st.bytes += p.data.len() as u64;
            }
            if p.completes
                && let Err(e) = consolidate(repo, cluster, &p.segment, seg_size).await
            {
                notes(StreamNote::ConsolidateFailed {
                    segment: p.segment.clone(),
                    error: e.to_string(),
                });
            }
            Ok((p.end_lsn, p.completes))
        })
    }

    /// Waits for every sealed piece to be durable.
    async fn drain(&mut self) -> Result<()> {
        loop {
            if let Some(u) = self.inflight.as_mut() {
                let (end, completes) = u.await?;
                self.inflight = None;
                self.durable_at(end, completes);
            }
            match self.queue.pop_front() {
                Some(p) => self.inflight = Some(self.upload(p)),
                None => return Ok(()),
            }
        }
    }

    /// On stop: seal and upload what is held (for at most a minute: the slot keeps the rest),
    /// tell the server, say goodbye.
    async fn finish(&mut self, conn: &mut Connection) -> Result<()> {
        self.seal();
        let drained = tokio::time::timeout(Duration::from_secs(60), self.drain()).await;
        if let Ok(r) = drained {
            r?;
        }
        let _ = conn
            .writer
            .status(self.received, self.durable_lsn(), false)
            .await;
        conn.writer.terminate().await;
        self.refresh_lag();
        Ok(())
    }
}

/// Archives `segment` whole from its pieces (create-only: identical to what
/// `archive_command` archived, if it did), then removes the pieces.
pub async fn consolidate(
    repo: &Repository,
    cluster: ClusterId,
    segment: &WalName,
    seg_size: u64,
) -> Result<()> {
    let ps = pieces::list(repo, cluster, segment).await?;
    if ps.is_empty() {
        return Ok(());
    }
    let whole_archived = super::archive::object_exists(repo, cluster, segment).await?;
    if !whole_archived {
        if seg_size > MAX_CONSOLIDATE || pieces::chain(&ps).1 < seg_size {
            return Ok(());
        }
        let data = pieces::assemble(repo, cluster, segment, &ps).await?;
        push_one(repo, cluster, segment, &data).await?;
    }
    pieces::remove(repo, &ps).await?;
    Ok(())
}
