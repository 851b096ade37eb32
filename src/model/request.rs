use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{IsolationRequest, Runtime};
use crate::images::policy::RegistryPolicy;
use crate::webhooks::policy::CallbackPolicy;

/// The submission body exactly as a client sends it (see docs/api.md). Only shape is
/// checked here; every rule lives in [`WorkloadRequest::try_from`]. `Serialize` is for
/// clients (`vulcan::client`): absent fields are left out of the body.
#[derive(Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadRequestDto {
    /// Required: `node`, `wasm`, `python`, `go` or `oci`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// Optional, default `auto`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub isolation: Option<String>,
    /// Source text; exclusive with `code_archive`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Base64 of an archive or binary module; exclusive with `code`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code_archive: Option<String>,
    /// Any JSON value handed to the workload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<serde_json::Value>,
    /// OCI image reference (runtime `oci` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Replacement entrypoint (runtime `oci` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Limits; missing ones take the configured defaults.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourcesDto>,
    /// Completion webhook URL (accepted only as the server's callback policy allows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
}

/// The `resources` object of a submission.
#[derive(Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourcesDto {
    /// CPUs (whole cores).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<i64>,
    /// Memory in MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_mb: Option<i64>,
    /// Wall-clock limit in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<i64>,
}

/// Configured defaults and maxima for [`Resources`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// CPUs when the request names none.
    pub default_cpus: u32,
    /// Largest accepted `cpus`.
    pub max_cpus: u32,
    /// Memory when the request names none.
    pub default_mem_mb: u32,
    /// Largest accepted `mem_mb`.
    pub max_mem_mb: u32,
    /// Timeout when the request names none.
    pub default_timeout_s: u32,
    /// Largest accepted `timeout_s`.
    pub max_timeout_s: u32,
}

/// Validated limits. Invariant: every field is ≥ 1 and within the configured maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resources {
    /// Whole CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub mem_mb: u32,
    /// Wall-clock limit in seconds.
    pub timeout_s: u32,
}

/// What a workload runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// Source text (or WAT for wasm).
    Code(String),
    /// Decoded archive bytes (tar.gz for python/go, a `.wasm` module for wasm).
    Archive(Vec<u8>),
    /// An OCI image and optional replacement command.
    Image {
        /// The image reference.
        reference: String,
        /// Replaces the image's entrypoint + cmd when present.
        command: Option<Vec<String>>,
    },
}

impl Payload {
    /// Bytes it holds in memory (what `max_queue_bytes` counts, with the input).
    pub fn size_bytes(&self) -> usize {
        match self {
            Payload::Code(c) => c.len(),
            Payload::Archive(a) => a.len(),
            Payload::Image { reference, command } => {
                reference.len() + command.iter().flatten().map(String::len).sum::<usize>()
            }
        }
    }
}

/// A submission that passed every rule of the API contract.
///
/// Invariant: constructed only through
/// `TryFrom<(WorkloadRequestDto, &Limits, &CallbackPolicy, &RegistryPolicy)>`.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadRequest {
    /// The runtime.
    pub runtime: Runtime,
    /// What the client asked for (`auto` or a class).
    pub isolation: IsolationRequest,
    /// Code, archive or image.
    pub payload: Payload,
    /// The JSON input, serialised (`null` when none was given).
    pub input: Vec<u8>,
    /// Validated limits.
    pub resources: Resources,
    /// The completion webhook URL, normalised by the URL parser, when the callback
    /// policy accepted it (what was checked is what is stored and used).
    pub callback_url: Option<String>,
}

/// Why a submission was rejected (always a client mistake: HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RequestError(pub String);

fn bad(msg: impl Into<String>) -> RequestError {
    RequestError(msg.into())
}

fn limit(name: &str, value: Option<i64>, default: u32, max: u32) -> Result<u32, RequestError> {
    match value {
        None => Ok(default),
        Some(v) if v < 1 => Err(bad(format!(
            "resources.{name} must be a positive integer, got {v}"
        ))),
        Some(v) if v > i64::from(max) => Err(bad(format!(
            "resources.{name} is {v}, above the maximum of {max}"
        ))),
        Some(v) => Ok(v as u32),
    }
}

impl
    TryFrom<(
        WorkloadRequestDto,
        &Limits,
        &CallbackPolicy,
        &RegistryPolicy,
    )> for WorkloadRequest
{
    type Error = RequestError;

    fn try_from(
        (dto, limits, callbacks, registries): (
            WorkloadRequestDto,
            &Limits,
            &CallbackPolicy,
            &RegistryPolicy,
        ),
    ) -> Result<Self, Self::Error> {
        let runtime: Runtime = dto
            .runtime
            .as_deref()
            .ok_or_else(|| bad("runtime is required (one of: node, wasm, python, go, oci)"))?
            .parse()
            .map_err(bad)?;
        let isolation = match dto.isolation.as_deref() {
            None => IsolationRequest::Auto,
            Some(s) => s.parse().map_err(bad)?,
        };

        let payload = if runtime == Runtime::Oci {
            if dto.code.is_some() || dto.code_archive.is_some() {
                return Err(bad(
                    "runtime oci runs an image: code and code_archive are not accepted",
                ));
            }
            let reference = dto
                .image
                .ok_or_else(|| bad("image is required for runtime oci"))?;
            validate_image(&reference, registries)?;
            if let Some(cmd) = &dto.command {
                if cmd.is_empty() {
                    return Err(bad("command must not be empty when given"));
                }
                if cmd.iter().any(|a| a.contains('\0')) {
                    return Err(bad("command arguments must not contain NUL"));
                }
            }
            Payload::Image {
                reference,
                command: dto.command,
            }
        } else {
            if dto.image.is_some() {
                return Err(bad("image is only accepted with runtime oci"));
            }
            if dto.command.is_some() {
                return Err(bad("command is only accepted with runtime oci"));
            }
            match (dto.code, dto.code_archive) {
                (Some(_), Some(_)) => {
                    return Err(bad("code and code_archive are mutually exclusive"))
                }
                (None, None) => {
                    return Err(bad(format!(
                        "one of code or code_archive is required for runtime {runtime}"
                    )))
                }
                (Some(code), None) => {
                    if code.trim().is_empty() {
                        return Err(bad("code must not be empty"));
                    }
                    Payload::Code(code)
                }
                (None, Some(b64)) => {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(b64.trim())
                        .map_err(|e| bad(format!("code_archive is not valid base64: {e}")))?;
                    if bytes.is_empty() {
                        return Err(bad("code_archive must not be empty"));
                    }
                    Payload::Archive(bytes)
                }
            }
        };

        let res = dto.resources.unwrap_or_default();
        let resources = Resources {
            cpus: limit("cpus", res.cpus, limits.default_cpus, limits.max_cpus)?,
            mem_mb: limit(
                "mem_mb",
                res.mem_mb,
                limits.default_mem_mb,
                limits.max_mem_mb,
            )?,
            timeout_s: limit(
                "timeout_s",
                res.timeout_s,
                limits.default_timeout_s,
                limits.max_timeout_s,
            )?,
        };

        let input = serde_json::to_vec(&dto.input.unwrap_or(serde_json::Value::Null))
            .map_err(|e| bad(format!("input is not serialisable: {e}")))?;

        let callback_url = dto
            .callback_url
            .map(|url| callbacks.check_url(&url).map(String::from))
            .transpose()
            .map_err(bad)?;

        Ok(WorkloadRequest {
            runtime,
            isolation,
            payload,
            input,
            resources,
            callback_url,
        })
    }
}

fn validate_image(reference: &str, registries: &RegistryPolicy) -> Result<(), RequestError> {
    let image = super::ImageRef::parse(reference).map_err(bad)?;
    registries.check(&image).map_err(bad)
}

impl WorkloadRequest {
    /// `sha256:<hex>` over the payload (code, archive or image) and the input.
    pub fn input_hash(&self) -> String {
        let mut h = Sha256::new();
        match &self.payload {
            Payload::Code(code) => h.update(code.as_bytes()),
            Payload::Archive(bytes) => h.update(bytes),
            Payload::Image { reference, command } => {
                h.update(reference.as_bytes());
                if let Some(cmd) = command {
                    for arg in cmd {
                        h.update([0u8]);
                        h.update(arg.as_bytes());
                    }
                }
            }
        }
        h.update([0u8]);
        h.update(&self.input);
        format!("sha256:{}", hex::encode(h.finalize()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allowed: &[&str]) -> CallbackPolicy {
        let mut cfg = crate::config::Config::load_from(Default::default())
            .expect("defaults")
            .webhooks;
        cfg.allowed_hosts = allowed.iter().map(|s| s.to_string()).collect();
        CallbackPolicy::new(&cfg).expect("policy")
    }

    fn parse_with(json: &str, callbacks: &CallbackPolicy) -> Result<WorkloadRequest, RequestError> {
        let dto: WorkloadRequestDto = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
        let config = crate::config::Config::defaults().expect("defaults");
        let registries = RegistryPolicy::new(&config.images).expect("registries");
        WorkloadRequest::try_from((dto, &config.limits(), callbacks, &registries))
    }

    fn parse(json: &str) -> Result<WorkloadRequest, RequestError> {
        parse_with(json, &policy(&[]))
    }

    #[test]
    fn callback_url_passes_the_policy_and_is_kept_normalised() {
        let on = policy(&["hooks.example.com"]);
        let r = parse_with(
            r#"{"runtime":"node","code":"x","callback_url":"https://HOOKS.example.com/done?k=1"}"#,
            &on,
        )
        .expect("allowed");
        assert_eq!(
            r.callback_url.as_deref(),
            Some("https://hooks.example.com/done?k=1")
        );
        let none = parse_with(r#"{"runtime":"node","code":"x"}"#, &on).expect("no callback");
        assert_eq!(none.callback_url, None);
        for (json, policy, want) in [
            (
                r#"{"runtime":"node","code":"x","callback_url":"https://other.example/"}"#,
                &on,
                "not allowed",
            ),
            (
                r#"{"runtime":"node","code":"x","callback_url":"https://hooks.example.com/"}"#,
                &policy(&[]),
                "not enabled",
            ),
        ] {
            let err = parse_with(json, policy).expect_err(json);
            assert!(err.0.contains(want), "{json}: {err}");
        }
    }

    #[test]
    fn api_example_is_accepted_with_defaults() {
        let r = parse(r#"{"runtime":"node","code":"export default (i) => i","input":{"a":1}}"#)
            .expect("valid");
        assert_eq!(r.runtime, Runtime::Node);
        assert_eq!(r.isolation, IsolationRequest::Auto);
        assert_eq!(
            r.resources,
            Resources {
                cpus: 1,
                mem_mb: 128,
                timeout_s: 30
            }
        );
        assert_eq!(r.input, br#"{"a":1}"#);
        assert!(r.input_hash().starts_with("sha256:"));
        assert_eq!(r.input_hash().len(), 7 + 64);
    }

    #[test]
    fn every_rule_rejects() {
        let cases = [
            (r#"{"code":"x"}"#, "runtime is required"),
            (r#"{"runtime":"ruby","code":"x"}"#, "unknown runtime"),
            (
                r#"{"runtime":"node","isolation":"vm","code":"x"}"#,
                "unknown isolation",
            ),
            (
                r#"{"runtime":"node","code":"x","code_archive":"eA=="}"#,
                "mutually exclusive",
            ),
            (r#"{"runtime":"node"}"#, "one of code or code_archive"),
            (
                r#"{"runtime":"wasm","code_archive":"!!!"}"#,
                "not valid base64",
            ),
            (
                r#"{"runtime":"node","code":"x","resources":{"cpus":0}}"#,
                "positive",
            ),
            (
                r#"{"runtime":"node","code":"x","resources":{"mem_mb":-5}}"#,
                "positive",
            ),
            (
                r#"{"runtime":"node","code":"x","resources":{"timeout_s":99999}}"#,
                "above the maximum",
            ),
            (
                r#"{"runtime":"node","code":"x","image":"busybox"}"#,
                "only accepted with runtime oci",
            ),
            (
                r#"{"runtime":"node","code":"x","command":["sh"]}"#,
                "only accepted with runtime oci",
            ),
            (r#"{"runtime":"oci"}"#, "image is required"),
            (
                r#"{"runtime":"oci","image":"busybox","code":"x"}"#,
                "not accepted",
            ),
            (
                r#"{"runtime":"oci","image":"bad image!"}"#,
                "not a valid OCI image",
            ),
            (
                r#"{"runtime":"node","code":"x","colour":"red"}"#,
                "unknown field `colour`",
            ),
            (
                r#"{"runtime":"node","code":"x","resources":{"gpus":1}}"#,
                "unknown field `gpus`",
            ),
            (r#"{"runtime":"node","code":"   "}"#, "must not be empty"),
        ];
        for (json, want) in cases {
            let err = parse(json).expect_err(json);
            assert!(err.0.contains(want), "{json}: {err} (wanted {want:?})");
        }
    }

    #[test]
    fn oci_with_image_and_command() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        let json = format!(
            r#"{{"runtime":"oci","image":"ghcr.io/ns/app@{digest}","command":["sh","-c","echo"]}}"#
        );
        let r = parse(&json).expect("valid");
        assert!(matches!(r.payload, Payload::Image { .. }));
        let short = r#"{"runtime":"oci","image":"ghcr.io/ns/app@sha256:abc"}"#;
        assert!(
            parse(short).is_err(),
            "a truncated digest is not a reference"
        );
        for elsewhere in [
            "registry.example/ns/app",
            "127.0.0.1:5000/app",
            "169.254.169.254/x",
        ] {
            let json = format!(r#"{{"runtime":"oci","image":"{elsewhere}"}}"#);
            let err = parse(&json).expect_err(elsewhere);
            assert!(
                err.0.contains("images.allowed_registries"),
                "{elsewhere}: {err}"
            );
        }
    }

    #[test]
    fn hash_depends_on_payload_and_input() {
        let a = parse(r#"{"runtime":"node","code":"x","input":1}"#).expect("a");
        let b = parse(r#"{"runtime":"node","code":"x","input":2}"#).expect("b");
        let c = parse(r#"{"runtime":"node","code":"y","input":1}"#).expect("c");
        assert_ne!(a.input_hash(), b.input_hash());
        assert_ne!(a.input_hash(), c.input_hash());
        assert_eq!(
            a.input_hash(),
            parse(r#"{"runtime":"node","code":"x","input":1}"#)
                .expect("a2")
                .input_hash()
        );
    }
}
