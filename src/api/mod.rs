//! The HTTP layer. Handlers validate input into domain types and send messages to
//! actors; they never touch the database or a backend themselves.

mod backends;
mod deliveries;
pub mod error;
mod logs;
mod system;
mod workloads;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Addr;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, HttpResponse, ResponseError};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use error::ApiError;

use crate::actors::log_broker::LogBroker;
use crate::actors::store::StoreActor;
use crate::actors::supervisor::Supervisor;
use crate::config::Secret;
use crate::metrics::Metrics;
use crate::model::{Limits, WorkloadId};
use crate::webhooks::policy::CallbackPolicy;

/// What handlers share: actor addresses and settings. Read-only.
pub struct AppState {
    /// Registry, routing, admission.
    pub supervisor: Addr<Supervisor>,
    /// Persistence.
    pub store: Addr<StoreActor>,
    /// Log topics.
    pub broker: Addr<LogBroker>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Request limits.
    pub limits: Limits,
    /// Which `callback_url`s submissions may carry.
    pub callbacks: CallbackPolicy,
    /// Bearer token for `/v1/*` when auth is on.
    pub token: Option<Secret>,
    /// Idle SSE keep-alive period.
    pub keepalive: Duration,
    /// Largest accepted body.
    pub max_body_bytes: usize,
}

/// Register every route on `cfg`.
pub fn configure(cfg: &mut web::ServiceConfig, state: web::Data<AppState>) {
    let json = web::JsonConfig::default()
        .limit(state.max_body_bytes)
        .content_type_required(true)
        .content_type(|mime| mime.subtype() == "json" || mime.suffix().is_some_and(|s| s == "json"))
        .error_handler(|err, _| ApiError::from(err).into());
    let query = web::QueryConfig::default().error_handler(|err, _| {
        ApiError::BadRequest(format!("invalid query string: {err}")).into()
    });
    let path = web::PathConfig::default()
        .error_handler(|err, _| ApiError::NotFound(format!("not found: {err}")).into());
    cfg.app_data(state.clone())
        .app_data(json)
        .app_data(query)
        .app_data(path)
        .app_data(web::PayloadConfig::default().limit(state.max_body_bytes))
        .service(
            web::resource("/healthz")
                .route(web::get().to(system::healthz))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/metrics")
                .route(web::get().to(system::metrics))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::scope("/v1")
                .wrap(from_fn(require_token))
                .configure(workloads::routes)
                .configure(deliveries::routes)
                .configure(logs::routes)
                .configure(backends::routes)
                .configure(system::routes),
        )
        .default_service(web::to(not_found));
}

async fn method_not_allowed() -> HttpResponse {
    ApiError::MethodNotAllowed.error_response()
}

async fn not_found() -> HttpResponse {
    ApiError::NotFound("no such route".into()).error_response()
}

/// A workload id from a path segment; anything that is not a ULID is an unknown id.
fn parse_id(raw: &str) -> Result<WorkloadId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::NotFound("workload not found".into()))
}

fn digest(s: &[u8]) -> [u8; 32] {
    Sha256::digest(s).into()
}

/// Bearer-token check on `/v1/*` (constant time: both sides are hashed to equal length
/// first, then compared with `subtle`).
async fn require_token(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let expected = req
        .app_data::<web::Data<AppState>>()
        .and_then(|s| s.token.clone());
    if let Some(token) = expected {
        let given = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let ok: bool = digest(given.as_bytes())
            .ct_eq(&digest(token.expose().as_bytes()))
            .into();
        if !ok || given.is_empty() {
            let res = ApiError::Unauthorized.error_response();
            return Ok(req.into_response(res).map_into_right_body());
        }
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_left_body)
}

/// Per-request metrics (by route pattern, never by raw path).
pub async fn track(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = req.method().to_string();
    let res = next.call(req).await?;
    let route = res
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_string());
    if let Some(state) = res.request().app_data::<web::Data<AppState>>() {
        state
            .metrics
            .http_requests
            .with_label_values(&[route.as_str(), method.as_str(), res.status().as_str()])
            .inc();
        state
            .metrics
            .http_duration
            .with_label_values(&[route.as_str()])
            .observe(started.elapsed().as_secs_f64());
    }
    Ok(res)
}

/// The JSON answer for a value.
fn ok_json<T: serde::Serialize>(value: &T) -> HttpResponse {
    HttpResponse::Ok().json(value)
}
