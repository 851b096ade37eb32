//! A small SSE reader for tests: parses `id:`, `event:`, `data:` fields and comments
//! from a streaming HTTP body, exactly as a browser's EventSource would.

use std::time::Duration;

use futures_util::StreamExt;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// `id:` field.
    pub id: Option<String>,
    /// `event:` field (None = "message").
    pub event: Option<String>,
    /// `data:` fields joined with `\n`.
    pub data: String,
}

/// What the reader saw next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// An event.
    Event(Event),
    /// A comment line (without the leading colon).
    Comment(String),
}

/// Reads a `text/event-stream` response.
pub struct Reader {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
    /// Every byte received, for raw assertions.
    pub raw: String,
    id: Option<String>,
    event: Option<String>,
    data: Vec<String>,
    has_fields: bool,
}

impl Reader {
    /// Wrap a response (asserting it is an event stream).
    pub fn new(res: reqwest::Response) -> Self {
        assert_eq!(res.status(), 200);
        let ct = res.headers()["content-type"]
            .to_str()
            .expect("ct")
            .to_string();
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        Self {
            body: Box::pin(res.bytes_stream()),
            buf: String::new(),
            raw: String::new(),
            id: None,
            event: None,
            data: Vec::new(),
            has_fields: false,
        }
    }

    /// The next event or comment; `None` when the server closed the stream.
    pub async fn next_item(&mut self) -> Option<Item> {
        loop {
            if let Some(pos) = self.buf.find('\n') {
                let line: String = self.buf.drain(..=pos).collect();
                let line = line.trim_end_matches('\n').trim_end_matches('\r');
                if line.is_empty() {
                    if self.has_fields {
                        self.has_fields = false;
                        return Some(Item::Event(Event {
                            id: self.id.take(),
                            event: self.event.take(),
                            data: std::mem::take(&mut self.data).join("\n"),
                        }));
                    }
                    continue;
                }
                if let Some(c) = line.strip_prefix(':') {
                    return Some(Item::Comment(c.trim_start().to_string()));
                }
                let (field, value) = line
                    .split_once(':')
                    .map_or((line, ""), |(f, v)| (f, v.strip_prefix(' ').unwrap_or(v)));
                self.has_fields = true;
                match field {
                    "id" => self.id = Some(value.to_string()),
                    "event" => self.event = Some(value.to_string()),
                    "data" => self.data.push(value.to_string()),
                    _ => {}
                }
                continue;
            }
            match self.body.next().await {
                Some(Ok(chunk)) => {
                    let text = String::from_utf8_lossy(&chunk).into_owned();
                    self.raw.push_str(&text);
                    self.buf.push_str(&text);
                }
                _ => return None,
            }
        }
    }

    /// The next event (comments skipped).
    pub async fn next_event(&mut self) -> Option<Event> {
        loop {
            match self.next_item().await? {
                Item::Event(e) => return Some(e),
                Item::Comment(_) => continue,
            }
        }
    }

    /// Events until the stream closes (bounded by `within`).
    pub async fn collect(&mut self, within: Duration) -> Vec<Event> {
        let mut out = Vec::new();
        let res = tokio::time::timeout(within, async {
            while let Some(e) = self.next_event().await {
                out.push(e);
            }
        })
        .await;
        assert!(
            res.is_ok(),
            "stream not closed after {within:?}; got {} events",
            out.len()
        );
        out
    }
}

/// An event, as the backend HTTP tests name it.
pub type SseEvent = Event;

/// A subscription to a workload's log stream, with per-call time limits.
pub struct SseStream(Reader);

impl SseStream {
    /// Open `/v1/workloads/{id}/logs`, asserting a 200 `text/event-stream` answer.
    pub async fn open(app: &super::TestApp, id: &str) -> Self {
        Self::open_at(&app.client, &app.address, id).await
    }

    /// A stream from an answer to a log request made by the caller (its own headers,
    /// e.g. `Last-Event-ID`).
    pub fn from_response(res: reqwest::Response) -> Self {
        Self(Reader::new(res))
    }

    /// The same against a server at `base` (`http://host:port`).
    pub async fn open_at(client: &reqwest::Client, base: &str, id: &str) -> Self {
        let res = client
            .get(format!("{base}/v1/workloads/{id}/logs"))
            .send()
            .await
            .expect("SSE request");
        Self(Reader::new(res))
    }

    /// The next event; `None` once the server closed the stream. Panics when nothing
    /// arrives `within`.
    pub async fn next_event(&mut self, within: Duration) -> Option<Event> {
        tokio::time::timeout(within, self.0.next_event())
            .await
            .unwrap_or_else(|_| panic!("no SSE event within {within:?}"))
    }

    /// Read until `event: done`; returns the line events before it and the final
    /// status, and checks that the server then closes the stream.
    pub async fn until_done(&mut self, within: Duration) -> (Vec<Event>, String) {
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
