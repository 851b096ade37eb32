//! BackendActor: one per registered backend, supervised by actix. It runs executions as
//! tasks of their own, catches panics, always runs cleanup, and restarts itself (with a
//! fresh backend instance from the factory) after a panic or on an operator's request.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use actix::prelude::*;
use futures_util::FutureExt;
use tokio::sync::oneshot;

use crate::backends::{
    Backend, BackendError, BackendFactory, ExecContext, WorkloadResult, WorkloadSpec,
};

/// Told to the supervisor each time a backend actor restarts.
#[derive(Message)]
#[rtype(result = "()")]
pub struct BackendRestarted {
    /// Registry name.
    pub name: String,
    /// The fresh instance now serving.
    pub backend: Arc<dyn Backend>,
    /// Why it restarted (the panic message, or an operator request).
    pub reason: String,
}

/// The supervised actor wrapping one backend.
pub struct BackendActor {
    name: String,
    factory: BackendFactory,
    backend: Arc<dyn Backend>,
    supervisor: Recipient<BackendRestarted>,
    stop_reason: Option<String>,
    restart_acks: Vec<oneshot::Sender<()>>,
}

impl BackendActor {
    /// Wrap `backend` (built by `factory`, which is called again on every restart).
    pub fn new(
        name: String,
        factory: BackendFactory,
        backend: Arc<dyn Backend>,
        supervisor: Recipient<BackendRestarted>,
    ) -> Self {
        Self {
            name,
            factory,
            backend,
            supervisor,
            stop_reason: None,
            restart_acks: Vec::new(),
        }
    }
}

impl Actor for BackendActor {
    type Context = Context<Self>;
}

impl actix::Supervised for BackendActor {
    fn restarting(&mut self, _: &mut Self::Context) {
        let reason = self
            .stop_reason
            .take()
            .unwrap_or_else(|| "stopped".to_string());
        log::warn!("backend {}: restarting ({reason})", self.name);
        self.backend = (self.factory)();
        self.supervisor.do_send(BackendRestarted {
            name: self.name.clone(),
            backend: self.backend.clone(),
            reason,
        });
        for ack in self.restart_acks.drain(..) {
            let _ = ack.send(());
        }
    }
}

/// Run one workload; the outcome (after cleanup) is sent on `reply`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Execute {
    /// What to run.
    pub spec: WorkloadSpec,
    /// Log sink, cancellation, deadline.
    pub ctx: ExecContext,
    /// Where the outcome goes once the execution ended and cleanup ran.
    pub reply: oneshot::Sender<Result<WorkloadResult, BackendError>>,
}

/// Restart the actor (fresh backend instance); `ack` fires once it has restarted.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RestartBackend {
    /// Why (logged and shown as the last error).
    pub reason: String,
    /// Fires after the restart.
    pub ack: oneshot::Sender<()>,
}

#[derive(Message)]
#[rtype(result = "()")]
struct Crashed(String);

/// The text of a caught panic.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

impl Handler<Execute> for BackendActor {
    type Result = ();

    fn handle(&mut self, msg: Execute, ctx: &mut Self::Context) {
        let backend = self.backend.clone();
        let me = ctx.address();
        let Execute {
            spec,
            ctx: exec,
            reply,
        } = msg;
        let id = spec.id;
        // A task of its own: a restart of this actor must not drop other executions.
        actix::spawn(async move {
            let started =
                std::panic::catch_unwind(AssertUnwindSafe(|| backend.execute(spec, exec)));
            let outcome = match started {
                Ok(fut) => AssertUnwindSafe(fut).catch_unwind().await,
                Err(panic) => Err(panic),
            };
            let result = outcome.unwrap_or_else(|panic| {
                let msg = panic_message(panic.as_ref());
                me.do_send(Crashed(msg.clone()));
                Err(BackendError::Internal(format!("backend panicked: {msg}")))
            });
            if let Ok(cleanup) = std::panic::catch_unwind(AssertUnwindSafe(|| backend.cleanup(id)))
            {
                if AssertUnwindSafe(cleanup).catch_unwind().await.is_err() {
                    log::error!("workload {id}: backend cleanup panicked");
                }
            }
            let _ = reply.send(result);
        });
    }
}

impl Handler<Crashed> for BackendActor {
    type Result = ();

    fn handle(&mut self, msg: Crashed, ctx: &mut Self::Context) {
        log::error!("backend {}: panicked: {}", self.name, msg.0);
        self.stop_reason = Some(format!("panicked: {}", msg.0));
        ctx.stop();
    }
}

impl Handler<RestartBackend> for BackendActor {
    type Result = ();

    fn handle(&mut self, msg: RestartBackend, ctx: &mut Self::Context) {
        self.stop_reason = Some(msg.reason);
        self.restart_acks.push(msg.ack);
        ctx.stop();
    }
}
