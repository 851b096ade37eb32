//! The one mapping from failures to HTTP answers: `{"error": "<message>"}` with the
//! fitting status. Causes go to the log; clients get a sentence, never SQL, a stack or
//! a host path.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::actors::images::ImagesError;
use crate::actors::supervisor::SubmitError;
use crate::actors::workload::KillError;
use crate::images::RemoveError;
use crate::store::StoreError;

/// Every error an API handler can answer with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: malformed or invalid input.
    #[error("{0}")]
    BadRequest(String),
    /// 401: missing or wrong bearer token.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// 403: the request may not use this server (e.g. its Host is not allowed).
    #[error("{0}")]
    Forbidden(String),
    /// 404: unknown id or path.
    #[error("{0}")]
    NotFound(String),
    /// 405: the path exists, the method does not.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 409: the state machine refuses (e.g. killing a terminal workload).
    #[error("{0}")]
    Conflict(String),
    /// 413: body above the limit.
    #[error("request body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    /// 415: not JSON.
    #[error("content type must be application/json")]
    UnsupportedMediaType,
    /// 422: well-formed but cannot be placed.
    #[error("{0}")]
    Unprocessable(String),
    /// 429: admission control refused; retry after the given seconds.
    #[error("{0}")]
    TooManyRequests(String, u64),
    /// 503: the server cannot take work right now (shutting down); retry after the
    /// given seconds.
    #[error("{0}")]
    Unavailable(String, u64),
    /// 507: the store cannot record the request (full disk, failing storage); nothing
    /// of it was recorded. The message names the cause.
    #[error("{0}")]
    InsufficientStorage(String),
    /// 504: another node of the cluster did not answer in time.
    #[error("{0}")]
    GatewayTimeout(String),
    /// 500: a real server fault (the cause is logged, not shown).
    #[error("internal server error")]
    Internal(String),
}

/// The body of every error answer (the OpenAPI document's `ErrorBody`).
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorBody<'a> {
    /// A sentence for a human; never a host path, SQL or a stack.
    error: &'a str,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooManyRequests(..) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(..) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::GatewayTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Internal(cause) = self {
            log::error!("internal error: {cause}");
        }
        let message = self.to_string();
        let mut res = HttpResponse::build(self.status_code());
        match self {
            ApiError::TooManyRequests(_, secs) | ApiError::Unavailable(_, secs) => {
                res.insert_header((header::RETRY_AFTER, secs.to_string()));
            }
            ApiError::Unauthorized => {
                res.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            _ => {}
        }
        res.json(ErrorBody { error: &message })
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::NotFound("workload not found".into()),
            StoreError::InvalidTransition(t) => ApiError::Conflict(t.to_string()),
            e @ StoreError::Fenced => ApiError::Conflict(e.to_string()),
            StoreError::Full => ApiError::InsufficientStorage("storage full".into()),
            // The cause's detail is SQLite's text, for the log only.
            StoreError::WriteFailed(cause) => {
                log::error!("store: write failed: {cause}");
                ApiError::InsufficientStorage(
                    "storage failing: the database cannot be written".into(),
                )
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<actix::MailboxError> for ApiError {
    fn from(e: actix::MailboxError) -> Self {
        ApiError::Internal(format!("actor mailbox: {e}"))
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Unplaceable(m) => ApiError::Unprocessable(m),
            e @ SubmitError::QueueFull(_) => ApiError::TooManyRequests(e.to_string(), 1),
            e @ SubmitError::IdempotencyMismatch => ApiError::Unprocessable(e.to_string()),
            e @ SubmitError::ShuttingDown => ApiError::Unavailable(e.to_string(), 5),
            SubmitError::Store(e) => e.into(),
        }
    }
}

impl From<KillError> for ApiError {
    fn from(e: KillError) -> Self {
        match e {
            e @ (KillError::Terminal(_) | KillError::NotYetAccepted) => {
                ApiError::Conflict(e.to_string())
            }
            KillError::Store(e) => e.into(),
            e @ KillError::NodeDidNotAnswer { .. } => ApiError::GatewayTimeout(e.to_string()),
        }
    }
}

impl From<ImagesError> for ApiError {
    fn from(e: ImagesError) -> Self {
        match e {
            e @ ImagesError::Unavailable => ApiError::Unprocessable(e.to_string()),
            ImagesError::Remove(e @ RemoveError::NotFound(_)) => ApiError::NotFound(e.to_string()),
            ImagesError::Remove(e @ RemoveError::InUse { .. }) => ApiError::Conflict(e.to_string()),
        }
    }
}

impl From<actix_web::error::JsonPayloadError> for ApiError {
    fn from(e: actix_web::error::JsonPayloadError) -> Self {
        use actix_web::error::JsonPayloadError as J;
        match e {
            J::OverflowKnownLength { limit, .. } | J::Overflow { limit } => {
                ApiError::PayloadTooLarge(limit)
            }
            J::ContentType => ApiError::UnsupportedMediaType,
            J::Deserialize(e) => ApiError::BadRequest(format!("invalid JSON body: {e}")),
            other => ApiError::BadRequest(format!("could not read the body: {other}")),
        }
    }
}
