//! The protocol between Vulcan's `microvm` backend (the host) and the guest agent (PID 1
//! in the micro-VM), over one virtio-serial port.
//!
//! Every message is one frame: a tag byte, the payload length as a little-endian `u32`,
//! then the payload. The host sends exactly one [`RunRequest`]; the guest answers
//! [`FromGuest::Ready`] once it has booted (before the request), then any number of
//! output chunks, then one [`FromGuest::Exited`] or [`FromGuest::Failed`].
//!
//! Both sides treat the other as hostile: every length is checked against the caps
//! below before anything is allocated, and decoding never panics.

use std::fmt;
use std::io::{self, Read, Write};

/// The virtio-serial port name (`-device virtserialport,name=…`) the agent looks for.
pub const PORT_NAME: &str = "vulcan";

/// Bytes in a frame header: tag (1) + payload length (4, little endian).
pub const HEADER_LEN: usize = 5;

/// Largest output chunk the agent sends in one [`FromGuest::Stdout`]/[`FromGuest::Stderr`].
pub const MAX_CHUNK: usize = 32 * 1024;

/// Largest frame the host accepts from the guest: a chunk plus room for the longest
/// failure message. Anything larger is a protocol violation (a compromised guest).
pub const MAX_GUEST_FRAME: usize = MAX_CHUNK + 1024;

/// Largest frame the agent accepts from the host (the run request: code, archive files
/// and input). The host never builds a larger one.
pub const MAX_RUN_FRAME: usize = 512 * 1024 * 1024;

const TAG_RUN: u8 = 1;
const TAG_READY: u8 = 10;
const TAG_STDOUT: u8 = 11;
const TAG_STDERR: u8 = 12;
const TAG_EXITED: u8 = 13;
const TAG_FAILED: u8 = 14;

/// A frame that cannot be decoded (truncated, unknown tag, oversized, bad UTF-8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed frame: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

/// One entry of the workload's work directory, relative to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A directory (parents of files are created anyway).
    Dir {
        /// Relative path of plain components.
        path: String,
    },
    /// A regular file with its permission bits (`0o644` or `0o755`).
    File {
        /// Relative path of plain components.
        path: String,
        /// Permission bits.
        mode: u32,
        /// Contents.
        data: Vec<u8>,
    },
    /// A symbolic link whose target stays inside the work directory.
    Symlink {
        /// Relative path of plain components.
        path: String,
        /// Link target (relative).
        target: String,
    },
}

/// What the guest runs: the whole request in one frame.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunRequest {
    /// Program and arguments (absolute program path inside the guest).
    pub argv: Vec<String>,
    /// The whole environment (`KEY=value`); nothing else is inherited.
    pub env: Vec<String>,
    /// The work directory's contents (`/work`, a tmpfs).
    pub entries: Vec<Entry>,
    /// Bytes written to the program's stdin, then closed.
    pub stdin: Vec<u8>,
    /// Memory limit of the workload's cgroup inside the guest, in bytes.
    pub mem_limit_bytes: u64,
    /// Most processes and threads of the workload (`pids.max`).
    pub max_processes: u64,
    /// Size of the `/work` tmpfs, in MiB.
    pub work_size_mb: u64,
    /// Size of the `/tmp` tmpfs, in MiB.
    pub tmp_size_mb: u64,
    /// Unprivileged uid/gid the program runs as.
    pub uid: u32,
}

/// Messages from the guest agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromGuest {
    /// The agent is up (kernel booted, modules loaded, `/usr` mounted).
    Ready,
    /// A chunk of the program's stdout.
    Stdout(Vec<u8>),
    /// A chunk of the program's stderr.
    Stderr(Vec<u8>),
    /// The program ended; all output was sent before this frame.
    Exited {
        /// Exit code when it exited normally.
        code: Option<i32>,
        /// Signal number when a signal ended it.
        signal: Option<i32>,
        /// The workload's cgroup saw an OOM kill.
        oom_killed: bool,
    },
    /// The agent could not run the program (the message says why).
    Failed(String),
}

/// Build one frame.
pub fn frame(tag: u8, payload: &[u8]) -> io::Result<Vec<u8>> {
    let len = u32::try_from(payload.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.push(tag);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// Split a header into (tag, payload length).
pub fn parse_header(header: [u8; HEADER_LEN]) -> (u8, usize) {
    let len = u32::from_le_bytes([header[1], header[2], header[3], header[4]]);
    (header[0], len as usize)
}

/// Read one frame (blocking). `Ok(None)` at a clean end of stream before a header;
/// a payload longer than `max` is an error and is not read.
pub fn read_frame(r: &mut impl Read, max: usize) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let (tag, len) = parse_header(header);
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds {max}"),
        ));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(Some((tag, payload)))
}

/// Write one frame and flush.
pub fn write_frame(w: &mut impl Write, tag: u8, payload: &[u8]) -> io::Result<()> {
    w.write_all(&frame(tag, payload)?)?;
    w.flush()
}

impl RunRequest {
    /// The request as one frame.
    pub fn to_frame(&self) -> io::Result<Vec<u8>> {
        let mut e = Encoder::default();
        e.strings(&self.argv);
        e.strings(&self.env);
        e.u32(len_u32(self.entries.len()));
        for entry in &self.entries {
            match entry {
                Entry::Dir { path } => {
                    e.u8(0);
                    e.str(path);
                }
                Entry::File { path, mode, data } => {
                    e.u8(1);
                    e.str(path);
                    e.u32(*mode);
                    e.bytes(data);
                }
                Entry::Symlink { path, target } => {
                    e.u8(2);
                    e.str(path);
                    e.str(target);
                }
            }
        }
        e.bytes(&self.stdin);
        e.u64(self.mem_limit_bytes);
        e.u64(self.max_processes);
        e.u64(self.work_size_mb);
        e.u64(self.tmp_size_mb);
        e.u32(self.uid);
        if e.0.len() > MAX_RUN_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("run request of {} bytes exceeds {MAX_RUN_FRAME}", e.0.len()),
            ));
        }
        frame(TAG_RUN, &e.0)
    }

    /// Decode a frame's tag and payload.
    pub fn decode(tag: u8, payload: &[u8]) -> Result<Self, DecodeError> {
        if tag != TAG_RUN {
            return Err(DecodeError(format!(
                "expected a run request, got tag {tag}"
            )));
        }
        let mut d = Decoder(payload);
        let argv = d.strings()?;
        let env = d.strings()?;
        let n = d.u32()? as usize;
        let mut entries = Vec::with_capacity(n.min(payload.len()));
        for _ in 0..n {
            let entry = match d.u8()? {
                0 => Entry::Dir { path: d.str()? },
                1 => Entry::File {
                    path: d.str()?,
                    mode: d.u32()?,
                    data: d.bytes()?.to_vec(),
                },
                2 => Entry::Symlink {
                    path: d.str()?,
                    target: d.str()?,
                },
                k => return Err(DecodeError(format!("unknown entry kind {k}"))),
            };
            entries.push(entry);
        }
        let req = Self {
            argv,
            env,
            entries,
            stdin: d.bytes()?.to_vec(),
            mem_limit_bytes: d.u64()?,
            max_processes: d.u64()?,
            work_size_mb: d.u64()?,
            tmp_size_mb: d.u64()?,
            uid: d.u32()?,
        };
        d.end()?;
        Ok(req)
    }
}

impl FromGuest {
    /// The message as one frame.
    pub fn to_frame(&self) -> io::Result<Vec<u8>> {
        let mut e = Encoder::default();
        let tag = match self {
            Self::Ready => TAG_READY,
            Self::Stdout(b) => {
                e.0.extend_from_slice(b);
                TAG_STDOUT
            }
            Self::Stderr(b) => {
                e.0.extend_from_slice(b);
                TAG_STDERR
            }
            Self::Exited {
                code,
                signal,
                oom_killed,
            } => {
                e.opt_i32(*code);
                e.opt_i32(*signal);
                e.u8(u8::from(*oom_killed));
                TAG_EXITED
            }
            Self::Failed(msg) => {
                let mut end = msg.len().min(MAX_GUEST_FRAME - 16);
                while !msg.is_char_boundary(end) {
                    end -= 1;
                }
                e.0.extend_from_slice(&msg.as_bytes()[..end]);
                TAG_FAILED
            }
        };
        frame(tag, &e.0)
    }

    /// Decode a frame's tag and payload.
    pub fn decode(tag: u8, payload: &[u8]) -> Result<Self, DecodeError> {
        if payload.len() > MAX_GUEST_FRAME {
            return Err(DecodeError(format!(
                "guest frame of {} bytes exceeds {MAX_GUEST_FRAME}",
                payload.len()
            )));
        }
        let mut d = Decoder(payload);
        let msg = match tag {
            TAG_READY => Self::Ready,
            TAG_STDOUT => return Ok(Self::Stdout(payload.to_vec())),
            TAG_STDERR => return Ok(Self::Stderr(payload.to_vec())),
            TAG_EXITED => Self::Exited {
                code: d.opt_i32()?,
                signal: d.opt_i32()?,
                oom_killed: d.u8()? != 0,
            },
            TAG_FAILED => return Ok(Self::Failed(String::from_utf8_lossy(payload).into_owned())),
            t => return Err(DecodeError(format!("unknown tag {t}"))),
        };
        d.end()?;
        Ok(msg)
    }
}

fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[derive(Default)]
struct Encoder(Vec<u8>);

impl Encoder {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(len_u32(b.len()));
        self.0.extend_from_slice(b);
    }
    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    fn strings(&mut self, v: &[String]) {
        self.u32(len_u32(v.len()));
        for s in v {
            self.str(s);
        }
    }
    fn opt_i32(&mut self, v: Option<i32>) {
        match v {
            Some(n) => {
                self.u8(1);
                self.0.extend_from_slice(&n.to_le_bytes());
            }
            None => self.u8(0),
        }
    }
}

struct Decoder<'a>(&'a [u8]);

impl<'a> Decoder<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError(format!(
                "truncated: needed {n} bytes, {} left",
                self.0.len()
            )));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn str(&mut self) -> Result<String, DecodeError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| DecodeError("invalid UTF-8".into()))
    }
    fn strings(&mut self) -> Result<Vec<String>, DecodeError> {
        let n = self.u32()? as usize;
        // Each string takes at least its 4-byte length: a count beyond that is a lie.
        if n > self.0.len() / 4 {
            return Err(DecodeError(format!("{n} strings cannot fit")));
        }
        (0..n).map(|_| self.str()).collect()
    }
    fn opt_i32(&mut self) -> Result<Option<i32>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => {
                let b = self.take(4)?;
                Ok(Some(i32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            }
            k => Err(DecodeError(format!("bad option marker {k}"))),
        }
    }
    fn end(&self) -> Result<(), DecodeError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(DecodeError(format!("{} trailing bytes", self.0.len())))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample() -> RunRequest {
        RunRequest {
            argv: vec!["/usr/bin/python3".into(), "-u".into(), "main.py".into()],
            env: vec!["PATH=/usr/bin".into(), "VULCAN_INPUT={\"a\":1}".into()],
            entries: vec![
                Entry::Dir { path: "pkg".into() },
                Entry::File {
                    path: "pkg/mod.py".into(),
                    mode: 0o644,
                    data: b"X = 1\n".to_vec(),
                },
                Entry::Symlink {
                    path: "link.py".into(),
                    target: "pkg/mod.py".into(),
                },
            ],
            stdin: b"{\"a\":1}".to_vec(),
            mem_limit_bytes: 128 << 20,
            max_processes: 256,
            work_size_mb: 64,
            tmp_size_mb: 64,
            uid: 1000,
        }
    }

    fn split(frame: &[u8]) -> (u8, &[u8]) {
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&frame[..HEADER_LEN]);
        let (tag, len) = parse_header(h);
        assert_eq!(len, frame.len() - HEADER_LEN);
        (tag, &frame[HEADER_LEN..])
    }

    #[test]
    fn run_request_round_trips() {
        let req = sample();
        let frame = req.to_frame().unwrap();
        let (tag, payload) = split(&frame);
        assert_eq!(RunRequest::decode(tag, payload).unwrap(), req);
    }

    #[test]
    fn guest_messages_round_trip() {
        for msg in [
            FromGuest::Ready,
            FromGuest::Stdout(b"line\n".to_vec()),
            FromGuest::Stderr(vec![0xff, 0, 1]),
            FromGuest::Exited {
                code: Some(3),
                signal: None,
                oom_killed: false,
            },
            FromGuest::Exited {
                code: None,
                signal: Some(9),
                oom_killed: true,
            },
            FromGuest::Failed("no such file".into()),
        ] {
            let frame = msg.to_frame().unwrap();
            let (tag, payload) = split(&frame);
            assert_eq!(FromGuest::decode(tag, payload).unwrap(), msg);
        }
    }

    #[test]
    fn every_truncation_of_a_request_is_an_error_not_a_panic() {
        let frame = sample().to_frame().unwrap();
        let (tag, payload) = split(&frame);
        for cut in 0..payload.len() {
            assert!(
                RunRequest::decode(tag, &payload[..cut]).is_err(),
                "cut {cut}"
            );
        }
        let mut longer = payload.to_vec();
        longer.push(0);
        assert!(RunRequest::decode(tag, &longer).is_err());
    }

    #[test]
    fn hostile_guest_frames_are_rejected() {
        assert!(FromGuest::decode(99, b"").is_err());
        assert!(FromGuest::decode(TAG_EXITED, &[1, 0]).is_err());
        assert!(FromGuest::decode(TAG_STDOUT, &vec![0u8; MAX_GUEST_FRAME + 1]).is_err());
        // A lying count is caught before any allocation of that size.
        let mut e = Encoder::default();
        e.u32(u32::MAX);
        assert!(RunRequest::decode(TAG_RUN, &e.0).is_err());
    }

    #[test]
    fn read_frame_refuses_oversized_payloads_and_sees_clean_ends() {
        let frame = FromGuest::Stdout(vec![7u8; 100]).to_frame().unwrap();
        assert!(read_frame(&mut &frame[..], 99).is_err());
        let (tag, payload) = read_frame(&mut &frame[..], 100).unwrap().unwrap();
        assert_eq!(
            FromGuest::decode(tag, &payload).unwrap(),
            FromGuest::Stdout(vec![7; 100])
        );
        assert!(read_frame(&mut &b""[..], 10).unwrap().is_none());
        assert!(read_frame(&mut &frame[..3], 100).is_err());
    }

    #[test]
    fn failure_messages_are_cut_to_fit_a_guest_frame() {
        let long = "é".repeat(MAX_GUEST_FRAME);
        let frame = FromGuest::Failed(long).to_frame().unwrap();
        assert!(frame.len() - HEADER_LEN <= MAX_GUEST_FRAME);
        let (tag, payload) = split(&frame);
        assert!(matches!(
            FromGuest::decode(tag, payload).unwrap(),
            FromGuest::Failed(_)
        ));
    }
}
