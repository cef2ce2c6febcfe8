//! Exclude patterns for volumes: `*`, `?`, `**`, matched against paths relative to the volume.
//!
//! A pattern without `/` matches a name at any depth (`*.tmp`); a pattern with `/` matches the
//! whole relative path (`cache/**`, `logs/*.gz`). A directory that matches is skipped whole.

/// A compiled exclude list.
#[derive(Debug, Clone, Default)]
pub struct Excludes {
    patterns: Vec<(Vec<u8>, bool)>,
}

impl Excludes {
    /// Compiles patterns; a leading `/` anchors at the volume root like a `/` inside does.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Self {
        Excludes {
            patterns: patterns
                .iter()
                .map(|p| {
                    let p = p.as_ref().trim_end_matches('/');
                    let anchored = p.contains('/');
                    (p.trim_start_matches('/').as_bytes().to_vec(), anchored)
                })
                .collect(),
        }
    }

    /// Whether the relative path `rel` (with `name` its last component) is excluded.
    pub fn is_excluded(&self, rel: &str, name: &str) -> bool {
        self.patterns.iter().any(|(p, anchored)| {
            if *anchored {
                matches(p, rel.as_bytes())
            } else {
                matches(p, name.as_bytes())
            }
        })
    }
}

/// Glob match where `*` and `?` stop at `/` and `**` crosses it.
fn matches(p: &[u8], s: &[u8]) -> bool {
    if p.is_empty() {
        return s.is_empty();
    }
    if let Some(after) = p.strip_prefix(b"**") {
        if after.is_empty() {
            return true;
        }
        if let Some(rest) = after.strip_prefix(b"/") {
            // `**/` stands for zero or more whole leading segments.
            return matches(rest, s)
                || s.iter()
                    .enumerate()
                    .any(|(i, &c)| c == b'/' && matches(rest, &s[i + 1..]));
        }
        return (0..=s.len()).any(|i| matches(after, &s[i..]));
    }
    match p[0] {
        b'*' => (0..=s.len())
            .take_while(|&i| i == 0 || s[i - 1] != b'/')
            .any(|i| matches(&p[1..], &s[i..])),
        b'?' => !s.is_empty() && s[0] != b'/' && matches(&p[1..], &s[1..]),
        c => !s.is_empty() && s[0] == c && matches(&p[1..], &s[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases: &[(&str, &str, bool)] = &[
            ("*.tmp", "a/b/x.tmp", true),
            ("*.tmp", "a/b/x.tmpl", false),
            ("cache", "srv/cache", true),
            ("cache/**", "cache/a/b", true),
            ("cache/**", "other/cache/a", false),
            ("logs/*.gz", "logs/a.gz", true),
            ("logs/*.gz", "logs/old/a.gz", false),
            ("logs/**/*.gz", "logs/old/a.gz", true),
            ("logs/**/*.gz", "logs/a.gz", true),
            ("/top", "top", true),
            ("/top", "x/top", false),
            ("?.log", "a.log", true),
            ("?.log", "ab.log", false),
            ("**/node_modules", "a/b/node_modules", true),
        ];
        for (pat, rel, want) in cases {
            let name = rel.rsplit('/').next().unwrap();
            assert_eq!(
                Excludes::new(&[pat]).is_excluded(rel, name),
                *want,
                "{pat} vs {rel}"
            );
        }
    }
}
