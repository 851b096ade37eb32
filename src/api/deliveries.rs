//! `/v1/workloads/{id}/deliveries`: the completion webhook of a workload and every
//! attempt made to deliver it.

use actix_web::{web, HttpResponse};

use super::{method_not_allowed, ok_json, parse_id, ApiError, AppState};
use crate::actors::store::GetDeliveries;

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/workloads/{id}/deliveries")
            .route(web::get().to(list))
            .default_service(web::to(method_not_allowed)),
    );
}

async fn list(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    Ok(ok_json(&state.store.send(GetDeliveries(id)).await??))
}
