//! User and group names beside the numeric ids, as tar records them: a restore as root on
//! another host gives a file the local id of its owner's name (tar's default), or the stored
//! id with `--numeric-owner`. Names come from `/etc/passwd` and `/etc/group` (directory
//! services behind NSS are not asked: a name they alone know is stored without it).

use std::collections::HashMap;

/// `/etc/passwd` or `/etc/group` content: `name:x:id:…` lines.
fn entries(text: &str) -> impl Iterator<Item = (String, u32)> + '_ {
    text.lines().filter_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?.trim();
        let id = f.nth(1)?.trim().parse().ok()?;
        (!name.is_empty() && !name.starts_with('#')).then(|| (name.to_string(), id))
    })
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The entries keyed by `key`, the first one winning (as `getpwuid`/`getpwnam` answer).
fn first<K: std::hash::Hash + Eq, V>(
    text: &str,
    key: impl Fn(String, u32) -> (K, V),
) -> HashMap<K, V> {
    let mut m = HashMap::new();
    for (name, id) in entries(text) {
        let (k, v) = key(name, id);
        m.entry(k).or_insert(v);
    }
    m
}

/// Id → name, for the backup (the first name of an id wins, as `getpwuid` answers).
#[derive(Debug, Default)]
pub struct Names {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

impl Names {
    /// This host's.
    pub fn system() -> Names {
        Names::from_text(&read("/etc/passwd"), &read("/etc/group"))
    }

    pub fn from_text(passwd: &str, group: &str) -> Names {
        let by_id = |name, id| (id, name);
        Names {
            users: first(passwd, by_id),
            groups: first(group, by_id),
        }
    }

    pub fn user(&self, uid: u32) -> Option<&str> {
        self.users.get(&uid).map(String::as_str)
    }

    pub fn group(&self, gid: u32) -> Option<&str> {
        self.groups.get(&gid).map(String::as_str)
    }
}

/// Name → id, for the restore; `None` maps nothing (`--numeric-owner`).
#[derive(Debug, Default)]
pub struct Ids {
    users: HashMap<String, u32>,
    groups: HashMap<String, u32>,
}

impl Ids {
    /// This host's.
    pub fn system() -> Ids {
        Ids::from_text(&read("/etc/passwd"), &read("/etc/group"))
    }

    pub fn from_text(passwd: &str, group: &str) -> Ids {
        let by_name = |name, id| (name, id);
        Ids {
            users: first(passwd, by_name),
            groups: first(group, by_name),
        }
    }

    /// The local id of `name`, else the stored id.
    pub fn uid(&self, name: Option<&str>, stored: u32) -> u32 {
        name.and_then(|n| self.users.get(n))
            .copied()
            .unwrap_or(stored)
    }

    pub fn gid(&self, name: Option<&str>, stored: u32) -> u32 {
        name.and_then(|n| self.groups.get(n))
            .copied()
            .unwrap_or(stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\napp:x:1001:1001::/srv/app:/bin/sh\nalias:x:1001:1001::/:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nstaff:x:50:app\n";

    #[test]
    fn names_map_back_to_this_hosts_ids_and_unknown_ones_keep_theirs() {
        let n = Names::from_text(PASSWD, GROUP);
        assert_eq!(n.user(1001), Some("app"), "the first name of an id");
        assert_eq!(n.group(50), Some("staff"));
        assert_eq!(n.user(7), None);
        // Another host where `app` is 2002 and `staff` 60.
        let there = Ids::from_text("app:x:2002:2002::/:/bin/sh\n", "staff:x:60:\n");
        assert_eq!(there.uid(Some("app"), 1001), 2002);
        assert_eq!(there.gid(Some("staff"), 50), 60);
        assert_eq!(
            there.uid(Some("ghost"), 1234),
            1234,
            "unknown here: the stored id"
        );
        assert_eq!(there.uid(None, 1234), 1234);
    }
}
