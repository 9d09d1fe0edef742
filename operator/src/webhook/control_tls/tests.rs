//! The control Secret's decisions at chosen instants, and a real mutual
//! TLS handshake between the operator's client certificate and a
//! namespace's server certificate, as the sidecar's control port and the
//! leader's `ControlClient` make it.

use std::sync::Arc;

use rustls::{
    ClientConfig, ServerConfig,
    server::{WebPkiClientVerifier, danger::ClientCertVerifier},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;
use crate::webhook::certs::Decision as WebhookDecision;

const NS: &str = "apps";

fn webhook_ca() -> WebhookTls {
    let names = ["hook.ringway.svc".to_owned()];
    WebhookTls::issue(WebhookDecision::Create, None, &names).expect("the webhook's CA")
}

#[test]
fn a_missing_secret_is_created_and_a_fresh_one_kept() {
    let ca = webhook_ca();
    let now = SystemTime::now();
    assert_eq!(decide(None, &ca.ca_cert, NS, now), Decision::Create);
    let tls = ControlTls::issue(&ca, NS).expect("issued");
    assert_eq!(
        decide(Some(Some(&tls)), &ca.ca_cert, NS, now),
        Decision::Keep
    );
    let secret = tls.to_secret(NS);
    assert_eq!(secret.metadata.name.as_deref(), Some(CONTROL_SECRET));
    assert_eq!(secret.metadata.namespace.as_deref(), Some(NS));
    let labels = secret.metadata.labels.clone().expect("labels");
    let selected = SELECTOR.split(',').all(|pair| {
        pair.split_once('=')
            .is_some_and(|(k, v)| labels.get(k).map(String::as_str) == Some(v))
    });
    assert!(selected, "{labels:?} are selected by {SELECTOR}");
    let files: Vec<&String> = secret.data.as_ref().expect("data").keys().collect();
    assert_eq!(files, ["ca.crt", "tls.crt", "tls.key"], "no CA key in it");
    assert_eq!(ControlTls::from_secret(&secret), Some(tls));
}

#[test]
fn it_is_renewed_within_the_margin_of_expiry() {
    let ca = webhook_ca();
    let tls = ControlTls::issue(&ca, NS).expect("issued");
    let issued = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let before = issued + SERVER_VALIDITY - RENEW_BEFORE - hour;
    let after = issued + SERVER_VALIDITY - RENEW_BEFORE + hour;
    assert_eq!(
        decide(Some(Some(&tls)), &ca.ca_cert, NS, before),
        Decision::Keep
    );
    assert_eq!(
        decide(Some(Some(&tls)), &ca.ca_cert, NS, after),
        Decision::Renew
    );
}

#[test]
fn another_ca_another_namespace_or_a_damaged_secret_is_renewed() {
    let ca = webhook_ca();
    let now = SystemTime::now();
    let tls = ControlTls::issue(&ca, NS).expect("issued");
    let new_ca = webhook_ca();
    assert_eq!(
        decide(Some(Some(&tls)), &new_ca.ca_cert, NS, now),
        Decision::Renew,
        "the webhook's CA changed"
    );
    assert_eq!(
        decide(Some(Some(&tls)), &ca.ca_cert, "games", now),
        Decision::Renew,
        "a certificate for another namespace"
    );
    let other = ControlTls::issue(&ca, NS).expect("issued");
    let mismatched = ControlTls {
        key: other.key,
        ..tls.clone()
    };
    assert_eq!(
        decide(Some(Some(&mismatched)), &ca.ca_cert, NS, now),
        Decision::Renew
    );
    let foreign = ControlTls {
        ca_cert: ca.ca_cert.clone(),
        ..ControlTls::issue(&new_ca, NS).expect("issued")
    };
    assert_eq!(
        decide(Some(Some(&foreign)), &ca.ca_cert, NS, now),
        Decision::Renew,
        "a certificate that does not chain to the CA it names"
    );
    let garbage = ControlTls {
        cert: "garbage".into(),
        ..tls.clone()
    };
    assert_eq!(
        decide(Some(Some(&garbage)), &ca.ca_cert, NS, now),
        Decision::Renew
    );
    assert_eq!(decide(Some(None), &ca.ca_cert, NS, now), Decision::Renew);
    let mut secret = tls.to_secret(NS);
    secret.data.as_mut().expect("data").remove(CONTROL_KEY_FILE);
    assert_eq!(ControlTls::from_secret(&secret), None);
}

#[test]
fn the_client_certificate_is_issued_again_near_expiry_or_on_a_new_ca() {
    let ca = webhook_ca();
    let client = ClientCert::issue(&ca).expect("issued");
    let now = SystemTime::now();
    assert!(!client.is_due(&ca.ca_cert, now));
    assert!(client.is_due(&ca.ca_cert, now + CLIENT_VALIDITY - CLIENT_RENEW_BEFORE));
    assert!(client.is_due(&webhook_ca().ca_cert, now));
    let identity = client.identity(NS);
    assert_eq!(identity.server_name, "apps.sidecar.ringway.internal");
    assert_eq!(identity.ca_pem, ca.ca_cert);
}

/// The sidecar's side: its server certificate, requiring a client
/// certificate that chains to the Secret's `ca.crt`.
fn sidecar_config(tls: &ControlTls) -> ServerConfig {
    let provider = Arc::new(ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(tls.ca_cert.as_bytes()).expect("ca"))
        .expect("a root");
    let verifier: Arc<dyn ClientCertVerifier> =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .expect("verifier");
    let chain = CertificateDer::pem_slice_iter(tls.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("chain");
    let key = PrivateKeyDer::from_pem_slice(tls.key.as_bytes()).expect("key");
    ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .expect("server config")
}

/// The operator's side: `identity`, as `ControlClient` dials with it.
fn operator_config(identity: &TlsIdentity) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(identity.ca_pem.as_bytes()).expect("ca"))
        .expect("a root");
    let chain = CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("chain");
    let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).expect("key");
    ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client config")
}

/// A handshake and one byte each way between the two; the error of
/// either side otherwise.
async fn handshake(server: ServerConfig, client: ClientConfig, name: &str) -> Result<(), String> {
    let (near, far) = tokio::io::duplex(16 * 1024);
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let sidecar = tokio::spawn(async move {
        let mut stream = acceptor.accept(far).await.map_err(|e| e.to_string())?;
        let mut byte = [0; 1];
        stream
            .read_exact(&mut byte)
            .await
            .map_err(|e| e.to_string())?;
        stream.write_all(&byte).await.map_err(|e| e.to_string())?;
        stream.flush().await.map_err(|e| e.to_string())
    });
    let name = ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
    let dialled = async {
        let mut stream = TlsConnector::from(Arc::new(client))
            .connect(name, near)
            .await
            .map_err(|e| e.to_string())?;
        stream.write_all(b"x").await.map_err(|e| e.to_string())?;
        let mut byte = [0; 1];
        stream
            .read_exact(&mut byte)
            .await
            .map_err(|e| e.to_string())
    };
    let operator = dialled.await;
    let sidecar = sidecar.await.map_err(|e| e.to_string())?;
    operator.and(sidecar.map(drop)).map(drop)
}

#[tokio::test]
async fn the_operators_client_certificate_is_accepted_by_a_namespaces_sidecar() {
    let ca = webhook_ca();
    let secret = ControlTls::issue(&ca, NS).expect("the namespace's Secret");
    let identity = ClientCert::issue(&ca).expect("the client").identity(NS);
    let name = identity.server_name.clone();
    handshake(sidecar_config(&secret), operator_config(&identity), &name)
        .await
        .expect("mutual TLS");
}

#[tokio::test]
async fn another_namespaces_name_or_another_ca_is_refused() {
    let ca = webhook_ca();
    let secret = ControlTls::issue(&ca, NS).expect("the namespace's Secret");
    let client = ClientCert::issue(&ca).expect("the client");
    let games = client.identity("games");
    let refused = handshake(
        sidecar_config(&secret),
        operator_config(&games),
        &games.server_name,
    );
    assert!(
        refused.await.is_err(),
        "a key from apps cannot answer for games"
    );
    let stranger = ClientCert::issue(&webhook_ca())
        .expect("another CA's")
        .identity(NS);
    let refused = handshake(
        sidecar_config(&secret),
        operator_config(&stranger),
        &stranger.server_name,
    );
    assert!(refused.await.is_err(), "a client from another CA");
}
