//! Where the server itself may connect on a client's behalf (webhook deliveries, image
//! pulls): host patterns an operator allows, and the addresses no such connection may
//! reach unless the operator names the host. One rule for every outgoing connection a
//! client can point the server at (server-side request forgery).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use url::Url;

/// One entry of an allow-list of hosts (`webhooks.allowed_hosts`,
/// `images.allowed_registries`): `*`, `*.example.com` or an exact host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `*`: any host.
    Any,
    /// `*.example.com`, kept as `.example.com`: any name below it (not the name itself).
    Below(String),
    /// A host name or IP literal, normalised like a URL's host.
    Exact(String),
}

impl HostPattern {
    /// Parse one configured entry (`key` names the setting in the error).
    pub fn parse(raw: &str, key: &str) -> Result<Self, String> {
        let raw = raw.trim();
        Ok(if raw == "*" {
            HostPattern::Any
        } else if let Some(rest) = raw.strip_prefix("*.") {
            HostPattern::Below(format!(".{}", parse_host(rest, key)?))
        } else {
            HostPattern::Exact(parse_host(raw, key)?)
        })
    }

    /// Whether `host` (normalised: see [`normalise_name`]) matches; a wildcard below a
    /// domain never matches an IP literal.
    pub fn matches(&self, host: &str, is_ip: bool) -> bool {
        match self {
            HostPattern::Any => true,
            HostPattern::Below(suffix) => {
                !is_ip && host.len() > suffix.len() && host.ends_with(suffix)
            }
            HostPattern::Exact(h) => h == host,
        }
    }
}

/// An allow-list of hosts and the hosts among them that may reach non-public
/// addresses: the one policy of every outgoing connection a client can aim.
///
/// Invariant: every pattern and private host is normalised the way [`host_of`]
/// normalises a URL's host, so comparisons are plain string equality; every private
/// host is allowed by some pattern.
#[derive(Debug, Clone)]
pub struct HostPolicy {
    allowed: Vec<HostPattern>,
    private: HashSet<String>,
    private_key: &'static str,
}

impl HostPolicy {
    /// The policy of the configured lists (`allowed_key`/`private_key` name them in
    /// errors). An unparsable pattern, a wildcard among the private hosts or a private
    /// host the allow-list does not allow is an error (at start-up). Empty entries are
    /// nothing (an empty environment list is `[""]`).
    pub fn new(
        allowed: &[String],
        private: &[String],
        allowed_key: &'static str,
        private_key: &'static str,
    ) -> Result<Self, String> {
        let allowed = allowed
            .iter()
            .filter(|h| !h.trim().is_empty())
            .map(|raw| HostPattern::parse(raw, allowed_key))
            .collect::<Result<Vec<_>, _>>()?;
        let mut hosts = HashSet::new();
        for raw in private.iter().filter(|h| !h.trim().is_empty()) {
            if raw.contains('*') {
                return Err(format!(
                    "{private_key}: {raw:?}: only exact hosts may reach private addresses"
                ));
            }
            let host = parse_host(raw, private_key)?;
            let is_ip = host.parse::<IpAddr>().is_ok();
            if !allowed.iter().any(|p| p.matches(&host, is_ip)) {
                return Err(format!(
                    "{private_key}: {raw:?} is not allowed by {allowed_key}"
                ));
            }
            hosts.insert(host);
        }
        Ok(Self {
            allowed,
            private: hosts,
            private_key,
        })
    }

    /// No host is allowed.
    pub fn is_empty(&self) -> bool {
        self.allowed.is_empty()
    }

    /// Whether `host` (normalised) is allowed.
    pub fn allows(&self, host: &str, is_ip: bool) -> bool {
        self.allowed.iter().any(|p| p.matches(host, is_ip))
    }

    /// Whether a connection to `host` may go to `addr`: any public address, and any
    /// address at all for a host listed among the private hosts.
    pub fn check_addr(&self, host: &str, addr: IpAddr) -> Result<(), String> {
        let host = normalise_name(host.trim_start_matches('[').trim_end_matches(']'));
        if self.private.contains(&host) {
            return Ok(());
        }
        let key = self.private_key;
        match forbidden(addr) {
            None => Ok(()),
            Some(kind) if host == addr.to_string() => Err(format!(
                "{addr} is a {kind} address (allowed only for hosts in {key})"
            )),
            Some(kind) => Err(format!(
                "{host} resolves to {addr}, a {kind} address (allowed only for hosts in {key})"
            )),
        }
    }
}

/// A URL's host in the form patterns are compared with: lower-case ASCII (IDNA),
/// without a trailing dot; IP literals in their canonical text (IPv6 without brackets).
pub fn host_of(url: &Url) -> Option<(String, Option<IpAddr>)> {
    match url.host()? {
        url::Host::Domain(d) => Some((normalise_name(d), None)),
        url::Host::Ipv4(a) => Some((a.to_string(), Some(IpAddr::V4(a)))),
        url::Host::Ipv6(a) => Some((a.to_string(), Some(IpAddr::V6(a)))),
    }
}

/// A host name as patterns compare it: lower-case, without a trailing dot.
pub fn normalise_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// A configured host (name or IP literal), normalised through the URL parser so it
/// compares equal to the host of a URL naming it.
pub fn parse_host(raw: &str, key: &str) -> Result<String, String> {
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

/// IPv4 ranges no outgoing connection may reach by default, first match wins (the metadata
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

/// IPv6 ranges no outgoing connection may reach by default. Ranges that embed an IPv4 address
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

/// Why `addr` is not a public unicast address an outgoing connection (a webhook, an
/// image pull) may reach, or `None` when it is.
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
    use super::*;

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
}
