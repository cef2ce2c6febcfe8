//! WAL file names, the cluster they belong to, and segment arithmetic for any segment size.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The default WAL segment size (`initdb --wal-segsize` changes it).
pub const DEFAULT_SEGMENT_SIZE: u64 = 16 << 20;

/// A cluster, by its system identifier (`pg_control`, and every segment's long header): the
/// archive keeps each cluster's WAL apart, so two clusters never collide on a file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct ClusterId(pub u64);

impl ClusterId {
    /// Parses the decimal form PostgreSQL prints (`pg_controldata`, `pg_control_system()`).
    pub fn parse(s: &str) -> Result<ClusterId> {
        s.trim().parse().map(ClusterId).map_err(|_| {
            Error::Usage(format!(
                "{s:?} is not a system identifier (the decimal number pg_controldata prints)"
            ))
        })
    }
}

impl std::fmt::Display for ClusterId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl TryFrom<String> for ClusterId {
    type Error = Error;
    fn try_from(s: String) -> Result<ClusterId> {
        ClusterId::parse(&s)
    }
}

impl From<ClusterId> for String {
    fn from(c: ClusterId) -> String {
        c.to_string()
    }
}

/// A WAL file name: a segment (`TTTTTTTTXXXXXXXXYYYYYYYY`), a partial segment (`.partial`), a
/// backup history file (`SEGMENT.OFFSET.backup`) or a timeline history file (`TTTTTTTT.history`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct WalName(String);

impl WalName {
    /// Accepts only the names PostgreSQL gives WAL files: anything else is a mistake (`%f` for
    /// `%p`) that must not become an object key.
    pub fn parse(name: &str) -> Result<WalName> {
        // PostgreSQL writes upper-case hex.
        let hex = |s: &str, n: usize| {
            s.len() == n
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
        };
        let ok = match name.split_once('.') {
            None => hex(name, 24),
            Some((seg, "partial")) => hex(seg, 24),
            Some((tli, "history")) => hex(tli, 8),
            Some((seg, rest)) => {
                hex(seg, 24) && rest.strip_suffix(".backup").is_some_and(|off| hex(off, 8))
            }
        };
        if !ok {
            return Err(Error::Usage(format!(
                "{name:?} is not a WAL file name (24 hex digits, optionally .partial or .OFFSET.backup, or TIMELINE.history); archive_command passes %p, restore_command %f"
            )));
        }
        Ok(WalName(name.to_string()))
    }

    /// The segment `no` of timeline `tli`.
    pub fn segment(tli: u32, no: u64, seg_size: u64) -> WalName {
        let per = segments_per_id(seg_size);
        WalName(format!("{tli:08X}{:08X}{:08X}", no / per, no % per))
    }

    /// The history file of timeline `tli`.
    pub fn history(tli: u32) -> WalName {
        WalName(format!("{tli:08X}.history"))
    }

    /// The file name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The timeline the file belongs to.
    pub fn timeline(&self) -> u32 {
        u32::from_str_radix(&self.0[..8], 16).expect("validated hex")
    }

    /// A full segment (not partial, not a history or backup file).
    pub fn is_segment(&self) -> bool {
        self.0.len() == 24
    }

    /// A timeline history file.
    pub fn is_history(&self) -> bool {
        self.0.ends_with(".history")
    }

    /// A segment or partial segment: a file that starts with a WAL page header.
    pub fn has_wal_pages(&self) -> bool {
        self.is_segment() || self.0.ends_with(".partial")
    }

    /// The segment number a segment, partial segment or backup history file belongs to
    /// (`None` for a timeline history file).
    pub fn segment_no_of_file(&self, seg_size: u64) -> Option<u64> {
        if self.0.len() < 24 {
            return None;
        }
        let log = u64::from_str_radix(&self.0[8..16], 16).ok()?;
        let seg = u64::from_str_radix(&self.0[16..24], 16).ok()?;
        Some(log * segments_per_id(seg_size) + seg)
    }

    /// Segment number within its timeline (`None` unless a full segment).
    pub fn segment_no(&self, seg_size: u64) -> Option<u64> {
        if !self.is_segment() {
            return None;
        }
        self.segment_no_of_file(seg_size)
    }

    /// The next segment on the same timeline (`None` unless a full segment).
    pub fn next_segment(&self, seg_size: u64) -> Option<WalName> {
        let no = self.segment_no(seg_size)?;
        Some(WalName::segment(self.timeline(), no + 1, seg_size))
    }
}

impl std::fmt::Display for WalName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Segments per 4 GiB "log id" (the middle 8 hex digits of a name count these).
fn segments_per_id(seg_size: u64) -> u64 {
    (1u64 << 32) / seg_size.clamp(1 << 20, 1 << 30)
}

/// The segment holding `lsn`.
pub fn segment_of(lsn: u64, seg_size: u64) -> u64 {
    lsn / seg_size
}

/// `X/Y` → a number.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// A number → `X/Y` as PostgreSQL prints it.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_wal_file_names_are_accepted() {
        for ok in [
            "000000010000000000000003",
            "000000010000000000000003.partial",
            "000000010000000000000002.00000028.backup",
            "00000002.history",
        ] {
            assert_eq!(WalName::parse(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "pg_wal/000000010000000000000003",
            "00000001000000000000003",
            "000000010000000000000003.ready",
            "../00000002.history",
            "000000010000000000000003.0000002.backup",
            "0000000a0000000000000003",
        ] {
            assert!(WalName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn segment_numbers_follow_the_segment_size() {
        let n = WalName::parse("0000000200000001000000FF").unwrap();
        assert_eq!(n.timeline(), 2);
        assert_eq!(n.segment_no(DEFAULT_SEGMENT_SIZE), Some(0x1FF));
        assert_eq!(
            n.next_segment(DEFAULT_SEGMENT_SIZE).unwrap().as_str(),
            "000000020000000200000000"
        );
        // 64 MiB segments: 64 per log id, so ..0000003F is followed by ..00000001 00000000.
        let big = 64 << 20;
        let last = WalName::parse("00000001000000000000003F").unwrap();
        assert_eq!(last.segment_no(big), Some(0x3F));
        assert_eq!(
            last.next_segment(big).unwrap().as_str(),
            "000000010000000100000000"
        );
        assert_eq!(
            WalName::segment(1, 0x40, big),
            last.next_segment(big).unwrap()
        );
        assert_eq!(WalName::history(3).as_str(), "00000003.history");
        assert_eq!(segment_of(0x2000028, DEFAULT_SEGMENT_SIZE), 2);
    }

    #[test]
    fn lsns_and_cluster_ids() {
        assert_eq!(parse_lsn("0/2000028"), Some(0x2000028));
        assert_eq!(parse_lsn("1/A"), Some((1 << 32) | 0xA));
        assert_eq!(format_lsn((1 << 32) | 0xA), "1/A");
        assert_eq!(format_lsn(0x2000028), "0/2000028");
        assert_eq!(
            ClusterId::parse("7445672345354354123").unwrap().to_string(),
            "7445672345354354123"
        );
        assert!(ClusterId::parse("0x12").is_err());
    }
}
