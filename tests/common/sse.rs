//! A small Server-Sent Events reader over reqwest's byte stream, for end-to-end tests of
//! `GET /v1/workloads/{id}/logs`.

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use super::TestApp;

/// One event as the client sees it (comments such as `: keep-alive` are skipped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// `id:` field, if any.
    pub id: Option<String>,
    /// `event:` field, if any (`done` for the final event).
    pub event: Option<String>,
    /// The `data:` fields joined with `\n`.
    pub data: String,
}

/// An open SSE response.
pub struct SseStream {
    stream: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    buf: Vec<u8>,
}

impl SseStream {
    /// Open `/v1/workloads/{id}/logs`, asserting a 200 `text/event-stream` answer.
    pub async fn open(app: &TestApp, id: &str) -> Self {
        let res = app
            .client
            .get(app.url(&format!("/v1/workloads/{id}/logs")))
            .send()
            .await
            .expect("SSE request");
        assert_eq!(res.status(), 200, "SSE status");
        let ctype = res.headers()["content-type"]
            .to_str()
            .expect("content type")
            .to_string();
        assert!(ctype.starts_with("text/event-stream"), "{ctype}");
        Self {
            stream: Box::pin(res.bytes_stream()),
            buf: Vec::new(),
        }
    }

    /// The next event; `None` once the server closed the stream. Panics when nothing
    /// arrives `within`.
    pub async fn next_event(&mut self, within: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            while let Some(end) = find_blank_line(&self.buf) {
                let block: Vec<u8> = self.buf.drain(..end.0).collect();
                self.buf.drain(..end.1);
                if let Some(event) = parse_block(&String::from_utf8_lossy(&block)) {
                    return Some(event);
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .unwrap_or_else(|_| panic!("no SSE event within {within:?}"));
            match chunk {
                Some(Ok(bytes)) => self.buf.extend_from_slice(&bytes),
                Some(Err(e)) => panic!("SSE stream error: {e}"),
                None => return None,
            }
        }
    }

    /// Read until `event: done`; returns the log-line events before it and the final
    /// status, and checks that the server then closes the stream.
    pub async fn until_done(&mut self, within: Duration) -> (Vec<SseEvent>, String) {
        let mut lines = Vec::new();
        loop {
            let event = self
                .next_event(within)
                .await
                .expect("stream closed before `done`");
            if event.event.as_deref() == Some("done") {
                assert_eq!(
                    self.next_event(within).await,
                    None,
                    "stream must close after done"
                );
                return (lines, event.data);
            }
            lines.push(event);
        }
    }
}

/// Position of the first blank line: (end of the block, bytes to drop after it).
fn find_blank_line(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

fn parse_block(block: &str) -> Option<SseEvent> {
    let mut id = None;
    let mut event = None;
    let mut data: Option<String> = None;
    for line in block.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "id" => id = Some(value.to_string()),
            "event" => event = Some(value.to_string()),
            "data" => match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_string()),
            },
            _ => {}
        }
    }
    if id.is_none() && event.is_none() && data.is_none() {
        return None;
    }
    Some(SseEvent {
        id,
        event,
        data: data.unwrap_or_default(),
    })
}
