//! The web dashboard: static HTML, CSS and JavaScript embedded in the binary, served at
//! `/` and `/ui/{file}`. The files hold no data (everything is read from `/v1/*` by
//! the page with the token it keeps in sessionStorage), so they are served without a
//! token or Host check, under a strict Content-Security-Policy: only this origin's
//! scripts, styles and connections; no inline script or style; no framing.

use actix_web::http::header;
use actix_web::{web, HttpResponse};

use super::error::ErrorBody;
use super::{ApiError, Endpoint};

/// The policy of every dashboard file.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
                   frame-ancestors 'none'";

/// The embedded files: name under `/ui/`, content type, bytes.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("dashboard/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("dashboard/app.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("dashboard/favicon.svg"),
    ),
];

const INDEX: &str = include_str!("dashboard/index.html");

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(Endpoint::new("/").get(index).build())
        .service(Endpoint::new("/ui/{file}").get(asset).build());
}

fn file(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        // The files change with the binary; revalidating is cheap (they are small).
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

/// The dashboard page.
#[utoipa::path(
    get,
    path = "/",
    tag = "dashboard",
    responses((status = 200, description = "The dashboard's HTML page", content_type = "text/html", body = String))
)]
pub(super) async fn index() -> HttpResponse {
    file("text/html; charset=utf-8", INDEX)
}

/// A script, style sheet or icon of the dashboard.
#[utoipa::path(
    get,
    path = "/ui/{file}",
    tag = "dashboard",
    params(("file" = String, Path, description = "app.js, app.css or favicon.svg")),
    responses(
        (status = 200, description = "The file", content(
            (String = "text/javascript"),
            (String = "text/css"),
            (String = "image/svg+xml"),
        )),
        (status = 404, description = "No such file", body = ErrorBody),
    )
)]
pub(super) async fn asset(name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    ASSETS
        .iter()
        .find(|(n, _, _)| *n == name.as_str())
        .map(|(_, ct, body)| file(ct, body))
        .ok_or_else(|| ApiError::NotFound("no such dashboard file".into()))
}
