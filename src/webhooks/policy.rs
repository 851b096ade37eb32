//! Which callback URLs are accepted and which addresses a delivery may connect to.
//!
//! Two checks, one policy: [`CallbackPolicy::check_url`] runs at submission (a refused
//! URL is a 400) and again before every attempt (the configuration may have changed
//! across a restart); [`CallbackPolicy::check_addr`] runs on every address a host name
//! resolves to, at delivery time, inside the resolver whose addresses the connection
//! then uses (no window for DNS rebinding between check and connect).

use std::net::IpAddr;

use reqwest::Url;

pub use crate::net_policy::forbidden;
use crate::net_policy::{host_of, HostPolicy};

use super::WebhooksConfig;

/// Longest accepted `callback_url`, in bytes.
pub const MAX_URL_BYTES: usize = 2048;

/// The accepted callback URLs and reachable addresses, built from `[webhooks]`.
///
/// Invariant: every pattern and private host is normalised the way `host_of`
/// normalises a URL's host, so comparisons are plain string equality.
#[derive(Debug, Clone)]
pub struct CallbackPolicy {
    hosts: HostPolicy,
    allow_http: bool,
}

impl CallbackPolicy {
    /// The policy of `cfg`; an unparsable pattern, a wildcard in `private_hosts` or a
    /// private host that `allowed_hosts` does not allow is an error (at start-up).
    pub fn new(cfg: &WebhooksConfig) -> Result<Self, String> {
        Ok(Self {
            hosts: HostPolicy::new(
                &cfg.allowed_hosts,
                &cfg.private_hosts,
                "webhooks.allowed_hosts",
                "webhooks.private_hosts",
            )?,
            allow_http: cfg.allow_http,
        })
    }

    /// Whether webhooks are on (some host is allowed).
    pub fn enabled(&self) -> bool {
        !self.hosts.is_empty()
    }

    /// The parsed URL when `raw` is an acceptable callback URL; otherwise a sentence
    /// saying why (the answer of a 400, or the error of a refused attempt).
    pub fn check_url(&self, raw: &str) -> Result<Url, String> {
        if !self.enabled() {
            return Err(
                "callback_url is not accepted: webhooks are not enabled on this server (webhooks.allowed_hosts is empty)"
                    .into(),
            );
        }
        if raw.len() > MAX_URL_BYTES {
            return Err(format!("callback_url is longer than {MAX_URL_BYTES} bytes"));
        }
        let url = Url::parse(raw).map_err(|e| format!("callback_url is not a valid URL: {e}"))?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            "http" => {
                return Err(
                    "callback_url must use https (plain http is off: webhooks.allow_http is false)"
                        .into(),
                )
            }
            other => return Err(format!("callback_url must be an https URL, not {other}:")),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("callback_url must not carry credentials (user:password@)".into());
        }
        let (host, ip) = host_of(&url).ok_or("callback_url has no host")?;
        if !self.hosts.allows(&host, ip.is_some()) {
            return Err(format!(
                "callback_url host {host} is not allowed (webhooks.allowed_hosts)"
            ));
        }
        if let Some(ip) = ip {
            self.check_addr(&host, ip)
                .map_err(|e| format!("callback_url refused: {e}"))?;
        }
        Ok(url)
    }

    /// Whether a delivery to `host` may connect to `addr`: any public address, and any
    /// address at all for a host listed in `webhooks.private_hosts`.
    pub fn check_addr(&self, host: &str, addr: IpAddr) -> Result<(), String> {
        self.hosts.check_addr(host, addr)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::Config;

    fn config(allowed: &[&str], private: &[&str], allow_http: bool) -> WebhooksConfig {
        let mut cfg = Config::load_from(HashMap::new())
            .expect("defaults")
            .webhooks;
        cfg.allowed_hosts = allowed.iter().map(|s| s.to_string()).collect();
        cfg.private_hosts = private.iter().map(|s| s.to_string()).collect();
        cfg.allow_http = allow_http;
        cfg
    }

    fn policy(allowed: &[&str], private: &[&str], allow_http: bool) -> CallbackPolicy {
        CallbackPolicy::new(&config(allowed, private, allow_http)).expect("policy")
    }

    #[test]
    fn patterns_match_exact_hosts_subdomains_and_anything() {
        let p = policy(
            &["hooks.example.com", "*.corp.example", "203.0.113.7"],
            &[],
            false,
        );
        for ok in [
            "https://hooks.example.com/x",
            "https://HOOKS.Example.com./x?y=1",
            "https://hooks.example.com:8443/",
            "https://a.corp.example/",
            "https://b.a.corp.example/",
        ] {
            assert!(p.check_url(ok).is_ok(), "{ok}: {:?}", p.check_url(ok));
        }
        for (bad, why) in [
            ("https://example.com/", "not allowed"),
            ("https://corp.example/", "not allowed"),
            ("https://evilcorp.example/", "not allowed"),
            ("https://hooks.example.com.evil.net/", "not allowed"),
            ("https://203.0.113.8/", "not allowed"),
            ("https://203.0.113.7/", "documentation address"),
        ] {
            let err = p.check_url(bad).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
        let any = policy(&["*"], &[], false);
        assert!(any.check_url("https://anything.example.net/").is_ok());
        assert!(any.check_url("https://8.8.8.8/").is_ok());
    }

    #[test]
    fn urls_are_refused_for_scheme_credentials_size_and_private_literals() {
        let p = policy(&["*"], &[], false);
        let long = format!("https://a.example/{}", "x".repeat(MAX_URL_BYTES));
        for (bad, why) in [
            ("http://a.example/", "must use https"),
            ("ftp://a.example/", "must be an https URL"),
            ("file:///etc/passwd", "must be an https URL"),
            ("not a url", "not a valid URL"),
            ("https://user:pw@a.example/", "credentials"),
            (long.as_str(), "longer than"),
            ("https://127.0.0.1/", "loopback"),
            ("https://2130706433/", "loopback"),
            ("https://0x7f.1/", "loopback"),
            ("https://[::1]/", "loopback"),
            ("https://[::ffff:10.0.0.1]/", "private"),
            (
                "https://169.254.169.254/latest/meta-data/",
                "cloud metadata",
            ),
            ("https://[fd00:ec2::254]/", "cloud metadata"),
            ("https://100.64.1.1/", "CGNAT"),
            ("https://0.0.0.0/", "unspecified"),
            ("https://224.0.0.1/", "multicast"),
        ] {
            let err = p.check_url(bad).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err} (wanted {why:?})");
        }
        let http = policy(&["*"], &[], true);
        assert!(http.check_url("http://a.example/").is_ok());
    }

    #[test]
    fn webhooks_are_off_without_allowed_hosts() {
        let p = policy(&[], &[], true);
        assert!(!p.enabled());
        let err = p.check_url("https://a.example/").expect_err("off");
        assert!(err.contains("not enabled"), "{err}");
    }

    #[test]
    fn private_hosts_may_reach_private_addresses_and_nothing_else_does() {
        let p = policy(
            &["*", "localhost"],
            &["localhost", "127.0.0.1", "[::1]"],
            true,
        );
        let lo: IpAddr = "127.0.0.1".parse().expect("ip");
        assert!(p.check_addr("localhost", lo).is_ok());
        assert!(p.check_addr("LOCALHOST.", lo).is_ok());
        assert!(p.check_url("http://127.0.0.1:9/").is_ok());
        assert!(p.check_url("http://[::1]:9/").is_ok());
        let err = p.check_addr("evil.example", lo).expect_err("rebinding");
        assert!(
            err.contains("evil.example resolves to 127.0.0.1, a loopback address"),
            "{err}"
        );
        assert!(p.check_url("http://127.0.0.2/").is_err());
    }

    #[test]
    fn bad_configuration_is_refused() {
        for (allowed, private, why) in [
            (vec!["hooks.example.com:443"], vec![], "not a host name"),
            (vec!["https://hooks.example.com"], vec![], "not a host name"),
            (vec!["a/b"], vec![], "not a host name"),
            (vec!["*"], vec!["*.internal"], "only exact hosts"),
            (
                vec!["*.example.com"],
                vec!["internal.corp"],
                "not allowed by",
            ),
        ] {
            let err = CallbackPolicy::new(&config(&allowed, &private, false)).expect_err(why);
            assert!(err.contains(why), "{allowed:?} {private:?}: {err}");
        }
    }
}
