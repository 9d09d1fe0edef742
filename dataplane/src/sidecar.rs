//! Sidecar mode (`ringway-dataplane sidecar`): the data plane beside one
//! application container in its pod, in front of the application's
//! WebSocket port on loopback. Its flags build the [`Config`] a file would
//! give (one route `/` to `127.0.0.1:<app port>`), so that it runs through
//! the standalone path; and its drain token lets the application's preStop
//! hook, which the kubelet sends from the node rather than the pod's
//! loopback, drain it; and its control port, served when its certificate
//! is mounted, through which the operator paces that drain
//! ([`ringway_dataplane_api::sidecar`] is the contract with the injector
//! that writes all of these into the pod).

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
};

use ringway_dataplane_api::{defaults, sidecar};

use crate::{
    config::{
        AdminConfig, Config, ConnectionConfig, ControlConfig, DrainConfig, KeyConfig,
        ListenerConfig, RouteConfig,
    },
    error::ConfigError,
    routing::{KeyKind, MissingKey},
};

/// The flags of `ringway-dataplane sidecar`.
#[derive(Clone, Debug, clap::Args)]
pub struct SidecarArgs {
    /// The application's WebSocket port, on loopback (127.0.0.1).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub app_port: u16,
    /// The port clients connect to, in place of the application's.
    #[arg(long, default_value_t = sidecar::LISTEN_PORT, value_parser = clap::value_parser!(u16).range(1..))]
    pub listen_port: u16,
    /// The admin port: `/healthz`, `/readyz`, `/metrics` and the drain the
    /// application's preStop hook asks for.
    #[arg(long, default_value_t = sidecar::ADMIN_PORT, value_parser = clap::value_parser!(u16).range(1..))]
    pub admin_port: u16,
    /// Seconds the closes of the drain are spread over.
    #[arg(long, default_value_t = f64::from(defaults::DRAIN_WINDOW_SECONDS))]
    pub drain_window_seconds: f64,
    /// At most this many closes per second during the drain.
    #[arg(long, default_value_t = sidecar::MAX_CLOSES_PER_SECOND)]
    pub max_closes_per_second: u32,
    /// Most client connections held at once; more are answered 503.
    #[arg(long, default_value_t = defaults::MAX_CONNECTIONS_PER_POD as usize)]
    pub max_connections: usize,
    /// The pod's `terminationGracePeriodSeconds`: the drain is shortened,
    /// if need be, so that it ends (and the application gets its SIGTERM)
    /// before the kubelet's deadline.
    #[arg(long)]
    pub termination_grace_seconds: Option<f64>,
    /// A directory with the control port's CA, certificate and key
    /// (`ca.crt`, `tls.crt`, `tls.key`: the injector mounts the Secret
    /// `ringway-sidecar-control` there). With them the sidecar serves the
    /// control port, through which the operator paces its drain within the
    /// workload's budget; without them (or unreadable) it warns and paces
    /// its drain locally.
    #[arg(long)]
    pub control_tls_dir: Option<PathBuf>,
    /// The control port (with `--control-tls-dir`).
    #[arg(long, default_value_t = sidecar::CONTROL_PORT, value_parser = clap::value_parser!(u16).range(1..))]
    pub control_port: u16,
}

/// The name of the sidecar's one route, in metrics and logs.
pub const ROUTE: &str = "app";

/// The header a client may name its key in. There is one backend, so the
/// key decides nothing; a request without it gets a random one.
const KEY_HEADER: &str = "x-ringway-key";

/// Each flag that sets a config key, for errors that name the flag.
const FLAGS: [(&str, &str); 3] = [
    ("drain.windowSeconds", "--drain-window-seconds"),
    ("drain.maxClosesPerSecond", "--max-closes-per-second"),
    ("connections.maxConnections", "--max-connections"),
];

impl SidecarArgs {
    /// The config these flags describe, checked as a file's is; a value
    /// refused is named by its flag.
    pub fn config(&self) -> Result<Config, ConfigError> {
        for (flag, port) in [
            ("--listen-port", self.listen_port),
            ("--admin-port", self.admin_port),
        ] {
            if port == self.app_port {
                return Err(ConfigError::PortClash { flag, port });
            }
        }
        if self.listen_port == self.admin_port {
            return Err(ConfigError::PortClash {
                flag: "--admin-port",
                port: self.admin_port,
            });
        }
        if self.control_tls_dir.is_some()
            && [self.app_port, self.listen_port, self.admin_port].contains(&self.control_port)
        {
            return Err(ConfigError::PortClash {
                flag: "--control-port",
                port: self.control_port,
            });
        }
        if let Some(grace) = self.termination_grace_seconds
            && !(grace.is_finite() && grace > 0.0)
        {
            return Err(ConfigError::BadGrace(grace));
        }
        let config = self.unchecked_config();
        config.check().map_err(|e| match e {
            ConfigError::Value { key, problem } => ConfigError::Value {
                key: FLAGS
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map_or(key, |(_, flag)| flag),
                problem,
            },
            other => other,
        })?;
        Ok(config)
    }

    /// The control port's address and files, with `--control-tls-dir`
    /// (whether the files are there is for [`Server::bind_sidecar`] to
    /// find out).
    ///
    /// [`Server::bind_sidecar`]: crate::Server::bind_sidecar
    pub fn control(&self) -> Option<ControlConfig> {
        let dir = self.control_tls_dir.as_ref()?;
        Some(ControlConfig {
            address: SocketAddr::from((Ipv4Addr::UNSPECIFIED, self.control_port)),
            cert_file: dir.join(sidecar::CONTROL_CERT_FILE),
            key_file: dir.join(sidecar::CONTROL_KEY_FILE),
            client_ca_file: dir.join(sidecar::CONTROL_CA_FILE),
        })
    }

    /// The config, with the file's defaults for what no flag sets.
    fn unchecked_config(&self) -> Config {
        let everywhere = |port| SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        Config {
            listener: ListenerConfig {
                address: everywhere(self.listen_port),
                reuse_port: false,
                tls: None,
            },
            admin: Some(AdminConfig {
                address: everywhere(self.admin_port),
            }),
            routes: vec![RouteConfig {
                name: ROUTE.to_owned(),
                path_prefix: defaults::PATH_PREFIX.to_owned(),
                key: KeyConfig {
                    source: KeyKind::Header,
                    name: Some(KEY_HEADER.to_owned()),
                    segment: None,
                },
                missing_key: MissingKey::Random,
                backends: vec![SocketAddr::from((Ipv4Addr::LOCALHOST, self.app_port)).to_string()],
            }],
            connections: ConnectionConfig {
                max_connections: self.max_connections,
                ..ConnectionConfig::default()
            },
            drain: {
                let drain = DrainConfig::default();
                DrainConfig {
                    window_seconds: sidecar::fitted_window(
                        self.drain_window_seconds,
                        drain.close_timeout_seconds,
                        self.termination_grace_seconds,
                    ),
                    max_closes_per_second: self.max_closes_per_second,
                    ..drain
                }
            },
            runtime: Default::default(),
            shard: None,
        }
    }
}

/// The secret that lets a request from off the pod's loopback drain the
/// sidecar: the application's preStop hook carries it in
/// [`sidecar::DRAIN_TOKEN_HEADER`].
#[derive(Clone)]
pub struct DrainToken(String);

impl std::fmt::Debug for DrainToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DrainToken(..)")
    }
}

impl DrainToken {
    /// A token: 16 to 256 visible ASCII characters (a header value), no
    /// spaces. The injector writes 32 hex digits (128 bits).
    pub fn new(token: &str) -> Result<Self, ConfigError> {
        if (16..=256).contains(&token.len()) && token.bytes().all(|b| b.is_ascii_graphic()) {
            Ok(Self(token.to_owned()))
        } else {
            Err(ConfigError::DrainToken)
        }
    }

    /// The token in [`sidecar::DRAIN_TOKEN_ENV`], if it is set.
    pub fn from_env() -> Result<Option<Self>, ConfigError> {
        match std::env::var(sidecar::DRAIN_TOKEN_ENV) {
            Ok(token) => Self::new(&token).map(Some),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(ConfigError::DrainToken),
        }
    }

    /// Whether `offered` is the token, compared in constant time.
    pub(crate) fn matches(&self, offered: &[u8]) -> bool {
        crate::secret::same(self.0.as_bytes(), offered)
    }
}

#[cfg(test)]
pub(crate) mod tests;
