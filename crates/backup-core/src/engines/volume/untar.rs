//! Safe extraction of a tar stream into a fresh directory: nothing may land outside it.
//!
//! Refused (the whole restore fails): absolute paths, `..` components, any entry whose parent
//! path contains a symlink (a symlink followed by a write through it), hard links whose target
//! is unsafe or not an earlier regular file, and duplicate entries. Directory permissions and
//! mtimes are applied last, deepest first, so read-only directories still receive their files.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt, fchown, lchown};
use std::path::{Component, Path, PathBuf};

use super::attrs::Attrs;
use super::owners::Ids;
use crate::error::{Error, Result};

pub use crate::sink::UntarStats;

/// What a regular file gets once its data is written.
struct FileMeta {
    mode: u32,
    mtime: filetime::FileTime,
    owner: Option<(u32, u32)>,
    attrs: Attrs,
}

struct DirAttrs {
    path: PathBuf,
    mode: u32,
    mtime: filetime::FileTime,
    owner: Option<(u32, u32)>,
    attrs: Attrs,
}

/// Warnings kept in full; past this many only counted.
const WARNINGS_SHOWN: usize = 20;

/// Extracts `reader` into `dst` (an existing, empty directory), then drains the reader. As
/// root, owners are set: by name where the archive has one this host knows (tar's default),
/// else by the stored id; `numeric_owner` always uses the stored ids.
pub fn untar(reader: impl Read, dst: &Path, item: &str, numeric_owner: bool) -> Result<UntarStats> {
    let is_root = fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_preserve_ownerships(is_root);
    archive.set_overwrite(false);
    let mut x = Extract {
        dst,
        item,
        is_root,
        ids: (!numeric_owner).then(Ids::system),
        st: UntarStats::default(),
        dirs: Vec::new(),
        made: HashSet::from([PathBuf::new()]),
        buf: vec![0; COPY_BUF],
        writeback: Writeback::new(dst),
    };
    for entry in archive
        .entries()
        .map_err(|e| x.io_err("reading archive", e))?
    {
        let entry = entry.map_err(|e| x.io_err("reading archive", e))?;
        x.entry(entry)?;
    }
    x.set_dir_attrs()?;
    // Read to the end, so the writer is not cut off by a reader that stopped at the end marker.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| x.io_err("reading archive", e))?;
    Ok(x.st)
}

/// File data is copied in pieces of this size (the tar reader's default of 8 KiB cost one
/// write, and across the stream bridge one wake-up, per 8 KiB).
const COPY_BUF: usize = 1 << 20;

/// One extraction in progress.
struct Extract<'a> {
    dst: &'a Path,
    item: &'a str,
    is_root: bool,
    /// Name → id of this host; `None`: the stored ids (`--numeric-owner`).
    ids: Option<Ids>,
    st: UntarStats,
    /// Attributes set once everything is written (writing into a directory changes its mtime).
    dirs: Vec<DirAttrs>,
    /// Directories (relative to `dst`) this extraction created: real directories, never
    /// symlinks (nothing may replace an entry), so paths below them need no more checks.
    made: HashSet<PathBuf>,
    buf: Vec<u8>,
    writeback: Writeback,
}

/// File data written between two early writebacks.
const WRITEBACK_EVERY: u64 = 64 << 20;

/// Early writeback of what an extraction wrote: a `syncfs` every [`WRITEBACK_EVERY`] bytes on
/// a thread of its own, one at a time, so the `syncfs` before the rename into place has little
/// left (without it, a restore took its own time plus a whole flush of the tree). It syncs
/// through a file description of its own; the final `syncfs` goes through one opened before
/// anything was written (see `DirectorySink`), which every writeback error since is reported to.
struct Writeback {
    dir: Option<std::sync::Arc<fs::File>>,
    since: u64,
    busy: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Writeback {
    fn new(dst: &Path) -> Writeback {
        Writeback {
            // Only an optimisation: without the directory open, the final sync does it all.
            dir: fs::File::open(dst).ok().map(std::sync::Arc::new),
            since: 0,
            busy: Default::default(),
        }
    }

    fn wrote(&mut self, n: u64) {
        use std::sync::atomic::Ordering;
        self.since += n;
        let Some(dir) = &self.dir else { return };
        if self.since < WRITEBACK_EVERY || self.busy.swap(true, Ordering::AcqRel) {
            return;
        }
        self.since = 0;
        let (dir, busy) = (dir.clone(), self.busy.clone());
        std::thread::spawn(move || {
            let _ = rustix::fs::syncfs(&*dir);
            busy.store(false, Ordering::Release);
        });
    }
}

impl Extract<'_> {
    fn io_err(&self, what: &str, e: io::Error) -> Error {
        Error::Sink {
            item: self.item.to_string(),
            target: self.dst.display().to_string(),
            detail: format!("{what}: {}", with_causes(&e)),
        }
    }

    fn refuse(&self, entry: &str, reason: &str) -> Error {
        Error::UnsafeArchive {
            item: self.item.to_string(),
            entry: entry.to_string(),
            reason: reason.to_string(),
        }
    }

    /// Writes one entry, refusing anything that would land outside `dst` or replace an entry.
    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<()> {
        let pax = Attrs::of(&mut entry).map_err(|e| self.io_err("entry attributes", e))?;
        let raw = entry
            .path()
            .map_err(|e| self.io_err("entry name", e))?
            .into_owned();
        let shown = raw.display().to_string();
        let rel = safe_relative(&raw).map_err(|r| self.refuse(&shown, r))?;
        let target = self.dst.join(&rel);
        let h = entry.header();
        let owner = self.owner(h);
        let ty = h.entry_type();
        let mtime = pax.mtime_or(h.mtime().unwrap_or(0));
        let attrs = |path: PathBuf| DirAttrs {
            path,
            mode: h.mode().unwrap_or(0o755),
            mtime,
            owner,
            attrs: pax.clone(),
        };
        if rel.as_os_str().is_empty() {
            // The volume root itself: its attributes go on the target directory.
            if ty.is_dir() {
                let a = attrs(self.dst.to_path_buf());
                self.dirs.push(a);
            }
            return Ok(());
        }
        let is_file = matches!(ty, tar::EntryType::Regular | tar::EntryType::Continuous);
        // A regular file is created exclusively (a duplicate fails there); a directory this
        // extraction made may be named again.
        let known_dir = ty.is_dir() && self.made.contains(&rel);
        if !(is_file || known_dir) && fs::symlink_metadata(&target).is_ok() {
            return Err(self.refuse(&shown, "duplicate entry"));
        }
        self.make_parents(&rel, &shown)?;
        match ty {
            tar::EntryType::Directory => {
                if !self.made.contains(&rel) {
                    fs::create_dir(&target).map_err(|e| self.io_err(&shown, e))?;
                    self.made.insert(rel);
                }
                let a = attrs(target);
                self.dirs.push(a);
                self.st.dirs += 1;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let meta = FileMeta {
                    mode: h.mode().unwrap_or(0o644) & 0o7777,
                    mtime,
                    owner,
                    attrs: pax,
                };
                self.st.bytes += h.size().unwrap_or(0);
                match self.write_file(&mut entry, &target, &meta) {
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        return Err(self.refuse(&shown, "duplicate entry"));
                    }
                    r => r.map_err(|e| self.io_err(&shown, e))?,
                }
                self.st.files += 1;
            }
            tar::EntryType::Symlink => {
                entry.unpack(&target).map_err(|e| self.io_err(&shown, e))?;
                self.finish_path(&target, &shown, &pax, mtime);
                self.st.symlinks += 1;
            }
            tar::EntryType::Fifo | tar::EntryType::Char | tar::EntryType::Block => {
                let mode = h.mode().unwrap_or(0o644) & 0o7777;
                let dev = rustix::fs::makedev(
                    h.device_major().ok().flatten().unwrap_or(0),
                    h.device_minor().ok().flatten().unwrap_or(0),
                );
                let kind = match ty {
                    tar::EntryType::Fifo => rustix::fs::FileType::Fifo,
                    tar::EntryType::Char => rustix::fs::FileType::CharacterDevice,
                    _ => rustix::fs::FileType::BlockDevice,
                };
                match rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &target,
                    kind,
                    rustix::fs::Mode::from_raw_mode(0o600),
                    dev,
                ) {
                    Ok(()) => {}
                    // Device nodes need root with CAP_MKNOD (containers often drop it); a
                    // FIFO never does. A device node is not data: named, not fatal.
                    Err(e) if e == rustix::io::Errno::PERM && ty != tar::EntryType::Fifo => {
                        self.warn(format!(
                            "{shown}: a device node, not made (needs root with CAP_MKNOD)"
                        ));
                        self.st.skipped += 1;
                        return Ok(());
                    }
                    Err(e) => return Err(self.io_err(&shown, e.into())),
                }
                if let Some((u, g)) = owner {
                    lchown(&target, Some(u), Some(g)).map_err(|e| self.io_err(&shown, e))?;
                }
                fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                    .map_err(|e| self.io_err(&shown, e))?;
                self.finish_path(&target, &shown, &pax, mtime);
                self.st.specials += 1;
            }
            tar::EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(|e| self.io_err(&shown, e))?
                    .ok_or_else(|| self.refuse(&shown, "hard link without a target"))?
                    .into_owned();
                self.hard_link(&shown, &link, &target)?;
            }
            // GNU/PAX metadata entries are consumed by the tar reader; anything else is not
            // restorable data.
            _ => self.st.skipped += 1,
        }
        Ok(())
    }

    /// The owner to give an entry (only root can): by name, else the stored ids.
    fn owner(&self, h: &tar::Header) -> Option<(u32, u32)> {
        if !self.is_root {
            return None;
        }
        let (u, g) = (h.uid().ok()? as u32, h.gid().ok()? as u32);
        Some(match &self.ids {
            Some(ids) => (
                ids.uid(h.username().ok().flatten(), u),
                ids.gid(h.groupname().ok().flatten(), g),
            ),
            None => (u, g),
        })
    }

    /// Extended attributes and the mtime of an entry set by path (a symlink, a FIFO, a device
    /// node), not following it. What cannot be set is a warning.
    fn finish_path(&mut self, target: &Path, shown: &str, pax: &Attrs, mtime: filetime::FileTime) {
        for f in pax.set_on_path(target) {
            self.warn(format!("{shown}: attribute {f}"));
        }
        if let Err(e) = filetime::set_symlink_file_times(target, mtime, mtime) {
            self.warn(format!("{shown}: mtime not set: {e}"));
        }
    }

    fn warn(&mut self, w: String) {
        if self.st.warnings.len() < WARNINGS_SHOWN {
            self.st.warnings.push(w);
        }
        self.st.warnings_total += 1;
    }

    /// Creates the missing parents of `rel`, after checking that none of the existing ones
    /// is a symlink or a file; parents this extraction made are known good.
    fn make_parents(&mut self, rel: &Path, shown: &str) -> Result<()> {
        let Some(parent) = rel.parent() else {
            return Ok(());
        };
        if self.made.contains(parent) {
            return Ok(());
        }
        check_parents(self.dst, rel).map_err(|r| self.refuse(shown, &r))?;
        fs::create_dir_all(self.dst.join(parent)).map_err(|e| self.io_err(shown, e))?;
        for a in parent.ancestors() {
            if !self.made.insert(a.to_path_buf()) {
                break;
            }
        }
        Ok(())
    }

    /// A regular file: created exclusively, its data copied in large pieces, then owner,
    /// mode (after the owner: chown clears set-id bits) and mtime, all on the open file.
    fn write_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        target: &Path,
        meta: &FileMeta,
    ) -> io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(target)?;
        let mut at = 0u64;
        loop {
            let n = entry.read(&mut self.buf)?;
            if n == 0 {
                break;
            }
            if meta.attrs.sparse {
                write_sparse(&f, &self.buf[..n], at)?;
            } else {
                f.write_all(&self.buf[..n])?;
            }
            at += n as u64;
            self.writeback.wrote(n as u64);
        }
        if meta.attrs.sparse {
            // A hole at the end is length without data.
            f.set_len(at)?;
        }
        if let Some((u, g)) = meta.owner {
            fchown(&f, Some(u), Some(g))?;
        }
        f.set_permissions(fs::Permissions::from_mode(meta.mode))?;
        // After the mode: an ACL's mask is the group bits of the mode, and chmod rewrites it.
        for failed in meta.attrs.set_on_file(&f) {
            let rel = target.strip_prefix(self.dst).unwrap_or(target);
            self.warn(format!("{}: attribute {failed}", rel.display()));
        }
        filetime::set_file_handle_times(&f, None, Some(meta.mtime))
    }

    /// A hard link, only to an earlier regular file of the same archive.
    fn hard_link(&mut self, shown: &str, link: &Path, target: &Path) -> Result<()> {
        let refuse = |r: &str| self.refuse(shown, &format!("hard link target: {r}"));
        let lrel = safe_relative(link).map_err(refuse)?;
        check_parents(self.dst, &lrel).map_err(|r| refuse(&r))?;
        let src = self.dst.join(&lrel);
        match fs::symlink_metadata(&src) {
            Ok(m) if m.is_file() => {}
            _ => {
                return Err(self.refuse(
                    shown,
                    "hard link target is not an earlier regular file of the archive",
                ));
            }
        }
        fs::hard_link(&src, target).map_err(|e| self.io_err(shown, e))?;
        self.st.hardlinks += 1;
        Ok(())
    }

    /// Deepest first, so setting a parent's mtime is not undone by work in a child.
    fn set_dir_attrs(&mut self) -> Result<()> {
        let dirs = std::mem::take(&mut self.dirs);
        for d in dirs.iter().rev() {
            let shown = d.path.display().to_string();
            if let Some((u, g)) = d.owner {
                lchown(&d.path, Some(u), Some(g)).map_err(|e| self.io_err(&shown, e))?;
            }
            fs::set_permissions(&d.path, fs::Permissions::from_mode(d.mode & 0o7777))
                .map_err(|e| self.io_err(&shown, e))?;
            for failed in d.attrs.set_on_path(&d.path) {
                let rel = d.path.strip_prefix(self.dst).unwrap_or(&d.path);
                self.warn(format!("{}: attribute {failed}", rel.display()));
            }
            filetime::set_file_mtime(&d.path, d.mtime).map_err(|e| self.io_err(&shown, e))?;
        }
        Ok(())
    }
}

/// Block size of the holes a sparse file's restore leaves.
const HOLE: usize = 4096;

/// Writes `data` at offset `at`, leaving whole zero blocks unwritten (holes); each run of
/// blocks with data is one positional write, so a sparse file mostly of data costs no more
/// writes than a plain one.
fn write_sparse(f: &fs::File, data: &[u8], at: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut run: Option<usize> = None;
    let mut i = 0;
    while i < data.len() {
        // Blocks aligned to the file's offsets: a hole is whole filesystem blocks.
        let end = (i + HOLE - ((at as usize + i) % HOLE)).min(data.len());
        let zero = data[i..end].iter().all(|b| *b == 0);
        match (zero, run) {
            (true, Some(start)) => {
                f.write_all_at(&data[start..i], at + start as u64)?;
                run = None;
            }
            (false, None) => run = Some(i),
            _ => {}
        }
        i = end;
    }
    if let Some(start) = run {
        f.write_all_at(&data[start..], at + start as u64)?;
    }
    Ok(())
}

/// The entry path as a plain relative path, or why it is refused.
fn safe_relative(p: &Path) -> std::result::Result<PathBuf, &'static str> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err("path contains `..`"),
            Component::RootDir | Component::Prefix(_) => return Err("absolute path"),
        }
    }
    Ok(out)
}

/// Refuses a path whose existing ancestors inside `dst` include a symlink or a non-directory.
fn check_parents(dst: &Path, rel: &Path) -> std::result::Result<(), String> {
    let mut cur = dst.to_path_buf();
    let mut comps = rel.components().peekable();
    while let Some(c) = comps.next() {
        if comps.peek().is_none() {
            break;
        }
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!(
                    "parent {} is a symlink: writing through it could escape the target",
                    cur.strip_prefix(dst).unwrap_or(&cur).display()
                ));
            }
            Ok(m) if !m.is_dir() => {
                return Err(format!("parent {} is not a directory", cur.display()));
            }
            _ => {}
        }
    }
    Ok(())
}

/// An error and its causes on one line: the tar crate says "failed to unpack `x`" and keeps
/// the reason (no space left on device, permission denied) as its source.
fn with_causes(e: &io::Error) -> String {
    match e.get_ref() {
        Some(inner) => {
            let mut msg = e.to_string();
            let rest = crate::error::chain(inner);
            if !msg.contains(&rest) {
                msg.push_str(": ");
                msg.push_str(&rest);
            }
            msg
        }
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tar crate's error shape: a description, and the I/O error as its source.
    #[derive(Debug)]
    struct Unpack(io::Error);

    impl std::fmt::Display for Unpack {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("failed to unpack `/restore/big.bin`")
        }
    }

    impl std::error::Error for Unpack {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn sparse_writes_keep_every_byte_and_leave_zero_blocks_unwritten() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let f = fs::File::create(&path).unwrap();
        // Data, 1 MiB of zeros, data again; written in pieces that do not start on a block.
        let mut want = vec![7u8; 5000];
        want.extend(vec![0u8; 1 << 20]);
        want.extend(vec![9u8; 3000]);
        let mut at = 0;
        for piece in want.chunks(70_001) {
            write_sparse(&f, piece, at).unwrap();
            at += piece.len() as u64;
        }
        f.set_len(at).unwrap();
        f.sync_all().unwrap();
        assert_eq!(fs::read(&path).unwrap(), want);
        let allocated = fs::metadata(&path).unwrap().blocks() * 512;
        assert!(allocated < 64 << 10, "{allocated} bytes allocated");
    }

    #[test]
    fn the_cause_of_a_failed_unpack_is_in_the_message() {
        let enospc = io::Error::from_raw_os_error(28);
        let e = io::Error::new(enospc.kind(), Unpack(enospc));
        let msg = with_causes(&e);
        assert!(msg.starts_with("failed to unpack"), "{msg}");
        assert!(msg.contains("No space left on device"), "{msg}");
    }
}
