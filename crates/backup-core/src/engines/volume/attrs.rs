//! What a volume entry carries beyond its tar header, as PAX records: the mtime's nanoseconds,
//! extended attributes (POSIX ACLs and file capabilities are extended attributes too) and
//! whether a file is sparse. Snapshots written before these records restore as before.
//!
//! Keys: `mtime` (POSIX, `SECONDS.NANOSECONDS`), `SCHILY.xattr.NAME` (the raw value, as GNU
//! tar and bsdtar write them), `LIFEBOAT.sparse` (`1`: the file had holes; its data is stored
//! whole and a restore leaves every zero block unwritten).

use std::ffi::OsStr;
use std::fs::Metadata;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

const MTIME: &str = "mtime";
const XATTR: &str = "SCHILY.xattr.";
const SPARSE: &str = "LIFEBOAT.sparse";
/// Linux's limit on an attribute list and on one value.
const XATTR_MAX: usize = 64 << 10;

/// Reads an entry's records at backup time, with buffers kept between entries.
pub struct AttrReader {
    list: Vec<u8>,
    value: Vec<u8>,
}

impl Default for AttrReader {
    fn default() -> Self {
        AttrReader {
            list: vec![0; XATTR_MAX],
            value: vec![0; XATTR_MAX],
        }
    }
}

impl AttrReader {
    /// The PAX records of the entry at `path` (not following a symlink).
    pub fn records(&mut self, path: &Path, md: &Metadata) -> io::Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        if md.mtime_nsec() != 0 && md.mtime() >= 0 {
            let t = format!("{}.{:09}", md.mtime(), md.mtime_nsec());
            out.push((MTIME.to_string(), t.into_bytes()));
        }
        for (name, value) in self.xattrs(path)? {
            out.push((format!("{XATTR}{name}"), value));
        }
        // Fewer blocks than the size needs: holes (GNU tar's test too).
        if md.is_file() && md.blocks() * 512 < md.len() {
            out.push((SPARSE.to_string(), b"1".to_vec()));
        }
        Ok(out)
    }

    fn xattrs(&mut self, path: &Path) -> io::Result<Vec<(String, Vec<u8>)>> {
        let n = match rustix::fs::llistxattr(path, &mut self.list[..]) {
            Ok(n) => n,
            Err(e) if e == rustix::io::Errno::NOTSUP => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let names: Vec<Vec<u8>> = self.list[..n]
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let os = OsStr::from_bytes(&name);
            match rustix::fs::lgetxattr(path, os, &mut self.value[..]) {
                Ok(len) => out.push((
                    String::from_utf8_lossy(&name).into_owned(),
                    self.value[..len].to_vec(),
                )),
                // Removed between the list and the read.
                Err(e) if e == rustix::io::Errno::NODATA => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out)
    }
}

/// What an entry's records say, at restore time.
#[derive(Debug, Default, Clone)]
pub struct Attrs {
    /// Seconds and nanoseconds (the header's whole seconds when absent).
    pub mtime: Option<(i64, u32)>,
    pub xattrs: Vec<(String, Vec<u8>)>,
    pub sparse: bool,
}

impl Attrs {
    /// Reads the records of `entry` (none for snapshots written before them).
    pub fn of<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Attrs> {
        let mut a = Attrs::default();
        let Some(exts) = entry.pax_extensions()? else {
            return Ok(a);
        };
        for ext in exts {
            let ext = ext?;
            let Ok(key) = ext.key() else { continue };
            if key == MTIME {
                a.mtime = ext.value().ok().and_then(parse_time);
            } else if let Some(name) = key.strip_prefix(XATTR) {
                a.xattrs
                    .push((name.to_string(), ext.value_bytes().to_vec()));
            } else if key == SPARSE {
                a.sparse = ext.value_bytes() == b"1";
            }
        }
        Ok(a)
    }

    /// The mtime to set: the record's, else the header's whole seconds.
    pub fn mtime_or(&self, header_secs: u64) -> filetime::FileTime {
        match self.mtime {
            Some((s, ns)) => filetime::FileTime::from_unix_time(s, ns),
            None => filetime::FileTime::from_unix_time(header_secs as i64, 0),
        }
    }

    /// Sets the attributes on an open file. Returns the names that could not be set and why
    /// (`security.*` and `trusted.*` need privileges a restore may not have).
    pub fn set_on_file(&self, f: impl AsFd) -> Vec<String> {
        let fd = f.as_fd();
        self.set_each(|name, value| {
            rustix::fs::fsetxattr(fd, name, value, rustix::fs::XattrFlags::empty())
        })
    }

    /// Sets the attributes on `path` itself (a directory, a symlink, a special file).
    pub fn set_on_path(&self, path: &Path) -> Vec<String> {
        self.set_each(|name, value| {
            rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty())
        })
    }

    fn set_each(
        &self,
        mut set: impl FnMut(&OsStr, &[u8]) -> rustix::io::Result<()>,
    ) -> Vec<String> {
        let mut failed = Vec::new();
        for (name, value) in &self.xattrs {
            if let Err(e) = set(OsStr::new(name), value) {
                failed.push(format!("{name}: {}", io::Error::from(e)));
            }
        }
        failed
    }
}

/// `SECONDS[.FRACTION]` as seconds and nanoseconds.
fn parse_time(v: &str) -> Option<(i64, u32)> {
    let (s, frac) = v.split_once('.').unwrap_or((v, ""));
    let secs = s.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let ns = format!("{digits:0<9}").parse().ok()?;
    Some((secs, ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_keep_their_nanoseconds() {
        assert_eq!(
            parse_time("1700000000.123456789"),
            Some((1700000000, 123456789))
        );
        assert_eq!(parse_time("1700000000.5"), Some((1700000000, 500000000)));
        assert_eq!(parse_time("1700000000"), Some((1700000000, 0)));
        assert_eq!(parse_time("17x"), None);
    }
}
