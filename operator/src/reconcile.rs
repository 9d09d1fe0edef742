//! The reconcile of one gateway, as a short sequence: observe (the API
//! server and the watches' stores), plan (pure), apply the children and
//! push the snapshot, decide the status and events (pure), write them.
//! Also the error policy and its backoff.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use k8s_openapi::jiff::Timestamp;
use kube::{ResourceExt, runtime::controller::Action};
use ringway_crds::WebSocketGateway;
use tracing::{info, warn};

use crate::{
    Error,
    context::Context,
    effects,
    names::GatewayRef,
    observe, pki,
    plan::{self, Desired},
    rollout::analysis::Window,
    status::{self, Outcome},
    steer::Steer,
};

/// The first retry after an error; it doubles up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between retries after errors.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Reconciles one gateway; counted and timed.
pub async fn reconcile<S: Steer>(
    gw: Arc<WebSocketGateway>,
    ctx: Arc<Context<S>>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let key = key(&gw);
    let result = reconcile_gateway(&gw, &ctx, &key).await;
    ctx.metrics
        .reconciled(started.elapsed(), result.as_ref().err().map(Error::label));
    if result.is_ok() {
        ctx.remember(&key, |m| m.failures = 0);
    }
    result
}

/// Logs, counts (in [`reconcile`]) and retries with a per-gateway
/// exponential backoff; a malformed object waits for a change.
pub fn error_policy<S: Steer>(
    gw: Arc<WebSocketGateway>,
    error: &Error,
    ctx: Arc<Context<S>>,
) -> Action {
    let key = key(&gw);
    warn!(gateway = %key, error = %error, reason = error.label(), "reconcile failed");
    if matches!(error, Error::Malformed(_)) {
        return Action::requeue(MAX_BACKOFF);
    }
    let mut failures = 0;
    ctx.remember(&key, |m| {
        m.failures = m.failures.saturating_add(1);
        failures = m.failures;
    });
    Action::requeue(backoff(failures))
}

/// The wait before retry number `failures` (1-based).
pub fn backoff(failures: u32) -> Duration {
    MIN_BACKOFF
        .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(16)))
        .min(MAX_BACKOFF)
}

/// `namespace/name`: the gateway's key in logs, metrics and memory.
fn key(gw: &WebSocketGateway) -> String {
    format!("{}/{}", gw.namespace().unwrap_or_default(), gw.name_any())
}

async fn reconcile_gateway<S: Steer>(
    gw: &WebSocketGateway,
    ctx: &Context<S>,
    key: &str,
) -> Result<Action, Error> {
    if gw.metadata.deletion_timestamp.is_some() {
        // The children go with it (owner references); forget the rest.
        ctx.forget(key);
        return Ok(Action::await_change());
    }
    let gwref = GatewayRef::new(gw)?;
    let old_status = gw.status.clone().unwrap_or_default();
    let now = Timestamp::now();
    let mut memory = ctx.memory(key);

    // Observe.
    let mut seen = observe::gateway(&ctx.client, &ctx.stores, gw, &gwref, &memory).await?;
    let certificates = pki::plan(
        &gwref,
        seen.ca_secret.as_ref(),
        seen.pod_secret.as_ref(),
        SystemTime::now(),
    )?;
    if observe::counts_due(&old_status, &seen.slots, memory.polled) {
        observe::poll(
            ctx,
            key,
            &certificates.ca,
            &mut seen.slots,
            &mut memory,
            now,
        )
        .await?;
    }
    memory.analysis = Window::follow(
        memory.analysis.take(),
        old_status.canary.as_ref(),
        &seen.slots,
        now,
    );
    let targets = observe::control_targets(&seen.slots);

    // Plan.
    let Desired {
        rollout,
        children,
        snapshot,
        hash,
    } = plan::plan(&plan::Inputs {
        gateway: &gwref,
        spec: &gw.spec,
        annotations: gw.annotations(),
        status: &old_status,
        slots: &seen.slots,
        endpoints: &seen.endpoints,
        certificates: &certificates,
        default_image: &ctx.default_image,
        operator_pods: &ctx.operator_pods,
        analysis: memory.analysis.as_ref(),
        now,
    });

    // Apply.
    effects::apply_children(&ctx.client, &gwref, &children).await?;
    let pushed = effects::push(
        ctx,
        gw,
        key,
        &certificates.ca,
        &targets,
        (snapshot, hash),
        &mut memory,
    )
    .await?;
    ctx.remember(key, |m| *m = memory.clone());

    // Decide, then write.
    let verdict = status::decide(&Outcome {
        gateway: &gwref,
        generation: gw.metadata.generation,
        spec: &gw.spec,
        old: &old_status,
        slots: &seen.slots,
        backend_problems: &seen.backend_problems,
        plan: &rollout,
        pushed: &pushed,
        certificates: certificates.changed.as_deref(),
        announced: memory.transition.as_ref(),
        reported_unreachable: &memory.reported_unreachable,
        now,
    });
    if let Some(announced) = &verdict.announced {
        ctx.remember(key, |m| m.transition = Some(announced.clone()));
    }
    ctx.remember(key, |m| {
        m.reported_unreachable = verdict.reported_unreachable.clone();
    });
    effects::report(ctx, gw, &verdict.status, verdict.events).await?;
    info!(gateway = %key, epoch = verdict.status.epoch, ready = verdict.status.shards_ready,
        connections = verdict.status.connections, acked = pushed.acked, "reconciled");
    Ok(Action::requeue(verdict.requeue))
}
