//! Running the real `vulcan` binary as a client of a test app, and a TCP proxy that
//! drops a log stream mid-way (to prove resumption).

use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

/// Generous bound for one CLI invocation on a loaded two-core machine (liveness only).
pub const CLI_WITHIN: Duration = Duration::from_secs(120);

/// What one CLI invocation did.
#[derive(Debug)]
pub struct Output {
    /// Exit status (`None` when killed by a signal).
    pub code: Option<i32>,
    /// Everything on stdout.
    pub stdout: String,
    /// Everything on stderr.
    pub stderr: String,
}

impl Output {
    /// stdout parsed as one JSON document.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
}

/// `vulcan ARGS` aimed at `server` (through `VULCAN_SERVER`), with no token and no
/// colour from the test's own environment; stdin is empty unless set.
pub fn command(server: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vulcan"));
    cmd.args(args)
        .env("VULCAN_SERVER", server)
        .env_remove("VULCAN_API_TOKEN")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Run `vulcan ARGS` against `server` to its end.
pub async fn run(server: &str, args: &[&str]) -> Output {
    finish(command(server, args).spawn().expect("spawn vulcan")).await
}

/// Run with `stdin` as standard input.
pub async fn run_with_stdin(server: &str, args: &[&str], stdin: &[u8]) -> Output {
    let mut cmd = command(server, args);
    cmd.stdin(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn vulcan");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin).await.expect("write stdin");
    drop(input);
    finish(child).await
}

/// Wait for a spawned CLI (bounded by [`CLI_WITHIN`]) and collect its output.
pub async fn finish(child: Child) -> Output {
    let out = tokio::time::timeout(CLI_WITHIN, child.wait_with_output())
        .await
        .expect("vulcan did not finish in time")
        .expect("vulcan output");
    Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Send SIGINT (what Ctrl-C sends) to a child process, by its id.
pub fn interrupt(child: &Child) {
    let pid = child.id().expect("child still running");
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -INT {pid}");
}

/// A TCP proxy in front of a server that cuts the first log stream (`/logs` request
/// without `Last-Event-ID`) right after forwarding its first `data:` bytes; every other
/// connection is passed through untouched.
pub struct CuttingProxy {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    /// Streams cut so far (0 or 1: only the first is cut).
    pub cuts: Arc<AtomicUsize>,
    /// Log requests that carried `Last-Event-ID` (resumptions).
    pub resumptions: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Start a [`CuttingProxy`] in front of `upstream` (`http://127.0.0.1:<port>`).
pub async fn cutting_proxy(upstream: &str) -> CuttingProxy {
    let upstream = upstream
        .strip_prefix("http://")
        .expect("http upstream")
        .to_string();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let address = format!("http://{}", listener.local_addr().expect("addr"));
    let cuts = Arc::new(AtomicUsize::new(0));
    let resumptions = Arc::new(AtomicUsize::new(0));
    let (c, r) = (cuts.clone(), resumptions.clone());
    let task = tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (upstream, c, r) = (upstream.clone(), c.clone(), r.clone());
            tokio::spawn(async move {
                let _ = relay(client, &upstream, &c, &r).await;
            });
        }
    });
    CuttingProxy {
        address,
        cuts,
        resumptions,
        task,
    }
}

async fn relay(
    mut client: TcpStream,
    upstream: &str,
    cuts: &AtomicUsize,
    resumptions: &AtomicUsize,
) -> std::io::Result<()> {
    let mut server = TcpStream::connect(upstream).await?;
    // The request head, to see which request this connection carries.
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = client.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let is_logs = text.contains("/logs ");
    let resumed = text.contains("last-event-id:");
    if is_logs && resumed {
        resumptions.fetch_add(1, Ordering::SeqCst);
    }
    server.write_all(&head).await?;
    let cut = is_logs
        && !resumed
        && cuts
            .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
    if !cut {
        tokio::io::copy_bidirectional(&mut client, &mut server).await?;
        return Ok(());
    }
    let mut seen = Vec::new();
    loop {
        let n = server.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        client.write_all(&buf[..n]).await?;
        seen.extend_from_slice(&buf[..n]);
        if seen.windows(5).any(|w| w == b"data:") {
            // Dropping both sockets ends the stream mid-way, as a failing network would.
            return Ok(());
        }
    }
}
