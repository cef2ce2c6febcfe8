//! Content-defined chunking (FastCDC 2020) of a byte stream, with the stream's SHA-256 on the way.

use std::sync::Arc;

use fastcdc::v2020;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::repository::ChunkerParams;
use crate::source::ByteStream;

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

/// Spawns a task that cuts `reader` into chunks and sends them, in order, on the returned
/// channel. The channel is small, so a slow consumer stops the reader: memory stays bounded by
/// the read buffer (three max-size chunks) plus `queue` chunks. The task's result is the digest
/// of the whole stream, or the read error that ended it.
///
/// Cut points are FastCDC 2020 with normalization level 1 and the default gear table, the same
/// as `fastcdc`'s stream chunkers produce. We run the scan loop ourselves because those
/// chunkers shift their whole max-size buffer down after every chunk (7 bytes moved per byte
/// chunked at our sizes); here the unread rest moves down only when the buffer end is reached.
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
        let cutter = Cutter::new(params);
        let max = cutter.max_size();
        let mut buf = vec![0u8; 3 * max];
        let (mut start, mut end, mut eof) = (0usize, 0usize, false);
        loop {
            // Read only until one max-size cut is possible: a source that pauses (a dump
            // between tables, a stalled producer) must not hold back what it already sent.
            while !eof && end - start < max {
                if end == buf.len() {
                    buf.copy_within(start..end, 0);
                    end -= start;
                    start = 0;
                }
                let n = reader.read(&mut buf[end..]).await?;
                if n == 0 {
                    eof = true;
                } else {
                    end += n;
                }
            }
            if start == end {
                break;
            }
            let len = cutter.cut(&buf[start..end]);
            let chunk = Arc::new(buf[start..start + len].to_vec());
            start += len;
            size += len as u64;
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
}
