//! Which registries a client may make the server pull from: `images.allowed_registries`
//! (checked at submission and before every pull) and, for the registry host a pull
//! connects to, the address check of [`crate::net_policy`] (no loopback, private,
//! link-local or metadata address unless the host is in `images.private_registries`).
//!
//! What the address check does not cover: the registry client resolves the host again
//! when it connects, follows HTTP redirects (blob downloads are often redirected to a
//! CDN) and fetches tokens from the realm the registry names. The allow-list is what
//! guards those: list registries you trust, and keep `*` for closed networks.

use std::net::IpAddr;

use crate::model::ImageRef;
use crate::net_policy::{normalise_name, HostPolicy};

use super::ImagesConfig;

/// The registries pulls may use, built from `[images]`.
#[derive(Debug, Clone)]
pub struct RegistryPolicy {
    hosts: HostPolicy,
}

/// A registry `host[:port]` split into its normalised host and its port.
fn split_registry(registry: &str) -> (String, Option<u16>) {
    let (host, port) = match registry.rsplit_once(':') {
        // `[::1]:5000`, `host:5000`; a bare IPv6 literal has more colons and brackets.
        Some((h, p)) if !h.is_empty() && (!h.contains(':') || h.ends_with(']')) => {
            (h, p.parse().ok())
        }
        _ => (registry, None),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = match host.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => normalise_name(host),
    };
    (host, port)
}

impl RegistryPolicy {
    /// The policy of `cfg` (an unparsable entry is a start-up error).
    pub fn new(cfg: &ImagesConfig) -> Result<Self, String> {
        Ok(Self {
            hosts: HostPolicy::new(
                &cfg.allowed_registries,
                &cfg.private_registries,
                "images.allowed_registries",
                "images.private_registries",
            )?,
        })
    }

    /// Whether `image`'s registry is allowed (any port); a registry given as an IP
    /// literal must also be a public address unless it is a private registry. The
    /// error is a sentence for a 400 or a failed pull.
    pub fn check(&self, image: &ImageRef) -> Result<(), String> {
        let registry = image.registry();
        let (host, _) = split_registry(registry);
        let ip = host.parse::<IpAddr>().ok();
        if !self.hosts.allows(&host, ip.is_some()) {
            return Err(format!(
                "registry {registry} is not allowed (images.allowed_registries)"
            ));
        }
        if let Some(ip) = ip {
            self.hosts
                .check_addr(&host, ip)
                .map_err(|e| format!("registry {registry} refused: {e}"))?;
        }
        Ok(())
    }

    /// [`RegistryPolicy::check`], then every address the registry host a pull connects
    /// to resolves to (`docker.io` is served by `index.docker.io`).
    pub async fn check_resolved(&self, image: &ImageRef) -> Result<(), String> {
        self.check(image)?;
        let target = image.as_reference().resolve_registry();
        let (host, port) = split_registry(target);
        if host.parse::<IpAddr>().is_ok() {
            return Ok(());
        }
        let addrs = tokio::net::lookup_host((host.as_str(), port.unwrap_or(443)))
            .await
            .map_err(|e| format!("registry {target} could not be resolved: {e}"))?;
        for addr in addrs {
            self.hosts
                .check_addr(&host, addr.ip())
                .map_err(|e| format!("registry {target} refused: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::Config;

    fn policy(allowed: &[&str], private: &[&str]) -> Result<RegistryPolicy, String> {
        let mut cfg = Config::load_from(HashMap::new()).unwrap().images;
        cfg.allowed_registries = allowed.iter().map(|s| s.to_string()).collect();
        cfg.private_registries = private.iter().map(|s| s.to_string()).collect();
        RegistryPolicy::new(&cfg)
    }

    fn check(p: &RegistryPolicy, image: &str) -> Result<(), String> {
        p.check(&ImageRef::parse(image).unwrap())
    }

    #[test]
    fn registries_are_split_into_a_normalised_host_and_a_port() {
        assert_eq!(split_registry("docker.io"), ("docker.io".into(), None));
        assert_eq!(
            split_registry("Reg.Example.:5000"),
            ("reg.example".into(), Some(5000))
        );
        assert_eq!(
            split_registry("127.0.0.1:5000"),
            ("127.0.0.1".into(), Some(5000))
        );
        assert_eq!(split_registry("[::1]:5000"), ("::1".into(), Some(5000)));
        assert_eq!(split_registry("[::1]"), ("::1".into(), None));
    }

    #[test]
    fn the_default_allows_the_well_known_public_registries_only() {
        let cfg = Config::load_from(HashMap::new()).unwrap().images;
        let p = RegistryPolicy::new(&cfg).unwrap();
        for ok in [
            "busybox",
            "docker.io/library/alpine:3",
            "ghcr.io/o/app:1",
            "quay.io/o/app",
        ] {
            assert_eq!(check(&p, ok), Ok(()), "{ok}");
        }
        for refused in [
            "reg.example/app",
            "127.0.0.1:5000/app",
            "169.254.169.254/latest",
            "10.0.0.5:5000/app",
            "localhost:5000/app",
        ] {
            let err = check(&p, refused).expect_err(refused);
            assert!(
                err.contains("images.allowed_registries"),
                "{refused}: {err}"
            );
        }
    }

    #[test]
    fn allowed_registries_match_by_host_and_wildcard_at_any_port() {
        let p = policy(&["reg.example", "*.corp.example"], &[]).unwrap();
        assert_eq!(check(&p, "reg.example:5000/app"), Ok(()));
        assert_eq!(check(&p, "REG.example/app"), Ok(()));
        assert_eq!(check(&p, "a.corp.example/app"), Ok(()));
        assert!(check(&p, "corp.example/app").is_err());
        assert!(check(&p, "reg.example.evil/app").is_err());
        assert!(check(&p, "docker.io/library/busybox").is_err());
    }

    #[test]
    fn an_ip_literal_registry_must_be_public_unless_listed_as_private() {
        let p = policy(&["*"], &["127.0.0.1"]).unwrap();
        assert_eq!(check(&p, "127.0.0.1:5000/app"), Ok(()));
        assert_eq!(check(&p, "8.8.8.8:5000/app"), Ok(()));
        for refused in [
            "127.0.0.2:5000/app",
            "10.1.2.3/app",
            "169.254.169.254/app",
            "0.0.0.0:5000/app",
            "100.64.0.1/app",
        ] {
            let err = check(&p, refused).expect_err(refused);
            assert!(
                err.contains("images.private_registries"),
                "{refused}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn a_name_resolving_to_a_private_address_is_refused_before_the_pull() {
        let p = policy(&["*"], &[]).unwrap();
        let image = ImageRef::parse("localhost:5000/app").unwrap();
        let err = p.check_resolved(&image).await.expect_err("loopback");
        assert!(err.contains("loopback"), "{err}");
        let p = policy(&["*"], &["localhost"]).unwrap();
        assert_eq!(p.check_resolved(&image).await, Ok(()));
    }

    #[test]
    fn bad_configuration_is_refused() {
        assert!(policy(&["*"], &["*.corp"]).is_err(), "wildcard private");
        assert!(policy(&["reg.example"], &["other.example"]).is_err());
        assert!(policy(&["http://reg.example/"], &[]).is_err());
    }
}
