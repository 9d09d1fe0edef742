//! The HTTP/1.1 upgrade (RFC 6455 §4): reading and checking the client's
//! request, answering the ones the gateway refuses, and passing the rest to
//! the backend, whose answer (subprotocol, extensions, its own headers) is
//! relayed to the client as it is, so negotiation is end to end.

mod backend;
mod request;

pub use backend::{BackendFailure, BackendUpgrade, BadResponse, upgrade_backend};
pub use request::{Refusal, SHARD_HEADER, UpgradeRequest, parse_request};

/// The headers array a request is parsed into; more headers are refused
/// with 431.
pub const MAX_HEADERS: usize = 64;

/// A complete HTTP/1.1 error response that closes the connection.
pub fn error_response(status: u16, message: &str, extra_headers: &[(&str, &str)]) -> Vec<u8> {
    let reason = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    };
    let body = format!("{message}\n");
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in extra_headers {
        out.push_str(name);
        out.push_str(": ");
        out.push_str(value);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.push_str(&body);
    out.into_bytes()
}
