//! The server's log sink: log lines are gathered in memory and written to standard
//! error in one `write` per flush interval, instead of one locked, unbuffered `write`
//! per line (at the default `info` level that is one line per HTTP request, and the
//! write system call was most of the line's cost on the request path).
//!
//! What a line's fate is: on a clean exit (the [`Flusher`] dropped, as `vulcan serve`
//! does when it returns) every line is written. On `kill -9` or a power cut, the lines of
//! the last flush interval (at most [`Sink::capacity`] bytes) may be lost; nothing the
//! API promised (a 202's durable record) depends on them.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// Bytes waiting to be written, and whether the flusher should stop.
struct Pending {
    bytes: Vec<u8>,
    stopping: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    /// Signalled when the first bytes of an interval arrive and when stopping: the
    /// flusher sleeps without a timer while nothing is logged.
    wake: Condvar,
    out: Mutex<Box<dyn Write + Send>>,
    /// Above this many pending bytes, a writer writes them itself: memory stays bounded
    /// however fast lines come.
    capacity: usize,
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        // A panic while appending leaves at worst a partial line: keep logging.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Take what is pending and write it. The output lock is taken before `pending` is
    /// released, so batches reach the output in the order they were appended.
    fn flush_pending(&self, spare: &mut Vec<u8>) -> io::Result<()> {
        let mut pending = self.pending();
        if pending.bytes.is_empty() {
            return Ok(());
        }
        std::mem::swap(&mut pending.bytes, spare);
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        drop(pending);
        let res = out.write_all(spare).and_then(|()| out.flush());
        spare.clear();
        res
    }
}

/// A cloneable [`Write`] handle appending to the shared buffer (what env_logger's
/// `Target::Pipe` gets). Each `write` call is kept whole (env_logger writes a record in
/// one call, so lines of concurrent threads never mix). Its `flush` is a no-op: writing out is the [`Flusher`]'s job,
/// on its interval, or a writer's when the buffer is full.
#[derive(Clone)]
pub struct Sink {
    shared: Arc<Shared>,
}

impl Sink {
    /// The bound on buffered bytes (beyond it a writer writes them out itself).
    pub fn capacity(&self) -> usize {
        self.shared.capacity
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut pending = self.shared.pending();
        let was_empty = pending.bytes.is_empty();
        if pending.bytes.len() + buf.len() > self.shared.capacity {
            // Full: this writer pays for the write (order kept: pending first).
            let mut batch = std::mem::take(&mut pending.bytes);
            batch.extend_from_slice(buf);
            let mut out = self
                .shared
                .out
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            drop(pending);
            out.write_all(&batch)?;
            out.flush()?;
            return Ok(buf.len());
        }
        pending.bytes.extend_from_slice(buf);
        drop(pending);
        if was_empty {
            self.shared.wake.notify_one();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The thread that writes the buffered lines out every interval. Dropping it writes
/// everything still buffered and ends the thread: keep it alive for as long as the
/// program logs.
pub struct Flusher {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A sink writing to `out` at most `interval` after a line arrives, buffering at most
/// `capacity` bytes, and its flusher thread.
pub fn buffered(
    out: Box<dyn Write + Send>,
    interval: Duration,
    capacity: usize,
) -> io::Result<(Sink, Flusher)> {
    let shared = Arc::new(Shared {
        pending: Mutex::new(Pending {
            bytes: Vec::with_capacity(capacity),
            stopping: false,
        }),
        wake: Condvar::new(),
        out: Mutex::new(out),
        capacity,
    });
    let thread = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("vulcan-log-flush".into())
            .spawn(move || flush_loop(&shared, interval))?
    };
    Ok((
        Sink {
            shared: shared.clone(),
        },
        Flusher {
            shared,
            thread: Some(thread),
        },
    ))
}

fn flush_loop(shared: &Shared, interval: Duration) {
    let mut spare = Vec::with_capacity(shared.capacity);
    loop {
        let mut pending = shared.pending();
        while pending.bytes.is_empty() && !pending.stopping {
            pending = shared
                .wake
                .wait(pending)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if pending.stopping {
            return;
        }
        // Gather the interval's lines (a stop request cuts the wait short).
        let (guard, _) = shared
            .wake
            .wait_timeout_while(pending, interval, |p| !p.stopping)
            .unwrap_or_else(PoisonError::into_inner);
        drop(guard);
        // Nowhere to report a failed write of the log itself.
        let _ = shared.flush_pending(&mut spare);
    }
}

impl Flusher {
    /// Write everything buffered now.
    pub fn flush(&self) -> io::Result<()> {
        let mut spare = Vec::new();
        self.shared.flush_pending(&mut spare)
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.shared.pending().stopping = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let mut spare = Vec::new();
        let _ = self.shared.flush_pending(&mut spare);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output recording each write it gets.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if !buf.is_empty() {
                self.0.lock().expect("recorder").push(buf.to_vec());
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Recorder {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().expect("recorder").concat()).expect("utf-8")
        }
        fn writes(&self) -> usize {
            self.0.lock().expect("recorder").len()
        }
    }

    #[test]
    fn lines_of_one_interval_reach_the_output_in_one_write() {
        let out = Recorder::default();
        let (mut sink, _flusher) =
            buffered(Box::new(out.clone()), Duration::from_millis(200), 1 << 16).expect("sink");
        for i in 0..100 {
            writeln!(sink, "line {i}").expect("write");
            sink.flush().expect("write");
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while out.text().lines().count() < 100 {
            assert!(std::time::Instant::now() < deadline, "lines never written");
            std::thread::sleep(Duration::from_millis(10));
        }
        let expected: String = (0..100).map(|i| format!("line {i}\n")).collect();
        assert_eq!(out.text(), expected);
        assert!(out.writes() < 100, "{} writes for 100 lines", out.writes());
    }

    #[test]
    fn dropping_the_flusher_writes_every_buffered_line() {
        let out = Recorder::default();
        // An interval no test waits out: only the drop can write the lines.
        let (mut sink, flusher) =
            buffered(Box::new(out.clone()), Duration::from_secs(3600), 1 << 16).expect("sink");
        for i in 0..10 {
            writeln!(sink, "line {i}").expect("write");
        }
        drop(flusher);
        let expected: String = (0..10).map(|i| format!("line {i}\n")).collect();
        assert_eq!(out.text(), expected);
    }

    #[test]
    fn a_full_buffer_is_written_by_the_writer_and_order_is_kept() {
        let out = Recorder::default();
        let (mut sink, flusher) =
            buffered(Box::new(out.clone()), Duration::from_secs(3600), 64).expect("sink");
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let mut sink = sink.clone();
                std::thread::spawn(move || {
                    for i in 0..500 {
                        // One `write` per line, as env_logger writes a record.
                        sink.write_all(format!("t{t} line {i:04}\n").as_bytes())
                            .expect("write");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("writer thread");
        }
        writeln!(sink, "last").expect("write");
        // Nothing waits out the interval: the writers wrote whenever 64 bytes gathered.
        assert!(out.writes() > 100, "only {} writes", out.writes());
        assert!(sink.capacity() == 64);
        drop(flusher);
        let text = out.text();
        assert_eq!(text.lines().count(), 2_001);
        assert_eq!(text.lines().last(), Some("last"));
        for t in 0..4 {
            let mine: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with(&format!("t{t} ")))
                .collect();
            let expected: Vec<String> = (0..500).map(|i| format!("t{t} line {i:04}")).collect();
            assert_eq!(mine, expected, "thread {t}'s lines out of order or lost");
        }
    }
}
