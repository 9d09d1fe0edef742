//! A route's key: where it comes from ([`KeySource`]), what to do without
//! one ([`MissingKey`]), and reading it out of an upgrade request: a
//! header, a query parameter, a cookie or a path segment. Values are taken
//! as raw bytes (no percent-decoding), as nginx's `$arg_` and haproxy's
//! `url_param` do, so that the same client always produces the same key.

use serde::Deserialize;

/// The parts of an upgrade request a key can come from.
pub struct RequestView<'a> {
    /// The request target: path and query.
    pub target: &'a str,
    /// Header names and values as received.
    pub headers: &'a [httparse::Header<'a>],
}

/// Where a route's key comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// A header (the name matches case-insensitively).
    Header(String),
    /// A query parameter.
    Query(String),
    /// A cookie.
    Cookie(String),
    /// The zero-based segment of the path: `/rooms/42/ws`, 1 is `42`.
    PathSegment(usize),
}

/// The part of the request a [`KeySource`] reads, without its name or
/// index. The config file names it (`source: Header`), as the gateway spec
/// does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum KeyKind {
    /// A request header.
    Header,
    /// A query parameter.
    Query,
    /// A cookie.
    Cookie,
    /// A path segment.
    PathSegment,
}

/// What a route does with a request that has no key. The config file
/// names it as the gateway spec does (`missingKey: Random`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum MissingKey {
    /// Answer 400.
    #[default]
    Reject,
    /// Use a random key.
    Random,
}

impl KeySource {
    /// The part of the request it reads.
    pub fn kind(&self) -> KeyKind {
        match self {
            Self::Header(_) => KeyKind::Header,
            Self::Query(_) => KeyKind::Query,
            Self::Cookie(_) => KeyKind::Cookie,
            Self::PathSegment(_) => KeyKind::PathSegment,
        }
    }

    /// The key, or `None` when the request does not carry one (or carries an
    /// empty one).
    pub fn extract<'a>(&self, req: &RequestView<'a>) -> Option<&'a [u8]> {
        let found = match self {
            Self::Header(name) => req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value),
            Self::Query(name) => {
                let query = req.target.split_once('?').map(|(_, q)| q)?;
                let query = query.split('#').next().unwrap_or("");
                query
                    .split('&')
                    .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.as_bytes())
            }
            Self::Cookie(name) => req
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("cookie"))
                .flat_map(|h| h.value.split(|&b| b == b';'))
                .filter_map(|pair| {
                    let eq = pair.iter().position(|&b| b == b'=')?;
                    Some((trim(&pair[..eq]), trim(&pair[eq + 1..])))
                })
                .find(|(k, _)| *k == name.as_bytes())
                .map(|(_, v)| v),
            Self::PathSegment(index) => {
                let path = req.target.split(['?', '#']).next().unwrap_or("");
                path.strip_prefix('/')
                    .unwrap_or(path)
                    .split('/')
                    .nth(*index)
                    .map(str::as_bytes)
            }
        };
        found.filter(|v| !v.is_empty())
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &bytes[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key<'a>(
        source: &KeySource,
        target: &'a str,
        headers: &'a [httparse::Header<'a>],
    ) -> Option<&'a [u8]> {
        source.extract(&RequestView { target, headers })
    }

    fn h<'a>(name: &'a str, value: &'a str) -> httparse::Header<'a> {
        httparse::Header {
            name,
            value: value.as_bytes(),
        }
    }

    #[test]
    fn header_keys_match_names_case_insensitively() {
        let headers = [h("Host", "x"), h("x-device-id", "dev-7")];
        let source = KeySource::Header("X-Device-Id".into());
        assert_eq!(key(&source, "/", &headers), Some(&b"dev-7"[..]));
        assert_eq!(key(&source, "/", &headers[..1]), None);
        assert_eq!(
            key(&source, "/", &[h("X-Device-Id", "")]),
            None,
            "empty is missing"
        );
    }

    #[test]
    fn query_keys() {
        let source = KeySource::Query("room".into());
        assert_eq!(key(&source, "/chat?room=42", &[]), Some(&b"42"[..]));
        assert_eq!(
            key(&source, "/chat?a=1&room=a%20b&room=2", &[]),
            Some(&b"a%20b"[..]),
            "raw, first wins"
        );
        assert_eq!(key(&source, "/chat?roomy=1", &[]), None);
        assert_eq!(key(&source, "/chat?room", &[]), None);
        assert_eq!(key(&source, "/chat?room=", &[]), None);
        assert_eq!(key(&source, "/chat", &[]), None);
        assert_eq!(key(&source, "/chat?x=1&room=7#frag", &[]), Some(&b"7"[..]));
    }

    #[test]
    fn cookie_keys() {
        let source = KeySource::Cookie("session".into());
        let headers = [
            h("Cookie", "a=1; session=abc ;x=y"),
            h("cookie", "session=later"),
        ];
        assert_eq!(key(&source, "/", &headers), Some(&b"abc"[..]));
        assert_eq!(key(&source, "/", &[h("Cookie", "sessionx=1; flag")]), None);
    }

    #[test]
    fn path_segment_keys() {
        let source = KeySource::PathSegment(1);
        assert_eq!(key(&source, "/rooms/42/ws?x=1", &[]), Some(&b"42"[..]));
        assert_eq!(key(&source, "/rooms", &[]), None);
        assert_eq!(key(&source, "/rooms//ws", &[]), None);
        assert_eq!(
            key(&KeySource::PathSegment(0), "/rooms/42", &[]),
            Some(&b"rooms"[..])
        );
    }
}
