//! One running micro-VM seen from the host: QEMU started in its cgroup, the agent's
//! port connected, frames in both directions, and the stop.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::process::Child;
use tokio_util::sync::CancellationToken;
use vulcan_guest_proto::{parse_header, FromGuest, HEADER_LEN, MAX_GUEST_FRAME};

use super::qemu::{self, VmParams};

/// Most bytes of QEMU's stderr kept to explain a failure.
const STDERR_TAIL: usize = 2048;

/// Why a VM did not get to (or through) its work.
#[derive(Debug)]
pub enum VmError {
    /// The cancellation token fired (kill, timeout): the VM was stopped.
    Cancelled,
    /// The deadline passed before the VM answered.
    TimedOut,
    /// QEMU or the guest failed; the text says how.
    Failed(String),
}

/// A booted VM whose agent said `Ready`.
pub struct Vm {
    child: Child,
    stream: UnixStream,
    stderr: tokio::task::JoinHandle<String>,
    /// From QEMU's start to the agent's `Ready`.
    pub boot: Duration,
}

/// Start QEMU (joined to `procs_files` first) and wait for the agent's `Ready` on
/// `listener`, until `deadline` or `cancel`. On any error QEMU is already stopped.
pub async fn boot(
    params: &VmParams,
    procs_files: &[PathBuf],
    listener: UnixListener,
    cancel: &CancellationToken,
    deadline: Instant,
    grace: Duration,
) -> Result<Vm, VmError> {
    let started = Instant::now();
    let mut child = qemu::spawn(params, procs_files)
        .map_err(|e| VmError::Failed(format!("cannot start {}: {e}", params.qemu.display())))?;
    let stderr = match child.stderr.take() {
        Some(s) => tokio::spawn(tail(s)),
        None => tokio::spawn(async { String::new() }),
    };
    let until = tokio::time::Instant::from_std(deadline);
    let connected = tokio::select! {
        r = async {
            let (mut stream, _) = listener.accept().await.map_err(|e| VmError::Failed(format!("accepting the agent's port: {e}")))?;
            match read_message(&mut stream).await {
                Ok(Some(FromGuest::Ready)) => Ok(stream),
                Ok(Some(other)) => Err(VmError::Failed(format!("the guest agent sent {other:?} before Ready"))),
                Ok(None) => Err(VmError::Failed("the guest closed its port before Ready".into())),
                Err(e) => Err(VmError::Failed(e)),
            }
        } => r,
        status = child.wait() => Err(VmError::Failed(match status {
            Ok(s) => format!("qemu exited during boot ({s})"),
            Err(e) => format!("waiting for qemu: {e}"),
        })),
        () = cancel.cancelled() => Err(VmError::Cancelled),
        () = tokio::time::sleep_until(until) => Err(VmError::TimedOut),
    };
    match connected {
        Ok(stream) => Ok(Vm {
            child,
            stream,
            stderr,
            boot: started.elapsed(),
        }),
        Err(e) => {
            qemu::stop(&mut child, grace).await;
            let why = stderr.await.unwrap_or_default();
            Err(match e {
                VmError::Failed(msg) if !why.is_empty() => VmError::Failed(format!("{msg}: {why}")),
                other => other,
            })
        }
    }
}

impl Vm {
    /// Send one frame to the agent.
    pub async fn send(&mut self, frame: &[u8]) -> Result<(), VmError> {
        self.stream
            .write_all(frame)
            .await
            .map_err(|e| VmError::Failed(format!("writing to the guest: {e}")))
    }

    /// The next message from the agent; `Ok(None)` when the port closed.
    pub async fn recv(&mut self) -> Result<Option<FromGuest>, VmError> {
        read_message(&mut self.stream)
            .await
            .map_err(VmError::Failed)
    }

    /// Wait (up to `limit`) for QEMU to exit by itself, then stop it in any case and
    /// return what it said on stderr.
    pub async fn shut_down(mut self, limit: Duration, grace: Duration) -> String {
        let _ = tokio::time::timeout(limit, self.child.wait()).await;
        qemu::stop(&mut self.child, grace).await;
        self.stderr.await.unwrap_or_default()
    }

    /// QEMU's exit status when it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

/// Read one frame and decode it; frames above [`MAX_GUEST_FRAME`] are refused unread.
async fn read_message(stream: &mut UnixStream) -> Result<Option<FromGuest>, String> {
    let mut header = [0u8; HEADER_LEN];
    match stream.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(format!("reading from the guest: {e}")),
    }
    let (tag, len) = parse_header(header);
    if len > MAX_GUEST_FRAME {
        return Err(format!(
            "the guest sent a frame of {len} bytes (at most {MAX_GUEST_FRAME})"
        ));
    }
    let mut payload = vec![0u8; len];
    stream
        .read_exact(&mut payload)
        .await
        .map_err(|e| format!("reading from the guest: {e}"))?;
    FromGuest::decode(tag, &payload)
        .map(Some)
        .map_err(|e| format!("the guest sent a {e}"))
}

/// Read a stream to its end, keeping its last [`STDERR_TAIL`] bytes, trimmed.
async fn tail(mut s: impl AsyncRead + Unpin) -> String {
    let mut kept: Vec<u8> = Vec::new();
    let mut buf = [0u8; 1024];
    while let Ok(n) = s.read(&mut buf).await {
        if n == 0 {
            break;
        }
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > STDERR_TAIL {
            kept.drain(..kept.len() - STDERR_TAIL);
        }
    }
    String::from_utf8_lossy(&kept).trim().replace('\n', "; ")
}
