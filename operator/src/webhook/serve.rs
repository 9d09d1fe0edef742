//! The webhook's HTTPS endpoint: `POST /mutate-pods` over TLS 1.2 or 1.3
//! (rustls with ring), served by [`ringway_http::serve_with`] with its
//! limits, answered by the admission [`Handler`]. The serving certificate
//! is swapped in place ([`ServingCert`]) when the Secret changes, without
//! a restart or a dropped connection.

use std::{fmt, future::Future, sync::Arc, time::Duration};

use arc_swap::ArcSwapOption;
use axum::{
    Router,
    body::{Body, to_bytes},
    http::{HeaderMap, StatusCode, header},
    routing::post,
};
use rustls::{
    ServerConfig,
    crypto::ring,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::{Error, Handler};
use crate::metrics::{Metrics, WebhookResult};

/// The path the MutatingWebhookConfiguration calls.
pub const PATH: &str = "/mutate-pods";
/// The largest AdmissionReview accepted, in bytes (the API server's own
/// limit on a request is 3 MiB; a pod's review is far smaller).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// How long the API server may take to send the review once its head
/// arrived: it gives up on the webhook after its own timeout (5 s).
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait to be accepted.
pub const MAX_CONNECTIONS: usize = 256;

/// The serving certificate, replaced in place; handshakes before the
/// first one is stored fail.
#[derive(Default)]
pub struct ServingCert(ArcSwapOption<CertifiedKey>);

impl fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServingCert")
            .field("loaded", &self.0.load().is_some())
            .finish()
    }
}

impl ServingCert {
    /// Serves the PEM certificate chain `cert` with the PEM PKCS#8 `key`
    /// from the next handshake on.
    pub fn store(&self, cert: &str, key: &str) -> Result<(), Error> {
        let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Certificate(format!("the serving certificate: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
            .map_err(|e| Error::Certificate(format!("the serving key: {e}")))?;
        let key = ring::default_provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| Error::Certificate(format!("the serving key: {e}")))?;
        self.0.store(Some(Arc::new(CertifiedKey::new(chain, key))));
        Ok(())
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.load_full()
    }
}

/// The TLS configuration: TLS 1.2 and 1.3 with ring, HTTP/1.1, no client
/// certificates (the API server presents none unless configured to), the
/// certificate `cert` holds.
pub fn tls_config(cert: Arc<ServingCert>) -> Result<ServerConfig, Error> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Certificate(format!("TLS versions: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Serves the webhook on `listener` over TLS with `cert` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    cert: Arc<ServingCert>,
    handler: Handler,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let acceptor = TlsAcceptor::from(Arc::new(tls_config(cert)?));
    let counted = Arc::clone(&metrics);
    let handshake = move |tcp| {
        let accepting = acceptor.accept(tcp);
        let metrics = Arc::clone(&counted);
        async move {
            let stream = accepting.await;
            if stream.is_err() {
                metrics.webhook_request(WebhookResult::TlsFailed);
            }
            stream
        }
    };
    ringway_http::serve_with(
        listener,
        routes(handler, metrics),
        MAX_CONNECTIONS,
        shutdown,
        handshake,
    )
    .await;
    Ok(())
}

/// `POST /mutate-pods`.
pub fn routes(handler: Handler, metrics: Arc<Metrics>) -> Router {
    Router::new().route(
        PATH,
        post(move |headers: HeaderMap, body: Body| async move {
            let (result, status, answer) = review(&handler, &headers, body).await;
            metrics.webhook_request(result);
            (
                status,
                [(header::CONTENT_TYPE, content_type(status))],
                answer,
            )
        }),
    )
}

/// Reads one AdmissionReview and answers it.
async fn review(
    handler: &Handler,
    headers: &HeaderMap,
    body: Body,
) -> (WebhookResult, StatusCode, Vec<u8>) {
    let refuse = |status: StatusCode, why: &str| {
        (
            WebhookResult::Refused,
            status,
            format!("{why}\n").into_bytes(),
        )
    };
    if !is_json(headers) {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected application/json",
        );
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        return refuse(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    }
    let bytes = match tokio::time::timeout(BODY_READ_TIMEOUT, to_bytes(body, MAX_BODY_BYTES)).await
    {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => return refuse(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"),
        Err(_) => return refuse(StatusCode::REQUEST_TIMEOUT, "request body too slow"),
    };
    (
        WebhookResult::Answered,
        StatusCode::OK,
        handler(bytes).await,
    )
}

/// Whether the request says its body is JSON.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

fn content_type(status: StatusCode) -> &'static str {
    if status == StatusCode::OK {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    }
}
