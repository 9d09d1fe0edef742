//! Fuzzes the client's upgrade request: `parse_request` on any bytes, the
//! request rewritten for the backend (which must parse again, in 64 header
//! slots, to the same target, key and route keys), the refusals' HTTP
//! responses, reading a route key out of the request with every kind of
//! `KeySource`, and the same bytes as a hand-off preamble on a peer port.

#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use ringway_dataplane::handoff::{PeerToken, parse_preamble};
use ringway_dataplane::handshake::{MAX_HEADERS, Refusal, UpgradeRequest, parse_request};
use ringway_dataplane::routing::{KeySource, RequestView};

fuzz_target!(|data: &[u8]| {
    // A peer port reads the same bytes as a hand-off preamble first.
    let token = PeerToken::new("fuzz-peer-token-0123").expect("a valid token");
    match parse_preamble(data, &token) {
        Ok(Some((_, used))) => assert!(used <= data.len() && data[..used].ends_with(b"\r\n")),
        Ok(None) => assert!(data.len() < ringway_dataplane::handoff::MAX_PREAMBLE),
        Err(refusal) => {
            // A wrong token is 403; anything else not a preamble is 400.
            assert!(matches!(refusal.status, 400 | 403), "status {}", refusal.status);
            check_response(&refusal);
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match parse_request(data, &mut headers) {
        Ok(None) => {}
        Ok(Some(req)) => check_request(data, &req),
        Err(refusal) => check_refusal(&refusal),
    }
});

fn check_request(data: &[u8], req: &UpgradeRequest<'_, '_>) {
    assert!(
        0 < req.head_len && req.head_len <= data.len(),
        "head_len {}",
        req.head_len
    );
    assert_eq!(req.ws_key.len(), 24, "key {:?}", req.ws_key);
    assert!(req.target.starts_with('/'), "target {:?}", req.target);
    assert!(within(req.target.as_bytes(), data) && within(req.ws_key.as_bytes(), data));

    // The bytes after the head are frames: the head alone parses the same.
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let head = parse_request(&data[..req.head_len], &mut headers)
        .expect("the head alone is refused")
        .expect("the head alone is incomplete");
    assert_eq!((head.target, head.ws_key), (req.target, req.ws_key));
    assert_eq!(head.head_len, req.head_len);

    let keys = key_sources(req);
    for source in &keys {
        if let Some(key) = source.extract(&req.view()) {
            assert!(!key.is_empty(), "{source:?} gave an empty key");
            assert!(within(key, data), "{source:?} key is not from the request");
        }
    }

    let peers: [SocketAddr; 2] = [
        SocketAddr::from(([192, 0, 2, 7], 5555)),
        SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1], 1)),
    ];
    for (peer, tls, shard) in [(peers[0], false, None), (peers[1], true, Some("shard-0"))] {
        let out = req.backend_request(peer, tls, shard);
        assert!(
            out.starts_with(b"GET "),
            "{}",
            String::from_utf8_lossy(&out)
        );
        assert!(
            out.ends_with(b"\r\n\r\n"),
            "{}",
            String::from_utf8_lossy(&out)
        );
        // The backend parses it with the same 64 header slots (the gateway
        // refuses clients that would not leave room for its 4 headers).
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        let head_len = match parsed.parse(&out) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!(
                "the backend request does not parse again: {other:?}\n{}",
                String::from_utf8_lossy(&out)
            ),
        };
        let again = RequestView {
            target: parsed.path.expect("a path"),
            headers: parsed.headers,
        };
        let key = again
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-key"))
            .map(|h| h.value.trim_ascii());
        assert_eq!(again.target, req.target);
        assert_eq!(key, Some(req.ws_key.as_bytes()));
        assert_eq!(head_len, out.len());
        let proto: &[u8] = if tls { b"https" } else { b"http" };
        let protos: Vec<&[u8]> = again
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-proto"))
            .map(|h| h.value)
            .collect();
        assert_eq!(protos, [proto], "X-Forwarded-Proto is not ours alone");
        // A second hop routes the connection with the same key.
        for source in keys.iter().filter(|s| survives_a_hop(s)) {
            assert_eq!(
                source.extract(&again),
                source.extract(&req.view()),
                "{source:?} changed on the way to the backend"
            );
        }
    }
}

/// One source of each kind, with names that are in the request when it has
/// any, and names that never are.
fn key_sources(req: &UpgradeRequest<'_, '_>) -> Vec<KeySource> {
    let mut sources = vec![
        KeySource::Header("sec-websocket-key".into()),
        KeySource::Header("X-Device-Id".into()),
        KeySource::Header("x-forwarded-for".into()),
        KeySource::Header(String::new()),
        KeySource::Query("room".into()),
        KeySource::Query(String::new()),
        KeySource::Cookie("session".into()),
        KeySource::Cookie(String::new()),
        KeySource::PathSegment(0),
        KeySource::PathSegment(1),
        KeySource::PathSegment(7),
        KeySource::PathSegment(usize::MAX),
    ];
    if let Some(h) = req.headers.last() {
        sources.push(KeySource::Header(h.name.to_owned()));
    }
    if let Some((_, query)) = req.target.split_once('?') {
        let name = query.split(['&', '=', '#']).next().unwrap_or("");
        sources.push(KeySource::Query(name.to_owned()));
    }
    let cookie = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("cookie"))
        .and_then(|h| h.value.split(|&b| b == b'=').next())
        .and_then(|name| std::str::from_utf8(name).ok());
    if let Some(name) = cookie {
        sources.push(KeySource::Cookie(name.trim().to_owned()));
    }
    sources
}

/// Sources the backend request carries unchanged: all but the forwarding
/// headers the gateway rewrites.
fn survives_a_hop(source: &KeySource) -> bool {
    match source {
        KeySource::Header(name) => ![
            "x-forwarded-for",
            "forwarded",
            "x-forwarded-proto",
            "x-ringway-shard",
        ]
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h)),
        _ => true,
    }
}

fn check_refusal(refusal: &Refusal) {
    assert!(
        matches!(refusal.status, 400 | 426 | 431),
        "status {}",
        refusal.status
    );
    check_response(refusal);
}

/// The refusal's HTTP response is well formed, whatever the input.
fn check_response(refusal: &Refusal) {
    assert!(!refusal.outcome.is_empty());
    let response = refusal.response();
    let status_line = format!("HTTP/1.1 {} ", refusal.status);
    assert!(response.starts_with(status_line.as_bytes()));
    // What the client sent must not break the response's framing.
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut parsed = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(head_len)) = parsed.parse(&response) else {
        panic!(
            "refusal is not one HTTP response: {}",
            String::from_utf8_lossy(&response)
        );
    };
    assert_eq!(parsed.code, Some(refusal.status));
    let content_length = parsed
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
        .expect("Content-Length");
    assert_eq!(content_length, response.len() - head_len, "body length");
}

/// `part` is a slice of `whole`.
fn within(part: &[u8], whole: &[u8]) -> bool {
    let range = whole.as_ptr_range();
    range.start <= part.as_ptr() && part.as_ptr_range().end <= range.end
}
