//! The sidecars' control Secrets on the API server (one per namespace,
//! `sidecar::CONTROL_SECRET`, judged by [`control_tls::decide`]).
//!
//! - [`create`]: one POST, made at admission for a namespace the webhook
//!   has not seen yet (by any replica: each holds the CA); a 409 means
//!   someone else made it first, which is as good.
//! - [`keep`]: the leader's read, and create or replace (PUT with the read
//!   resourceVersion) when the Secret is missing, damaged, from another CA
//!   or close to expiry, in every namespace [`injected_namespaces`] finds,
//!   in rounds ([`keep_all`], [`Rounds`]) run by the webhook's certificate
//!   loop: it holds the CA and sees it change.
//!
//! RBAC cannot limit `create` to a name; `get` and `update` are limited to
//! `CONTROL_SECRET` ([`crate::rbac::SIDECAR_CONTROL_SECRET`]).

use std::{
    collections::BTreeSet,
    time::{Duration, Instant, SystemTime},
};

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams, PostParams};
use ringway_dataplane_api::sidecar::{CONTROL_SECRET, INJECTED_LABEL, INJECTED_LABEL_VALUE};
use tracing::{info, warn};

use super::{
    Error,
    certs::WebhookTls,
    control_tls::{ControlTls, Decision, decide},
};
use crate::metrics::{ControlSecretResult, Metrics};

/// What [`create`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Created {
    /// This call made it.
    Made,
    /// It was already there (409).
    Existed,
}

/// What [`keep`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kept {
    /// It was good.
    Current,
    /// There was none: it was created.
    Created,
    /// It was replaced.
    Renewed,
}

/// Creates the control Secret of `namespace` from the webhook's CA in
/// `ca`, unless it exists.
pub async fn create(
    client: &kube::Client,
    ca: &WebhookTls,
    namespace: &str,
) -> Result<Created, Error> {
    let tls = ControlTls::issue(ca, namespace)?;
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    match api
        .create(&PostParams::default(), &tls.to_secret(namespace))
        .await
    {
        Ok(_) => Ok(Created::Made),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(Created::Existed),
        Err(e) => Err(Error::WriteControlSecret(e)),
    }
}

/// Makes the control Secret of `namespace` good at `now` for the
/// webhook's CA in `ca`: reads it, and creates or replaces it when
/// [`decide`] says so. A Secret someone else creates meanwhile (409) is
/// read and judged in its turn.
pub async fn keep(
    client: &kube::Client,
    ca: &WebhookTls,
    namespace: &str,
    now: SystemTime,
) -> Result<Kept, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let read = |api: &Api<Secret>| {
        let api = api.clone();
        async move {
            api.get_opt(CONTROL_SECRET)
                .await
                .map_err(Error::ReadControlSecret)
        }
    };
    let stored = match read(&api).await? {
        Some(stored) => stored,
        None => match create(client, ca, namespace).await? {
            Created::Made => return Ok(Kept::Created),
            Created::Existed => read(&api).await?.ok_or(Error::ControlSecretVanished)?,
        },
    };
    let tls = ControlTls::from_secret(&stored);
    if decide(Some(tls.as_ref()), &ca.ca_cert, namespace, now) == Decision::Keep {
        return Ok(Kept::Current);
    }
    let mut renewed = ControlTls::issue(ca, namespace)?.to_secret(namespace);
    renewed.metadata.resource_version = stored.metadata.resource_version;
    api.replace(CONTROL_SECRET, &PostParams::default(), &renewed)
        .await
        .map_err(Error::WriteControlSecret)?;
    Ok(Kept::Renewed)
}

/// The namespaces that have injected pods (labelled
/// `sidecar::INJECTED_LABEL`), from one cluster-wide list of their
/// metadata.
pub async fn injected_namespaces(client: &kube::Client) -> Result<BTreeSet<String>, Error> {
    let pods: Api<Pod> = Api::all(client.clone());
    let selector = format!("{INJECTED_LABEL}={INJECTED_LABEL_VALUE}");
    let listed = pods
        .list_metadata(&ListParams::default().labels(&selector))
        .await
        .map_err(Error::ListInjectedPods)?;
    Ok(listed
        .items
        .into_iter()
        .filter_map(|pod| pod.metadata.namespace)
        .collect())
}

/// How often the leader goes over every namespace's control Secret when
/// nothing changed: renewal is months ahead, so this only bounds how long
/// a deleted or damaged Secret stays so.
pub const ROUND_EVERY: Duration = Duration::from_secs(10 * 60);

/// When the leader's next round over the control Secrets is due: at once
/// when it starts leading or the webhook's CA changed, else every
/// [`ROUND_EVERY`].
#[derive(Debug, Default)]
pub struct Rounds {
    last: Option<(Instant, String)>,
}

impl Rounds {
    /// Whether a round is due at `now` for the CA certificate `ca_cert`.
    pub fn due(&self, ca_cert: &str, now: Instant) -> bool {
        self.last
            .as_ref()
            .is_none_or(|(at, ca)| ca != ca_cert || now >= *at + ROUND_EVERY)
    }

    /// A round for `ca_cert` went over every namespace at `now`.
    pub fn done(&mut self, ca_cert: &str, now: Instant) {
        self.last = Some((now, ca_cert.to_owned()));
    }

    /// Leadership ended: the next leading starts with a round.
    pub fn reset(&mut self) {
        self.last = None;
    }
}

/// One round of the leader: [`keep`] in every namespace with injected
/// pods, each write logged and counted, each failure too; an error only
/// when the namespaces cannot be listed.
pub async fn keep_all(
    client: &kube::Client,
    ca: &WebhookTls,
    metrics: &Metrics,
    now: SystemTime,
) -> Result<(), Error> {
    for namespace in injected_namespaces(client).await? {
        match keep(client, ca, &namespace, now).await {
            Ok(Kept::Current) => {}
            Ok(Kept::Created) => {
                info!(%namespace, "created the sidecars' control Secret");
                metrics.sidecar_control_secret(ControlSecretResult::Created);
            }
            Ok(Kept::Renewed) => {
                info!(%namespace, "renewed the sidecars' control Secret");
                metrics.sidecar_control_secret(ControlSecretResult::Renewed);
            }
            Err(e) => {
                warn!(%namespace, error = %e, "cannot keep the sidecars' control Secret; trying again next round");
                metrics.sidecar_control_secret(ControlSecretResult::Failed);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_is_due_at_first_on_a_new_ca_and_every_ten_minutes() {
        let mut rounds = Rounds::default();
        let start = Instant::now();
        assert!(rounds.due("ca", start));
        rounds.done("ca", start);
        assert!(!rounds.due("ca", start + ROUND_EVERY - Duration::from_secs(1)));
        assert!(rounds.due("new ca", start + Duration::from_secs(1)));
        assert!(rounds.due("ca", start + ROUND_EVERY));
        rounds.reset();
        assert!(rounds.due("ca", start), "a new leader starts with a round");
    }
}
