//! Finds the pods that asked for the sidecar but started without it, and
//! decides what to report about them.
//!
//! With the chart's default `failurePolicy: Ignore`, a pod annotated
//! `ringway.dev/sidecar` that is created while no operator replica answers
//! the injector's webhook starts without its sidecar: it works, but its
//! clients are cut instead of drained when it stops. Annotations cannot be
//! selected by the API server, so the leader finds such pods through their
//! workloads ([`run`]): every Deployment, StatefulSet and DaemonSet whose
//! pod template carries the annotation, and the pods its selector selects.
//! What it makes of them is pure and unit-tested here: which pods miss the
//! sidecar ([`missing_pods`]), and, from one pass to the next, the gauge of
//! every annotated workload and an event only when a workload's set of
//! such pods changed ([`Audit`]).

pub mod run;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, Deployment, StatefulSet},
        core::v1::{ObjectReference, Pod, PodTemplateSpec},
    },
    apimachinery::pkg::apis::meta::v1::LabelSelector,
};
use kube::{
    Resource, ResourceExt,
    core::{Selector, SelectorExt as _},
};
use ringway_crds::annotations::SIDECAR;
use ringway_dataplane_api::sidecar::CONTAINER;
use tracing::debug;

/// How many missing pods an event names; the others are counted.
const PODS_NAMED: usize = 5;

/// A workload whose pod template asks for the sidecar.
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    /// The workload's namespace and `kind/name`: the gauge's labels.
    pub key: WorkloadKey,
    /// What its events are about.
    pub reference: ObjectReference,
    /// Selects its pods.
    pub selector: Selector,
}

/// A workload's namespace and `kind/name` (kind in lower case, as
/// `kubectl` takes it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkloadKey {
    /// The namespace.
    pub namespace: String,
    /// `deployment/chat`, `statefulset/chat`, `daemonset/chat`.
    pub workload: String,
}

/// A workload and the names of its pods that run without the sidecar.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    /// The workload.
    pub workload: Workload,
    /// Its pods that asked for the sidecar and have none.
    pub missing: BTreeSet<String>,
}

/// An event to publish about a workload.
#[derive(Clone, Debug, PartialEq)]
pub struct Warning {
    /// The workload it is about.
    pub regarding: ObjectReference,
    /// What it says.
    pub note: String,
}

/// What one pass reports.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// The gauge of every annotated workload: its pods without the sidecar.
    pub gauges: Vec<(WorkloadKey, i64)>,
    /// Workloads reported before and gone (or no longer annotated) now:
    /// their gauges are removed.
    pub vanished: Vec<WorkloadKey>,
    /// Workloads whose set of missing pods changed to a non-empty one.
    pub warnings: Vec<Warning>,
}

/// The event's reason.
pub const REASON: &str = "SidecarMissing";

/// The workloads the audit reads: each gives its pod template and selector.
pub trait WorkloadKind: Resource<DynamicType = ()> + Clone {
    /// The kind as `kubectl` takes it.
    const NAME: &'static str;
    /// The pod template and the pod selector.
    fn pods(&self) -> Option<(&PodTemplateSpec, &LabelSelector)>;
}

impl WorkloadKind for Deployment {
    const NAME: &'static str = "deployment";
    fn pods(&self) -> Option<(&PodTemplateSpec, &LabelSelector)> {
        self.spec.as_ref().map(|s| (&s.template, &s.selector))
    }
}

impl WorkloadKind for StatefulSet {
    const NAME: &'static str = "statefulset";
    fn pods(&self) -> Option<(&PodTemplateSpec, &LabelSelector)> {
        self.spec.as_ref().map(|s| (&s.template, &s.selector))
    }
}

impl WorkloadKind for DaemonSet {
    const NAME: &'static str = "daemonset";
    fn pods(&self) -> Option<(&PodTemplateSpec, &LabelSelector)> {
        self.spec.as_ref().map(|s| (&s.template, &s.selector))
    }
}

/// `object` as a workload to audit: `None` when its pod template does not
/// carry the annotation, or when its selector cannot be used (one that
/// selects everything, or an expression with an unknown operator: logged
/// at debug and skipped). `matchExpressions` are used as the API server
/// would.
pub fn workload<K: WorkloadKind>(object: &K) -> Option<Workload> {
    let (template, selector) = object.pods()?;
    let annotations = template.metadata.as_ref()?.annotations.as_ref()?;
    if !annotations.contains_key(SIDECAR) {
        return None;
    }
    let key = WorkloadKey {
        namespace: object.namespace().unwrap_or_default(),
        workload: format!("{}/{}", K::NAME, object.name_any()),
    };
    let selector = match Selector::try_from(selector.clone()) {
        Ok(s) if !s.selects_all() => s,
        Ok(_) => {
            debug!(namespace = %key.namespace, workload = %key.workload, "skipped: its selector selects every pod");
            return None;
        }
        Err(e) => {
            debug!(namespace = %key.namespace, workload = %key.workload, error = %e, "skipped: its selector cannot be used");
            return None;
        }
    };
    Some(Workload {
        key,
        reference: object.object_ref(&()),
        selector,
    })
}

/// The names of `pods` that ask for the sidecar and have none: annotated,
/// pending or running and not terminating, with neither an init container
/// nor a container named [`CONTAINER`]. Pods the selector does not select
/// are not the workload's and are left out.
pub fn missing_pods(selector: &Selector, pods: &[Pod]) -> BTreeSet<String> {
    pods.iter()
        .filter(|p| selector.matches(p.labels()) && p.annotations().contains_key(SIDECAR))
        .filter(|p| p.metadata.deletion_timestamp.is_none() && live(p))
        .filter(|p| !has_sidecar(p))
        .map(ResourceExt::name_any)
        .collect()
}

/// Pending or running.
fn live(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    matches!(phase, Some("Pending" | "Running"))
}

/// Whether the pod has the sidecar, as an init container (as injected) or
/// a container.
fn has_sidecar(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|spec| {
        let init = spec.init_containers.iter().flatten();
        init.chain(&spec.containers).any(|c| c.name == CONTAINER)
    })
}

/// What the leader reported so far: each annotated workload's missing
/// pods at the last pass.
#[derive(Debug, Default)]
pub struct Audit {
    reported: BTreeMap<WorkloadKey, BTreeSet<String>>,
}

impl Audit {
    /// Takes one pass's findings (every annotated workload's), remembers
    /// them and says what to report.
    pub fn update(&mut self, findings: Vec<Finding>) -> Report {
        let mut report = Report::default();
        let mut now = BTreeMap::new();
        for finding in findings {
            let key = finding.workload.key.clone();
            let count = i64::try_from(finding.missing.len()).unwrap_or(i64::MAX);
            report.gauges.push((key.clone(), count));
            let changed = self.reported.get(&key) != Some(&finding.missing);
            if changed && !finding.missing.is_empty() {
                report.warnings.push(Warning {
                    note: note(&finding),
                    regarding: finding.workload.reference,
                });
            }
            now.insert(key, finding.missing);
        }
        report.vanished = self
            .reported
            .keys()
            .filter(|k| !now.contains_key(*k))
            .cloned()
            .collect();
        self.reported = now;
        report
    }
}

/// The event's note: how many, which, why, what it means, what to do.
fn note(finding: &Finding) -> String {
    let missing = &finding.missing;
    let named: Vec<&str> = missing
        .iter()
        .take(PODS_NAMED)
        .map(String::as_str)
        .collect();
    let more = missing.len() - named.len();
    let key = &finding.workload.key;
    format!(
        "{count} pod(s) run without the {CONTAINER} sidecar ({names}{others}): they were created \
         while the sidecar injector did not answer, and its failurePolicy Ignore let them start \
         without it. Their clients are cut, not drained, when they stop. Once the injector is up: \
         kubectl rollout restart {workload} -n {namespace}",
        count = missing.len(),
        names = named.join(", "),
        others = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        },
        workload = key.workload,
        namespace = key.namespace,
    )
}
