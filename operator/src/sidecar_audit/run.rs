//! The leader's periodic pass of the sidecar audit: lists the annotated
//! workloads of every watched namespace and each one's pods, and reports
//! what [`Audit`] decides, as the `sidecar_missing_pods` gauge and
//! `SidecarMissing` events. It reads with `list` only: the grants of
//! [`crate::rbac::SIDECAR_AUDIT`].

use std::{sync::Arc, time::Duration};

use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment, StatefulSet},
    core::v1::Pod,
};
use kube::{
    Api, Client, Resource, api::ListParams, core::NamespaceResourceScope,
    runtime::events::EventType,
};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tracing::warn;

use super::{Audit, Finding, REASON, Report, Workload, WorkloadKind, missing_pods, workload};
use crate::{events::Events, metrics::Metrics};

/// Time between two passes; the first runs at once.
pub const EVERY: Duration = Duration::from_secs(60);

/// What a pass needs.
pub struct Auditor {
    /// The API client.
    pub client: Client,
    /// The watched namespaces; empty: all of them.
    pub namespaces: Vec<String>,
    /// Where the gauge goes.
    pub metrics: Arc<Metrics>,
    /// Publishes the warnings.
    pub events: Events,
}

impl Auditor {
    /// Runs a pass now and then every [`EVERY`] until `halt` turns true.
    pub async fn run(self, halt: watch::Receiver<bool>) {
        let mut audit = Audit::default();
        let mut ticks = tokio::time::interval(EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => self.pass(&mut audit).await,
                () = crate::until(halt.clone()) => return,
            }
        }
    }

    /// One pass: a failed list leaves everything as the last pass left it.
    pub async fn pass(&self, audit: &mut Audit) {
        match self.findings().await {
            Ok(findings) => self.report(audit.update(findings)).await,
            Err(e) => warn!(error = %e, "sidecar audit: listing failed; trying again in a minute"),
        }
    }

    /// Every annotated workload of every watched namespace, with its pods
    /// that run without the sidecar.
    async fn findings(&self) -> Result<Vec<Finding>, kube::Error> {
        let mut workloads = Vec::new();
        for namespace in self.scopes() {
            workloads.extend(self.workloads::<Deployment>(namespace).await?);
            workloads.extend(self.workloads::<StatefulSet>(namespace).await?);
            workloads.extend(self.workloads::<DaemonSet>(namespace).await?);
        }
        let mut findings = Vec::with_capacity(workloads.len());
        for workload in workloads {
            let pods: Api<Pod> = Api::namespaced(self.client.clone(), &workload.key.namespace);
            let listed = pods
                .list(&ListParams::default().labels_from(&workload.selector))
                .await?;
            let missing = missing_pods(&workload.selector, &listed.items);
            findings.push(Finding { workload, missing });
        }
        Ok(findings)
    }

    /// The namespaces to list: each watched one, or `None` for all.
    fn scopes(&self) -> Vec<Option<&str>> {
        if self.namespaces.is_empty() {
            return vec![None];
        }
        self.namespaces.iter().map(|n| Some(n.as_str())).collect()
    }

    /// The annotated workloads of one kind in one scope.
    async fn workloads<K>(&self, namespace: Option<&str>) -> Result<Vec<Workload>, kube::Error>
    where
        K: WorkloadKind + DeserializeOwned + std::fmt::Debug,
        K: Resource<Scope = NamespaceResourceScope>,
    {
        let api: Api<K> = match namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        };
        let listed = api.list(&ListParams::default()).await?;
        Ok(listed.items.iter().filter_map(workload).collect())
    }

    /// Sets the gauges and publishes the warnings.
    async fn report(&self, report: Report) {
        for key in &report.vanished {
            self.metrics
                .forget_sidecar_workload(&key.namespace, &key.workload);
        }
        for (key, count) in &report.gauges {
            self.metrics
                .set_sidecar_missing_pods(&key.namespace, &key.workload, *count);
        }
        for warning in report.warnings {
            let published = self
                .events
                .publish(&warning.regarding, EventType::Warning, REASON, warning.note)
                .await;
            if let Err(e) = published {
                warn!(error = %e, workload = ?warning.regarding.name, "publishing the sidecar audit's event");
            }
        }
    }
}
