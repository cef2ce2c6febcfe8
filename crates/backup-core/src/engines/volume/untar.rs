//! Safe extraction of a tar stream into a fresh directory: nothing may land outside it.
//!
//! Refused (the whole restore fails): absolute paths, `..` components, any entry whose parent
//! path contains a symlink (a symlink followed by a write through it), hard links whose target
//! is unsafe or not an earlier regular file, and duplicate entries. Directory permissions and
//! mtimes are applied last, deepest first, so read-only directories still receive their files.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{PermissionsExt, lchown};
use std::path::{Component, Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};

/// What an extraction wrote.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UntarStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub bytes: u64,
    pub skipped: u64,
}

struct DirAttrs {
    path: PathBuf,
    mode: u32,
    mtime: u64,
    owner: Option<(u64, u64)>,
}

/// Extracts `reader` into `dst` (an existing, empty directory), then drains the reader.
pub fn untar(reader: impl Read, dst: &Path, item: &str) -> Result<UntarStats> {
    let is_root = fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_preserve_ownerships(is_root);
    archive.set_overwrite(false);
    let mut st = UntarStats::default();
    let mut dirs = Vec::new();
    let io_err = |what: &str, e: io::Error| Error::Sink {
        item: item.to_string(),
        target: dst.display().to_string(),
        detail: format!("{what}: {e}"),
    };
    {
        let entries = archive
            .entries()
            .map_err(|e| io_err("reading archive", e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| io_err("reading archive", e))?;
            let raw = entry
                .path()
                .map_err(|e| io_err("entry name", e))?
                .into_owned();
            let shown = raw.display().to_string();
            let refuse = |reason: &str| Error::UnsafeArchive {
                item: item.to_string(),
                entry: shown.clone(),
                reason: reason.to_string(),
            };
            let rel = safe_relative(&raw).map_err(&refuse)?;
            let target = dst.join(&rel);
            check_parents(dst, &rel).map_err(|r| refuse(&r))?;
            let ty = entry.header().entry_type();
            let mode = entry.header().mode().unwrap_or(0o755);
            let mtime = entry.header().mtime().unwrap_or(0);
            let owner = match (is_root, entry.header().uid(), entry.header().gid()) {
                (true, Ok(u), Ok(g)) => Some((u, g)),
                _ => None,
            };
            if rel.as_os_str().is_empty() {
                // The volume root itself: its attributes go on the target directory.
                if ty.is_dir() {
                    dirs.push(DirAttrs {
                        path: dst.to_path_buf(),
                        mode,
                        mtime,
                        owner,
                    });
                }
                continue;
            }
            if let Ok(existing) = fs::symlink_metadata(&target)
                && !(ty.is_dir() && existing.is_dir())
            {
                return Err(refuse("duplicate entry"));
            }
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent).map_err(|e| io_err(&shown, e))?;
            }
            match ty {
                tar::EntryType::Directory => {
                    if !target.is_dir() {
                        fs::create_dir(&target).map_err(|e| io_err(&shown, e))?;
                    }
                    dirs.push(DirAttrs {
                        path: target,
                        mode,
                        mtime,
                        owner,
                    });
                    st.dirs += 1;
                }
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    st.bytes += entry.header().size().unwrap_or(0);
                    entry.unpack(&target).map_err(|e| io_err(&shown, e))?;
                    st.files += 1;
                }
                tar::EntryType::Symlink => {
                    entry.unpack(&target).map_err(|e| io_err(&shown, e))?;
                    st.symlinks += 1;
                }
                tar::EntryType::Link => {
                    let link = entry
                        .link_name()
                        .map_err(|e| io_err(&shown, e))?
                        .ok_or_else(|| refuse("hard link without a target"))?
                        .into_owned();
                    let lrel = safe_relative(&link)
                        .map_err(|r| refuse(&format!("hard link target: {r}")))?;
                    check_parents(dst, &lrel)
                        .map_err(|r| refuse(&format!("hard link target: {r}")))?;
                    let src = dst.join(&lrel);
                    match fs::symlink_metadata(&src) {
                        Ok(m) if m.is_file() => {}
                        _ => {
                            return Err(refuse(
                                "hard link target is not an earlier regular file of the archive",
                            ));
                        }
                    }
                    fs::hard_link(&src, &target).map_err(|e| io_err(&shown, e))?;
                    st.hardlinks += 1;
                }
                // GNU/PAX metadata entries are consumed by the tar reader; anything else
                // (devices, FIFOs) is not restorable data.
                _ => st.skipped += 1,
            }
        }
    }
    // Deepest first, so setting a parent's mtime is not undone by work in a child.
    for d in dirs.iter().rev() {
        if let Some((u, g)) = d.owner {
            lchown(&d.path, Some(u as u32), Some(g as u32))
                .map_err(|e| io_err(&d.path.display().to_string(), e))?;
        }
        fs::set_permissions(&d.path, fs::Permissions::from_mode(d.mode & 0o7777))
            .map_err(|e| io_err(&d.path.display().to_string(), e))?;
        let t = filetime::FileTime::from_unix_time(d.mtime as i64, 0);
        filetime::set_file_mtime(&d.path, t)
            .map_err(|e| io_err(&d.path.display().to_string(), e))?;
    }
    // Read to the end, so the writer is not cut off by a reader that stopped at the end marker.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| io_err("reading archive", e))?;
    Ok(st)
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
