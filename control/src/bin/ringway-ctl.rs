//! `ringway-ctl`: reads the status of data-plane pods and drains them over
//! the control channel, with the operator's client certificate.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use futures_util::future::join_all;
use ringway_control::proto::{DrainRequest, PodStatus, Version};
use ringway_control::{ControlClient, Options, RpcError, TlsIdentity, pki};

/// Talks to Ringway data-plane pods over their control port (mutual TLS).
#[derive(Debug, Parser)]
#[command(name = "ringway-ctl", version)]
struct Cli {
    /// The gateway's CA certificate (PEM).
    #[arg(long, value_name = "FILE", env = "RINGWAY_CTL_CA")]
    ca: PathBuf,
    /// The client certificate (PEM), issued by the CA for client use.
    #[arg(long, value_name = "FILE", env = "RINGWAY_CTL_CERT")]
    cert: PathBuf,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", env = "RINGWAY_CTL_KEY")]
    key: PathBuf,
    /// The name the pods' certificates carry.
    #[arg(long, value_name = "NAME", default_value = pki::SERVER_NAME)]
    server_name: String,
    /// Deadline of each RPC attempt, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    timeout_ms: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Prints each pod's shard, epoch, readiness and connection counts.
    Status {
        /// `host:port` of each pod's control port.
        #[arg(required = true, value_name = "ADDRESS")]
        addresses: Vec<String>,
    },
    /// Drains all connections of each pod (before removing it).
    Drain {
        /// `host:port` of each pod's control port.
        #[arg(required = true, value_name = "ADDRESS")]
        addresses: Vec<String>,
        /// Spread the closes over this window; 0 uses the snapshot's.
        #[arg(long, value_name = "N", default_value_t = 0)]
        window_ms: u32,
        /// At most this many closes per second; 0 uses the snapshot's.
        #[arg(long, value_name = "N", default_value_t = 0)]
        rate: u32,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("ringway-ctl: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the command; `Ok(false)` when some pod failed.
async fn run(cli: Cli) -> anyhow::Result<bool> {
    let identity = TlsIdentity {
        ca_pem: read(&cli.ca)?,
        cert_pem: read(&cli.cert)?,
        key_pem: read(&cli.key)?,
        server_name: cli.server_name,
    };
    let options = Options {
        rpc_timeout: Duration::from_millis(cli.timeout_ms.max(1)),
        ..Options::default()
    };
    let client = ControlClient::new(&identity, options)?;
    let mut all_ok = true;
    match cli.command {
        Command::Status { addresses } => {
            let results = join_all(addresses.iter().map(|a| client.status(a))).await;
            for (address, result) in addresses.iter().zip(results) {
                match result {
                    Ok(status) => print!("{}", format_status(address, &status)),
                    Err(error) => all_ok &= report(&error),
                }
            }
        }
        Command::Drain {
            addresses,
            window_ms,
            rate,
        } => {
            let request = DrainRequest {
                window_ms,
                max_closes_per_second: rate,
            };
            let results = join_all(addresses.iter().map(|a| client.drain(a, request))).await;
            for (address, result) in addresses.iter().zip(results) {
                match result {
                    Ok(response) => println!(
                        "{address}: {} connection{} scheduled to drain",
                        response.draining,
                        if response.draining == 1 { "" } else { "s" }
                    ),
                    Err(error) => all_ok &= report(&error),
                }
            }
        }
    }
    Ok(all_ok)
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Prints a failed pod to stderr; always `false`.
fn report(error: &RpcError) -> bool {
    eprintln!("{error}");
    false
}

fn format_status(address: &str, status: &PodStatus) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let _ = writeln!(out, "{address}");
    let _ = writeln!(out, "  shard:      {}", status.shard_id);
    let _ = writeln!(out, "  epoch:      {}", status.epoch);
    let _ = writeln!(out, "  ready:      {}", yes_no(status.ready));
    let _ = writeln!(out, "  draining:   {}", status.draining);
    let _ = writeln!(out, "  relayed:    {}", status.relayed);
    let total: u64 = status.connections.iter().map(|c| c.count).sum();
    let _ = writeln!(out, "  connections: {total}");
    for count in &status.connections {
        let version = match Version::try_from(count.version) {
            Ok(Version::Stable) => "stable",
            Ok(Version::Canary) => "canary",
            _ => "unspecified",
        };
        let _ = writeln!(out, "    {version:<8} {:<24} {}", count.route, count.count);
    }
    let failures: u64 = status.handshake_failures.iter().map(|r| r.count).sum();
    let _ = writeln!(out, "  handshake failures: {failures}");
    for reason in &status.handshake_failures {
        let _ = writeln!(out, "    {:<33} {}", reason.reason, reason.count);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringway_control::proto::{ConnectionCount, ReasonCount};

    #[test]
    fn cli_parses() {
        let cli = Cli::try_parse_from([
            "ringway-ctl",
            "--ca",
            "ca.pem",
            "--cert",
            "c.pem",
            "--key",
            "k.pem",
            "drain",
            "10.0.0.7:7443",
            "10.0.0.8:7443",
            "--window-ms",
            "3000",
            "--rate",
            "50",
        ])
        .unwrap();
        assert_eq!(cli.server_name, pki::SERVER_NAME);
        match cli.command {
            Command::Drain {
                addresses,
                window_ms,
                rate,
            } => {
                assert_eq!(addresses.len(), 2);
                assert_eq!((window_ms, rate), (3000, 50));
            }
            Command::Status { .. } => panic!("parsed as status"),
        }
        assert!(
            Cli::try_parse_from([
                "ringway-ctl",
                "--ca",
                "a",
                "--cert",
                "b",
                "--key",
                "c",
                "status"
            ])
            .is_err()
        );
    }

    #[test]
    fn status_is_readable() {
        let status = PodStatus {
            shard_id: "gw-a-0".into(),
            epoch: 7,
            ready: true,
            connections: vec![
                ConnectionCount {
                    version: Version::Stable as i32,
                    route: "chat".into(),
                    count: 10,
                },
                ConnectionCount {
                    version: Version::Canary as i32,
                    route: "chat".into(),
                    count: 2,
                },
            ],
            draining: 1,
            handshake_failures: vec![ReasonCount {
                reason: "no_route".into(),
                count: 3,
            }],
            ..PodStatus::default()
        };
        let text = format_status("10.0.0.7:7443", &status);
        assert!(text.starts_with("10.0.0.7:7443\n"));
        assert!(text.contains("shard:      gw-a-0"));
        assert!(text.contains("epoch:      7"));
        assert!(text.contains("ready:      yes"));
        assert!(text.contains("connections: 12"));
        assert!(text.contains("canary"));
        assert!(text.contains("handshake failures: 3"));
        assert!(text.contains("no_route"));
    }
}
