//! `vulcan bench`, logs section: reading a large log while work is submitted.
//!
//! One node workload prints `lines` lines (~100 bytes each) on the real isolate
//! backend; then: time to first byte and to the end of its history (paged) and of its
//! SSE replay, with the process's peak RSS while they run; and async submit latency
//! idle, then while `readers` clients re-read the history in a loop, in the same run.
//! Self-contained (its own client, reqwest on a current-thread runtime) so it can move
//! with the rest of the bench.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};

use super::{ms, percentiles, BenchError, Percentiles};

/// Target: submit p99 while readers page through large histories, against idle.
const TARGET_LOADED_P99_FACTOR: f64 = 2.0;

/// How much work the section does.
#[derive(Debug, Clone, Copy)]
pub struct LogsOptions {
    /// Lines the logging workload prints (~100 bytes each).
    pub lines: usize,
    /// Async submissions measured idle, and again under read load.
    pub submits: usize,
    /// Clients re-reading the history meanwhile.
    pub readers: usize,
}

/// What the section measured.
#[derive(Debug, Clone, PartialEq)]
pub struct LogsFigures {
    /// Lines of the log read.
    pub lines: u64,
    /// Bytes of line text in it.
    pub bytes: u64,
    /// First history page: request → first body byte.
    pub history_ttfb: Duration,
    /// Every page of the history, one after the other.
    pub history_all: Duration,
    /// SSE replay of the finished workload: request → first event bytes.
    pub replay_ttfb: Duration,
    /// SSE replay to `done`.
    pub replay_all: Duration,
    /// Resident memory of the process (server and bench) before the reads, in KiB.
    pub rss_before_kib: u64,
    /// Peak resident memory while reading history and replay, in KiB (`VmHWM` after
    /// a reset; `None` where the kernel does not allow the reset).
    pub rss_peak_kib: Option<u64>,
    /// Async submit round trips with nothing else going on.
    pub submit_idle: Percentiles,
    /// The same while the readers page through the history.
    pub submit_loaded: Percentiles,
    /// Readers and the history pages they read meanwhile.
    pub readers: usize,
    /// History pages the readers read while the loaded submits ran.
    pub pages_read: u64,
}

impl LogsFigures {
    /// `submit_loaded.p99 / submit_idle.p99`.
    pub fn loaded_factor(&self) -> f64 {
        self.submit_loaded.p99.as_secs_f64() / self.submit_idle.p99.as_secs_f64().max(1e-9)
    }

    /// Whether the loaded p99 is within the target factor of idle.
    pub fn target_met(&self) -> bool {
        self.loaded_factor() <= TARGET_LOADED_P99_FACTOR
    }

    /// The target, in words: goal and this run.
    pub fn target(&self) -> (String, String) {
        (
            format!("≤ {TARGET_LOADED_P99_FACTOR:.0}× idle p99"),
            format!("{:.2}×", self.loaded_factor()),
        )
    }

    /// The section as Markdown.
    pub fn markdown(&self, s: &mut String) {
        let _ = writeln!(s, "\n## Large logs\n");
        let _ = writeln!(
            s,
            "One node workload printed {} lines ({:.1} MB of text) on the isolate backend.\n",
            self.lines,
            self.bytes as f64 / 1e6
        );
        let _ = writeln!(s, "| read | first byte ms | all ms |\n|---|---|---|");
        let _ = writeln!(
            s,
            "| history, pages of 10,000 (or 4 MiB) | {} | {} |",
            ms(self.history_ttfb),
            ms(self.history_all)
        );
        let _ = writeln!(
            s,
            "| SSE replay of the finished workload | {} | {} |",
            ms(self.replay_ttfb),
            ms(self.replay_all)
        );
        let peak = self.rss_peak_kib.map_or_else(
            || "not measured (no VmHWM reset)".into(),
            |p| {
                format!(
                    "{:.1} MiB (+{:.1} MiB over {:.1} MiB before)",
                    p as f64 / 1024.0,
                    p.saturating_sub(self.rss_before_kib) as f64 / 1024.0,
                    self.rss_before_kib as f64 / 1024.0
                )
            },
        );
        let _ = writeln!(s, "\nPeak RSS of the process while reading: {peak}.\n");
        let _ = writeln!(
            s,
            "| async submit (trivial JS) | samples | p50 ms | p99 ms |\n|---|---|---|---|"
        );
        for (name, p) in [
            ("idle", &self.submit_idle),
            (
                &*format!(
                    "while {} clients re-read the history ({} pages read meanwhile)",
                    self.readers, self.pages_read
                ),
                &self.submit_loaded,
            ),
        ] {
            let _ = writeln!(
                s,
                "| {name} | {} | {} | {} |",
                p.samples,
                ms(p.p50),
                ms(p.p99)
            );
        }
        let _ = writeln!(
            s,
            "\nloaded p99 / idle p99 = **{:.2}×**",
            self.loaded_factor()
        );
    }
}

fn http(e: reqwest::Error) -> BenchError {
    BenchError::Http(e.to_string())
}

/// `VmRSS` or `VmHWM` of this process, in KiB.
fn status_kib(field: &str) -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Run the section against the server at `addr`.
pub fn run(addr: SocketAddr, opts: LogsOptions) -> Result<LogsFigures, BenchError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::Io("logs bench runtime".into(), e))?;
    rt.block_on(section(format!("http://{addr}"), opts))
}

async fn section(base: String, opts: LogsOptions) -> Result<LogsFigures, BenchError> {
    let client = reqwest::Client::new();
    let code = format!(
        "for (let i = 0; i < {}; i++) console.log('line ' + i + ' ' + 'x'.repeat(84)); 0",
        opts.lines
    );
    let w: Value = client
        .post(format!("{base}/v1/workloads"))
        .json(&json!({"runtime": "node", "code": code, "resources": {"timeout_s": 600}}))
        .send()
        .await
        .map_err(http)?
        .json()
        .await
        .map_err(http)?;
    if w["status"] != "completed" {
        return Err(BenchError::Http(format!(
            "the logging workload did not complete: {w}"
        )));
    }
    let id = w["id"].as_str().unwrap_or_default().to_string();
    let history = format!("{base}/v1/workloads/{id}/logs/history");

    let rss_before_kib = status_kib("VmRSS:").unwrap_or(0);
    // Writing 5 resets VmHWM to the current RSS (Linux ≥ 4.0).
    let hwm_reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();

    let (history_ttfb, history_all, lines, bytes) = read_history(&client, &history).await?;
    let (replay_ttfb, replay_all) =
        read_replay(&client, &format!("{base}/v1/workloads/{id}/logs")).await?;
    let rss_peak_kib = hwm_reset.then(|| status_kib("VmHWM:")).flatten();

    let submit_idle = submits(&client, &base, opts.submits).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let pages = Arc::new(AtomicU64::new(0));
    // The readers are other clients: on a thread and runtime of their own, so the time
    // they spend receiving megabytes of JSON is not counted in the submitter's round
    // trips (on one runtime, a submit's answer waited for a reader's page to be parsed).
    let readers = {
        let (history, stop, pages, n) =
            (history.clone(), stop.clone(), pages.clone(), opts.readers);
        std::thread::Builder::new()
            .name("bench-log-readers".into())
            .spawn(move || read_loop(history, n, stop, pages))
            .map_err(|e| BenchError::Io("spawning the log readers".into(), e))?
    };
    // Let every reader be in the middle of its pages.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = pages.load(Ordering::SeqCst);
    let submit_loaded = submits(&client, &base, opts.submits).await;
    let pages_read = pages.load(Ordering::SeqCst) - before;
    stop.store(true, Ordering::SeqCst);
    let read = readers
        .join()
        .map_err(|_| BenchError::Setup("the log readers panicked".into()))?;
    let submit_loaded = submit_loaded?;
    read?;
    Ok(LogsFigures {
        lines,
        bytes,
        history_ttfb,
        history_all,
        replay_ttfb,
        replay_all,
        rss_before_kib,
        rss_peak_kib,
        submit_idle,
        submit_loaded,
        readers: opts.readers,
        pages_read,
    })
}

/// The end of a history page: what a re-reading client needs (`lines` is skipped by
/// the parser, not built).
#[derive(serde::Deserialize)]
struct PageEnd {
    next_after: Option<u64>,
}

/// `n` clients paging through `history` again and again until `stop`, each page
/// counted in `pages`; on this thread's own runtime.
fn read_loop(
    history: String,
    n: usize,
    stop: Arc<AtomicBool>,
    pages: Arc<AtomicU64>,
) -> Result<(), BenchError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::Io("log readers runtime".into(), e))?;
    rt.block_on(async move {
        let client = reqwest::Client::new();
        let readers: Vec<_> = (0..n)
            .map(|_| {
                let (client, history, stop, pages) =
                    (client.clone(), history.clone(), stop.clone(), pages.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::SeqCst) {
                        let mut after: Option<u64> = None;
                        loop {
                            let url = match after {
                                None => format!("{history}?limit=10000"),
                                Some(a) => format!("{history}?limit=10000&after={a}"),
                            };
                            let res = client.get(url).send().await.map_err(http)?;
                            if !res.status().is_success() {
                                return Err(BenchError::Http(format!(
                                    "history page answered {}",
                                    res.status()
                                )));
                            }
                            let page: PageEnd = res.json().await.map_err(http)?;
                            pages.fetch_add(1, Ordering::SeqCst);
                            match page.next_after {
                                Some(n) if !stop.load(Ordering::SeqCst) => after = Some(n),
                                _ => break,
                            }
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for r in readers {
            r.await
                .map_err(|e| BenchError::Setup(format!("log reader: {e}")))??;
        }
        Ok(())
    })
}

/// Page through the whole history: first byte of the first page, all pages, lines and
/// bytes of text read.
async fn read_history(
    client: &reqwest::Client,
    history: &str,
) -> Result<(Duration, Duration, u64, u64), BenchError> {
    let start = Instant::now();
    let mut ttfb = None;
    let (mut lines, mut bytes) = (0u64, 0u64);
    let mut after: Option<u64> = None;
    loop {
        let url = match after {
            None => format!("{history}?limit=10000"),
            Some(a) => format!("{history}?limit=10000&after={a}"),
        };
        let res = client.get(url).send().await.map_err(http)?;
        let mut body = res.bytes_stream();
        let mut buf = Vec::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(http)?;
            ttfb.get_or_insert_with(|| start.elapsed());
            buf.extend_from_slice(&chunk);
        }
        let page: Value = serde_json::from_slice(&buf)
            .map_err(|e| BenchError::Http(format!("history page: {e}")))?;
        for l in page["lines"].as_array().into_iter().flatten() {
            lines += 1;
            bytes += l["line"].as_str().map_or(0, str::len) as u64;
        }
        match page["next_after"].as_u64() {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    Ok((ttfb.unwrap_or_default(), start.elapsed(), lines, bytes))
}

/// Read the SSE replay of a finished workload to its end.
async fn read_replay(
    client: &reqwest::Client,
    url: &str,
) -> Result<(Duration, Duration), BenchError> {
    let start = Instant::now();
    let res = client.get(url).send().await.map_err(http)?;
    let mut body = res.bytes_stream();
    let mut ttfb = None;
    let mut tail: Vec<u8> = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(http)?;
        ttfb.get_or_insert_with(|| start.elapsed());
        // Only the end matters (`event: done`); keep a little of it.
        tail.extend_from_slice(&chunk);
        if tail.len() > 4096 {
            tail.drain(..tail.len() - 4096);
        }
    }
    if !String::from_utf8_lossy(&tail).contains("event: done") {
        return Err(BenchError::Http("the replay did not end with done".into()));
    }
    Ok((ttfb.unwrap_or_default(), start.elapsed()))
}

/// `n` async submissions of the trivial workload, one after the other.
async fn submits(
    client: &reqwest::Client,
    base: &str,
    n: usize,
) -> Result<Percentiles, BenchError> {
    let body: Value = serde_json::from_str(super::TRIVIAL_BODY)
        .map_err(|e| BenchError::Setup(format!("trivial body: {e}")))?;
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        let start = Instant::now();
        let res = client
            .post(format!("{base}/v1/workloads/async"))
            .json(&body)
            .send()
            .await
            .map_err(http)?;
        let status = res.status();
        let _ = res.bytes().await.map_err(http)?;
        samples.push(start.elapsed());
        if status.as_u16() != 202 {
            return Err(BenchError::Http(format!("async submit answered {status}")));
        }
    }
    percentiles("async submit", samples)
}
