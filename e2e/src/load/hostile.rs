//! `ringway-load hostile`: attacks a gateway the way hostile or broken
//! clients do, one attack after another, while one legitimate client keeps
//! sending and timing its echoes; samples the gateway's memory (RSS) and
//! open descriptors before, at the peak of and after each attack.
//!
//! The attacks (counts at `--scale 1`):
//! - `slowloris`: 5,000 upgrade requests that send a byte every 2 s;
//! - `huge-frames`: 2,000 upgraded clients announcing a 2^62-byte or a
//!   16 MiB frame, then trickling its payload;
//! - `slow-consumers`: 1,000 clients with a 4 KiB receive buffer that ask
//!   for 512 KiB of echoes each and never read;
//! - `malformed`: every kind of bad upgrade request the gateway parses,
//!   each with the status it must get;
//! - `frame-violations`: upgraded clients that break RFC 6455, each with
//!   the close code it must get;
//! - `churn`: 20,000 connections opened and reset at about 1,000/s;
//! - `half-sent`: 2,000 half-sent upgrade requests, reset at once.
//!
//! Every hostile connection's end is counted by how it ended (`status 408`,
//! `close 1009`, `cut`, ...) and checked against what it must be; the run
//! ends with a table and a problem list (non-zero exit) when the
//! legitimate client lost a message, its p99 in an attack exceeded twice its
//! baseline, a connection ended the wrong way or too late, memory or
//! descriptors did not come back, or the gateway died.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpSocket, TcpStream},
    sync::Semaphore,
    task::JoinSet,
};

use super::{
    report::{Percentiles, Report, Tally, describe_counts, nanos_histogram, round1},
    steady::{RTT_LINE, SteadyEnd},
};
use crate::{sources::SourceAddrs, target::Target};

/// Attack a gateway with hostile clients and measure what it costs.
#[derive(Clone, Debug, clap::Args)]
pub struct HostileArgs {
    /// An echo route through the gateway, e.g. `ws://127.0.0.1:8080/echo`.
    #[arg(long)]
    pub url: String,

    /// The legitimate client's echo route (a key in the `room` query
    /// parameter is added); `--url` by default. A route to a backend of
    /// its own keeps the attackers' load on their backend out of its round
    /// trips, as for an unrelated application behind the same gateway.
    #[arg(long)]
    pub legit_url: Option<String>,

    /// The gateway's process id, for its RSS and open descriptors.
    #[arg(long)]
    pub pid: u32,

    /// Source addresses for the attackers' connections.
    #[arg(long, default_value = "127.0.0.2-127.0.0.33")]
    pub sources: SourceAddrs,

    /// Multiplies every attack's connection count (0.01 to 1).
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,

    /// Only these attacks (comma-separated names); all by default.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,

    /// The gateway's handshakeTimeoutSeconds.
    #[arg(long, default_value_t = 5.0)]
    pub handshake_timeout: f64,

    /// The gateway's slowConsumerSeconds.
    #[arg(long, default_value_t = 30.0)]
    pub slow_consumer: f64,

    /// Time after each attack's last connection ended before memory and
    /// descriptors are read again.
    #[arg(long, default_value_t = 5.0)]
    pub settle: f64,

    /// Run the legitimate client under `chrt -f` with this real-time
    /// priority (1-99), so that it and the gateway, not the attackers in
    /// this process, decide its round trips; 0 runs it as any process.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=99))]
    pub legit_priority: u8,

    /// How long the legitimate client is measured before the first attack.
    #[arg(long, default_value_t = 5.0)]
    pub baseline: f64,
}

/// The attacks, in the order they run.
const ATTACKS: [&str; 7] = [
    "slowloris",
    "huge-frames",
    "slow-consumers",
    "malformed",
    "frame-violations",
    "churn",
    "half-sent",
];

/// The legitimate client sends one message this often.
const LEGIT_EVERY: Duration = Duration::from_millis(10);
/// Its messages' size.
const LEGIT_SIZE: usize = 64;
/// Slack on top of a configured timeout before a connection counts as late.
const SLACK: Duration = Duration::from_secs(3);

/// Runs the attacks and measures.
pub async fn run(args: HostileArgs) -> anyhow::Result<Report> {
    ensure!(
        (0.01..=1.0).contains(&args.scale),
        "--scale must be between 0.01 and 1, not {}",
        args.scale
    );
    for name in &args.only {
        ensure!(
            ATTACKS.contains(&name.as_str()),
            "--only {name}: not one of {}",
            ATTACKS.join(", ")
        );
    }
    let target = Target::parse(&args.url)?;
    let gateway = Gateway::new(args.pid)?;
    let env = Arc::new(Env {
        addr: target.addr(),
        path: path_of(target.url()),
        sources: args.sources.clone(),
        next: AtomicU64::new(0),
    });

    let legit_target = match &args.legit_url {
        Some(url) => Target::parse(url)?,
        None => target.clone(),
    };
    let legit = Legit::start(
        legit_target.keyed_url(Some("room"), "legit"),
        args.legit_priority,
    )
    .await?;
    let sampler = Sampler::start(gateway.clone());
    tokio::time::sleep(super::seconds("baseline", args.baseline)?).await;
    let baseline = legit.take();
    let mut rows = Vec::new();
    let mut problems = Vec::new();
    let settle = super::seconds("settle", args.settle)?;
    let count = |n: usize| ((n as f64 * args.scale).round() as usize).max(1);
    let handshake = Duration::from_secs_f64(args.handshake_timeout);
    // A consumer that never reads fills its capped send buffer and is cut
    // after slowConsumerSeconds (the heartbeat does not judge it).
    let slow = Duration::from_secs_f64(args.slow_consumer);
    for name in ATTACKS {
        if !args.only.is_empty() && !args.only.iter().any(|o| o == name) {
            continue;
        }
        let before = sampler.now();
        sampler.reset_peak();
        let started = Instant::now();
        let ended = match name {
            "slowloris" => slowloris(&env, count(5_000), handshake).await,
            "huge-frames" => huge_frames(&env, count(2_000)).await,
            "slow-consumers" => slow_consumers(&env, count(1_000), slow).await,
            "malformed" => malformed(&env).await,
            "frame-violations" => frame_violations(&env).await,
            "churn" => churn(&env, count(20_000), 1_000).await,
            _ => half_sent(&env, count(2_000)).await,
        };
        let took = started.elapsed();
        tokio::time::sleep(settle).await;
        let peak = sampler.peak();
        let after = sampler.now();
        let rtt = legit.take();
        let row = Row {
            name,
            ended,
            took,
            before,
            peak,
            after,
            rtt,
        };
        problems.extend(row.problems(&baseline));
        rows.push(row);
    }
    let lost = legit.stop().await;
    if lost.lost > 0 || lost.errors > 0 {
        problems.push(format!(
            "the legitimate client lost {} messages and saw {} errors",
            lost.lost, lost.errors
        ));
    }
    if !gateway.alive() {
        problems.push("the gateway is no longer running".to_owned());
    }
    Ok(report(&baseline, &rows, &lost, problems))
}

/// What every attack needs: where, from where.
struct Env {
    addr: SocketAddr,
    /// Path and query of the echo route, for raw requests.
    path: String,
    sources: SourceAddrs,
    next: AtomicU64,
}

impl Env {
    /// A TCP connection from the next source address.
    async fn connect(&self, recv_buffer: Option<u32>) -> std::io::Result<TcpStream> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) as usize;
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(IpAddr::V4(self.sources.pick(i)), 0))?;
        if let Some(bytes) = recv_buffer {
            socket.set_recv_buffer_size(bytes)?;
        }
        let stream = tokio::time::timeout(Duration::from_secs(10), socket.connect(self.addr))
            .await
            .map_err(|_| std::io::Error::other("connect timeout"))??;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// A valid upgrade request head for the echo route.
    fn upgrade(&self, key: &str) -> String {
        format!(
            "GET {}{}room={key} HTTP/1.1\r\nHost: hostile\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            self.path,
            if self.path.contains('?') { "&" } else { "?" }
        )
    }

    /// An upgraded connection, its 101 read.
    async fn upgraded(&self, key: &str, recv_buffer: Option<u32>) -> Result<TcpStream, String> {
        let mut stream = self
            .connect(recv_buffer)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        stream
            .write_all(self.upgrade(key).as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        match read_status(&mut stream, Duration::from_secs(10)).await {
            Some(101) => Ok(stream),
            other => Err(format!("upgrade answered {other:?}")),
        }
    }
}

/// The path and query of a `ws://` URL.
fn path_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    match rest.find('/') {
        Some(i) => rest[i..].to_owned(),
        None => "/".to_owned(),
    }
}

/// How an attack's connections ended, and the latest of them.
#[derive(Debug, Default)]
struct Ended {
    connections: usize,
    /// By how each ended.
    how: BTreeMap<String, u64>,
    /// Ends that are not what they must be, by how.
    wrong: BTreeMap<String, u64>,
    /// The longest a connection took to be ended by the gateway.
    latest: Duration,
    /// What the gateway must have ended each within.
    within: Option<Duration>,
}

impl Ended {
    fn from_tallies(connections: usize, how: &Tally, wrong: &Tally, latest: &Latest) -> Self {
        Self {
            connections,
            how: how.counts(),
            wrong: wrong.counts(),
            latest: latest.get(),
            within: None,
        }
    }
}

/// The longest duration seen, shared by tasks.
#[derive(Default)]
struct Latest(AtomicU64);

impl Latest {
    fn see(&self, d: Duration) {
        self.0.fetch_max(
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    fn get(&self) -> Duration {
        Duration::from_micros(self.0.load(Ordering::Relaxed))
    }
}

/// Reads an HTTP status line; `None` when the connection ended (or broke)
/// before one, or `wait` passed.
async fn read_status(stream: &mut TcpStream, wait: Duration) -> Option<u16> {
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 512];
    let deadline = tokio::time::Instant::now() + wait;
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout_at(deadline, stream.read(&mut byte)).await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&byte[..n]),
            _ => break,
        }
        if head.len() > 16 * 1024 {
            break;
        }
    }
    let text = String::from_utf8_lossy(&head);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// How an upgraded connection ended: `close NNNN` for the first close
/// frame from the gateway, `cut` for an end without one, `open` when it
/// was still open after `wait`. Data frames before it are skipped.
async fn read_close(stream: &mut TcpStream, wait: Duration) -> String {
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        // Frames from the server are unmasked.
        while buf.len() >= 2 {
            let opcode = buf[0] & 0x0f;
            let (len, header) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
                127 if buf.len() >= 10 => (
                    u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")),
                    10,
                ),
                126 | 127 => break,
                n => (u64::from(n), 2),
            };
            let Some(end) = usize::try_from(len)
                .ok()
                .and_then(|l| l.checked_add(header))
            else {
                return "bad frame".to_owned();
            };
            if opcode == 0x8 {
                if buf.len() < header + 2.min(end - header) {
                    break;
                }
                return match end - header {
                    0 => "close no code".to_owned(),
                    _ => format!(
                        "close {}",
                        u16::from_be_bytes([buf[header], buf[header + 1]])
                    ),
                };
            }
            if buf.len() < end {
                break;
            }
            buf.drain(..end);
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return "cut".to_owned(),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return "open".to_owned(),
        }
    }
}

/// A masked client frame.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![u8::from(fin) << 7 | opcode];
    header_len(&mut out, payload.len() as u64, true);
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

fn header_len(out: &mut Vec<u8>, len: u64, masked: bool) {
    let m = u8::from(masked) << 7;
    if len < 126 {
        out.push(m | len as u8);
    } else if len <= u64::from(u16::MAX) {
        out.push(m | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
}

/// Runs `n` copies of `attack` (at most `parallel` connecting at once),
/// each told its index; each returns how it ended and whether that is
/// right.
async fn many<F, Fut>(n: usize, parallel: usize, attack: F) -> Ended
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = (String, bool, Duration)> + Send + 'static,
{
    let how = Arc::new(Tally::default());
    let wrong = Arc::new(Tally::default());
    let latest = Arc::new(Latest::default());
    let gate = Arc::new(Semaphore::new(parallel));
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let permit = Arc::clone(&gate)
            .acquire_owned()
            .await
            .expect("never closed");
        let fut = attack(i);
        let (how, wrong, latest) = (Arc::clone(&how), Arc::clone(&wrong), Arc::clone(&latest));
        tasks.spawn(async move {
            let (ended, right, took) = fut.await;
            drop(permit);
            latest.see(took);
            if !right {
                wrong.add(ended.clone());
            }
            how.add(ended);
        });
    }
    while tasks.join_next().await.is_some() {}
    Ended::from_tallies(n, &how, &wrong, &latest)
}

async fn slowloris(env: &Arc<Env>, n: usize, timeout: Duration) -> Ended {
    // All of them held at once: the permit is only for connecting.
    let opened = Arc::new(Semaphore::new(500));
    let mut ended = many(n, n, |i| {
        let env = Arc::clone(env);
        let opened = Arc::clone(&opened);
        async move {
            let started = Instant::now();
            let permit = opened.acquire().await.expect("never closed");
            let stream = env.connect(None).await;
            drop(permit);
            let Ok(mut stream) = stream else {
                return ("connect failed".to_owned(), false, started.elapsed());
            };
            let request = env.upgrade(&format!("slow{i}"));
            let (mut read, mut write) = stream.split();
            let trickle = async {
                for byte in request.as_bytes() {
                    if write.write_all(&[*byte]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                std::future::pending::<()>().await;
            };
            let answer = async {
                let mut head = Vec::new();
                let mut buf = [0u8; 256];
                while let Ok(n) = read.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    head.extend_from_slice(&buf[..n]);
                }
                head
            };
            let head = tokio::select! {
                head = answer => head,
                () = trickle => Vec::new(),
                () = tokio::time::sleep(timeout + SLACK * 4) => return ("open".to_owned(), false, started.elapsed()),
            };
            let took = started.elapsed();
            let text = String::from_utf8_lossy(&head);
            let how = match text.strip_prefix("HTTP/1.1 ").and_then(|t| t.get(..3)) {
                Some(code) => format!("status {code}"),
                None => "cut".to_owned(),
            };
            let right = how == "status 408" && took <= timeout + SLACK;
            (how, right, took)
        }
    })
    .await;
    ended.within = Some(timeout + SLACK);
    ended
}

async fn huge_frames(env: &Arc<Env>, n: usize) -> Ended {
    let mut ended = many(n, 200, |i| {
        let env = Arc::clone(env);
        async move {
            let mut stream = match env.upgraded(&format!("huge{i}"), None).await {
                Ok(s) => s,
                Err(e) => return (e, false, Duration::ZERO),
            };
            let started = Instant::now();
            let len: u64 = if i % 2 == 0 { 1 << 62 } else { 16 << 20 };
            let mut head = vec![0x82];
            header_len(&mut head, len, true);
            head.extend_from_slice(&[1, 2, 3, 4]);
            let _ = stream.write_all(&head).await;
            let (mut read, mut write) = stream.split();
            let trickle = async {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if write.write_all(b"x").await.is_err() {
                        break;
                    }
                }
                std::future::pending::<()>().await;
            };
            let mut rest = read_close_half(&mut read, Duration::from_secs(10));
            let how = tokio::select! {
                how = &mut rest => how,
                () = trickle => "cut".to_owned(),
            };
            let took = started.elapsed();
            let right = how == "close 1009" && took <= SLACK;
            (how, right, took)
        }
    })
    .await;
    ended.within = Some(SLACK);
    ended
}

/// [`read_close`] on the read half of a split stream.
fn read_close_half<'a>(
    read: &'a mut tokio::net::tcp::ReadHalf<'_>,
    wait: Duration,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send + 'a>> {
    Box::pin(async move {
        let mut first = [0u8; 2];
        match tokio::time::timeout(wait, read.read_exact(&mut first)).await {
            Err(_) => return "open".to_owned(),
            Ok(Err(_)) => return "cut".to_owned(),
            Ok(Ok(_)) => {}
        }
        if first[0] & 0x0f != 0x8 {
            return format!("opcode {}", first[0] & 0x0f);
        }
        let len = usize::from(first[1] & 0x7f);
        let mut payload = vec![0u8; len];
        if len < 2 || read.read_exact(&mut payload).await.is_err() {
            return "close no code".to_owned();
        }
        format!("close {}", u16::from_be_bytes([payload[0], payload[1]]))
    })
}

async fn slow_consumers(env: &Arc<Env>, n: usize, timeout: Duration) -> Ended {
    let mut ended = many(n, n, |i| {
        let env = Arc::clone(env);
        async move {
            let mut stream = match env.upgraded(&format!("slowc{i}"), Some(4096)).await {
                Ok(s) => s,
                Err(e) => return (e, false, Duration::ZERO),
            };
            let started = Instant::now();
            // 512 KiB of echoes asked for, in 8 messages of 64 KiB.
            let message = frame(true, 0x2, &vec![0x5a; 64 * 1024]);
            for _ in 0..8 {
                if stream.write_all(&message).await.is_err() {
                    break;
                }
            }
            // Never read; the gateway cuts such a client with unread data
            // of its own still queued, which is a TCP reset: it shows as
            // the socket's pending error (SO_ERROR) without a read, at
            // the moment it came.
            let mut look = tokio::time::interval(Duration::from_millis(100));
            let must_end = timeout + SLACK;
            while started.elapsed() < must_end {
                look.tick().await;
                if let Ok(Some(_)) = stream.take_error() {
                    return ("cut".to_owned(), true, started.elapsed());
                }
            }
            // Not reset by now: what it reads says how it ended (late).
            let how = read_close(&mut stream, Duration::from_secs(2)).await;
            let took = started.elapsed();
            // A consumer that does not read cannot get a close frame
            // either: the gateway cuts it (or closes it, if it had room).
            let right = (how == "cut" || how.starts_with("close 10")) && took <= must_end;
            (how, right, took)
        }
    })
    .await;
    ended.within = Some(timeout + SLACK);
    ended
}

/// Bad upgrade requests and the status each must get.
fn malformed_requests(path: &str) -> Vec<(&'static str, String, u16)> {
    let good = |extra: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    };
    let long = "a".repeat(64 * 1024);
    vec![
        ("not http", "HELLO\r\n\r\n".to_owned(), 400),
        (
            "bad header",
            format!("GET {path} HTTP/1.1\r\nHo st: x\r\n\r\n"),
            400,
        ),
        ("post", good("").replacen("GET", "POST", 1), 400),
        ("http/1.0", good("").replace("HTTP/1.1", "HTTP/1.0"), 400),
        ("no host", good("").replace("Host: h\r\n", ""), 400),
        (
            "no upgrade",
            good("").replace("Upgrade: websocket\r\n", ""),
            400,
        ),
        (
            "version 8",
            good("").replace("Version: 13", "Version: 8"),
            426,
        ),
        (
            "bad key",
            good("").replace("dGhlIHNhbXBsZSBub25jZQ==", "short"),
            400,
        ),
        ("no route", good("").replacen(path, "/nowhere", 1), 404),
        (
            "too many headers",
            good(&(0..70).map(|i| format!("X-{i}: v\r\n")).collect::<String>()),
            431,
        ),
        ("64 KiB header", good(&format!("X-Big: {long}\r\n")), 431),
        (
            "64 KiB uri",
            good("").replacen(path, &format!("{path}{long}"), 1),
            431,
        ),
        (
            "content-length body",
            good("Content-Length: 5\r\n") + "hello",
            400,
        ),
        (
            "chunked body",
            good("Transfer-Encoding: chunked\r\n") + "5\r\nhello\r\n0\r\n\r\n",
            400,
        ),
        (
            "length and chunked",
            good("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n") + "hello",
            400,
        ),
        (
            "two lengths",
            good("Content-Length: 5\r\nContent-Length: 5\r\n") + "hello",
            400,
        ),
    ]
}

async fn malformed(env: &Arc<Env>) -> Ended {
    let cases = malformed_requests(&env.path);
    let repeat = 20;
    let cases = Arc::new(cases);
    many(cases.len() * repeat, 50, |i| {
        let env = Arc::clone(env);
        let cases = Arc::clone(&cases);
        async move {
            let (name, request, want) = &cases[i % cases.len()];
            let started = Instant::now();
            let Ok(mut stream) = env.connect(None).await else {
                return ("connect failed".to_owned(), false, started.elapsed());
            };
            // The whole request first, as most clients send it.
            let sent = stream.write_all(request.as_bytes()).await;
            let status = read_status(&mut stream, Duration::from_secs(5)).await;
            let took = started.elapsed();
            let how = match (status, &sent) {
                (Some(s), Ok(())) => format!("{name}: status {s}"),
                (Some(s), Err(_)) => format!("{name}: status {s} after a reset while sending"),
                (None, _) => format!("{name}: no answer"),
            };
            (how, status == Some(*want) && sent.is_ok(), took)
        }
    })
    .await
}

/// Frames that break RFC 6455 and the close code each must get.
fn violations() -> Vec<(&'static str, Vec<u8>, u16)> {
    let mut unmasked = vec![0x81, 5];
    unmasked.extend_from_slice(b"hello");
    vec![
        ("reserved opcode", frame(true, 0x3, b"x"), 1002),
        (
            "reserved bits",
            {
                let mut f = frame(true, 0x1, b"x");
                f[0] |= 0x40;
                f
            },
            1002,
        ),
        ("unmasked", unmasked, 1002),
        ("fragmented ping", frame(false, 0x9, b"x"), 1002),
        ("long ping", frame(true, 0x9, &[0; 126]), 1002),
        ("lone continuation", frame(true, 0x0, b"x"), 1002),
        (
            "interleaved message",
            {
                let mut f = frame(false, 0x1, b"a");
                f.extend(frame(true, 0x1, b"b"));
                f
            },
            1002,
        ),
        (
            "close code 999",
            frame(true, 0x8, &999u16.to_be_bytes()),
            1002,
        ),
        (
            "close code 5000",
            frame(true, 0x8, &5000u16.to_be_bytes()),
            1002,
        ),
        ("one-byte close", frame(true, 0x8, &[3]), 1002),
        ("invalid utf-8", frame(true, 0x1, &[0xff, 0xfe]), 1007),
        (
            "oversize frame",
            {
                let mut f = vec![0x82];
                header_len(&mut f, 2 << 20, true);
                f.extend_from_slice(&[1, 2, 3, 4]);
                f
            },
            1009,
        ),
    ]
}

async fn frame_violations(env: &Arc<Env>) -> Ended {
    let cases = Arc::new(violations());
    let repeat = 20;
    let mut ended = many(cases.len() * repeat, 50, |i| {
        let env = Arc::clone(env);
        let cases = Arc::clone(&cases);
        async move {
            let (name, bytes, want) = &cases[i % cases.len()];
            let mut stream = match env.upgraded(&format!("bad{i}"), None).await {
                Ok(s) => s,
                Err(e) => return (format!("{name}: {e}"), false, Duration::ZERO),
            };
            let started = Instant::now();
            let _ = stream.write_all(bytes).await;
            let how = read_close(&mut stream, SLACK * 2).await;
            let took = started.elapsed();
            // The gateway does not check UTF-8 or close payloads: it passes
            // on what the backend does about them, and a backend may fail
            // the connection by dropping TCP (RFC 6455 7.1.7), as the echo
            // backend does. The client then sees that too (docs/closing.md).
            let passed_on = matches!(*name, "invalid utf-8" | "one-byte close") && how == "cut";
            let right = (how == format!("close {want}") || passed_on) && took <= SLACK;
            (format!("{name}: {how}"), right, took)
        }
    })
    .await;
    ended.within = Some(SLACK);
    ended
}

async fn churn(env: &Arc<Env>, n: usize, per_second: u32) -> Ended {
    let started = Instant::now();
    let every = Duration::from_secs(1) / per_second;
    many(n, 256, |i| {
        let env = Arc::clone(env);
        let at = started + every * u32::try_from(i).unwrap_or(u32::MAX);
        async move {
            tokio::time::sleep_until(at.into()).await;
            let Ok(stream) = env.connect(None).await else {
                return ("connect failed".to_owned(), false, Duration::ZERO);
            };
            let reset = reset(stream);
            ("reset".to_owned(), reset.is_ok(), Duration::ZERO)
        }
    })
    .await
}

async fn half_sent(env: &Arc<Env>, n: usize) -> Ended {
    let request = env.upgrade("half");
    let half = request.len() / 2;
    let held = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let mut ended = many(n, 200, |_| {
        let env = Arc::clone(env);
        let held = Arc::clone(&held);
        let part = request.as_bytes()[..half].to_vec();
        async move {
            let Ok(mut stream) = env.connect(None).await else {
                return ("connect failed".to_owned(), false, Duration::ZERO);
            };
            let _ = stream.write_all(&part).await;
            held.lock().expect("not poisoned").push(stream);
            ("reset".to_owned(), true, Duration::ZERO)
        }
    })
    .await;
    // Every one of them reset at once.
    let streams = std::mem::take(&mut *held.lock().expect("not poisoned"));
    for stream in streams {
        if reset(stream).is_err() {
            *ended.wrong.entry("no reset".to_owned()).or_default() += 1;
        }
    }
    ended
}

/// Closes `stream` with a reset instead of a FIN (SO_LINGER 0).
fn reset(stream: TcpStream) -> std::io::Result<()> {
    // Deprecated because a non-zero linger blocks the thread on drop; a
    // zero linger never waits.
    #[allow(deprecated)]
    stream.set_linger(Some(Duration::ZERO))
}

/// The gateway process, seen through /proc.
#[derive(Clone, Debug)]
struct Gateway {
    pid: u32,
}

impl Gateway {
    fn new(pid: u32) -> anyhow::Result<Self> {
        let g = Self { pid };
        g.sample()
            .with_context(|| format!("reading /proc/{pid} (is --pid the gateway's?)"))?;
        Ok(g)
    }

    fn alive(&self) -> bool {
        self.sample().is_some()
    }

    /// RSS in bytes and open descriptors.
    fn sample(&self) -> Option<Sample> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        if status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains("zombie"))
        {
            return None;
        }
        let rss_kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .ok()?
            .count() as u64;
        Some(Sample {
            rss: rss_kb * 1024,
            fds,
        })
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    rss: u64,
    fds: u64,
}

/// Samples the gateway every 100 ms and keeps the peak since the last reset.
struct Sampler {
    last: Arc<Mutex<(Sample, Sample)>>,
}

impl Sampler {
    fn start(gateway: Gateway) -> Self {
        let first = gateway.sample().unwrap_or_default();
        let last = Arc::new(Mutex::new((first, first)));
        let shared = Arc::clone(&last);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                let Some(s) = gateway.sample() else { break };
                let mut l = shared.lock().expect("not poisoned");
                l.0 = s;
                l.1.rss = l.1.rss.max(s.rss);
                l.1.fds = l.1.fds.max(s.fds);
            }
        });
        Self { last }
    }

    fn now(&self) -> Sample {
        self.last.lock().expect("not poisoned").0
    }

    fn peak(&self) -> Sample {
        self.last.lock().expect("not poisoned").1
    }

    fn reset_peak(&self) {
        let mut l = self.last.lock().expect("not poisoned");
        l.1 = l.0;
    }
}

/// The legitimate client: `ringway-load steady` as a child process (a
/// stamped message every 10 ms, each echo timed), optionally under
/// `chrt -f` so that the attackers in this process cannot delay it; its
/// round trips are read from its output as they come.
struct Legit {
    rtt: Arc<Mutex<Histogram<u64>>>,
    child: tokio::process::Child,
    task: tokio::task::JoinHandle<Option<SteadyEnd>>,
}

impl Legit {
    async fn start(url: String, priority: u8) -> anyhow::Result<Self> {
        let exe =
            std::env::current_exe().context("finding this binary to run the legitimate client")?;
        let every = LEGIT_EVERY.as_millis().to_string();
        let size = LEGIT_SIZE.to_string();
        let mut command = if priority > 0 {
            let mut c = tokio::process::Command::new("chrt");
            c.args(["-f", &priority.to_string()]).arg(&exe);
            c
        } else {
            tokio::process::Command::new(&exe)
        };
        let mut child = command
            .args([
                "--json",
                "steady",
                "--url",
                &url,
                "--every-ms",
                &every,
                "--size",
                &size,
            ])
            .env("RINGWAY_LOAD_THREADS", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting the legitimate client ({})", exe.display()))?;
        let stdout = child
            .stdout
            .take()
            .context("the legitimate client's output")?;
        let rtt = Arc::new(Mutex::new(nanos_histogram()));
        let hist = Arc::clone(&rtt);
        let (first_tx, first_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let mut first = Some(first_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(took) = line.strip_prefix(RTT_LINE) {
                    if let Some(first) = first.take() {
                        let _ = first.send(());
                    }
                    if let Ok(took) = took.parse::<u64>() {
                        let _ = hist.lock().expect("not poisoned").record(took);
                    }
                } else if let Ok(value) = serde_json::from_str::<Value>(&line) {
                    return SteadyEnd::from_json(&value);
                }
            }
            None
        });
        // The baseline starts with the first echo, not with the connect.
        tokio::time::timeout(Duration::from_secs(10), first_rx)
            .await
            .ok()
            .and_then(Result::ok)
            .with_context(|| format!("the legitimate client got no echo from {url} within 10 s"))?;
        Ok(Self { rtt, child, task })
    }

    /// The round trips since the last take.
    fn take(&self) -> Histogram<u64> {
        std::mem::replace(
            &mut *self.rtt.lock().expect("not poisoned"),
            nanos_histogram(),
        )
    }

    /// Closes the client's input (it stops sending, waits for its echoes)
    /// and reads what it lost.
    async fn stop(mut self) -> SteadyEnd {
        drop(self.child.stdin.take());
        let end = tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .ok()
            .and_then(Result::ok)
            .flatten();
        let _ = self.child.wait().await;
        end.unwrap_or(SteadyEnd {
            errors: 1,
            ..SteadyEnd::default()
        })
    }
}

/// One attack's line of the table.
struct Row {
    name: &'static str,
    ended: Ended,
    took: Duration,
    before: Sample,
    peak: Sample,
    after: Sample,
    rtt: Histogram<u64>,
}

/// Memory may stay this much above where it was before an attack: what
/// the allocator keeps in its thread caches and metadata, and the
/// gateway's tables that keep their capacity.
const RSS_SLACK: u64 = 1 << 20;
/// And descriptors.
const FD_SLACK: u64 = 8;

impl Row {
    fn problems(&self, baseline: &Histogram<u64>) -> Vec<String> {
        let mut out = Vec::new();
        if !self.ended.wrong.is_empty() {
            out.push(format!(
                "{}: {} connections ended wrongly or late: {}",
                self.name,
                self.ended.wrong.values().sum::<u64>(),
                describe_counts(&self.ended.wrong)
            ));
        }
        let (p, base) = (Percentiles::of(&self.rtt), Percentiles::of(baseline));
        if p.count > 0 && p.p99_us > 2.0 * base.p99_us {
            out.push(format!(
                "{}: the legitimate client's p99 was {:.0} µs, more than twice its baseline {:.0} µs",
                self.name, p.p99_us, base.p99_us
            ));
        }
        if self.after.rss > self.before.rss + RSS_SLACK {
            out.push(format!(
                "{}: RSS {:.1} MB after the attack, {:.1} MB before",
                self.name,
                mb(self.after.rss),
                mb(self.before.rss)
            ));
        }
        if self.after.fds > self.before.fds + FD_SLACK {
            out.push(format!(
                "{}: {} descriptors open after the attack, {} before",
                self.name, self.after.fds, self.before.fds
            ));
        }
        out
    }

    /// RSS per hostile connection at the peak, in bytes.
    fn per_connection(&self) -> f64 {
        self.peak.rss.saturating_sub(self.before.rss) as f64 / self.ended.connections.max(1) as f64
    }

    fn json(&self) -> Value {
        let p = Percentiles::of(&self.rtt);
        json!({
            "attack": self.name,
            "connections": self.ended.connections,
            "ended": self.ended.how,
            "wrong": self.ended.wrong,
            "latest_end_s": round1(self.ended.latest.as_secs_f64()),
            "must_end_within_s": self.ended.within.map(|d| round1(d.as_secs_f64())),
            "took_s": round1(self.took.as_secs_f64()),
            "rss_mb": {"before": round1(mb(self.before.rss)), "peak": round1(mb(self.peak.rss)), "after": round1(mb(self.after.rss))},
            "rss_per_connection_bytes": self.per_connection().round(),
            "fds": {"before": self.before.fds, "peak": self.peak.fds, "after": self.after.fds},
            "legit_rtt": p.json(),
        })
    }
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

fn report(
    baseline: &Histogram<u64>,
    rows: &[Row],
    legit: &SteadyEnd,
    problems: Vec<String>,
) -> Report {
    let base = Percentiles::of(baseline);
    let mut lines = vec![
        format!("legitimate client, baseline: {}", base.human()),
        "| attack | connections | how they ended | latest end (must be within) | RSS before → peak → after (MB) | per held connection | fds before → peak → after | legitimate p99 / max |".to_owned(),
        "| --- | ---: | --- | --- | --- | ---: | --- | --- |".to_owned(),
    ];
    for r in rows {
        let p = Percentiles::of(&r.rtt);
        lines.push(format!(
            "| {} | {} | {} | {:.1} s ({}) | {:.1} → {:.1} → {:.1} | {:.0} B | {} → {} → {} | {:.0} µs / {:.0} µs |",
            r.name,
            r.ended.connections,
            describe_counts(&r.ended.how),
            r.ended.latest.as_secs_f64(),
            r.ended
                .within
                .map_or_else(|| "—".to_owned(), |d| format!("{:.0} s", d.as_secs_f64())),
            mb(r.before.rss),
            mb(r.peak.rss),
            mb(r.after.rss),
            r.per_connection(),
            r.before.fds,
            r.peak.fds,
            r.after.fds,
            p.p99_us,
            p.max_us,
        ));
    }
    lines.push(format!("legitimate client: {legit}"));
    if problems.is_empty() {
        lines.push("every check passed".to_owned());
    } else {
        lines.extend(problems.iter().map(|p| format!("problem: {p}")));
    }
    Report {
        json: json!({
            "baseline_rtt": base.json(),
            "attacks": rows.iter().map(Row::json).collect::<Vec<_>>(),
            "legit": legit.json(),
            "problems": problems,
        }),
        lines,
        problem: (!problems.is_empty()).then(|| problems.join("; ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_masked_and_sized() {
        let f = frame(true, 0x1, b"hi");
        assert_eq!(f[0], 0x81);
        assert_eq!(f[1], 0x80 | 2);
        assert_eq!(f.len(), 2 + 4 + 2);
        let mut big = Vec::new();
        header_len(&mut big, 1 << 62, true);
        assert_eq!(big[0], 0x80 | 127);
        assert_eq!(big[1..9], (1u64 << 62).to_be_bytes());
    }

    #[test]
    fn the_route_path_comes_from_the_url() {
        assert_eq!(path_of("ws://127.0.0.1:8080/echo"), "/echo");
        assert_eq!(path_of("ws://127.0.0.1:8080/echo?x=1"), "/echo?x=1");
        assert_eq!(path_of("ws://127.0.0.1:8080"), "/");
    }

    #[test]
    fn every_malformed_request_expects_a_refusal() {
        for (name, request, status) in malformed_requests("/echo") {
            assert!((400..500).contains(&status), "{name}");
            assert!(!request.is_empty(), "{name}");
        }
    }
}
