//! The framed protocol between the server and an isolate worker process.
//!
//! One stream socket (a socketpair: the worker's standard input) carries frames in both
//! directions. A frame is a 4-byte little-endian length followed by that many bytes of
//! a [`postcard`]-encoded message. The server trusts nothing a worker sends: every frame
//! it reads is bounded by a length limit it sets, and any frame that does not decode, is
//! too long or does not fit the conversation is a protocol violation that costs the
//! worker its life.
//!
//! The conversation: the server sends [`ToWorker::Init`]; the worker confines itself
//! and answers [`FromWorker::Ready`]. Then, one job at a time: [`ToWorker::Run`], any
//! number of [`FromWorker::Log`], and exactly one [`FromWorker::Done`]; the server may
//! send [`ToWorker::Cancel`] in between. Closing the socket tells the worker to exit.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// Bytes of the length prefix.
pub const LENGTH_BYTES: usize = 4;

/// Largest frame the worker accepts from the server: a program (request bodies are at
/// most `max_body_bytes`, 15 MiB by default) plus its input.
pub const MAX_TO_WORKER_FRAME: usize = 64 * 1024 * 1024;

/// Longest error text a worker sends; longer texts (deep stacks) are cut.
pub const MAX_ERROR_BYTES: usize = 64 * 1024;

/// Room for everything in a frame besides its payload bytes (enum tags, lengths, ids).
pub const FRAME_OVERHEAD: usize = 1024;

/// What the server configures in a fresh worker before any workload runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInit {
    /// Unprivileged user the worker switches to (when it starts as root).
    pub uid: u32,
    /// Unprivileged group the worker switches to (when it starts as root).
    pub gid: u32,
    /// Compiled Wasm modules the worker keeps (0 disables its cache).
    pub wasm_module_cache: usize,
    /// Bytes of compiled JavaScript bytecode the worker keeps (0 disables its cache).
    pub js_bytecode_cache_bytes: usize,
    /// Longest log line forwarded; longer lines are cut with a marker.
    pub max_line_bytes: usize,
    /// Lines forwarded per job; the worker sends one more (the log broker turns it into
    /// its "log truncated" marker) and drops the rest at the source.
    pub max_lines: u64,
    /// `RLIMIT_AS` in bytes, or `None` when a memory cgroup backs the worker instead.
    pub address_space_bytes: Option<u64>,
    /// Accept [`ToWorker::Probe`]: only confinement tests set this; the server never does.
    pub probes: bool,
}

/// What a job runs: the payload already checked against the runtime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Program {
    /// JavaScript source (an ES module or a script).
    Js(String),
    /// A WASI preview 1 command: binary Wasm or WAT text.
    Wasm(Vec<u8>),
}

/// One workload for the worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRequest {
    /// Job number, unique per worker; every answer carries it.
    pub job: u64,
    /// The code.
    pub program: Program,
    /// The JSON input bytes.
    pub input: Vec<u8>,
    /// Memory limit of the engine instance, MiB.
    pub mem_mb: u32,
    /// Largest result the job may produce; a larger one fails it.
    pub max_output_bytes: usize,
    /// Time left until the workload's deadline when the request was sent, ms. The worker
    /// stops on its own then; the server kills it if it does not.
    pub timeout_ms: u64,
}

/// A confinement check run inside a confined worker (tests only, see
/// [`WorkerInit::probes`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Probe {
    /// Who the worker is: uid, gid, groups, capabilities, no_new_privs, seccomp mode.
    Identity,
    /// List the root directory.
    ListRoot,
    /// Open a file for reading.
    OpenFile(String),
    /// Create a TCP socket and connect to an address (`host:port`).
    Connect(String),
    /// Start a thread.
    SpawnThread,
    /// Make a system call outside the allowlist (`uname`, harmless in itself).
    ForbiddenSyscall,
}

/// Server → worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToWorker {
    /// First frame: confine yourself with these settings, then answer `Ready`.
    Init(WorkerInit),
    /// Run a job.
    Run(RunRequest),
    /// Stop job `job` now (kill or deadline); ignored for any other job.
    Cancel {
        /// The job to stop.
        job: u64,
    },
    /// Run a confinement check and answer `ProbeResult`.
    Probe(Probe),
}

/// How a job ended inside the worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The code ran to its end (successfully or not).
    Finished {
        /// Exit code (0 for success, 1 for an exception or trap, the WASI exit code).
        exit_code: Option<i32>,
        /// The result bytes (at most `max_output_bytes`).
        output: Vec<u8>,
        /// Why it failed, when it did (at most [`MAX_ERROR_BYTES`]).
        error: Option<String>,
        /// Execution time inside the worker, µs.
        duration_us: u64,
    },
    /// Stopped by a cancel or the deadline.
    Stopped,
    /// The payload cannot run (invalid module, foreign imports).
    Invalid(String),
}

/// Worker → server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromWorker {
    /// Confined and ready for jobs. `limitations` lists the protections that could not
    /// be applied on this host (empty when all hold).
    Ready {
        /// Human-readable, one protection per entry.
        limitations: Vec<String>,
    },
    /// One log line of job `job`.
    Log {
        /// The job.
        job: u64,
        /// The line, at most `max_line_bytes` plus a marker.
        line: String,
    },
    /// Job `job` ended.
    Done {
        /// The job.
        job: u64,
        /// How.
        outcome: Outcome,
    },
    /// The answer to a [`Probe`].
    ProbeResult(String),
}

/// Encode `msg` as one frame (length prefix included).
pub fn encode<T: Serialize>(msg: &T) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; LENGTH_BYTES];
    let mut buf = postcard::to_extend(msg, std::mem::take(&mut buf))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let len = u32::try_from(buf.len() - LENGTH_BYTES)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "frame too large"))?;
    buf[..LENGTH_BYTES].copy_from_slice(&len.to_le_bytes());
    Ok(buf)
}

/// Decode a frame's payload (without its length prefix).
pub fn decode<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> io::Result<T> {
    postcard::from_bytes(payload).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Write one frame (blocking; the worker side).
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> io::Result<()> {
    w.write_all(&encode(msg)?)
}

/// Read one frame of at most `max` payload bytes (blocking; the worker side).
/// End of stream before a frame starts is `UnexpectedEof`.
pub fn read_frame<R: Read, T: for<'a> Deserialize<'a>>(r: &mut R, max: usize) -> io::Result<T> {
    let mut len = [0u8; LENGTH_BYTES];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds {max}"),
        ));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    decode(&payload)
}

/// The codec the server reads worker frames with: same layout, bounded by `max`.
/// Reading through it is cancel-safe (a partial frame stays buffered).
pub fn codec(max: usize) -> tokio_util::codec::LengthDelimitedCodec {
    tokio_util::codec::LengthDelimitedCodec::builder()
        .length_field_length(LENGTH_BYTES)
        .little_endian()
        .max_frame_length(max)
        .new_codec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_through_the_blocking_reader() {
        let msgs = vec![
            ToWorker::Run(RunRequest {
                job: 7,
                program: Program::Wasm(vec![0, 97, 115, 109]),
                input: b"{\"a\":1}".to_vec(),
                mem_mb: 64,
                max_output_bytes: 1024,
                timeout_ms: 1500,
            }),
            ToWorker::Cancel { job: 7 },
        ];
        let mut wire = Vec::new();
        for m in &msgs {
            write_frame(&mut wire, m).expect("encode");
        }
        let mut r = io::Cursor::new(wire);
        for m in &msgs {
            let got: ToWorker = read_frame(&mut r, 1024).expect("decode");
            assert_eq!(&got, m);
        }
        let end = read_frame::<_, ToWorker>(&mut r, 1024).expect_err("end");
        assert_eq!(end.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn oversized_and_garbage_frames_are_refused() {
        let big = encode(&FromWorker::Log {
            job: 1,
            line: "x".repeat(100),
        })
        .expect("encode");
        let err = read_frame::<_, FromWorker>(&mut io::Cursor::new(big), 50).expect_err("big");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);

        let mut garbage = 3u32.to_le_bytes().to_vec();
        garbage.extend([0xff, 0xff, 0xff]);
        let err =
            read_frame::<_, FromWorker>(&mut io::Cursor::new(garbage), 50).expect_err("garbage");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
