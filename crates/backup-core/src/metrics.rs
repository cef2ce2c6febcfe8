//! Prometheus text exposition: metric families the library fills, written as a textfile for
//! node_exporter's textfile collector (whole files only, so written aside and renamed).

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, Result};

/// Gauges grouped by family, so each family's HELP, TYPE and samples come out together
/// whatever order they were added in (`promtool check metrics` insists).
#[derive(Debug, Default)]
pub struct Metrics {
    families: BTreeMap<String, (String, Vec<String>)>,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// Adds one sample of the gauge `name`.
    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        let labels = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect::<Vec<_>>()
            .join(",");
        let sample = if labels.is_empty() {
            format!("{name} {value}")
        } else {
            format!("{name}{{{labels}}} {value}")
        };
        self.families
            .entry(name.to_string())
            .or_insert_with(|| (help.to_string(), Vec::new()))
            .1
            .push(sample);
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, (help, samples)) in &self.families {
            // `_total` is the counters' suffix (promtool refuses it on anything else): a count
            // that only grows, reset when its process restarts.
            let kind = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for s in samples {
                out.push_str(s);
                out.push('\n');
            }
        }
        out
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes `text` to `path` atomically (a temporary sibling renamed into place).
pub fn write_textfile(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("prom.tmp");
    std::fs::write(&tmp, text).map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(format!("renaming {}", tmp.display()), e))
}

/// The value of `name{labels…}` in an earlier textfile, for metrics a failed run carries
/// over (when the last success was). Labels must match exactly, in the order written.
pub fn previous_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut m = Metrics::new();
    m.gauge(name, "", labels, 0.0);
    let prefix = m.families[name].1[0].trim_end_matches(" 0").to_string() + " ";
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_previous_value_is_found_by_name_and_labels() {
        let mut m = Metrics::new();
        m.gauge("x_seconds", "X.", &[("repository", "/r")], 42.0);
        m.gauge("x_seconds", "X.", &[("repository", "/s")], 7.0);
        let text = m.render();
        assert_eq!(
            previous_value(&text, "x_seconds", &[("repository", "/s")]),
            Some(7.0)
        );
        assert_eq!(
            previous_value(&text, "x_seconds", &[("repository", "/t")]),
            None
        );
        assert_eq!(previous_value(&text, "x", &[("repository", "/r")]), None);
    }

    #[test]
    fn families_stay_together_and_labels_are_escaped() {
        let mut m = Metrics::new();
        m.gauge("b_total", "B.", &[("x", "1")], 1.0);
        m.gauge("a_seconds", "A.", &[], 2.5);
        m.gauge("b_total", "B.", &[("x", "say \"hi\"\n")], 3.0);
        assert_eq!(
            m.render(),
            "# HELP a_seconds A.\n# TYPE a_seconds gauge\na_seconds 2.5\n\
             # HELP b_total B.\n# TYPE b_total counter\nb_total{x=\"1\"} 1\nb_total{x=\"say \\\"hi\\\"\\n\"} 3\n"
        );
    }
}
