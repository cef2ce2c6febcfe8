//! libpq connection strings (URLs and `key=value` lists): read or replace the database, redact,
//! or read every parameter.

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

/// Every parameter a connection string sets, as `key=value` pairs: a URL's user, password,
/// host, port and database become `user`, `password`, `host`, `port` and `dbname`, its query
/// parameters follow (a host in brackets or percent-encoded, e.g. a socket directory, works).
pub fn params(conninfo: &str) -> Vec<(String, String)> {
    let Some(rest) = url_rest(conninfo) else {
        return keywords(conninfo);
    };
    let rest = rest.split('#').next().unwrap_or("");
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, db) = before_query.split_once('/').unwrap_or((before_query, ""));
    let mut out = Vec::new();
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    if let Some(u) = userinfo {
        let (user, pw) = u.split_once(':').map_or((u, None), |(a, b)| (a, Some(b)));
        if !user.is_empty() {
            out.push(("user".into(), percent_decode(user)));
        }
        if let Some(pw) = pw {
            out.push(("password".into(), percent_decode(pw)));
        }
    }
    let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
        let (h, after) = h.split_once(']').unwrap_or((h, ""));
        (h, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if !host.is_empty() {
        out.push(("host".into(), percent_decode(host)));
    }
    if let Some(p) = port.filter(|p| !p.is_empty()) {
        out.push(("port".into(), p.to_string()));
    }
    if !db.is_empty() {
        out.push(("dbname".into(), percent_decode(db)));
    }
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        out.push((percent_decode(k), percent_decode(v)));
    }
    out
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
    fn every_parameter_of_either_form() {
        let p = params(
            "postgresql://rep:p%40ss@db.example:5433/app?sslmode=disable&application_name=x",
        );
        let want: Vec<(String, String)> = [
            ("user", "rep"),
            ("password", "p@ss"),
            ("host", "db.example"),
            ("port", "5433"),
            ("dbname", "app"),
            ("sslmode", "disable"),
            ("application_name", "x"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(p, want);
        let p = params("postgres://%2Fvar%2Frun%2Fpostgresql:5432/");
        assert_eq!(p[0], ("host".into(), "/var/run/postgresql".into()));
        assert_eq!(p[1], ("port".into(), "5432".into()));
        let p = params("host=/tmp port=5555 user='a b'");
        assert_eq!(p[2], ("user".into(), "a b".into()));
    }

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
