//! The operator's side of the control channel: pushing snapshots to pods
//! and asking them for their status. [`Steer`] is a trait so that the
//! reconciler's tests can record what would have been sent.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use ringway_control::{
    ControlClient, Options, PodResult, RpcError, TlsIdentity,
    pki::{Ca, SERVER_NAME, Usage},
    proto::{PodStatus, Snapshot},
};

use crate::Error;

/// Each pod's answer to a status request, by control address.
pub type StatusAnswers = Vec<(String, Result<PodStatus, RpcError>)>;

/// How the operator talks to one gateway's pods.
pub trait Steer: Send + Sync + 'static {
    /// Applies `snapshot` on every pod in `addresses` (control `ip:port`).
    fn push(
        &self,
        gateway: &str,
        ca: &Ca,
        addresses: &[String],
        snapshot: &Snapshot,
    ) -> impl Future<Output = Result<Vec<PodResult>, Error>> + Send;

    /// Asks every pod in `addresses` for its status.
    fn status(
        &self,
        gateway: &str,
        ca: &Ca,
        addresses: &[String],
    ) -> impl Future<Output = Result<StatusAnswers, Error>> + Send;

    /// Drops what is kept for a deleted gateway.
    fn forget(&self, gateway: &str);
}

/// A shared control channel steers like the one it shares.
impl<S: Steer> Steer for Arc<S> {
    fn push(
        &self,
        gateway: &str,
        ca: &Ca,
        addresses: &[String],
        snapshot: &Snapshot,
    ) -> impl Future<Output = Result<Vec<PodResult>, Error>> + Send {
        S::push(self, gateway, ca, addresses, snapshot)
    }

    fn status(
        &self,
        gateway: &str,
        ca: &Ca,
        addresses: &[String],
    ) -> impl Future<Output = Result<StatusAnswers, Error>> + Send {
        S::status(self, gateway, ca, addresses)
    }

    fn forget(&self, gateway: &str) {
        S::forget(self, gateway);
    }
}

/// Lifetime of the operator's own client certificate; it lives in memory
/// only and is issued again well before it expires.
const CLIENT_CERT_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);
const CLIENT_CERT_RENEW_BEFORE: Duration = Duration::from_secs(24 * 3600);

/// The real control channel: one [`ControlClient`] per gateway, with a
/// client certificate issued from that gateway's CA.
#[derive(Default)]
pub struct GrpcSteer {
    options: Options,
    clients: Mutex<HashMap<String, Cached>>,
}

struct Cached {
    ca_pem: String,
    not_after: SystemTime,
    client: Arc<ControlClient>,
}

impl GrpcSteer {
    /// A control channel with these timeouts and retries.
    pub fn new(options: Options) -> Self {
        Self {
            options,
            clients: Mutex::default(),
        }
    }

    fn client(&self, gateway: &str, ca: &Ca) -> Result<Arc<ControlClient>, Error> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(gateway) {
            let fresh = c.not_after > SystemTime::now() + CLIENT_CERT_RENEW_BEFORE;
            if c.ca_pem == ca.cert_pem() && fresh {
                return Ok(c.client.clone());
            }
        }
        let issued = ca.issue("ringway-operator", Usage::Client, &[], CLIENT_CERT_VALIDITY)?;
        let client = Arc::new(ControlClient::new(
            &TlsIdentity {
                ca_pem: ca.cert_pem().to_owned(),
                cert_pem: issued.cert_pem,
                key_pem: issued.key_pem,
                server_name: SERVER_NAME.to_owned(),
            },
            self.options.clone(),
        )?);
        clients.insert(
            gateway.to_owned(),
            Cached {
                ca_pem: ca.cert_pem().to_owned(),
                not_after: issued.not_after,
                client: client.clone(),
            },
        );
        Ok(client)
    }
}

impl Steer for GrpcSteer {
    async fn push(
        &self,
        gateway: &str,
        ca: &Ca,
        addresses: &[String],
        snapshot: &Snapshot,
    ) -> Result<Vec<PodResult>, Error> {
        let client = self.client(gateway, ca)?;
        Ok(client.push(addresses, snapshot).await)
    }

    async fn status(
        &self,
        gateway: &str,
        ca: &Ca,
        addresses: &[String],
    ) -> Result<StatusAnswers, Error> {
        let client = self.client(gateway, ca)?;
        let calls = addresses.iter().map(|a| {
            let client = client.clone();
            async move { (a.clone(), client.status(a).await) }
        });
        Ok(futures_util::future::join_all(calls).await)
    }

    fn forget(&self, gateway: &str) {
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(gateway);
    }
}
