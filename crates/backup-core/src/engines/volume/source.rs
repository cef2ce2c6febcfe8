//! `VolumeSource`: a directory as a deterministic tar stream (sorted entries, numeric owners).
//!
//! The stream goes to the backup as [`Piece`]s: large files' data is fenced by cuts, so it
//! becomes chunks of its own, and a file unchanged since the last backup (see [`crate::source::cache`]) is
//! sent as those chunks without being read.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::{self, File, Metadata};
use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::attrs::AttrReader;
use super::facts::VolumeFacts;
use super::owners::Names;
use crate::catalog::{CatalogWriter, Entry, EntryKind, PendingCatalog};
use crate::engines::volume::glob::Excludes;
use crate::error::{Error, Result};
use crate::manifest::{Facts, ItemKind};
use crate::source::{
    ByteStream, CacheSlot, CachedChunk, FileCache, FileKey, Piece, PieceContext, PieceStream,
    Source,
};

/// Options of a volume source.
#[derive(Debug, Clone)]
pub struct VolumeOptions {
    /// Exclude globs (see [`crate::engines::volume::glob`]).
    pub exclude: Vec<String>,
    /// Do not descend into other filesystems mounted below the root (the mount point itself is
    /// kept as an empty directory), like `tar --one-file-system`.
    pub one_file_system: bool,
    /// What a file or directory that cannot be read does to the item.
    pub unreadable: Unreadable,
}

impl Default for VolumeOptions {
    fn default() -> Self {
        VolumeOptions {
            exclude: Vec::new(),
            one_file_system: true,
            unreadable: Unreadable::Skip,
        }
    }
}

/// What an entry the walk cannot read (permission denied, a name too long) does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unreadable {
    /// Left out of the item and named; the run exits 8 and the snapshot stands (restic's
    /// exit 3): one unreadable file does not cost the night's backup.
    #[default]
    Skip,
    /// The item fails (and with it the run, unless `--partial`).
    Fail,
}

/// What the walker thread leaves: the item's facts and its catalog entries.
type Walked = (Facts, PendingCatalog);

/// Backs up a directory tree as a tar stream produced on a blocking thread.
pub struct VolumeSource {
    name: String,
    path: PathBuf,
    opts: VolumeOptions,
    task: Option<tokio::task::JoinHandle<Result<Walked>>>,
    catalog: Option<PendingCatalog>,
}

impl VolumeSource {
    /// A volume item for the directory `path`.
    pub fn new(name: impl Into<String>, path: impl Into<PathBuf>, opts: VolumeOptions) -> Self {
        VolumeSource {
            name: name.into(),
            path: path.into(),
            opts,
            task: None,
            catalog: None,
        }
    }

    /// The volume's root as the file cache names it.
    pub fn root(&self) -> Result<PathBuf> {
        fs::canonicalize(&self.path).map_err(|e| Error::SourceFailed {
            item: self.name.clone(),
            detail: format!("volume path {}: {e}", self.path.display()),
        })
    }

    fn start(&mut self, ctx: PieceContext) -> Result<PieceStream> {
        let root = self.root()?;
        if !root.is_dir() {
            return Err(Error::SourceFailed {
                item: self.name.clone(),
                detail: format!("volume path {} is not a directory", root.display()),
            });
        }
        // Four 64 KiB batches in flight: the walker stays just ahead of the chunker.
        let (tx, rx) = mpsc::channel(4);
        let (name, opts) = (self.name.clone(), self.opts.clone());
        self.task = Some(tokio::task::spawn_blocking(move || {
            let mut walker = Walker::new(tx, &root, &opts, ctx);
            walker.run().map_err(|e| Error::SourceFailed {
                item: name,
                detail: e,
            })?;
            let facts = walker.facts(&root);
            Ok((facts, walker.catalog.finish()))
        }));
        Ok(rx)
    }
}

#[async_trait]
impl Source for VolumeSource {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> ItemKind {
        ItemKind::Volume
    }
    fn format(&self) -> &str {
        "tar"
    }

    /// The plain tar stream (no cuts, no cache).
    async fn open(&mut self) -> Result<ByteStream> {
        let mut pieces = self.start(PieceContext::default())?;
        let (mut w, r) = tokio::io::duplex(1 << 20);
        tokio::spawn(async move {
            while let Some(piece) = pieces.recv().await {
                if let Piece::Bytes(b) = piece
                    && w.write_all(&b).await.is_err()
                {
                    break;
                }
            }
        });
        Ok(Box::new(r))
    }

    async fn open_pieces(&mut self, ctx: PieceContext) -> Result<Option<PieceStream>> {
        self.start(ctx).map(Some)
    }

    async fn finish(&mut self) -> Result<Facts> {
        let task = self.task.take().ok_or_else(|| Error::SourceFailed {
            item: self.name.clone(),
            detail: "finish before open".into(),
        })?;
        let (facts, catalog) = task.await.map_err(|e| Error::SourceFailed {
            item: self.name.clone(),
            detail: format!("tar thread: {e}"),
        })??;
        self.catalog = Some(catalog);
        Ok(facts)
    }

    fn take_catalog(&mut self) -> Option<PendingCatalog> {
        self.catalog.take()
    }
}

#[derive(Default)]
struct Stats {
    files: u64,
    dirs: u64,
    symlinks: u64,
    hardlinks: u64,
    bytes: u64,
    excluded: u64,
    vanished: u64,
    special_skipped: u64,
    /// FIFOs and device nodes, stored as tar entries of their type.
    specials: u64,
    other_fs_skipped: u64,
    reused_files: u64,
    reused_bytes: u64,
    changed: Vec<String>,
    /// Entries that could not be read (path: why): not in the snapshot.
    unreadable: Vec<String>,
    /// What the run should tell the operator (sockets skipped, attributes not read).
    warnings: Vec<String>,
}

/// A file whose ctime is this close to the walk's start is not cached: a write in the same
/// timestamp tick as our read would leave its times unchanged (git's "racy" entries).
const RACY_NS: i64 = 1_000_000_000;

struct Walker<'a> {
    tar: tar::Builder<PieceWriter>,
    plan: Rc<RefCell<DataPlan>>,
    root: &'a Path,
    dev: u64,
    opts: &'a VolumeOptions,
    ctx: PieceContext,
    /// The file cache of the last backup, loaded here, on the walker's thread.
    cache: Option<FileCache>,
    /// Files changed this recently may change again within the same timestamp tick: not cached.
    racy_after_ns: i64,
    excludes: Excludes,
    links: HashMap<(u64, u64), PathBuf>,
    attrs: AttrReader,
    names: Names,
    st: Stats,
    /// Every entry written, with its range of the stream.
    catalog: CatalogWriter,
}

impl<'a> Walker<'a> {
    fn new(
        tx: mpsc::Sender<Piece>,
        root: &'a Path,
        opts: &'a VolumeOptions,
        ctx: PieceContext,
    ) -> Self {
        let plan = Rc::new(RefCell::new(DataPlan::None));
        let mut tar = tar::Builder::new(PieceWriter {
            tx,
            batch: Vec::new(),
            plan: plan.clone(),
            since_cut: 0,
            offset: 0,
        });
        tar.mode(tar::HeaderMode::Complete);
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        Walker {
            tar,
            plan,
            root,
            dev: 0,
            opts,
            cache: ctx.cache.as_ref().and_then(CacheSlot::load),
            ctx,
            racy_after_ns: now_ns - RACY_NS,
            excludes: Excludes::new(&opts.exclude),
            links: HashMap::new(),
            attrs: AttrReader::default(),
            names: Names::system(),
            st: Stats::default(),
            catalog: CatalogWriter::default(),
        }
    }

    fn run(&mut self) -> Result<(), String> {
        let md =
            fs::symlink_metadata(self.root).map_err(|e| format!("{}: {e}", self.root.display()))?;
        self.dev = md.dev();
        self.append_dir(self.root, Path::new("."), &md)?;
        self.walk(self.root.to_path_buf(), PathBuf::new())?;
        self.tar
            .finish()
            .map_err(|e| format!("writing tar stream: {e}"))?;
        let w = self.tar.get_mut();
        w.flush().map_err(|e| format!("writing tar stream: {e}"))
    }

    fn facts(&self, root: &Path) -> Facts {
        let s = &self.st;
        let cached = self.ctx.aligned_min > 0;
        VolumeFacts {
            path: Some(root.display().to_string()),
            files: Some(s.files),
            dirs: Some(s.dirs),
            symlinks: Some(s.symlinks),
            hardlinks: Some(s.hardlinks),
            bytes: Some(s.bytes),
            excluded: Some(s.excluded),
            vanished: Some(s.vanished),
            special_skipped: Some(s.special_skipped),
            special_files: Some(s.specials),
            unreadable: (!s.unreadable.is_empty()).then(|| s.unreadable.clone()),
            warnings: Some(self.warnings()).filter(|w| !w.is_empty()),
            other_filesystems_skipped: Some(s.other_fs_skipped),
            files_from_cache: cached.then_some(s.reused_files),
            bytes_from_cache: cached.then_some(s.reused_bytes),
            changed_during_backup: (!s.changed.is_empty()).then(|| s.changed.clone()),
        }
        .to_facts()
    }

    /// Everything the operator should hear of: files that changed or vanished while the
    /// volume was read, sockets, attributes not read.
    fn warnings(&self) -> Vec<String> {
        let s = &self.st;
        let mut w = s.warnings.clone();
        w.extend(s.changed.iter().map(|c| {
            format!("{c}: changed while it was read; the snapshot holds the bytes read (its size as at the start, zeros where it shrank)")
        }));
        if s.vanished > 0 {
            w.push(format!(
                "{} entries vanished while the volume was read (not in the snapshot)",
                s.vanished
            ));
        }
        w
    }

    fn walk(&mut self, dir: PathBuf, rel: PathBuf) -> Result<(), String> {
        let ioerr = |p: &Path, e: io::Error| format!("{}: {e}", p.display());
        let mut names: Vec<_> = match fs::read_dir(&dir) {
            Ok(rd) => rd
                .map(|e| e.map(|e| e.file_name()))
                .collect::<io::Result<_>>()
                .map_err(|e| ioerr(&dir, e))?,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                self.st.vanished += 1;
                return Ok(());
            }
            // Restored as an empty directory, and named.
            Err(e) => return self.unreadable(&rel, &e),
        };
        // Byte order of names: deterministic across runs and machines, so unchanged trees dedup.
        names.sort_by(|a, b| a.as_encoded_bytes().cmp(b.as_encoded_bytes()));
        for name in names {
            let path = dir.join(&name);
            let r = rel.join(&name);
            if self
                .excludes
                .is_excluded(&r.to_string_lossy(), &name.to_string_lossy())
            {
                self.st.excluded += 1;
                continue;
            }
            let md = match fs::symlink_metadata(&path) {
                Ok(md) => md,
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    self.st.vanished += 1;
                    continue;
                }
                Err(e) => {
                    self.unreadable(&r, &e)?;
                    continue;
                }
            };
            let ft = md.file_type();
            if ft.is_dir() {
                self.append_dir(&path, &r, &md)?;
                if self.opts.one_file_system && md.dev() != self.dev {
                    self.st.other_fs_skipped += 1;
                    continue;
                }
                self.walk(path, r)?;
            } else if ft.is_symlink() {
                let target = match fs::read_link(&path) {
                    Ok(t) => t,
                    Err(e) if e.kind() == ErrorKind::NotFound => {
                        self.st.vanished += 1;
                        continue;
                    }
                    Err(e) => {
                        self.unreadable(&r, &e)?;
                        continue;
                    }
                };
                let start = self.offset();
                self.pax(&path, &r, &md)?;
                let mut h = self.header(&md);
                h.set_size(0);
                self.tar
                    .append_link(&mut h, &r, &target)
                    .map_err(|e| ioerr(&path, e))?;
                self.record(start, &r, &md, EntryKind::Symlink, Some(&target));
                self.st.symlinks += 1;
            } else if ft.is_file() {
                self.append_file(&path, &r, &md)?;
            } else if ft.is_socket() {
                // A socket is made by the program listening on it; there is nothing to restore.
                self.st.special_skipped += 1;
                self.st
                    .warnings
                    .push(format!("{}: a socket, not backed up", r.display()));
            } else {
                self.append_special(&path, &r, &md)?;
            }
        }
        Ok(())
    }

    /// A file, directory or symlink that cannot be read is left out and named (the
    /// operator decides what that means for the run); a volume that cannot be read at all
    /// is an error of the whole item.
    fn unreadable(&mut self, rel: &Path, e: &io::Error) -> Result<(), String> {
        if rel.as_os_str().is_empty() {
            return Err(format!("{}: {e}", self.root.display()));
        }
        if self.opts.unreadable == Unreadable::Fail {
            return Err(format!(
                "{}: {e} (unreadable = \"skip\" would leave it out and back up the rest)",
                rel.display()
            ));
        }
        self.st.unreadable.push(format!("{}: {e}", rel.display()));
        Ok(())
    }

    /// The entry's PAX records (sub-second mtime, extended attributes, sparseness); an
    /// attribute list that cannot be read costs the attributes, not the entry.
    fn pax(&mut self, path: &Path, rel: &Path, md: &Metadata) -> Result<(), String> {
        let records = match self.attrs.records(path, md) {
            Ok(r) => r,
            Err(e) => {
                self.st.warnings.push(format!(
                    "{}: extended attributes not read: {e}",
                    rel.display()
                ));
                Vec::new()
            }
        };
        self.tar
            .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
            .map_err(|e| format!("{}: {e}", rel.display()))
    }

    /// A FIFO or a device node: its type and device numbers, no data.
    fn append_special(&mut self, path: &Path, rel: &Path, md: &Metadata) -> Result<(), String> {
        let ft = md.file_type();
        let mut h = self.header(md);
        h.set_size(0);
        h.set_entry_type(if ft.is_fifo() {
            tar::EntryType::Fifo
        } else if ft.is_char_device() {
            tar::EntryType::Char
        } else {
            tar::EntryType::Block
        });
        let err = |e: io::Error| format!("{}: {e}", rel.display());
        if !ft.is_fifo() {
            h.set_device_major(rustix::fs::major(md.rdev()))
                .map_err(err)?;
            h.set_device_minor(rustix::fs::minor(md.rdev()))
                .map_err(err)?;
        }
        let start = self.offset();
        self.pax(path, rel, md)?;
        self.tar
            .append_data(&mut h, rel, io::empty())
            .map_err(err)?;
        let kind = if ft.is_fifo() {
            EntryKind::Fifo
        } else if ft.is_char_device() {
            EntryKind::Char
        } else {
            EntryKind::Block
        };
        self.record(start, rel, md, kind, None);
        self.st.specials += 1;
        Ok(())
    }

    fn append_dir(&mut self, path: &Path, rel: &Path, md: &Metadata) -> Result<(), String> {
        let start = self.offset();
        self.pax(path, rel, md)?;
        let mut h = self.header(md);
        h.set_size(0);
        self.tar
            .append_data(&mut h, rel, io::empty())
            .map_err(|e| format!("{}: {e}", rel.display()))?;
        self.record(start, rel, md, EntryKind::Dir, None);
        self.st.dirs += 1;
        Ok(())
    }

    fn append_file(&mut self, path: &Path, rel: &Path, md: &Metadata) -> Result<(), String> {
        let ioerr = |e: io::Error| format!("{}: {e}", path.display());
        let link_key = (md.nlink() > 1).then(|| (md.dev(), md.ino()));
        if let Some(first) = link_key.and_then(|k| self.links.get(&k).cloned()) {
            let start = self.offset();
            let mut h = self.header(md);
            h.set_entry_type(tar::EntryType::Link);
            h.set_size(0);
            self.tar.append_link(&mut h, rel, &first).map_err(ioerr)?;
            self.record(start, rel, md, EntryKind::Hardlink, Some(&first));
            self.st.hardlinks += 1;
            return Ok(());
        }
        let size = md.len();
        let fenced = self.ctx.aligned_min > 0 && size >= self.ctx.aligned_min;
        let key = fenced.then(|| file_key(rel, md)).flatten();
        // Unchanged since the last backup: its data is these chunks, sent without reading it
        // (the tar writer gets zeros and drops them; the header is written fresh).
        let stored = key.as_ref().and_then(|k| self.reusable(k));
        let data: Box<dyn Read> = if stored.is_some() {
            Box::new(io::repeat(0))
        } else {
            match File::open(path) {
                Ok(f) => Box::new(f),
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    self.st.vanished += 1;
                    return Ok(());
                }
                Err(e) => return self.unreadable(rel, &e),
            }
        };
        // Only a file in the archive may be the target of later hard links.
        if let Some(k) = link_key {
            self.links.insert(k, rel.to_path_buf());
        }
        let reused = stored.is_some();
        // A large file's header stays with the group before it: a cut there would make a chunk
        // of one header.
        if !fenced && self.ctx.group_min > 0 && self.tar.get_ref().since_cut >= self.ctx.group_min {
            self.tar.get_mut().cut().map_err(ioerr)?;
        }
        let start = self.offset();
        self.pax(path, rel, md)?;
        if fenced {
            // Racy files are fenced (same chunks either way) but not remembered.
            let key = key.filter(|k| k.ctime_ns < self.racy_after_ns);
            *self.plan.borrow_mut() = DataPlan::Armed(FencedFile { size, key, stored });
        }
        let mut h = self.header(md);
        let mut reader = Fence::new(
            Exact {
                inner: data,
                left: size,
                short: false,
            },
            &self.plan,
        );
        self.tar
            .append_data(&mut h, rel, &mut reader)
            .map_err(ioerr)?;
        self.record(start, rel, md, EntryKind::File, None);
        if reused {
            self.st.reused_files += 1;
            self.st.reused_bytes += size;
        } else {
            let after = fs::symlink_metadata(path).ok();
            let changed = reader.inner.short
                || after.is_none_or(|a| {
                    a.len() != size || a.mtime() != md.mtime() || a.mtime_nsec() != md.mtime_nsec()
                });
            if changed {
                self.st.changed.push(rel.display().to_string());
            }
        }
        self.st.files += 1;
        self.st.bytes += size;
        Ok(())
    }

    /// Where the next entry starts in the stream.
    fn offset(&self) -> u64 {
        self.tar.get_ref().offset
    }

    /// Adds the entry that started at `start` and ends here to the catalog.
    fn record(
        &mut self,
        start: u64,
        rel: &Path,
        md: &Metadata,
        kind: EntryKind,
        link: Option<&Path>,
    ) {
        let mut e = Entry::new(rel, md, kind, link);
        e.at = [start, self.offset()];
        self.catalog.push(&e);
    }

    /// The cached chunks of an unchanged file, if every one is still in the repository.
    fn reusable(&self, key: &FileKey) -> Option<Vec<CachedChunk>> {
        let chunks = self.cache.as_ref()?.lookup(key)?;
        let total: u64 = chunks.iter().map(|c| c.len).sum();
        let known = self.ctx.known.lock().unwrap();
        (total == key.size && chunks.iter().all(|c| known.contains(&c.id))).then(|| chunks.to_vec())
    }
}

/// The cache key of a file; `None` for names that are not UTF-8 (always read).
fn file_key(rel: &Path, md: &Metadata) -> Option<FileKey> {
    let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
    Some(FileKey {
        path: rel.to_str()?.to_string(),
        size: md.len(),
        mtime_ns: ns(md.mtime(), md.mtime_nsec()),
        ctime_ns: ns(md.ctime(), md.ctime_nsec()),
        ino: md.ino(),
    })
}

/// Where the next large file's data stands, shared by the walker, the [`Fence`] reading it and
/// the [`PieceWriter`] (the writer alone cannot tell where a tar header ends).
enum DataPlan {
    None,
    /// Set before a fenced file's entry is appended; the first data read moves it on.
    Armed(FencedFile),
    /// The header is written: the next bytes written are the data.
    Started(FencedFile),
    /// Inside the data; `skip`: the bytes are placeholder zeros for stored chunks.
    Data {
        left: u64,
        skip: bool,
    },
}

/// A large file about to be written: its size, its cache key (none if it must not be
/// remembered) and, when unchanged, the chunks to send instead of its data.
struct FencedFile {
    size: u64,
    key: Option<FileKey>,
    stored: Option<Vec<CachedChunk>>,
}

/// A file's data reader that tells the writer when the data begins.
struct Fence<R> {
    inner: R,
    plan: Rc<RefCell<DataPlan>>,
}

impl<R> Fence<R> {
    fn new(inner: R, plan: &Rc<RefCell<DataPlan>>) -> Self {
        Fence {
            inner,
            plan: plan.clone(),
        }
    }
}

impl<R: Read> Read for Fence<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut plan = self.plan.borrow_mut();
        *plan = match std::mem::replace(&mut *plan, DataPlan::None) {
            DataPlan::Armed(f) => DataPlan::Started(f),
            other => other,
        };
        drop(plan);
        self.inner.read(buf)
    }
}

/// Sends the tar stream as pieces: bytes in batches, with cuts (or cached chunks) around
/// fenced files' data.
struct PieceWriter {
    tx: mpsc::Sender<Piece>,
    batch: Vec<u8>,
    plan: Rc<RefCell<DataPlan>>,
    /// Bytes sent since the last piece that ends a chunk.
    since_cut: u64,
    /// Stream bytes written so far, stored chunks' placeholder bytes included: where the next
    /// entry starts.
    offset: u64,
}

const BATCH: usize = 64 << 10;

impl PieceWriter {
    fn send(&mut self, piece: Piece) -> io::Result<()> {
        if !matches!(piece, Piece::Bytes(_)) {
            self.since_cut = 0;
        }
        self.tx
            .blocking_send(piece)
            .map_err(|_| io::Error::new(ErrorKind::BrokenPipe, "the backup stopped reading"))
    }

    fn send_batch(&mut self) -> io::Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let b = std::mem::take(&mut self.batch);
        self.send(Piece::Bytes(b))
    }

    /// Ends the current chunk before the next entry.
    fn cut(&mut self) -> io::Result<()> {
        self.send_batch()?;
        self.send(Piece::Cut)
    }

    fn push(&mut self, data: &[u8]) -> io::Result<()> {
        if self.batch.capacity() == 0 {
            self.batch.reserve(BATCH);
        }
        self.batch.extend_from_slice(data);
        self.since_cut += data.len() as u64;
        if self.batch.len() >= BATCH {
            self.send_batch()?;
        }
        Ok(())
    }
}

impl Write for PieceWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let plan = std::mem::replace(&mut *self.plan.borrow_mut(), DataPlan::None);
        let plan = match plan {
            DataPlan::Started(FencedFile { size, key, stored }) => {
                self.send_batch()?;
                self.send(Piece::File(key))?;
                let skip = stored.is_some();
                if let Some(chunks) = stored {
                    self.send(Piece::Stored(chunks))?;
                }
                DataPlan::Data { left: size, skip }
            }
            other => other,
        };
        let DataPlan::Data { left, skip } = plan else {
            *self.plan.borrow_mut() = plan;
            self.push(buf)?;
            self.offset += buf.len() as u64;
            return Ok(buf.len());
        };
        let n = buf.len().min(left as usize);
        self.offset += n as u64;
        if !skip {
            self.push(&buf[..n])?;
        }
        if n as u64 == left {
            self.send_batch()?;
            self.send(Piece::Cut)?;
        } else {
            *self.plan.borrow_mut() = DataPlan::Data {
                left: left - n as u64,
                skip,
            };
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_batch()
    }
}

impl Walker<'_> {
    /// The entry's header: numeric owner, mode, size and whole-second mtime, and the owner's
    /// user and group names when this host has them (a name too long for the field is left
    /// out; the id is always there).
    fn header(&self, md: &Metadata) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_metadata_in_mode(md, tar::HeaderMode::Complete);
        if let Some(u) = self.names.user(md.uid()) {
            let _ = h.set_username(u);
        }
        if let Some(g) = self.names.group(md.gid()) {
            let _ = h.set_groupname(g);
        }
        h
    }
}

/// Yields exactly `left` bytes: a file that shrank while being read is padded with zeros, one
/// that grew is cut, so the tar stream stays well-formed; the change is reported as a fact.
struct Exact<R> {
    inner: R,
    left: u64,
    short: bool,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(self.left as usize);
        let mut n = if self.short {
            0
        } else {
            self.inner.read(&mut buf[..want])?
        };
        if n == 0 {
            self.short = true;
            buf[..want].fill(0);
            n = want;
        }
        self.left -= n as u64;
        Ok(n)
    }
}
