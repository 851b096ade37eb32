//! `/v1/workloads/{id}/deliveries`: the completion webhook of a workload and every
//! attempt made to deliver it.

use actix_web::{web, HttpResponse};

use super::error::ErrorBody;
use super::{ok_json, parse_id, ApiError, AppState, Endpoint};
use crate::actors::store::GetDeliveries;
use crate::model::{Deliveries, WorkloadId};

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        Endpoint::new("/workloads/{id}/deliveries")
            .get(list)
            .build(),
    );
}

/// The completion webhook of a workload and every attempt to deliver it.
#[utoipa::path(
    get,
    path = "/v1/workloads/{id}/deliveries",
    tag = "workloads",
    params(("id" = WorkloadId, Path, description = "The workload id")),
    responses(
        (status = 200, description = "The delivery (all fields null and no attempts without a callback_url)", body = Deliveries),
        (status = 404, description = "Unknown id", body = ErrorBody),
    )
)]
async fn list(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    Ok(ok_json(&state.store.send(GetDeliveries(id)).await??))
}
