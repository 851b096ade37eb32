//! `Idempotency-Key` (after the IETF httpapi draft): a client-chosen key that makes a
//! retried submission answer the workload the first one created instead of running
//! it again.

use std::fmt;

use sha2::{Digest, Sha256};

use super::{Payload, RequestError, WorkloadId, WorkloadRequest};

/// Longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 255;

/// Which submit endpoint a request used; a key replays with the status of its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubmitKind {
    /// `POST /v1/workloads`: waits for the terminal record (200).
    Sync,
    /// `POST /v1/workloads/async`: answers at once (202).
    Async,
}

impl SubmitKind {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SubmitKind::Sync => "sync",
            SubmitKind::Async => "async",
        }
    }
}

impl std::str::FromStr for SubmitKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sync" => Ok(SubmitKind::Sync),
            "async" => Ok(SubmitKind::Async),
            other => Err(format!("unknown submit kind {other:?}")),
        }
    }
}

/// A client's key, scoped to the credentials that sent it.
///
/// Invariant: `key` is 1..=255 bytes of visible ASCII; `scope` is empty without auth,
/// otherwise a digest of the bearer token (the token itself is never stored).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey {
    scope: String,
    key: String,
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyKey")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl IdempotencyKey {
    /// Validate the header value (a structured-field string, `"…"`, or the bare text)
    /// and scope it to `token` when auth is on.
    pub fn parse(header: &[u8], token: Option<&str>) -> Result<Self, RequestError> {
        let text = std::str::from_utf8(header)
            .ok()
            .filter(|t| t.bytes().all(|b| (0x20..0x7f).contains(&b)))
            .ok_or_else(|| RequestError("Idempotency-Key must be visible ASCII text".into()))?;
        let text = text.trim();
        let key = text
            .strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .unwrap_or(text);
        if key.is_empty() {
            return Err(RequestError("Idempotency-Key must not be empty".into()));
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(RequestError(format!(
                "Idempotency-Key is {} bytes long; at most {MAX_KEY_BYTES} are accepted",
                key.len()
            )));
        }
        let scope = token
            .map(|t| format!("token:{}", hex::encode(Sha256::digest(t.as_bytes()))))
            .unwrap_or_default();
        Ok(Self {
            scope,
            key: key.to_string(),
        })
    }

    /// Whose key it is (empty without auth).
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// The key as the client sent it (without structured-field quotes).
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// A remembered key: the request it was first used with and what it created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// [`WorkloadRequest::fingerprint`] of the first request.
    pub fingerprint: String,
    /// The workload the first request created.
    pub workload_id: WorkloadId,
    /// The endpoint of the first request.
    pub kind: SubmitKind,
}

impl WorkloadRequest {
    /// `sha256:<hex>` over everything that makes two submissions the same request: the
    /// endpoint, runtime, requested isolation, payload, input and resources (after
    /// validation, so JSON spacing and key order do not matter).
    pub fn fingerprint(&self, kind: SubmitKind) -> String {
        let mut h = Sha256::new();
        let mut field = |bytes: &[u8]| {
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        field(kind.as_str().as_bytes());
        field(self.runtime.as_str().as_bytes());
        field(self.isolation.as_str().as_bytes());
        match &self.payload {
            Payload::Code(code) => {
                field(b"code");
                field(code.as_bytes());
            }
            Payload::Archive(bytes) => {
                field(b"archive");
                field(bytes);
            }
            Payload::Image { reference, command } => {
                field(b"image");
                field(reference.as_bytes());
                for arg in command.iter().flatten() {
                    field(arg.as_bytes());
                }
            }
        }
        field(&self.input);
        let r = self.resources;
        for n in [r.cpus, r.mem_mb, r.timeout_s] {
            field(&n.to_le_bytes());
        }
        format!("sha256:{}", hex::encode(h.finalize()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_validated_and_scoped() {
        let k = IdempotencyKey::parse(b"\"abc-123\"", None).expect("quoted");
        assert_eq!((k.scope(), k.key()), ("", "abc-123"));
        assert_eq!(IdempotencyKey::parse(b"abc-123", None).expect("bare"), k);
        let scoped = IdempotencyKey::parse(b"abc-123", Some("s3cret")).expect("scoped");
        assert_ne!(scoped, k);
        assert!(!scoped.scope().contains("s3cret"));
        assert!(IdempotencyKey::parse(&[b'k'; 255], None).is_ok());
        for bad in [&b""[..], b"\"\"", &[b'k'; 256], b"caf\xc3\xa9", b"a\tb"] {
            assert!(IdempotencyKey::parse(bad, None).is_err(), "{bad:?}");
        }
    }
}
