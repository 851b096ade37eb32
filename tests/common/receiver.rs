//! A webhook receiver for tests: a real actix-web server on a loopback port (its own
//! thread and actix System) that records every request and answers each path from a
//! script (a queue of replies, then a fallback).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};

/// How the receiver answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Answer at once with this status.
    Status(u16),
    /// Wait, then answer with the status (a slow or hanging receiver).
    After(Duration, u16),
    /// 302 to this location (must never be followed).
    Redirect(String),
    /// 200 with a body of this many bytes, streamed (the sender must not read it).
    Huge(usize),
}

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Request path (without the query).
    pub path: String,
    /// Headers, names in lower case.
    pub headers: HashMap<String, String>,
    /// The raw body bytes.
    pub body: Vec<u8>,
    /// When it arrived.
    pub at: Instant,
}

impl Received {
    /// A header value (name in any case).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
            .unwrap_or("")
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

#[derive(Default)]
struct Shared {
    received: Mutex<Vec<Received>>,
    scripts: Mutex<HashMap<String, (VecDeque<Reply>, Reply)>>,
}

/// A running receiver.
pub struct Receiver {
    port: u16,
    shared: Arc<Shared>,
    handle: actix_web::dev::ServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

async fn record(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    let path = req.path().to_string();
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                v.to_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    shared.received.lock().expect("lock").push(Received {
        path: path.clone(),
        headers,
        body: body.to_vec(),
        at: Instant::now(),
    });
    let reply = {
        let mut scripts = shared.scripts.lock().expect("lock");
        match scripts.get_mut(&path) {
            Some((queue, fallback)) => queue.pop_front().unwrap_or_else(|| fallback.clone()),
            None => Reply::Status(200),
        }
    };
    let status = |code: u16| actix_web::http::StatusCode::from_u16(code).expect("status code");
    match reply {
        Reply::Status(code) => HttpResponse::build(status(code)).body("ok"),
        Reply::After(wait, code) => {
            actix_web::rt::time::sleep(wait).await;
            HttpResponse::build(status(code)).body("late")
        }
        Reply::Redirect(to) => HttpResponse::Found()
            .insert_header(("location", to))
            .finish(),
        Reply::Huge(bytes) => {
            let chunk = web::Bytes::from(vec![b'x'; 64 * 1024]);
            let chunks = bytes.div_ceil(chunk.len());
            let stream = futures_util::stream::iter(
                (0..chunks).map(move |_| Ok::<_, actix_web::Error>(chunk.clone())),
            );
            HttpResponse::Ok().streaming(stream)
        }
    }
}

impl Receiver {
    /// Start on `127.0.0.1:0`.
    pub async fn start() -> Receiver {
        let shared = Arc::new(Shared::default());
        let data = web::Data::from(shared.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let sys = actix_web::rt::System::new();
            sys.block_on(async move {
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(data.clone())
                        .default_service(web::to(record))
                })
                .workers(2)
                .disable_signals()
                .shutdown_timeout(1)
                .bind(("127.0.0.1", 0))
                .expect("bind receiver");
                let port = server.addrs()[0].port();
                let server = server.run();
                tx.send((port, server.handle())).expect("send port");
                let _ = server.await;
            });
        });
        let (port, handle) = tokio::task::spawn_blocking(move || rx.recv())
            .await
            .expect("join")
            .expect("receiver started");
        Receiver {
            port,
            shared,
            handle,
            thread: Some(thread),
        }
    }

    /// The receiver's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Answer requests to `path` with `replies` in order, then with `fallback`.
    pub fn script(&self, path: &str, replies: Vec<Reply>, fallback: Reply) {
        self.shared
            .scripts
            .lock()
            .expect("lock")
            .insert(path.to_string(), (replies.into(), fallback));
    }

    /// Every request to `path` so far.
    pub fn received(&self, path: &str) -> Vec<Received> {
        self.shared
            .received
            .lock()
            .expect("lock")
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Every request so far.
    pub fn all(&self) -> Vec<Received> {
        self.shared.received.lock().expect("lock").clone()
    }

    /// Wait until `path` has seen at least `n` requests (panics after `within`).
    pub async fn wait_for(&self, path: &str, n: usize, within: Duration) -> Vec<Received> {
        let start = Instant::now();
        loop {
            let got = self.received(path);
            if got.len() >= n {
                return got;
            }
            assert!(
                start.elapsed() < within,
                "{path}: {} of {n} requests after {within:?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stop the server and its thread.
    pub async fn stop(mut self) {
        self.handle.stop(false).await;
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}
