//! The control channel's certificates, kept in two Secrets per gateway:
//!
//! - `<gateway>-control-ca` (the CA's certificate and key), read only by
//!   the operator, which issues itself a client certificate from it;
//! - `<gateway>-control` (the CA certificate, the pods' server certificate
//!   and key, and the peer hand-off token), mounted by every pod.
//!
//! The pods read their certificate at start, so a renewed certificate
//! reaches them through a paced rolling restart: its version is a pod
//! template annotation. Renewal starts [`RENEW_BEFORE`] ahead of expiry.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use k8s_openapi::{ByteString, api::core::v1::Secret};
use ringway_control::pki::{self, Ca, SERVER_NAME, Usage};

use crate::{Error, names::GatewayRef};

/// Lifetime of a gateway's CA.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Lifetime of the pods' server certificate.
pub const POD_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Certificates are replaced this long before they expire: long enough for
/// a paced rolling restart of a large fleet, and for a person to notice a
/// failing renewal in the events.
pub const RENEW_BEFORE: Duration = Duration::from_secs(60 * 24 * 3600);

/// Keys of the pods' Secret.
pub mod keys {
    /// The CA certificate the pods trust for client certificates.
    pub const CA_CERT: &str = "ca.crt";
    /// The CA's private key (operator's Secret only).
    pub const CA_KEY: &str = "ca.key";
    /// The pods' server certificate.
    pub const TLS_CERT: &str = "tls.crt";
    /// Its private key.
    pub const TLS_KEY: &str = "tls.key";
    /// The shared token of the peer hand-off port.
    pub const TOKEN: &str = "token";
}

/// The control channel's certificates for one gateway, and the Secrets to
/// write when something was created or renewed.
#[derive(Debug)]
pub struct ControlPki {
    /// The CA, to issue the operator's client certificate.
    pub ca: Ca,
    /// The CA Secret, when it must be written.
    pub ca_secret: Option<Secret>,
    /// The pods' Secret, when it must be written.
    pub pod_secret: Option<Secret>,
    /// A short version of the pods' certificate, for the pod template.
    pub cert_version: String,
    /// What was created or renewed, for an event.
    pub changed: Option<String>,
}

/// Reads the two Secrets and decides what to create or renew at `now`.
pub fn plan(
    gw: &GatewayRef,
    ca_secret: Option<&Secret>,
    pod_secret: Option<&Secret>,
    now: SystemTime,
) -> Result<ControlPki, Error> {
    let stored_ca = ca_secret.and_then(|s| {
        let cert = text(s, keys::CA_CERT)?;
        let key = text(s, keys::CA_KEY)?;
        let fresh = !pki::needs_renewal(&cert, now, RENEW_BEFORE).unwrap_or(true);
        fresh.then(|| Ca::from_pem(&cert, &key).ok()).flatten()
    });
    let mut changed = Vec::new();
    let (ca, ca_secret) = match stored_ca {
        Some(ca) => (ca, None),
        None => {
            changed.push(if ca_secret.is_some() {
                "renewed the CA"
            } else {
                "created the CA"
            });
            let ca = Ca::generate(
                &format!("ringway {}/{} control CA", gw.namespace, gw.name),
                CA_VALIDITY,
            )?;
            let secret = secret(
                gw,
                gw.ca_secret(),
                [
                    (keys::CA_CERT, ca.cert_pem().to_owned()),
                    (keys::CA_KEY, ca.key_pem().to_owned()),
                ],
            );
            (ca, Some(secret))
        }
    };
    let current = pod_secret.and_then(|s| {
        let ca_cert = text(s, keys::CA_CERT)?;
        let cert = text(s, keys::TLS_CERT)?;
        let key = text(s, keys::TLS_KEY)?;
        let token = text(s, keys::TOKEN).filter(|t| t.len() >= 32)?;
        let fresh = ca_cert == ca.cert_pem()
            && !pki::needs_renewal(&cert, now, RENEW_BEFORE).unwrap_or(true);
        Some((fresh, cert, key, token))
    });
    let (cert, pod_secret) = match current {
        Some((true, cert, _, _)) => (cert, None),
        other => {
            let token = match other {
                Some((_, _, _, token)) => token,
                None => new_token()?,
            };
            changed.push(if pod_secret.is_some() {
                "renewed the pods' certificate"
            } else {
                "created the pods' certificate and peer token"
            });
            let issued = ca.issue(
                &format!("{}.{}", gw.name, gw.namespace),
                Usage::Server,
                &[SERVER_NAME],
                POD_CERT_VALIDITY,
            )?;
            let secret = secret(
                gw,
                gw.control_secret(),
                [
                    (keys::CA_CERT, ca.cert_pem().to_owned()),
                    (keys::TLS_CERT, issued.cert_pem.clone()),
                    (keys::TLS_KEY, issued.key_pem),
                    (keys::TOKEN, token),
                ],
            );
            (issued.cert_pem, Some(secret))
        }
    };
    Ok(ControlPki {
        ca,
        ca_secret,
        pod_secret,
        cert_version: format!("{:016x}", xxhash_rust::xxh3::xxh3_64(cert.as_bytes())),
        changed: (!changed.is_empty()).then(|| changed.join(", ")),
    })
}

fn text(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

fn secret<const N: usize>(gw: &GatewayRef, name: String, data: [(&str, String); N]) -> Secret {
    Secret {
        metadata: gw.child_meta(name),
        type_: Some("Opaque".into()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k.to_owned(), ByteString(v.into_bytes())))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Secret::default()
    }
}

/// The peer hand-off token.
fn new_token() -> Result<String, Error> {
    random_token().ok_or_else(|| Error::Malformed("no random bytes for the peer token".to_owned()))
}

/// Random bytes in a secret token (256 bits).
pub(crate) const TOKEN_BYTES: usize = 32;

/// A secret token: [`TOKEN_BYTES`] from the operating system's secure random
/// generator (through ring, the TLS stack's provider), in hex. `None` when
/// the generator fails. The peer hand-off token and the sidecar's drain
/// token are both made here.
pub(crate) fn random_token() -> Option<String> {
    let mut bytes = [0u8; TOKEN_BYTES];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    use super::*;

    fn gw() -> GatewayRef {
        GatewayRef {
            name: "chat".into(),
            namespace: "prod".into(),
            owner: OwnerReference {
                api_version: "ringway.dev/v1alpha1".into(),
                kind: "WebSocketGateway".into(),
                name: "chat".into(),
                uid: "u-1".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            },
        }
    }

    #[test]
    fn first_run_creates_both_secrets_and_later_runs_write_nothing() {
        let now = SystemTime::now();
        let first = plan(&gw(), None, None, now).expect("plan");
        let (ca, pods) = (
            first.ca_secret.clone().expect("ca"),
            first.pod_secret.clone().expect("pods"),
        );
        assert_eq!(ca.metadata.name.as_deref(), Some("chat-control-ca"));
        assert_eq!(pods.metadata.name.as_deref(), Some("chat-control"));
        let data = pods.data.as_ref().expect("data");
        for key in [keys::CA_CERT, keys::TLS_CERT, keys::TLS_KEY, keys::TOKEN] {
            assert!(data.contains_key(key), "{key}");
        }
        assert!(
            !data.contains_key(keys::CA_KEY),
            "the pods must not get the CA key"
        );
        assert_eq!(text(&pods, keys::TOKEN).map(|t| t.len()), Some(64));
        assert!(first.changed.is_some());

        let again = plan(&gw(), Some(&ca), Some(&pods), now).expect("plan");
        assert!(again.ca_secret.is_none() && again.pod_secret.is_none() && again.changed.is_none());
        assert_eq!(again.cert_version, first.cert_version);
    }

    #[test]
    fn an_expiring_pod_certificate_is_renewed_keeping_the_token() {
        let now = SystemTime::now();
        let first = plan(&gw(), None, None, now).expect("plan");
        let (ca, pods) = (
            first.ca_secret.expect("ca"),
            first.pod_secret.expect("pods"),
        );
        let later = now + POD_CERT_VALIDITY - RENEW_BEFORE + Duration::from_secs(3600);
        let renewed = plan(&gw(), Some(&ca), Some(&pods), later).expect("plan");
        assert!(renewed.ca_secret.is_none(), "the CA is still good");
        let new_pods = renewed.pod_secret.expect("renewed");
        assert_eq!(text(&new_pods, keys::TOKEN), text(&pods, keys::TOKEN));
        assert_ne!(text(&new_pods, keys::TLS_CERT), text(&pods, keys::TLS_CERT));
        assert_ne!(renewed.cert_version, first.cert_version);
        assert_eq!(
            renewed.changed.as_deref(),
            Some("renewed the pods' certificate")
        );
    }

    #[test]
    fn a_damaged_secret_is_replaced_not_fatal() {
        let now = SystemTime::now();
        let mut broken = plan(&gw(), None, None, now)
            .expect("plan")
            .ca_secret
            .expect("ca");
        broken
            .data
            .as_mut()
            .expect("data")
            .insert(keys::CA_KEY.into(), ByteString(b"garbage".to_vec()));
        let fixed = plan(&gw(), Some(&broken), None, now).expect("plan");
        assert_eq!(
            fixed.changed.as_deref(),
            Some("renewed the CA, created the pods' certificate and peer token")
        );
        assert!(fixed.ca_secret.is_some() && fixed.pod_secret.is_some());
    }
}
