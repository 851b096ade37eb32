//! Which callback URLs are accepted and which addresses a delivery may connect to.
//!
//! Two checks, one policy: [`CallbackPolicy::check_url`] runs at submission (a refused
//! URL is a 400) and again before every attempt (the configuration may have changed
//! across a restart); [`CallbackPolicy::check_addr`] runs on every address a host name
//! resolves to, at delivery time, inside the resolver whose addresses the connection
//! then uses (no window for DNS rebinding between check and connect).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use reqwest::Url;

use super::WebhooksConfig;

/// Longest accepted `callback_url`, in bytes.
pub const MAX_URL_BYTES: usize = 2048;

/// One entry of `webhooks.allowed_hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// `*`: any host.
    Any,
    /// `*.example.com`, kept as `.example.com`: any name below it (not the name itself).
    Below(String),
    /// A host name or IP literal, normalised like a URL's host.
    Exact(String),
}

impl Pattern {
    fn matches(&self, host: &str, is_ip: bool) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Below(suffix) => !is_ip && host.len() > suffix.len() && host.ends_with(suffix),
            Pattern::Exact(h) => h == host,
        }
    }
}

/// The accepted callback URLs and reachable addresses, built from `[webhooks]`.
///
/// Invariant: every pattern and private host is normalised the way `host_of`
/// normalises a URL's host, so comparisons are plain string equality.
#[derive(Debug, Clone)]
pub struct CallbackPolicy {
    allowed: Vec<Pattern>,
    private: HashSet<String>,
    allow_http: bool,
}

/// A URL's host in the form patterns are compared with: lower-case ASCII (IDNA),
/// without a trailing dot; IP literals in their canonical text (IPv6 without brackets).
fn host_of(url: &Url) -> Option<(String, Option<IpAddr>)> {
    match url.host()? {
        url::Host::Domain(d) => Some((normalise_name(d), None)),
        url::Host::Ipv4(a) => Some((a.to_string(), Some(IpAddr::V4(a)))),
        url::Host::Ipv6(a) => Some((a.to_string(), Some(IpAddr::V6(a)))),
    }
}

fn normalise_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// A configured host (name or IP literal), normalised through the URL parser so it
/// compares equal to the host of a URL naming it.
fn parse_host(raw: &str, key: &str) -> Result<String, String> {
    let raw = raw.trim();
    if let Ok(ip) = raw
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return Ok(ip.to_string());
    }
    let bad = || format!("{key}: {raw:?} is not a host name or IP address");
    let url = Url::parse(&format!("http://{raw}/")).map_err(|_| bad())?;
    if url.port().is_some() || url.path() != "/" || !url.username().is_empty() {
        return Err(bad());
    }
    match host_of(&url) {
        Some((host, _)) if !host.is_empty() => Ok(host),
        _ => Err(bad()),
    }
}

impl CallbackPolicy {
    /// The policy of `cfg`; an unparsable pattern, a wildcard in `private_hosts` or a
    /// private host that `allowed_hosts` does not allow is an error (at start-up).
    pub fn new(cfg: &WebhooksConfig) -> Result<Self, String> {
        let mut allowed = Vec::new();
        // Empty entries are nothing (an empty environment list is `[""]`).
        for raw in cfg.allowed_hosts.iter().filter(|h| !h.trim().is_empty()) {
            let raw = raw.trim();
            let pattern = if raw == "*" {
                Pattern::Any
            } else if let Some(rest) = raw.strip_prefix("*.") {
                Pattern::Below(format!(".{}", parse_host(rest, "webhooks.allowed_hosts")?))
            } else {
                Pattern::Exact(parse_host(raw, "webhooks.allowed_hosts")?)
            };
            allowed.push(pattern);
        }
        let mut private = HashSet::new();
        for raw in cfg.private_hosts.iter().filter(|h| !h.trim().is_empty()) {
            if raw.contains('*') {
                return Err(format!(
                    "webhooks.private_hosts: {raw:?}: only exact hosts may reach private addresses"
                ));
            }
            let host = parse_host(raw, "webhooks.private_hosts")?;
            let is_ip = host.parse::<IpAddr>().is_ok();
            if !allowed.iter().any(|p| p.matches(&host, is_ip)) {
                return Err(format!(
                    "webhooks.private_hosts: {raw:?} is not allowed by webhooks.allowed_hosts"
                ));
            }
            private.insert(host);
        }
        Ok(Self {
            allowed,
            private,
            allow_http: cfg.allow_http,
        })
    }

    /// Whether webhooks are on (some host is allowed).
    pub fn enabled(&self) -> bool {
        !self.allowed.is_empty()
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
        if !self.allowed.iter().any(|p| p.matches(&host, ip.is_some())) {
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
        let host = normalise_name(host.trim_start_matches('[').trim_end_matches(']'));
        if self.private.contains(&host) {
            return Ok(());
        }
        match forbidden(addr) {
            None => Ok(()),
            Some(kind) if host == addr.to_string() => Err(format!(
                "{addr} is a {kind} address (allowed only for hosts in webhooks.private_hosts)"
            )),
            Some(kind) => Err(format!(
                "{host} resolves to {addr}, a {kind} address (allowed only for hosts in webhooks.private_hosts)"
            )),
        }
    }
}

/// IPv4 ranges no delivery may reach by default, first match wins (the metadata
/// address before the link-local range that holds it).
const V4_FORBIDDEN: &[(Ipv4Net, &str)] = &[
    (net4([0, 0, 0, 0], 8), "unspecified"),
    (net4([10, 0, 0, 0], 8), "private"),
    (net4([100, 64, 0, 0], 10), "shared (CGNAT)"),
    (net4([127, 0, 0, 0], 8), "loopback"),
    (net4([169, 254, 169, 254], 32), "cloud metadata"),
    (net4([169, 254, 0, 0], 16), "link-local"),
    (net4([172, 16, 0, 0], 12), "private"),
    (
        net4([192, 0, 0, 0], 24),
        "reserved (IETF protocol assignments)",
    ),
    (net4([192, 0, 2, 0], 24), "documentation"),
    (net4([192, 88, 99, 0], 24), "reserved (6to4 relay)"),
    (net4([192, 168, 0, 0], 16), "private"),
    (net4([198, 18, 0, 0], 15), "benchmarking"),
    (net4([198, 51, 100, 0], 24), "documentation"),
    (net4([203, 0, 113, 0], 24), "documentation"),
    (net4([224, 0, 0, 0], 4), "multicast"),
    (net4([240, 0, 0, 0], 4), "reserved"),
];

/// IPv6 ranges no delivery may reach by default. Ranges that embed an IPv4 address
/// (mapped, NAT64, 6to4) are judged by that address instead, in [`forbidden`].
const V6_FORBIDDEN: &[(Ipv6Net, &str)] = &[
    (net6([0, 0, 0, 0, 0, 0, 0, 0], 128), "unspecified"),
    (net6([0, 0, 0, 0, 0, 0, 0, 1], 128), "loopback"),
    (
        net6([0, 0, 0, 0, 0, 0, 0, 0], 96),
        "reserved (IPv4-compatible)",
    ),
    (
        net6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),
        "private (local NAT64)",
    ),
    (net6([0x100, 0, 0, 0, 0, 0, 0, 0], 64), "reserved (discard)"),
    (net6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32), "reserved (Teredo)"),
    (net6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), "documentation"),
    (
        net6([0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254], 128),
        "cloud metadata",
    ),
    (
        net6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),
        "private (unique local)",
    ),
    (net6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), "link-local"),
    (
        net6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10),
        "private (site-local)",
    ),
    (net6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), "multicast"),
];

const NAT64: Ipv6Net = net6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96);
const SIX_TO_FOUR: Ipv6Net = net6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16);

const fn net4(o: [u8; 4], len: u8) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(o[0], o[1], o[2], o[3]), len)
}

const fn net6(s: [u16; 8], len: u8) -> Ipv6Net {
    Ipv6Net::new_assert(
        Ipv6Addr::new(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]),
        len,
    )
}

/// Why `addr` is not a public unicast address a webhook may reach, or `None` when it is.
pub fn forbidden(addr: IpAddr) -> Option<&'static str> {
    match addr {
        IpAddr::V4(a) => V4_FORBIDDEN
            .iter()
            .find(|(net, _)| net.contains(&a))
            .map(|(_, kind)| *kind),
        IpAddr::V6(a) => {
            if let Some(v4) = a.to_ipv4_mapped() {
                return forbidden(IpAddr::V4(v4));
            }
            let o = a.octets();
            if NAT64.contains(&a) {
                return forbidden(IpAddr::V4(Ipv4Addr::new(o[12], o[13], o[14], o[15])));
            }
            if SIX_TO_FOUR.contains(&a) {
                return forbidden(IpAddr::V4(Ipv4Addr::new(o[2], o[3], o[4], o[5])));
            }
            V6_FORBIDDEN
                .iter()
                .find(|(net, _)| net.contains(&a))
                .map(|(_, kind)| *kind)
        }
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
    fn every_forbidden_range_is_refused_and_public_addresses_pass() {
        let cases = [
            ("0.0.0.0", Some("unspecified")),
            ("0.1.2.3", Some("unspecified")),
            ("10.1.2.3", Some("private")),
            ("100.64.0.1", Some("shared (CGNAT)")),
            ("100.127.255.254", Some("shared (CGNAT)")),
            ("127.0.0.1", Some("loopback")),
            ("127.255.0.9", Some("loopback")),
            ("169.254.169.254", Some("cloud metadata")),
            ("169.254.1.1", Some("link-local")),
            ("172.16.0.1", Some("private")),
            ("172.31.255.255", Some("private")),
            ("192.0.0.192", Some("reserved (IETF protocol assignments)")),
            ("192.0.2.10", Some("documentation")),
            ("192.168.1.1", Some("private")),
            ("198.18.0.1", Some("benchmarking")),
            ("224.0.0.1", Some("multicast")),
            ("239.255.255.250", Some("multicast")),
            ("240.0.0.1", Some("reserved")),
            ("255.255.255.255", Some("reserved")),
            ("::", Some("unspecified")),
            ("::1", Some("loopback")),
            ("::7f00:1", Some("reserved (IPv4-compatible)")),
            ("::ffff:127.0.0.1", Some("loopback")),
            ("::ffff:169.254.169.254", Some("cloud metadata")),
            ("64:ff9b::a9fe:a9fe", Some("cloud metadata")),
            ("64:ff9b::0a00:0001", Some("private")),
            ("64:ff9b:1::1", Some("private (local NAT64)")),
            ("2002:7f00:1::1", Some("loopback")),
            ("2001::1", Some("reserved (Teredo)")),
            ("2001:db8::1", Some("documentation")),
            ("fd00:ec2::254", Some("cloud metadata")),
            ("fd12:3456::1", Some("private (unique local)")),
            ("fc00::1", Some("private (unique local)")),
            ("fe80::1", Some("link-local")),
            ("fec0::1", Some("private (site-local)")),
            ("ff02::1", Some("multicast")),
            ("100::1", Some("reserved (discard)")),
            // Public unicast.
            ("1.1.1.1", None),
            ("8.8.8.8", None),
            ("100.63.255.255", None),
            ("100.128.0.0", None),
            ("172.32.0.1", None),
            ("169.253.255.255", None),
            ("2606:4700:4700::1111", None),
            ("::ffff:8.8.8.8", None),
            ("64:ff9b::808:808", None),
            ("2002:808:808::1", None),
        ];
        for (addr, want) in cases {
            let ip: IpAddr = addr.parse().expect(addr);
            assert_eq!(forbidden(ip), want, "{addr}");
        }
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
