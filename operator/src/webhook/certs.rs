//! The webhook's certificates: its own CA and the serving certificate it
//! issues for the webhook Service's DNS names, kept together in one Secret
//! in the operator's namespace (keys as the control channel's, [`keys`]).
//! [`decide`] says whether what is stored can be kept or must be created,
//! renewed or replaced; [`WebhookTls::issue`] makes the new certificates.

use std::{collections::BTreeMap, time::Duration, time::SystemTime};

use k8s_openapi::{
    ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use ringway_control::pki::{self, Ca, PkiError, Usage};
use rustls_pki_types::{CertificateDer, pem::PemObject};
use x509_parser::extensions::GeneralName;

use crate::pki::keys;

/// Lifetime of the webhook's CA.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Lifetime of the serving certificate.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// A certificate is replaced once it is within a third of the serving
/// certificate's life from expiry: four months in which every replica
/// re-reads the Secret, and a failing renewal can be noticed.
pub const RENEW_BEFORE: Duration = Duration::from_secs(LEAF_VALIDITY.as_secs() / 3);
/// The CA's common name.
const CA_NAME: &str = "ringway sidecar injector CA";

/// The webhook's CA and serving certificate, PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookTls {
    /// The CA certificate: the MutatingWebhookConfiguration's caBundle.
    pub ca_cert: String,
    /// The CA's private key, to renew the serving certificate.
    pub ca_key: String,
    /// The serving certificate.
    pub cert: String,
    /// Its private key.
    pub key: String,
}

/// What to do with the stored Secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// It is good: serve it.
    Keep,
    /// There is none: create the CA and the serving certificate.
    Create,
    /// The serving certificate is close to expiry or names other DNS
    /// names: issue a new one from the same CA (the caBundle stays).
    RenewLeaf,
    /// The CA is close to expiry, or the Secret is damaged: a new CA and
    /// serving certificate (the caBundle changes).
    Replace,
}

impl WebhookTls {
    /// The certificates a Secret holds; `None` when a key is missing or not
    /// text.
    pub fn from_secret(secret: &Secret) -> Option<Self> {
        let text = |key: &str| secret_text(secret, key);
        Some(Self {
            ca_cert: text(keys::CA_CERT)?,
            ca_key: text(keys::CA_KEY)?,
            cert: text(keys::TLS_CERT)?,
            key: text(keys::TLS_KEY)?,
        })
    }

    /// The Secret `name` in `namespace` that holds these certificates.
    pub fn to_secret(&self, namespace: &str, name: &str) -> Secret {
        let data = [
            (keys::CA_CERT, &self.ca_cert),
            (keys::CA_KEY, &self.ca_key),
            (keys::TLS_CERT, &self.cert),
            (keys::TLS_KEY, &self.key),
        ];
        opaque_secret(namespace, name, "sidecar-injector", &data)
    }

    /// Carries out `decision` on `stored` (the stored certificates, if
    /// any): the certificates to store. `Keep` with nothing stored creates.
    pub fn issue(
        decision: Decision,
        stored: Option<&Self>,
        dns_names: &[String],
    ) -> Result<Self, PkiError> {
        let ca = match (decision, stored) {
            (Decision::Keep, Some(stored)) => return Ok(stored.clone()),
            (Decision::RenewLeaf, Some(stored)) => Ca::from_pem(&stored.ca_cert, &stored.ca_key)?,
            _ => Ca::generate(CA_NAME, CA_VALIDITY)?,
        };
        let names: Vec<&str> = dns_names.iter().map(String::as_str).collect();
        let common_name = names.first().copied().unwrap_or("ringway-webhook");
        let leaf = ca.issue(common_name, Usage::Server, &names, LEAF_VALIDITY)?;
        Ok(Self {
            ca_cert: ca.cert_pem().to_owned(),
            ca_key: ca.key_pem().to_owned(),
            cert: leaf.cert_pem,
            key: leaf.key_pem,
        })
    }
}

/// An Opaque Secret of the operator's, labelled
/// `app.kubernetes.io/part-of=ringway` and
/// `app.kubernetes.io/component=<component>`, holding `data` as text.
pub(super) fn opaque_secret(
    namespace: &str,
    name: &str,
    component: &str,
    data: &[(&str, &String)],
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([
                ("app.kubernetes.io/part-of".to_owned(), "ringway".to_owned()),
                (
                    "app.kubernetes.io/component".to_owned(),
                    component.to_owned(),
                ),
            ])),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// The text under `key` of a Secret's data; `None` when it is missing or
/// not UTF-8.
pub(super) fn secret_text(secret: &Secret, key: &str) -> Option<String> {
    String::from_utf8(secret.data.as_ref()?.get(key)?.0.clone()).ok()
}

/// What to do with `stored` (`None`: no Secret; `Some(None)`: a Secret
/// without the four keys) at `now`, for a serving certificate that must
/// name exactly `dns_names`.
pub fn decide(
    stored: Option<Option<&WebhookTls>>,
    dns_names: &[String],
    now: SystemTime,
) -> Decision {
    let tls = match stored {
        None => return Decision::Create,
        Some(None) => return Decision::Replace,
        Some(Some(tls)) => tls,
    };
    let expiring = |pem: &str| pki::needs_renewal(pem, now, RENEW_BEFORE).unwrap_or(true);
    if Ca::from_pem(&tls.ca_cert, &tls.ca_key).is_err() || expiring(&tls.ca_cert) {
        return Decision::Replace;
    }
    let names_match = dns_names_of(&tls.cert).is_some_and(|mut names| {
        let mut wanted = dns_names.to_vec();
        names.sort();
        wanted.sort();
        names == wanted
    });
    if expiring(&tls.cert) || !names_match {
        return Decision::RenewLeaf;
    }
    Decision::Keep
}

/// The DNS names a PEM certificate is issued for; `None` when it does not
/// parse.
fn dns_names_of(cert_pem: &str) -> Option<Vec<String>> {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let names = cert.subject_alternative_name().ok()??;
    Some(
        names
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::DNSName(dns) => Some((*dns).to_owned()),
                _ => None,
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec![
            "hook.ringway.svc".to_owned(),
            "hook.ringway.svc.cluster.local".to_owned(),
        ]
    }

    fn fresh() -> WebhookTls {
        WebhookTls::issue(Decision::Create, None, &names()).expect("issue")
    }

    #[test]
    fn nothing_stored_is_created_and_a_fresh_secret_kept() {
        let now = SystemTime::now();
        assert_eq!(decide(None, &names(), now), Decision::Create);
        let tls = fresh();
        assert_eq!(dns_names_of(&tls.cert), Some(names()));
        assert_eq!(decide(Some(Some(&tls)), &names(), now), Decision::Keep);
        let secret = tls.to_secret("ringway", "hook-tls");
        assert_eq!(WebhookTls::from_secret(&secret), Some(tls.clone()));
        assert_eq!(
            WebhookTls::issue(Decision::Keep, Some(&tls), &names()).expect("keep"),
            tls
        );
    }

    #[test]
    fn the_leaf_is_renewed_a_third_of_its_life_before_expiry_from_the_same_ca() {
        let tls = fresh();
        let issued = SystemTime::now();
        let before = issued + LEAF_VALIDITY - RENEW_BEFORE - Duration::from_secs(3600);
        let after = issued + LEAF_VALIDITY - RENEW_BEFORE + Duration::from_secs(3600);
        assert_eq!(decide(Some(Some(&tls)), &names(), before), Decision::Keep);
        assert_eq!(
            decide(Some(Some(&tls)), &names(), after),
            Decision::RenewLeaf
        );
        let renewed = WebhookTls::issue(Decision::RenewLeaf, Some(&tls), &names()).expect("renew");
        assert_eq!(renewed.ca_cert, tls.ca_cert, "the caBundle stays");
        assert_ne!(renewed.cert, tls.cert);
    }

    #[test]
    fn extra_dns_names_reach_the_certificate_after_the_services() {
        let config = crate::webhook::Config {
            namespace: "ringway".into(),
            service: "hook".into(),
            secret: "hook-tls".into(),
            configuration: "hook".into(),
            extra_dns_names: vec!["localhost".into(), "hook.example.com".into()],
        };
        let wanted = [names(), config.extra_dns_names.clone()].concat();
        assert_eq!(config.dns_names(), wanted);
        let tls = WebhookTls::issue(Decision::Create, None, &config.dns_names()).expect("issue");
        assert_eq!(dns_names_of(&tls.cert), Some(wanted));
        assert_eq!(
            decide(Some(Some(&fresh())), &config.dns_names(), SystemTime::now()),
            Decision::RenewLeaf,
            "a certificate without the extra names is renewed"
        );
    }

    #[test]
    fn other_dns_names_renew_the_leaf() {
        let tls = fresh();
        let moved = vec!["other.ringway.svc".to_owned()];
        assert_eq!(
            decide(Some(Some(&tls)), &moved, SystemTime::now()),
            Decision::RenewLeaf
        );
    }

    #[test]
    fn an_expiring_ca_or_a_damaged_secret_is_replaced() {
        let tls = fresh();
        let late = SystemTime::now() + CA_VALIDITY - RENEW_BEFORE + Duration::from_secs(3600);
        assert_eq!(decide(Some(Some(&tls)), &names(), late), Decision::Replace);
        let mut damaged = tls.clone();
        damaged.ca_key = "garbage".into();
        assert_eq!(
            decide(Some(Some(&damaged)), &names(), SystemTime::now()),
            Decision::Replace
        );
        assert_eq!(
            decide(Some(None), &names(), SystemTime::now()),
            Decision::Replace
        );
        let mut secret = tls.to_secret("ringway", "hook-tls");
        secret.data.as_mut().expect("data").remove(keys::TLS_KEY);
        assert_eq!(WebhookTls::from_secret(&secret), None);
        let replaced = WebhookTls::issue(Decision::Replace, Some(&tls), &names()).expect("replace");
        assert_ne!(replaced.ca_cert, tls.ca_cert);
    }
}
