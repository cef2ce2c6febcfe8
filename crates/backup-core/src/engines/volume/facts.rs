//! A volume item's facts: what the tar walk saw, checked by drills against the restored tree.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::engines::{CheckOutcome, lenient, read_facts, write_facts};
use crate::manifest::{Facts, Item};

/// Counts of the walk that produced the tar stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VolumeFacts {
    /// The directory backed up (the default restore target).
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub path: Option<String>,
    /// Distinct regular files (hard links counted once).
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub files: Option<u64>,
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub dirs: Option<u64>,
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub symlinks: Option<u64>,
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub hardlinks: Option<u64>,
    /// Bytes of those files.
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub bytes: Option<u64>,
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub excluded: Option<u64>,
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub vanished: Option<u64>,
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub special_skipped: Option<u64>,
    /// FIFOs and device nodes stored (restored as such; device nodes only by root).
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub special_files: Option<u64>,
    /// Entries that could not be read and are not in the item (path: why).
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub unreadable: Option<Vec<String>>,
    /// What the walk warned about (sockets skipped, attributes not read).
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub warnings: Option<Vec<String>>,
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub other_filesystems_skipped: Option<u64>,
    /// With the file cache on: files and bytes sent as cached chunks without being read.
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub files_from_cache: Option<u64>,
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub bytes_from_cache: Option<u64>,
    /// Files that changed while they were read (path: what changed).
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub changed_during_backup: Option<Vec<String>>,
}

impl VolumeFacts {
    pub fn of(item: &Item) -> Self {
        read_facts(&item.facts)
    }

    pub fn to_facts(&self) -> Facts {
        write_facts(self)
    }

    /// Drill check: the restored tree holds as many distinct regular files and bytes as the
    /// backup walked.
    pub fn check_tree(&self, root: &Path) -> CheckOutcome {
        let (files, bytes) = count_tree(root).map_err(|e| e.to_string())?;
        let want = (self.files.unwrap_or(0), self.bytes.unwrap_or(0));
        if (files, bytes) == want {
            Ok(format!("{} files, {} bytes", want.0, want.1))
        } else {
            Err(format!(
                "recorded {} files / {} bytes, restored {files} / {bytes}",
                want.0, want.1
            ))
        }
    }
}

/// Distinct regular files (by device and inode) under `root` and their bytes.
fn count_tree(root: &Path) -> std::io::Result<(u64, u64)> {
    fn walk(d: &Path, seen: &mut HashSet<(u64, u64)>, bytes: &mut u64) -> std::io::Result<()> {
        for e in std::fs::read_dir(d)? {
            let e = e?;
            let md = std::fs::symlink_metadata(e.path())?;
            if md.is_dir() {
                walk(&e.path(), seen, bytes)?;
            } else if md.is_file() && seen.insert((md.dev(), md.ino())) {
                *bytes += md.len();
            }
        }
        Ok(())
    }
    let mut seen = HashSet::new();
    let mut bytes = 0;
    walk(root, &mut seen, &mut bytes)?;
    Ok((seen.len() as u64, bytes))
}
