//! The client listener's TLS: rustls with the ring provider, TLS 1.3
//! preferred (1.2 still offered for older clients), certificate and key
//! from PEM files.

use std::sync::Arc;

use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio_rustls::TlsAcceptor;

use crate::{TlsError, config::TlsConfig};

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
    Ok(TlsAcceptor::from(Arc::new(server)))
}

fn pem(path: &std::path::Path, source: rustls_pki_types::pem::Error) -> TlsError {
    TlsError::Pem {
        path: path.to_owned(),
        source,
    }
}
