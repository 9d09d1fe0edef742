//! The client's upgrade request: parsed with `httparse`, checked against
//! RFC 6455 §4.2.1, and rewritten for the backend with forwarding headers.

use std::net::SocketAddr;

use crate::routing::RequestView;

/// Why the gateway refuses an upgrade request: the HTTP answer and the
/// metrics label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status to answer with.
    pub status: u16,
    /// Label for `ringway_handshakes_total{outcome}`.
    pub outcome: &'static str,
    /// What the response body says.
    pub message: String,
}

impl Refusal {
    pub(crate) fn new(status: u16, outcome: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            outcome,
            message: message.into(),
        }
    }

    /// The complete HTTP response.
    pub fn response(&self) -> Vec<u8> {
        let extra: &[(&str, &str)] = match self.status {
            426 => &[("Sec-WebSocket-Version", "13"), ("Upgrade", "websocket")],
            503 => &[("Retry-After", "1")],
            _ => &[],
        };
        super::error_response(self.status, &self.message, extra)
    }
}

/// A complete, valid upgrade request, borrowing the bytes it was read from.
#[derive(Debug)]
pub struct UpgradeRequest<'h, 'b> {
    /// Path and query.
    pub target: &'b str,
    /// Every header as received.
    pub headers: &'h [httparse::Header<'b>],
    /// `Sec-WebSocket-Key`.
    pub ws_key: &'b str,
    /// Length of the request head; bytes after it are already frames.
    pub head_len: usize,
}

/// Parses the request head in `buf`. `Ok(None)`: incomplete, read more.
pub fn parse_request<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [httparse::Header<'b>],
) -> Result<Option<UpgradeRequest<'h, 'b>>, Refusal> {
    let mut req = httparse::Request::new(headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal::new(
                431,
                "too_many_headers",
                "too many request headers",
            ));
        }
        Err(e) => {
            return Err(Refusal::new(
                400,
                "malformed",
                format!("malformed HTTP request: {e}"),
            ));
        }
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(Refusal::new(400, "malformed", "incomplete request line"));
    };
    let headers: &'h [httparse::Header<'b>] = req.headers;
    // The backend gets three forwarding headers more; its request must fit
    // the same limit.
    if headers.len() > super::MAX_HEADERS - FORWARDING_HEADERS {
        return Err(Refusal::new(
            431,
            "too_many_headers",
            "too many request headers",
        ));
    }
    let find = |name: &str| {
        headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    let has_token = |name: &str, token: &str| {
        headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .flat_map(|h| h.value.split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    };
    if method != "GET" {
        return Err(Refusal::new(
            400,
            "not_websocket",
            format!("{method} is not a WebSocket upgrade; use GET"),
        ));
    }
    if version != 1 {
        return Err(Refusal::new(
            400,
            "not_websocket",
            "a WebSocket upgrade needs HTTP/1.1",
        ));
    }
    if !target.starts_with('/') {
        return Err(Refusal::new(
            400,
            "malformed",
            "the request target must be a path",
        ));
    }
    if find("host").is_none() {
        return Err(Refusal::new(400, "not_websocket", "missing Host header"));
    }
    check_no_body(headers)?;
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err(Refusal::new(
            400,
            "not_websocket",
            "not a WebSocket upgrade: expected `Upgrade: websocket` and `Connection: Upgrade`",
        ));
    }
    if find("sec-websocket-version").map(<[u8]>::trim_ascii) != Some(b"13") {
        return Err(Refusal::new(
            426,
            "wrong_version",
            "this gateway speaks WebSocket version 13",
        ));
    }
    let ws_key = find("sec-websocket-key")
        .and_then(|k| std::str::from_utf8(k.trim_ascii()).ok())
        .filter(|k| is_valid_key(k))
        .ok_or_else(|| Refusal::new(400, "bad_key", "missing or malformed Sec-WebSocket-Key"))?;
    Ok(Some(UpgradeRequest {
        target,
        headers,
        ws_key,
        head_len,
    }))
}

/// An upgrade request has no body (RFC 6455 §4.1: a GET). One that
/// announces one is refused before anything is upgraded: its body bytes
/// would otherwise be taken for WebSocket frames, and the backend, which
/// gets the headers, might frame the stream another way (RFC 9112 §6.3:
/// a request with conflicting framing must be refused). `Content-Length: 0`
/// is no body.
fn check_no_body(headers: &[httparse::Header<'_>]) -> Result<(), Refusal> {
    let named = |name: &'static str| {
        headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
    };
    let chunked = named("transfer-encoding").next().is_some();
    let mut lengths = named("content-length");
    let length = lengths.next();
    let conflicting = |why: &str| Refusal::new(400, "conflicting_framing", why.to_owned());
    match (length, chunked) {
        (Some(_), true) => Err(conflicting(
            "Content-Length and Transfer-Encoding together: the request's framing is ambiguous",
        )),
        (None, true) => Err(Refusal::new(
            400,
            "request_body",
            "a WebSocket upgrade has no body: Transfer-Encoding is not allowed",
        )),
        (None, false) => Ok(()),
        (Some(_), false) if lengths.next().is_some() => {
            Err(conflicting("more than one Content-Length header"))
        }
        (Some(h), false) => {
            let value = h.value.trim_ascii();
            if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
                Err(conflicting("Content-Length is not a number"))
            } else if value.iter().any(|&d| d != b'0') {
                Err(Refusal::new(
                    400,
                    "request_body",
                    "a WebSocket upgrade has no body: Content-Length must be 0 or absent",
                ))
            } else {
                Ok(())
            }
        }
    }
}

/// Headers the gateway adds to the backend's request: `X-Forwarded-For`,
/// `Forwarded`, `X-Forwarded-Proto` and, on a shard, `X-Ringway-Shard`.
const FORWARDING_HEADERS: usize = 4;

/// The header naming the shard that relays a connection to its backend.
/// The gateway sets it; a client's own is dropped.
pub const SHARD_HEADER: &str = "x-ringway-shard";

/// A key is 16 random bytes in base64: 22 characters and `==`.
fn is_valid_key(key: &str) -> bool {
    let b = key.as_bytes();
    b.len() == 24
        && b.ends_with(b"==")
        && b[..22]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

impl UpgradeRequest<'_, '_> {
    /// The request as the routing step sees it.
    pub fn view(&self) -> RequestView<'_> {
        RequestView {
            target: self.target,
            headers: self.headers,
        }
    }

    /// The request to send to the backend: the client's, with the client's
    /// address appended to `X-Forwarded-For` and `Forwarded`, and
    /// `X-Forwarded-Proto` set.
    pub fn backend_request(&self, peer: SocketAddr, tls: bool, shard: Option<&str>) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.head_len + 128);
        out.extend_from_slice(b"GET ");
        out.extend_from_slice(self.target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        // Repeated headers form one comma-separated list (RFC 9110 §5.3).
        let mut xff: Vec<u8> = Vec::new();
        let mut forwarded: Vec<u8> = Vec::new();
        for h in self.headers {
            if h.name.eq_ignore_ascii_case("x-forwarded-for") {
                join(&mut xff, h.value);
            } else if h.name.eq_ignore_ascii_case("forwarded") {
                join(&mut forwarded, h.value);
            } else if !h.name.eq_ignore_ascii_case("x-forwarded-proto")
                && !h.name.eq_ignore_ascii_case(SHARD_HEADER)
            {
                push_header(&mut out, h.name.as_bytes(), h.value);
            }
        }
        let ip = peer.ip().to_string();
        let node = if peer.is_ipv6() {
            format!("\"[{ip}]\"")
        } else {
            ip.clone()
        };
        let proto = if tls { "https" } else { "http" };
        join(&mut xff, ip.as_bytes());
        join(
            &mut forwarded,
            format!("for={node};proto={proto}").as_bytes(),
        );
        push_header(&mut out, b"X-Forwarded-For", &xff);
        push_header(&mut out, b"Forwarded", &forwarded);
        push_header(&mut out, b"X-Forwarded-Proto", proto.as_bytes());
        if let Some(shard) = shard {
            push_header(&mut out, b"X-Ringway-Shard", shard.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out
    }
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends `value` to a comma-separated list.
fn join(list: &mut Vec<u8>, value: &[u8]) {
    let value = value.trim_ascii();
    if value.is_empty() {
        return;
    }
    if !list.is_empty() {
        list.extend_from_slice(b", ");
    }
    list.extend_from_slice(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "GET /chat?room=7 HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat\r\nX-Forwarded-For: 10.1.1.1\r\n\r\n";

    fn parse(text: &str) -> Result<Option<(String, String, usize)>, Refusal> {
        let mut headers = [httparse::EMPTY_HEADER; crate::handshake::MAX_HEADERS];
        parse_request(text.as_bytes(), &mut headers)
            .map(|r| r.map(|r| (r.target.to_owned(), r.ws_key.to_owned(), r.head_len)))
    }

    fn refused(text: &str) -> (u16, &'static str) {
        let r = parse(text).expect_err("should be refused");
        (r.status, r.outcome)
    }

    #[test]
    fn a_valid_upgrade_parses() {
        let (target, key, len) = parse(GOOD).expect("valid").expect("complete");
        assert_eq!(target, "/chat?room=7");
        assert_eq!(key, "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(len, GOOD.len());
    }

    #[test]
    fn an_incomplete_head_asks_for_more() {
        for cut in [0, 5, 20, GOOD.len() - 2] {
            assert_eq!(parse(&GOOD[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn invalid_upgrades_are_refused_with_the_right_status() {
        assert_eq!(
            refused(&GOOD.replace("GET", "POST")),
            (400, "not_websocket")
        );
        assert_eq!(
            refused(&GOOD.replace("HTTP/1.1", "HTTP/1.0")),
            (400, "not_websocket")
        );
        assert_eq!(
            refused(&GOOD.replace("Upgrade: websocket", "Upgrade: h2c")),
            (400, "not_websocket")
        );
        assert_eq!(
            refused(&GOOD.replace("keep-alive, Upgrade", "keep-alive")),
            (400, "not_websocket")
        );
        assert_eq!(
            refused(&GOOD.replace("Version: 13", "Version: 8")),
            (426, "wrong_version")
        );
        assert_eq!(
            refused(&GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", "short")),
            (400, "bad_key")
        );
        assert_eq!(
            refused(&GOOD.replace("Host: gw\r\n", "")),
            (400, "not_websocket")
        );
        assert_eq!(
            refused("GET / HTTP/1.1\r\nHo st: x\r\n\r\n"),
            (400, "malformed")
        );
        let many: String = (0..70).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(
            refused(&GOOD.replace("Host: gw\r\n", &format!("Host: gw\r\n{many}"))),
            (431, "too_many_headers")
        );
        // Found by fuzzing: 62 headers would become 65 on the way to the
        // backend, past the limit of the backend's own parser. With the
        // shard header the gateway adds four, so 61 are too many.
        let sixty_one: String = (0..54).map(|i| format!("X-{i}: v\r\n")).collect();
        let request = GOOD.replace("Host: gw\r\n", &format!("Host: gw\r\n{sixty_one}"));
        assert_eq!(refused(&request), (431, "too_many_headers"));
        let sixty: String = (0..53).map(|i| format!("X-{i}: v\r\n")).collect();
        let request = GOOD.replace("Host: gw\r\n", &format!("Host: gw\r\n{sixty}"));
        let mut headers = [httparse::EMPTY_HEADER; crate::handshake::MAX_HEADERS];
        let req = parse_request(request.as_bytes(), &mut headers)
            .expect("60 headers are fine")
            .expect("complete");
        let backend =
            req.backend_request("192.0.2.7:1".parse().expect("addr"), false, Some("shard-0"));
        let mut again = [httparse::EMPTY_HEADER; crate::handshake::MAX_HEADERS];
        // The backend parses it in the same 64 header slots.
        let parsed = httparse::Request::new(&mut again).parse(&backend);
        assert!(
            matches!(parsed, Ok(httparse::Status::Complete(_))),
            "{parsed:?}"
        );
        let r = parse(&GOOD.replace("Version: 13", "Version: 8")).expect_err("refused");
        let response = String::from_utf8(r.response()).expect("utf-8");
        assert!(response.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(response.contains("Sec-WebSocket-Version: 13\r\n"));
    }

    /// Found by a hostile-client probe: a body after the head was taken
    /// for frames, and the backend got headers that announce one.
    #[test]
    fn an_upgrade_that_announces_a_body_is_refused() {
        let with = |extra: &str| GOOD.replace("Host: gw\r\n", &format!("Host: gw\r\n{extra}"));
        for (extra, outcome) in [
            ("Content-Length: 5\r\n", "request_body"),
            ("content-length:  12 \r\n", "request_body"),
            ("Transfer-Encoding: chunked\r\n", "request_body"),
            ("Transfer-Encoding: identity\r\n", "request_body"),
            (
                "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                "conflicting_framing",
            ),
            (
                "Content-Length: 0\r\nTransfer-Encoding: chunked\r\n",
                "conflicting_framing",
            ),
            (
                "Content-Length: 5\r\nContent-Length: 5\r\n",
                "conflicting_framing",
            ),
            (
                "Content-Length: 0\r\nContent-Length: 0\r\n",
                "conflicting_framing",
            ),
            ("Content-Length: 5, 5\r\n", "conflicting_framing"),
            ("Content-Length: -1\r\n", "conflicting_framing"),
            ("Content-Length: \r\n", "conflicting_framing"),
        ] {
            assert_eq!(refused(&with(extra)), (400, outcome), "{extra:?}");
        }
        for fine in ["Content-Length: 0\r\n", "Content-Length: 000\r\n"] {
            assert!(matches!(parse(&with(fine)), Ok(Some(_))), "{fine:?}");
        }
    }

    #[test]
    fn the_backend_request_carries_forwarding_headers() {
        let mut headers = [httparse::EMPTY_HEADER; crate::handshake::MAX_HEADERS];
        let req = parse_request(GOOD.as_bytes(), &mut headers)
            .expect("valid")
            .expect("complete");
        let out = String::from_utf8(req.backend_request(
            "192.0.2.7:5555".parse().expect("addr"),
            false,
            None,
        ))
        .expect("utf-8");
        assert!(out.starts_with("GET /chat?room=7 HTTP/1.1\r\n"));
        assert!(out.contains("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"));
        assert!(out.contains("Sec-WebSocket-Protocol: chat\r\n"));
        assert!(out.contains("X-Forwarded-For: 10.1.1.1, 192.0.2.7\r\n"));
        assert!(out.contains("Forwarded: for=192.0.2.7;proto=http\r\n"));
        assert!(out.ends_with("X-Forwarded-Proto: http\r\n\r\n"));
        let twice = GOOD.replace(
            "X-Forwarded-For: 10.1.1.1\r\n",
            "X-Forwarded-For: 10.1.1.1\r\nX-Forwarded-For: 10.2.2.2, 10.3.3.3\r\n",
        );
        let mut headers = [httparse::EMPTY_HEADER; crate::handshake::MAX_HEADERS];
        let req = parse_request(twice.as_bytes(), &mut headers)
            .expect("valid")
            .expect("complete");
        let out = String::from_utf8(req.backend_request(
            "192.0.2.7:1".parse().expect("addr"),
            false,
            None,
        ))
        .expect("utf-8");
        assert!(
            out.contains("X-Forwarded-For: 10.1.1.1, 10.2.2.2, 10.3.3.3, 192.0.2.7\r\n"),
            "{out}"
        );
        let v6 = String::from_utf8(req.backend_request(
            "[2001:db8::1]:1".parse().expect("addr"),
            true,
            None,
        ))
        .expect("utf-8");
        assert!(v6.contains("Forwarded: for=\"[2001:db8::1]\";proto=https\r\n"));
    }
}
