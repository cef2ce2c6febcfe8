//! Content-defined chunking (FastCDC 2020) of a byte stream, with the stream's SHA-256 on the way.

use fastcdc::v2020::AsyncStreamCDC;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::repository::ChunkerParams;
use crate::source::ByteStream;

/// Total length and SHA-256 of a chunked stream.
#[derive(Debug, Clone, Copy)]
pub struct StreamDigest {
    pub size: u64,
    pub sha256: [u8; 32],
}

/// Spawns a task that cuts `reader` into chunks and sends them, in order, on the returned
/// channel. The channel is small, so a slow consumer stops the reader: memory stays bounded by
/// the chunker buffer (one max-size chunk) plus `queue` chunks. The task's result is the digest
/// of the whole stream, or the read error that ended it.
pub fn spawn_chunker(
    reader: ByteStream,
    params: ChunkerParams,
    queue: usize,
    head: &[u8],
) -> (
    mpsc::Receiver<Vec<u8>>,
    tokio::task::JoinHandle<std::io::Result<StreamDigest>>,
) {
    let (tx, rx) = mpsc::channel(queue.max(1));
    // The stream digest covers an inline head (see `Source::volatile_prefix`) and the chunks.
    let mut sha = Sha256::new();
    sha.update(head);
    let mut size = head.len() as u64;
    let task = tokio::spawn(async move {
        let mut cdc = AsyncStreamCDC::new(
            reader,
            params.min_size as usize,
            params.avg_size as usize,
            params.max_size as usize,
        );
        let stream = cdc.as_stream();
        futures::pin_mut!(stream);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| match e {
                fastcdc::v2020::Error::IoError(e) => e,
                other => std::io::Error::other(other.to_string()),
            })?;
            sha.update(&chunk.data);
            size += chunk.data.len() as u64;
            if tx.send(chunk.data).await.is_err() {
                return Err(std::io::Error::other("chunk consumer went away"));
            }
        }
        Ok(StreamDigest {
            size,
            sha256: sha.finalize().into(),
        })
    });
    (rx, task)
}
