//! The server a load generator dials: its `ws://` or `wss://` URL, the
//! socket address behind it, and the per-connection routing key appended to
//! the query, so that every connection of a run hashes to its own place on
//! the proxy's ring (`?room=k17`).

use std::net::{SocketAddr, ToSocketAddrs};

use anyhow::{Context, bail};

/// A `ws://` or `wss://` URL and the address its host resolves to.
#[derive(Clone, Debug)]
pub struct Target {
    url: String,
    addr: SocketAddr,
    /// The host as the URL names it, without port or brackets: what a TLS
    /// client sends as its server name and checks the certificate against.
    host: String,
    tls: bool,
}

impl Target {
    /// Parses `url` (`ws://host[:port]/path?query`, port 80 when absent, or
    /// `wss://…`, port 443) and resolves its host once.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let (rest, tls, default_port) = if let Some(rest) = url.strip_prefix("ws://") {
            (rest, false, 80)
        } else if let Some(rest) = url.strip_prefix("wss://") {
            (rest, true, 443)
        } else {
            bail!("{url}: expected a ws:// or wss:// URL");
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.is_empty() || authority.contains('@') {
            bail!("{url}: expected ws://host[:port]/path");
        }
        let with_port = if has_port(authority) {
            authority.to_owned()
        } else {
            format!("{authority}:{default_port}")
        };
        let host = match authority.rsplit_once(']') {
            Some((bracketed, _)) => bracketed.trim_start_matches('['),
            None => authority.split(':').next().unwrap_or_default(),
        };
        let addr = with_port
            .to_socket_addrs()
            .with_context(|| format!("{url}: resolving {with_port}"))?
            .next()
            .with_context(|| format!("{url}: {with_port} has no address"))?;
        Ok(Self {
            url: url.to_owned(),
            addr,
            host: host.to_owned(),
            tls,
        })
    }

    /// Whether the URL is `wss://`.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The host the URL names (an IPv6 address without its brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The address to open the TCP connection to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL for a connection whose key is `key`, given as the query
    /// parameter `param`; the URL as given when `param` is `None`.
    pub fn keyed_url(&self, param: Option<&str>, key: &str) -> String {
        match param {
            Some(param) => with_query_param(&self.url, param, key),
            None => self.url.clone(),
        }
    }
}

/// `url` with `name=value` added to its query (`?` or `&` as needed, before
/// any `#fragment`). Keys here are generated (`k17`) and need no escaping.
pub fn with_query_param(url: &str, name: &str, value: &str) -> String {
    let (base, fragment) = match url.split_once('#') {
        Some((base, fragment)) => (base, Some(fragment)),
        None => (url, None),
    };
    let separator = match base.find('?') {
        None => "?",
        Some(q) if q + 1 == base.len() || base.ends_with('&') => "",
        Some(_) => "&",
    };
    let mut out = format!("{base}{separator}{name}={value}");
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

/// Whether an authority (`host`, `host:port`, `[v6]`, `[v6]:port`) names a port.
fn has_port(authority: &str) -> bool {
    match authority.rsplit_once(']') {
        Some((_, after)) => after.starts_with(':'),
        None => authority.contains(':'),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_starts_the_query_or_joins_it() {
        let cases = [
            ("ws://h/echo", "ws://h/echo?room=k1"),
            ("ws://h/echo?a=b", "ws://h/echo?a=b&room=k1"),
            ("ws://h/echo?", "ws://h/echo?room=k1"),
            ("ws://h/echo?a=b&", "ws://h/echo?a=b&room=k1"),
            ("ws://h/echo#top", "ws://h/echo?room=k1#top"),
            ("ws://h/e?a=1#top", "ws://h/e?a=1&room=k1#top"),
        ];
        for (url, expected) in cases {
            assert_eq!(with_query_param(url, "room", "k1"), expected, "{url}");
        }
    }

    #[test]
    fn a_target_resolves_its_address_and_defaults_to_port_80() {
        let target = Target::parse("ws://127.0.0.1:18081/echo").unwrap();
        assert_eq!(target.addr(), "127.0.0.1:18081".parse().unwrap());
        assert_eq!(
            target.keyed_url(Some("room"), "k3"),
            "ws://127.0.0.1:18081/echo?room=k3"
        );
        assert_eq!(target.keyed_url(None, "k3"), "ws://127.0.0.1:18081/echo");

        let target = Target::parse("ws://127.0.0.1?x=1").unwrap();
        assert_eq!(target.addr(), "127.0.0.1:80".parse().unwrap());

        let target = Target::parse("ws://[::1]:9001/").unwrap();
        assert_eq!(target.addr(), "[::1]:9001".parse().unwrap());
        assert_eq!(target.host(), "::1");
        assert!(!target.is_tls());
    }

    #[test]
    fn a_wss_target_names_its_host_and_defaults_to_port_443() {
        let target = Target::parse("wss://localhost/echo").unwrap();
        assert!(target.is_tls());
        assert_eq!(target.host(), "localhost");
        assert_eq!(target.addr().port(), 443);

        let target = Target::parse("wss://127.0.0.1:18443/echo").unwrap();
        assert_eq!(target.host(), "127.0.0.1");
        assert_eq!(target.addr(), "127.0.0.1:18443".parse().unwrap());
    }

    #[test]
    fn only_ws_and_wss_urls_are_accepted() {
        for bad in [
            "https://127.0.0.1/",
            "http://127.0.0.1/",
            "127.0.0.1:80",
            "ws:///path",
            "ws://u@h/",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad} parsed");
        }
    }
}
