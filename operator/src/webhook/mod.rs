//! Serving the sidecar injector's mutating admission webhook. Every
//! replica, leader or standby, serves `POST /mutate-pods` over TLS (the API
//! server may call any ready pod behind the webhook Service) and answers
//! with the injector ([`admit`]). The certificates live in one
//! Secret of the operator's namespace ([`certs`], [`secret`]), re-read by
//! every replica each [`RESYNC`]; the leader renews them and keeps the
//! MutatingWebhookConfiguration's caBundle equal to the CA ([`ca_bundle`]).
//!
//! The webhook's CA also signs the injected sidecars' control-port
//! certificates ([`control_tls`]): a Secret per namespace with injected
//! pods, made at admission and kept by the leader ([`control_secret`]),
//! and the operator's client certificate, issued from the CA that
//! [`start`] publishes.

pub mod admit;
pub mod ca_bundle;
pub mod certs;
pub mod control_secret;
pub mod control_tls;
pub mod secret;
pub mod serve;

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use axum::body::Bytes;
use futures_util::future::BoxFuture;
use tokio::{net::TcpListener, sync::watch};
use tracing::{Instrument, info, info_span, warn};

use crate::metrics::Metrics;
use admit::ControlSecrets;
use secret::SecretRef;
use serve::ServingCert;

/// The admission decision: an AdmissionReview (JSON) in, the
/// AdmissionReview to answer (JSON) out. It must always answer, with a
/// denial when it cannot decide.
pub type Handler = Arc<dyn Fn(Bytes) -> BoxFuture<'static, Vec<u8>> + Send + Sync>;

/// The webhook's CA and serving certificate as this replica last read
/// them (`None` until the first read): what the leader issues its control
/// client certificate from ([`control_tls::ClientCert::issue`]).
pub type CaWatch = watch::Receiver<Option<certs::WebhookTls>>;

/// How often every replica re-reads the Secret (and the leader checks
/// renewal and the caBundle): a renewed certificate is served within this,
/// long before the old one expires.
pub const RESYNC: Duration = Duration::from_secs(30);

/// What went wrong while keeping or serving the webhook's certificates.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the certificate Secret failed.
    #[error("reading the webhook's Secret: {0}")]
    ReadSecret(#[source] kube::Error),
    /// Creating or replacing the certificate Secret failed.
    #[error("writing the webhook's Secret: {0}")]
    WriteSecret(#[source] kube::Error),
    /// Reading the MutatingWebhookConfiguration failed.
    #[error("reading the MutatingWebhookConfiguration: {0}")]
    ReadConfiguration(#[source] kube::Error),
    /// Patching its caBundle failed.
    #[error("patching the caBundle: {0}")]
    PatchConfiguration(#[source] kube::Error),
    /// Generating or loading a certificate failed.
    #[error("webhook certificates: {0}")]
    Pki(#[from] ringway_control::pki::PkiError),
    /// A stored certificate or key cannot be served.
    #[error("cannot serve the certificate: {0}")]
    Certificate(String),
    /// The stored Secret is unusable and only the leader replaces it.
    #[error("the webhook's Secret is unusable; waiting for the leader to replace it")]
    AwaitingLeader,
    /// Reading a namespace's sidecar control Secret failed.
    #[error("reading the sidecars' control Secret: {0}")]
    ReadControlSecret(#[source] kube::Error),
    /// Creating or replacing it failed.
    #[error("writing the sidecars' control Secret: {0}")]
    WriteControlSecret(#[source] kube::Error),
    /// It was there when created (409) and gone when read.
    #[error("the sidecars' control Secret was deleted while it was being made")]
    ControlSecretVanished,
    /// Listing the injected pods, to find their namespaces, failed.
    #[error("listing the injected pods: {0}")]
    ListInjectedPods(#[source] kube::Error),
}

/// Where the webhook's objects are.
#[derive(Clone, Debug)]
pub struct Config {
    /// The operator's namespace, the Secret's and the Service's.
    pub namespace: String,
    /// The webhook Service's name: the certificate names
    /// `<service>.<namespace>.svc` and `….svc.cluster.local`.
    pub service: String,
    /// The certificate Secret's name.
    pub secret: String,
    /// The MutatingWebhookConfiguration whose caBundle the leader keeps.
    pub configuration: String,
    /// More names for the certificate, for a webhook called by a `url`
    /// rather than through the Service.
    pub extra_dns_names: Vec<String>,
}

impl Config {
    /// The DNS names the API server calls the webhook by: the Service's,
    /// then the extra ones.
    pub fn dns_names(&self) -> Vec<String> {
        let (service, namespace) = (&self.service, &self.namespace);
        let mut names = vec![
            format!("{service}.{namespace}.svc"),
            format!("{service}.{namespace}.svc.cluster.local"),
        ];
        names.extend(self.extra_dns_names.iter().cloned());
        names
    }

    fn secret_ref(&self) -> SecretRef {
        SecretRef {
            namespace: self.namespace.clone(),
            name: self.secret.clone(),
            dns_names: self.dns_names(),
        }
    }
}

/// Serves the webhook on `listener` until `shutdown`, injecting `image`,
/// and keeps its certificates: every [`RESYNC`], reads (or creates) the
/// Secret and serves what it holds; while `leading` is true, also renews
/// it, patches the caBundle and keeps the sidecars' control Secrets.
/// Returns the webhook's CA as it is read.
pub fn start(
    client: kube::Client,
    config: Config,
    listener: TcpListener,
    image: String,
    metrics: Arc<Metrics>,
    leading: watch::Receiver<bool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> CaWatch {
    let cert = Arc::new(ServingCert::default());
    let (ca_tx, ca) = watch::channel(None);
    let secrets = ControlSecrets::new(client.clone(), ca.clone(), Arc::clone(&metrics));
    let handler = admit::injector(image, Arc::new(secrets), Arc::clone(&metrics));
    let span = info_span!("webhook", configuration = %config.configuration);
    let keeper = Keeper {
        client,
        config,
        cert: Arc::clone(&cert),
        ca: ca_tx,
        metrics: Arc::clone(&metrics),
    };
    tokio::spawn(keeper.run(leading).instrument(span.clone()));
    tokio::spawn(
        async move {
            if let Err(e) = serve::serve(listener, cert, handler, metrics, shutdown).await {
                warn!(error = %e, "the webhook cannot serve");
            }
        }
        .instrument(span),
    );
    ca
}

/// What keeps the webhook's certificates, and with them the sidecars'
/// control Secrets.
struct Keeper {
    client: kube::Client,
    config: Config,
    cert: Arc<ServingCert>,
    ca: watch::Sender<Option<certs::WebhookTls>>,
    metrics: Arc<Metrics>,
}

impl Keeper {
    /// Every [`RESYNC`], and at once when this replica starts or stops
    /// leading, until the process ends: [`Keeper::keep_once`], and the
    /// leader's rounds over the control Secrets when due; failures logged
    /// and retried.
    async fn run(self, mut leading: watch::Receiver<bool>) {
        let mut rounds = control_secret::Rounds::default();
        loop {
            let lead = *leading.borrow_and_update();
            if let Err(e) = self.keep_once(lead).await {
                warn!(error = %e, "keeping the webhook's certificates; retrying");
            }
            if lead {
                self.control_round(&mut rounds).await;
            } else {
                rounds.reset();
            }
            tokio::select! {
                () = tokio::time::sleep(RESYNC) => {}
                Ok(()) = leading.changed() => {}
            }
        }
    }

    /// One round: the Secret read (or created, or renewed by the leader),
    /// its certificate served and published when it changed, the caBundle
    /// synced by the leader.
    async fn keep_once(&self, leading: bool) -> Result<(), Error> {
        let (client, config) = (&self.client, &self.config);
        let tls = secret::ensure(client, &config.secret_ref(), leading, SystemTime::now()).await?;
        if self.ca.borrow().as_ref() != Some(&tls) {
            self.cert.store(&tls.cert, &tls.key)?;
            info!(secret = %config.secret, "serving the webhook's certificate");
            self.ca.send_replace(Some(tls.clone()));
        }
        if leading {
            match ca_bundle::sync(client, &config.configuration, &tls.ca_cert).await? {
                ca_bundle::Synced::Missing => warn!(
                    "the MutatingWebhookConfiguration does not exist; its caBundle is set once it does"
                ),
                ca_bundle::Synced::Patched => info!("set the caBundle to the webhook's CA"),
                ca_bundle::Synced::Current => {}
            }
        }
        Ok(())
    }

    /// The leader's round over the sidecars' control Secrets, when
    /// [`control_secret::Rounds`] says one is due.
    async fn control_round(&self, rounds: &mut control_secret::Rounds) {
        let Some(tls) = self.ca.borrow().clone() else {
            return;
        };
        if !rounds.due(&tls.ca_cert, Instant::now()) {
            return;
        }
        match control_secret::keep_all(&self.client, &tls, &self.metrics, SystemTime::now()).await {
            Ok(()) => rounds.done(&tls.ca_cert, Instant::now()),
            Err(e) => warn!(error = %e, "keeping the sidecars' control Secrets; retrying"),
        }
    }
}
