//! `ringway-operator`: the controller binary. Parses flags, sets up
//! logging, serves `/metrics`, starts the store-filling watches (on every
//! replica, so a standby's stores are warm and it reports ready), takes
//! the leader lease and runs the controllers until SIGTERM. With
//! `--webhook-address`, every replica also serves the sidecar injector's
//! admission webhook, and the leader audits the pods that started without
//! their sidecar.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use kube::runtime::events::Reporter;
use ringway_control::Options;
use ringway_dataplane_api::sidecar;
use ringway_operator::{
    children::OperatorPods,
    context::Context,
    controller,
    events::Events,
    http,
    leader::{self, Leadership, LeaseConfig},
    metrics::Metrics,
    sidecar_audit::run::Auditor,
    sidecar_drain::run::Pacer,
    steer::GrpcSteer,
    stores::{self, Stores},
    until, watches, webhook,
};
use tokio::{sync::watch, task::JoinHandle};
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
    /// Address of the sidecar injector's admission webhook (HTTPS,
    /// `POST /mutate-pods`), served by every replica. None: no webhook.
    #[arg(long, env = "RINGWAY_WEBHOOK_ADDRESS", requires_all = ["webhook_service", "webhook_configuration"])]
    webhook_address: Option<SocketAddr>,
    /// The webhook Service's name, in the operator's namespace: the serving
    /// certificate names `<service>.<namespace>.svc`.
    #[arg(long, env = "RINGWAY_WEBHOOK_SERVICE")]
    webhook_service: Option<String>,
    /// The MutatingWebhookConfiguration whose caBundle the leader keeps.
    #[arg(long, env = "RINGWAY_WEBHOOK_CONFIGURATION")]
    webhook_configuration: Option<String>,
    /// Another DNS name for the webhook's serving certificate, besides the
    /// Service's: for a configuration that calls the webhook by a `url`.
    /// Repeat for several.
    #[arg(
        long = "webhook-dns-name",
        env = "RINGWAY_WEBHOOK_DNS_NAMES",
        value_delimiter = ','
    )]
    webhook_dns_names: Vec<String>,
    /// The Secret, in the operator's namespace, holding the webhook's CA
    /// and serving certificate.
    #[arg(
        long,
        env = "RINGWAY_WEBHOOK_SECRET",
        default_value = "ringway-webhook-tls"
    )]
    webhook_secret: String,
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
    let stop = stop_on_signal();
    let (synced_tx, synced) = watch::channel(false);
    // True while this replica holds the Lease, or at once without an election.
    let (leading, is_leading) = watch::channel(false);
    let readiness = http::Readiness {
        synced,
        leading: is_leading.clone(),
    };
    serve_http(args.metrics_address, &metrics, readiness, &stop).await?;
    // The pacer of the sidecars' drains dials them with a client
    // certificate from this CA.
    let webhook_ca = serve_webhook(&args, &client, &metrics, &is_leading, &stop).await?;
    // The watches run on every replica, so a standby's stores are warm.
    let (stores, scopes) = stores::stores(&args.namespaces);
    let feeds = watches::start(&client, scopes, &is_leading);
    report_synced(stores.clone(), synced_tx);
    let identity = identity(&args);
    let Some(term) = lead(&args, &client, &identity, &stop).await? else {
        return Ok(());
    };
    metrics.set_leader(true);
    leading.send_replace(true); // the watches now feed the controllers
    audit_sidecars(&args, &client, &metrics, &identity, &term.halt);
    if let Some(webhook_ca) = webhook_ca {
        pace_sidecar_drains(&client, &metrics, &identity, webhook_ca, &term.halt);
    }
    let context = context(&args, &client, &metrics, identity, stores);
    info!(namespaces = ?args.namespaces, image = %args.image, "controller running");
    controller::run(client, feeds, context, term.halt.clone()).await;
    metrics.set_leader(false);
    leading.send_replace(false);
    term.finish().await
}

/// Turns true on SIGTERM or SIGINT.
fn stop_on_signal() -> watch::Receiver<bool> {
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        signal().await;
        info!("stopping: waiting for running reconciles");
        let _ = stop.send(true);
    });
    stopped
}

/// Serves `/metrics`, `/healthz` and `/readyz` until `stop`.
async fn serve_http(
    address: SocketAddr,
    metrics: &Arc<Metrics>,
    readiness: http::Readiness,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("binding --metrics-address {address}"))?;
    info!(address = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
    tokio::spawn(http::serve(
        listener,
        Arc::clone(metrics),
        readiness,
        until(stop.clone()),
    ));
    Ok(())
}

/// Serves the admission webhook when `--webhook-address` is set, on every
/// replica, until `stop`. Returns at once with the webhook's CA as this
/// replica reads it (it signs the sidecars' control channel); `None`
/// without the webhook.
async fn serve_webhook(
    args: &Args,
    client: &kube::Client,
    metrics: &Arc<Metrics>,
    leading: &watch::Receiver<bool>,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<Option<webhook::CaWatch>> {
    let (Some(address), Some(service), Some(configuration)) = (
        args.webhook_address,
        args.webhook_service.clone(),
        args.webhook_configuration.clone(),
    ) else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("binding --webhook-address {address}"))?;
    info!(address = %listener.local_addr()?, "serving the sidecar injector's webhook");
    let config = webhook::Config {
        namespace: own_namespace(args),
        service,
        secret: args.webhook_secret.clone(),
        configuration,
        extra_dns_names: args.webhook_dns_names.clone(),
    };
    let ca = webhook::start(
        client.clone(),
        config,
        listener,
        args.image.clone(),
        Arc::clone(metrics),
        leading.clone(),
        until(stop.clone()),
    );
    Ok(Some(ca))
}

/// With the injector (`--webhook-address`), finds and reports the pods
/// that started without their sidecar, every minute until `halt`.
fn audit_sidecars(
    args: &Args,
    client: &kube::Client,
    metrics: &Arc<Metrics>,
    identity: &str,
    halt: &watch::Receiver<bool>,
) {
    if args.webhook_address.is_none() {
        return;
    }
    let auditor = Auditor {
        client: client.clone(),
        namespaces: args.namespaces.clone(),
        metrics: Arc::clone(metrics),
        events: Events::new(client.clone(), reporter(identity.to_owned())),
    };
    tokio::spawn(auditor.run(halt.clone()));
}

/// With the injector, paces the drains of each workload's injected pods
/// within the workload's budget, until `halt`.
fn pace_sidecar_drains(
    client: &kube::Client,
    metrics: &Arc<Metrics>,
    identity: &str,
    webhook_ca: webhook::CaWatch,
    halt: &watch::Receiver<bool>,
) {
    let pacer = Pacer {
        client: client.clone(),
        control_port: sidecar::CONTROL_PORT,
        metrics: Arc::clone(metrics),
        events: Events::new(client.clone(), reporter(identity.to_owned())),
        webhook_ca,
    };
    tokio::spawn(pacer.run(halt.clone()));
}

/// Who the operator's events say reported them.
fn reporter(identity: String) -> Reporter {
    Reporter {
        controller: "ringway-operator".into(),
        instance: Some(identity),
    }
}

/// This replica's identity: `--identity`, else the host name.
fn identity(args: &Args) -> String {
    args.identity
        .clone()
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "ringway-operator".to_owned())
}

/// The operator's own namespace.
fn own_namespace(args: &Args) -> String {
    args.operator_namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned())
}

/// Reports ready once every watch has listed what it watches, leader or
/// not.
fn report_synced(stores: Stores, ready: watch::Sender<bool>) {
    tokio::spawn(async move {
        let synced = stores.wait_until_ready();
        tokio::pin!(synced);
        let result = match tokio::time::timeout(SYNC_WARNING, &mut synced).await {
            Ok(result) => result,
            Err(_) => {
                warn!(
                    after_seconds = SYNC_WARNING.as_secs(),
                    "the watches of gateways, pods and EndpointSlices have not listed everything yet; /readyz answers 503 until they have (look for watch errors above)"
                );
                synced.await
            }
        };
        match result {
            Ok(()) => {
                info!("watches synced");
                let _ = ready.send(true); // readiness: synced
            }
            Err(e) => warn!(error = %e, "a watch ended before it synced; /readyz stays 503"),
        }
    });
}

/// How long the watches may take to list everything before that is logged.
const SYNC_WARNING: Duration = Duration::from_secs(30);

/// Waits for the leader lease (when `--leader-election`); `None` when
/// stopped before it was taken.
async fn lead(
    args: &Args,
    client: &kube::Client,
    identity: &str,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<Option<Term>> {
    if !args.leader_election {
        return Ok(Some(Term::new(None, stop)));
    }
    let namespace = args
        .lease_namespace
        .clone()
        .unwrap_or_else(|| own_namespace(args));
    let config = LeaseConfig::new(namespace, args.lease_name.clone(), identity.to_owned());
    info!(lease = %args.lease_name, identity = %identity, "waiting for the leader lease");
    let leadership = leader::acquire(client.clone(), config, until(stop.clone()))
        .await
        .context("leader election")?;
    Ok(leadership.map(|l| Term::new(Some(l), stop)))
}

/// The controllers' term: it ends on a signal or when the lease is lost.
struct Term {
    /// Turns true when the controllers must stop.
    halt: watch::Receiver<bool>,
    /// Turns true when the lease was lost.
    lost: watch::Receiver<bool>,
    /// Watches the lease; returns it when stopped by a signal.
    keeper: Option<JoinHandle<Option<Leadership>>>,
}

impl Term {
    fn new(leadership: Option<Leadership>, stop: &watch::Receiver<bool>) -> Self {
        let (lost_tx, lost) = watch::channel(false);
        let keeper = leadership.map(|mut l| {
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = l.lost() => {
                        warn!("leader lease lost: stopping");
                        let _ = lost_tx.send(true);
                        None
                    }
                    () = until(stop) => Some(l),
                }
            })
        });
        let (halt_tx, halt) = watch::channel(false);
        let (stop, mut lost_rx) = (stop.clone(), lost.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = until(stop) => {}
                Ok(_) = lost_rx.wait_for(|l| *l) => {}
            }
            let _ = halt_tx.send(true);
        });
        Self { halt, lost, keeper }
    }

    /// After the controllers stopped: an error when the lease was lost,
    /// else the lease is handed over.
    async fn finish(mut self) -> anyhow::Result<()> {
        if *self.lost.borrow_and_update() {
            anyhow::bail!("lost the leader lease; exiting so that a fresh start contends again");
        }
        if let Some(task) = self.keeper
            && let Ok(Some(l)) = task.await
        {
            tokio::time::timeout(Duration::from_secs(5), l.release())
                .await
                .ok();
        }
        Ok(())
    }
}

/// The reconcile's shared context.
fn context(
    args: &Args,
    client: &kube::Client,
    metrics: &Arc<Metrics>,
    identity: String,
    stores: Stores,
) -> Arc<Context<GrpcSteer>> {
    let events = Events::new(client.clone(), reporter(identity));
    Arc::new(Context::new(
        client.clone(),
        GrpcSteer::new(Options::default()),
        Arc::clone(metrics),
        events,
        args.image.clone(),
        OperatorPods {
            namespace: own_namespace(args),
            labels: args.operator_pod_labels.iter().cloned().collect(),
        },
        stores,
    ))
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
