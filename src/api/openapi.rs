//! `GET /openapi.json`: the OpenAPI 3.1 document, generated from the handlers'
//! `#[utoipa::path]` attributes and the request/response types' `ToSchema` derives.
//!
//! What every route shares is added here, once: on `/v1/*` the bearer security scheme
//! (optional: a server without a token needs none) and the 401/403 answers of the
//! guard; on every operation the 500 answer.

use std::sync::LazyLock;

use actix_web::HttpResponse;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::{backends, dashboard, deliveries, images, logs, nodes, system, workloads};

/// The document's source: every documented handler and the schemas they name.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Vulcan",
        description = "Run untrusted code (node, wasm, python, go, OCI images) under pluggable isolation. \
                       Errors are always {\"error\": \"...\"}. Every GET also answers HEAD. \
                       See docs/api.md for the full contract.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        workloads::submit_sync,
        workloads::submit_async,
        workloads::list,
        workloads::get,
        workloads::kill,
        deliveries::list,
        logs::stream_logs,
        logs::history,
        backends::list,
        backends::restart,
        nodes::list,
        images::list,
        images::pull,
        images::remove,
        system::stats,
        system::actors,
        system::restart,
        system::readyz,
        system::healthz,
        system::metrics,
        document,
        dashboard::index,
        dashboard::asset,
    ),
    modifiers(&Shared),
    tags(
        (name = "workloads", description = "Submit, inspect, list and kill workloads"),
        (name = "logs", description = "Live and recorded logs"),
        (name = "backends", description = "The isolation backends"),
        (name = "nodes", description = "The nodes of a cluster sharing one database"),
        (name = "images", description = "The OCI image store"),
        (name = "system", description = "Health, metrics, stats, actors, this document"),
        (name = "dashboard", description = "The web dashboard (static files, no data)"),
    )
)]
pub struct ApiDoc;

/// The schema name of error bodies.
const ERROR_BODY: &str = "ErrorBody";

/// Adds what every route shares (see the module docs).
struct Shared;

impl Modify for Shared {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        for (path, item) in doc.paths.paths.iter_mut() {
            let guarded = path.starts_with(super::V1);
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in operations.into_iter().flatten() {
                if guarded {
                    op.security = Some(vec![
                        SecurityRequirement::new("bearer", Vec::<String>::new()),
                        // Empty: a server without api_token asks for none.
                        SecurityRequirement::default(),
                    ]);
                    error(
                        op,
                        401,
                        "api_token is set and the bearer token is missing or wrong",
                    );
                    error(
                        op,
                        403,
                        "no api_token and the Host header is not in allowed_hosts",
                    );
                }
                error(op, 500, "A server fault (the cause is logged, not shown)");
            }
        }
    }
}

/// Document an `ErrorBody` answer on `op` unless the handler documents that status.
fn error(op: &mut Operation, status: u16, description: &str) {
    op.responses
        .responses
        .entry(status.to_string())
        .or_insert_with(|| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name(ERROR_BODY)))
                            .build(),
                    )
                    .build(),
            )
        });
}

/// The document as JSON text.
pub fn json() -> Result<String, serde_json::Error> {
    ApiDoc::openapi().to_json()
}

/// The document, serialised once.
static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    json().unwrap_or_else(|e| {
        format!("{{\"error\": \"the OpenAPI document could not be built: {e}\"}}")
    })
});

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "system",
    responses((status = 200, description = "The OpenAPI 3.1 document of this server", content_type = "application/json", body = Object))
)]
pub(super) async fn document() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(DOCUMENT.as_str())
}
