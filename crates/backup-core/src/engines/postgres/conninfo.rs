//! libpq connection strings (URLs and `key=value` lists): read or replace the database, redact.

/// The database named by a connection string, if any.
pub fn database(conninfo: &str) -> Option<String> {
    if let Some(rest) = url_rest(conninfo) {
        let path = rest.split(['?', '#']).next().unwrap_or("");
        let db = path.split_once('/').map(|(_, db)| db).unwrap_or("");
        return (!db.is_empty()).then(|| percent_decode(db));
    }
    keywords(conninfo)
        .into_iter()
        .find(|(k, _)| k == "dbname")
        .map(|(_, v)| v)
}

/// The same connection string with the database replaced (or added).
pub fn with_database(conninfo: &str, db: &str) -> String {
    if let Some(rest) = url_rest(conninfo) {
        let scheme_len = conninfo.len() - rest.len();
        let (before_query, query) = match rest.find(['?', '#']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let authority = before_query
            .split_once('/')
            .map(|(a, _)| a)
            .unwrap_or(before_query);
        return format!(
            "{}{authority}/{}{query}",
            &conninfo[..scheme_len],
            percent_encode(db)
        );
    }
    let mut kv: Vec<(String, String)> = keywords(conninfo)
        .into_iter()
        .filter(|(k, _)| k != "dbname")
        .collect();
    kv.push(("dbname".into(), db.into()));
    kv.iter()
        .map(|(k, v)| format!("{k}='{}'", v.replace('\\', "\\\\").replace('\'', "\\'")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The connection string with any password replaced by `***`, for messages and reports.
pub fn redact(conninfo: &str) -> String {
    if let Some(rest) = url_rest(conninfo) {
        let scheme_len = conninfo.len() - rest.len();
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..end];
        if let Some((userinfo, host)) = authority.rsplit_once('@')
            && let Some((user, _)) = userinfo.split_once(':')
        {
            return format!(
                "{}{user}:***@{host}{}",
                &conninfo[..scheme_len],
                &rest[end..]
            );
        }
        return conninfo.to_string();
    }
    keywords(conninfo)
        .into_iter()
        .map(|(k, v)| {
            if k == "password" {
                format!("{k}=***")
            } else {
                format!("{k}={v}")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn url_rest(s: &str) -> Option<&str> {
    s.strip_prefix("postgresql://")
        .or_else(|| s.strip_prefix("postgres://"))
}

fn keywords(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars
            .by_ref()
            .take_while(|c| *c != '=')
            .collect::<String>()
            .trim()
            .to_string();
        if key.is_empty() {
            break;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut val = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => val.extend(chars.next()),
                    '\'' => break,
                    c => val.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek().copied() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    val.extend(chars.next());
                } else {
                    val.push(c);
                }
            }
        }
        out.push((key, val));
    }
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = "postgresql://app:s3cr%40t@db.internal:5433/shop?sslmode=require";
        assert_eq!(database(u).as_deref(), Some("shop"));
        assert_eq!(
            with_database(u, "my db"),
            "postgresql://app:s3cr%40t@db.internal:5433/my%20db?sslmode=require"
        );
        assert_eq!(
            redact(u),
            "postgresql://app:***@db.internal:5433/shop?sslmode=require"
        );
        assert_eq!(database("postgres://h:1"), None);
        assert_eq!(with_database("postgres://h:1", "x"), "postgres://h:1/x");
        assert_eq!(database("postgres://h/a%2Fb").as_deref(), Some("a/b"));
    }

    #[test]
    fn keyword_strings() {
        let k = r"host=db port=5432 dbname=shop password='it\'s' user=app";
        assert_eq!(database(k).as_deref(), Some("shop"));
        let w = with_database("host=db password='a b'", "other");
        assert_eq!(w, "host='db' password='a b' dbname='other'");
        assert_eq!(database(&w).as_deref(), Some("other"));
        assert!(!redact("host=db password=hunter2").contains("hunter2"));
    }
}
