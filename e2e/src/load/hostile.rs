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
//!
//! This file runs the attacks in turn and measures around them (the
//! gateway's /proc, the legitimate client, the table); the attacks
//! themselves are in `hostile/attacks.rs`.

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
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpSocket, TcpStream},
};

use super::{
    report::{Percentiles, Report, Tally, describe_counts, nanos_histogram, round1},
    steady::{RTT_LINE, SteadyEnd},
};
use crate::{sources::SourceAddrs, target::Target};

mod attacks;

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
    // The attacks write raw bytes on TCP.
    ensure!(!target.is_tls(), "{}: hostile speaks ws:// only", args.url);
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
            "slowloris" => attacks::slowloris(&env, count(5_000), handshake).await,
            "huge-frames" => attacks::huge_frames(&env, count(2_000)).await,
            "slow-consumers" => attacks::slow_consumers(&env, count(1_000), slow).await,
            "malformed" => attacks::malformed(&env).await,
            "frame-violations" => attacks::frame_violations(&env).await,
            "churn" => attacks::churn(&env, count(20_000), 1_000).await,
            _ => attacks::half_sent(&env, count(2_000)).await,
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
        match attacks::read_status(&mut stream, Duration::from_secs(10)).await {
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
    fn the_route_path_comes_from_the_url() {
        assert_eq!(path_of("ws://127.0.0.1:8080/echo"), "/echo");
        assert_eq!(path_of("ws://127.0.0.1:8080/echo?x=1"), "/echo?x=1");
        assert_eq!(path_of("ws://127.0.0.1:8080"), "/");
    }
}
