//! A gateway run end to end on one machine: the operator's real reconcile
//! with the real control channel ([`GrpcSteer`], as `main.rs` builds it)
//! against the fake API, the [`Kubelet`] that runs its pods as real
//! `ringway-dataplane` processes, a `ringway-echo` backend behind the
//! route's Service, and the client [`Service`] of the Ready pods.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use anyhow::bail;
use ringway_control::Options;
use ringway_e2e::fleet::{Binaries, EchoProcess, loopback_ip};
use ringway_operator::steer::GrpcSteer;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::{
    clients::Service,
    kubelet::Kubelet,
    support::{NS, World, merge},
};

/// Shards (pods) per version.
pub const SHARDS: u16 = 2;

/// The pause between two rounds (reconcile, kubelet, Service), as a
/// controller requeueing a rollout in progress would.
const ROUND: Duration = Duration::from_millis(300);

/// How long the gateway may take to come up.
const STARTUP: Duration = Duration::from_secs(30);

/// The gateway `chat` and everything that runs it.
pub struct Gateway {
    pub world: World<GrpcSteer>,
    pub kubelet: Kubelet,
    /// Where clients enter.
    pub service: Service,
    /// Reconciles that failed (the controller would requeue them).
    pub failed_reconciles: Vec<String>,
    _echo: EchoProcess,
}

impl Gateway {
    /// The gateway of `World::new` with `spec` merged into its spec, its
    /// route's backend a real echo process; returns once the stable
    /// version's pods are all Ready.
    pub async fn start(spec: Value) -> anyhow::Result<Self> {
        let binaries = Binaries::in_target_dir()?;
        let listen = SocketAddr::new(IpAddr::V4(loopback_ip()), 0);
        let echo = EchoProcess::start(&binaries.echo, "echo-0", listen).await?;
        let steer = Arc::new(GrpcSteer::new(Options::default()));
        let world = World::with_steer(json!({}), SHARDS, steer);
        world.api.put(
            "endpointslices",
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "chat-backend-x1", "namespace": NS,
                    "labels": {"kubernetes.io/service-name": "chat-backend"}},
                "addressType": "IPv4",
                "ports": [{"name": "ws", "port": echo.address.port()}],
                "endpoints": [{"addresses": [echo.address.ip().to_string()],
                    "conditions": {"ready": true}}]}),
        );
        world.edit(|gw| merge(&mut gw["spec"], &spec));
        let mut gateway = Self {
            world,
            kubelet: Kubelet::new(binaries.dataplane)?,
            service: Service::default(),
            failed_reconciles: Vec::new(),
            _echo: echo,
        };
        gateway
            .drive_until(STARTUP, |g| {
                let status = g.world.status();
                status["stable"]["shardsReady"] == json!(SHARDS)
                    && g.service_size() == usize::from(SHARDS)
            })
            .await?;
        Ok(gateway)
    }

    /// One round: a reconcile (a failed one is noted, as the controller
    /// would log and requeue it), the kubelet, the Service's endpoints.
    pub async fn round(&mut self) -> anyhow::Result<()> {
        if let Err(e) = self.world.reconcile().await {
            self.failed_reconciles.push(e.to_string());
        }
        self.kubelet.sync(&self.world).await?;
        self.service.set(self.kubelet.ready_clients());
        Ok(())
    }

    /// Runs rounds until `done` says so; fails after `timeout` with the
    /// gateway's status and the pods' logs.
    pub async fn drive_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&Self) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.round().await?;
            if done(self) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "not done after {timeout:?}; status: {:#}\nfailed reconciles: {:?}\npods' logs:\n{}",
                    self.world.status(),
                    self.failed_reconciles,
                    self.kubelet.logs()
                );
            }
            tokio::time::sleep(ROUND).await;
        }
    }

    /// The number of pods clients may enter by now.
    pub fn service_size(&self) -> usize {
        self.kubelet.ready_clients().len()
    }

    /// The stable version's StatefulSet (`chat-a` or `chat-b`).
    pub fn stable_set(&self) -> String {
        let slot = self.world.status()["stable"]["slot"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase();
        format!("chat-{slot}")
    }

    /// The reasons of the events the operator recorded, in order.
    pub fn event_reasons(&self) -> Vec<String> {
        self.world
            .api
            .events()
            .into_iter()
            .map(|(r, _)| r)
            .collect()
    }
}
