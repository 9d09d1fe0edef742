//! The listener: binds the ports, accepts connections (a semaphore caps
//! them, accept errors back off), hands each to its own task
//! ([`crate::connection`]), and stops the process: stop accepting, drain,
//! wait.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    net::{TcpListener, TcpStream},
    time::timeout,
};

use crate::{
    ConfigError, Error,
    config::{Config, ControlConfig, secs},
    connection::{self, Origin},
    handoff::PeerToken,
    handshake::Refusal,
    memory,
    registry::DrainCause,
    running::RunningState,
    shared::{ShardIdentity, Shared, SidecarState},
    sidecar::DrainToken,
    sidecar_control,
};

/// How the process stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shutdown {
    /// SIGTERM: stop accepting, drain at the configured pace, then exit.
    Graceful,
    /// SIGINT: close everything at once (1001), then exit.
    Fast,
}

/// A bound data plane, ready to run.
pub struct Server {
    shared: Arc<Shared>,
    listener: TcpListener,
    admin: Option<TcpListener>,
    peer: Option<TcpListener>,
    control: Option<(TcpListener, tonic::transport::ServerTlsConfig)>,
    /// A sidecar's control port whose files were not usable at startup:
    /// looked for again while it runs.
    control_later: Option<ControlConfig>,
}

impl Server {
    /// Binds the client, admin, peer and control ports and builds the
    /// routing state (standalone) or waits for the first snapshot (shard).
    pub async fn bind(config: Config) -> Result<Self, Error> {
        Self::bind_as(config, None).await
    }

    /// Binds a sidecar beside an application ([`crate::sidecar`]): as
    /// standalone, except that its admin `/drain` drains in place and
    /// leaves the process up until it is stopped, and `token` lets a
    /// request from off the pod's loopback ask for it. With `control`
    /// ([`SidecarArgs::control`]) and its files usable, it also serves
    /// the control port, through which the operator paces that drain;
    /// without, it warns and paces its drain locally.
    ///
    /// [`SidecarArgs::control`]: crate::sidecar::SidecarArgs::control
    pub async fn bind_sidecar(
        config: Config,
        token: Option<DrainToken>,
        control: Option<ControlConfig>,
    ) -> Result<Self, Error> {
        let opened =
            sidecar_control::open_at_start(control.as_ref(), config.drain.max_closes_per_second)
                .await;
        let mut server = Self::bind_as(config, Some(SidecarState::new(token))).await?;
        server.shared.set_control_serving(opened.is_some());
        if opened.is_none() {
            server.control_later = control;
        }
        server.control = opened;
        Ok(server)
    }

    async fn bind_as(config: Config, sidecar: Option<SidecarState>) -> Result<Self, Error> {
        let shard = match &config.shard {
            None => None,
            Some(s) if s.id.is_empty() => {
                return Err(ConfigError::NoShardId.into());
            }
            Some(s) => Some(ShardIdentity {
                id: s.id.as_str().into(),
                token: PeerToken::load(&s.peer.token_file)?,
                connect_timeout: secs(s.peer.connect_timeout_seconds),
            }),
        };
        let running = match &shard {
            None => RunningState::standalone(&config)?,
            Some(_) => RunningState::waiting(&config),
        };
        let tls = config
            .listener
            .tls
            .as_ref()
            .map(crate::tls::acceptor)
            .transpose()?;
        let listener = bind_listener(config.listener.address, config.listener.reuse_port)?;
        let bind = |address: SocketAddr| async move {
            TcpListener::bind(address)
                .await
                .map_err(|e| Error::Bind(address, e))
        };
        let admin = match &config.admin {
            Some(a) => Some(bind(a.address).await?),
            None => None,
        };
        let (peer, control) = match &config.shard {
            Some(s) => (
                Some(bind(s.peer.address).await?),
                Some((
                    bind(s.control.address).await?,
                    crate::control::tls_config(&s.control)?,
                )),
            ),
            None => (None, None),
        };
        let shared = Arc::new(Shared::new(config, shard, sidecar, running, tls));
        Ok(Self {
            shared,
            listener,
            admin,
            peer,
            control,
            control_later: None,
        })
    }

    /// The client port's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| self.shared.config.listener.address)
    }

    /// The admin port's address, if there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|a| a.local_addr().ok())
    }

    /// The peer port's address (shards only).
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer.as_ref().and_then(|a| a.local_addr().ok())
    }

    /// The control port's address (shards, and sidecars that serve it).
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.control.as_ref().and_then(|(a, _)| a.local_addr().ok())
    }

    /// The state shared with connections (metrics, counts).
    pub fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    /// Serves until `shutdown` resolves (or `POST /drain`), then drains.
    pub async fn run(self, shutdown: impl Future<Output = Shutdown>) -> Result<(), Error> {
        let Self {
            shared,
            listener,
            admin,
            mut peer,
            control,
            control_later,
        } = self;
        let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin_task = admin.map(|a| {
            tokio::spawn(crate::admin::serve(a, Arc::clone(&shared), async move {
                let _ = admin_stopped.await;
            }))
        });
        let memory_task = tokio::spawn(release_memory(Arc::clone(&shared)));
        let (stop_control, control_stopped) = tokio::sync::oneshot::channel::<()>();
        let stopped = async move {
            let _ = control_stopped.await;
        };
        let control_task = match (control, control_later) {
            (Some((listener, tls)), _) if shared.sidecar.is_none() => Some(tokio::spawn(
                crate::control::serve(listener, tls, Arc::clone(&shared), stopped),
            )),
            (Some(opened), _) => Some(tokio::spawn(sidecar_control::serve(
                opened,
                Arc::clone(&shared),
                stopped,
            ))),
            (None, Some(later)) => Some(tokio::spawn(sidecar_control::serve_once_ready(
                later,
                Arc::clone(&shared),
                stopped,
            ))),
            (None, None) => None,
        };
        shared.set_accepting();
        tracing::info!(address = %listener.local_addr().map_err(|e| Error::Bind(shared.config.listener.address, e))?, shard = ?shared.shard_id(), "accepting connections");
        tokio::pin!(shutdown);
        let (kind, cause) = loop {
            tokio::select! {
                kind = &mut shutdown => break (kind, DrainCause::Shutdown),
                // The admin `/drain` stops the process just as SIGTERM does
                // (the kubelet's preStop hook calls it): whatever is left
                // at the window's end is closed, so the pod finishes
                // within its termination grace period.
                () = shared.drain_requested.notified() => break (Shutdown::Graceful, DrainCause::Shutdown),
                () = shared.peer_closed.notified() => {
                    tracing::info!("drained on request: no more hand-offs");
                    peer = None;
                }
                accepted = listener.accept() => accepted_or_back_off(accepted, Origin::Client, &shared).await,
                accepted = accept_from(peer.as_ref()) => accepted_or_back_off(accepted, Origin::Peer, &shared).await,
            }
        };
        drop(listener);
        drop(peer);
        if shared.drained_in_place() {
            // A sidecar stops after its application, whose preStop hook
            // had it drain: what is left was counted as cut then.
            tracing::info!(
                connections = shared.registry.len(),
                "stopping; drained beside the application already"
            );
        } else {
            drain_to_stop(&shared, kind, cause).await;
        }
        let _ = stop_control.send(());
        if let Some(task) = control_task {
            let _ = timeout(Duration::from_secs(1), task).await;
        }
        // Requests in flight (a `POST /drain?wait=true` waiting for this
        // very drain) get their answer within the admin port's grace.
        let _ = stop_admin.send(());
        if let Some(task) = admin_task {
            let _ = task.await;
        }
        memory_task.abort();
        Ok(())
    }
}

/// Stops every connection (`cause`), paced over the drain window or at
/// once, and waits for the last close (at most two close timeouts and a
/// second more).
async fn drain_to_stop(shared: &Shared, kind: Shutdown, cause: DrainCause) {
    shared.start_draining(cause);
    let running = shared.running.load_full();
    let victims = shared.registry.connections();
    tracing::info!(
        connections = victims.len(),
        ?kind,
        "stopped accepting; draining"
    );
    match kind {
        Shutdown::Graceful => {
            let policy = running.drain;
            shared
                .drainer
                .submit(victims, cause, policy.window, policy.max_closes_per_second)
                .await;
            shared.drainer.idle().await;
        }
        Shutdown::Fast => victims.iter().for_each(|v| v.request_drain(cause)),
    }
    let close_timeout = running.relay.close_timeout;
    let last_close = close_timeout * 2 + Duration::from_secs(1);
    let _ = timeout(last_close, shared.registry.wait_empty()).await;
    shared.count_cut();
}

/// Gives the allocator's free pages back to the system whenever many
/// connections ended since the last look ([`crate::memory`]).
async fn release_memory(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(memory::CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(in_use) = shared.fell_from_high_water() else {
            continue;
        };
        match tokio::task::spawn_blocking(memory::release_free_pages).await {
            Ok(Ok(arenas)) => {
                shared.metrics.memory_releases.inc();
                tracing::debug!(
                    arenas,
                    connections = in_use,
                    "gave free memory back to the system"
                );
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not give free memory back to the system")
            }
            Err(e) => tracing::warn!(error = %e, "the memory release task failed"),
        }
    }
}

async fn accept_from(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

async fn accepted_or_back_off(
    accepted: std::io::Result<(TcpStream, SocketAddr)>,
    origin: Origin,
    shared: &Arc<Shared>,
) {
    match accepted {
        Ok((stream, peer)) => accept(stream, peer, origin, shared),
        Err(e) => {
            // Typically out of file descriptors: back off, let
            // connections end, try again.
            shared.metrics.accept_errors.inc();
            tracing::warn!(error = %e, ?origin, "accept failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn bind_listener(address: SocketAddr, reuse_port: bool) -> Result<TcpListener, Error> {
    let domain = socket2::Domain::for_address(address);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))
        .map_err(|e| Error::Bind(address, e))?;
    let setup = || -> std::io::Result<()> {
        socket.set_reuse_address(true)?;
        if reuse_port {
            socket.set_reuse_port(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&address.into())?;
        socket.listen(4096)
    };
    setup().map_err(|e| Error::Bind(address, e))?;
    TcpListener::from_std(socket.into()).map_err(|e| Error::Bind(address, e))
}

/// Takes one accepted connection: refuses it at the cap, else spawns its
/// task, with panics contained, logged and counted.
fn accept(stream: TcpStream, peer: SocketAddr, origin: Origin, shared: &Arc<Shared>) {
    let Some(permit) = shared.admit() else {
        shared.metrics.handshake("over_limit");
        let refusal = Refusal::new(
            503,
            "over_limit",
            "this gateway pod is at its connection limit; retry",
        );
        let _ = stream.try_write(&refusal.response());
        return;
    };
    connection::spawn(stream, peer, origin, Arc::clone(shared), permit);
}
