//! Following a workload's log stream (SSE) to its end, across dropped connections.

use std::pin::Pin;
use std::time::Duration;

use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures_util::{Stream, StreamExt};
use reqwest::Method;

use super::{causes, Client, ClientError};
use crate::model::{Status, WorkloadId};

/// Consecutive failed reconnections after which a stream is given up.
const MAX_RESUME_ATTEMPTS: u32 = 8;
/// First pause before reconnecting; doubled after each failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between two reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(3);

/// What a [`LogStream`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEvent {
    /// One log line (`data` fields joined with `\n`), with its sequence number.
    Line {
        /// Position in the workload's log.
        seq: u64,
        /// The text.
        line: String,
    },
    /// The connection dropped before `done` and a new one resumed after the last line
    /// received; nothing was lost or repeated.
    Resumed {
        /// The last sequence number received before the drop (`None`: no line yet).
        after: Option<u64>,
    },
    /// The workload is terminal with this status; the stream is over.
    Done(Status),
}

type Events = Pin<Box<dyn Stream<Item = Result<Event, EventStreamError<reqwest::Error>>> + Send>>;

/// What connecting to the log endpoint gave.
enum Connected {
    /// An event stream.
    Stream(Events),
    /// 204 No Content: the workload is terminal and nothing is left after `last`.
    NothingLeft,
}

/// The connection state of a [`LogStream`].
enum Phase {
    /// Never connected: a failure here is reported as it is (refused, 404, 401...).
    Start,
    /// Reading events from an open connection.
    Open(Events),
    /// The connection dropped; `failures` reconnections have failed since.
    Lost {
        /// Consecutive failed attempts.
        failures: u32,
        /// Why the last one failed (reported when giving up).
        cause: String,
    },
    /// `done` was received.
    Finished,
}

/// A workload's log stream: replay of the recorded lines, then live lines, then
/// [`LogEvent::Done`]. When the connection drops before `done` (server restart, a
/// proxy, a subscriber that fell behind and was disconnected), it reconnects with
/// `Last-Event-ID` set to the last sequence number received, so every line arrives
/// exactly once and in order.
///
/// Invariant: yielded line sequence numbers strictly increase.
pub struct LogStream {
    client: Client,
    id: WorkloadId,
    last: Option<u64>,
    phase: Phase,
}

impl LogStream {
    pub(super) fn new(client: Client, id: WorkloadId, after: Option<u64>) -> Self {
        Self {
            client,
            id,
            last: after,
            phase: Phase::Start,
        }
    }

    /// The last sequence number received (or the `after` it started from).
    pub fn last_seq(&self) -> Option<u64> {
        self.last
    }

    /// The next event; `Ok(None)` after [`LogEvent::Done`]. An error from the first
    /// connection is returned at once; later drops are resumed, and an error is
    /// returned only when the server answers a resumption with an error status or
    /// [`MAX_RESUME_ATTEMPTS`] reconnections in a row fail.
    pub async fn next(&mut self) -> Result<Option<LogEvent>, ClientError> {
        loop {
            match &mut self.phase {
                Phase::Finished => return Ok(None),
                Phase::Start => match self.connect().await? {
                    Connected::Stream(events) => self.phase = Phase::Open(events),
                    Connected::NothingLeft => return self.finished().await.map(Some),
                },
                Phase::Lost { failures, cause } => {
                    if *failures >= MAX_RESUME_ATTEMPTS {
                        return Err(ClientError::StreamLost {
                            id: self.id,
                            cause: cause.clone(),
                        });
                    }
                    let pause = FIRST_BACKOFF
                        .saturating_mul(1 << (*failures).min(16))
                        .min(MAX_BACKOFF);
                    tokio::time::sleep(pause).await;
                    let failures = *failures;
                    match self.connect().await {
                        Ok(Connected::Stream(events)) => {
                            self.phase = Phase::Open(events);
                            return Ok(Some(LogEvent::Resumed { after: self.last }));
                        }
                        // It ended while we were away, after the last line we got.
                        Ok(Connected::NothingLeft) => return self.finished().await.map(Some),
                        // The server is there and refuses: resuming cannot help.
                        Err(e @ ClientError::Api { .. }) => return Err(e),
                        Err(e) => {
                            self.phase = Phase::Lost {
                                failures: failures + 1,
                                cause: e.to_string(),
                            };
                        }
                    }
                }
                Phase::Open(events) => match events.next().await {
                    Some(Ok(event)) => {
                        if let Some(e) = self.accept(event)? {
                            return Ok(Some(e));
                        }
                    }
                    Some(Err(e)) => {
                        self.phase = Phase::Lost {
                            failures: 0,
                            cause: causes(&e),
                        };
                    }
                    None => {
                        self.phase = Phase::Lost {
                            failures: 0,
                            cause: "the server closed the stream before `done`".into(),
                        };
                    }
                },
            }
        }
    }

    /// Turn an SSE event into a [`LogEvent`]; `None` for events to skip.
    fn accept(&mut self, event: Event) -> Result<Option<LogEvent>, ClientError> {
        match event.event.as_str() {
            "done" => {
                let status: Status = event.data.trim().parse().map_err(|_| {
                    ClientError::Decode(format!("unknown final status {:?}", event.data))
                })?;
                self.phase = Phase::Finished;
                Ok(Some(LogEvent::Done(status)))
            }
            "message" | "" => {
                let seq: u64 = event.id.trim().parse().map_err(|_| {
                    ClientError::Decode(format!("log event without a sequence id: {:?}", event.id))
                })?;
                // A resumed stream starts after `last`; anything at or below it is a
                // repeat and is dropped.
                if self.last.is_some_and(|last| seq <= last) {
                    return Ok(None);
                }
                self.last = Some(seq);
                Ok(Some(LogEvent::Line {
                    seq,
                    line: event.data,
                }))
            }
            _ => Ok(None),
        }
    }

    /// The stream is over without a `done` event (the server answered 204): the final
    /// status comes from the workload record.
    async fn finished(&mut self) -> Result<LogEvent, ClientError> {
        let w = self.client.get(self.id).await?;
        self.phase = Phase::Finished;
        Ok(LogEvent::Done(w.body.status))
    }

    async fn connect(&self) -> Result<Connected, ClientError> {
        let mut req = self
            .client
            .request(Method::GET, &format!("/v1/workloads/{}/logs", self.id))
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(last) = self.last {
            req = req.header("Last-Event-ID", last.to_string());
        }
        let res = self.client.send(req).await?;
        if res.status() == reqwest::StatusCode::NO_CONTENT {
            return Ok(Connected::NothingLeft);
        }
        let is_sse = res
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("text/event-stream"));
        if !is_sse {
            return Err(ClientError::Decode(
                "the log endpoint did not answer an event stream".into(),
            ));
        }
        Ok(Connected::Stream(Box::pin(
            res.bytes_stream().eventsource(),
        )))
    }
}
