//! The certificates of the injected sidecars' control port, from the
//! webhook's own CA: in each namespace with injected pods, the Secret
//! `sidecar::CONTROL_SECRET` ([`ControlTls`]: the CA certificate and a
//! server certificate naming `sidecar::server_name(namespace)`, serverAuth
//! only), which [`decide`] judges; and the operator's client certificate
//! ([`ClientCert`], clientAuth only), held in memory, with which the
//! leader dials the sidecars to pace their drains.

use std::{
    fmt,
    sync::Arc,
    time::{Duration, SystemTime},
};

use k8s_openapi::api::core::v1::Secret;
use ringway_control::{
    TlsIdentity,
    pki::{self, Ca, PkiError, Usage},
};
use ringway_dataplane_api::sidecar::{
    CONTROL_CA_FILE, CONTROL_CERT_FILE, CONTROL_KEY_FILE, CONTROL_SECRET, server_name,
};
use rustls::{
    RootCertStore,
    client::{WebPkiServerVerifier, danger::ServerCertVerifier},
    crypto::ring,
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject};

use super::certs::{self, WebhookTls, opaque_secret, secret_text};

/// Lifetime of a namespace's server certificate.
pub const SERVER_VALIDITY: Duration = certs::LEAF_VALIDITY;
/// It is renewed this long before it expires, as the webhook's own.
pub const RENEW_BEFORE: Duration = certs::RENEW_BEFORE;
/// Lifetime of the operator's client certificate: it lives in memory only
/// and is issued again well before it expires ([`ClientCert::is_due`]).
pub const CLIENT_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);
/// A client certificate this close to expiry is issued again.
pub const CLIENT_RENEW_BEFORE: Duration = Duration::from_secs(24 * 3600);
/// The `app.kubernetes.io/component` label of the control Secrets.
pub const COMPONENT: &str = "sidecar-control";
/// The label selector of every control Secret the operator made, for
/// `kubectl delete secret -A -l …` when uninstalling.
pub const SELECTOR: &str =
    "app.kubernetes.io/part-of=ringway,app.kubernetes.io/component=sidecar-control";

/// One namespace's control Secret: what its sidecars serve with and trust.
#[derive(Clone, PartialEq, Eq)]
pub struct ControlTls {
    /// The webhook's CA certificate: the client certificates the sidecars
    /// accept chain to it.
    pub ca_cert: String,
    /// The sidecars' server certificate, naming `server_name(namespace)`.
    pub cert: String,
    /// Its private key.
    pub key: String,
}

impl fmt::Debug for ControlTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlTls").finish_non_exhaustive()
    }
}

/// What to do with a namespace's stored control Secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// It is good.
    Keep,
    /// There is none: create it.
    Create,
    /// It is damaged, from another CA, or close to expiry: replace it.
    Renew,
}

impl ControlTls {
    /// A new server certificate for the sidecars of `namespace`, from the
    /// webhook's CA in `tls`.
    pub fn issue(tls: &WebhookTls, namespace: &str) -> Result<Self, PkiError> {
        let ca = Ca::from_pem(&tls.ca_cert, &tls.ca_key)?;
        let name = server_name(namespace);
        let leaf = ca.issue(&name, Usage::Server, &[&name], SERVER_VALIDITY)?;
        Ok(Self {
            ca_cert: tls.ca_cert.clone(),
            cert: leaf.cert_pem,
            key: leaf.key_pem,
        })
    }

    /// The certificates a Secret holds; `None` when a key is missing or
    /// not text.
    pub fn from_secret(secret: &Secret) -> Option<Self> {
        Some(Self {
            ca_cert: secret_text(secret, CONTROL_CA_FILE)?,
            cert: secret_text(secret, CONTROL_CERT_FILE)?,
            key: secret_text(secret, CONTROL_KEY_FILE)?,
        })
    }

    /// The Secret [`CONTROL_SECRET`] of `namespace` that holds them, with
    /// the files the sidecar reads.
    pub fn to_secret(&self, namespace: &str) -> Secret {
        let data = [
            (CONTROL_CA_FILE, &self.ca_cert),
            (CONTROL_CERT_FILE, &self.cert),
            (CONTROL_KEY_FILE, &self.key),
        ];
        opaque_secret(namespace, CONTROL_SECRET, COMPONENT, &data)
    }
}

/// What to do at `now` with `stored`, the control Secret of `namespace`
/// (`None`: no Secret; `Some(None)`: one without the three files), when
/// the webhook's CA certificate is `ca_cert`. It is kept only when its CA
/// is that one and its server certificate chains to it, names the
/// namespace's server name for serverAuth, matches its key and is not
/// within [`RENEW_BEFORE`] of expiry.
pub fn decide(
    stored: Option<Option<&ControlTls>>,
    ca_cert: &str,
    namespace: &str,
    now: SystemTime,
) -> Decision {
    match stored {
        None => Decision::Create,
        Some(Some(tls)) if tls.ca_cert == ca_cert && is_sound(tls, namespace, now) => {
            Decision::Keep
        }
        Some(_) => Decision::Renew,
    }
}

fn is_sound(tls: &ControlTls, namespace: &str, now: SystemTime) -> bool {
    let fresh = pki::needs_renewal(&tls.cert, now, RENEW_BEFORE).is_ok_and(|due| !due);
    fresh && serves(tls, namespace, now).is_some()
}

/// Whether a client trusting only `tls.ca_cert` accepts `tls.cert` as
/// `server_name(namespace)` at `now`, and `tls.key` is its key.
fn serves(tls: &ControlTls, namespace: &str, now: SystemTime) -> Option<()> {
    let chain = CertificateDer::pem_slice_iter(tls.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    let key = PrivateKeyDer::from_pem_slice(tls.key.as_bytes()).ok()?;
    let provider = ring::default_provider();
    let certified = CertifiedKey::from_der(chain.clone(), key, &provider).ok()?;
    // `from_der` lets a key whose match it cannot tell pass; this does not.
    certified.keys_match().ok()?;
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(tls.ca_cert.as_bytes()).ok()?)
        .ok()?;
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::new(provider))
        .build()
        .ok()?;
    let (leaf, intermediates) = chain.split_first()?;
    let name = ServerName::try_from(server_name(namespace)).ok()?;
    let at = UnixTime::since_unix_epoch(now.duration_since(SystemTime::UNIX_EPOCH).ok()?);
    verifier
        .verify_server_cert(leaf, intermediates, &name, &[], at)
        .ok()
        .map(drop)
}

/// The operator's client certificate for the sidecars' control ports,
/// from the webhook's CA: what `ringway_control::ControlClient` needs but
/// the server name, which is per namespace ([`ClientCert::identity`]).
#[derive(Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// The webhook's CA certificate: the only root trusted for the
    /// sidecars' server certificates.
    pub ca_pem: String,
    /// The client certificate (clientAuth only).
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
    /// When it expires.
    pub not_after: SystemTime,
}

impl fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCert")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl ClientCert {
    /// Issues a client certificate valid for [`CLIENT_VALIDITY`] from the
    /// webhook's CA in `tls` (the leader's, from the receiver
    /// `webhook::start` returns).
    pub fn issue(tls: &WebhookTls) -> Result<Self, PkiError> {
        let ca = Ca::from_pem(&tls.ca_cert, &tls.ca_key)?;
        let issued = ca.issue("ringway-operator", Usage::Client, &[], CLIENT_VALIDITY)?;
        Ok(Self {
            ca_pem: tls.ca_cert.clone(),
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem,
            not_after: issued.not_after,
        })
    }

    /// Whether it must be issued again at `now`: it is within
    /// [`CLIENT_RENEW_BEFORE`] of expiry, or the webhook's CA is no
    /// longer `ca_cert`'s.
    pub fn is_due(&self, ca_cert: &str, now: SystemTime) -> bool {
        self.ca_pem != ca_cert || now + CLIENT_RENEW_BEFORE >= self.not_after
    }

    /// The identity to dial the sidecars of `namespace` with: they present
    /// a certificate for `sidecar::server_name(namespace)`.
    pub fn identity(&self, namespace: &str) -> TlsIdentity {
        TlsIdentity {
            ca_pem: self.ca_pem.clone(),
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
            server_name: server_name(namespace),
        }
    }
}

#[cfg(test)]
mod tests;
