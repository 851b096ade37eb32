//! The HTTP client of deliveries: one signed POST per attempt, redirects not followed,
//! no proxy, a total timeout, and a resolver that checks every address a host name
//! resolves to and hands exactly those addresses to the connector.

use std::error::Error as StdError;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::CONTENT_TYPE;

use super::policy::CallbackPolicy;
use super::signature::{Signer, HEADER as SIGNATURE_HEADER};
use super::WebhooksConfig;

/// The event header and its one value.
pub const EVENT_HEADER: &str = "Vulcan-Event";
/// The event of a workload that reached a terminal status.
pub const EVENT_FINISHED: &str = "workload.finished";
/// The delivery id header (the same on every attempt of a delivery).
pub const DELIVERY_HEADER: &str = "Vulcan-Delivery";

/// How an attempt ended, as counted in metrics (`result` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptKind {
    /// A 2xx answer: the delivery is done.
    Success,
    /// Any other HTTP status (3xx included: redirects are not followed).
    HttpStatus,
    /// No answer within `webhooks.timeout_s`.
    Timeout,
    /// The URL or an address it resolved to was refused by the policy.
    Refused,
    /// Resolution, connection or protocol failure.
    Error,
}

impl AttemptKind {
    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptKind::Success => "success",
            AttemptKind::HttpStatus => "http_status",
            AttemptKind::Timeout => "timeout",
            AttemptKind::Refused => "refused",
            AttemptKind::Error => "error",
        }
    }
}

/// The result of one attempt. Invariant: `status_code` is set exactly when the
/// receiver answered; `error` is set exactly when `kind` is not `Success`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptOutcome {
    /// What happened.
    pub kind: AttemptKind,
    /// The receiver's HTTP status, when it answered.
    pub status_code: Option<u16>,
    /// Why the attempt did not succeed.
    pub error: Option<String>,
}

impl AttemptOutcome {
    /// The attempt could not be made (URL or address refused, workload unreadable).
    pub fn refused(why: impl Into<String>) -> Self {
        Self {
            kind: AttemptKind::Refused,
            status_code: None,
            error: Some(why.into()),
        }
    }
}

/// A refusal raised inside the resolver, recognised again in the error chain.
#[derive(Debug)]
struct AddressRefused(String);

impl fmt::Display for AddressRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for AddressRefused {}

/// Resolves with the system resolver, then refuses the name unless every address
/// passes [`CallbackPolicy::check_addr`]; the connector connects to exactly the
/// addresses returned here.
struct GuardedResolver {
    policy: Arc<CallbackPolicy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if addrs.is_empty() {
                return Err(format!("{host} has no addresses").into());
            }
            for addr in &addrs {
                policy
                    .check_addr(&host, addr.ip())
                    .map_err(AddressRefused)?;
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Makes delivery attempts. Cheap to share (`Arc`); one connection pool for all.
pub struct Sender {
    client: reqwest::Client,
    policy: Arc<CallbackPolicy>,
    signer: Signer,
    timeout: Duration,
}

impl Sender {
    /// The client for `cfg` (fails only if the TLS backend cannot start).
    pub fn new(cfg: &WebhooksConfig) -> Result<Self, String> {
        let policy = Arc::new(CallbackPolicy::new(cfg)?);
        let timeout = Duration::from_secs(cfg.timeout_s);
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .https_only(!cfg.allow_http)
            .timeout(timeout)
            .pool_max_idle_per_host(2)
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("vulcan-webhooks/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(GuardedResolver {
                policy: policy.clone(),
            }))
            .build()
            .map_err(|e| format!("webhook HTTP client: {e}"))?;
        Ok(Self {
            client,
            policy,
            signer: Signer::new(&cfg.secret)?,
            timeout,
        })
    }

    /// POST `body` to `url` once, signed, and say how it went. Never panics; the
    /// receiver's answer body is not read.
    pub async fn attempt(&self, url: &str, delivery_id: &str, body: Vec<u8>) -> AttemptOutcome {
        let url = match self.policy.check_url(url) {
            Ok(u) => u,
            Err(why) => return AttemptOutcome::refused(why),
        };
        let signature = self.signer.sign(chrono::Utc::now().timestamp(), &body);
        let sent = self
            .client
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .header(EVENT_HEADER, EVENT_FINISHED)
            .header(DELIVERY_HEADER, delivery_id)
            .header(SIGNATURE_HEADER, signature)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(res) if res.status().is_success() => AttemptOutcome {
                kind: AttemptKind::Success,
                status_code: Some(res.status().as_u16()),
                error: None,
            },
            Ok(res) => AttemptOutcome {
                kind: AttemptKind::HttpStatus,
                status_code: Some(res.status().as_u16()),
                error: Some(format!("receiver answered {}", res.status())),
            },
            Err(e) => self.failure(&e),
        }
    }

    fn failure(&self, e: &reqwest::Error) -> AttemptOutcome {
        let mut source: Option<&(dyn StdError + 'static)> = Some(e);
        let mut innermost = e.to_string();
        while let Some(err) = source {
            if let Some(refused) = err.downcast_ref::<AddressRefused>() {
                return AttemptOutcome::refused(refused.0.clone());
            }
            innermost = err.to_string();
            source = err.source();
        }
        let (kind, error) = if e.is_timeout() {
            (
                AttemptKind::Timeout,
                format!("no answer within {}s", self.timeout.as_secs()),
            )
        } else if e.is_connect() {
            (
                AttemptKind::Error,
                format!("could not connect: {innermost}"),
            )
        } else {
            (AttemptKind::Error, format!("request failed: {innermost}"))
        };
        AttemptOutcome {
            kind,
            status_code: None,
            error: Some(error),
        }
    }
}
