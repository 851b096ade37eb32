//! Talking to registries through `oci-client`: manifests (with platform selection in
//! image indexes), token or basic auth, and blobs streamed to disk with their digest and
//! size verified before anything uses them.

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::Client;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::{ImagesConfig, PullError};
use crate::model::{is_sha256_digest, ImageRef};

/// How long connecting to a registry may take (the whole pull has its own bound).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A registry client for the store: one per store, sharing tokens between pulls.
#[derive(Clone)]
pub struct Registry {
    client: Client,
    cfg: ImagesConfig,
}

impl Registry {
    /// A client honouring `insecure_registries`; index entries are resolved to this
    /// host's platform (linux and this CPU architecture).
    pub fn new(cfg: &ImagesConfig) -> Self {
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(cfg.insecure_registries.clone()),
            platform_resolver: Some(Box::new(oci_client::client::current_platform_resolver)),
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(Duration::from_secs(cfg.pull_timeout_s.max(1))),
            ..ClientConfig::default()
        };
        Self {
            client: Client::new(config),
            cfg: cfg.clone(),
        }
    }

    fn auth(&self, image: &ImageRef) -> RegistryAuth {
        match self.cfg.credentials.get(image.registry()) {
            Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.expose().to_string()),
            None => RegistryAuth::Anonymous,
        }
    }

    /// The image manifest for this platform and its digest (an index is resolved).
    pub async fn manifest(
        &self,
        image: &ImageRef,
    ) -> Result<(OciImageManifest, String), PullError> {
        let (manifest, digest, _index) = self
            .client
            .pull_image_manifest_and_list_digest(image.as_reference(), &self.auth(image))
            .await
            .map_err(|e| classify(image, e))?;
        if !is_sha256_digest(&digest) {
            return Err(PullError::Unsupported(format!(
                "manifest digest {digest:?} is not a sha256 digest"
            )));
        }
        Ok((manifest, digest))
    }

    /// Stream the blob `desc` into `dest` (a new file), verifying its size and sha256
    /// digest; `dest` is removed unless the blob is complete and verified. Returns the
    /// bytes written.
    pub async fn fetch_blob(
        &self,
        image: &ImageRef,
        desc: &OciDescriptor,
        dest: &Path,
    ) -> Result<u64, PullError> {
        let result = self.fetch_blob_inner(image, desc, dest).await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(dest).await;
        }
        result
    }

    async fn fetch_blob_inner(
        &self,
        image: &ImageRef,
        desc: &OciDescriptor,
        dest: &Path,
    ) -> Result<u64, PullError> {
        let expected = u64::try_from(desc.size).map_err(|_| {
            PullError::Unsupported(format!("blob {} has a negative size", desc.digest))
        })?;
        let auth = self.auth(image);
        self.client
            .store_auth_if_needed(image.as_reference().resolve_registry(), &auth)
            .await;
        let mut stream = self
            .client
            .pull_blob_stream(image.as_reference(), desc)
            .await
            .map_err(|e| classify(image, e))?;
        let mut file = tokio::fs::File::create(dest)
            .await
            .map_err(|e| PullError::Internal(format!("cannot create a blob file: {e}")))?;
        let mut hasher = Sha256::new();
        let mut received = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                // The client checks the digest itself at the end of the stream; say
                // what we found rather than its wording.
                Err(_) if received == expected => break,
                Err(e) => {
                    return Err(PullError::Unreachable(format!(
                        "registry {}: download of {} broke off: {e}",
                        image.registry(),
                        desc.digest
                    )))
                }
            };
            received = received.saturating_add(chunk.len() as u64);
            if received > expected {
                return Err(PullError::DigestMismatch(format!(
                    "blob {} is larger than the {expected} bytes its manifest states",
                    desc.digest
                )));
            }
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| PullError::Internal(format!("cannot write a blob file: {e}")))?;
        }
        if received != expected {
            return Err(PullError::DigestMismatch(format!(
                "blob {} has {received} bytes, its manifest states {expected}",
                desc.digest
            )));
        }
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != desc.digest {
            return Err(PullError::DigestMismatch(format!(
                "blob {} has digest {actual}",
                desc.digest
            )));
        }
        file.sync_all()
            .await
            .map_err(|e| PullError::Internal(format!("cannot sync a blob file: {e}")))?;
        Ok(received)
    }
}

/// Turn a client error into the reason a pull failed.
fn classify(image: &ImageRef, e: OciDistributionError) -> PullError {
    use OciDistributionError as E;
    let not_found = || PullError::NotFound(format!("{image} was not found in its registry"));
    let denied = || {
        PullError::AuthRefused(format!(
            "registry {} refused access to {image}",
            image.registry()
        ))
    };
    match e {
        E::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                )
            }) {
                not_found()
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                denied()
            } else {
                PullError::Registry(format!(
                    "registry {} answered: {}",
                    image.registry(),
                    envelope
                        .errors
                        .iter()
                        .map(|e| e.message.clone())
                        .collect::<Vec<_>>()
                        .join("; ")
                ))
            }
        }
        E::UnauthorizedError { .. } | E::AuthenticationFailure(_) => denied(),
        E::ServerError { code: 404, .. } => not_found(),
        E::ServerError {
            code: 401 | 403, ..
        } => denied(),
        E::ServerError { code, .. } => PullError::Registry(format!(
            "registry {} answered HTTP {code}",
            image.registry()
        )),
        E::ImageManifestNotFoundError(_) => {
            PullError::Unsupported(format!("{image} has no image for linux/{}", host_arch()))
        }
        E::DigestError(e) => PullError::DigestMismatch(e.to_string()),
        E::RequestError(e) => PullError::Unreachable(format!(
            "registry {} unreachable: {}",
            image.registry(),
            error_chain(&e)
        )),
        E::UnsupportedMediaTypeError(m) => {
            PullError::Unsupported(format!("unsupported manifest media type {m}"))
        }
        other => PullError::Registry(format!("registry {}: {other}", image.registry())),
    }
}

/// The error and its causes on one line (reqwest's own message alone says little).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// This host's architecture in OCI spelling.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}
