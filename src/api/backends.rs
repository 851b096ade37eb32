//! `/v1/backends`: the registry, and the operator's restart.

use actix_web::{web, HttpResponse};

use super::{ok_json, ApiError, AppState, Endpoint};
use crate::actors::supervisor::{ListBackends, RestartBackendByName};

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(Endpoint::new("/backends").get(list).build())
        .service(
            Endpoint::new("/backends/{name}/restart")
                .post(restart)
                .build(),
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
