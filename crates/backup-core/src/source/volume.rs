//! `VolumeSource`: a directory as a deterministic tar stream (sorted entries, numeric owners).

use std::collections::HashMap;
use std::fs::{self, File, Metadata};
use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use tokio_util::io::SyncIoBridge;

use super::glob::Excludes;
use super::{ByteStream, Source};
use crate::error::{Error, Result};
use crate::manifest::{Facts, ItemKind};

/// Options of a volume source.
#[derive(Debug, Clone)]
pub struct VolumeOptions {
    /// Exclude globs (see [`super::glob`]).
    pub exclude: Vec<String>,
    /// Do not descend into other filesystems mounted below the root (the mount point itself is
    /// kept as an empty directory), like `tar --one-file-system`.
    pub one_file_system: bool,
}

impl Default for VolumeOptions {
    fn default() -> Self {
        VolumeOptions {
            exclude: Vec::new(),
            one_file_system: true,
        }
    }
}

/// Backs up a directory tree as a tar stream produced on a blocking thread.
pub struct VolumeSource {
    name: String,
    path: PathBuf,
    opts: VolumeOptions,
    task: Option<tokio::task::JoinHandle<Result<Facts>>>,
}

impl VolumeSource {
    /// A volume item for the directory `path`.
    pub fn new(name: impl Into<String>, path: impl Into<PathBuf>, opts: VolumeOptions) -> Self {
        VolumeSource {
            name: name.into(),
            path: path.into(),
            opts,
            task: None,
        }
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

    async fn open(&mut self) -> Result<ByteStream> {
        let fail = |d: String| Error::SourceFailed {
            item: self.name.clone(),
            detail: d,
        };
        let root = fs::canonicalize(&self.path)
            .map_err(|e| fail(format!("volume path {}: {e}", self.path.display())))?;
        if !root.is_dir() {
            return Err(fail(format!(
                "volume path {} is not a directory",
                root.display()
            )));
        }
        let (w, r) = tokio::io::duplex(1 << 20);
        let bridge = SyncIoBridge::new(w);
        let (name, opts) = (self.name.clone(), self.opts.clone());
        self.task = Some(tokio::task::spawn_blocking(move || {
            let mut walker = Walker::new(bridge, &root, &opts);
            walker.run().map_err(|e| Error::SourceFailed {
                item: name,
                detail: e,
            })?;
            Ok(walker.facts(&root))
        }));
        Ok(Box::new(r))
    }

    async fn finish(&mut self) -> Result<Facts> {
        let task = self.task.take().ok_or_else(|| Error::SourceFailed {
            item: self.name.clone(),
            detail: "finish before open".into(),
        })?;
        task.await.map_err(|e| Error::SourceFailed {
            item: self.name.clone(),
            detail: format!("tar thread: {e}"),
        })?
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
    other_fs_skipped: u64,
    changed: Vec<String>,
}

struct Walker<'a, W: Write> {
    tar: tar::Builder<W>,
    root: &'a Path,
    dev: u64,
    opts: &'a VolumeOptions,
    excludes: Excludes,
    links: HashMap<(u64, u64), PathBuf>,
    st: Stats,
}

impl<'a, W: Write> Walker<'a, W> {
    fn new(w: W, root: &'a Path, opts: &'a VolumeOptions) -> Self {
        let mut tar = tar::Builder::new(w);
        tar.mode(tar::HeaderMode::Complete);
        Walker {
            tar,
            root,
            dev: 0,
            opts,
            excludes: Excludes::new(&opts.exclude),
            links: HashMap::new(),
            st: Stats::default(),
        }
    }

    fn run(&mut self) -> Result<(), String> {
        let md =
            fs::symlink_metadata(self.root).map_err(|e| format!("{}: {e}", self.root.display()))?;
        self.dev = md.dev();
        self.append_dir(Path::new("."), &md)?;
        self.walk(self.root.to_path_buf(), PathBuf::new())?;
        self.tar
            .finish()
            .map_err(|e| format!("writing tar stream: {e}"))?;
        let w = self.tar.get_mut();
        w.flush().map_err(|e| format!("writing tar stream: {e}"))
    }

    fn facts(&self, root: &Path) -> Facts {
        let s = &self.st;
        let mut f = Facts::new();
        f.insert("path".into(), root.display().to_string().into());
        f.insert("files".into(), s.files.into());
        f.insert("dirs".into(), s.dirs.into());
        f.insert("symlinks".into(), s.symlinks.into());
        f.insert("hardlinks".into(), s.hardlinks.into());
        f.insert("bytes".into(), s.bytes.into());
        f.insert("excluded".into(), s.excluded.into());
        f.insert("vanished".into(), s.vanished.into());
        f.insert("special_skipped".into(), s.special_skipped.into());
        f.insert(
            "other_filesystems_skipped".into(),
            s.other_fs_skipped.into(),
        );
        if !s.changed.is_empty() {
            f.insert("changed_during_backup".into(), s.changed.clone().into());
        }
        f
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
            Err(e) => return Err(ioerr(&dir, e)),
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
                Err(e) => return Err(ioerr(&path, e)),
            };
            let ft = md.file_type();
            if ft.is_dir() {
                self.append_dir(&r, &md)?;
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
                    Err(e) => return Err(ioerr(&path, e)),
                };
                let mut h = header(&md);
                h.set_size(0);
                self.tar
                    .append_link(&mut h, &r, &target)
                    .map_err(|e| ioerr(&path, e))?;
                self.st.symlinks += 1;
            } else if ft.is_file() {
                self.append_file(&path, &r, &md)?;
            } else {
                // Sockets, FIFOs and device nodes are not data a restore could use.
                self.st.special_skipped += 1;
            }
        }
        Ok(())
    }

    fn append_dir(&mut self, rel: &Path, md: &Metadata) -> Result<(), String> {
        let mut h = header(md);
        h.set_size(0);
        self.tar
            .append_data(&mut h, rel, io::empty())
            .map_err(|e| format!("{}: {e}", rel.display()))?;
        self.st.dirs += 1;
        Ok(())
    }

    fn append_file(&mut self, path: &Path, rel: &Path, md: &Metadata) -> Result<(), String> {
        let ioerr = |e: io::Error| format!("{}: {e}", path.display());
        if md.nlink() > 1 {
            let key = (md.dev(), md.ino());
            if let Some(first) = self.links.get(&key).cloned() {
                let mut h = header(md);
                h.set_entry_type(tar::EntryType::Link);
                h.set_size(0);
                self.tar.append_link(&mut h, rel, &first).map_err(ioerr)?;
                self.st.hardlinks += 1;
                return Ok(());
            }
            self.links.insert(key, rel.to_path_buf());
        }
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                self.st.vanished += 1;
                return Ok(());
            }
            Err(e) => return Err(ioerr(e)),
        };
        let size = md.len();
        let mut h = header(md);
        let mut reader = Exact {
            inner: file,
            left: size,
            short: false,
        };
        self.tar
            .append_data(&mut h, rel, &mut reader)
            .map_err(ioerr)?;
        let after = fs::symlink_metadata(path).ok();
        let changed = reader.short
            || after.is_none_or(|a| {
                a.len() != size || a.mtime() != md.mtime() || a.mtime_nsec() != md.mtime_nsec()
            });
        if changed {
            self.st.changed.push(rel.display().to_string());
        }
        self.st.files += 1;
        self.st.bytes += size;
        Ok(())
    }
}

fn header(md: &Metadata) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_metadata_in_mode(md, tar::HeaderMode::Complete);
    h
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
