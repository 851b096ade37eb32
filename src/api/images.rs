//! `/v1/images`: the OCI image store (pre-pull, list, remove).

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::{ok_json, ApiError, AppState, Endpoint};
use crate::actors::images::{ListImages, PullImage, RemoveImage};
use crate::model::{is_sha256_digest, ImageRef};

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(Endpoint::new("/images").get(list).post(pull).build())
        .service(Endpoint::new("/images/{digest}").delete(remove).build());
}

/// The body of `POST /v1/images`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PullRequest {
    /// The image reference to pull.
    image: Option<String>,
}

async fn pull(
    state: web::Data<AppState>,
    body: web::Json<PullRequest>,
) -> Result<HttpResponse, ApiError> {
    let text = body
        .into_inner()
        .image
        .ok_or_else(|| ApiError::BadRequest("image is required".into()))?;
    let reference = ImageRef::parse(&text).map_err(ApiError::BadRequest)?;
    let key = reference.key();
    state.images.send(PullImage(reference)).await??;
    Ok(HttpResponse::Accepted()
        .insert_header((header::LOCATION, "/v1/images"))
        .json(json!({"reference": key, "status": "pulling"})))
}

async fn list(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    Ok(ok_json(&state.images.send(ListImages).await??))
}

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
