//! `/v1/workloads/{id}/deliveries`: the completion webhook of a workload and every
//! attempt made to deliver it.

use actix_web::{web, HttpResponse};

use super::{ok_json, parse_id, ApiError, AppState, Endpoint};
use crate::actors::store::GetDeliveries;

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        Endpoint::new("/workloads/{id}/deliveries")
            .get(list)
            .build(),
    );
}

async fn list(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    Ok(ok_json(&state.store.send(GetDeliveries(id)).await??))
}
