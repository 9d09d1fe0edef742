//! The client listener with TLS: a wss:// client gets through, speaking
//! TLS 1.3, and plaintext clients do not.

mod support;

use std::sync::Arc;

use futures_util::SinkExt;
use rustls::pki_types::{CertificateDer, ServerName};
use support::{Gateway, echo_backend};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn wss_clients_are_served_over_tls_1_3() {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let dir = std::env::temp_dir().join(format!("ringway-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).expect("write cert");
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).expect("write key");

    let backend = echo_backend("b1").await;
    let yaml = format!(
        "listener: {{address: 127.0.0.1:0, tls: {{certFile: {}, keyFile: {}}}}}\nroutes: [{{name: echo, key: {{source: Query, name: room}}, backends: {{BACKENDS}}}}]\n",
        cert_file.display(),
        key_file.display()
    );
    let gw = Gateway::start(&yaml, &[backend]).await;

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(cert.cert.der().to_vec()))
        .expect("root");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(gw.addr).await.expect("connect");
    let tls = connector
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("TLS handshake");
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    let (mut ws, resp) = tokio_tungstenite::client_async("wss://localhost/?room=1", tls)
        .await
        .expect("upgrade");
    assert_eq!(
        resp.headers()
            .get("x-ringway-backend")
            .map(|v| v.to_str().expect("ascii")),
        Some("b1")
    );
    ws.send(Message::text("over tls")).await.expect("send");
    let echoed = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            match futures_util::StreamExt::next(&mut ws).await {
                Some(Ok(Message::Text(t))) => return t.to_string(),
                Some(Ok(_)) => continue,
                other => panic!("{other:?}"),
            }
        }
    })
    .await
    .expect("echo");
    assert_eq!(echoed, "over tls");

    // A plaintext upgrade on the TLS port is not a WebSocket.
    let plain = support::raw(gw.addr, &support::upgrade_request("/?room=1", "")).await;
    assert!(!plain.contains("101"), "{plain}");
    assert!(
        gw.shared
            .metrics
            .render()
            .contains("ringway_handshakes_total{outcome=\"tls_error\"} 1")
    );
}
