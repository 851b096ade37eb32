//! Health, metrics, stats and the actor overview.

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::{ok_json, ApiError, AppState, Endpoint};
use crate::actors::log_broker::RestartBroker;
use crate::actors::store::{GetStats, RestartWriter};
use crate::actors::supervisor::{ActorInfo, ListActors, RestartBackendByName};
use crate::actors::Restarts;

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(Endpoint::new("/stats").get(stats).build())
        .service(Endpoint::new("/system/actors").get(actors).build())
        .service(
            Endpoint::new("/system/actors/{name}/restart")
                .post(restart)
                .build(),
        );
}

pub(super) async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// 200 while the server accepts work; 503 with the reason while the store cannot
/// write or the server is draining.
pub(super) async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let r = &state.readiness;
    if r.draining.load(std::sync::atomic::Ordering::SeqCst) {
        return HttpResponse::ServiceUnavailable()
            .json(json!({"status": "draining", "error": "the server is shutting down"}));
    }
    if !r.store.writable() {
        let cause = r.store.fault().unwrap_or_else(|| "storage failing".into());
        return HttpResponse::ServiceUnavailable().json(json!({
            "status": "unavailable",
            "error": format!("the store cannot write: {cause}")
        }));
    }
    HttpResponse::Ok().json(json!({"status": "ready"}))
}

pub(super) async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}

async fn stats(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    Ok(ok_json(&state.store.send(GetStats).await??))
}

/// The store's and the broker's entries (the supervisor reports itself and the
/// backends).
fn own_actors(state: &AppState) -> Vec<ActorInfo> {
    let entry = |name: &str, connected: bool, r: &Restarts| ActorInfo {
        name: name.into(),
        state: if connected { "running" } else { "stopped" },
        restarts: r.count(),
        last_error: r.last_error(),
        pid: None,
    };
    vec![
        entry("store", state.store.connected(), &state.restarts.store),
        entry(
            "log_broker",
            state.broker.connected(),
            &state.restarts.broker,
        ),
    ]
}

async fn actors(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let mut list = own_actors(&state);
    list.extend(state.supervisor.send(ListActors).await?);
    Ok(ok_json(&json!({ "actors": list })))
}

/// `POST /v1/system/actors/{name}/restart`: restart one long-lived actor; 200 with its
/// entry afterwards.
async fn restart(
    state: web::Data<AppState>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    const WHY: &str = "restart requested by operator";
    let name = name.into_inner();
    match name.as_str() {
        "store" => state.store.send(RestartWriter(WHY.into())).await?,
        "log_broker" => state.broker.send(RestartBroker(WHY.into())).await?,
        "supervisor" => {
            return Err(ApiError::Conflict(
                "the supervisor cannot be restarted while the server runs".into(),
            ))
        }
        other => match other.strip_prefix("backend:") {
            Some(backend) => {
                if state
                    .supervisor
                    .send(RestartBackendByName(backend.to_string()))
                    .await?
                    .is_none()
                {
                    return Err(ApiError::NotFound(format!("no actor named {name:?}")));
                }
            }
            None => return Err(ApiError::NotFound(format!("no actor named {name:?}"))),
        },
    }
    let mut list = own_actors(&state);
    list.extend(state.supervisor.send(ListActors).await?);
    list.into_iter()
        .find(|a| a.name == name)
        .map(|a| ok_json(&a))
        .ok_or_else(|| ApiError::NotFound(format!("no actor named {name:?}")))
}
