use std::fmt;
use std::str::FromStr;

use oci_spec::distribution::Reference;

/// A parsed, normalised OCI image reference.
///
/// Invariant: the registry host, repository and a tag or digest are always present,
/// normalised the way Docker does it (`busybox` → `docker.io/library/busybox:latest`),
/// so one image has one spelling and the spelling is the image store's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef(Reference);

/// Longest reference text accepted (the distribution spec caps names at 255 bytes;
/// a tag and a digest come on top).
const MAX_REFERENCE_LEN: usize = 512;

impl ImageRef {
    /// Parse and normalise `text`; the error says why it is not a reference.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() || text.len() > MAX_REFERENCE_LEN || text.trim() != text {
            return Err(format!("image {text:?} is not a valid OCI image reference"));
        }
        let reference = Reference::from_str(text)
            .map_err(|e| format!("image {text:?} is not a valid OCI image reference: {e}"))?;
        if let Some(digest) = reference.digest() {
            if !is_sha256_digest(digest) {
                return Err(format!(
                    "image {text:?}: only sha256 digests (sha256:<64 hex digits>) are supported"
                ));
            }
        }
        let reference = match (reference.tag(), reference.digest()) {
            (None, None) => Reference::with_tag(
                reference.registry().to_string(),
                reference.repository().to_string(),
                "latest".to_string(),
            ),
            _ => reference,
        };
        Ok(Self(reference))
    }

    /// The normalised text (`host[:port]/repository[:tag][@digest]`).
    pub fn key(&self) -> String {
        self.0.whole()
    }

    /// The registry host (`host[:port]`) as written in the reference.
    pub fn registry(&self) -> &str {
        self.0.registry()
    }

    /// The digest the reference pins, if any.
    pub fn digest(&self) -> Option<&str> {
        self.0.digest()
    }

    /// The underlying distribution reference (for the registry client).
    pub fn as_reference(&self) -> &Reference {
        &self.0
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key())
    }
}

/// Whether `s` is `sha256:` followed by 64 lower-case hex digits (safe as a file name).
pub fn is_sha256_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key(s: &str) -> String {
        ImageRef::parse(s).map(|r| r.key()).unwrap_or_else(|e| e)
    }

    #[test]
    fn short_names_are_normalised_like_docker() {
        assert_eq!(key("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(key("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(key("user/app"), "docker.io/user/app:latest");
        assert_eq!(
            key("index.docker.io/library/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(key("127.0.0.1:5000/ns/app"), "127.0.0.1:5000/ns/app:latest");
        assert_eq!(key("localhost:5000/app:v1"), "localhost:5000/app:v1");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            key(&format!("reg.example/app@{d}")),
            format!("reg.example/app@{d}")
        );
        assert_eq!(
            ImageRef::parse("127.0.0.1:5000/x").unwrap().registry(),
            "127.0.0.1:5000"
        );
    }

    #[test]
    fn invalid_references_are_refused() {
        for bad in [
            "",
            " busybox",
            "busybox/UPPER",
            "a/../b",
            "busybox:",
            "busybox@sha256:short",
            "busybox@md5:0123456789abcdef0123456789abcdef",
            "-leading",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(ImageRef::parse(&"a".repeat(600)).is_err());
    }
}
