//! Hand-off between shards. A shard that takes a connection whose key
//! another shard owns dials the owner's peer port and sends one preamble
//! line, then the client's upgrade request exactly as it came:
//!
//! ```text
//! RINGWAY-HANDOFF/1 <token> <client ip:port> <http|https>\r\n
//! GET /chat?room=7 HTTP/1.1\r\n...
//! ```
//!
//! The token is a secret every shard of the gateway shares (a file the
//! operator mounts from the gateway's Secret): without it the peer port
//! refuses the connection, so nobody else can hand the owner connections
//! with a made-up client address. The owner routes the request as its
//! own, never hands it off again (one hop at most, so no loop), and answers
//! through the edge shard, which relays frames both ways with the same
//! frame-aware relay as any connection.
//!
//! The peer port is plain TCP inside the cluster, like the client traffic
//! that reaches the pods; the token authenticates, it does not encrypt.

use std::{net::SocketAddr, path::Path};

use crate::{ConfigError, TokenError, handshake::Refusal, routing::Version, running::RunningState};

/// The preamble's first word.
const MAGIC: &str = "RINGWAY-HANDOFF/1";

/// Longest preamble line accepted (token, address, scheme).
pub const MAX_PREAMBLE: usize = 512;

/// The shared secret of a gateway's peer ports.
#[derive(Clone)]
pub struct PeerToken(String);

impl std::fmt::Debug for PeerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerToken(..)")
    }
}

impl PeerToken {
    /// A token: 16 to 256 visible ASCII characters, no spaces.
    pub fn new(token: &str) -> Result<Self, TokenError> {
        let token = token.trim();
        if !(16..=256).contains(&token.len()) {
            return Err(TokenError::Length(token.len()));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::NotVisibleAscii);
        }
        Ok(Self(token.to_owned()))
    }

    /// Reads the token from `path` (surrounding whitespace ignored).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        std::fs::read_to_string(path)
            .map_err(TokenError::Read)
            .and_then(|text| Self::new(&text))
            .map_err(|source| ConfigError::PeerToken {
                path: path.to_owned(),
                source,
            })
    }

    /// Compares in time independent of where the first difference is.
    fn matches(&self, offered: &[u8]) -> bool {
        crate::secret::same(self.0.as_bytes(), offered)
    }
}

/// The preamble line for handing off a connection from `client`.
pub fn preamble(token: &PeerToken, client: SocketAddr, tls: bool) -> Vec<u8> {
    let scheme = if tls { "https" } else { "http" };
    format!("{MAGIC} {} {client} {scheme}\r\n", token.0).into_bytes()
}

/// What the preamble says about the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandedOff {
    /// The client's address, as the edge shard saw it.
    pub client: SocketAddr,
    /// Whether the client came over TLS.
    pub tls: bool,
}

/// Reads a preamble at the start of `buf`: `Ok(None)` when the line is
/// not complete yet, else what it says and its length.
pub fn parse_preamble(
    buf: &[u8],
    token: &PeerToken,
) -> Result<Option<(HandedOff, usize)>, Refusal> {
    let malformed = || {
        Refusal::new(
            400,
            "peer_malformed",
            "the peer port takes hand-offs from other shards only",
        )
    };
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() >= MAX_PREAMBLE
            || !MAGIC
                .as_bytes()
                .starts_with(&buf[..buf.len().min(MAGIC.len())])
        {
            return Err(malformed());
        }
        return Ok(None);
    };
    let line = std::str::from_utf8(&buf[..end]).map_err(|_| malformed())?;
    let mut words = line.split(' ');
    if words.next() != Some(MAGIC) {
        return Err(malformed());
    }
    let offered = words.next().ok_or_else(malformed)?;
    if !token.matches(offered.as_bytes()) {
        return Err(Refusal::new(
            403,
            "peer_unauthenticated",
            "the hand-off token is wrong",
        ));
    }
    let client = words
        .next()
        .and_then(|a| a.parse().ok())
        .ok_or_else(malformed)?;
    let tls = match words.next() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(malformed()),
    };
    if words.next().is_some() {
        return Err(malformed());
    }
    Ok(Some((HandedOff { client, tls }, end + 2)))
}

/// Refuses a hand-off of a key that this shard's snapshot puts on another
/// version than its own (or on any version, when it is in none): the edge
/// ran another snapshot, mid-step. Served here, the connection would sit
/// on a shard that no later snapshot moves it from. Refused, the client
/// retries, and lands where every pod agrees. A key of this shard's own
/// version is served even when another shard owns it: the edge's
/// fallback when the owner did not answer.
pub(crate) fn refuse_another_versions_key(
    running: &RunningState,
    me: Option<&str>,
    version: Version,
) -> Result<(), Refusal> {
    let mine = me.and_then(|me| running.routing.version_of_shard(me));
    if mine == Some(version) {
        return Ok(());
    }
    Err(Refusal::new(
        503,
        "peer_not_owner",
        format!(
            "this shard's snapshot (epoch {}) puts the key on the {} version, not on this shard's",
            running.routing.epoch,
            version.label()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> PeerToken {
        PeerToken::new("0123456789abcdef-secret").expect("valid")
    }

    #[test]
    fn a_preamble_round_trips() {
        let client: SocketAddr = "10.1.2.3:40000".parse().expect("addr");
        let mut line = preamble(&token(), client, true);
        let len = line.len();
        line.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let (handed, used) = parse_preamble(&line, &token())
            .expect("valid")
            .expect("complete");
        assert_eq!(handed, HandedOff { client, tls: true });
        assert_eq!(used, len);
        assert_eq!(
            parse_preamble(&line[..10], &token()).expect("a prefix"),
            None
        );
    }

    #[test]
    fn a_wrong_token_or_a_stranger_is_refused() {
        let client: SocketAddr = "10.1.2.3:40000".parse().expect("addr");
        let other = PeerToken::new("another-token-of-16").expect("valid");
        let err = parse_preamble(&preamble(&other, client, false), &token()).expect_err("refused");
        assert_eq!((err.status, err.outcome), (403, "peer_unauthenticated"));
        for stranger in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"RINGWAY-HANDOFF/1 0123456789abcdef-secret nonsense http\r\n",
            b"RINGWAY-HANDOFF/1 0123456789abcdef-secret 1.2.3.4:5 ftp\r\n",
            b"RINGWAY-HANDOFF/1\r\n",
            &[b'R'; 600][..],
        ] {
            let err = parse_preamble(stranger, &token()).expect_err("refused");
            assert_eq!(err.outcome, "peer_malformed", "{stranger:?}");
        }
        assert!(PeerToken::new("short").is_err());
        assert!(PeerToken::new("has a space in the middle").is_err());
    }
}
