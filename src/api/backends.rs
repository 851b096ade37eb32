//! `/v1/backends`: the registry, and the operator's restart.

use actix_web::{web, HttpResponse};

use super::error::ErrorBody;
use super::{ok_json, ApiError, AppState, Endpoint};
use crate::actors::supervisor::{BackendInfo, ListBackends, RestartBackendByName};

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(Endpoint::new("/backends").get(list).build())
        .service(
            Endpoint::new("/backends/{name}/restart")
                .post(restart)
                .build(),
        );
}

/// The registered backends: health, load, restarts.
#[utoipa::path(
    get,
    path = "/v1/backends",
    tag = "backends",
    responses((status = 200, description = "Every registered backend", body = Vec<BackendInfo>))
)]
async fn list(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    Ok(ok_json(&state.supervisor.send(ListBackends).await?))
}

/// Restart a backend's actor (running work on it fails; queued work stays queued).
#[utoipa::path(
    post,
    path = "/v1/backends/{name}/restart",
    tag = "backends",
    params(("name" = String, Path, description = "The backend's registry name")),
    responses(
        (status = 200, description = "The backend after the restart", body = BackendInfo),
        (status = 404, description = "No backend by that name", body = ErrorBody),
    )
)]
async fn restart(
    state: web::Data<AppState>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = name.into_inner();
    match state
        .supervisor
        .send(RestartBackendByName(name.clone()))
        .await?
    {
        Some(info) => Ok(ok_json(&info)),
        None => Err(ApiError::NotFound(format!(
            "backend {name:?} is not registered"
        ))),
    }
}
