//! Prometheus metrics, exposed as text on `GET /metrics`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// Every metric the server records. One instance per server, shared by `Arc`.
pub struct Metrics {
    registry: Registry,
    /// HTTP requests by route pattern, method and status.
    pub http_requests: IntCounterVec,
    /// HTTP request durations by route pattern.
    pub http_duration: HistogramVec,
    /// Workloads that reached a terminal status, by backend and status.
    pub workloads_finished: IntCounterVec,
    /// Execution time by backend.
    pub workload_duration: HistogramVec,
    /// Workloads accepted and not yet running.
    pub queue_depth: IntGauge,
    /// Workloads executing now.
    pub running: IntGauge,
    /// Submissions refused because the queue was full.
    pub rejected_queue_full: IntCounter,
    /// Open SSE subscriptions.
    pub sse_subscribers: IntGauge,
    /// Open log topics (admitted, unfinished workloads plus provisional topics of early
    /// subscribers).
    pub log_topics: IntGauge,
    /// Workloads of other nodes this node follows from the shared table now (one
    /// follower per workload, however many streams and waiters are attached to it).
    pub log_followers: IntGauge,
    /// Followers of other nodes' workloads started since the process started.
    pub log_followers_started: IntCounter,
    /// Log lines handed to the store.
    pub log_lines_persisted: IntCounter,
    /// Log events not delivered to a subscriber that fell behind (it was disconnected).
    pub log_lines_dropped: IntCounter,
    /// Log lines cut for length or dropped past the per-workload cap.
    pub log_lines_truncated: IntCounter,
    /// Log lines that could not be stored (storage fault); marked in their log later.
    pub log_lines_lost: IntCounter,
    /// Rows deleted by retention, by table (`workloads`, `log_lines`).
    pub retention_swept: IntCounterVec,
    /// Writes committed per store transaction.
    pub store_batch_size: Histogram,
    /// Running + terminal status changes of one workload written as one statement
    /// (a run that ended before its running write was committed).
    pub store_status_writes_coalesced: IntCounter,
    /// SQLite write-ahead log checkpoints, by who ran them: `background` (the
    /// checkpointer thread, off the writer's path) or `writer` (the log passed its bound).
    pub store_checkpoints: IntCounterVec,
    /// Backend actor restarts, by backend.
    pub backend_restarts: IntCounterVec,
    /// Backend worker processes replaced (crashed, or killed after a missed cancel).
    pub worker_restarts: IntCounterVec,
    /// Webhook deliveries settled, by outcome (`delivered`, `failed`).
    pub webhook_deliveries: IntCounterVec,
    /// Webhook attempts recorded, by result (`success`, `http_status`, `timeout`,
    /// `refused`, `error`).
    pub webhook_attempts: IntCounterVec,
    /// Webhook deliveries pending (due, waiting for a retry or in flight), as of the
    /// deliverer's last look at the queue.
    pub webhook_queue_depth: IntGauge,
    /// Webhook attempts in progress.
    pub webhook_in_flight: IntGauge,
}

impl Metrics {
    /// Create and register every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("vulcan".into()), None)?;
        let http_requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests by route, method and status",
            ),
            &["route", "method", "status"],
        )?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "HTTP request durations").buckets(
                vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0,
                ],
            ),
            &["route"],
        )?;
        let workloads_finished = IntCounterVec::new(
            Opts::new(
                "workloads_total",
                "Workloads that reached a terminal status",
            ),
            &["backend", "status"],
        )?;
        let workload_duration = HistogramVec::new(
            HistogramOpts::new("workload_duration_seconds", "Workload execution time").buckets(
                vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0],
            ),
            &["backend"],
        )?;
        let queue_depth = IntGauge::new("queue_depth", "Workloads accepted and not yet running")?;
        let running = IntGauge::new("workloads_running", "Workloads executing now")?;
        let rejected_queue_full = IntCounter::new(
            "submissions_rejected_queue_full_total",
            "Submissions refused with 429 because the queue was full",
        )?;
        let sse_subscribers = IntGauge::new("sse_subscribers", "Open SSE log subscriptions")?;
        let log_topics = IntGauge::new(
            "log_topics",
            "Open log topics (unfinished workloads with a topic)",
        )?;
        let log_followers = IntGauge::new(
            "log_followers",
            "Workloads of other cluster nodes followed from the shared table",
        )?;
        let log_followers_started = IntCounter::new(
            "log_followers_started_total",
            "Followers of other cluster nodes' workloads started",
        )?;
        let log_lines_persisted =
            IntCounter::new("log_lines_persisted_total", "Log lines handed to the store")?;
        let log_lines_dropped = IntCounter::new(
            "log_lines_dropped_total",
            "Log events not delivered to slow subscribers (disconnected)",
        )?;
        let log_lines_truncated = IntCounter::new(
            "log_lines_truncated_total",
            "Log lines cut for length or dropped past the per-workload cap",
        )?;
        let log_lines_lost = IntCounter::new(
            "log_lines_lost_total",
            "Log lines that could not be stored because the storage failed",
        )?;
        let retention_swept = IntCounterVec::new(
            Opts::new(
                "retention_swept_rows_total",
                "Rows deleted by retention (finished workloads past max_age_s), by table",
            ),
            &["table"],
        )?;
        let store_batch_size = Histogram::with_opts(
            HistogramOpts::new("store_batch_size", "Writes committed per store transaction")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 64.0, 256.0, 1024.0, 4096.0]),
        )?;
        let store_status_writes_coalesced = IntCounter::new(
            "store_status_writes_coalesced_total",
            "Running and terminal status changes written as one statement",
        )?;
        let store_checkpoints = IntCounterVec::new(
            Opts::new(
                "store_checkpoints_total",
                "SQLite write-ahead log checkpoints, by who ran them",
            ),
            &["by"],
        )?;
        let backend_restarts = IntCounterVec::new(
            Opts::new("backend_restarts_total", "Backend actor restarts"),
            &["backend"],
        )?;
        let worker_restarts = IntCounterVec::new(
            Opts::new(
                "worker_restarts_total",
                "Backend worker processes replaced after a crash or a missed cancel",
            ),
            &["backend"],
        )?;
        let webhook_deliveries = IntCounterVec::new(
            Opts::new(
                "webhook_deliveries_total",
                "Webhook deliveries settled, by outcome",
            ),
            &["outcome"],
        )?;
        let webhook_attempts = IntCounterVec::new(
            Opts::new("webhook_attempts_total", "Webhook attempts, by result"),
            &["result"],
        )?;
        let webhook_queue_depth = IntGauge::new(
            "webhook_queue_depth",
            "Webhook deliveries pending (due, waiting for a retry or in flight)",
        )?;
        let webhook_in_flight = IntGauge::new("webhook_in_flight", "Webhook attempts in progress")?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_duration.clone()))?;
        registry.register(Box::new(workloads_finished.clone()))?;
        registry.register(Box::new(workload_duration.clone()))?;
        registry.register(Box::new(queue_depth.clone()))?;
        registry.register(Box::new(running.clone()))?;
        registry.register(Box::new(rejected_queue_full.clone()))?;
        registry.register(Box::new(sse_subscribers.clone()))?;
        registry.register(Box::new(log_topics.clone()))?;
        registry.register(Box::new(log_followers.clone()))?;
        registry.register(Box::new(log_followers_started.clone()))?;
        registry.register(Box::new(log_lines_persisted.clone()))?;
        registry.register(Box::new(log_lines_dropped.clone()))?;
        registry.register(Box::new(log_lines_truncated.clone()))?;
        registry.register(Box::new(log_lines_lost.clone()))?;
        registry.register(Box::new(retention_swept.clone()))?;
        registry.register(Box::new(store_batch_size.clone()))?;
        registry.register(Box::new(store_status_writes_coalesced.clone()))?;
        registry.register(Box::new(store_checkpoints.clone()))?;
        registry.register(Box::new(backend_restarts.clone()))?;
        registry.register(Box::new(worker_restarts.clone()))?;
        registry.register(Box::new(webhook_deliveries.clone()))?;
        registry.register(Box::new(webhook_attempts.clone()))?;
        registry.register(Box::new(webhook_queue_depth.clone()))?;
        registry.register(Box::new(webhook_in_flight.clone()))?;
        Ok(Self {
            registry,
            http_requests,
            http_duration,
            workloads_finished,
            workload_duration,
            queue_depth,
            running,
            rejected_queue_full,
            sse_subscribers,
            log_topics,
            log_followers,
            log_followers_started,
            log_lines_persisted,
            log_lines_dropped,
            log_lines_truncated,
            log_lines_lost,
            retention_swept,
            store_batch_size,
            store_status_writes_coalesced,
            store_checkpoints,
            backend_restarts,
            worker_restarts,
            webhook_deliveries,
            webhook_attempts,
            webhook_queue_depth,
            webhook_in_flight,
        })
    }

    /// Register collectors owned elsewhere (the image store's), so `/metrics` shows them.
    pub fn register_all(
        &self,
        collectors: Vec<Box<dyn prometheus::core::Collector>>,
    ) -> Result<(), prometheus::Error> {
        for c in collectors {
            self.registry.register(c)?;
        }
        Ok(())
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            log::error!("metrics: encoding failed: {e}");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}
