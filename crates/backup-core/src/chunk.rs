//! Content-defined chunking (FastCDC 2020) of a byte stream or of a source's pieces.

use std::sync::Arc;

use fastcdc::v2020;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::repository::ChunkerParams;
use crate::source::{ByteStream, CachedChunk, FileKey, Piece, PieceStream};

/// Total length and SHA-256 of a chunked stream.
#[derive(Debug, Clone, Copy)]
pub struct StreamDigest {
    pub size: u64,
    pub sha256: [u8; 32],
}

/// FastCDC 2020 cut points (normalization level 1, default gear table) for one set of sizes.
#[derive(Debug, Clone, Copy)]
pub struct Cutter {
    min: usize,
    avg: usize,
    max: usize,
    mask_s: u64,
    mask_l: u64,
}

impl Cutter {
    pub fn new(params: ChunkerParams) -> Self {
        let avg = params.avg_size as usize;
        let (mask_s, mask_l) = v2020::select_masks(avg, v2020::Normalization::Level1);
        Cutter {
            min: params.min_size as usize,
            avg,
            max: params.max_size as usize,
            mask_s,
            mask_l,
        }
    }

    /// Length of the chunk that starts `data`. Final only when `data` holds at least one
    /// max-size chunk or is the end of the stream.
    pub fn cut(&self, data: &[u8]) -> usize {
        let (_, len) = v2020::cut(
            data,
            self.min,
            self.avg,
            self.max,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
        );
        len
    }

    pub fn max_size(&self) -> usize {
        self.max
    }
}

/// A read buffer of three max-size chunks, cut from the front.
///
/// Cut points are FastCDC 2020 with normalization level 1 and the default gear table, the same
/// as `fastcdc`'s stream chunkers produce. We run the scan loop ourselves because those
/// chunkers shift their whole max-size buffer down after every chunk (7 bytes moved per byte
/// chunked at our sizes); here the unread rest moves down only when the buffer end is reached.
struct Window {
    cutter: Cutter,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Window {
    fn new(params: ChunkerParams) -> Self {
        let cutter = Cutter::new(params);
        Window {
            buf: vec![0u8; 3 * cutter.max_size()],
            cutter,
            start: 0,
            end: 0,
        }
    }

    fn pending(&self) -> usize {
        self.end - self.start
    }

    /// Free space after the data (moving the data to the front first if there is none).
    fn space(&mut self) -> &mut [u8] {
        if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    /// The next chunk, once one max-size cut is possible or, with `last`, of whatever is left.
    fn next(&mut self, last: bool) -> Option<Arc<Vec<u8>>> {
        if self.start == self.end || (!last && self.pending() < self.cutter.max_size()) {
            return None;
        }
        let len = self.cutter.cut(&self.buf[self.start..self.end]);
        let chunk = Arc::new(self.buf[self.start..self.start + len].to_vec());
        self.start += len;
        Some(chunk)
    }
}

/// Spawns a task that cuts `reader` into chunks and sends them, in order, on the returned
/// channel. The channel is small, so a slow consumer stops the reader: memory stays bounded by
/// the read buffer (three max-size chunks) plus `queue` chunks. The task's result is the digest
/// of the whole stream, or the read error that ended it.
pub fn spawn_chunker(
    mut reader: ByteStream,
    params: ChunkerParams,
    queue: usize,
    head: &[u8],
) -> (
    mpsc::Receiver<Arc<Vec<u8>>>,
    tokio::task::JoinHandle<std::io::Result<StreamDigest>>,
) {
    let (tx, rx) = mpsc::channel(queue.max(1));
    // The stream digest covers an inline head (see `Source::volatile_prefix`) and the chunks.
    // It runs on its own thread: on the chunker's it made cutting the serial bottleneck of
    // re-backups, where nothing is compressed.
    let (sha_tx, mut sha_rx) = mpsc::channel::<Arc<Vec<u8>>>(queue.max(1) + 2);
    let mut sha = Sha256::new();
    sha.update(head);
    let sha_task = tokio::task::spawn_blocking(move || {
        while let Some(chunk) = sha_rx.blocking_recv() {
            sha.update(&chunk[..]);
        }
        <[u8; 32]>::from(sha.finalize())
    });
    let mut size = head.len() as u64;
    let task = tokio::spawn(async move {
        let mut window = Window::new(params);
        let max = window.cutter.max_size();
        let mut eof = false;
        loop {
            // Read only until one max-size cut is possible: a source that pauses (a dump
            // between tables, a stalled producer) must not hold back what it already sent.
            while !eof && window.pending() < max {
                let n = reader.read(window.space()).await?;
                if n == 0 {
                    eof = true;
                } else {
                    window.end += n;
                }
            }
            let Some(chunk) = window.next(eof) else {
                break;
            };
            size += chunk.len() as u64;
            let hashed = sha_tx.send(chunk.clone()).await;
            if hashed.is_err() || tx.send(chunk).await.is_err() {
                return Err(std::io::Error::other("chunk consumer went away"));
            }
        }
        drop(sha_tx);
        let sha256 = sha_task.await.map_err(std::io::Error::other)?;
        Ok(StreamDigest { size, sha256 })
    });
    (rx, task)
}

/// What the piece chunker sends on, in stream order.
#[derive(Debug)]
pub enum Chunked {
    /// A new chunk: to be identified, deduplicated and stored.
    Data(Arc<Vec<u8>>),
    /// A chunk the repository already has (from the file cache).
    Stored(CachedChunk),
    /// The chunks that follow, `key.size` bytes of them, are this file's data (see
    /// [`Piece::File`]).
    File(Option<FileKey>),
}

/// As [`spawn_chunker`] for a source that sends [`Piece`]s: content-defined cuts between
/// [`Piece::Cut`]s, and cached chunks passed through. A file's data (after a [`Piece::File`])
/// is cut with `params`; everything between files (small files, tar headers) with
/// [`ChunkerParams::between_files`], so that an edit to one small file stores a few of its
/// neighbours rather than a megabyte of them. No stream digest here: such items are
/// digested over their chunk ids (see `DigestKind::ChunkIds`). The task ends when the
/// source closes its side; the source's own result says whether that was success.
pub fn spawn_piece_chunker(
    mut pieces: PieceStream,
    params: ChunkerParams,
    queue: usize,
) -> (
    mpsc::Receiver<Chunked>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let (tx, rx) = mpsc::channel(queue.max(1));
    let task = tokio::spawn(async move {
        let gone = || std::io::Error::other("chunk consumer went away");
        let mut window = Window::new(params);
        let (large, small) = (window.cutter, Cutter::new(params.between_files()));
        window.cutter = small;
        let mut open = true;
        while open {
            let piece = pieces.recv().await;
            open = piece.is_some();
            if let Some(Piece::Bytes(data)) = piece {
                let mut rest = &data[..];
                while !rest.is_empty() {
                    let space = window.space();
                    let n = space.len().min(rest.len());
                    space[..n].copy_from_slice(&rest[..n]);
                    window.end += n;
                    rest = &rest[n..];
                    while let Some(chunk) = window.next(false) {
                        tx.send(Chunked::Data(chunk)).await.map_err(|_| gone())?;
                    }
                }
                continue;
            }
            // A cut, a file, cached chunks or the end: finish the current run first.
            while let Some(chunk) = window.next(true) {
                tx.send(Chunked::Data(chunk)).await.map_err(|_| gone())?;
            }
            window.cutter = small;
            match piece {
                Some(Piece::File(key)) => {
                    window.cutter = large;
                    tx.send(Chunked::File(key)).await.map_err(|_| gone())?;
                }
                Some(Piece::Stored(chunks)) => {
                    for c in chunks {
                        tx.send(Chunked::Stored(c)).await.map_err(|_| gone())?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    });
    (rx, task)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Our scan loop must cut exactly where fastcdc's reference chunker does (dedup against
    /// existing repositories depends on it), across buffer refills and compactions, with a
    /// reader that returns odd-sized pieces.
    #[tokio::test]
    async fn cuts_match_fastcdc_reference() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut data = vec![0u8; 6 << 20];
        rng.fill(&mut data[..3 << 20]);
        for (i, b) in data[3 << 20..].iter_mut().enumerate() {
            *b = b"lifeboat text, partly repetitive "[(i * 7 / 5) % 33];
        }
        let params = ChunkerParams {
            min_size: 16 << 10,
            avg_size: 64 << 10,
            max_size: 256 << 10,
        };
        let expected: Vec<usize> = v2020::FastCDC::new(&data, 16 << 10, 64 << 10, 256 << 10)
            .map(|c| c.length)
            .collect();
        let (client, mut server) = tokio::io::duplex(7919);
        let input = data.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for piece in input.chunks(12_345) {
                server.write_all(piece).await.unwrap();
            }
        });
        let (mut rx, task) = spawn_chunker(Box::new(client), params, 2, b"");
        let mut got = Vec::new();
        let mut joined = Vec::new();
        while let Some(c) = rx.recv().await {
            got.push(c.len());
            joined.extend_from_slice(&c);
        }
        let digest = task.await.unwrap().unwrap();
        assert_eq!(got, expected);
        assert!(got.len() > 40, "{} chunks", got.len());
        assert_eq!(joined, data);
        assert_eq!(digest.size, data.len() as u64);
        assert_eq!(digest.sha256, <[u8; 32]>::from(Sha256::digest(&data)));
    }

    /// Between cuts, pieces are cut exactly as a stream of just that run would be; a file's
    /// data becomes the same chunks wherever it sits; marks and cached chunks keep their place.
    #[tokio::test]
    async fn pieces_are_cut_within_fences_only() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut file = vec![0u8; 1 << 20];
        rng.fill(&mut file[..]);
        let params = ChunkerParams {
            min_size: 16 << 10,
            avg_size: 64 << 10,
            max_size: 256 << 10,
        };
        let reference = |d: &[u8]| -> Vec<usize> {
            v2020::FastCDC::new(d, 16 << 10, 64 << 10, 256 << 10)
                .map(|c| c.length)
                .collect()
        };
        let key = FileKey {
            path: "f".into(),
            size: file.len() as u64,
            mtime_ns: 1,
            ctime_ns: 2,
            ino: 3,
        };
        let cached = CachedChunk {
            id: crate::id::ChunkId([9; 32]),
            len: 5,
        };
        for lead in [1000usize, 70_000] {
            let (tx, rx) = mpsc::channel(4);
            let (mut out, task) = spawn_piece_chunker(rx, params, 2);
            let head = vec![b'h'; lead];
            let file2 = file.clone();
            let cached2 = cached.clone();
            let key2 = key.clone();
            tokio::spawn(async move {
                tx.send(Piece::Bytes(head)).await.unwrap();
                tx.send(Piece::File(Some(key2))).await.unwrap();
                for part in file2.chunks(300_001) {
                    tx.send(Piece::Bytes(part.to_vec())).await.unwrap();
                }
                tx.send(Piece::Cut).await.unwrap();
                tx.send(Piece::Stored(vec![cached2])).await.unwrap();
                tx.send(Piece::Bytes(b"tail".to_vec())).await.unwrap();
            });
            let mut seen = Vec::new();
            while let Some(m) = out.recv().await {
                seen.push(m);
            }
            task.await.unwrap().unwrap();
            let file_at = seen
                .iter()
                .position(|m| matches!(m, Chunked::File(Some(k)) if *k == key))
                .expect("file mark passed on");
            let before: usize = seen[..file_at]
                .iter()
                .map(|m| match m {
                    Chunked::Data(d) => d.len(),
                    _ => panic!("only data before the mark"),
                })
                .sum();
            assert_eq!(before, lead, "the lead-in ends at the mark");
            let mut lens = Vec::new();
            let mut rest = seen[file_at + 1..].iter();
            let mut joined = Vec::new();
            for m in rest.by_ref() {
                match m {
                    Chunked::Data(d) => {
                        lens.push(d.len());
                        joined.extend_from_slice(d);
                    }
                    Chunked::Stored(c) => {
                        assert_eq!(*c, cached);
                        break;
                    }
                    Chunked::File(_) => panic!("one mark only"),
                }
            }
            assert_eq!(
                joined, file,
                "the file's data, and nothing else, before the cut"
            );
            assert_eq!(lens, reference(&file));
            assert!(lens.len() > 5);
            match rest.next() {
                Some(Chunked::Data(d)) => assert_eq!(&d[..], b"tail"),
                other => panic!("expected the tail, got {other:?}"),
            }
            assert!(rest.next().is_none());
        }
    }
}
