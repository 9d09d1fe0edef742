//! Opening the connections of a run: TCP from a chosen source address, TLS
//! for `wss://`, the WebSocket upgrade with the connection's key in the URL,
//! at a bounded rate and with a deadline, and a tally of why the failed ones
//! failed.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::net::TcpSocket;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Error as WsError;

use super::report::Tally;
use super::tls::{ClientTls, Negotiated, Stream};
use crate::echo::BACKEND_HEADER;
use crate::sources::SourceAddrs;
use crate::target::Target;

/// An open client WebSocket.
pub type Ws = WebSocketStream<Stream>;

/// Connection attempts in flight at once, whatever the ramp: enough to
/// keep up with any ramp here, few enough not to overflow a listen backlog.
const MAX_CONNECTS_IN_FLIGHT: usize = 512;

/// How often a long connection phase reports its progress on stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Where and how every subcommand connects.
#[derive(Clone, Debug, clap::Args)]
pub struct ConnectArgs {
    /// WebSocket URL to connect to, e.g. ws://127.0.0.1:8080/echo or
    /// wss://localhost:8443/echo (with --ca-file).
    #[arg(long, env = "RINGWAY_LOAD_URL")]
    pub url: String,

    /// CA certificate (PEM) that a wss:// server's certificate must chain
    /// to; its name is checked against the URL's host.
    #[arg(long, env = "RINGWAY_LOAD_CA_FILE")]
    pub ca_file: Option<PathBuf>,

    /// wss://: keep the session tickets servers send and resume with them on
    /// later connections, as a browser does; without it every connection is
    /// a full TLS handshake.
    #[arg(long)]
    pub resume: bool,

    /// Query parameter that carries each connection's key (`k<n>`), so that
    /// connections spread over a proxy's hash ring; empty for none.
    #[arg(long, default_value = "room")]
    pub key_param: String,

    /// Number of the first key: connection i gets key `k<offset + i>`, so that
    /// several processes use distinct keys.
    #[arg(long, default_value_t = 0)]
    pub key_offset: u64,

    /// Use only keys that this shard owns (rendezvous hashing over
    /// `--ring`, as the data plane computes it), so that every connection
    /// dials its owner directly, as a client that knows the ring would:
    /// connection i gets the i-th such key from `k<offset>` on.
    #[arg(long, requires = "ring")]
    pub owned_by: Option<String>,

    /// The shard ids of the ring, comma-separated (with `--owned-by`).
    #[arg(long, value_delimiter = ',')]
    pub ring: Vec<String>,

    /// Source addresses to bind, round-robin, e.g. 127.0.0.2-127.0.0.40: one
    /// address has only ~28,000 ephemeral ports.
    #[arg(long)]
    pub sources: Option<SourceAddrs>,

    /// Most new connections per second (0: as fast as they open).
    #[arg(long, default_value_t = 2000)]
    pub ramp: u32,

    /// Seconds a connection (TCP and upgrade) may take before it counts as
    /// failed.
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
}

/// Opens connections to one target.
#[derive(Debug)]
pub struct Connector {
    target: Target,
    key_param: Option<String>,
    key_offset: u64,
    owned: Option<OwnedKeys>,
    sources: Option<SourceAddrs>,
    tls: Option<ClientTls>,
    timeout: Duration,
    read_buffer_bytes: usize,
}

/// The keys one shard of a ring owns, found as they are needed.
#[derive(Debug)]
struct OwnedKeys {
    ring: ringway_dataplane::routing::Rendezvous,
    owner: usize,
    /// Key numbers found so far, in order.
    found: std::sync::Mutex<Vec<u64>>,
}

impl OwnedKeys {
    /// The number of the `index`-th owned key from `offset` on.
    fn number(&self, offset: u64, index: usize) -> u64 {
        let mut found = self
            .found
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut next = found.last().map_or(offset, |n| n + 1);
        while found.len() <= index {
            let key = ringway_dataplane::routing::hash_key(format!("k{next}").as_bytes());
            if self.ring.pick(key) == Some(self.owner) {
                found.push(next);
            }
            next += 1;
        }
        found[index]
    }
}

/// One open connection.
#[derive(Debug)]
pub struct Connected {
    /// Its number in the run (its key is `k<offset + index>`).
    pub index: usize,
    /// The WebSocket.
    pub ws: Ws,
    /// The backend that answered, from its `X-Ringway-Backend` header.
    pub backend: Option<String>,
    /// What its TLS handshake negotiated (`wss://`).
    pub tls: Option<Negotiated>,
}

impl Connector {
    /// A connector for `args`, whose connections read with buffers of
    /// `read_buffer_bytes`.
    pub fn new(args: &ConnectArgs, read_buffer_bytes: usize) -> anyhow::Result<Self> {
        let owned = match &args.owned_by {
            None => None,
            Some(shard) => {
                let owner = args.ring.iter().position(|id| id == shard).ok_or_else(|| {
                    anyhow::anyhow!("--owned-by {shard}: not in --ring {}", args.ring.join(","))
                })?;
                Some(OwnedKeys {
                    ring: ringway_dataplane::routing::Rendezvous::new(&args.ring),
                    owner,
                    found: std::sync::Mutex::default(),
                })
            }
        };
        let target = Target::parse(&args.url)?;
        let tls = match (target.is_tls(), &args.ca_file) {
            (false, _) => None,
            (true, Some(ca_file)) => Some(ClientTls::new(ca_file, target.host(), args.resume)?),
            (true, None) => anyhow::bail!("{}: wss:// needs --ca-file", args.url),
        };
        Ok(Self {
            target,
            key_param: Some(args.key_param.clone()).filter(|p| !p.is_empty()),
            key_offset: args.key_offset,
            owned,
            sources: args.sources.clone(),
            tls,
            timeout: super::seconds("connect-timeout", args.connect_timeout)?,
            read_buffer_bytes,
        })
    }

    /// The key of connection `index`.
    pub fn key(&self, index: usize) -> String {
        match &self.owned {
            None => format!("k{}", self.key_offset + index as u64),
            Some(owned) => format!("k{}", owned.number(self.key_offset, index)),
        }
    }

    /// Opens connection `index`; on failure, the reason it failed, short
    /// enough to be counted by.
    pub async fn connect(&self, index: usize) -> Result<Connected, String> {
        match tokio::time::timeout(self.timeout, self.connect_now(index)).await {
            Ok(result) => result,
            Err(_) => Err(format!("timeout after {:?}", self.timeout)),
        }
    }

    async fn connect_now(&self, index: usize) -> Result<Connected, String> {
        let addr = self.target.addr();
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(|e| format!("socket: {e}"))?;
        if let Some(sources) = &self.sources {
            let source = SocketAddr::new(IpAddr::V4(sources.pick(index)), 0);
            socket.bind(source).map_err(|e| format!("bind: {e}"))?;
        }
        let stream = socket
            .connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        // Every message is one small write that must leave at once.
        stream
            .set_nodelay(true)
            .map_err(|e| format!("nodelay: {e}"))?;
        let (stream, tls) = match &self.tls {
            None => (Stream::Plain(stream), None),
            Some(tls) => {
                let (stream, negotiated) = tls.handshake(stream).await?;
                (stream, Some(negotiated))
            }
        };
        let url = self
            .target
            .keyed_url(self.key_param.as_deref(), &self.key(index));
        let config = crate::ws_config(self.read_buffer_bytes);
        let (ws, response) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
            .await
            .map_err(|e| upgrade_failure(&e))?;
        let backend = response
            .headers()
            .get(BACKEND_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(Connected {
            index,
            ws,
            backend,
            tls,
        })
    }
}

/// A failed upgrade, as a reason to count: the status when the server
/// answered with one, else the error.
fn upgrade_failure(e: &WsError) -> String {
    match e {
        WsError::Http(response) => format!("upgrade refused: HTTP {}", response.status()),
        e => format!("upgrade: {e}"),
    }
}

/// The outcome of opening a run's connections.
#[derive(Debug)]
pub struct Established {
    /// The connections that opened, in no particular order.
    pub connections: Vec<Connected>,
    /// Why the others failed.
    pub failures: Tally,
    /// How long opening them all took.
    pub elapsed: Duration,
}

/// Opens `count` connections for a run that needs at least one: an error
/// naming why they failed when none opened.
pub async fn open_for_run(
    args: &ConnectArgs,
    count: usize,
    read_buffer_bytes: usize,
) -> anyhow::Result<Established> {
    let connector = Arc::new(Connector::new(args, read_buffer_bytes)?);
    let established = connect_all(connector, count, args.ramp).await;
    anyhow::ensure!(
        !established.connections.is_empty(),
        "no connection opened to {}: {}",
        args.url,
        super::report::describe_counts(&established.failures.counts())
    );
    Ok(established)
}

/// Opens connections `0..count`, starting at most `ramp` per second (0: no
/// limit) and at most [`MAX_CONNECTS_IN_FLIGHT`] at once; reports progress
/// on stderr every couple of seconds while it lasts.
pub async fn connect_all(connector: Arc<Connector>, count: usize, ramp: u32) -> Established {
    let mut connections = Vec::with_capacity(count);
    let (failures, elapsed) = connect_each(connector, count, ramp, |connected| {
        connections.push(connected)
    })
    .await;
    Established {
        connections,
        failures,
        elapsed,
    }
}

/// As [`connect_all`], but hands each connection to `on_open` as soon as it
/// opens (a client that must answer pings while the others still open);
/// returns why the others failed and how long opening took.
pub async fn connect_each(
    connector: Arc<Connector>,
    count: usize,
    ramp: u32,
    mut on_open: impl FnMut(Connected),
) -> (Tally, Duration) {
    let started = Instant::now();
    let in_flight = Arc::new(Semaphore::new(MAX_CONNECTS_IN_FLIGHT));
    let opened = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let progress = tokio::spawn(report_progress(count, opened.clone(), failed.clone()));

    let failures = Tally::default();
    let mut attempts = JoinSet::new();
    let mut collect = |result: Result<Connected, String>| match result {
        Ok(connected) => on_open(connected),
        Err(reason) => failures.add(reason),
    };
    for index in 0..count {
        if ramp > 0 {
            let due = started + Duration::from_secs_f64(index as f64 / f64::from(ramp));
            tokio::time::sleep_until(due.into()).await;
        }
        let permit = in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (connector, opened, failed) = (connector.clone(), opened.clone(), failed.clone());
        attempts.spawn(async move {
            let result = connector.connect(index).await;
            drop(permit);
            let counter = if result.is_ok() { &opened } else { &failed };
            counter.fetch_add(1, Ordering::Relaxed);
            result
        });
        while let Some(done) = attempts.try_join_next() {
            collect(done.unwrap_or_else(|e| Err(format!("connect task: {e}"))));
        }
    }
    while let Some(done) = attempts.join_next().await {
        collect(done.unwrap_or_else(|e| Err(format!("connect task: {e}"))));
    }
    progress.abort();
    (failures, started.elapsed())
}

async fn report_progress(count: usize, opened: Arc<AtomicU64>, failed: Arc<AtomicU64>) {
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.tick().await;
    loop {
        tick.tick().await;
        eprintln!(
            "connecting: {} of {count} open, {} failed",
            opened.load(Ordering::Relaxed),
            failed.load(Ordering::Relaxed)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringway_dataplane::routing::{Rendezvous, hash_key};

    #[test]
    fn owned_keys_are_the_owners_own_and_disjoint_between_owners() {
        let ring: Vec<String> = (0..5).map(|i| format!("shard-{i}")).collect();
        let rendezvous = Rendezvous::new(&ring);
        let mut seen = std::collections::HashSet::new();
        for owner in 0..5 {
            let owned = OwnedKeys {
                ring: rendezvous.clone(),
                owner,
                found: std::sync::Mutex::default(),
            };
            for index in 0..200 {
                let number = owned.number(0, index);
                let key = hash_key(format!("k{number}").as_bytes());
                assert_eq!(rendezvous.pick(key), Some(owner));
                assert!(seen.insert(number), "k{number} owned twice");
            }
        }
    }
}
