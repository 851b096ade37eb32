//! `/v1/backends`: the registry, and the operator's restart.

use actix_web::{web, HttpResponse};

use super::{method_not_allowed, ok_json, ApiError, AppState};
use crate::actors::supervisor::{ListBackends, RestartBackendByName};

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/backends")
            .route(web::get().to(list))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/backends/{name}/restart")
            .route(web::post().to(restart))
            .default_service(web::to(method_not_allowed)),
    );
}

async fn list(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    Ok(ok_json(&state.supervisor.send(ListBackends).await?))
}

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
