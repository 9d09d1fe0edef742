//! `ringway-operator`: the controller binary. Parses flags, sets up
//! logging, serves `/metrics`, takes the leader lease and runs the
//! controllers until SIGTERM.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use kube::runtime::events::Reporter;
use ringway_control::Options;
use ringway_operator::{
    children::OperatorPods,
    controller,
    events::Events,
    http,
    leader::{self, LeaseConfig},
    metrics::Metrics,
    reconcile::Context,
    steer::GrpcSteer,
};
use tokio::sync::watch;
use tracing::{info, warn};

/// Reconciles WebSocketGateway resources into sharded data-plane pods and
/// steers every pod over the control channel.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Data-plane image for gateways whose spec names none.
    #[arg(long, env = "RINGWAY_DATAPLANE_IMAGE", default_value = concat!("ghcr.io/ringway-dev/ringway-dataplane:", env!("CARGO_PKG_VERSION")))]
    image: String,
    /// Namespace to watch; repeat for several. None: all namespaces.
    #[arg(long = "namespace", env = "RINGWAY_NAMESPACE", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, env = "RINGWAY_METRICS_ADDRESS", default_value = "0.0.0.0:8080")]
    metrics_address: SocketAddr,
    /// Take a Lease before acting, so that only one replica acts.
    #[arg(long, env = "RINGWAY_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Namespace of the leader Lease (default: the operator's own).
    #[arg(long, env = "RINGWAY_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    /// The operator's own namespace (default: POD_NAMESPACE, else `default`).
    /// A gateway's NetworkPolicy admits pods of this namespace to the
    /// control port.
    #[arg(long, env = "POD_NAMESPACE")]
    operator_namespace: Option<String>,
    /// Labels of the operator's own pods, as `key=value` pairs separated by
    /// commas. A gateway's NetworkPolicy admits only these pods of the
    /// operator's namespace to the control port; none: every pod of it.
    #[arg(long, env = "RINGWAY_OPERATOR_POD_LABELS", value_delimiter = ',', value_parser = label)]
    operator_pod_labels: Vec<(String, String)>,
    /// Name of the leader Lease.
    #[arg(long, env = "RINGWAY_LEASE_NAME", default_value = "ringway-operator")]
    lease_name: String,
    /// This replica's identity in the Lease and in events (default: POD_NAME, else the host name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Log format.
    #[arg(long, env = "RINGWAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log filter, in `tracing` env-filter syntax.
    #[arg(long, env = "RINGWAY_LOG", default_value = "info")]
    log: String,
}

/// One `key=value` label.
fn label(pair: &str) -> Result<(String, String), String> {
    match pair.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{pair:?} is not key=value")),
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log).context("--log")?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)")?;
    let metrics = Arc::new(Metrics::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        signal().await;
        info!("stopping: waiting for running reconciles");
        let _ = stop_tx.send(true);
    });
    let stopped = {
        let rx = stop_rx.clone();
        move || {
            let mut rx = rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        }
    };
    let (synced_tx, synced) = watch::channel(false);
    // This replica may act from the start when there is no election.
    let (leading_tx, leading) = watch::channel(!args.leader_election);
    let listener = tokio::net::TcpListener::bind(args.metrics_address)
        .await
        .with_context(|| format!("binding --metrics-address {}", args.metrics_address))?;
    info!(address = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
    tokio::spawn(http::serve(
        listener,
        Arc::clone(&metrics),
        http::Readiness { synced, leading },
        stopped(),
    ));

    let identity = args
        .identity
        .clone()
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "ringway-operator".to_owned());
    // The watches start only once this replica leads: until the controller
    // reports them synced, count them synced from the start, so that a
    // standby replica passes the readiness probe (`/readyz/informer-sync`).
    let _ = synced_tx.send(true);
    let own_namespace = args
        .operator_namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    let leadership = if args.leader_election {
        let namespace = args
            .lease_namespace
            .clone()
            .unwrap_or_else(|| own_namespace.clone());
        let config = LeaseConfig::new(namespace, args.lease_name.clone(), identity.clone());
        info!(lease = %args.lease_name, identity = %identity, "waiting for the leader lease");
        match leader::acquire(client.clone(), config, stopped())
            .await
            .context("leader election")?
        {
            Some(l) => Some(l),
            None => return Ok(()),
        }
    } else {
        None
    };
    metrics.set_leader(true);
    leading_tx.send_replace(true);
    let (lost_tx, mut lost_rx) = watch::channel(false);
    let leadership = leadership.map(|mut l| {
        let lost_tx = lost_tx.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = l.lost() => {
                    warn!("leader lease lost: stopping");
                    leading_tx.send_replace(false);
                    let _ = lost_tx.send(true);
                    None
                }
                _ = stop.wait_for(|s| *s) => Some(l),
            }
        })
    });
    // The controllers stop on a signal or when the lease is lost.
    let (halt_tx, halt_rx) = watch::channel(false);
    tokio::spawn({
        let stopped = stopped();
        let mut lost = lost_rx.clone();
        async move {
            tokio::select! {
                () = stopped => {}
                _ = lost.wait_for(|l| *l) => {}
            }
            let _ = halt_tx.send(true);
        }
    });
    let events = Events::new(
        client.clone(),
        Reporter {
            controller: "ringway-operator".into(),
            instance: Some(identity),
        },
    );
    let context = Arc::new(Context::new(
        client.clone(),
        GrpcSteer::new(Options::default()),
        Arc::clone(&metrics),
        events,
        args.image.clone(),
        OperatorPods {
            namespace: own_namespace,
            labels: args.operator_pod_labels.iter().cloned().collect(),
        },
    ));
    info!(namespaces = ?args.namespaces, image = %args.image, "controller running");
    controller::run(client, &args.namespaces, context, halt_rx).await;
    metrics.set_leader(false);
    if *lost_rx.borrow_and_update() {
        anyhow::bail!("lost the leader lease; exiting so that a fresh start contends again");
    }
    if let Some(task) = leadership
        && let Ok(Some(l)) = task.await
    {
        tokio::time::timeout(Duration::from_secs(5), l.release())
            .await
            .ok();
    }
    Ok(())
}

async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot listen for signals; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
