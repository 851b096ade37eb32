//! Wiring: open the store, start the actors, recover interrupted work, bind the HTTP
//! server. [`AppThread`] is the one way to boot the real app beside other work (the
//! tests' harness and `vulcan bench` both use it): its own thread and actix `System`.

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, Addr};
use actix_web::dev::Server;
use actix_web::middleware::{from_fn, Logger};
use actix_web::{web, App, HttpServer};

use crate::actors::images::ImagesActor;
use crate::actors::log_broker::{LogBroker, LogSinks};
use crate::actors::log_follower::Follower;
use crate::actors::store::{Flush, Recover, StoreActor, WatchDeliveries};
use crate::actors::supervisor::{
    InterruptAll, ListBackends, Readmit, Supervisor, SupervisorLimits,
};
use crate::actors::webhooks::{Deliverer, DeliveriesEnqueued};
use crate::api::{self, ActorRestarts, AllowedHosts, AppState, Readiness, ThisNode};
use crate::backends::gvisor::GvisorBackend;
use crate::backends::isolate::IsolateBackend;
use crate::backends::microvm::MicrovmBackend;
use crate::backends::{Backend, BackendCapabilities, BackendFactory, UnavailableBackend};
use crate::cluster::{Leave, Membership};
use crate::config::Config;
use crate::images::policy::RegistryPolicy;
use crate::images::ImageStore;
use crate::metrics::Metrics;
use crate::model::{Isolation, Runtime};
use crate::store::{Listener, LogReads};
use crate::webhooks::policy::CallbackPolicy;

/// Start-up failed.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The database could not be opened or migrated.
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The listen address could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Bind(String, std::io::Error),
    /// Metrics registration failed.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// An actor did not answer during start-up.
    #[error("actor unavailable during start-up: {0}")]
    Actor(#[from] actix::MailboxError),
    /// The webhook policy or HTTP client could not be set up.
    #[error("webhooks: {0}")]
    Webhooks(String),
    /// The registry policy of `[images]` could not be built.
    #[error("images: {0}")]
    Images(String),
    /// The thread that runs the application could not be started, or ended during
    /// start-up.
    #[error("application thread: {0}")]
    Thread(String),
}

/// A built, bound, not yet awaited server.
pub struct Application {
    port: u16,
    server: Server,
    store: Addr<StoreActor>,
    supervisor: Addr<Supervisor>,
    shutdown_timeout: Duration,
    draining: Arc<AtomicBool>,
    /// On a cluster node: its membership, to leave the cluster at shutdown.
    membership: Option<Addr<Membership>>,
}

fn factory<B: Backend>(
    caps: BackendCapabilities,
    build: impl Fn() -> Result<B, String> + Send + Sync + 'static,
) -> BackendFactory {
    Arc::new(move || match build() {
        Ok(b) => Arc::new(b) as Arc<dyn Backend>,
        Err(reason) => {
            log::error!("backend {}: could not start: {reason}", caps.name);
            Arc::new(UnavailableBackend::new(caps.clone(), reason))
        }
    })
}

/// The built-in backends enabled in `config`.
pub fn builtin_backends(config: &Config) -> Vec<BackendFactory> {
    let mut out = Vec::new();
    let b = &config.backends;
    if b.isolate.enabled {
        let cfg = config.clone();
        let caps = BackendCapabilities {
            name: "isolate".into(),
            supported_runtimes: vec![Runtime::Node, Runtime::Wasm],
            supported_isolations: vec![Isolation::Isolate],
            max_concurrency: 1,
        };
        out.push(factory(caps, move || {
            IsolateBackend::new(&cfg).map_err(|e| e.to_string())
        }));
    }
    if b.gvisor.enabled {
        let cfg = b.gvisor.clone();
        let images = open_images(config);
        let caps = BackendCapabilities {
            name: "gvisor".into(),
            supported_runtimes: vec![],
            supported_isolations: vec![Isolation::Gvisor],
            max_concurrency: 1,
        };
        out.push(factory(caps, move || {
            GvisorBackend::with_images(&cfg, images.clone()).map_err(|e| e.to_string())
        }));
    }
    if b.microvm.enabled {
        let cfg = b.microvm.clone();
        let caps = BackendCapabilities {
            name: "microvm".into(),
            supported_runtimes: vec![],
            supported_isolations: vec![Isolation::Microvm],
            max_concurrency: 1,
        };
        out.push(factory(caps, move || {
            MicrovmBackend::new(&cfg).map_err(|e| e.to_string())
        }));
    }
    out
}

/// The image store of `config` (the one instance for its directory), or `None` with
/// the reason logged: then `oci` workloads are not offered.
fn open_images(config: &Config) -> Option<ImageStore> {
    match ImageStore::open(&config.images) {
        Ok(store) => Some(store),
        Err(e) => {
            log::error!("images: {e}; oci workloads are not available");
            None
        }
    }
}

impl Application {
    /// Build the server with the built-in backends enabled in `config`.
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let backends = builtin_backends(&config);
        Self::build_with(config, backends).await
    }

    /// Build the server with exactly `backends` registered. Must run inside an actix
    /// `System`. Binds `config.listen_addr` (port 0 picks a free port).
    pub async fn build_with(
        config: Config,
        backends: Vec<BackendFactory>,
    ) -> Result<Self, StartupError> {
        let metrics = Arc::new(Metrics::new()?);
        let image_store = open_images(&config);
        if let Some(store) = &image_store {
            metrics.register_all(store.metrics().collectors())?;
        }
        let images = ImagesActor::new(image_store).start();
        let database = config.database()?;
        // The URL's password never shows (see `Database`'s Display).
        log::info!("store: {database}");
        let store = StoreActor::open(
            &database,
            config.store.read_pool_size,
            config.store.max_batch,
            metrics.clone(),
        )?
        .group_commit(Duration::from_micros(config.store.group_commit_us))
        .background_checkpoints(
            &database,
            Duration::from_millis(config.store.checkpoint_interval_ms),
            config.store.wal_max_mb.saturating_mul(1024 * 1024),
        )
        .sweep_idempotency_keys(Duration::from_secs(config.idempotency_ttl_s));
        let log_reads = LogReads::start(&database, config.logs.read_threads)?;
        metrics.register_all(log_reads.collectors())?;
        let store = store.log_reads(log_reads);
        let store = match config.retention.max_age_s {
            0 => store,
            age => store.retention(
                Duration::from_secs(age),
                Duration::from_secs(config.retention.sweep_interval_s),
            ),
        };
        let cluster = database.is_shared().then(|| config.cluster.clone());
        let store = match &cluster {
            Some(c) => {
                store.cluster_node(config.node_id(), Duration::from_millis(c.stats_max_age_ms))
            }
            None => store,
        };
        let store_health = store.health();
        let store = store.start();
        // Watching before any status can change, so no enqueued delivery goes unnoticed.
        let callbacks = CallbackPolicy::new(&config.webhooks).map_err(StartupError::Webhooks)?;
        let registries = RegistryPolicy::new(&config.images).map_err(StartupError::Images)?;
        let deliverer = Deliverer::new(store.clone(), metrics.clone(), &config.webhooks)
            .map_err(StartupError::Webhooks)?
            .start();
        store.do_send(WatchDeliveries(deliverer.clone().recipient()));
        let broker = LogBroker::new(store.clone(), config.logs.clone(), metrics.clone());
        let restarts = ActorRestarts {
            store: store_health.restarts(),
            broker: broker.restarts(),
        };
        let broker = broker.start();
        // On a shared database only: one LISTEN connection per node (none otherwise).
        let follower = if database.is_shared() {
            let listener = Listener::start(
                &database,
                Duration::from_millis(config.cluster.listen_poll_ms),
            )?;
            Some(Follower::new(
                listener,
                store.clone(),
                config.node_id(),
                Duration::from_secs(config.cluster.recheck_s),
                metrics.clone(),
            ))
        } else {
            None
        };
        let supervisor = Supervisor::new(
            store.clone(),
            LogSinks::new(broker.clone(), config.logs.clone(), metrics.clone()),
            metrics.clone(),
            config.node_id(),
            SupervisorLimits {
                max_queue: config.max_queue,
                max_queue_bytes: config.max_queue_bytes,
                queue_bounds: config.backends.queue_bounds(),
                max_output_bytes: config.max_output_bytes,
            },
            backends,
        );
        let supervisor = match &cluster {
            Some(c) => supervisor.shared_queue(Duration::from_millis(c.poll_ms)),
            None => supervisor,
        };
        let supervisor = match &follower {
            Some(f) => supervisor.cluster(
                f.clone(),
                Duration::from_secs(config.cluster.kill_timeout_s),
            ),
            None => supervisor,
        }
        .start();

        // A cluster node registers before recovery: registering puts the work it had
        // claimed and not started back in the shared queue (it would be fenced now),
        // so recovery only finds its interrupted running work.
        let membership = match &cluster {
            Some(c) => {
                let (membership, generation) =
                    Membership::join(store.clone(), supervisor.clone(), c).await?;
                log::info!(
                    "cluster: registered as node {} (generation {generation})",
                    config.node_id()
                );
                Some(membership)
            }
            None => None,
        };
        let only_node = database.is_shared().then(|| config.node_id());
        let recovered = store.send(Recover(only_node)).await??;
        for w in &recovered.interrupted {
            log::warn!(
                "workload {}: running -> failed (interrupted by server restart)",
                w.id
            );
        }
        // Recovery may have finished workloads with a callback_url.
        deliverer.do_send(DeliveriesEnqueued);
        let readmitted = recovered.pending.len();
        for work in recovered.pending {
            supervisor.do_send(Readmit(work));
        }
        if readmitted > 0 || !recovered.interrupted.is_empty() {
            log::info!(
                "recovery: {} interrupted workload(s) marked failed, {readmitted} pending re-admitted",
                recovered.interrupted.len()
            );
        }

        let membership = membership.map(Actor::start);

        let draining = Arc::new(AtomicBool::new(false));
        let readiness = Readiness {
            store: store_health,
            draining: draining.clone(),
        };
        let state = web::Data::new(AppState {
            supervisor: supervisor.clone(),
            store: store.clone(),
            broker,
            images,
            metrics,
            limits: config.limits(),
            callbacks,
            registries,
            token: config.api_token().cloned(),
            allowed_hosts: AllowedHosts::new(&config.allowed_hosts),
            idempotency_ttl: Duration::from_secs(config.idempotency_ttl_s),
            keepalive: Duration::from_secs(config.logs.keepalive_s.max(1)),
            max_body_bytes: config.max_body_bytes,
            readiness,
            restarts,
            node: ThisNode {
                node_id: config.node_id(),
                started_at: chrono::Utc::now(),
                cluster: cluster.is_some(),
            },
            follower,
        });
        if state.token.is_some() {
            log::info!("auth: bearer token required on /v1/*");
        }
        if state.callbacks.enabled() {
            log::info!(
                "webhooks: on for {} host pattern(s)",
                config.webhooks.allowed_hosts.len()
            );
        }
        let listener = TcpListener::bind(&config.listen_addr)
            .map_err(|e| StartupError::Bind(config.listen_addr.clone(), e))?;
        let local = listener
            .local_addr()
            .map_err(|e| StartupError::Bind(config.listen_addr.clone(), e))?;
        let port = local.port();
        if state.token.is_none() && !local.ip().is_loopback() {
            log::warn!(
                "listening on {local}, which is not a loopback address, without an API token: \
                 anyone who can reach it can run code here; set api_token \
                 (VULCAN_API_TOKEN) or listen on 127.0.0.1"
            );
        }
        let shutdown_timeout = Duration::from_secs(config.shutdown_timeout_s);
        let cors = config.cors.clone();
        let server = HttpServer::new(move || {
            App::new()
                .wrap(api::cors(&cors))
                .wrap(from_fn(api::cors_errors))
                .wrap(from_fn(api::track))
                .wrap(Logger::new("%a \"%r\" %s %b %Dms"))
                .configure(|cfg| api::configure(cfg, state.clone()))
        })
        .shutdown_timeout(config.shutdown_timeout_s)
        // Answers and SSE events are written whole, each in one write: Nagle's algorithm
        // would only hold a small one (a live log line) back until the client's delayed
        // ACK, tens of milliseconds.
        .tcp_nodelay(true)
        // A client that closes its side is gone: drop its response (an SSE stream
        // frees its subscription at once instead of at the next failed write).
        .h1_allow_half_closed(false)
        // Signals are handled in `run_until_stopped`: workloads first, then the server.
        .disable_signals()
        .listen(listener)
        .map_err(|e| StartupError::Bind(config.listen_addr.clone(), e))?
        .run();
        log::info!("listening on {}:{port}", listener_host(&config.listen_addr));
        Ok(Self {
            port,
            server,
            store,
            supervisor,
            shutdown_timeout,
            draining,
            membership,
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A handle to stop the server from elsewhere (tests, signals).
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Serve until SIGTERM/SIGINT (or a handle stops it), then shut down gracefully.
    ///
    /// On a signal, running workloads are stopped first (recorded as failed,
    /// "interrupted by server shutdown"), so their SSE streams end with `done` and
    /// close; then the server stops accepting and drains; then the store is flushed.
    /// Pending workloads stay pending for the next start.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let handle = self.server.handle();
        let deadline = Instant::now() + self.shutdown_timeout;
        let mut server = self.server;
        tokio::select! {
            res = &mut server => {
                self.draining.store(true, Ordering::SeqCst);
                res?;
                log::info!("server stopped: stopping running workloads, flushing the store");
                stop_running_workloads(&self.supervisor, Instant::now() + self.shutdown_timeout).await;
            }
            signal = shutdown_signal() => {
                self.draining.store(true, Ordering::SeqCst);
                log::info!("{signal} received: stopping running workloads, then the server");
                stop_running_workloads(&self.supervisor, deadline).await;
                // The server future drives its own shutdown: poll it while stopping.
                let (_, res) = tokio::join!(handle.stop(true), &mut server);
                res?;
            }
        }
        if let Some(m) = &self.membership {
            // Running work is recorded by now (under this node's generation).
            match actix_web::rt::time::timeout(Duration::from_secs(5), m.send(Leave)).await {
                Ok(Ok(Ok(n))) => log::info!("cluster: left; {n} unstarted workload(s) re-queued"),
                _ => log::warn!("cluster: could not leave; survivors will declare this node lost"),
            }
        }
        match actix_web::rt::time::timeout(
            deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(1),
            self.store.send(Flush),
        )
        .await
        {
            Ok(Ok(Ok(()))) => log::info!("store flushed; bye"),
            _ => log::error!("store flush did not complete before the shutdown deadline"),
        }
        Ok(())
    }
}

/// Resolves with the signal's name on SIGTERM or SIGINT.
async fn shutdown_signal() -> &'static str {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot listen for SIGTERM: {e}");
            return match tokio::signal::ctrl_c().await {
                Ok(()) => "SIGINT",
                Err(_) => std::future::pending().await,
            };
        }
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        res = tokio::signal::ctrl_c() => match res {
            Ok(()) => "SIGINT",
            Err(_) => std::future::pending().await,
        },
    }
}

/// Interrupt every running workload and wait (until `deadline`) for their executions
/// to end and their terminal status to be recorded.
async fn stop_running_workloads(supervisor: &Addr<Supervisor>, deadline: Instant) {
    let Ok(n) = supervisor
        .send(InterruptAll("interrupted by server shutdown".into()))
        .await
    else {
        return;
    };
    if n == 0 {
        return;
    }
    while Instant::now() < deadline {
        let busy = match supervisor.send(ListBackends).await {
            Ok(list) => list.iter().any(|b| b.running > 0),
            Err(_) => false,
        };
        if !busy {
            break;
        }
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
}

fn listener_host(addr: &str) -> &str {
    addr.rsplit_once(':').map_or(addr, |(h, _)| h)
}

/// The application running on its own thread and actix `System` (so a caller on a plain
/// thread or another runtime can talk to it over HTTP). Dropping it leaves the server
/// running until the process ends; [`AppThread::stop`] and [`AppThread::crash`] end it.
pub struct AppThread {
    port: u16,
    handle: actix_web::dev::ServerHandle,
    system: actix::System,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AppThread {
    /// Build the application with exactly `backends` on a new thread and return once it
    /// listens (on `config.listen_addr`; port 0 picks a free port). Blocks the caller for
    /// the start-up: from async code, call it through `spawn_blocking`.
    pub fn spawn(config: Config, backends: Vec<BackendFactory>) -> Result<Self, StartupError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("vulcan-app".into())
            .spawn(move || {
                let sys = actix_web::rt::System::new();
                let started = sys.block_on(async move {
                    match Application::build_with(config, backends).await {
                        Ok(app) => {
                            let _ =
                                tx.send(Ok((app.port(), app.handle(), actix::System::current())));
                            // Graceful path: when the server stops, shutdown work runs,
                            // then the system ends. `crash` stops the system without it.
                            actix_web::rt::spawn(async move {
                                if let Err(e) = app.run_until_stopped().await {
                                    log::error!("application: {e}");
                                }
                                actix::System::current().stop();
                            });
                            true
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            false
                        }
                    }
                });
                if started {
                    let _ = sys.run();
                }
            })
            .map_err(|e| StartupError::Thread(e.to_string()))?;
        let (port, handle, system) = rx
            .recv()
            .map_err(|_| StartupError::Thread("it exited during start-up".into()))??;
        Ok(Self {
            port,
            handle,
            system,
            thread: Some(thread),
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A handle to stop the server (graceful: as on SIGTERM).
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.handle.clone()
    }

    /// Graceful stop (running work interrupted, the store flushed), waiting for the
    /// thread to end. Blocks: from async code, call it through `spawn_blocking`.
    pub fn stop(mut self) -> std::thread::Result<()> {
        let handle = self.handle.clone();
        self.system.arbiter().spawn(async move {
            handle.stop(true).await;
        });
        self.join()
    }

    /// Abrupt stop: the actor system is torn down without any shutdown work, as in a
    /// crash. Blocks until the thread ended.
    pub fn crash(mut self) -> std::thread::Result<()> {
        self.system.stop();
        self.join()
    }

    /// Wait for the thread to end (after the server was stopped through
    /// [`AppThread::handle`]).
    pub fn join(&mut self) -> std::thread::Result<()> {
        match self.thread.take() {
            Some(t) => t.join(),
            None => Ok(()),
        }
    }
}
