//! Anomaly checks on `run` against a real PostgreSQL: a truncated table and an emptied volume
//! warn by default (the snapshot is flagged, `show` says why) and, with `on_anomaly = "fail"`,
//! fail the run with no snapshot, naming the table and both counts.

mod common;
use common::*;

use backup_core::engines::postgres::scratch::{ScratchPostgres, server_bin_dir};

fn snapshot_count(e: &Env) -> usize {
    json(&e.run(&["snapshots", "--json"]))
        .as_array()
        .unwrap()
        .len()
}

#[test]
fn a_truncated_table_and_an_emptied_volume_warn_or_fail_naming_both_counts() {
    assert!(
        server_bin_dir().is_some(),
        "PostgreSQL server binaries not found (apt-get install postgresql)"
    );
    let pg = ScratchPostgres::start().unwrap();
    pg.psql("postgres", "CREATE DATABASE app").unwrap();
    pg.psql_each(
        "app",
        &[
            "CREATE TABLE orders (id int PRIMARY KEY, note text)",
            "INSERT INTO orders SELECT g, 'order ' || g FROM generate_series(1, 5000) g",
            "CREATE TABLE jobs (id int)",
            "INSERT INTO jobs VALUES (1), (2), (3)",
        ],
    )
    .unwrap();
    let e = Env::new();
    let files = e.p("files");
    std::fs::create_dir_all(&files).unwrap();
    for i in 0..51 {
        std::fs::write(files.join(format!("f{i}")), format!("file {i}")).unwrap();
    }
    let base = std::fs::read_to_string(e.p("c.toml")).unwrap();
    let config = |on_anomaly: &str| {
        std::fs::write(
            e.p("c.toml"),
            format!(
                "{base}\n[sources.app]\ntype = \"postgres\"\nurl = \"{}\"\non_anomaly = \"{on_anomaly}\"\n\n[sources.files]\ntype = \"volume\"\npath = \"{}\"\n",
                pg.url("app"),
                files.display()
            ),
        )
        .unwrap();
    };
    config("warn");
    let first = e.run(&["run"]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(
        !stderr(&first).contains("does not look like"),
        "{}",
        stderr(&first)
    );

    // The night it goes wrong: the table truncated, the volume an empty mount point, and a
    // queue table emptied as it is every night (not an anomaly).
    pg.psql_each("app", &["TRUNCATE orders", "DELETE FROM jobs"])
        .unwrap();
    for i in 0..51 {
        std::fs::remove_file(files.join(format!("f{i}"))).unwrap();
    }
    let prom = e.p("lifeboat.prom");
    let warned = e.run(&["run", "--prometheus", prom.to_str().unwrap()]);
    let err = stderr(&warned);
    assert!(warned.status.success(), "warn is the default: {err}");
    assert!(
        err.contains(
            "source app does not look like last time: table public.orders: 5000 rows before, 0 now"
        ),
        "{err}"
    );
    assert!(
        !err.contains("public.jobs"),
        "3 rows to none is a quiet night: {err}"
    );
    assert!(
        err.contains("source files does not look like last time: 51 files before, 0 now"),
        "{err}"
    );
    assert_eq!(snapshot_count(&e), 2, "warn commits the snapshot");
    // The metrics count each source's findings (0 when alike), for the alert rules.
    let text = std::fs::read_to_string(&prom).unwrap();
    backup_core::scratch::promtool::check_metrics(&text).unwrap();
    let anomalies = |source: &str| {
        text.lines()
            .find(|l| {
                l.starts_with("lifeboat_backup_source_anomalies{")
                    && l.contains(&format!("source=\"{source}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no anomalies series for {source}:\n{text}"))
    };
    assert_eq!((anomalies("app"), anomalies("files")), (1.0, 1.0), "{text}");
    let show = json(&e.restore(&["show", "latest", "--json"]));
    let flagged: Vec<String> = show["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["facts"]["anomalies"].as_array())
        .flatten()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        flagged,
        [
            "table public.orders: 5000 rows before, 0 now",
            "51 files before, 0 now"
        ],
        "show says why the snapshot is flagged"
    );

    // Fail mode: compared with the last snapshot (itself flagged, with 0 rows), the table
    // must drop again to fail; put the rows back, back up, then truncate once more.
    pg.psql(
        "app",
        "INSERT INTO orders SELECT g, 'order ' || g FROM generate_series(1, 5000) g",
    )
    .unwrap();
    let refilled = e.run(&["run", "--source", "app"]);
    assert!(refilled.status.success(), "{}", stderr(&refilled));
    config("fail");
    pg.psql("app", "TRUNCATE orders").unwrap();
    let failed = e.run(&["run", "--source", "app"]);
    let err = stderr(&failed);
    assert_eq!(failed.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "no snapshot was written: source app: table public.orders: 5000 rows before, 0 now"
        ),
        "{err}"
    );
    assert!(err.contains("hint: if the change is expected"), "{err}");
    assert_eq!(snapshot_count(&e), 3, "fail mode writes no snapshot");
}
