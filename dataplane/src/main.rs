//! `ringway-dataplane`: the data-plane binary, from a config file
//! (standalone or a shard) or, with `sidecar`, from flags beside an
//! application in its pod.

use std::{io::IsTerminal, path::PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use ringway_dataplane::{
    Config, Error, Server, Shutdown,
    config::ControlConfig,
    open_files,
    sidecar::{DrainToken, SidecarArgs},
};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

/// jemalloc, with its background thread, not glibc's malloc: after an
/// attack that held thousands of connections (a slowloris), glibc kept
/// most of the peak resident for the rest of the run (25 MB of a 46 MB
/// peak, against 5.4 MB before): its free memory is fragmented, and only
/// the top of a heap goes back to the system. jemalloc's background thread
/// returns unused pages over its decay time (10 s). `e2e/bench/hostile.sh`
/// measures it.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Holds client WebSockets and routes each one by a consistent hash of its key.
#[derive(Debug, Parser)]
#[command(version, about, subcommand_negates_reqs = true)]
struct Args {
    /// Standalone configuration file (routes and static backends, no operator).
    #[arg(long, env = "RINGWAY_CONFIG", required = true)]
    config: Option<PathBuf>,
    /// This pod's shard id (the pod name), overriding `shard.id` in the config.
    #[arg(long, env = "RINGWAY_SHARD_ID")]
    shard_id: Option<String>,
    /// Log format.
    #[arg(long, env = "RINGWAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    /// Log filter (tracing-subscriber's EnvFilter syntax).
    #[arg(long, env = "RINGWAY_LOG", default_value = "info", global = true)]
    log: String,
    #[command(subcommand)]
    mode: Option<Mode>,
}

/// Modes other than the default (`--config`).
#[derive(Debug, Subcommand)]
enum Mode {
    /// Run beside an application's container in its pod, in front of its
    /// WebSocket port on loopback (the operator's injector writes this
    /// into annotated pods). The drain token, if any, comes from the
    /// environment (`RINGWAY_DRAIN_TOKEN`).
    Sidecar(SidecarArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log).context("--log")?;
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter);
    match args.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let launch = match &args.mode {
        None => Launch::File(from_file(&args)?),
        Some(Mode::Sidecar(sidecar)) => {
            if args.config.is_some() || args.shard_id.is_some() {
                anyhow::bail!(
                    "`sidecar` takes its settings from its flags: drop --config and --shard-id \
                     (or RINGWAY_CONFIG and RINGWAY_SHARD_ID)"
                );
            }
            Launch::Sidecar {
                config: sidecar.config().map_err(Error::from)?,
                token: DrainToken::from_env().map_err(Error::from)?,
                control: sidecar.control(),
            }
        }
    };
    let config = launch.config();
    check_open_files(config.connections.max_connections);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if config.runtime.worker_threads > 0 {
        runtime.worker_threads(config.runtime.worker_threads);
    }
    runtime.enable_all().build()?.block_on(run(launch))
}

/// What the process runs.
enum Launch {
    /// A config file: standalone, or a shard.
    File(Config),
    /// A sidecar, from its flags, with the drain token of the environment
    /// and its control port, if `--control-tls-dir` was given.
    Sidecar {
        config: Config,
        token: Option<DrainToken>,
        control: Option<ControlConfig>,
    },
}

impl Launch {
    fn config(&self) -> &Config {
        match self {
            Self::File(config) | Self::Sidecar { config, .. } => config,
        }
    }
}

/// The config file, with `--shard-id` over its shard id.
fn from_file(args: &Args) -> anyhow::Result<Config> {
    let path = args.config.as_ref().context("--config is required")?;
    let mut config = Config::load(path).map_err(Error::from)?;
    if let Some(id) = &args.shard_id {
        match config.shard.as_mut() {
            Some(shard) => shard.id.clone_from(id),
            None => anyhow::bail!("--shard-id needs a `shard` section in the config"),
        }
    }
    Ok(config)
}

/// Raises the open-files limit as far as it goes, and says so when that is
/// still too few for `max_connections`.
fn check_open_files(max_connections: usize) {
    let limits = match open_files::raise() {
        Ok(limits) => limits,
        Err(e) => {
            warn!(error = %e, "could not raise the open-files limit");
            return;
        }
    };
    if limits.before != limits.now {
        info!(before = ?limits.before, now = ?limits.now, "raised the open-files soft limit to the hard limit");
    }
    let needed = open_files::needed(max_connections);
    if let (Some(limit), Some(room)) = (limits.now, limits.connections())
        && limit < needed
    {
        warn!(
            limit,
            needed,
            max_connections,
            room,
            "connections.maxConnections needs more file descriptors than this process may open: \
             accepts fail past about `room` connections; raise the hard limit (ulimit -Hn, or the \
             container runtime's) or lower maxConnections"
        );
    }
}

/// Serves until SIGTERM (graceful) or SIGINT (fast).
async fn run(launch: Launch) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let server = match launch {
        Launch::File(config) => Server::bind(config).await?,
        Launch::Sidecar {
            config,
            token,
            control,
        } => Server::bind_sidecar(config, token, control).await?,
    };
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => Shutdown::Graceful,
            _ = int.recv() => Shutdown::Fast,
        }
    };
    server.run(shutdown).await?;
    Ok(())
}
