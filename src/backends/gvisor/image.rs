//! `oci` workloads: an image from the [`ImageStore`] run under runsc.
//!
//! [`prepare`] pulls the image (while the workload is pending, outside its timeout)
//! and pins it with an [`ImageLease`] until the workload is over. [`execute`] writes a
//! bundle whose root is the image's shared, prepared root file system and runs it with
//! runsc's root overlay (`--overlay2=root:memory`): the run may write anywhere, its
//! writes land in sandbox memory (counted against its memory limit) and vanish with
//! it, and the prepared root file system on the host is never changed.
//!
//! The image's `Entrypoint`/`Cmd` (or the request's `command`), `Env`, `WorkingDir` and
//! `User` are honoured. `User` is resolved against the image's own `/etc/passwd`;
//! uid 0 there is the sandbox's root, never the host's: the process has no
//! capabilities at all (bounding set included, so not even a set-uid binary gains
//! one), cannot gain privileges, sees no host file, has no network and runs in a
//! cgroup with the workload's memory and CPU limits, like every gvisor run.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError};

use super::bundle::{self, ImageSpecParams};
use super::{cgroup, Inner, MAX_ENV_INPUT};
use crate::backends::{
    BackendError, CancellationToken, ExecContext, Preparation, Prepared, WorkloadResult,
    WorkloadSpec,
};
use crate::images::{self, ImageLease, ImageStore};
use crate::model::{ImageRef, Payload, WorkloadId};

/// Docker's default `PATH`, for images that set none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Pull (or find) the image of `spec` and pin it for the workload's lifetime.
pub(super) fn prepare(
    inner: &Arc<Inner>,
    store: &ImageStore,
    spec: &WorkloadSpec,
    cancel: CancellationToken,
) -> Option<Preparation> {
    let Payload::Image { reference, .. } = &spec.payload else {
        return None;
    };
    let reference = reference.clone();
    let store = store.clone();
    let inner = inner.clone();
    let id = spec.id;
    Some(Box::pin(async move {
        let image = ImageRef::parse(&reference)
            .map_err(|e| BackendError::InvalidPayload(format!("image pull failed: {e}")))?;
        let lease = tokio::select! {
            lease = store.ensure(&image) => lease,
            () = cancel.cancelled() => return Err(BackendError::Cancelled),
        }
        .map_err(|e| BackendError::InvalidPayload(images::pull_failed(&e)))?;
        inner
            .prepared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, lease);
        Ok(Prepared::new(PreparedImage { inner, id }))
    }))
}

/// Unpins the image when the engine drops it (the workload is over).
struct PreparedImage {
    inner: Arc<Inner>,
    id: WorkloadId,
}

impl Drop for PreparedImage {
    fn drop(&mut self) {
        self.inner
            .prepared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

/// Run the prepared image of `spec`.
pub(super) async fn execute(
    inner: Arc<Inner>,
    spec: WorkloadSpec,
    ctx: ExecContext,
) -> Result<WorkloadResult, BackendError> {
    let pinned = inner
        .prepared
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&spec.id)
        .cloned();
    let lease = match pinned {
        Some(lease) => lease,
        // Prepared by an earlier instance of this backend (its actor restarted since):
        // that instance's pin still holds the image, so the store has it.
        None => {
            let (Some(store), Payload::Image { reference, .. }) = (&inner.images, &spec.payload)
            else {
                return Err(BackendError::Unsupported(
                    "runtime oci needs an image".into(),
                ));
            };
            let image = ImageRef::parse(reference).map_err(BackendError::InvalidPayload)?;
            store
                .ensure(&image)
                .await
                .map_err(|e| BackendError::InvalidPayload(images::pull_failed(&e)))?
        }
    };
    let container_id = Inner::container_id(spec.id);
    // A leftover of an earlier attempt would keep its old cgroup limits.
    inner.clone().teardown(container_id.clone()).await;
    let prep_inner = inner.clone();
    let prep_id = container_id.clone();
    let input = spec.input.clone();
    let max_output_bytes = spec.max_output_bytes;
    let written = tokio::task::spawn_blocking(move || {
        write_bundle(&prep_inner, &spec, &lease, &prep_id).map(|dir| (dir, lease))
    })
    .await
    .map_err(|e| BackendError::Internal(format!("gvisor: prepare panicked: {e}")))
    .and_then(|r| r);
    let result = match written {
        // The lease lives until the run is over.
        Ok((dir, _lease)) => {
            inner
                .run(&dir, true, &container_id, input, max_output_bytes, &ctx)
                .await
        }
        Err(e) => Err(e),
    };
    inner.teardown(container_id).await;
    result
}

/// Write `bundles/<container id>/config.json` for an image run (blocking).
fn write_bundle(
    inner: &Inner,
    spec: &WorkloadSpec,
    lease: &ImageLease,
    container_id: &str,
) -> Result<PathBuf, BackendError> {
    let Payload::Image { command, .. } = &spec.payload else {
        return Err(BackendError::InvalidPayload(
            "runtime oci needs an image".into(),
        ));
    };
    let run = lease.run_config();
    let args: Vec<String> = match command {
        Some(cmd) => cmd.clone(),
        None => run.entrypoint.iter().chain(&run.cmd).cloned().collect(),
    };
    if args.is_empty() {
        return Err(BackendError::InvalidPayload(
            "the image defines no Entrypoint or Cmd: give a command".into(),
        ));
    }
    let user =
        images::resolve_user(lease.rootfs(), &run.user).map_err(BackendError::InvalidPayload)?;
    let params = ImageSpecParams {
        rootfs: lease.rootfs().to_path_buf(),
        args,
        env: environment(&run.env, &user.home, &spec.input),
        cwd: if run.working_dir.is_empty() {
            "/".to_string()
        } else {
            run.working_dir.clone()
        },
        uid: user.uid,
        gid: user.gid,
        cgroups_path: cgroup::cgroups_path(&inner.cfg.cgroup_parent, container_id),
        mem_bytes: u64::from(spec.mem_mb.max(1)) * 1024 * 1024,
        cpus: spec.cpus,
        max_processes: inner.cfg.max_processes,
        max_file_bytes: inner.cfg.max_file_mb.saturating_mul(1024 * 1024),
    };
    let oci = bundle::build_image_spec(&params)
        .map_err(|e| BackendError::Internal(format!("gvisor: invalid OCI spec: {e}")))?;
    let internal = |what: &str, e: std::io::Error| {
        BackendError::Internal(format!("gvisor: {what} for {container_id}: {e}"))
    };
    let dir = inner.bundles_dir.join(container_id);
    fs::create_dir(&dir).map_err(|e| internal("cannot create bundle", e))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| internal("cannot restrict bundle", e))?;
    let text = serde_json::to_vec_pretty(&oci)
        .map_err(|e| BackendError::Internal(format!("gvisor: config.json: {e}")))?;
    fs::write(dir.join("config.json"), text)
        .map_err(|e| internal("cannot write config.json", e))?;
    Ok(dir)
}

/// The image's environment, with `PATH` and `HOME` filled in as Docker does, and the
/// input in `VULCAN_INPUT` (which the image cannot preset).
fn environment(image_env: &[String], home: &str, input: &[u8]) -> Vec<String> {
    let mut env: Vec<String> = image_env
        .iter()
        .filter(|kv| !kv.starts_with("VULCAN_INPUT=") && !kv.contains('\0'))
        .cloned()
        .collect();
    if !env.iter().any(|kv| kv.starts_with("PATH=")) {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !env.iter().any(|kv| kv.starts_with("HOME=")) {
        env.push(format!("HOME={home}"));
    }
    if input.len() <= MAX_ENV_INPUT && !input.contains(&0) {
        env.push(format!("VULCAN_INPUT={}", String::from_utf8_lossy(input)));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_keeps_the_image_and_adds_input_path_home() {
        let env = environment(
            &["FOO=bar".into(), "VULCAN_INPUT=forged".into()],
            "/home/app",
            b"{\"a\":1}",
        );
        assert!(env.contains(&"FOO=bar".to_string()));
        assert!(env.contains(&format!("PATH={DEFAULT_PATH}")));
        assert!(env.contains(&"HOME=/home/app".to_string()));
        assert!(env.contains(&"VULCAN_INPUT={\"a\":1}".to_string()));
        assert!(!env.contains(&"VULCAN_INPUT=forged".to_string()));
        let env = environment(&["PATH=/opt/bin".into(), "HOME=/x".into()], "/", b"null");
        assert_eq!(env.iter().filter(|kv| kv.starts_with("PATH=")).count(), 1);
        assert!(env.contains(&"HOME=/x".to_string()));
    }
}
