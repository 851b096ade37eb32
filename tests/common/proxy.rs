//! A TCP proxy a test controls, standing for the network between a node and its
//! database: [`CutProxy::cut`] closes every open connection and refuses new ones, as a
//! partition would; [`CutProxy::restore`] lets connections through again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

#[derive(Default)]
struct Inner {
    cut: AtomicBool,
    open: Mutex<Vec<AbortHandle>>,
}

/// A proxy on a free loopback port, forwarding to one target.
pub struct CutProxy {
    /// `127.0.0.1:<port>` to connect to instead of the target.
    pub addr: String,
    inner: Arc<Inner>,
}

impl CutProxy {
    /// Start forwarding to `target` (`host:port`) on the current runtime.
    pub async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let inner = Arc::new(Inner::default());
        let state = inner.clone();
        let target = target.to_string();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if state.cut.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees its connection closed
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                let mut open = state.open.lock().expect("lock");
                open.retain(|t| !t.is_finished());
                open.push(task.abort_handle());
            }
        });
        Self { addr, inner }
    }

    /// Close every forwarded connection and refuse new ones until [`CutProxy::restore`].
    pub fn cut(&self) {
        self.inner.cut.store(true, Ordering::SeqCst);
        for task in self.inner.open.lock().expect("lock").drain(..) {
            task.abort();
        }
    }

    /// Forward new connections again.
    pub fn restore(&self) {
        self.inner.cut.store(false, Ordering::SeqCst);
    }
}
