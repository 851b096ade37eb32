//! `/v1/workloads/{id}/logs` (SSE: replay, then live, then `done`) and `/logs/history`.
//!
//! Pages of recorded lines (history and replay) are read *and rendered* (JSON, SSE
//! frames) on the store's log-read threads, so an actix worker only writes bytes;
//! live lines arrive framed by the broker, once for all subscribers.

use std::cell::Cell;
use std::convert::Infallible;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use actix::Addr;
use actix_web::body::{BodySize, MessageBody};
use actix_web::http::header::{self, CacheControl, CacheDirective, ContentEncoding};
use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures_util::stream::{self, Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::broadcast::Receiver;

use super::error::ErrorBody;
use super::{parse_id, ApiError, AppState, Endpoint};
use crate::actors::log_broker::{
    done_frame, encode_lines, CloseProvisional, LogBroker, LogEvent, Subscribe, Unsubscribe,
};
use crate::actors::store::{Flush, GetLogs, GetWorkload, StoreActor};
use crate::model::{LogLine, Status, Workload, WorkloadId};

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        Endpoint::new("/workloads/{id}/logs")
            .get(stream_logs)
            .build(),
    )
    .service(
        Endpoint::new("/workloads/{id}/logs/history")
            .get(history)
            .build(),
    );
}

/// Largest and default page of `/logs/history`.
const MAX_HISTORY_LIMIT: i64 = 10_000;
const DEFAULT_HISTORY_LIMIT: i64 = 1_000;

/// A log sequence number from a client (`Last-Event-ID`, `after`): 0..=i64::MAX, the
/// range the store keeps. Anything else is a 400 naming `what`.
fn seq(what: &str, raw: &str) -> Result<i64, ApiError> {
    raw.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| i64::try_from(n).ok())
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "{what} must be a log sequence number between 0 and {}, got {raw:?}",
                i64::MAX
            ))
        })
}

/// Query of `/logs/history`; unknown parameters are rejected like unknown body fields.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct HistoryParams {
    /// Only lines with a larger seq.
    #[param(value_type = Option<i64>, minimum = 0)]
    after: Option<String>,
    /// Most lines answered, 1..=10000 (default 1000).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 10000)]
    limit: Option<String>,
}

/// A page of recorded log lines, in seq order.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct History {
    workload_id: WorkloadId,
    lines: Vec<LogLine>,
    /// The last seq returned when the page is full (more may follow), else null.
    next_after: Option<u64>,
}

/// Recorded log lines, paged by seq.
#[utoipa::path(
    get,
    path = "/v1/workloads/{id}/logs/history",
    tag = "logs",
    params(("id" = WorkloadId, Path, description = "The workload id"), HistoryParams),
    responses(
        (status = 200, description = "A page of lines", body = History),
        (status = 400, description = "A bad after or limit", body = ErrorBody),
        (status = 404, description = "Unknown id", body = ErrorBody),
    )
)]
async fn history(
    state: web::Data<AppState>,
    id: web::Path<String>,
    params: web::Query<HistoryParams>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    let params = params.into_inner();
    let after = params
        .after
        .as_deref()
        .map(|a| seq("after", a))
        .transpose()?;
    let limit = match params.limit.as_deref() {
        None => DEFAULT_HISTORY_LIMIT,
        Some(raw) => raw
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=MAX_HISTORY_LIMIT).contains(l))
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "limit must be between 1 and {MAX_HISTORY_LIMIT}, got {raw:?}"
                ))
            })?,
    };
    state.store.send(GetWorkload(id)).await??;
    // Serialised where it is read: a page can be megabytes of JSON.
    let render = Box::new(move |lines: Vec<LogLine>, full: bool| {
        let next_after = full.then(|| lines.last().map(|l| l.seq)).flatten();
        serde_json::to_vec(&History {
            workload_id: id,
            lines,
            next_after,
        })
        .map(Bytes::from)
    });
    let body = state
        .store
        .send(GetLogs {
            id,
            after,
            before: None,
            limit,
            max_bytes: PAGE_BYTES,
            render,
        })
        .await??
        .map_err(|e| ApiError::Internal(format!("history page: {e}")))?;
    Ok(HttpResponse::Ok()
        .insert_header(header::ContentType::json())
        .body(body))
}

/// Most bytes of line text in one page (history or replay): a page of long lines
/// ends early, with `next_after` set, so one read never holds more.
const PAGE_BYTES: usize = 4 * 1024 * 1024;

/// Lines per page of an SSE replay: with [`PAGE_BYTES`], the most a subscriber's
/// replay holds in memory.
const REPLAY_PAGE: i64 = 256;

/// A page of an SSE replay, rendered on a log-read thread: its lines' events in one
/// chunk (written in one go).
struct ReplayPage {
    frames: Bytes,
    /// The seq of its last line (`None`: no line).
    last: Option<u64>,
    /// More may follow.
    full: bool,
}

impl ReplayPage {
    const END: Self = Self {
        frames: Bytes::new(),
        last: None,
        full: false,
    };
}

/// One replay page: the lines after `after` (below `before`), framed as events.
async fn replay_page(
    store: &Addr<StoreActor>,
    id: WorkloadId,
    after: Option<i64>,
    before: Option<i64>,
) -> Result<ReplayPage, ApiError> {
    let render = Box::new(|lines: Vec<LogLine>, full: bool| {
        Ok::<_, russe::Error>(ReplayPage {
            frames: encode_lines(&lines)?,
            last: lines.last().map(|l| l.seq),
            full,
        })
    });
    store
        .send(GetLogs {
            id,
            after,
            before,
            limit: REPLAY_PAGE,
            max_bytes: PAGE_BYTES,
            render,
        })
        .await??
        .map_err(|e| ApiError::Internal(format!("log replay page: {e}")))
}

/// The recorded lines after `after` (and below `before`), as events, one chunk per
/// page: the next page is read when the previous one is sent, so memory per subscriber
/// stays one page whatever the log's size. `first` is a page read already. `last` is
/// set to the seq of each page's last line as it is sent. A failed read ends the stream
/// (the client resumes with Last-Event-ID).
fn replay(
    store: Addr<StoreActor>,
    id: WorkloadId,
    first: ReplayPage,
    before: Option<i64>,
    last: Rc<Cell<Option<u64>>>,
) -> impl Stream<Item = Bytes> {
    stream::unfold(Some(first), move |next| {
        let store = store.clone();
        let last = last.clone();
        async move {
            let page = match next {
                Some(p) => p,
                None => {
                    let after = last.get().map(|s| s as i64);
                    match replay_page(&store, id, after, before).await {
                        Ok(p) => p,
                        Err(e) => {
                            log::warn!("workload {id}: log replay read failed: {e}");
                            return None;
                        }
                    }
                }
            };
            last.set(Some(page.last?));
            // `None` reads the next page when this one is sent; an empty one ends.
            let next = (!page.full).then_some(ReplayPage::END);
            Some((page.frames, next))
        }
    })
}

/// The `done` event, or the end of the stream should it not encode (the client
/// resumes and gets 204).
fn done(status: Status, next_seq: u64) -> Option<Bytes> {
    done_frame(status, next_seq)
        .map_err(|e| log::error!("cannot frame the done event: {e}"))
        .ok()
}

/// Unsubscribes when the response stream is dropped (client gone or stream over).
struct Subscribed {
    broker: Addr<LogBroker>,
    id: WorkloadId,
    key: u64,
    events: Receiver<LogEvent>,
    /// Events missed by falling behind.
    missed: u64,
}

impl Drop for Subscribed {
    fn drop(&mut self) {
        self.broker.do_send(Unsubscribe {
            id: self.id,
            key: self.key,
            missed: self.missed,
        });
    }
}

/// The live events: the frames the broker made, as they are (no copy).
fn live(sub: Subscribed, after: Option<i64>) -> impl Stream<Item = Bytes> {
    let after = after.map(|a| a as u64);
    stream::unfold(Some(sub), move |state| async move {
        let mut sub = state?;
        loop {
            match sub.events.recv().await {
                Ok(LogEvent::Line(f)) if after.is_some_and(|a| f.seq <= a) => continue,
                Ok(LogEvent::Line(f)) => return Some((f.bytes, Some(sub))),
                Ok(LogEvent::Done { status, next_seq }) => {
                    return done(status, next_seq).map(|d| (d, None))
                }
                // Fell behind: end; the client resumes with Last-Event-ID.
                Err(RecvError::Lagged(n)) => {
                    sub.missed = n;
                    return None;
                }
                // Disconnected by the broker (a restart): the client resumes.
                Err(RecvError::Closed) => return None,
            }
        }
    })
}

type Events = Box<dyn Stream<Item = Bytes> + Unpin>;

/// The `text/event-stream` body: frames encoded already, written as they come (the
/// HTTP/1 dispatcher puts every frame ready at one wake-up into one write), and a
/// `: keep-alive` comment when a tick of `keep_alive` finds nothing to send.
struct EventStream {
    frames: Events,
    keep_alive: tokio::time::Interval,
}

const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

impl EventStream {
    fn respond(frames: Events, keep_alive: std::time::Duration) -> HttpResponse {
        let mut keep_alive = tokio::time::interval(keep_alive);
        keep_alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        HttpResponse::Ok()
            .content_type("text/event-stream")
            .insert_header(ContentEncoding::Identity)
            .insert_header(CacheControl(vec![CacheDirective::NoCache]))
            .body(EventStream { frames, keep_alive })
    }
}

impl MessageBody for EventStream {
    type Error = Infallible;

    fn size(&self) -> BodySize {
        BodySize::Stream
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = this.frames.poll_next_unpin(cx) {
            return Poll::Ready(frame.map(Ok));
        }
        if this.keep_alive.poll_tick(cx).is_ready() {
            return Poll::Ready(Some(Ok(Bytes::from_static(KEEP_ALIVE))));
        }
        Poll::Pending
    }
}

/// What a log stream request gets.
enum Plan {
    /// A terminal workload with nothing after the client's `Last-Event-ID`: 204, so an
    /// EventSource stops reconnecting.
    NothingLeft,
    /// The event stream.
    Stream(Events),
}

/// A terminal workload: replay after `after`, then `done` (or nothing left at all).
async fn finished(state: &AppState, w: &Workload, after: Option<i64>) -> Result<Plan, ApiError> {
    let first = replay_page(&state.store, w.id, after, None).await?;
    if after.is_some() && first.last.is_none() {
        return Ok(Plan::NothingLeft);
    }
    let status = w.status;
    let last = Rc::new(Cell::new(after.map(|a| a as u64)));
    let seen = last.clone();
    let end = stream::once(async move { done(status, seen.get().map_or(0, |s| s + 1)) })
        .filter_map(std::future::ready);
    Ok(Plan::Stream(Box::new(Box::pin(
        replay(state.store.clone(), w.id, first, None, last).chain(end),
    ))))
}

async fn plan(state: &AppState, id: WorkloadId, after: Option<i64>) -> Result<Plan, ApiError> {
    // 404 for unknown ids before anything is streamed.
    let w = state.store.send(GetWorkload(id)).await??;
    if w.status.is_terminal() {
        return finished(state, &w, after).await;
    }
    // Another node's: followed from the shared table.
    if let Some(f) = state.follower.as_ref().filter(|f| f.is_remote(&w)) {
        return Ok(Plan::Stream(Box::new(Box::pin(
            f.logs(id, after.map(|a| a as u64)),
        ))));
    }
    // Pending (queued, or recorded and not admitted yet) or running: subscribe at
    // once; the broker opens a provisional topic if admission has not opened one.
    let sub = state.broker.send(Subscribe(id)).await?;
    let sub_guard = Subscribed {
        broker: state.broker.clone(),
        id,
        key: sub.key,
        events: sub.events,
        missed: 0,
    };
    // It may have ended between the read and the subscription, without a topic to
    // close: then the record is terminal now, and any provisional topic is ours.
    let now = state.store.send(GetWorkload(id)).await??;
    if now.status.is_terminal() {
        drop(sub_guard);
        state.broker.do_send(CloseProvisional {
            id,
            status: now.status,
        });
        return finished(state, &now, after).await;
    }
    // The broker handed every line below `live_from` to the store before answering:
    // once the writer has committed what was queued before this barrier, the read
    // pool sees all of them.
    state.store.send(Flush).await??;
    let live_from = i64::try_from(sub.live_from).unwrap_or(i64::MAX);
    let first = if after.is_some_and(|a| a + 1 >= live_from) {
        ReplayPage::END
    } else {
        replay_page(&state.store, id, after, Some(live_from)).await?
    };
    let last = Rc::new(Cell::new(after.map(|a| a as u64)));
    Ok(Plan::Stream(Box::new(Box::pin(
        replay(state.store.clone(), id, first, Some(live_from), last).chain(live(sub_guard, after)),
    ))))
}

/// The log as Server-Sent Events: every recorded line (after `Last-Event-ID`), then
/// live lines, then one `done` event whose data is the terminal status.
#[utoipa::path(
    get,
    path = "/v1/workloads/{id}/logs",
    tag = "logs",
    params(
        ("id" = WorkloadId, Path, description = "The workload id"),
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this seq (what an EventSource sends on reconnect)"),
    ),
    responses(
        (status = 200, description = "An event stream: `id: <seq>` + `data: <line>` per line, `: keep-alive` comments when idle, and finally `event: done` with the status as data and the next seq as id", content_type = "text/event-stream", body = String),
        (status = 204, description = "The workload is terminal and nothing is left after Last-Event-ID (an EventSource stops reconnecting)"),
        (status = 400, description = "A bad Last-Event-ID", body = ErrorBody),
        (status = 404, description = "Unknown id", body = ErrorBody),
    )
)]
async fn stream_logs(
    state: web::Data<AppState>,
    id: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    let after = match req.headers().get("Last-Event-ID") {
        None => None,
        // An EventSource without an id sends none; an empty one means the same.
        Some(v) if v.as_bytes().iter().all(u8::is_ascii_whitespace) => None,
        Some(v) => Some(seq(
            "Last-Event-ID",
            v.to_str().map_err(|_| {
                ApiError::BadRequest("Last-Event-ID must be a log sequence number".into())
            })?,
        )?),
    };
    if req.method() == Method::HEAD {
        // Headers only: no subscription for a response without a body.
        let w = state.store.send(GetWorkload(id)).await??;
        if w.status.is_terminal() {
            if let Plan::NothingLeft = finished(&state, &w, after).await? {
                return Ok(HttpResponse::NoContent().finish());
            }
        }
        return Ok(HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, "text/event-stream"))
            .insert_header((header::CACHE_CONTROL, "no-cache"))
            .finish());
    }
    match plan(&state, id, after).await? {
        Plan::NothingLeft => Ok(HttpResponse::NoContent().finish()),
        Plan::Stream(events) => Ok(EventStream::respond(events, state.keepalive)),
    }
}
