//! Driving the `runsc` binary: runs with piped stdio, kill, delete, list, and the
//! readers that turn the workload's output into log lines.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;

use crate::backends::LogSink;

/// How long a `kill`/`delete`/`list` invocation may take before it is abandoned.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest log line forwarded as one line; longer runs of bytes are split.
const MAX_LOG_LINE: usize = 64 * 1024;

/// The environment `runsc` itself runs with (the host environment is not passed on:
/// neither to runsc nor, through it, to the workload).
const RUNSC_PATH_ENV: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One `runsc` installation with its private state root.
#[derive(Debug, Clone)]
pub struct Runsc {
    /// The `runsc` binary.
    pub bin: PathBuf,
    /// `--root`: runsc's own container state.
    pub root: PathBuf,
    /// `--platform` (ptrace unless the operator knows better).
    pub platform: String,
}

impl Runsc {
    fn global_args(&self) -> Vec<String> {
        vec![
            "--root".into(),
            self.root.to_string_lossy().into_owned(),
            format!("--platform={}", self.platform),
            "--network=none".into(),
        ]
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.env_clear()
            .env("PATH", RUNSC_PATH_ENV)
            .args(self.global_args());
        cmd
    }

    fn blocking_command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.bin);
        cmd.env_clear()
            .env("PATH", RUNSC_PATH_ENV)
            .args(self.global_args());
        cmd
    }

    /// `runsc run --bundle <bundle> <id>` with all three stdio streams piped. The
    /// runsc process is killed if the handle is dropped (the sandbox itself is then
    /// removed by [`Runsc::kill`] + [`Runsc::delete`] in cleanup). With `root_overlay`
    /// the root file system gets a writable layer in sandbox memory
    /// (`--overlay2=root:memory`), so the run may write anywhere while the directory on
    /// the host stays as it was.
    pub fn run_command_with(&self, bundle: &Path, id: &str, root_overlay: bool) -> Command {
        let mut cmd = self.command();
        if root_overlay {
            cmd.arg("--overlay2=root:memory");
        }
        cmd.arg("run")
            .arg("--bundle")
            .arg(bundle)
            .arg(id)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// `runsc kill <id> KILL --all`; errors (no such container) are ignored.
    pub async fn kill(&self, id: &str) {
        let mut cmd = self.command();
        cmd.args(["kill", "--all", id, "KILL"]);
        quiet(cmd).await;
    }

    /// `runsc delete --force <id>`; errors (no such container) are ignored.
    pub async fn delete(&self, id: &str) {
        let mut cmd = self.command();
        cmd.args(["delete", "--force", id]);
        quiet(cmd).await;
    }

    /// Whether runsc still holds state for `id` in its root (cheap: no process).
    pub fn has_state(&self, id: &str) -> bool {
        std::fs::read_dir(&self.root).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().contains(id))
        })
    }

    /// Container ids in the root (`runsc list --quiet`), blocking; for start-up and tests.
    pub fn list_blocking(&self) -> Vec<String> {
        let output = self
            .blocking_command()
            .args(["list", "--quiet"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output();
        match output {
            Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Kill and force-delete `id`, blocking; for start-up cleanup.
    pub fn remove_blocking(&self, id: &str) {
        for args in [
            vec!["kill", "--all", id, "KILL"],
            vec!["delete", "--force", id],
        ] {
            let _ = self
                .blocking_command()
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Run a control command to completion, discarding its output, within a time bound.
async fn quiet(mut cmd: Command) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    if let Ok(mut child) = cmd.spawn() {
        let _ = tokio::time::timeout(CONTROL_TIMEOUT, child.wait()).await;
    }
}

/// `runsc --version` (blocking): the first line on success, the reason otherwise.
pub fn version(bin: &Path) -> Result<String, String> {
    let out = std::process::Command::new(bin)
        .arg("--version")
        .env_clear()
        .env("PATH", RUNSC_PATH_ENV)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {} --version: {e}", bin.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} --version failed ({}): {}",
            bin.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// The bytes of stdout kept as the result, capped.
#[derive(Debug, Default)]
pub struct Collected {
    /// Up to the cap.
    pub bytes: Vec<u8>,
    /// More was produced than the cap allowed.
    pub truncated: bool,
}

/// Read `stream` to its end, forwarding each line to `log` as soon as it is complete;
/// when `cap` is `Some`, also keep up to that many raw bytes.
pub async fn pump(stream: impl AsyncRead + Unpin, log: LogSink, cap: Option<usize>) -> Collected {
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let mut collected = Collected::default();
    let mut line: Vec<u8> = Vec::new();
    loop {
        let chunk = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(chunk) => chunk,
        };
        let len = chunk.len();
        if let Some(cap) = cap {
            let room = cap.saturating_sub(collected.bytes.len());
            if room < len {
                collected.truncated = true;
            }
            collected.bytes.extend_from_slice(&chunk[..len.min(room)]);
        }
        let mut rest = chunk;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            line.extend_from_slice(&rest[..pos]);
            emit(&log, &mut line);
            rest = &rest[pos + 1..];
        }
        line.extend_from_slice(rest);
        while line.len() >= MAX_LOG_LINE {
            let tail = line.split_off(MAX_LOG_LINE);
            emit(&log, &mut line);
            line = tail;
        }
        reader.consume(len);
    }
    if !line.is_empty() {
        emit(&log, &mut line);
    }
    collected
}

fn emit(log: &LogSink, line: &mut Vec<u8>) {
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    log.line(String::from_utf8_lossy(line).into_owned());
    line.clear();
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn sink() -> (LogSink, Arc<Mutex<Vec<String>>>) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = lines.clone();
        (LogSink::new(move |s| l.lock().unwrap().push(s)), lines)
    }

    #[tokio::test]
    async fn pump_splits_lines_and_caps_output() {
        let (log, lines) = sink();
        let input: &[u8] = b"one\r\ntwo\n\nthree";
        let got = pump(input, log, Some(6)).await;
        assert_eq!(*lines.lock().unwrap(), vec!["one", "two", "", "three"]);
        assert_eq!(got.bytes, b"one\r\nt");
        assert!(got.truncated);
    }

    #[tokio::test]
    async fn pump_splits_endless_lines() {
        let (log, lines) = sink();
        let input = vec![b'x'; MAX_LOG_LINE * 2 + 10];
        let got = pump(&input[..], log, None).await;
        let lines = lines.lock().unwrap();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[2].len(), 10);
        assert!(got.bytes.is_empty());
    }
}
