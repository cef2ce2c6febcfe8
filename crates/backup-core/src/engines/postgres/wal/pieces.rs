//! Streamed WAL in the repository: what `wal stream` receives is stored as sealed pieces of a
//! segment, `wal/<cluster>/<timeline>/stream/<segment>/<start>-<end>` (byte offsets in the
//! segment, 8 hex digits), each create-only and durable before the server is told so. Readers
//! assemble a segment from its pieces when the whole segment is not archived; the newest
//! segment may be partial, and is then handed to recovery zero-padded (as `pg_receivewal`'s
//! `.partial` file is), so recovery ends at the newest streamed record.

use sha2::{Digest, Sha256};

use super::archive::read_object;
use super::name::{ClusterId, WalName};
use crate::codec::ObjectType;
use crate::error::{Error, Result};
use crate::repository::Repository;
use crate::store::{ObjectMeta, PutMode};

/// zstd level for pieces, as for whole segments.
const PIECE_ZSTD_LEVEL: i32 = 1;

/// One stored piece of a segment: bytes `start..end` of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub segment: WalName,
    pub start: u64,
    pub end: u64,
    pub meta: ObjectMeta,
}

/// `wal/<cluster>/<timeline>/stream/<segment>/`: where a segment's pieces lie.
pub fn prefix(cluster: ClusterId, segment: &WalName) -> String {
    format!("wal/{cluster}/{}/stream/{segment}/", &segment.as_str()[..8])
}

/// The key of bytes `start..end` of `segment`.
pub fn key(cluster: ClusterId, segment: &WalName, start: u64, end: u64) -> String {
    format!("{}{start:08X}-{end:08X}", prefix(cluster, segment))
}

/// What a piece's envelope is bound to: cluster, segment and range, so a piece cannot be
/// replayed as another.
fn bound(cluster: ClusterId, segment: &WalName, start: u64, end: u64) -> String {
    format!("{cluster}/{segment}/{start:08X}-{end:08X}")
}

/// Parses the path parts of a listed key; `None` for anything else.
pub fn parse(parts: &[&str], meta: &ObjectMeta) -> Option<(ClusterId, Piece)> {
    let ["wal", c, tli, "stream", seg, range] = parts else {
        return None;
    };
    let segment = WalName::parse(seg).ok().filter(|w| w.is_segment())?;
    if &segment.as_str()[..8] != *tli {
        return None;
    }
    let (s, e) = range.split_once('-')?;
    let (start, end) = (
        u64::from_str_radix(s, 16).ok()?,
        u64::from_str_radix(e, 16).ok()?,
    );
    (s.len() == 8 && e.len() == 8 && start < end).then_some(())?;
    let cluster = ClusterId(c.parse().ok()?);
    Some((
        cluster,
        Piece {
            segment,
            start,
            end,
            meta: meta.clone(),
        },
    ))
}

/// Stores bytes `start..start + data.len()` of `segment`, durably. An identical piece stored
/// before (a restarted streamer) is success; a different one under the same range is refused.
pub async fn put(
    repo: &Repository,
    cluster: ClusterId,
    segment: &WalName,
    start: u64,
    data: &[u8],
) -> Result<()> {
    let end = start + data.len() as u64;
    let b = bound(cluster, segment, start, end);
    let sealed = repo
        .keys()
        .seal(ObjectType::Wal, b.as_bytes(), data, PIECE_ZSTD_LEVEL);
    let k = key(cluster, segment, start, end);
    match repo.store().put(&k, sealed, PutMode::CreateOnly).await {
        Err(Error::AlreadyExists { .. }) => {
            let stored = read_object(repo, &k, &b).await?;
            if Sha256::digest(&stored) == Sha256::digest(data) {
                Ok(())
            } else {
                Err(Error::WalConflict {
                    name: format!("{segment} bytes {start}..{end} (streamed)"),
                    location: repo.location(),
                })
            }
        }
        other => other,
    }
}

/// Reads and authenticates one piece.
pub async fn read(repo: &Repository, cluster: ClusterId, p: &Piece) -> Result<Vec<u8>> {
    let data = read_object(
        repo,
        &p.meta.key,
        &bound(cluster, &p.segment, p.start, p.end),
    )
    .await?;
    if data.len() as u64 != p.end - p.start {
        return Err(Error::Format {
            object: format!("{} in {}", p.meta.key, repo.location()),
            detail: format!("{} bytes, its name says {}", data.len(), p.end - p.start),
        });
    }
    Ok(data)
}

/// The pieces that cover a segment from its first byte without a hole, in order, and the
/// offset they reach. Overlapping pieces (a streamer restarted inside one) hold the same
/// bytes; the one reaching furthest is taken.
pub fn chain(pieces: &[Piece]) -> (Vec<&Piece>, u64) {
    let mut sorted: Vec<&Piece> = pieces.iter().collect();
    sorted.sort_by_key(|p| (p.start, std::cmp::Reverse(p.end)));
    let mut used = Vec::new();
    let mut reached = 0;
    loop {
        let next = sorted
            .iter()
            .filter(|p| p.start <= reached && p.end > reached)
            .max_by_key(|p| p.end);
        match next {
            Some(p) => {
                reached = p.end;
                used.push(*p);
            }
            None => return (used, reached),
        }
    }
}

/// Lists one segment's pieces.
pub async fn list(repo: &Repository, cluster: ClusterId, segment: &WalName) -> Result<Vec<Piece>> {
    let metas = repo.store().list(&prefix(cluster, segment)).await?;
    Ok(metas
        .iter()
        .filter_map(|m| {
            let parts: Vec<&str> = m.key.split('/').collect();
            parse(&parts, m)
                .filter(|(c, _)| *c == cluster)
                .map(|(_, p)| p)
        })
        .collect())
}

/// Assembles `segment` from its pieces: the whole segment, or the bytes streamed so far
/// followed by zeros up to the segment size its header gives. [`Error::NotFound`] when no
/// piece starts the segment.
pub async fn assemble(
    repo: &Repository,
    cluster: ClusterId,
    segment: &WalName,
    pieces: &[Piece],
) -> Result<Vec<u8>> {
    let (used, reached) = chain(pieces);
    if used.is_empty() {
        return Err(Error::NotFound {
            key: prefix(cluster, segment),
            location: repo.location(),
        });
    }
    let mut out: Vec<u8> = Vec::new();
    for p in used {
        let data = read(repo, cluster, p).await?;
        let skip = (out.len() as u64 - p.start) as usize;
        out.extend_from_slice(&data[skip..]);
    }
    debug_assert_eq!(out.len() as u64, reached);
    let size = super::header::SegmentHeader::parse(&out)
        .map(|h| h.segment_size)
        .filter(|s| s.is_power_of_two() && ((1 << 20)..=(1 << 30)).contains(s))
        .ok_or_else(|| Error::WalInvalid {
            name: segment.to_string(),
            detail: "its first streamed piece does not start with a segment header".into(),
        })?;
    if reached > size {
        return Err(Error::WalInvalid {
            name: segment.to_string(),
            detail: format!("streamed pieces reach byte {reached} of a {size}-byte segment"),
        });
    }
    out.resize(size as usize, 0);
    Ok(out)
}

/// Deletes a segment's pieces (once the whole segment is archived); pieces under Object Lock
/// stay, and readers prefer the whole segment.
pub async fn remove(repo: &Repository, pieces: &[Piece]) -> Result<usize> {
    let mut removed = 0;
    for p in pieces {
        match repo.store().delete(&p.meta.key).await {
            Ok(()) => removed += 1,
            Err(Error::Retained { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(start: u64, end: u64) -> Piece {
        let segment = WalName::parse("000000010000000000000003").unwrap();
        let k = key(ClusterId(7), &segment, start, end);
        Piece {
            segment,
            start,
            end,
            meta: ObjectMeta {
                key: k,
                size: end - start,
                modified: None,
            },
        }
    }

    #[test]
    fn keys_parse_back() {
        let p = piece(0x2000, 0x8000);
        let parts: Vec<&str> = p.meta.key.split('/').collect();
        assert_eq!(
            p.meta.key,
            "wal/7/00000001/stream/000000010000000000000003/00002000-00008000"
        );
        assert_eq!(parse(&parts, &p.meta), Some((ClusterId(7), p.clone())));
        let wrong_tli = "wal/7/00000002/stream/000000010000000000000003/00002000-00008000";
        let parts: Vec<&str> = wrong_tli.split('/').collect();
        assert_eq!(parse(&parts, &p.meta), None);
        let empty = "wal/7/00000001/stream/000000010000000000000003/00002000-00002000";
        let parts: Vec<&str> = empty.split('/').collect();
        assert_eq!(parse(&parts, &p.meta), None);
    }

    #[test]
    fn chains_cover_from_zero_and_stop_at_a_hole() {
        let ps = [piece(0, 100), piece(100, 250), piece(300, 400)];
        let (used, reached) = chain(&ps);
        assert_eq!(reached, 250);
        assert_eq!(used.len(), 2);
        // A restarted streamer's overlapping piece bridges the hole.
        let ps = [
            piece(0, 100),
            piece(100, 250),
            piece(300, 400),
            piece(200, 320),
        ];
        assert_eq!(chain(&ps).1, 400);
        // Nothing from zero: nothing usable.
        assert_eq!(chain(&[piece(10, 20)]).1, 0);
    }
}
