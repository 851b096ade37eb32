//! The HTTP layer. Handlers validate input into domain types and send messages to
//! actors; they never touch the database or a backend themselves.
//!
//! Every route is declared through [`Endpoint`], so every GET route also answers HEAD
//! and every other method gets 405 with `Allow`, and [`route_table`] can list them.
//! `/v1/*` is guarded by the bearer token, or, without a token, by the `Host` check
//! against DNS rebinding. `/`, `/ui/*`, `/openapi.json`, `/healthz` and `/metrics` hold
//! no workload data and are not guarded.

mod backends;
mod dashboard;
mod deliveries;
pub mod error;
mod images;
mod logs;
mod nodes;
pub mod openapi;
mod system;
mod workloads;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Addr;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method};
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, FromRequest, Handler, HttpResponse, Responder, ResponseError};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use error::ApiError;

use crate::actors::images::ImagesActor;
use crate::actors::log_broker::LogBroker;
use crate::actors::store::{StoreActor, StoreHealth};
use crate::actors::supervisor::Supervisor;
use crate::actors::Restarts;
use crate::config::{CorsConfig, Secret};
use crate::images::policy::RegistryPolicy;
use crate::metrics::Metrics;
use crate::model::{Limits, WorkloadId};
use crate::webhooks::policy::CallbackPolicy;
pub use nodes::ThisNode;

/// What handlers share: actor addresses and settings. Read-only.
pub struct AppState {
    /// Registry, routing, admission.
    pub supervisor: Addr<Supervisor>,
    /// Persistence.
    pub store: Addr<StoreActor>,
    /// Log topics.
    pub broker: Addr<LogBroker>,
    /// The OCI image store.
    pub images: Addr<ImagesActor>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Request limits.
    pub limits: Limits,
    /// Which `callback_url`s submissions may carry.
    pub callbacks: CallbackPolicy,
    /// Which registries images may come from.
    pub registries: RegistryPolicy,
    /// Bearer token for `/v1/*` when auth is on.
    pub token: Option<Secret>,
    /// Without a token: the hosts `/v1/*` answers (`None`: any).
    pub allowed_hosts: Option<AllowedHosts>,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_ttl: Duration,
    /// Idle SSE keep-alive period.
    pub keepalive: Duration,
    /// Largest accepted body.
    pub max_body_bytes: usize,
    /// What `/readyz` answers from.
    pub readiness: Readiness,
    /// Restarts of the store's writer and of the log broker.
    pub restarts: ActorRestarts,
    /// This server as a node (`GET /v1/nodes`).
    pub node: ThisNode,
    /// On a cluster: streams of other nodes' workloads follow the shared table.
    pub follower: Option<crate::actors::log_follower::Follower>,
}

/// Restart records of the components that restart themselves in place.
#[derive(Clone)]
pub struct ActorRestarts {
    /// The store's writer.
    pub store: Arc<Restarts>,
    /// The log broker.
    pub broker: Arc<Restarts>,
}

/// Whether the server accepts work: the store can write and it is not draining.
#[derive(Clone)]
pub struct Readiness {
    /// The store's write health.
    pub store: Arc<StoreHealth>,
    /// Set when graceful shutdown starts.
    pub draining: Arc<AtomicBool>,
}

/// Register every route on `cfg`.
pub fn configure(cfg: &mut web::ServiceConfig, state: web::Data<AppState>) {
    let json = web::JsonConfig::default()
        .limit(state.max_body_bytes)
        .content_type_required(true)
        .content_type(|mime| mime.subtype() == "json" || mime.suffix().is_some_and(|s| s == "json"))
        .error_handler(|err, _| ApiError::from(err).into());
    let query = web::QueryConfig::default().error_handler(|err, _| {
        ApiError::BadRequest(format!("invalid query string: {err}")).into()
    });
    let path = web::PathConfig::default()
        .error_handler(|err, _| ApiError::NotFound(format!("not found: {err}")).into());
    cfg.app_data(state.clone())
        .app_data(json)
        .app_data(query)
        .app_data(path)
        .app_data(web::PayloadConfig::default().limit(state.max_body_bytes))
        .configure(routes)
        .default_service(web::to(not_found));
}

/// The API's prefix, behind the guard.
const V1: &str = "/v1";

/// Every route (without app data: [`route_table`] builds them without a server).
fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(Endpoint::new("/healthz").get(system::healthz).build())
        .service(Endpoint::new("/readyz").get(system::readyz).build())
        .service(Endpoint::new("/metrics").get(system::metrics).build())
        .service(
            Endpoint::new("/openapi.json")
                .get(openapi::document)
                .build(),
        )
        .configure(dashboard::routes)
        .service(web::scope(V1).wrap(from_fn(guard)).configure(|cfg| {
            under(V1, || {
                workloads::routes(cfg);
                deliveries::routes(cfg);
                logs::routes(cfg);
                backends::routes(cfg);
                nodes::routes(cfg);
                images::routes(cfg);
                system::routes(cfg);
            })
        }));
}

thread_local! {
    /// The scope prefix of the routes being declared (scopes are configured
    /// synchronously, on the thread building the app).
    static PREFIX: RefCell<&'static str> = const { RefCell::new("") };
    /// While [`route_table`] runs: every full path declared, with its methods.
    static RECORDING: RefCell<Option<BTreeMap<String, Vec<&'static str>>>> =
        const { RefCell::new(None) };
}

/// Declare the routes of `f` under the scope `prefix`.
fn under(prefix: &'static str, f: impl FnOnce()) {
    let outer = PREFIX.with(|p| p.replace(prefix));
    f();
    PREFIX.with(|p| *p.borrow_mut() = outer);
}

/// Every route the app serves: full path pattern (`/v1/workloads/{id}`) → methods
/// (GET routes list HEAD too). Read from the same declarations the server is built
/// from, so it cannot drift from what is served (the OpenAPI test compares the two).
pub fn route_table() -> BTreeMap<String, Vec<&'static str>> {
    RECORDING.with(|r| *r.borrow_mut() = Some(BTreeMap::new()));
    let _app = actix_web::App::new().configure(routes);
    RECORDING
        .with(|r| r.borrow_mut().take())
        .unwrap_or_default()
}

/// The CORS layer for `cfg`. It wraps the whole app, outside the `/v1` guard: a
/// preflight carries no credentials, so it must be answered before the token check,
/// and a 401 must carry CORS headers for the page to see it.
///
/// An origin not listed is never blocked by this layer (the browser does it: the
/// answer has no `Access-Control-Allow-Origin`, and a preflight is refused), so
/// same-origin requests, which browsers also send with `Origin`, pass untouched.
pub fn cors(cfg: &CorsConfig) -> actix_cors::Cors {
    let mut cors = actix_cors::Cors::default()
        .allowed_methods([Method::GET, Method::HEAD, Method::POST, Method::DELETE])
        .allowed_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::HeaderName::from_static("last-event-id"),
            header::HeaderName::from_static(workloads::IDEMPOTENCY_KEY),
        ])
        .expose_headers([
            header::LOCATION,
            header::RETRY_AFTER,
            header::HeaderName::from_static(workloads::IDEMPOTENT_REPLAYED),
        ])
        .max_age(usize::try_from(cfg.max_age_s).unwrap_or(usize::MAX))
        .block_on_origin_mismatch(false);
    // Validated at load (`CorsConfig`): each entry is a bare origin.
    for origin in &cfg.allowed_origins {
        cors = cors.allowed_origin(origin);
    }
    cors
}

/// actix-cors answers a refused preflight in plain text; every error of the API is
/// JSON, so the refusal is re-expressed here (same 400, actix-cors' reason). Wraps the
/// CORS layer.
pub async fn cors_errors(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let res = next.call(req).await?;
    let refusal = res
        .response()
        .error()
        .and_then(|e| e.as_error::<actix_cors::CorsError>())
        .map(|e| format!("cross-origin request refused: {e}"));
    match refusal {
        Some(message) => {
            let (req, _) = res.into_parts();
            let answer = ApiError::BadRequest(message).error_response();
            Ok(ServiceResponse::new(req, answer).map_into_right_body())
        }
        None => Ok(res.map_into_left_body()),
    }
}

/// One route path and its methods. GET also answers HEAD (same handler: the server
/// sends headers only); any other method gets 405 with `Allow` listing the methods.
pub(crate) struct Endpoint {
    path: String,
    resource: actix_web::Resource,
    allow: Vec<&'static str>,
}

impl Endpoint {
    /// A path with no methods yet (relative to the enclosing scope).
    pub(crate) fn new(path: &str) -> Self {
        RECORDING.with(|r| {
            if let Some(table) = r.borrow_mut().as_mut() {
                let full = PREFIX.with(|p| format!("{}{path}", p.borrow()));
                table.entry(full).or_default();
            }
        });
        Self {
            path: path.to_string(),
            resource: web::resource(path),
            allow: Vec::new(),
        }
    }

    fn route<F, Args>(mut self, methods: &[(Method, &'static str)], handler: F) -> Self
    where
        F: Handler<Args>,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        for (method, name) in methods {
            self.resource = self
                .resource
                .route(web::method(method.clone()).to(handler.clone()));
            self.allow.push(name);
        }
        RECORDING.with(|r| {
            if let Some(table) = r.borrow_mut().as_mut() {
                let full = PREFIX.with(|p| format!("{}{}", p.borrow(), self.path));
                table
                    .entry(full)
                    .or_default()
                    .extend(methods.iter().map(|(_, name)| *name));
            }
        });
        self
    }

    /// GET (and HEAD) with `handler`.
    pub(crate) fn get<F, Args>(self, handler: F) -> Self
    where
        F: Handler<Args>,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        self.route(&[(Method::GET, "GET"), (Method::HEAD, "HEAD")], handler)
    }

    /// POST with `handler`.
    pub(crate) fn post<F, Args>(self, handler: F) -> Self
    where
        F: Handler<Args>,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        self.route(&[(Method::POST, "POST")], handler)
    }

    /// DELETE with `handler`.
    pub(crate) fn delete<F, Args>(self, handler: F) -> Self
    where
        F: Handler<Args>,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        self.route(&[(Method::DELETE, "DELETE")], handler)
    }

    /// The resource, with 405 + `Allow` for every other method.
    pub(crate) fn build(self) -> actix_web::Resource {
        let allow = self.allow.join(", ");
        self.resource.default_service(web::to(move || {
            let allow = allow.clone();
            async move {
                let mut res = ApiError::MethodNotAllowed.error_response();
                if let Ok(v) = header::HeaderValue::from_str(&allow) {
                    res.headers_mut().insert(header::ALLOW, v);
                }
                res
            }
        }))
    }
}

async fn not_found() -> HttpResponse {
    ApiError::NotFound("no such route".into()).error_response()
}

/// A workload id from a path segment; anything that is not a ULID is an unknown id.
fn parse_id(raw: &str) -> Result<WorkloadId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::NotFound("workload not found".into()))
}

fn digest(s: &[u8]) -> [u8; 32] {
    Sha256::digest(s).into()
}

/// The hosts `/v1/*` answers without a token (`allowed_hosts`, lower case).
///
/// Invariant: never holds `"*"` (that turns the check off: no `AllowedHosts` at all).
#[derive(Debug, Clone)]
pub struct AllowedHosts(Vec<String>);

impl AllowedHosts {
    /// The check for `hosts`; `None` when it contains `"*"` (any host).
    pub fn new(hosts: &[String]) -> Option<Self> {
        if hosts.iter().any(|h| h.trim() == "*") {
            return None;
        }
        Some(Self(
            hosts
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .collect(),
        ))
    }

    /// Whether a `Host` value (`name`, `name:port`, `[v6]:port`) is allowed: its name
    /// with any port, or exactly `name:port` when an entry has a port.
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        let name = match host.strip_prefix('[') {
            Some(rest) => rest.find(']').map_or(host.as_str(), |i| &host[..i + 2]),
            None => match host.rsplit_once(':') {
                Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
                _ => host.as_str(),
            },
        };
        self.0.iter().any(|h| *h == name || *h == host)
    }
}

/// The guard of `/v1/*`: with a token, the bearer check (constant time: both sides are
/// hashed to equal length first, then compared with `subtle`; the scheme is matched
/// case-insensitively); without one, the `Host` check against DNS rebinding (only the
/// `Host` header counts, never `Forwarded`/`X-Forwarded-Host`, which a page can set).
async fn guard(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let refusal = req.app_data::<web::Data<AppState>>().and_then(|state| {
        match (&state.token, &state.allowed_hosts) {
            (Some(token), _) => {
                let given = bearer(&req).unwrap_or("");
                let ok: bool = digest(given.as_bytes())
                    .ct_eq(&digest(token.expose().as_bytes()))
                    .into();
                (!ok || given.is_empty()).then_some(ApiError::Unauthorized)
            }
            (None, Some(hosts)) => {
                let host = req
                    .headers()
                    .get(header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .or_else(|| req.uri().authority().map(|a| a.as_str()));
                match host {
                    Some(h) if hosts.allows(h) => None,
                    Some(_) => Some(ApiError::Forbidden(
                        "this Host is not allowed: without an API token the server only \
                         answers the host names in allowed_hosts (DNS rebinding protection)"
                            .into(),
                    )),
                    None => Some(ApiError::Forbidden("a Host header is required".into())),
                }
            }
            (None, None) => None,
        }
    });
    if let Some(err) = refusal {
        let res = err.error_response();
        return Ok(req.into_response(res).map_into_right_body());
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_left_body)
}

/// The credentials of an `Authorization: Bearer <token>` header (scheme in any case).
fn bearer(req: &ServiceRequest) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start())
}

/// The method as a metrics label: the standard ones by name, anything else `other`
/// (clients choose methods freely; labels must stay a bounded set).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Per-request metrics (by route pattern, never by raw path; by known method, else
/// `other`).
pub async fn track(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = method_label(req.method());
    let res = next.call(req).await?;
    let route = res
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_string());
    if let Some(state) = res.request().app_data::<web::Data<AppState>>() {
        state
            .metrics
            .http_requests
            .with_label_values(&[route.as_str(), method, res.status().as_str()])
            .inc();
        state
            .metrics
            .http_duration
            .with_label_values(&[route.as_str()])
            .observe(started.elapsed().as_secs_f64());
    }
    Ok(res)
}

/// The JSON answer for a value.
fn ok_json<T: serde::Serialize>(value: &T) -> HttpResponse {
    HttpResponse::Ok().json(value)
}
