//! Health, metrics, stats and the actor overview.

use actix_web::{web, HttpResponse};
use serde::Serialize;

use super::{ok_json, ApiError, AppState, Endpoint};
use crate::actors::store::GetStats;
use crate::actors::supervisor::{ActorInfo, ListActors};
use crate::store::queries::Stats;

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(Endpoint::new("/stats").get(stats).build())
        .service(Endpoint::new("/system/actors").get(actors).build());
}

/// What `/healthz` answers.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Health {
    /// Always `ok`: the server answers.
    status: &'static str,
}

/// What `/v1/system/actors` answers.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Actors {
    /// The store, the log broker, the supervisor and every backend actor.
    actors: Vec<ActorInfo>,
}

/// Liveness; no token, no Host check.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "system",
    responses((status = 200, description = "The server answers", body = Health))
)]
pub(super) async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok" })
}

/// Prometheus metrics; no token, no Host check.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "system",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain", body = String))
)]
pub(super) async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}

/// Counts and execution times.
#[utoipa::path(
    get,
    path = "/v1/stats",
    tag = "system",
    responses((status = 200, description = "Counts per status and isolation, p50/p95 per backend", body = Stats))
)]
async fn stats(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    Ok(ok_json(&state.store.send(GetStats).await??))
}

/// The actors and their restarts.
#[utoipa::path(
    get,
    path = "/v1/system/actors",
    tag = "system",
    responses((status = 200, description = "Every actor", body = Actors))
)]
async fn actors(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let mut list = vec![
        ActorInfo {
            name: "store".into(),
            state: if state.store.connected() {
                "running"
            } else {
                "stopped"
            },
            restarts: 0,
            last_error: None,
            pid: None,
        },
        ActorInfo {
            name: "log_broker".into(),
            state: if state.broker.connected() {
                "running"
            } else {
                "stopped"
            },
            restarts: 0,
            last_error: None,
            pid: None,
        },
    ];
    list.extend(state.supervisor.send(ListActors).await?);
    Ok(ok_json(&Actors { actors: list }))
}
