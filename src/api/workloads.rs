//! `/v1/workloads`: submit (sync and async), get, list, kill.

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};

use super::{method_not_allowed, ok_json, parse_id, ApiError, AppState};
use crate::actors::store::{GetWorkload, ListWorkloads};
use crate::actors::supervisor::{KillWorkload, Submit, Submitted};
use crate::model::{Workload, WorkloadRequest, WorkloadRequestDto};
use crate::store::queries::ListQuery;

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/workloads")
            .route(web::post().to(submit_sync))
            .route(web::get().to(list))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/workloads/async")
            .route(web::post().to(submit_async))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/workloads/{id}")
            .route(web::get().to(get))
            .route(web::delete().to(kill))
            .default_service(web::to(method_not_allowed)),
    );
}

/// Validate the body and hand it to the supervisor.
async fn submit(
    state: &AppState,
    body: WorkloadRequestDto,
    wait: bool,
) -> Result<Submitted, ApiError> {
    let request = WorkloadRequest::try_from((body, &state.limits, &state.callbacks))
        .map_err(|e| ApiError::BadRequest(e.0))?;
    Ok(state.supervisor.send(Submit { request, wait }).await??)
}

async fn submit_sync(
    state: web::Data<AppState>,
    body: web::Json<WorkloadRequestDto>,
) -> Result<HttpResponse, ApiError> {
    let submitted = submit(&state, body.into_inner(), true).await?;
    let done = submitted
        .done
        .ok_or_else(|| ApiError::Internal("sync submission without a waiter".into()))?;
    let id = submitted.workload.id;
    match done.await {
        Ok(workload) => Ok(ok_json(&workload)),
        // The actor went away without a record (server stopping): answer what is stored.
        Err(_) => Ok(ok_json(&state.store.send(GetWorkload(id)).await??)),
    }
}

async fn submit_async(
    state: web::Data<AppState>,
    body: web::Json<WorkloadRequestDto>,
) -> Result<HttpResponse, ApiError> {
    let w = submit(&state, body.into_inner(), false).await?.workload;
    Ok(HttpResponse::Accepted()
        .insert_header((header::LOCATION, format!("/v1/workloads/{}", w.id)))
        .json(&w))
}

async fn get(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    Ok(ok_json(&state.store.send(GetWorkload(id)).await??))
}

async fn kill(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    Ok(ok_json(&state.supervisor.send(KillWorkload(id)).await??))
}

/// Query parameters of the listing; unknown ones are rejected like unknown body fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    limit: Option<String>,
    offset: Option<String>,
    status: Option<String>,
    isolation: Option<String>,
    runtime: Option<String>,
}

#[derive(Serialize)]
struct Page {
    workloads: Vec<Workload>,
    total: u64,
    limit: i64,
    offset: i64,
}

const MAX_LIMIT: i64 = 100;

fn number(name: &str, raw: Option<&str>, default: i64) -> Result<i64, ApiError> {
    match raw {
        None => Ok(default),
        Some(s) => s.parse::<i64>().map_err(|_| {
            ApiError::BadRequest(format!("{name} must be a non-negative integer, got {s:?}"))
        }),
    }
}

impl TryFrom<ListParams> for ListQuery {
    type Error = ApiError;

    fn try_from(p: ListParams) -> Result<Self, Self::Error> {
        let limit = number("limit", p.limit.as_deref(), 20)?;
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ApiError::BadRequest(format!(
                "limit must be between 1 and {MAX_LIMIT}, got {limit}"
            )));
        }
        let offset = number("offset", p.offset.as_deref(), 0)?;
        if offset < 0 {
            return Err(ApiError::BadRequest(format!(
                "offset must be >= 0, got {offset}"
            )));
        }
        let parse = |v: Option<String>| {
            v.map(|s| s.parse())
                .transpose()
                .map_err(ApiError::BadRequest)
        };
        Ok(ListQuery {
            status: parse(p.status)?,
            isolation: p
                .isolation
                .map(|s| s.parse())
                .transpose()
                .map_err(ApiError::BadRequest)?,
            runtime: p
                .runtime
                .map(|s| s.parse())
                .transpose()
                .map_err(ApiError::BadRequest)?,
            limit,
            offset,
        })
    }
}

async fn list(
    state: web::Data<AppState>,
    params: web::Query<ListParams>,
) -> Result<HttpResponse, ApiError> {
    let query = ListQuery::try_from(params.into_inner())?;
    let (limit, offset) = (query.limit, query.offset);
    let (workloads, total) = state.store.send(ListWorkloads(query)).await??;
    Ok(ok_json(&Page {
        workloads,
        total,
        limit,
        offset,
    }))
}
