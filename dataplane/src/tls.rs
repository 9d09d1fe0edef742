//! The client listener's TLS: rustls with the ring provider, TLS 1.3
//! preferred (1.2 still offered for older clients), certificate and key
//! from PEM files, and session resumption for every client that comes back.
//!
//! Resumption is what a reconnecting client saves: a resumed TLS 1.3
//! handshake skips the certificate signature, the dearest step of a full
//! one. The tickets are stateless (encrypted with a key this process makes
//! and rotates), so any number of clients resume without a server-side
//! cache; the cache serves only TLS 1.2 clients that resume by session id.
//! The keys are this process's own: a client that a drain sends to another
//! pod does a full handshake there.

use std::sync::Arc;

use rustls::server::ServerSessionMemoryCache;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio_rustls::TlsAcceptor;

use crate::{TlsError, config::TlsConfig};

/// TLS 1.2 sessions remembered by id, the oldest forgotten first: HAProxy's
/// default (`tune.ssl.cachesize`), a few megabytes when full. rustls' own
/// default of 256 would serve a few hundred clients.
const SESSION_CACHE_ENTRIES: usize = 20_000;

/// Builds the acceptor for the client listener.
pub fn acceptor(config: &TlsConfig) -> Result<TlsAcceptor, TlsError> {
    let certs = CertificateDer::pem_file_iter(&config.cert_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| pem(&config.cert_file, source))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: config.cert_file.clone(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&config.key_file)
        .map_err(|source| pem(&config.key_file, source))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Versions)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(TlsError::CertificateAndKey)?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    // ChaCha20-Poly1305 tickets under a key rotated every 6 hours, each
    // valid 12 hours.
    server.ticketer = rustls::crypto::ring::Ticketer::new().map_err(TlsError::Tickets)?;
    server.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
    Ok(TlsAcceptor::from(Arc::new(server)))
}

fn pem(path: &std::path::Path, source: rustls_pki_types::pem::Error) -> TlsError {
    TlsError::Pem {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::Resumption;
    use rustls::{HandshakeKind, ProtocolVersion};
    use rustls_pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A certificate for `localhost` in a fresh directory, as the listener's
    /// config names them.
    fn certificate(name: &str) -> (TlsConfig, CertificateDer<'static>) {
        let cert =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
        let dir = std::env::temp_dir().join(format!("ringway-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let config = TlsConfig {
            cert_file: dir.join("cert.pem"),
            key_file: dir.join("key.pem"),
        };
        std::fs::write(&config.cert_file, cert.cert.pem()).expect("write cert");
        std::fs::write(&config.key_file, cert.signing_key.serialize_pem()).expect("write key");
        (config, cert.cert.der().clone())
    }

    /// A client trusting `root`, speaking `versions`, that remembers its
    /// sessions.
    fn client(
        root: &CertificateDer<'static>,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(root.clone()).expect("root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.resumption = Resumption::in_memory_sessions(4);
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    /// One connection over an in-memory pipe: the handshake, a byte each way
    /// (so that the client reads the tickets sent after the handshake), and
    /// what kind of handshake it was and in which version.
    async fn connect(
        acceptor: &TlsAcceptor,
        client: &tokio_rustls::TlsConnector,
    ) -> (HandshakeKind, ProtocolVersion) {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server = async {
            let mut tls = acceptor.accept(server_io).await.expect("server handshake");
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await.expect("server read");
            tls.write_all(&byte).await.expect("server write");
            tls.flush().await.expect("server flush");
        };
        let client = async {
            let name = ServerName::try_from("localhost").expect("name");
            let mut tls = client
                .connect(name, client_io)
                .await
                .expect("client handshake");
            tls.write_all(b"x").await.expect("client write");
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await.expect("client read");
            let session = tls.get_ref().1;
            (
                session.handshake_kind().expect("handshake done"),
                session.protocol_version().expect("version"),
            )
        };
        tokio::join!(server, client).1
    }

    #[tokio::test]
    async fn a_returning_client_resumes_its_session_in_tls_1_3_and_1_2() {
        let (config, root) = certificate("resume");
        let acceptor = acceptor(&config).expect("acceptor");
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let client = client(&root, &[version]);
            let (first, negotiated) = connect(&acceptor, &client).await;
            assert_eq!(negotiated, version.version);
            assert_eq!(first, HandshakeKind::Full, "{negotiated:?}");
            let (second, _) = connect(&acceptor, &client).await;
            assert_eq!(second, HandshakeKind::Resumed, "{negotiated:?}");
        }
    }

    #[tokio::test]
    async fn hundreds_of_returning_clients_all_resume() {
        let (config, root) = certificate("many");
        let acceptor = acceptor(&config).expect("acceptor");
        // rustls' default, a cache of 256 sessions filled by two tickets per
        // connection, resumes only the last 128 or so of these: each
        // connects once, then all of them come back.
        let clients: Vec<_> = (0..300)
            .map(|_| client(&root, &[&rustls::version::TLS13]))
            .collect();
        for client in &clients {
            connect(&acceptor, client).await;
        }
        for client in &clients {
            assert_eq!(connect(&acceptor, client).await.0, HandshakeKind::Resumed);
        }
    }
}
