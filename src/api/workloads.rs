//! `/v1/workloads`: submit (sync and async), get, list, kill.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use serde::{Deserialize, Serialize};

use super::error::ErrorBody;
use super::{ok_json, parse_id, ApiError, AppState, Endpoint};
use crate::actors::store::{FindIdempotencyKey, GetWorkload, ListWorkloads};
use crate::actors::supervisor::{
    AwaitWorkload, KillWorkload, Submit, SubmitError, SubmitOutcome, Submitted,
};
use crate::config::Secret;
use crate::model::{
    IdempotencyKey, IdempotencyRecord, Isolation, Runtime, Status, SubmitKind, Workload,
    WorkloadId, WorkloadRequest, WorkloadRequestDto,
};
use crate::store::ListQuery;

/// The request header naming a client's idempotency key.
pub(super) const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The response header marking an answer replayed for an idempotency key.
pub(super) const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        Endpoint::new("/workloads")
            .post(submit_sync)
            .get(list)
            .build(),
    )
    .service(Endpoint::new("/workloads/async").post(submit_async).build())
    .service(
        Endpoint::new("/workloads/{id}")
            .get(get)
            .delete(kill)
            .build(),
    );
}

/// What a submission answers.
enum Answer {
    /// A new workload.
    Fresh(Box<Submitted>),
    /// The workload an earlier request with the same idempotency key created.
    Replay(IdempotencyRecord),
}

/// The request's `Idempotency-Key`, scoped to the token when auth is on.
fn idempotency_key(
    req: &HttpRequest,
    state: &AppState,
) -> Result<Option<IdempotencyKey>, ApiError> {
    let mut values = req.headers().get_all(IDEMPOTENCY_KEY);
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::BadRequest(
            "send at most one Idempotency-Key header".into(),
        ));
    }
    IdempotencyKey::parse(value.as_bytes(), state.token.as_ref().map(Secret::expose))
        .map(Some)
        .map_err(|e| ApiError::BadRequest(e.0))
}

/// Validate the body and hand it to the supervisor, unless its idempotency key is
/// remembered (then the earlier workload is replayed, or 422 for another request).
async fn submit(
    state: &AppState,
    req: &HttpRequest,
    body: WorkloadRequestDto,
    kind: SubmitKind,
) -> Result<Answer, ApiError> {
    let key = idempotency_key(req, state)?;
    let request =
        WorkloadRequest::try_from((body, &state.limits, &state.callbacks, &state.registries))
            .map_err(|e| ApiError::BadRequest(e.0))?;
    let Some(key) = key else {
        return match state
            .supervisor
            .send(Submit {
                request,
                kind,
                key: None,
            })
            .await??
        {
            SubmitOutcome::Accepted(s) => Ok(Answer::Fresh(s)),
            SubmitOutcome::Existing(_) => Err(ApiError::Internal(
                "a submission without a key was answered as a replay".into(),
            )),
        };
    };
    let fingerprint = request.fingerprint(kind);
    let not_before = chrono::Duration::from_std(state.idempotency_ttl)
        .ok()
        .and_then(|ttl| Utc::now().checked_sub_signed(ttl))
        .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC);
    let replay = |earlier: IdempotencyRecord| {
        if earlier.fingerprint == fingerprint {
            Ok(Answer::Replay(earlier))
        } else {
            Err(ApiError::from(SubmitError::IdempotencyMismatch))
        }
    };
    // The common retry is answered from the store; a retry racing the first request
    // is caught by the supervisor, which records the workload and key atomically.
    if let Some(earlier) = state
        .store
        .send(FindIdempotencyKey {
            key: key.clone(),
            not_before,
        })
        .await??
    {
        return replay(earlier);
    }
    match state
        .supervisor
        .send(Submit {
            request,
            kind,
            key: Some((key, not_before)),
        })
        .await??
    {
        SubmitOutcome::Accepted(s) => Ok(Answer::Fresh(s)),
        SubmitOutcome::Existing(earlier) => replay(earlier),
    }
}

/// The terminal record of `submitted` (the actor may be gone when the server stops:
/// then what is stored).
async fn terminal(
    state: &AppState,
    id: crate::model::WorkloadId,
    done: Option<tokio::sync::oneshot::Receiver<Workload>>,
) -> Result<Workload, ApiError> {
    if let Some(done) = done {
        if let Ok(w) = done.await {
            return Ok(w);
        }
    }
    Ok(state.store.send(GetWorkload(id)).await??)
}

/// Run a workload and answer when it is terminal.
#[utoipa::path(
    post,
    path = "/v1/workloads",
    tag = "workloads",
    request_body = WorkloadRequestDto,
    params(IdempotencyHeader),
    responses(
        (status = 200, description = "The terminal workload (completed, failed or killed)", body = Workload,
            headers(("Idempotent-Replayed" = String, description = "`true` when answered for an earlier request with the same Idempotency-Key"))),
        (status = 400, description = "Invalid body (the message names the field)", body = ErrorBody),
        (status = 413, description = "Body above max_body_bytes", body = ErrorBody),
        (status = 415, description = "Content-Type is not JSON", body = ErrorBody),
        (status = 422, description = "No backend can place it, or the Idempotency-Key was used for another request", body = ErrorBody),
        (status = 429, description = "Queue full; Retry-After says when to retry", body = ErrorBody),
        (status = 503, description = "Shutting down", body = ErrorBody),
    )
)]
async fn submit_sync(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<WorkloadRequestDto>,
) -> Result<HttpResponse, ApiError> {
    match submit(&state, &req, body.into_inner(), SubmitKind::Sync).await? {
        Answer::Fresh(submitted) => {
            let done = submitted
                .done
                .ok_or_else(|| ApiError::Internal("sync submission without a waiter".into()))?;
            Ok(ok_json(
                &terminal(&state, submitted.workload.id, Some(done)).await?,
            ))
        }
        Answer::Replay(earlier) => {
            // Like the original: wait for the terminal record.
            let id = earlier.workload_id;
            let done = state.supervisor.send(AwaitWorkload(id)).await?;
            let w = terminal(&state, id, Some(done)).await?;
            Ok(HttpResponse::Ok()
                .insert_header((IDEMPOTENT_REPLAYED, "true"))
                .json(&w))
        }
    }
}

/// Accept a workload and answer at once.
#[utoipa::path(
    post,
    path = "/v1/workloads/async",
    tag = "workloads",
    request_body = WorkloadRequestDto,
    params(IdempotencyHeader),
    responses(
        (status = 202, description = "Accepted (status pending); Location names it", body = Workload,
            headers(
                ("Location" = String, description = "/v1/workloads/{id}"),
                ("Idempotent-Replayed" = String, description = "`true` when answered for an earlier request with the same Idempotency-Key"))),
        (status = 400, description = "Invalid body (the message names the field)", body = ErrorBody),
        (status = 413, description = "Body above max_body_bytes", body = ErrorBody),
        (status = 415, description = "Content-Type is not JSON", body = ErrorBody),
        (status = 422, description = "No backend can place it, or the Idempotency-Key was used for another request", body = ErrorBody),
        (status = 429, description = "Queue full; Retry-After says when to retry", body = ErrorBody),
        (status = 503, description = "Shutting down", body = ErrorBody),
    )
)]
async fn submit_async(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<WorkloadRequestDto>,
) -> Result<HttpResponse, ApiError> {
    let (w, replayed) = match submit(&state, &req, body.into_inner(), SubmitKind::Async).await? {
        Answer::Fresh(submitted) => (submitted.workload, false),
        Answer::Replay(earlier) => (
            state.store.send(GetWorkload(earlier.workload_id)).await??,
            true,
        ),
    };
    let mut res = HttpResponse::Accepted();
    res.insert_header((header::LOCATION, format!("/v1/workloads/{}", w.id)));
    if replayed {
        res.insert_header((IDEMPOTENT_REPLAYED, "true"));
    }
    Ok(res.json(&w))
}

/// One workload.
#[utoipa::path(
    get,
    path = "/v1/workloads/{id}",
    tag = "workloads",
    params(("id" = WorkloadId, Path, description = "The workload id")),
    responses(
        (status = 200, description = "The workload", body = Workload),
        (status = 404, description = "Unknown id", body = ErrorBody),
    )
)]
async fn get(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    Ok(ok_json(&state.store.send(GetWorkload(id)).await??))
}

/// Kill a pending or running workload.
#[utoipa::path(
    delete,
    path = "/v1/workloads/{id}",
    tag = "workloads",
    params(("id" = WorkloadId, Path, description = "The workload id")),
    responses(
        (status = 200, description = "The workload, now killed", body = Workload),
        (status = 404, description = "Unknown id", body = ErrorBody),
        (status = 409, description = "Already terminal", body = ErrorBody),
        (status = 504, description = "Cluster: the node running it did not record the kill within cluster.kill_timeout_s", body = ErrorBody),
    )
)]
async fn kill(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    Ok(ok_json(&state.supervisor.send(KillWorkload(id)).await??))
}

/// Query parameters of the listing; unknown ones are rejected like unknown body fields.
/// Read as text and checked in [`ListQuery::try_from`] (one message per rule); the
/// `param` types are what the document promises.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// Page size, 1..=100 (default 20).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// Rows skipped (default 0).
    #[param(value_type = Option<i64>, minimum = 0)]
    offset: Option<String>,
    /// Only this status.
    #[param(value_type = Option<Status>)]
    status: Option<String>,
    /// Only this isolation class.
    #[param(value_type = Option<Isolation>)]
    isolation: Option<String>,
    /// Only this runtime.
    #[param(value_type = Option<Runtime>)]
    runtime: Option<String>,
}

/// The `Idempotency-Key` request header of submissions.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // Read from the request headers; this type only documents it.
struct IdempotencyHeader {
    /// A client's key (1..=255 visible ASCII characters): a retry with the same key
    /// and body within idempotency_ttl_s answers the same workload.
    #[param(rename = "Idempotency-Key")]
    idempotency_key: Option<String>,
}

/// A page of the listing, newest first.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Page {
    workloads: Vec<Workload>,
    /// Every workload matching the filters.
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

/// List workloads, newest first.
#[utoipa::path(
    get,
    path = "/v1/workloads",
    tag = "workloads",
    params(ListParams),
    responses(
        (status = 200, description = "A page of workloads", body = Page),
        (status = 400, description = "A bad query value or an unknown parameter", body = ErrorBody),
    )
)]
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
