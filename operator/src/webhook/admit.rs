//! The sidecar injector as the webhook serves it: the review decided by
//! `inject::admission`, counted, and, for a pod that was given its
//! sidecar, its namespace's control Secret made first ([`ControlSecrets`])
//! so that the pod mounts it when it starts.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::body::Bytes;
use tokio::sync::watch;
use tracing::{info, warn};

use super::{
    Handler,
    certs::WebhookTls,
    control_secret::{self, Created},
};
use crate::{
    inject,
    metrics::{ControlSecretResult, Metrics},
};

/// The longest an admission waits for a control Secret to be made: the
/// API server gives the whole webhook 5 s (the chart's `timeoutSeconds`).
pub const SECRET_TIMEOUT: Duration = Duration::from_secs(2);

/// The admission handler: injects `image` into the pods that ask for it.
pub fn injector(image: String, secrets: Arc<ControlSecrets>, metrics: Arc<Metrics>) -> Handler {
    Arc::new(move |body: Bytes| {
        let (image, secrets, metrics) = (image.clone(), Arc::clone(&secrets), Arc::clone(&metrics));
        Box::pin(async move {
            let reviewed = inject::admission::review(&body, &image);
            metrics.sidecar_injection(reviewed.outcome.label());
            if let Some(namespace) = &reviewed.injected_into {
                secrets.ensure(namespace).await;
            }
            reviewed.body
        })
    })
}

/// Makes the control Secret of the namespaces pods are injected in, once
/// per namespace and replica.
///
/// At most one POST per admission, and only for a namespace not seen
/// before; bounded by [`SECRET_TIMEOUT`]. A failure is logged and counted
/// (`ringway_operator_sidecar_control_secrets_total{result="failed"}`),
/// never refused: the Secret's volume is optional, so the pod starts all
/// the same and its sidecar paces its drain by itself. It is not a warning
/// in the answer either, as pods are mostly created by controllers, whose
/// warnings nobody reads. The next admission in that namespace tries
/// again, and the leader makes the Secrets of namespaces with injected
/// pods on its rounds.
pub struct ControlSecrets {
    client: kube::Client,
    ca: watch::Receiver<Option<WebhookTls>>,
    metrics: Arc<Metrics>,
    seen: Mutex<HashSet<String>>,
}

impl ControlSecrets {
    /// Makes Secrets from the webhook's CA as `ca` holds it.
    pub fn new(
        client: kube::Client,
        ca: watch::Receiver<Option<WebhookTls>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            client,
            ca,
            metrics,
            seen: Mutex::default(),
        }
    }

    /// Makes sure `namespace` has its control Secret, as said above.
    pub async fn ensure(&self, namespace: &str) {
        if self.seen().contains(namespace) {
            return;
        }
        let Some(ca) = self.ca.borrow().clone() else {
            return self.failed(namespace, "the webhook has no CA yet");
        };
        let created = control_secret::create(&self.client, &ca, namespace);
        match tokio::time::timeout(SECRET_TIMEOUT, created).await {
            Ok(Ok(created)) => {
                if created == Created::Made {
                    info!(%namespace, "created the sidecars' control Secret");
                    self.metrics
                        .sidecar_control_secret(ControlSecretResult::Created);
                }
                self.seen().insert(namespace.to_owned());
            }
            Ok(Err(e)) => self.failed(namespace, &e.to_string()),
            Err(_) => self.failed(namespace, "the API server did not answer in time"),
        }
    }

    fn failed(&self, namespace: &str, error: &str) {
        warn!(
            %namespace,
            %error,
            "cannot make the sidecars' control Secret; the pod starts without it and its sidecar paces its drain by itself"
        );
        self.metrics
            .sidecar_control_secret(ControlSecretResult::Failed);
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}
