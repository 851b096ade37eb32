//! `vulcan bench` in quick mode produces every figure (no timing assertions: this only
//! proves every section runs end to end through the real executable and measures
//! something, and that the SSE section's subscribers each received every line).

mod common;

use std::process::Command;

/// The Markdown table row of `md` that starts with `prefix`.
fn row<'a>(md: &'a str, prefix: &str) -> &'a str {
    md.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no row starting with {prefix:?} in:\n{md}"))
}

/// The cells of a Markdown table row.
fn cells(row: &str) -> Vec<&str> {
    row.trim_matches('|').split('|').map(str::trim).collect()
}

#[test]
fn quick_bench_produces_every_figure() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("bench.md");
    let run = Command::new(env!("CARGO_BIN_EXE_vulcan"))
        .args([
            "bench",
            "--quick",
            "--sync-samples",
            "5",
            "--async-workloads",
            "20",
            "--sse-subscribers",
            "10",
            "--queued",
            "50",
            "--out",
        ])
        .arg(&out)
        .output()
        .expect("run vulcan bench");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "vulcan bench failed: {stderr}");
    let md = std::fs::read_to_string(&out).expect("report written");
    assert_eq!(
        md.trim(),
        String::from_utf8_lossy(&run.stdout).trim(),
        "--out holds what was printed"
    );

    for section in [
        "## Memory and admission",
        "## HTTP, real app in-process",
        "## SSE fan-out",
        "## Large logs",
        "## Targets",
    ] {
        assert!(md.contains(section), "no {section:?} in:\n{md}");
    }

    // Memory: both RSS figures and a rate, over the 50 accepted submissions.
    for prefix in ["| RSS idle |", "| RSS with 50 accepted |"] {
        let mib: f64 = cells(row(&md, prefix))[1]
            .trim_end_matches(" MiB")
            .parse()
            .expect("MiB figure");
        assert!(mib > 0.0, "{prefix} {mib}");
    }
    let accepted = cells(row(&md, "| accepted submissions/s |"))[1].to_string();
    assert!(accepted.contains("(50 in "), "{accepted}");

    // Sync JS and Wasm: 5 samples each, p99 ≥ p50 > 0.
    for prefix in [
        "| sync `POST /v1/workloads`, trivial JS",
        "| sync `POST /v1/workloads`, trivial Wasm",
    ] {
        let c = cells(row(&md, prefix));
        assert_eq!(c[1], "5", "{prefix}");
        let (p50, p99): (f64, f64) = (c[2].parse().expect("p50"), c[3].parse().expect("p99"));
        assert!(p50 > 0.0 && p99 >= p50, "{prefix}: {p50} {p99}");
    }
    assert!(
        md.contains("Async throughput: 20 workloads submitted"),
        "{md}"
    );

    // SSE: 10 subscribers (in the quick preset's 2 client processes) × its 10 lines,
    // every one received by each, latencies parsed and at the socket (p99 ≥ p50 > 0,
    // the socket's p50 no later than the parsed p50), and the CPU each side spent.
    let sse = cells(row(&md, "| 100 |"));
    let ms = |i: usize| -> f64 { sse[i].parse().expect("latency in ms") };
    let (p50, p99, socket_p50, socket_p99) = (ms(1), ms(2), ms(3), ms(4));
    assert!(p50 > 0.0 && p99 >= p50, "{md}");
    assert!(socket_p50 > 0.0 && socket_p99 >= socket_p50, "{md}");
    assert!(
        socket_p50 <= p50,
        "bytes reach the socket before they are parsed: {md}"
    );
    assert_eq!(sse[5], "10 / 10 / 10", "{md}");
    for cores in [sse[6], sse[7]] {
        cores.parse::<f64>().expect("CPU in cores");
    }
    assert!(
        sse[8].ends_with(" %"),
        "the clients' share of the CPU: {md}"
    );
    assert!(md.contains("10 subscribers (2 client processes)"), "{md}");

    // One row per target.
    let targets = md.split("## Targets").nth(1).expect("targets");
    assert_eq!(
        targets.lines().filter(|l| l.starts_with("| ")).count(),
        1 + 8
    );
}

/// `vulcan bench --quick --only <section>` with `extra` arguments: its Markdown report.
fn only(section: &str, extra: &[&str]) -> String {
    let run = Command::new(env!("CARGO_BIN_EXE_vulcan"))
        .args(["bench", "--quick", "--only", section])
        .args(extra)
        .output()
        .expect("run vulcan bench");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "vulcan bench --only {section} failed: {stderr}"
    );
    String::from_utf8_lossy(&run.stdout).into_owned()
}

#[test]
fn the_accepted_and_async_sections_run_alone_over_the_connections_asked_for() {
    // More connections than two client threads: each thread drives several, and every
    // submission is still answered 202 and found committed (the section checks both).
    let md = only("accepted", &["--queued", "40", "--async-clients", "7"]);
    assert!(md.contains("## Memory and admission"), "{md}");
    assert!(md.contains("over 7 connections"), "{md}");
    let accepted = cells(row(&md, "| accepted submissions/s |"))[1].to_string();
    assert!(accepted.contains("(40 in "), "{accepted}");
    // The CPU of the server's threads and of the client's, per submission, apart.
    for prefix in [
        "| server CPU per accepted submission |",
        "| client CPU per submission |",
    ] {
        let us: f64 = cells(row(&md, prefix))[1]
            .split(" µs")
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no µs figure in {prefix}: {md}"));
        assert!(us > 0.0, "{prefix} {us}");
    }
    assert!(!md.contains("## SSE fan-out"), "only the one section: {md}");

    let md = only(
        "async",
        &["--async-workloads", "30", "--async-clients", "7"],
    );
    let line = md
        .lines()
        .find(|l| l.starts_with("Async throughput:"))
        .unwrap_or_else(|| panic!("no async figure in:\n{md}"));
    assert!(
        line.contains("30 workloads submitted over 7 connections, all completed"),
        "{line}"
    );
    assert!(
        !md.contains("## Memory and admission"),
        "only the one section: {md}"
    );
}

#[test]
fn the_stores_section_compares_sqlite_postgresql_and_cluster_nodes_on_fresh_databases() {
    let test = "the_stores_section_compares_sqlite_postgresql_and_cluster_nodes";
    let Some(cluster) = common::store::test_pg::cluster(test) else {
        return;
    };
    let server = cluster.url("postgres");
    let md = only(
        "stores",
        &[
            "--db-url",
            &server,
            "--nodes",
            "2",
            "--queued",
            "30",
            "--async-workloads",
            "20",
            "--async-clients",
            "4",
        ],
    );
    assert!(md.contains("## Stores and nodes"), "{md}");
    assert!(
        md.contains("synchronous_commit = "),
        "the server's settings: {md}"
    );
    for label in [
        "| SQLite, 1 node |",
        "| PostgreSQL, 1 node |",
        "| PostgreSQL, 1 cluster node |",
        "| PostgreSQL, 2 cluster nodes |",
    ] {
        let c = cells(row(&md, label));
        // sync p50 / p99, async/s, ratio, accepted/s, ratio: all measured, all positive.
        let sync: Vec<f64> = c[1]
            .split(" / ")
            .map(|v| v.parse().unwrap_or_else(|_| panic!("{label}: {c:?}")))
            .collect();
        assert!(sync[0] > 0.0 && sync[1] >= sync[0], "{label}: {c:?}");
        for i in 2..=5 {
            let v: f64 = c[i].parse().unwrap_or_else(|_| panic!("{label}: {c:?}"));
            assert!(v > 0.0, "{label}: {c:?}");
        }
    }
    // Every fresh database the bench made is gone again.
    common::cluster::execute(
        &server,
        "DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_database WHERE datname LIKE 'vulcan_bench_%') \
         THEN RAISE EXCEPTION 'a bench database was left behind'; END IF; END $$",
    );
}

#[test]
fn the_stores_section_without_a_database_url_says_what_it_needs() {
    let run = Command::new(env!("CARGO_BIN_EXE_vulcan"))
        .args(["bench", "--quick", "--only", "stores"])
        .output()
        .expect("run vulcan bench");
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("--db-url"), "{stderr}");
}
