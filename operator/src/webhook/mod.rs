//! Serving the sidecar injector's mutating admission webhook. Every
//! replica, leader or standby, serves `POST /mutate-pods` over TLS (the API
//! server may call any ready pod behind the webhook Service) and answers
//! with the admission [`Handler`] it is given. The certificates live in one
//! Secret of the operator's namespace ([`certs`], [`secret`]), re-read by
//! every replica each [`RESYNC`]; the leader renews them and keeps the
//! MutatingWebhookConfiguration's caBundle equal to the CA ([`ca_bundle`]).

pub mod ca_bundle;
pub mod certs;
pub mod control_tls;
pub mod secret;
pub mod serve;

use std::{future::Future, sync::Arc, time::Duration, time::SystemTime};

use tokio::{net::TcpListener, sync::watch};
use tracing::{Instrument, info, info_span, warn};

use crate::metrics::Metrics;
use secret::SecretRef;
use serve::ServingCert;

/// The admission decision: an AdmissionReview (JSON) in, the
/// AdmissionReview to answer (JSON) out. It must always answer, with a
/// denial when it cannot decide.
pub type Handler = Arc<dyn Fn(&[u8]) -> Vec<u8> + Send + Sync>;

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

/// Serves the webhook on `listener` until `shutdown`, and keeps its
/// certificates: every [`RESYNC`], reads (or creates) the Secret and
/// serves what it holds; while `leading` is true, also renews it and
/// patches the caBundle.
pub fn start(
    client: kube::Client,
    config: Config,
    listener: TcpListener,
    handler: Handler,
    metrics: Arc<Metrics>,
    leading: watch::Receiver<bool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let cert = Arc::new(ServingCert::default());
    let span = info_span!("webhook", configuration = %config.configuration);
    tokio::spawn(
        keep_certificates(client, config, Arc::clone(&cert), leading).instrument(span.clone()),
    );
    tokio::spawn(
        async move {
            if let Err(e) = serve::serve(listener, cert, handler, metrics, shutdown).await {
                warn!(error = %e, "the webhook cannot serve");
            }
        }
        .instrument(span),
    );
}

/// Every [`RESYNC`], and at once when this replica starts or stops
/// leading, until the process ends: [`keep_once`], failures logged and
/// retried.
async fn keep_certificates(
    client: kube::Client,
    config: Config,
    cert: Arc<ServingCert>,
    mut leading: watch::Receiver<bool>,
) {
    let mut served = None;
    loop {
        let lead = *leading.borrow_and_update();
        if let Err(e) = keep_once(&client, &config, &cert, &mut served, lead).await {
            warn!(error = %e, "keeping the webhook's certificates; retrying");
        }
        tokio::select! {
            () = tokio::time::sleep(RESYNC) => {}
            Ok(()) = leading.changed() => {}
        }
    }
}

/// One round: the Secret read (or created, or renewed by the leader), its
/// certificate served when it changed, the caBundle synced by the leader.
async fn keep_once(
    client: &kube::Client,
    config: &Config,
    cert: &ServingCert,
    served: &mut Option<certs::WebhookTls>,
    leading: bool,
) -> Result<(), Error> {
    let tls = secret::ensure(client, &config.secret_ref(), leading, SystemTime::now()).await?;
    if served.as_ref() != Some(&tls) {
        cert.store(&tls.cert, &tls.key)?;
        info!(secret = %config.secret, "serving the webhook's certificate");
        *served = Some(tls);
    }
    if leading && let Some(tls) = served {
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
