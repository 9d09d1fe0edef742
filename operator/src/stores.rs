//! The in-memory copies of watched objects: the watches of
//! [`watches`](crate::watches) fill them ([`Writers`]), on every replica,
//! and the reconcile reads them ([`Stores`]) instead of listing the API
//! server again. One set per watched scope (a namespace,
//! or the whole cluster), since one reflector follows one watch.

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::api::{core::v1::Pod, discovery::v1::EndpointSlice};
use kube::{
    Resource, ResourceExt,
    runtime::reflector::{self, Store, store::Writer},
};
use ringway_crds::WebSocketGateway;

/// The label every EndpointSlice carries: the Service it belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What the reconcile reads from the watches, for every watched scope.
#[derive(Clone)]
pub struct Stores {
    scopes: Vec<Scope>,
}

/// The stores of one watched scope.
#[derive(Clone)]
struct Scope {
    namespace: Option<String>,
    gateways: Store<WebSocketGateway>,
    pods: Store<Pod>,
    endpoint_slices: Store<EndpointSlice>,
}

/// The writing half of one scope's stores, for the watches that fill them.
pub struct Writers {
    /// The namespace watched; `None`: all of them.
    pub namespace: Option<String>,
    /// The gateways.
    pub gateways: Writer<WebSocketGateway>,
    /// The data-plane pods (those with the gateway label).
    pub pods: Writer<Pod>,
    /// The EndpointSlices of every Service.
    pub endpoint_slices: Writer<EndpointSlice>,
}

/// Empty stores for `namespaces` (empty: the whole cluster) and the
/// writers that fill them.
pub fn stores(namespaces: &[String]) -> (Stores, Vec<Writers>) {
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.iter().cloned().map(Some).collect()
    };
    let (scopes, writers) = scopes
        .into_iter()
        .map(|namespace| {
            let (gateways, gateways_writer) = reflector::store();
            let (pods, pods_writer) = reflector::store();
            let (endpoint_slices, slices_writer) = reflector::store();
            let scope = Scope {
                namespace: namespace.clone(),
                gateways,
                pods,
                endpoint_slices,
            };
            let writers = Writers {
                namespace,
                gateways: gateways_writer,
                pods: pods_writer,
                endpoint_slices: slices_writer,
            };
            (scope, writers)
        })
        .unzip();
    (Stores { scopes }, writers)
}

impl Stores {
    /// The pods in `namespace` that carry every label of `selector`, by
    /// name, as a list call would return them.
    pub fn pods(&self, namespace: &str, selector: &BTreeMap<String, String>) -> Vec<Pod> {
        self.matching(namespace, |s| &s.pods, |pod| has_labels(pod, selector))
    }

    /// The EndpointSlices of the Service `service` in `namespace`.
    pub fn endpoint_slices(&self, namespace: &str, service: &str) -> Vec<EndpointSlice> {
        self.matching(
            namespace,
            |s| &s.endpoint_slices,
            |slice| slice.labels().get(SERVICE_NAME_LABEL).map(String::as_str) == Some(service),
        )
    }

    /// Waits until every store has its first complete list; an error
    /// when a watch ended before that.
    pub async fn wait_until_ready(&self) -> Result<(), reflector::store::WriterDropped> {
        for scope in &self.scopes {
            scope.gateways.wait_until_ready().await?;
            scope.pods.wait_until_ready().await?;
            scope.endpoint_slices.wait_until_ready().await?;
        }
        Ok(())
    }

    /// The scope that watches `namespace`.
    fn scope(&self, namespace: &str) -> Option<&Scope> {
        self.scopes
            .iter()
            .find(|s| s.namespace.as_deref().is_none_or(|n| n == namespace))
    }

    fn matching<K>(
        &self,
        namespace: &str,
        store: impl Fn(&Scope) -> &Store<K>,
        wanted: impl Fn(&K) -> bool,
    ) -> Vec<K>
    where
        K: Resource<DynamicType = ()> + Clone + 'static,
    {
        let Some(scope) = self.scope(namespace) else {
            return Vec::new();
        };
        let mut found: Vec<K> = store(scope)
            .state_filter(|o| o.namespace().as_deref() == Some(namespace) && wanted(o))
            .into_iter()
            .map(Arc::unwrap_or_clone)
            .collect();
        found.sort_by_key(ResourceExt::name_any);
        found
    }
}

fn has_labels<K: Resource>(object: &K, selector: &BTreeMap<String, String>) -> bool {
    let labels = object.labels();
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kube::runtime::watcher::Event;

    use super::*;

    fn pod(namespace: &str, name: &str, gateway: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": namespace,
                "labels": {"ringway.dev/gateway": gateway}}
        }))
        .expect("pod")
    }

    fn list<K>(writer: &mut Writer<K>, objects: Vec<K>)
    where
        K: Resource<DynamicType = ()> + Clone + 'static,
    {
        writer.apply_watcher_event(&Event::Init);
        for object in objects {
            writer.apply_watcher_event(&Event::InitApply(object));
        }
        writer.apply_watcher_event(&Event::InitDone);
    }

    #[test]
    fn pods_are_read_from_the_scope_of_their_namespace_by_label_and_name() {
        let (stores, mut writers) = stores(&["prod".to_owned(), "dev".to_owned()]);
        list(
            &mut writers[0].pods,
            vec![
                pod("prod", "chat-a-2", "chat"),
                pod("prod", "chat-a-10", "chat"),
                pod("prod", "other-a-0", "other"),
            ],
        );
        list(&mut writers[1].pods, vec![pod("dev", "chat-a-0", "chat")]);
        let selector = BTreeMap::from([("ringway.dev/gateway".to_owned(), "chat".to_owned())]);
        let names = |ns: &str| -> Vec<String> {
            stores
                .pods(ns, &selector)
                .iter()
                .map(ResourceExt::name_any)
                .collect()
        };
        assert_eq!(
            names("prod"),
            ["chat-a-10", "chat-a-2"],
            "as a list orders them"
        );
        assert_eq!(names("dev"), ["chat-a-0"]);
        assert!(names("staging").is_empty(), "not watched");
    }

    #[tokio::test]
    async fn ready_once_every_store_has_listed() {
        let (stores, mut writers) = stores(&[]);
        let w = &mut writers[0];
        list(&mut w.gateways, Vec::new());
        list(&mut w.pods, Vec::new());
        let waiting = tokio::time::timeout(Duration::from_millis(50), stores.wait_until_ready());
        assert!(waiting.await.is_err(), "the EndpointSlices have not listed");
        list(&mut w.endpoint_slices, Vec::new());
        stores.wait_until_ready().await.expect("ready");
    }
}
