//! `/v1/workloads/{id}/logs` (SSE: replay, then live, then `done`) and `/logs/history`.

use std::cell::Cell;
use std::convert::Infallible;
use std::rc::Rc;

use actix::Addr;
use actix_web::http::{header, Method};
use actix_web::{web, HttpRequest, HttpResponse, Responder};
use actix_web_lab::sse;
use futures_util::stream::{self, Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::error::ErrorBody;
use super::{ok_json, parse_id, ApiError, AppState, Endpoint};
use crate::actors::log_broker::{CloseProvisional, LogBroker, LogEvent, Subscribe, Unsubscribe};
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
    let (lines, full) = page(&state.store, id, after, None, limit).await?;
    let next_after = full.then(|| lines.last().map(|l| l.seq)).flatten();
    Ok(ok_json(&History {
        workload_id: id,
        lines,
        next_after,
    }))
}

/// Most bytes of line text in one page (history or replay): a page of long lines
/// ends early, with `next_after` set, so one read never holds more.
const PAGE_BYTES: usize = 4 * 1024 * 1024;

/// One page of recorded lines (after `after`, below `before`), from the read pool, and
/// whether it is full (more may follow).
async fn page(
    store: &Addr<StoreActor>,
    id: WorkloadId,
    after: Option<i64>,
    before: Option<i64>,
    limit: i64,
) -> Result<(Vec<LogLine>, bool), ApiError> {
    Ok(store
        .send(GetLogs {
            id,
            after,
            before,
            limit,
            max_bytes: PAGE_BYTES,
        })
        .await??)
}

/// Lines per page of an SSE replay: the most a subscriber's replay holds in memory.
const REPLAY_PAGE: i64 = 256;

/// The recorded lines after `after` (and below `before`), as events, page by page:
/// the next page is read from the read pool when the previous one is sent, so memory
/// per subscriber stays one page whatever the log's size. `first` is a page read
/// already. `last` is set to each line's seq as it is sent. A failed read ends the
/// stream (the client resumes with Last-Event-ID).
fn replay(
    store: Addr<StoreActor>,
    id: WorkloadId,
    first: (Vec<LogLine>, bool),
    before: Option<i64>,
    last: Rc<Cell<Option<u64>>>,
) -> impl Stream<Item = sse::Event> {
    stream::unfold(Some(first), move |next| {
        let store = store.clone();
        let last = last.clone();
        async move {
            let (lines, more) = match next {
                Some(p) => p,
                None => {
                    let after = last.get().map(|s| s as i64);
                    match page(&store, id, after, before, REPLAY_PAGE).await {
                        Ok(p) => p,
                        Err(e) => {
                            log::warn!("workload {id}: log replay read failed: {e}");
                            return None;
                        }
                    }
                }
            };
            if lines.is_empty() {
                return None;
            }
            if let Some(l) = lines.last() {
                last.set(Some(l.seq));
            }
            // `None` reads the next page when this one is sent; an empty one ends.
            let next = if more {
                None
            } else {
                Some((Vec::new(), false))
            };
            Some((stream::iter(lines.into_iter().map(line_event)), next))
        }
    })
    .flatten()
}

fn line_event(l: LogLine) -> sse::Event {
    sse::Event::Data(sse::Data::new(l.line).id(l.seq.to_string()))
}

/// `done` carries the id after the last line, so a client that resumes from it (a
/// browser's EventSource reconnecting after missing or ignoring `done`) gets 204.
fn done_event(status: Status, next_seq: u64) -> sse::Event {
    sse::Event::Data(
        sse::Data::new(status.as_str())
            .event("done")
            .id(next_seq.to_string()),
    )
}

/// Unsubscribes when the response stream is dropped (client gone or stream over).
struct Subscribed {
    broker: Addr<LogBroker>,
    id: WorkloadId,
    key: u64,
    events: mpsc::Receiver<LogEvent>,
}

impl Drop for Subscribed {
    fn drop(&mut self) {
        self.broker.do_send(Unsubscribe {
            id: self.id,
            key: self.key,
        });
    }
}

fn live(sub: Subscribed, after: Option<i64>) -> impl Stream<Item = sse::Event> {
    let after = after.map(|a| a as u64);
    stream::unfold(Some(sub), move |state| async move {
        let mut sub = state?;
        loop {
            match sub.events.recv().await {
                Some(LogEvent::Line(l)) if after.is_some_and(|a| l.seq <= a) => continue,
                Some(LogEvent::Line(l)) => return Some((line_event(l), Some(sub))),
                Some(LogEvent::Done { status, next_seq }) => {
                    return Some((done_event(status, next_seq), None))
                }
                // Dropped by the broker for falling behind: end; the client resumes.
                None => return None,
            }
        }
    })
}

type Events = Box<dyn Stream<Item = sse::Event> + Unpin>;

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
    let first = page(&state.store, w.id, after, None, REPLAY_PAGE).await?;
    if after.is_some() && first.0.is_empty() {
        return Ok(Plan::NothingLeft);
    }
    let status = w.status;
    let last = Rc::new(Cell::new(after.map(|a| a as u64)));
    let seen = last.clone();
    let done = stream::once(async move { done_event(status, seen.get().map_or(0, |s| s + 1)) });
    Ok(Plan::Stream(Box::new(Box::pin(
        replay(state.store.clone(), w.id, first, None, last).chain(done),
    ))))
}

async fn plan(state: &AppState, id: WorkloadId, after: Option<i64>) -> Result<Plan, ApiError> {
    // 404 for unknown ids before anything is streamed.
    let w = state.store.send(GetWorkload(id)).await??;
    if w.status.is_terminal() {
        return finished(state, &w, after).await;
    }
    // Pending (queued, or recorded and not admitted yet) or running: subscribe at
    // once; the broker opens a provisional topic if admission has not opened one.
    let sub = state.broker.send(Subscribe(id)).await?;
    let sub_guard = Subscribed {
        broker: state.broker.clone(),
        id,
        key: sub.key,
        events: sub.events,
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
        (Vec::new(), false)
    } else {
        page(&state.store, id, after, Some(live_from), REPLAY_PAGE).await?
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
        Plan::Stream(events) => Ok(sse::Sse::from_stream(events.map(Ok::<_, Infallible>))
            .with_keep_alive(state.keepalive)
            .respond_to(&req)
            .map_into_boxed_body()),
    }
}
