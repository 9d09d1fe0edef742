//! The leader's pacing of sidecar drains against kube's mock API server
//! (the fake of `support`) and fake sidecars: real control services over
//! mutual TLS, with the namespace Secret's server certificate and the
//! client certificate the pacer issues itself from the webhook's CA.
//!
//! Three terminating injected pods, one each of a Deployment, a
//! StatefulSet and a DaemonSet: each is told its workload's whole budget
//! (as the annotation gives it), and once it reports no clients left, the
//! pacer publishes `SidecarDrainPaced` and `SidecarDrained` on the
//! workload, by its uid. Every request must be granted by
//! `ringway_operator::rbac::SIDECAR_DRAIN`, and all its reads are used.

#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use kube::runtime::events::Reporter;
use ringway_dataplane_api::{
    sidecar::{CONTAINER, INJECTED_LABEL},
    v1::{
        self, ConnectionCount,
        control_server::{Control, ControlServer},
    },
};
use ringway_operator::{
    events::Events,
    metrics::Metrics,
    rbac,
    sidecar_drain::run::Pacer,
    webhook::{
        certs::{Decision, WebhookTls},
        control_tls::ControlTls,
    },
};
use serde_json::{Value, json};
use support::{FakeApi, NS};
use tokio::{net::TcpListener, sync::watch, time::Instant};
use tonic::{
    Request, Response, Status,
    transport::{Certificate, Identity, Server, ServerTlsConfig},
};

/// A sidecar's control service: a drain leaves it no clients.
#[derive(Clone, Default)]
struct FakeSidecar {
    clients: Arc<Mutex<u64>>,
    drains: Arc<Mutex<Vec<u32>>>,
}

#[tonic::async_trait]
impl Control for FakeSidecar {
    async fn apply_snapshot(
        &self,
        _: Request<v1::ApplySnapshotRequest>,
    ) -> Result<Response<v1::ApplySnapshotResponse>, Status> {
        Err(Status::failed_precondition("a sidecar takes no snapshot"))
    }

    async fn get_status(
        &self,
        _: Request<v1::GetStatusRequest>,
    ) -> Result<Response<v1::PodStatus>, Status> {
        let count = *self.clients.lock().unwrap();
        Ok(Response::new(v1::PodStatus {
            connections: vec![ConnectionCount {
                route: "app".into(),
                count,
                ..ConnectionCount::default()
            }],
            ..v1::PodStatus::default()
        }))
    }

    async fn drain(
        &self,
        request: Request<v1::DrainRequest>,
    ) -> Result<Response<v1::DrainResponse>, Status> {
        self.drains
            .lock()
            .unwrap()
            .push(request.into_inner().max_closes_per_second);
        // It answers how many it has left to close; by the next poll they
        // are gone.
        let draining = std::mem::take(&mut *self.clients.lock().unwrap());
        Ok(Response::new(v1::DrainResponse { draining }))
    }
}

/// Serves `sidecar` on 127.0.0.1 with `NS`'s control certificate,
/// trusting `ca`'s client certificates.
async fn serve(sidecar: FakeSidecar, tls: &ControlTls) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(&tls.cert, &tls.key))
        .client_ca_root(Certificate::from_pem(&tls.ca_cert));
    let server = Server::builder()
        .tls_config(tls)
        .unwrap()
        .add_service(ControlServer::new(sidecar));
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(server.serve_with_incoming(incoming));
    address
}

/// A terminating injected pod of `owner` (kind, name) at 127.0.0.1.
fn pod(name: &str, owner: (&str, &str), budget: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": NS, "uid": format!("uid-{name}"), "resourceVersion": "1",
            "deletionTimestamp": "2026-12-06T10:00:00Z",
            "labels": {INJECTED_LABEL: "true", "pod-template-hash": "5c8d7"},
            "annotations": {
                "ringway.dev/sidecar": "ws",
                "ringway.dev/sidecar-max-closes-per-second": budget,
            },
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": owner.0, "name": owner.1,
                                 "uid": "o", "controller": true}],
        },
        "spec": {"containers": [{"name": "app", "image": "app"}]},
        "status": {
            "podIP": "127.0.0.1",
            "initContainerStatuses": [{
                "name": CONTAINER, "image": "i", "imageID": "", "ready": false,
                "restartCount": 0, "state": {"running": {}},
            }],
        },
    })
}

fn workload(kind: &str, name: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": kind,
           "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}")}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_pod_is_paced_and_its_drain_reported_on_its_workload() {
    let ca = WebhookTls::issue(Decision::Create, None, &["hook.ringway.svc".into()]).unwrap();
    let tls = ControlTls::issue(&ca, NS).unwrap();
    // One sidecar port for all three pods: they share 127.0.0.1.
    let sidecar = FakeSidecar::default();
    *sidecar.clients.lock().unwrap() = 5;
    let address = serve(sidecar.clone(), &tls).await;

    let api = FakeApi::default();
    api.0.lock().unwrap().grants = Some(rbac::SIDECAR_DRAIN);
    api.put("deployments", workload("Deployment", "chat"));
    api.put("statefulsets", workload("StatefulSet", "feed"));
    api.put("daemonsets", workload("DaemonSet", "agent"));
    let pods = [
        pod("chat-5c8d7-a", ("ReplicaSet", "chat-5c8d7"), "40"),
        pod("feed-0", ("StatefulSet", "feed"), "30"),
        pod("agent-x", ("DaemonSet", "agent"), "20"),
    ];
    {
        let mut store = api.0.lock().unwrap();
        for pod in pods {
            let name = pod["metadata"]["name"].as_str().unwrap().to_owned();
            store.objects.insert(("/api/v1/pods".into(), name), pod);
        }
    }

    let client = api.client();
    let (_ca_tx, webhook_ca) = watch::channel(Some(ca));
    let pacer = Pacer {
        client: client.clone(),
        control_port: address.port(),
        metrics: Arc::new(Metrics::new()),
        events: Events::new(
            client,
            Reporter {
                controller: "ringway-operator".into(),
                instance: Some("operator-0".into()),
            },
        ),
        webhook_ca,
    };
    let (halt_tx, halt) = watch::channel(false);
    let running = tokio::spawn(pacer.run(halt));

    let started = Instant::now();
    let wanted = 6;
    while api.list("events").len() < wanted {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "events so far: {:?}",
            api.events()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    halt_tx.send(true).unwrap();
    running.await.unwrap();

    // Three pods on one port: the first Drain took the 5 clients, the
    // others found none. Each was told its own workload's budget.
    let mut drains = sidecar.drains.lock().unwrap().clone();
    drains.sort_unstable();
    assert_eq!(drains, [20, 30, 40]);
    let events = api.list("events");
    for (name, pod) in [
        ("chat", "chat-5c8d7-a"),
        ("feed", "feed-0"),
        ("agent", "agent-x"),
    ] {
        let about: Vec<&Value> = events
            .iter()
            .filter(|e| e["regarding"]["name"] == name)
            .collect();
        let reasons: Vec<&str> = about
            .iter()
            .map(|e| e["reason"].as_str().unwrap())
            .collect();
        assert_eq!(reasons, ["SidecarDrainPaced", "SidecarDrained"], "{name}");
        for event in about {
            assert_eq!(event["regarding"]["uid"], format!("uid-{name}"));
            let note = event["note"].as_str().unwrap();
            assert!(note.starts_with(&format!("pod {pod}: ")), "{note}");
        }
    }
    // Each workload is read once for both its events.
    for kind in ["deployments", "statefulsets", "daemonsets"] {
        let reads = api
            .requests()
            .iter()
            .filter(|(m, p, _)| m == "GET" && p.contains(&format!("/{kind}/")))
            .count();
        assert_eq!(reads, 1, "{kind} read {reads} times");
    }
    let used = api.authorized();
    for read in [
        ("", "pods", "list"),
        ("", "pods", "watch"),
        ("apps", "deployments", "get"),
        ("apps", "statefulsets", "get"),
        ("apps", "daemonsets", "get"),
        ("events.k8s.io", "events", "create"),
    ] {
        let read = (read.0.to_owned(), read.1.to_owned(), read.2.to_owned());
        assert!(used.contains(&read), "{read:?} unused: {used:?}");
    }
}
