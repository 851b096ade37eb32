//! `Vulcan-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, keyed
//! with `webhooks.secret`. The timestamp is inside the signed bytes, so a receiver that
//! also bounds the age of `t` refuses replays (docs/api.md shows how to verify).

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::Secret;

/// The header carrying the signature.
pub const HEADER: &str = "Vulcan-Signature";

/// Signs delivery bodies with one key.
///
/// Invariant: holds the keyed HMAC state, never the key in readable form; `Debug`
/// shows nothing of it.
#[derive(Clone)]
pub struct Signer {
    keyed: Hmac<Sha256>,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Signer(***)")
    }
}

impl Signer {
    /// A signer keyed with `secret` (any length, the empty key included).
    pub fn new(secret: &Secret) -> Result<Self, String> {
        let keyed = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
            .map_err(|e| format!("webhooks.secret cannot key HMAC-SHA256: {e}"))?;
        Ok(Self { keyed })
    }

    /// The header value for `body` sent at `unix_time` (seconds).
    pub fn sign(&self, unix_time: i64, body: &[u8]) -> String {
        let mut mac = self.keyed.clone();
        mac.update(unix_time.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!(
            "t={unix_time},v1={}",
            hex::encode(mac.finalize().into_bytes())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> Secret {
        serde_json::from_value(serde_json::json!(s)).expect("secret")
    }

    #[test]
    fn signature_matches_an_independent_hmac_sha256() {
        // Reference value from Python: hmac.new(b"whsec_test", b"1764460800." + body,
        // hashlib.sha256).hexdigest()
        let body = br#"{"id":"01K","status":"completed"}"#;
        let header = Signer::new(&secret("whsec_test"))
            .expect("signer")
            .sign(1_764_460_800, body);
        assert_eq!(
            header,
            "t=1764460800,v1=678d5ea0371542a5280dc529240305c348d4e0a786df0a0a26b09fc4124aacfa"
        );
    }

    #[test]
    fn signature_depends_on_key_time_and_every_body_byte() {
        let a = Signer::new(&secret("k1")).expect("signer");
        let b = Signer::new(&secret("k2")).expect("signer");
        let base = a.sign(1, b"body");
        assert_ne!(base, b.sign(1, b"body"));
        assert_ne!(base, a.sign(2, b"body"));
        assert_ne!(base, a.sign(1, b"bodY"));
        assert_eq!(base, a.sign(1, b"body"), "deterministic for equal inputs");
        assert!(!format!("{a:?}").contains("k1"));
    }
}
