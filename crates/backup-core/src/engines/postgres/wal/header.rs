//! What a WAL file says about itself: the long page header every segment starts with (system
//! identifier, segment size, the address of its first page), and the system identifier in a
//! data directory's `pg_control`.
//!
//! Read before anything is archived, so that a file of another cluster, a damaged file or a
//! file under the wrong name is refused at push instead of found at restore. Little-endian
//! layout (`XLogLongPageHeaderData`, unchanged since PostgreSQL 9.x): magic u16, info u16,
//! timeline u32, page address u64, remaining length u32, padding, system identifier u64,
//! segment size u32, block size u32.

use std::path::Path;

use super::name::{ClusterId, WalName};
use crate::error::{Error, Result};

/// `XLP_LONG_HEADER`: the first page of a segment carries the long header.
const XLP_LONG_HEADER: u16 = 0x0002;

/// A segment's long page header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub timeline: u32,
    /// The WAL address of the segment's first byte.
    pub page_address: u64,
    pub cluster: ClusterId,
    pub segment_size: u64,
}

impl SegmentHeader {
    /// Parses the header at the start of `data`.
    pub fn parse(data: &[u8]) -> Option<SegmentHeader> {
        let u16_at = |o: usize| u16::from_le_bytes(data[o..o + 2].try_into().unwrap());
        let u32_at = |o: usize| u32::from_le_bytes(data[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().unwrap());
        if data.len() < 40 || u16_at(2) & XLP_LONG_HEADER == 0 {
            return None;
        }
        Some(SegmentHeader {
            timeline: u32_at(4),
            page_address: u64_at(8),
            cluster: ClusterId(u64_at(24)),
            segment_size: u32_at(32) as u64,
        })
    }

    /// Checks that `data`, archived as `name`, is that WAL file: a valid long header whose page
    /// address is the named segment's, a timeline no newer than the name's (a new timeline's
    /// first segment starts as a copy of its parent's), and the segment's full size.
    pub fn of_file(name: &WalName, data: &[u8]) -> Result<SegmentHeader> {
        let bad = |detail: String| Error::WalInvalid {
            name: name.to_string(),
            detail,
        };
        let h = SegmentHeader::parse(data)
            .ok_or_else(|| bad("it does not start with a WAL segment header".into()))?;
        let size = h.segment_size;
        if !size.is_power_of_two() || !((1 << 20)..=(1 << 30)).contains(&size) {
            return Err(bad(format!("its header gives a segment size of {size}")));
        }
        let no = name.segment_no_of_file(size).expect("a segment name");
        if h.page_address != no * size {
            return Err(bad(format!(
                "its first page is at {}, not at the start of segment {name}",
                super::name::format_lsn(h.page_address)
            )));
        }
        if h.timeline > name.timeline() || h.timeline == 0 {
            return Err(bad(format!(
                "its first page belongs to timeline {}",
                h.timeline
            )));
        }
        let whole = name.is_segment();
        if (whole && data.len() as u64 != size) || data.len() as u64 > size {
            return Err(bad(format!(
                "it is {} bytes; the cluster's segments are {size}",
                data.len()
            )));
        }
        if h.cluster.0 == 0 {
            return Err(bad("its header has no system identifier".into()));
        }
        Ok(h)
    }
}

/// The system identifier of the cluster whose data directory is `pgdata` (the first eight
/// bytes of `global/pg_control`), if it can be read.
pub fn cluster_of_data_dir(pgdata: &Path) -> Option<ClusterId> {
    let mut buf = [0u8; 8];
    let mut f = std::fs::File::open(pgdata.join("global").join("pg_control")).ok()?;
    std::io::Read::read_exact(&mut f, &mut buf).ok()?;
    let id = u64::from_le_bytes(buf);
    (id != 0).then_some(ClusterId(id))
}

/// The data directory of a file PostgreSQL passes as `pg_wal/NAME` (relative to the data
/// directory it runs the command in).
pub fn data_dir_of_wal_path(path: &Path) -> &Path {
    let dir = path
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new(""));
    if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    }
}

/// A segment of `size` bytes of `fill` under the long header PostgreSQL 15 would write for
/// `name` in `cluster` (tests: archive contracts without a server).
#[cfg(any(test, feature = "testkit"))]
pub fn synthetic_segment(name: &WalName, cluster: ClusterId, size: usize, fill: u8) -> Vec<u8> {
    let mut d = vec![fill; size];
    d[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
    d[2..4].copy_from_slice(&(XLP_LONG_HEADER | 0x0004).to_le_bytes());
    d[4..8].copy_from_slice(&name.timeline().to_le_bytes());
    let addr = name
        .segment_no_of_file(size as u64)
        .expect("a segment name")
        * size as u64;
    d[8..16].copy_from_slice(&addr.to_le_bytes());
    d[16..24].fill(0);
    d[24..32].copy_from_slice(&cluster.0.to_le_bytes());
    d[32..36].copy_from_slice(&(size as u32).to_le_bytes());
    d[36..40].copy_from_slice(&8192u32.to_le_bytes());
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_segment(name: &str, cluster: u64, size: usize, fill: u8) -> Vec<u8> {
        synthetic_segment(
            &WalName::parse(name).unwrap(),
            ClusterId(cluster),
            size,
            fill,
        )
    }

    #[test]
    fn a_segment_is_checked_against_its_name() {
        let name = WalName::parse("000000020000000100000003").unwrap();
        let seg = fake_segment(name.as_str(), 42, 1 << 20, 7);
        let h = SegmentHeader::of_file(&name, &seg).unwrap();
        assert_eq!(h.cluster, ClusterId(42));
        assert_eq!(h.segment_size, 1 << 20);
        // Under another name, truncated, or not WAL at all: refused, saying why.
        let other = WalName::parse("000000020000000100000004").unwrap();
        let e = SegmentHeader::of_file(&other, &seg)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not at the start of segment"), "{e}");
        let e = SegmentHeader::of_file(&name, &seg[..4096])
            .unwrap_err()
            .to_string();
        assert!(e.contains("4096 bytes"), "{e}");
        let e = SegmentHeader::of_file(&name, &vec![0u8; 1 << 20])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("does not start with a WAL segment header"),
            "{e}"
        );
        // A partial segment may be short; an older timeline in the header is a copied start.
        let partial = WalName::parse("000000020000000100000003.partial").unwrap();
        assert!(SegmentHeader::of_file(&partial, &seg[..8192]).is_ok());
        let mut older = seg.clone();
        older[4..8].copy_from_slice(&1u32.to_le_bytes());
        assert!(SegmentHeader::of_file(&name, &older).is_ok());
        older[4..8].copy_from_slice(&3u32.to_le_bytes());
        assert!(SegmentHeader::of_file(&name, &older).is_err());
    }

    #[test]
    fn the_data_directory_of_a_wal_path() {
        assert_eq!(
            data_dir_of_wal_path(Path::new("pg_wal/000000010000000000000001")),
            Path::new(".")
        );
        assert_eq!(
            data_dir_of_wal_path(Path::new("/srv/pg/pg_wal/RECOVERYXLOG")),
            Path::new("/srv/pg")
        );
    }
}
