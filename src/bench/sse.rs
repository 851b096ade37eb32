//! `vulcan bench`, SSE section: fan-out latency from one workload to many subscribers.
//!
//! A purpose-built backend prints `lines` lines `interval` apart, each carrying the
//! time it was printed (`t=<ns>`, `CLOCK_MONOTONIC`). The subscribers run in child
//! processes of the bench (`vulcan bench-sse-client`, this executable re-executed), so
//! that the server's side is what is measured: the clients' parsing neither shares the
//! server's process nor queues behind one client thread. Every child follows its share
//! of the subscribers with reqwest and eventsource-stream on a current-thread runtime,
//! like the tests and the CLI.
//!
//! Latency, per subscriber per line, two ways. Parsed: the backend reads
//! `CLOCK_MONOTONIC` just before it hands the line to the workload's log sink (the moment
//! a guest's `console.log` would); the subscriber reads it again right after
//! eventsource-stream yields the parsed event. The clock is system-wide, so stamps from
//! two processes compare. At the socket: the backend also reads `CLOCK_REALTIME`, and
//! the subscriber's socket has `SO_TIMESTAMPNS` on, so each read says when the kernel
//! received the newest bytes it returned (`CLOCK_REALTIME`; on loopback, during the
//! server's `send`): the server's share of the latency, without the time the event then
//! waited for the subscriber's own process on the shared cores. A read that returns
//! several events stamps them all with its newest bytes' time, so the socket figure
//! errs high, never low. Only one subscriber in [`STAMP_EVERY`] reads with timestamps:
//! `recvmsg` with its control message costs the subscriber more CPU than a plain read,
//! and on cores the server shares that alone made the parsed latency worse (p50 10.8–18.1
//! against 5.8–11.7 ms with every subscriber stamped, quiet machine).
//!
//! Subscribers speak HTTP/1.1 through hyper's connection-level client over that socket
//! and parse with eventsource-stream. Each child also reports the CPU it spent between
//! "all connected" and "all streams ended", the server's process the CPU it spent
//! meanwhile: the report shows both.

use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Read as _};
use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::pin::Pin;
use std::process::{Child, ChildStdout, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use http_body_util::BodyExt as _;
use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags};
use nix::time::{clock_gettime, ClockId};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use vulcan::backends::{
    Backend, BackendCapabilities, BackendError, BackendFactory, BackendHealth, ExecContext,
    WorkloadResult, WorkloadSpec,
};
use vulcan::model::{Isolation, Runtime, WorkloadId};

use super::{
    block_on, io_err, json, ms, one_connection, percentiles, raise_fd_limit, BenchError,
    BenchOptions, Percentiles,
};

/// Target: SSE p99 at most this with 1,000 subscribers.
pub(super) const TARGET_P99: Duration = Duration::from_millis(5);

/// Nanoseconds of `clock`.
fn clock_ns(clock: ClockId) -> Result<u64, String> {
    let t = clock_gettime(clock).map_err(|e| format!("clock_gettime: {e}"))?;
    Ok((t.tv_sec() as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec() as u64))
}

/// `CLOCK_MONOTONIC` in nanoseconds: the same clock in every process of the host.
fn now_ns() -> Result<u64, String> {
    clock_ns(ClockId::CLOCK_MONOTONIC)
}

/// One subscriber in this many has its socket's receive times read (module doc).
const STAMP_EVERY: usize = 10;

/// `CLOCK_REALTIME` in nanoseconds: the clock of the kernel's receive timestamps.
fn wall_ns() -> Result<u64, String> {
    clock_ns(ClockId::CLOCK_REALTIME)
}

/// CPU time this process has used, in nanoseconds (every thread).
fn cpu_ns() -> Result<u64, String> {
    clock_ns(ClockId::CLOCK_PROCESS_CPUTIME_ID)
}

/// SSE fan-out figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseFigures {
    /// Concurrent subscribers.
    pub subscribers: usize,
    /// Child processes they were spread over.
    pub client_processes: usize,
    /// Lines the workload emitted.
    pub lines_sent: usize,
    /// Pause between two emitted lines.
    pub interval: Duration,
    /// Fewest lines any subscriber received.
    pub min_received: usize,
    /// Most lines any subscriber received.
    pub max_received: usize,
    /// Line printed → event parsed by the subscriber, over every line of every
    /// subscriber.
    pub latency: Percentiles,
    /// Line printed → its bytes received by the subscriber's socket (the server's share:
    /// see the module doc), over every line of one subscriber in [`STAMP_EVERY`].
    pub socket_latency: Percentiles,
    /// Release of the workload → the last stream ended.
    pub window: Duration,
    /// CPU the server's process (the bench's, whose other threads wait) used meanwhile.
    pub server_cpu: Duration,
    /// CPU the client processes used meanwhile, together.
    pub client_cpu: Duration,
}

impl SseFigures {
    /// Whether the p99 target holds with every subscriber receiving every line.
    pub fn target_met(&self) -> bool {
        self.latency.p99 <= TARGET_P99
            && self.min_received == self.lines_sent
            && self.max_received == self.lines_sent
    }

    /// The section as Markdown.
    pub fn markdown(&self, s: &mut String) {
        let e = self;
        let _ = writeln!(s, "\n## SSE fan-out\n");
        let _ = writeln!(
            s,
            "{} subscribers ({} client processes) on one workload emitting {} lines every \
             {} ms; latency per subscriber per line = when the backend prints the line → when \
             the subscriber's eventsource-stream yields the event (parsed; the target's \
             figure) and → when the subscriber's kernel received its bytes (at the socket, \
             `SO_TIMESTAMPNS`, one subscriber in {}: the server's share, without the \
             subscribers' own queueing on the shared cores).\n",
            e.subscribers,
            e.client_processes,
            e.lines_sent,
            ms(e.interval),
            STAMP_EVERY
        );
        let _ = writeln!(
            s,
            "| samples | p50 ms | p99 ms | at the socket: p50 ms | p99 ms | lines per \
             subscriber (min / max / sent) | server CPU (cores) | clients CPU (cores) | \
             clients' share | server CPU per event µs |\n\
             |---|---|---|---|---|---|---|---|---|---|"
        );
        let window = e.window.as_secs_f64().max(f64::EPSILON);
        let (server, client) = (e.server_cpu.as_secs_f64(), e.client_cpu.as_secs_f64());
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} / {} / {} | {:.2} | {:.2} | {:.0} % | {:.1} |",
            e.latency.samples,
            ms(e.latency.p50),
            ms(e.latency.p99),
            ms(e.socket_latency.p50),
            ms(e.socket_latency.p99),
            e.min_received,
            e.max_received,
            e.lines_sent,
            server / window,
            client / window,
            100.0 * client / (server + client).max(f64::EPSILON),
            1e6 * server / (e.latency.samples.max(1) as f64)
        );
    }
}

/// What the SSE section needs, for a whole run and for the section alone: an open-file
/// limit for the server's side of the subscriptions, and its backend, whose workloads
/// wait for `true` on the returned sender before they print.
pub(super) fn setup(opts: &BenchOptions) -> (watch::Sender<bool>, BackendFactory) {
    let fd_want = (opts.sse_subscribers as u64) + 256;
    if let Err(e) = raise_fd_limit(fd_want) {
        log::warn!("could not raise the open-file limit to {fd_want}: {e}");
    }
    let (go_tx, go_rx) = watch::channel(false);
    let backend: BackendFactory = {
        let lines = opts.sse_lines;
        let interval = opts.sse_interval;
        Arc::new(move || {
            Arc::new(SseBenchBackend {
                lines,
                interval,
                go: go_rx.clone(),
            }) as Arc<dyn Backend>
        })
    };
    (go_tx, backend)
}

/// A backend for the SSE section only: once released through `go`, emits `lines` log
/// lines `interval` apart, each `t=<CLOCK_MONOTONIC ns> r=<CLOCK_REALTIME ns>`.
///
/// Registered as the only `microvm`/`python` backend of the bench server (the real
/// micro-VM backend is disabled there), so an explicit `isolation: microvm` routes to it.
struct SseBenchBackend {
    lines: usize,
    interval: Duration,
    go: watch::Receiver<bool>,
}

impl Backend for SseBenchBackend {
    fn capabilities(&self) -> BackendCapabilities {
        BackendCapabilities {
            name: "bench-sse".into(),
            supported_runtimes: vec![Runtime::Python],
            supported_isolations: vec![Isolation::Microvm],
            max_concurrency: 1,
        }
    }

    fn health(&self) -> BackendHealth {
        BackendHealth::Healthy
    }

    fn execute(
        &self,
        _spec: WorkloadSpec,
        ctx: ExecContext,
    ) -> BoxFuture<'static, Result<WorkloadResult, BackendError>> {
        let (lines, interval) = (self.lines, self.interval);
        let mut go = self.go.clone();
        Box::pin(async move {
            let started = Instant::now();
            let emit = async {
                go.wait_for(|released| *released)
                    .await
                    .map_err(|_| BackendError::Internal("the benchmark went away".into()))?;
                let mut tick = tokio::time::interval(interval);
                for _ in 0..lines {
                    tick.tick().await;
                    let stamps = now_ns().and_then(|t| Ok((t, wall_ns()?)));
                    let (t, r) = stamps.map_err(BackendError::Internal)?;
                    ctx.log.line(format!("t={t} r={r}"));
                }
                Ok::<(), BackendError>(())
            };
            tokio::select! {
                r = emit => r?,
                _ = ctx.cancel.cancelled() => return Err(BackendError::Cancelled),
            }
            Ok(WorkloadResult {
                exit_code: Some(0),
                output: format!("{{\"lines\":{lines}}}").into_bytes(),
                error: None,
                duration_ms: started.elapsed().as_millis() as u64,
            })
        })
    }

    fn cleanup(&self, _id: WorkloadId) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

/// The hidden `vulcan bench-sse-client` subcommand: one child process of the SSE
/// section.
#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// The event stream every subscriber follows.
    #[arg(long)]
    url: String,
    /// Subscribers in this process.
    #[arg(long)]
    subscribers: usize,
    /// Give up on a subscriber after this many milliseconds.
    #[arg(long)]
    budget_ms: u64,
}

/// One line's latencies at one subscriber (ns): parsed, and at the socket when the
/// subscriber is stamped.
type LineLatency = (u64, Option<u64>);

/// What a client process says on stdout, one line each: [`ClientReport::Connected`]
/// once every subscriber is connected (or failed), [`ClientReport::Ended`] once every
/// stream ended, then [`ClientReport::Samples`].
#[derive(Debug, Serialize, Deserialize)]
enum ClientReport {
    /// Subscribers answered 200 (the server has subscribed them), and failures.
    Connected { ok: usize, failed: usize },
    /// Every stream ended: the CPU this process spent since `Connected`.
    Ended { cpu_ns: u64 },
    /// Per subscriber, the latencies of each line it received (ns: parsed, and at the
    /// socket for a stamped subscriber), or why it failed.
    Samples(Vec<Result<Vec<LineLatency>, String>>),
}

fn say(report: &ClientReport) -> Result<(), String> {
    use std::io::Write as _;
    let line = serde_json::to_string(report).map_err(|e| e.to_string())?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| format!("stdout: {e}"))
}

/// `vulcan bench-sse-client`: follow `url` with `subscribers` subscribers and report
/// as [`ClientReport`] lines.
pub fn client_main(args: ClientArgs) -> ExitCode {
    match client(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vulcan bench-sse-client: {e}");
            ExitCode::FAILURE
        }
    }
}

fn client(args: ClientArgs) -> Result<(), String> {
    let n = args.subscribers.max(1);
    raise_fd_limit(n as u64 + 64).map_err(|e| format!("open-file limit: {e}"))?;
    let budget = Duration::from_millis(args.budget_ms);
    let url: http::Uri = args.url.parse().map_err(|e| format!("{}: {e}", args.url))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(async move {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<bool>();
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let (url, tx) = (url.clone(), tx.clone());
                let stamped = i % STAMP_EVERY == 0;
                tokio::spawn(async move {
                    let res = match tokio::time::timeout(budget, connect(&url, stamped)).await {
                        Ok(Ok(res)) => res,
                        Ok(Err(e)) => {
                            let _ = tx.send(false);
                            return Err(e);
                        }
                        Err(_) => {
                            let _ = tx.send(false);
                            return Err("SSE connect timed out".into());
                        }
                    };
                    let _ = tx.send(true);
                    tokio::time::timeout(budget, follow(res))
                        .await
                        .unwrap_or_else(|_| Err("SSE subscriber timed out".into()))
                })
            })
            .collect();
        drop(tx);
        let (mut ok, mut failed) = (0, 0);
        while ok + failed < n {
            match rx.recv().await {
                Some(true) => ok += 1,
                Some(false) => failed += 1,
                None => break,
            }
        }
        say(&ClientReport::Connected { ok, failed })?;
        let cpu_from = cpu_ns()?;
        let mut samples = Vec::with_capacity(n);
        for t in tasks {
            samples.push(t.await.unwrap_or_else(|e| Err(format!("SSE task: {e}"))));
        }
        say(&ClientReport::Ended {
            cpu_ns: cpu_ns()?.saturating_sub(cpu_from),
        })?;
        say(&ClientReport::Samples(samples))
    })
}

/// Most bytes one read of a subscriber's socket asks for.
const READ_CHUNK: usize = 8 * 1024;

/// A subscriber's socket that, when `stamped`, remembers when the kernel received the
/// newest bytes read from it (`SO_TIMESTAMPNS`: `CLOCK_REALTIME` ns, 0 before the first
/// read); otherwise a plain socket.
struct StampedStream {
    io: tokio::net::TcpStream,
    stamped: bool,
    last_rx_ns: Arc<AtomicU64>,
}

impl tokio::io::AsyncRead for StampedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.stamped {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        loop {
            ready!(this.io.poll_read_ready(cx))?;
            let fd = this.io.as_raw_fd();
            // Zeroed before each read (a fresh `ReadBuf` every call), so only a slice
            // the size of a busy read: zeroing hyper's whole buffer cost more than the read.
            let into = buf.initialize_unfilled_to(buf.remaining().min(READ_CHUNK));
            let read = this.io.try_io(tokio::io::Interest::READABLE, || {
                let mut iov = [std::io::IoSliceMut::new(&mut *into)];
                let mut space = nix::cmsg_space!(nix::sys::time::TimeSpec);
                let msg = recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::empty())?;
                let mut stamp = None;
                for c in msg.cmsgs()? {
                    if let ControlMessageOwned::ScmTimestampns(ts) = c {
                        stamp = Some(
                            (ts.tv_sec() as u64)
                                .saturating_mul(1_000_000_000)
                                .saturating_add(ts.tv_nsec() as u64),
                        );
                    }
                }
                Ok((msg.bytes, stamp))
            });
            match read {
                Ok((n, stamp)) => {
                    if let Some(ns) = stamp {
                        this.last_rx_ns.store(ns, Ordering::Relaxed);
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl tokio::io::AsyncWrite for StampedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A subscribed stream: the response body, and its socket's newest receive time when
/// stamped.
struct Subscription {
    body: hyper::body::Incoming,
    last_rx_ns: Option<Arc<AtomicU64>>,
}

/// Connect one subscriber (`stamped`: read its socket's receive times): once the headers
/// came, the broker has subscribed it.
async fn connect(url: &http::Uri, stamped: bool) -> Result<Subscription, String> {
    let authority = url
        .authority()
        .ok_or_else(|| format!("{url}: no host"))?
        .clone();
    let io = tokio::net::TcpStream::connect(authority.as_str())
        .await
        .map_err(|e| format!("SSE connect: {e}"))?;
    io.set_nodelay(true)
        .map_err(|e| format!("SSE connect: {e}"))?;
    if stamped {
        setsockopt(&io, sockopt::ReceiveTimestampns, &true)
            .map_err(|e| format!("SO_TIMESTAMPNS: {e}"))?;
    }
    let last_rx_ns = Arc::new(AtomicU64::new(0));
    let stream = StampedStream {
        io,
        stamped,
        last_rx_ns: last_rx_ns.clone(),
    };
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("SSE connect: {e}"))?;
    tokio::spawn(conn);
    let req = http::Request::get(url.clone())
        .header(http::header::HOST, authority.as_str())
        .header(http::header::ACCEPT, "text/event-stream")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| format!("SSE request: {e}"))?;
    let res = send
        .send_request(req)
        .await
        .map_err(|e| format!("SSE connect: {e}"))?;
    if res.status() != http::StatusCode::OK {
        return Err(format!("SSE answer: {}", res.status()));
    }
    Ok(Subscription {
        body: res.into_body(),
        last_rx_ns: stamped.then_some(last_rx_ns),
    })
}

/// Read `t=<ns> r=<ns>` events until `done` or the end of the stream: each one's
/// latencies (parsed, and at the socket when stamped).
async fn follow(sub: Subscription) -> Result<Vec<LineLatency>, String> {
    let mut events = sub.body.into_data_stream().eventsource();
    let mut latencies = Vec::new();
    while let Some(event) = events.next().await {
        let event = event.map_err(|e| format!("SSE read: {e}"))?;
        let now = now_ns()?;
        let received = sub.last_rx_ns.as_ref().map(|r| r.load(Ordering::Relaxed));
        if event.event == "done" {
            break;
        }
        let stamp = |key: &str| {
            event
                .data
                .split_ascii_whitespace()
                .find_map(|kv| kv.strip_prefix(key))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| format!("bad SSE stamps {:?}", event.data))
        };
        if event.data.starts_with("t=") {
            let parsed = now.saturating_sub(stamp("t=")?);
            let at_socket = match received {
                None => None,
                Some(0) => return Err("a read without its SO_TIMESTAMPNS stamp".into()),
                Some(rx) => Some(rx.saturating_sub(stamp("r=")?)),
            };
            latencies.push((parsed, at_socket));
        }
    }
    Ok(latencies)
}

/// A client process and its report lines.
struct ClientProcess {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl ClientProcess {
    fn spawn(
        exe: &std::path::Path,
        url: &str,
        subscribers: usize,
        budget: Duration,
    ) -> Result<Self, BenchError> {
        let mut child = Command::new(exe)
            .arg("bench-sse-client")
            .arg("--url")
            .arg(url)
            .arg("--subscribers")
            .arg(subscribers.to_string())
            .arg("--budget-ms")
            .arg(budget.as_millis().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(io_err(format!("starting {}", exe.display())))?;
        let out = child
            .stdout
            .take()
            .ok_or_else(|| BenchError::Setup("SSE client without stdout".into()))?;
        Ok(Self {
            child,
            out: BufReader::new(out),
        })
    }

    fn next(&mut self) -> Result<ClientReport, BenchError> {
        let mut line = String::new();
        self.out
            .read_line(&mut line)
            .map_err(io_err("reading an SSE client's report"))?;
        if line.is_empty() {
            return Err(BenchError::Setup(
                "an SSE client process ended without reporting (see its stderr)".into(),
            ));
        }
        serde_json::from_str(&line)
            .map_err(|e| BenchError::Setup(format!("an SSE client's report: {e}")))
    }

    /// The last report, then the process's exit.
    fn finish(mut self) -> Result<ClientReport, BenchError> {
        let mut rest = String::new();
        self.out
            .read_to_string(&mut rest)
            .map_err(io_err("reading an SSE client's samples"))?;
        let status = self
            .child
            .wait()
            .map_err(io_err("waiting for an SSE client"))?;
        if !status.success() {
            return Err(BenchError::Setup(format!("an SSE client process {status}")));
        }
        serde_json::from_str(rest.trim())
            .map_err(|e| BenchError::Setup(format!("an SSE client's samples: {e}")))
    }
}

impl Drop for ClientProcess {
    fn drop(&mut self) {
        // Only when the section failed half-way: a child still running is stopped.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Submit the SSE workload, connect the subscribers in their processes, release the
/// workload and collect what every subscriber saw.
pub(super) fn latency(
    opts: &BenchOptions,
    addr: SocketAddr,
    go: &watch::Sender<bool>,
) -> Result<SseFigures, BenchError> {
    let n = opts.sse_subscribers.max(1);
    let procs = opts.sse_client_processes.clamp(1, n);
    let body = r#"{"runtime":"python","isolation":"microvm","code":"bench","resources":{"timeout_s":900}}"#;
    let w = block_on(async move {
        let client = one_connection()?;
        json(
            client
                .post(format!("http://{addr}/v1/workloads/async"))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body),
            "async submit",
            202,
        )
        .await
    })??;
    let id = w["id"]
        .as_str()
        .ok_or_else(|| BenchError::Http(format!("async submit without id: {w}")))?
        .to_string();
    let url = format!("http://{addr}/v1/workloads/{id}/logs");
    let exe = match &opts.worker_path {
        Some(p) => p.clone(),
        None => std::env::current_exe().map_err(io_err("locating the vulcan executable"))?,
    };
    let emit_time = opts.sse_interval * opts.sse_lines as u32;
    let budget = Duration::from_secs(120) + emit_time * 4;

    let mut clients = Vec::with_capacity(procs);
    for i in 0..procs {
        // The first `n % procs` processes take one subscriber more.
        let share = n / procs + usize::from(i < n % procs);
        clients.push(ClientProcess::spawn(&exe, &url, share, budget)?);
    }
    let mut ready = 0;
    for c in &mut clients {
        match c.next()? {
            ClientReport::Connected { ok, .. } => ready += ok,
            other => {
                return Err(BenchError::Setup(format!(
                    "an SSE client said {other:?} before connecting"
                )))
            }
        }
    }
    if ready < n {
        return Err(BenchError::Timeout(format!(
            "only {ready} of {n} SSE subscribers connected"
        )));
    }
    log::info!("{ready} subscribers connected in {procs} processes; releasing the workload");
    let (start, server_from) = (Instant::now(), cpu_ns().map_err(BenchError::Setup)?);
    let _ = go.send(true);
    let mut client_cpu = 0;
    for c in &mut clients {
        match c.next()? {
            ClientReport::Ended { cpu_ns } => client_cpu += cpu_ns,
            other => {
                return Err(BenchError::Setup(format!(
                    "an SSE client said {other:?} instead of its end"
                )))
            }
        }
    }
    let window = start.elapsed();
    let server_cpu = cpu_ns()
        .map_err(BenchError::Setup)?
        .saturating_sub(server_from);
    let mut counts = Vec::with_capacity(n);
    let mut all = Vec::with_capacity(n * opts.sse_lines);
    let mut at_socket = Vec::with_capacity(n * opts.sse_lines);
    for c in clients {
        let ClientReport::Samples(subs) = c.finish()? else {
            return Err(BenchError::Setup("an SSE client sent no samples".into()));
        };
        for sub in subs {
            let lat = sub.map_err(BenchError::Http)?;
            counts.push(lat.len());
            for (parsed, socket) in lat {
                all.push(Duration::from_nanos(parsed));
                at_socket.extend(socket.map(Duration::from_nanos));
            }
        }
    }
    Ok(SseFigures {
        subscribers: n,
        client_processes: procs,
        lines_sent: opts.sse_lines,
        interval: opts.sse_interval,
        min_received: counts.iter().copied().min().unwrap_or(0),
        max_received: counts.iter().copied().max().unwrap_or(0),
        latency: percentiles("SSE latency", all)?,
        socket_latency: percentiles("SSE latency at the socket", at_socket)?,
        window,
        server_cpu: Duration::from_nanos(server_cpu),
        client_cpu: Duration::from_nanos(client_cpu),
    })
}
