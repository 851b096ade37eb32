//! `vulcan bench` in quick mode produces sane figures (no timing assertions: this only
//! proves every section runs end to end and measures something).

use std::time::Duration;

use vulcan::bench::{self, BenchOptions, NodeBaseline};

#[test]
fn quick_bench_produces_every_figure() {
    let mut opts = BenchOptions::quick();
    opts.cold_samples = 5;
    opts.sync_samples = 5;
    opts.async_workloads = 20;
    opts.node_runs = 1;
    opts.sse_subscribers = 10;
    opts.sse_lines = 5;
    opts.worker_path = Some(env!("CARGO_BIN_EXE_vulcan").into());
    let report = bench::run(&opts).expect("bench runs");

    for (name, p) in [
        ("cold js", report.cold_js),
        ("cold wasm", report.cold_wasm),
        ("sync", report.sync),
        ("sse", report.sse.latency),
    ] {
        assert!(p.samples > 0, "{name}: no samples");
        assert!(p.p50 > Duration::ZERO, "{name}: p50 is zero");
        assert!(p.p99 >= p.p50, "{name}: p99 below p50");
    }
    assert_eq!(report.cold_js.samples, 5);
    assert_eq!(report.sync.samples, 5);

    assert_eq!(report.throughput.workloads, 20);
    assert!(report.throughput.elapsed > Duration::ZERO);
    assert!(report.throughput.per_second() > 0.0);

    // Every subscriber received every line.
    assert_eq!(report.sse.subscribers, 10);
    assert_eq!(report.sse.min_received, 5);
    assert_eq!(report.sse.max_received, 5);
    assert_eq!(report.sse.latency.samples, 10 * 5);

    match &report.node {
        NodeBaseline::Measured(p) => assert!(p.p50 > Duration::ZERO),
        NodeBaseline::Skipped(why) => assert!(!why.is_empty()),
    }

    let md = report.to_markdown("vulcan bench --quick");
    assert!(md.contains("## Targets"), "{md}");
    assert_eq!(report.targets().len(), 3);
}
