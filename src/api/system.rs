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
        },
    ];
    list.extend(state.supervisor.send(ListActors).await?);
    Ok(ok_json(&json!({ "actors": list })))
}
