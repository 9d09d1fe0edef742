//! The client side of `wss://`: rustls (ring) trusting one CA file, offering
//! cipher suites in a browser's order, with or without session resumption,
//! and the stream a connection runs over, plain TCP or TLS over TCP.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::Context as _;
use rustls::client::Resumption;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use rustls::{CipherSuite, HandshakeKind, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Server names whose sessions a resuming client remembers. Every
/// connection of a run dials the same host, so one would do; rustls keeps
/// up to eight TLS 1.3 tickets per name.
const RESUMPTION_SERVER_NAMES: usize = 16;

/// A connection's transport.
#[derive(Debug)]
pub enum Stream {
    /// `ws://`.
    Plain(TcpStream),
    /// `wss://`, boxed: a rustls connection is about a kilobyte that a plain
    /// connection (the million-connection runs) need not carry.
    Tls(Box<TlsStream<TcpStream>>),
}

/// What a TLS handshake negotiated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// The session was resumed from a ticket, not a full handshake.
    pub resumed: bool,
    /// `TLSv1_3`, …
    pub version: &'static str,
    /// `TLS13_AES_256_GCM_SHA384`, …
    pub suite: &'static str,
    /// The key exchange group, `X25519`, …
    pub group: &'static str,
}

impl Negotiated {
    /// `TLSv1_3 TLS13_AES_256_GCM_SHA384 X25519`, to count connections by.
    pub fn describe(&self) -> String {
        format!("{} {} {}", self.version, self.suite, self.group)
    }
}

/// Opens TLS sessions to one server name, trusting one CA.
pub struct ClientTls {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// A client for `host` that trusts the CA certificates in `ca_file`
    /// (PEM); with `resume`, it keeps the tickets servers send and offers
    /// them on later connections, as a browser does; without, every
    /// connection is a full handshake.
    pub fn new(ca_file: &Path, host: &str, resume: bool) -> anyhow::Result<Self> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca_file)
            .with_context(|| format!("--ca-file {}", ca_file.display()))?
        {
            let cert = cert.with_context(|| format!("--ca-file {}", ca_file.display()))?;
            roots.add(cert).with_context(|| {
                format!("--ca-file {}: not a CA certificate", ca_file.display())
            })?;
        }
        anyhow::ensure!(
            !roots.is_empty(),
            "--ca-file {}: no certificate",
            ca_file.display()
        );
        let mut provider = rustls::crypto::ring::default_provider();
        // Browsers offer AES-128-GCM first (rustls, AES-256-GCM): a server
        // that follows the client's order negotiates what it would with them.
        provider
            .cipher_suites
            .sort_by_key(|suite| suite.suite() != CipherSuite::TLS13_AES_128_GCM_SHA256);
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.resumption = if resume {
            Resumption::in_memory_sessions(RESUMPTION_SERVER_NAMES)
        } else {
            Resumption::disabled()
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let server_name = ServerName::try_from(host.to_owned())
            .with_context(|| format!("{host}: not a TLS server name"))?;
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    /// The TLS handshake over `tcp`; on failure, the reason to count it by.
    pub async fn handshake(&self, tcp: TcpStream) -> Result<(Stream, Negotiated), String> {
        let tls = self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        let session = tls.get_ref().1;
        let negotiated = Negotiated {
            resumed: session.handshake_kind() == Some(HandshakeKind::Resumed),
            version: session
                .protocol_version()
                .and_then(|v| v.as_str())
                .unwrap_or("?"),
            suite: session
                .negotiated_cipher_suite()
                .and_then(|s| s.suite().as_str())
                .unwrap_or("?"),
            group: session
                .negotiated_key_exchange_group()
                .and_then(|g| g.name().as_str())
                .unwrap_or("?"),
        };
        Ok((Stream::Tls(Box::new(tls)), negotiated))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
