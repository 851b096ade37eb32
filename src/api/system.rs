//! Health, metrics, stats and the actor overview.

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::{ok_json, ApiError, AppState, Endpoint};
use crate::actors::store::GetStats;
use crate::actors::supervisor::{ActorInfo, ListActors};

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(Endpoint::new("/stats").get(stats).build())
        .service(Endpoint::new("/system/actors").get(actors).build());
}

pub(super) async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

pub(super) async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}

async fn stats(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    Ok(ok_json(&state.store.send(GetStats).await??))
}

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
    Ok(ok_json(&json!({ "actors": list })))
}
