//! What a drill asks a restored PostgreSQL database: one query's value, over psql.

use super::PgTools;
use super::session::PsqlSession;

/// Runs a query returning one JSON value (psql, the server's own JSON).
pub async fn query_json(url: &str, sql: &str) -> Result<serde_json::Value, String> {
    let mut s = PsqlSession::connect(&PgTools::default(), url).await?;
    let v = s.json(sql).await;
    s.close().await;
    v
}

/// The first column of the first row of `sql`, as text (strings unquoted).
pub async fn query_value(url: &str, sql: &str) -> Result<String, String> {
    let wrapped = format!(
        "SELECT to_json(x) FROM ({}) AS q(x) LIMIT 1",
        sql.trim().trim_end_matches(';')
    );
    Ok(match query_json(url, &wrapped).await? {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    })
}
