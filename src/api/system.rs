//! Health, metrics, stats and the actor overview.

use actix_web::{web, HttpResponse};
use serde::Serialize;

use super::{ok_json, ApiError, AppState, Endpoint};
use crate::actors::log_broker::RestartBroker;
use crate::actors::store::{GetStats, RestartWriter};
use crate::actors::supervisor::{ActorInfo, ListActors, RestartBackendByName};
use crate::actors::Restarts;
use crate::store::queries::Stats;

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(Endpoint::new("/stats").get(stats).build())
        .service(Endpoint::new("/system/actors").get(actors).build())
        .service(
            Endpoint::new("/system/actors/{name}/restart")
                .post(restart)
                .build(),
        );
}

/// What `/readyz` answers.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Readiness {
    /// `ready`, `draining` or `unavailable`.
    status: &'static str,
    /// Why the server is not ready (absent when ready).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
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

/// 200 while the server accepts work; 503 with the reason while the store cannot
/// write or the server is draining. No token, no Host check.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "system",
    responses(
        (status = 200, description = "The server accepts work", body = Readiness),
        (status = 503, description = "The store cannot write, or the server is draining", body = Readiness)
    )
)]
pub(super) async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let r = &state.readiness;
    if r.draining.load(std::sync::atomic::Ordering::SeqCst) {
        return HttpResponse::ServiceUnavailable().json(Readiness {
            status: "draining",
            error: Some("the server is shutting down".into()),
        });
    }
    if !r.store.writable() {
        let cause = r.store.fault().unwrap_or_else(|| "storage failing".into());
        return HttpResponse::ServiceUnavailable().json(Readiness {
            status: "unavailable",
            error: Some(format!("the store cannot write: {cause}")),
        });
    }
    HttpResponse::Ok().json(Readiness {
        status: "ready",
        error: None,
    })
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

/// The actors and their restarts.
#[utoipa::path(
    get,
    path = "/v1/system/actors",
    tag = "system",
    responses((status = 200, description = "Every actor", body = Actors))
)]
async fn actors(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let mut list = own_actors(&state);
    list.extend(state.supervisor.send(ListActors).await?);
    Ok(ok_json(&Actors { actors: list }))
}

/// `POST /v1/system/actors/{name}/restart`: restart one long-lived actor; 200 with its
/// entry afterwards.
#[utoipa::path(
    post,
    path = "/v1/system/actors/{name}/restart",
    tag = "system",
    params(("name" = String, Path, description = "`store`, `log_broker` or `backend:<name>`")),
    responses(
        (status = 200, description = "The actor's entry after its restart", body = ActorInfo),
        (status = 404, description = "No actor of that name", body = super::error::ErrorBody),
        (status = 409, description = "The supervisor cannot be restarted", body = super::error::ErrorBody)
    )
)]
pub(super) async fn restart(
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
