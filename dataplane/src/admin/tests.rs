use std::net::SocketAddr;

use axum::body::to_bytes;

use super::*;
use crate::{running::RunningState, shared::SidecarState};

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

fn token() -> DrainToken {
    DrainToken::new(TOKEN).expect("a valid token")
}

#[test]
fn only_a_loopback_peer_may_drain() {
    for peer in ["127.0.0.1", "127.45.6.7", "::1", "::ffff:127.0.0.1"] {
        assert!(
            may_drain(peer.parse().expect("an address"), None, None),
            "{peer}"
        );
    }
    for peer in [
        "10.244.1.7",
        "192.0.2.2",
        "0.0.0.0",
        "::",
        "fd00::2",
        "fe80::1",
        "::ffff:10.244.1.7",
        // IPv4-compatible (deprecated), not mapped: not loopback.
        "::127.0.0.1",
    ] {
        assert!(
            !may_drain(peer.parse().expect("an address"), None, None),
            "{peer}"
        );
    }
}

#[test]
fn with_a_token_any_peer_that_offers_it_may_drain() {
    let node: IpAddr = "10.244.1.1".parse().expect("an address");
    let token = token();
    assert!(may_drain(node, Some(&token), Some(TOKEN.as_bytes())));
    for wrong in [
        &b""[..],
        b"0123456789abcdef0123456789abcdeF",
        b"0123456789abcdef0123456789abcde",
        b"0123456789abcdef0123456789abcdef0",
    ] {
        assert!(!may_drain(node, Some(&token), Some(wrong)), "{wrong:?}");
    }
    assert!(!may_drain(node, Some(&token), None), "no header");
    assert!(
        !may_drain(node, None, Some(TOKEN.as_bytes())),
        "a process without a token takes none"
    );
    let loopback: IpAddr = "127.0.0.1".parse().expect("an address");
    assert!(may_drain(loopback, Some(&token), None), "loopback as ever");
}

/// A sidecar's state, as `Server::bind_sidecar` makes it, accepting.
fn sidecar(token: Option<DrainToken>) -> Arc<Shared> {
    let args = crate::sidecar::tests::parse(&["--app-port", "8080"]).expect("valid flags");
    let config = args.config().expect("a valid config");
    let running = RunningState::standalone(&config).expect("a valid state");
    let shared = Shared::new(config, None, Some(SidecarState::new(token)), running, None);
    shared.set_accepting();
    Arc::new(shared)
}

/// `/drain` from `peer` with `headers`; the status and the body.
async fn ask(
    shared: &Arc<Shared>,
    peer: &str,
    method: Method,
    headers: &[(&'static str, &str)],
) -> (StatusCode, String) {
    let peer: SocketAddr = peer.parse().expect("an address");
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.insert(*name, value.parse().expect("a header value"));
    }
    let response = drain(
        State(Arc::clone(shared)),
        Extension(Peer(peer)),
        method,
        Uri::from_static(sidecar::DRAIN_PATH),
        map,
    )
    .await;
    let status = response.status();
    let body = to_bytes(response.into_body(), 1 << 16)
        .await
        .expect("a body");
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn the_prestop_hook_drains_a_sidecar_with_its_token_and_no_one_else() {
    let shared = sidecar(Some(token()));
    let node = "10.244.1.1:51234";
    for headers in [
        vec![],
        vec![(sidecar::DRAIN_TOKEN_HEADER, "not-the-token-at-all")],
    ] {
        let (status, body) = ask(&shared, node, Method::GET, &headers).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert!(body.contains("drain token"), "{body}");
    }
    assert_eq!(shared.metrics.drain_refusals.get(), 2);
    assert!(shared.is_ready(), "a refused drain must not drain");
    let with_token = [(sidecar::DRAIN_TOKEN_HEADER, TOKEN)];
    let (status, body) = ask(&shared, node, Method::PUT, &with_token).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    let (status, body) = ask(&shared, node, Method::GET, &with_token).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "drained\n"));
    assert!(!shared.is_ready(), "a drained sidecar takes no new client");
    // Asked again (a retried hook, a POST by hand): the same answer.
    let (status, body) = ask(&shared, "127.0.0.1:4000", Method::POST, &[]).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "drained\n"));
}

#[tokio::test]
async fn without_a_token_only_loopback_drains_a_sidecar() {
    let shared = sidecar(None);
    let (status, _) = ask(
        &shared,
        "10.244.1.1:51234",
        Method::GET,
        &[(sidecar::DRAIN_TOKEN_HEADER, TOKEN)],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = ask(&shared, "[::1]:4000", Method::GET, &[]).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "drained\n"));
}
