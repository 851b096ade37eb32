//! `/v1/workloads/{id}/logs` (SSE: replay, then live, then `done`) and `/logs/history`.

use std::convert::Infallible;
use std::time::Duration;

use actix::Addr;
use actix_web::{web, HttpRequest, HttpResponse, Responder};
use actix_web_lab::sse;
use futures_util::stream::{self, Stream, StreamExt};
use serde::Serialize;
use tokio::sync::mpsc;

use super::{method_not_allowed, ok_json, parse_id, ApiError, AppState};
use crate::actors::log_broker::{LogBroker, LogEvent, Subscribe, Subscription, Unsubscribe};
use crate::actors::store::{GetLogs, GetWorkload};
use crate::model::{LogLine, Status, WorkloadId};

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/workloads/{id}/logs")
            .route(web::get().to(stream_logs))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/workloads/{id}/logs/history")
            .route(web::get().to(history))
            .default_service(web::to(method_not_allowed)),
    );
}

#[derive(Serialize)]
struct History {
    workload_id: WorkloadId,
    lines: Vec<LogLine>,
}

async fn history(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    state.store.send(GetWorkload(id)).await??;
    let lines = replay(&state, id, None).await?;
    Ok(ok_json(&History {
        workload_id: id,
        lines,
    }))
}

/// Recorded lines after `after`, read behind every line the broker has handed over.
async fn replay(
    state: &AppState,
    id: WorkloadId,
    after: Option<u64>,
) -> Result<Vec<LogLine>, ApiError> {
    Ok(state
        .store
        .send(GetLogs {
            id,
            after,
            consistent: true,
        })
        .await??)
}

fn line_event(l: LogLine) -> sse::Event {
    sse::Event::Data(sse::Data::new(l.line).id(l.seq.to_string()))
}

fn done_event(status: Status) -> sse::Event {
    sse::Event::Data(sse::Data::new(status.as_str()).event("done"))
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

fn live(sub: Subscribed, after: Option<u64>) -> impl Stream<Item = sse::Event> {
    stream::unfold(Some(sub), move |state| async move {
        let mut sub = state?;
        loop {
            match sub.events.recv().await {
                Some(LogEvent::Line(l)) if after.is_some_and(|a| l.seq <= a) => continue,
                Some(LogEvent::Line(l)) => return Some((line_event(l), Some(sub))),
                Some(LogEvent::Done(status)) => return Some((done_event(status), None)),
                // Dropped by the broker for falling behind: end; the client resumes.
                None => return None,
            }
        }
    })
}

async fn stream_logs(
    state: web::Data<AppState>,
    id: web::Path<String>,
    req: HttpRequest,
) -> Result<impl Responder, ApiError> {
    let id = parse_id(&id)?;
    let after = match req.headers().get("Last-Event-ID") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::BadRequest("Last-Event-ID must be a log sequence number".into())
                })?,
        ),
    };
    // 404 for unknown ids before anything is streamed.
    state.store.send(GetWorkload(id)).await??;

    let mut attempts = 0;
    let events: Box<dyn Stream<Item = sse::Event> + Unpin> = loop {
        match state.broker.send(Subscribe(id)).await? {
            Subscription::Live {
                live_from,
                events,
                key,
            } => {
                let sub = Subscribed {
                    broker: state.broker.clone(),
                    id,
                    key,
                    events,
                };
                // Queued behind every line the broker numbered below `live_from`.
                let replay = replay(&state, id, after)
                    .await?
                    .into_iter()
                    .filter(move |l| l.seq < live_from);
                break Box::new(Box::pin(
                    stream::iter(replay.map(line_event)).chain(live(sub, after)),
                ));
            }
            Subscription::Closed => {
                let w = state.store.send(GetWorkload(id)).await??;
                if w.status.is_terminal() {
                    let replay = replay(&state, id, after).await?;
                    let done = stream::once(async move { done_event(w.status) });
                    break Box::new(Box::pin(
                        stream::iter(replay.into_iter().map(line_event)).chain(done),
                    ));
                }
                // Accepted but not admitted yet (start-up re-admission): wait briefly.
                attempts += 1;
                if attempts > 200 {
                    return Err(ApiError::Internal(format!(
                        "no log topic for workload {id}"
                    )));
                }
                actix_web::rt::time::sleep(Duration::from_millis(25)).await;
            }
        }
    };
    Ok(sse::Sse::from_stream(events.map(Ok::<_, Infallible>)).with_keep_alive(state.keepalive))
}
