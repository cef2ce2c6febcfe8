//! `promtool check metrics` on a textfile this project wrote (Debian package `prometheus`):
//! the tests hold every metrics file to what node_exporter and Prometheus accept.

use std::io::Write;
use std::process::{Command, Stdio};

/// Checks `text` with `promtool check metrics`; the error holds promtool's complaints, or
/// says how to install it.
pub fn check_metrics(text: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!(
                "promtool not found ({e}): install the Debian package `prometheus` (.ci/run does)"
            )
        })?;
    let _ = child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(text.as_bytes());
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    // promtool prints lint problems and exits 0 for some of them: any output is a problem.
    if out.status.success() && out.stdout.is_empty() && out.stderr.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "promtool check metrics: {}{}\n--- the file:\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Names starting with `prefix` that the shipped dashboard and alert rules (`deploy/`) query
/// and `text` (a metrics file Lifeboat wrote) lacks: a renamed metric would leave a panel
/// empty and an alert silent.
pub fn deployed_names_missing(prefix: &str, text: &str) -> Vec<String> {
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let mut names = std::collections::BTreeSet::new();
    for f in [
        "grafana/lifeboat-dashboard.json",
        "prometheus/lifeboat-alerts.yml",
    ] {
        let src = std::fs::read_to_string(deploy.join(f)).unwrap_or_default();
        let mut rest = src.as_str();
        while let Some(i) = rest.find(prefix) {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[i + name.len()..];
            names.insert(name);
        }
    }
    assert!(
        !names.is_empty(),
        "no {prefix}* metric in {}",
        deploy.display()
    );
    names
        .into_iter()
        .filter(|n| {
            !text.lines().any(|l| {
                l.strip_prefix(n.as_str())
                    .is_some_and(|r| r.starts_with(['{', ' ']))
            })
        })
        .collect()
}
