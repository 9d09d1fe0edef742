//! The client of the control channel: pushes snapshots to data-plane pods,
//! reads their status and drains them, over mutual TLS, with deadlines and
//! retries.

use std::collections::HashMap;
use std::error::Error as _;
use std::fmt;
use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use futures_util::future::join_all;
use rustls::AlertDescription;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Response, Status};

use crate::proto::control_client::ControlClient as GrpcClient;
use crate::proto::{
    ApplySnapshotRequest, ApplySnapshotResponse, DrainRequest, DrainResponse, GetStatusRequest,
    PodStatus, Snapshot,
};

/// What the client presents to pods and what it trusts.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsIdentity {
    /// The gateway's CA certificate, PEM: the only root the client trusts.
    pub ca_pem: String,
    /// The client's certificate, PEM (issued for
    /// [`Usage::Client`](crate::pki::Usage::Client)).
    pub cert_pem: String,
    /// The client certificate's private key, PEM.
    pub key_pem: String,
    /// The name the pods' certificates must carry, normally
    /// [`pki::SERVER_NAME`](crate::pki::SERVER_NAME).
    pub server_name: String,
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// Timeouts and retries of a [`ControlClient`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Limit of the TCP connect and, separately, of the TLS handshake.
    pub connect_timeout: Duration,
    /// Deadline of each attempt of an RPC, sent to the pod as the gRPC
    /// deadline; an attempt that runs out fails with `DEADLINE_EXCEEDED`.
    pub rpc_timeout: Duration,
    /// Attempts per RPC, the first included (at least 1).
    pub attempts: u32,
    /// Backoff before the second attempt; doubles with every attempt.
    pub backoff_base: Duration,
    /// Cap of the backoff.
    pub backoff_max: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            connect_timeout: Duration::from_secs(2),
            rpc_timeout: Duration::from_secs(5),
            attempts: 4,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
        }
    }
}

/// A [`ControlClient`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The certificates, key or server name cannot make a TLS configuration.
    #[error("invalid TLS identity: {0}")]
    Tls(String),
    /// The options cannot work.
    #[error("invalid options: {0}")]
    Options(String),
}

/// An RPC to one pod failed: the last attempt's status, and how many
/// attempts were made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    /// `host:port` of the pod.
    pub address: String,
    /// The gRPC code of the last attempt.
    pub code: Code,
    /// The message of the last attempt.
    pub message: String,
    /// Attempts made, the first included.
    pub attempts: u32,
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: failed after {} attempt{}: {}: {}",
            self.address,
            self.attempts,
            if self.attempts == 1 { "" } else { "s" },
            code_name(self.code),
            self.message
        )
    }
}

impl std::error::Error for RpcError {}

impl RpcError {
    /// The pod runs a newer epoch than the snapshot and refused it
    /// (`FAILED_PRECONDITION`). Never retried: build a newer snapshot.
    pub fn is_stale_epoch(&self) -> bool {
        self.code == Code::FailedPrecondition
    }
}

/// The outcome of [`ControlClient::push`] for one pod.
#[derive(Debug, Clone, PartialEq)]
pub struct PodResult {
    /// `host:port` of the pod.
    pub address: String,
    /// The pod's answer, or why there is none.
    pub outcome: Result<ApplySnapshotResponse, RpcError>,
}

/// Whether every pod of a [`ControlClient::push`] acknowledged `epoch` (or
/// runs a newer one). True for no pods at all.
pub fn all_acked(results: &[PodResult], epoch: u64) -> bool {
    results
        .iter()
        .all(|r| matches!(&r.outcome, Ok(response) if response.epoch >= epoch))
}

/// The cached channels, by `host:port`. Each carries an id, so that a call
/// that saw its channel fail removes that channel and not a fresh one
/// another call already put in its place.
#[derive(Default)]
struct Channels {
    next_id: u64,
    by_address: HashMap<String, (u64, Channel)>,
}

/// The client side of the control channel, shared by all pods of a gateway
/// (one CA, one client identity).
///
/// Channels (HTTP/2 connections) are cached per address and connect lazily,
/// so repeated pushes reuse connections; a channel whose connection failed is
/// dropped and the next attempt reconnects. Every RPC carries
/// [`Options::rpc_timeout`] as its deadline and is retried on transient
/// failures (`UNAVAILABLE`, `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED`,
/// transport errors) with full-jitter exponential backoff; never on
/// `FAILED_PRECONDITION` (stale epoch), `INVALID_ARGUMENT`,
/// `PERMISSION_DENIED` or `UNAUTHENTICATED`.
pub struct ControlClient {
    tls: ClientTlsConfig,
    options: Options,
    channels: Mutex<Channels>,
}

impl fmt::Debug for ControlClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlClient")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl ControlClient {
    /// A client presenting `identity`'s certificate and trusting only its CA.
    /// Checks the PEM and the options; connects nothing yet.
    pub fn new(identity: &TlsIdentity, options: Options) -> Result<Self, ClientError> {
        if options.attempts == 0 {
            return Err(ClientError::Options("attempts must be at least 1".into()));
        }
        if options.rpc_timeout.is_zero() || options.connect_timeout.is_zero() {
            return Err(ClientError::Options(
                "rpc_timeout and connect_timeout must not be zero".into(),
            ));
        }
        if identity.server_name.is_empty() {
            return Err(ClientError::Tls("the server name is empty".into()));
        }
        let cas = CertificateDer::pem_slice_iter(identity.ca_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ClientError::Tls(format!("the CA PEM does not parse: {e}")))?;
        if cas.is_empty() {
            return Err(ClientError::Tls("the CA PEM holds no certificate".into()));
        }
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&identity.ca_pem))
            .identity(Identity::from_pem(&identity.cert_pem, &identity.key_pem))
            .domain_name(identity.server_name.clone())
            .timeout(options.connect_timeout);
        // Building a connector parses the identity and the server name.
        Endpoint::from_static("https://ringway-control")
            .tls_config(tls.clone())
            .map_err(|e| ClientError::Tls(chain("", &e)))?;
        Ok(ControlClient {
            tls,
            options,
            channels: Mutex::default(),
        })
    }

    /// The options the client was built with.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Applies `snapshot` to the pod at `address` (`host:port`).
    pub async fn apply(
        &self,
        address: &str,
        snapshot: &Snapshot,
    ) -> Result<ApplySnapshotResponse, RpcError> {
        self.call(address, |mut client, timeout| {
            let request = ApplySnapshotRequest {
                snapshot: Some(snapshot.clone()),
            };
            async move { client.apply_snapshot(deadline(request, timeout)).await }
        })
        .await
    }

    /// The status of the pod at `address`.
    pub async fn status(&self, address: &str) -> Result<PodStatus, RpcError> {
        self.call(address, |mut client, timeout| async move {
            client
                .get_status(deadline(GetStatusRequest {}, timeout))
                .await
        })
        .await
    }

    /// Drains the pod at `address`; returns once the drain is scheduled.
    pub async fn drain(
        &self,
        address: &str,
        request: DrainRequest,
    ) -> Result<DrainResponse, RpcError> {
        self.call(address, |mut client, timeout| async move {
            client.drain(deadline(request, timeout)).await
        })
        .await
    }

    /// Applies `snapshot` to every pod concurrently. One result per address,
    /// in the order of `addresses`; see [`all_acked`].
    pub async fn push(&self, addresses: &[String], snapshot: &Snapshot) -> Vec<PodResult> {
        join_all(addresses.iter().map(|address| async move {
            PodResult {
                address: address.clone(),
                outcome: self.apply(address, snapshot).await,
            }
        }))
        .await
    }

    /// Runs one RPC with deadlines and retries.
    async fn call<T, F, Fut>(&self, address: &str, mut rpc: F) -> Result<T, RpcError>
    where
        F: FnMut(GrpcClient<Channel>, Duration) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let timeout = self.options.rpc_timeout;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (id, channel) = self.channel(address).map_err(|message| RpcError {
                address: address.to_owned(),
                code: Code::InvalidArgument,
                message,
                attempts: attempt,
            })?;
            let failure =
                match tokio::time::timeout(timeout, rpc(GrpcClient::new(channel), timeout)).await {
                    Ok(Ok(response)) => return Ok(response.into_inner()),
                    Ok(Err(status)) => Failure::from_status(&status),
                    Err(_) => Failure {
                        code: Code::DeadlineExceeded,
                        message: format!("no answer within {timeout:?}"),
                        transport: true,
                    },
                };
            if failure.transport {
                self.forget(address, id);
            }
            let retry = failure.retryable() && attempt < self.options.attempts;
            tracing::debug!(
                address,
                attempt,
                code = code_name(failure.code),
                message = %failure.message,
                retry,
                "control RPC failed"
            );
            if !retry {
                return Err(RpcError {
                    address: address.to_owned(),
                    code: failure.code,
                    message: failure.message,
                    attempts: attempt,
                });
            }
            tokio::time::sleep(self.backoff(attempt - 1)).await;
        }
    }

    /// Full jitter: uniform in `0..min(backoff_max, backoff_base * 2^n)`.
    fn backoff(&self, n: u32) -> Duration {
        let cap = self
            .options
            .backoff_base
            .checked_mul(1u32.checked_shl(n).unwrap_or(u32::MAX))
            .unwrap_or(Duration::MAX)
            .min(self.options.backoff_max);
        cap.mul_f64(fastrand::f64())
    }

    /// The cached channel to `address`, or a new lazy one.
    fn channel(&self, address: &str) -> Result<(u64, Channel), String> {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((id, channel)) = channels.by_address.get(address) {
            return Ok((*id, channel.clone()));
        }
        let endpoint = Endpoint::from_shared(format!("https://{address}"))
            .map_err(|e| format!("invalid address {address:?}: {}", chain("", &e)))?
            .connect_timeout(self.options.connect_timeout)
            .timeout(self.options.rpc_timeout)
            .tls_config(self.tls.clone())
            .map_err(|e| format!("TLS configuration for {address:?}: {}", chain("", &e)))?;
        let channel = endpoint.connect_lazy();
        channels.next_id += 1;
        let id = channels.next_id;
        channels
            .by_address
            .insert(address.to_owned(), (id, channel.clone()));
        Ok((id, channel))
    }

    /// Drops the cached channel `id` to `address`, so the next call reconnects.
    fn forget(&self, address: &str, id: u64) {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        if channels
            .by_address
            .get(address)
            .is_some_and(|(c, _)| *c == id)
        {
            channels.by_address.remove(address);
        }
    }
}

/// A request carrying `timeout` as its gRPC deadline.
fn deadline<T>(message: T, timeout: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(timeout);
    request
}

/// One failed attempt.
struct Failure {
    code: Code,
    message: String,
    /// The failure came from the connection, not from the pod's answer.
    transport: bool,
}

impl Failure {
    fn from_status(status: &Status) -> Failure {
        // A status the pod sent has no source; one made from a connection,
        // TLS or HTTP/2 error carries that error. A channel whose buffer
        // worker died reports "Service was not ready" with no source.
        let transport =
            status.source().is_some() || status.message().starts_with("Service was not ready");
        let mut code = status.code();
        let message = match status.source() {
            Some(source) => chain(status.message(), source),
            None => status.message().to_owned(),
        };
        if code == Code::Cancelled && status.message() == "Timeout expired" {
            // tonic reports an expired deadline (its own or the pod's) as
            // CANCELLED "Timeout expired".
            code = Code::DeadlineExceeded;
        } else if transport && tls_refusal(status, &message) {
            // A certificate refused by either side: retrying cannot help.
            code = Code::Unauthenticated;
        }
        Failure {
            code,
            message,
            transport,
        }
    }

    fn retryable(&self) -> bool {
        match self.code {
            Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted => true,
            Code::Unknown | Code::Cancelled => self.transport,
            _ => false,
        }
    }
}

/// TLS alerts by which a peer refuses our certificate.
const CERTIFICATE_ALERTS: &[AlertDescription] = &[
    AlertDescription::BadCertificate,
    AlertDescription::UnsupportedCertificate,
    AlertDescription::CertificateRevoked,
    AlertDescription::CertificateExpired,
    AlertDescription::CertificateUnknown,
    AlertDescription::UnknownCA,
    AlertDescription::AccessDenied,
    AlertDescription::CertificateRequired,
];

/// Whether a transport failure is a TLS certificate refusal: we refused the
/// pod's certificate, or the pod refused ours.
fn tls_refusal(status: &Status, message: &str) -> bool {
    let refusal = |error: &rustls::Error| match error {
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => true,
        rustls::Error::AlertReceived(alert) => CERTIFICATE_ALERTS.contains(alert),
        _ => false,
    };
    let mut next = status.source();
    while let Some(error) = next {
        let tls = error.downcast_ref::<rustls::Error>().or_else(|| {
            error
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if tls.is_some_and(refusal) {
            return true;
        }
        next = error.source();
    }
    // The pod's alert after a TLS 1.3 handshake reaches us inside an HTTP/2
    // error, which hides its source: recognise rustls' own rendering.
    CERTIFICATE_ALERTS
        .iter()
        .any(|alert| message.contains(&rustls::Error::AlertReceived(*alert).to_string()))
}

/// A message followed by the distinct texts of an error and its sources,
/// `: `-separated; the bare "transport error" of tonic's wrappers is left out.
fn chain(message: &str, error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    if !message.is_empty() && message != "transport error" {
        parts.push(message.to_owned());
    }
    let mut next = Some(error);
    while let Some(error) = next {
        let text = error.to_string();
        if text != "transport error" && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = error.source();
    }
    parts.join(": ")
}

/// The lower-case name of a gRPC code, as in `unavailable`.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_address_attempts_and_code() {
        let error = RpcError {
            address: "10.0.0.7:7443".into(),
            code: Code::Unavailable,
            message: "connection refused".into(),
            attempts: 4,
        };
        assert_eq!(
            error.to_string(),
            "10.0.0.7:7443: failed after 4 attempts: unavailable: connection refused"
        );
        assert!(!error.is_stale_epoch());
        let stale = RpcError {
            code: Code::FailedPrecondition,
            attempts: 1,
            ..error
        };
        assert!(stale.is_stale_epoch());
        assert!(
            stale
                .to_string()
                .contains("after 1 attempt: failed_precondition")
        );
    }

    #[test]
    fn backoff_is_capped_full_jitter() {
        let client = ControlClient {
            tls: ClientTlsConfig::new(),
            options: Options {
                backoff_base: Duration::from_millis(100),
                backoff_max: Duration::from_millis(250),
                ..Options::default()
            },
            channels: Mutex::default(),
        };
        for _ in 0..200 {
            assert!(client.backoff(0) <= Duration::from_millis(100));
            assert!(client.backoff(1) <= Duration::from_millis(200));
            assert!(client.backoff(2) <= Duration::from_millis(250));
            assert!(client.backoff(40) <= Duration::from_millis(250));
        }
    }

    #[test]
    fn retry_classes() {
        let retryable = |code, transport| {
            Failure {
                code,
                message: String::new(),
                transport,
            }
            .retryable()
        };
        assert!(retryable(Code::Unavailable, false));
        assert!(retryable(Code::DeadlineExceeded, false));
        assert!(retryable(Code::ResourceExhausted, false));
        assert!(retryable(Code::Unknown, true));
        assert!(!retryable(Code::Unknown, false));
        for code in [
            Code::FailedPrecondition,
            Code::InvalidArgument,
            Code::PermissionDenied,
            Code::Unauthenticated,
        ] {
            assert!(!retryable(code, false));
            assert!(!retryable(code, true));
        }
        let timeout = Failure::from_status(&Status::cancelled("Timeout expired"));
        assert_eq!(timeout.code, Code::DeadlineExceeded);
    }

    #[test]
    fn all_acked_needs_every_pod_at_the_epoch() {
        let ok = |epoch| PodResult {
            address: "a:1".into(),
            outcome: Ok(ApplySnapshotResponse {
                epoch,
                changed: true,
                draining: 0,
            }),
        };
        assert!(all_acked(&[], 3));
        assert!(all_acked(&[ok(3), ok(4)], 3));
        assert!(!all_acked(&[ok(3), ok(2)], 3));
        let failed = PodResult {
            address: "b:1".into(),
            outcome: Err(RpcError {
                address: "b:1".into(),
                code: Code::Unavailable,
                message: String::new(),
                attempts: 4,
            }),
        };
        assert!(!all_acked(&[ok(3), failed], 3));
    }
}
