//! File catalogs: every entry of a volume item with where its bytes lie in the item's tar
//! stream, so one file can be listed, found and restored without reading the rest.
//!
//! A catalog is written by the walker as it writes the tar stream (no second pass) and by the
//! backup, which adds each chunk's plaintext length; it is stored sealed, as chunks named from
//! the item ([`crate::manifest::CatalogRef`]), so garbage collection, `check` and Object Lock
//! treat it like the item's data. Format: docs/FORMAT.md, "File catalogs".

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::engines::volume::glob::Excludes;

/// The catalog format this build writes (and the newest it reads).
pub const CATALOG_VERSION: u32 = 1;

/// Catalogs are stored in slices of this many bytes, each one chunk.
pub const SLICE: usize = 1 << 20;

/// One volume item's entries, in stream order, and its chunks' lengths.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    pub version: u32,
    /// Plaintext bytes of each of the item's chunks, in order (the stream after any inline
    /// head): with them a byte range of the stream names its chunks.
    pub chunk_lens: Vec<u64>,
    pub entries: Vec<Entry>,
}

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    /// A hard link to an earlier file entry (`link`).
    Hardlink,
    Fifo,
    Char,
    Block,
}

/// One tar entry of a volume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Path relative to the volume, `/`-separated, `.` for its root; a name that is not UTF-8
    /// has its bad bytes replaced here and is exact in `path_bytes`.
    pub path: String,
    /// Base64 of the path's bytes, when they are not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_bytes: Option<String>,
    pub kind: EntryKind,
    /// Data bytes (files only).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    /// Permission bits, with setuid, setgid and sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// A symlink's target, or the path a hard link names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// The entry's bytes in the item stream: its PAX records, headers, data and padding.
    pub at: [u64; 2],
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Entry {
    /// An entry as the walker sees it.
    pub fn new(rel: &Path, md: &std::fs::Metadata, kind: EntryKind, link: Option<&Path>) -> Self {
        let (path, path_bytes) = path_text(rel);
        Entry {
            path,
            path_bytes,
            kind,
            size: if kind == EntryKind::File { md.len() } else { 0 },
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            mtime_ns: md
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(md.mtime_nsec()),
            link: link.map(|l| path_text(l).0),
            at: [0, 0],
        }
    }

    /// The entry's name (last component).
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }

    /// The directory holding it (`.` for a top-level entry, `None` for the root).
    pub fn parent(&self) -> Option<&str> {
        if self.path == "." {
            return None;
        }
        Some(self.path.rsplit_once('/').map_or(".", |(p, _)| p))
    }

    /// Whether two versions of an entry differ in content or kind (size, mtime, type, link).
    pub fn content_differs(&self, other: &Entry) -> bool {
        self.kind != other.kind
            || self.size != other.size
            || self.mtime_ns != other.mtime_ns
            || self.link != other.link
    }

    /// Whether only the owner or mode differ.
    pub fn meta_differs(&self, other: &Entry) -> bool {
        self.mode != other.mode || self.uid != other.uid || self.gid != other.gid
    }
}

/// A path as catalog text: `.` for the root, and the exact bytes when they are not UTF-8.
fn path_text(p: &Path) -> (String, Option<String>) {
    let bytes = p.as_os_str().as_bytes();
    if bytes.is_empty() || bytes == b"." {
        return (".".into(), None);
    }
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_string(), None),
        Err(_) => (
            String::from_utf8_lossy(bytes).into_owned(),
            Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
    }
}

/// Entries serialised as the walker appends them, zstd-compressed in memory: a volume of
/// millions of files keeps a few bytes per entry until the backup stores the catalog, not a
/// decoded `Entry` each (measured in docs/BENCHMARKS.md, "One file back").
pub struct CatalogWriter {
    enc: zstd::stream::write::Encoder<'static, Vec<u8>>,
    entries: usize,
}

impl Default for CatalogWriter {
    fn default() -> Self {
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).expect("zstd encoder");
        write!(enc, "{{\"version\":{CATALOG_VERSION},\"entries\":[").expect("in memory");
        CatalogWriter { enc, entries: 0 }
    }
}

impl CatalogWriter {
    pub fn push(&mut self, e: &Entry) {
        if self.entries > 0 {
            self.enc.write_all(b",").expect("in memory");
        }
        serde_json::to_writer(&mut self.enc, e).expect("an entry serialises");
        self.entries += 1;
    }

    /// Entries written so far.
    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// The entries, to be completed with the chunk lengths by [`PendingCatalog::encoded`].
    pub fn finish(self) -> PendingCatalog {
        PendingCatalog {
            compressed: self.enc.finish().expect("in memory"),
        }
    }
}

/// A catalog's entries, waiting for the item's chunk lengths.
pub struct PendingCatalog {
    compressed: Vec<u8>,
}

impl PendingCatalog {
    /// The catalog's encoding with `chunk_lens`, as a reader: the JSON of a [`Catalog`]
    /// with `entries` first, produced a buffer at a time.
    pub fn encoded(self, chunk_lens: &[u64]) -> impl Read {
        let lens: Vec<String> = chunk_lens.iter().map(u64::to_string).collect();
        let tail = format!("],\"chunk_lens\":[{}]}}", lens.join(","));
        let entries = zstd::stream::read::Decoder::new(std::io::Cursor::new(self.compressed))
            .expect("zstd decoder");
        entries.chain(std::io::Cursor::new(tail.into_bytes()))
    }
}

impl Catalog {
    pub fn decode(bytes: &[u8]) -> std::result::Result<Catalog, String> {
        let c: Catalog = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if c.version > CATALOG_VERSION {
            return Err(format!(
                "catalog format {} is newer than this build reads ({CATALOG_VERSION})",
                c.version
            ));
        }
        Ok(c)
    }

    /// The entry at `path` (`.` or `/` for the root; a leading `./` or `/` is ignored).
    pub fn find(&self, path: &str) -> Option<usize> {
        let p = normalize(path);
        self.entries.iter().position(|e| e.path == p)
    }

    /// Entries below the directory `dir`: its children, or every descendant.
    pub fn under(&self, dir: &str, recursive: bool) -> Vec<usize> {
        let d = normalize(dir);
        let prefix = if d == "." {
            String::new()
        } else {
            format!("{d}/")
        };
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.path != "." && e.path.starts_with(&prefix) && e.path != d)
            .filter(|(_, e)| recursive || !e.path[prefix.len()..].contains('/'))
            .map(|(i, _)| i)
            .collect()
    }

    /// Entries matching an include list (all when empty) and no exclude pattern; a matching
    /// directory stands for everything below it. Patterns as for volume excludes (`*.log`
    /// matches a name at any depth, `etc/**` a path).
    pub fn select(&self, include: &[String], exclude: &[String]) -> Vec<usize> {
        let inc = Excludes::new(include);
        let exc = Excludes::new(exclude);
        let hits = |m: &Excludes, e: &Entry| {
            ancestors_and_self(&e.path).any(|p| m.is_excluded(p, last(p)))
        };
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.path != ".")
            .filter(|(_, e)| include.is_empty() || hits(&inc, e))
            .filter(|(_, e)| !hits(&exc, e))
            .map(|(i, _)| i)
            .collect()
    }

    /// `picked` with what restoring them needs: the directories above them (so they come back
    /// with their own modes and times) and the files their hard links name. In stream order.
    pub fn with_needs(&self, picked: &[usize]) -> Vec<usize> {
        let mut out: BTreeSet<usize> = picked.iter().copied().collect();
        let targets: BTreeSet<&str> = picked
            .iter()
            .map(|&i| &self.entries[i])
            .filter(|e| e.kind == EntryKind::Hardlink)
            .filter_map(|e| e.link.as_deref())
            .collect();
        out.extend(self.positions(&targets));
        let mut dirs: BTreeSet<&str> = BTreeSet::new();
        for &i in &out {
            let mut p = self.entries[i].parent();
            while let Some(d) = p.filter(|d| *d != ".") {
                dirs.insert(d);
                p = Some(d.rsplit_once('/').map_or(".", |(a, _)| a));
            }
        }
        out.extend(self.positions(&dirs));
        out.into_iter().collect()
    }

    /// Indices of the entries at `paths`.
    fn positions(&self, paths: &BTreeSet<&str>) -> Vec<usize> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| paths.contains(e.path.as_str()))
            .map(|(i, _)| i)
            .collect()
    }

    /// The stream ranges of `entries` (in stream order), adjacent ones merged.
    pub fn ranges(&self, entries: &[usize]) -> Vec<Range<u64>> {
        let mut out: Vec<Range<u64>> = Vec::new();
        for &i in entries {
            let [a, b] = self.entries[i].at;
            match out.last_mut() {
                Some(r) if r.end == a => r.end = b,
                _ => out.push(a..b),
            }
        }
        out
    }

    /// Indices of the chunks that hold `ranges`, with each chunk's stream offset; `head` is
    /// the item's inline head length (the chunks start after it).
    pub fn chunks_for(&self, ranges: &[Range<u64>], head: u64) -> Vec<(usize, u64)> {
        let mut out = Vec::new();
        let mut at = head;
        let mut r = ranges.iter().peekable();
        for (i, len) in self.chunk_lens.iter().enumerate() {
            let span = at..at + len;
            while r.peek().is_some_and(|x| x.end <= span.start) {
                r.next();
            }
            if r.peek()
                .is_some_and(|x| x.start < span.end && x.end > span.start)
            {
                out.push((i, at));
            }
            at = span.end;
        }
        out
    }

    /// Entries whose bytes touch none of the chunks `bad` (indices), and the paths of those
    /// that do (with the hard links to them); `head` as for [`Catalog::chunks_for`].
    pub fn sound(&self, bad: &BTreeSet<usize>, head: u64) -> (Vec<usize>, Vec<String>) {
        let mut starts = Vec::with_capacity(self.chunk_lens.len());
        let mut at = head;
        for len in &self.chunk_lens {
            starts.push(at);
            at += len;
        }
        let spans: Vec<Range<u64>> = bad
            .iter()
            .filter_map(|&i| Some(starts.get(i).copied()?..starts[i] + self.chunk_lens[i]))
            .collect();
        let touches = |e: &Entry| spans.iter().any(|s| e.at[0] < s.end && e.at[1] > s.start);
        let mut lost: BTreeSet<&str> = BTreeSet::new();
        let (mut ok, mut damaged) = (Vec::new(), Vec::new());
        for (i, e) in self.entries.iter().enumerate() {
            let via_link = e.kind == EntryKind::Hardlink
                && e.link.as_deref().is_some_and(|l| lost.contains(l));
            if touches(e) || via_link {
                lost.insert(&e.path);
                damaged.push(e.path.clone());
            } else {
                ok.push(i);
            }
        }
        (ok, damaged)
    }

    /// Stream bytes the chunks hold.
    pub fn stream_len(&self) -> u64 {
        self.chunk_lens.iter().sum()
    }
}

/// A path as the catalog writes it.
pub fn normalize(path: &str) -> &str {
    let p = path.trim_start_matches("./").trim_start_matches('/');
    let p = p.trim_end_matches('/');
    if p.is_empty() { "." } else { p }
}

fn last(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

/// `a/b/c`, `a/b`, `a`.
fn ancestors_and_self(p: &str) -> impl Iterator<Item = &str> {
    std::iter::successors(Some(p), |p| p.rsplit_once('/').map(|(a, _)| a))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: EntryKind, at: [u64; 2]) -> Entry {
        Entry {
            path: path.into(),
            path_bytes: None,
            kind,
            size: 0,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            link: None,
            at,
        }
    }

    fn sample() -> Catalog {
        let mut link = entry("b/hard", EntryKind::Hardlink, [3000, 3512]);
        link.link = Some("a/x.log".into());
        Catalog {
            version: 1,
            chunk_lens: vec![1000, 1000, 1000, 1000],
            entries: vec![
                entry(".", EntryKind::Dir, [0, 512]),
                entry("a", EntryKind::Dir, [512, 1024]),
                entry("a/x.log", EntryKind::File, [1024, 2100]),
                entry("a/y", EntryKind::File, [2100, 2500]),
                entry("b", EntryKind::Dir, [2500, 3000]),
                link,
            ],
        }
    }

    #[test]
    fn selection_brings_parents_and_link_targets_and_names_only_its_chunks() {
        let c = sample();
        let hard = c.select(&["hard".into()], &[]);
        assert_eq!(hard, vec![5]);
        let need = c.with_needs(&hard);
        assert_eq!(need, vec![1, 2, 4, 5]);
        let ranges = c.ranges(&need);
        assert_eq!(ranges, vec![512..2100, 2500..3512]);
        assert_eq!(
            c.chunks_for(&ranges, 0),
            vec![(0, 0), (1, 1000), (2, 2000), (3, 3000)]
        );
        let y = c.with_needs(&c.select(&["a/y".into()], &[]));
        // `a` (512..1024) reaches into chunk 1; a/y (2100..2500) lies in chunk 2; chunk 3 not.
        assert_eq!(
            c.chunks_for(&c.ranges(&y), 0),
            vec![(0, 0), (1, 1000), (2, 2000)]
        );
        let x = c.with_needs(&c.select(&["b".into()], &["hard".into()]));
        assert_eq!(c.chunks_for(&c.ranges(&x), 0), vec![(2, 2000)]);
        assert_eq!(c.select(&["a".into()], &["*.log".into()]), vec![1, 3]);
        assert_eq!(c.select(&[], &["a".into()]), vec![4, 5]);
    }

    #[test]
    fn a_bad_chunk_costs_the_entries_it_holds_and_links_to_them() {
        let c = sample();
        // Chunk 2 (2000..3000) holds the end of a/x.log, a/y and b.
        let (ok, lost) = c.sound(&[2].into(), 0);
        assert_eq!(ok, vec![0, 1]);
        assert_eq!(lost, ["a/x.log", "a/y", "b", "b/hard"]);
        let (ok, lost) = c.sound(&[3].into(), 0);
        assert_eq!(
            (ok, lost),
            (vec![0, 1, 2, 3, 4], vec!["b/hard".to_string()])
        );
    }

    #[test]
    fn the_streamed_encoding_decodes_to_the_same_catalog() {
        let c = sample();
        let mut w = CatalogWriter::default();
        for e in &c.entries {
            w.push(e);
        }
        let mut bytes = Vec::new();
        w.finish()
            .encoded(&c.chunk_lens)
            .read_to_end(&mut bytes)
            .unwrap();
        assert_eq!(Catalog::decode(&bytes).unwrap(), c);
        let mut empty = Vec::new();
        CatalogWriter::default()
            .finish()
            .encoded(&[])
            .read_to_end(&mut empty)
            .unwrap();
        assert!(Catalog::decode(&empty).unwrap().entries.is_empty());
    }

    #[test]
    fn listing_children_and_descendants() {
        let c = sample();
        assert_eq!(c.under(".", false), vec![1, 4]);
        assert_eq!(c.under("/a/", false), vec![2, 3]);
        assert_eq!(c.under(".", true), vec![1, 2, 3, 4, 5]);
        assert_eq!(c.find("./a/y"), Some(3));
        assert_eq!(
            Catalog::decode(&serde_json::to_vec(&c).unwrap()).unwrap(),
            c
        );
    }
}
