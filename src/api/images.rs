//! `/v1/images`: the OCI image store (pre-pull, list, remove).

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};

use super::error::ErrorBody;
use super::{ok_json, ApiError, AppState, Endpoint};
use crate::actors::images::{ListImages, PullImage, RemoveImage};
use crate::images::{ImageInfo, ImageList};
use crate::model::{is_sha256_digest, ImageRef};

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(Endpoint::new("/images").get(list).post(pull).build())
        .service(Endpoint::new("/images/{digest}").delete(remove).build());
}

/// The body of `POST /v1/images`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PullRequest {
    /// The image reference to pull.
    image: Option<String>,
}

/// What `POST /v1/images` answers: the pull runs in the background.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct PullStarted {
    /// The normalised reference.
    reference: String,
    /// Always `pulling`.
    status: &'static str,
}

/// Pull an image into the store (in the background).
#[utoipa::path(
    post,
    path = "/v1/images",
    tag = "images",
    request_body = PullRequest,
    responses(
        (status = 202, description = "The pull started (or was already running)", body = PullStarted),
        (status = 400, description = "No or a bad reference, or a registry images.allowed_registries does not allow", body = ErrorBody),
        (status = 415, description = "Content-Type is not JSON", body = ErrorBody),
        (status = 422, description = "The image store is not available on this server", body = ErrorBody),
    )
)]
async fn pull(
    state: web::Data<AppState>,
    body: web::Json<PullRequest>,
) -> Result<HttpResponse, ApiError> {
    let text = body
        .into_inner()
        .image
        .ok_or_else(|| ApiError::BadRequest("image is required".into()))?;
    let reference = ImageRef::parse(&text).map_err(ApiError::BadRequest)?;
    state
        .registries
        .check(&reference)
        .map_err(ApiError::BadRequest)?;
    let key = reference.key();
    state.images.send(PullImage(reference)).await??;
    Ok(HttpResponse::Accepted()
        .insert_header((header::LOCATION, "/v1/images"))
        .json(PullStarted {
            reference: key,
            status: "pulling",
        }))
}

/// The images in the store, the pulls in progress and the disk use.
#[utoipa::path(
    get,
    path = "/v1/images",
    tag = "images",
    responses(
        (status = 200, description = "The store", body = ImageList),
        (status = 422, description = "The image store is not available on this server", body = ErrorBody),
    )
)]
async fn list(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    Ok(ok_json(&state.images.send(ListImages).await??))
}

/// Remove an image no workload holds.
#[utoipa::path(
    delete,
    path = "/v1/images/{digest}",
    tag = "images",
    params(("digest" = String, Path, description = "sha256:<64 hex digits>")),
    responses(
        (status = 200, description = "The removed image", body = ImageInfo),
        (status = 404, description = "Not in the store", body = ErrorBody),
        (status = 409, description = "A workload holds it", body = ErrorBody),
        (status = 422, description = "The image store is not available on this server", body = ErrorBody),
    )
)]
async fn remove(
    state: web::Data<AppState>,
    digest: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let digest = digest.into_inner();
    if !is_sha256_digest(&digest) {
        return Err(ApiError::NotFound(format!(
            "image {digest:?} is not in the store (expected sha256:<64 hex digits>)"
        )));
    }
    Ok(ok_json(&state.images.send(RemoveImage(digest)).await??))
}
