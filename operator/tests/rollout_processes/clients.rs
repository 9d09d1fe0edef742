//! Keyed WebSocket clients that enter like through a Kubernetes Service:
//! each (re)connect picks uniformly at random among the pods Ready at that
//! moment, and a client reconnects promptly after any close. Every close it
//! did not ask for (it never closes by itself) is a disruption, recorded
//! with its code and the owner that served it.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::bail;
use ringway_e2e::keyed::{Ended, KeyedConn};
use tokio::{task::JoinSet, time::Instant};

/// The pause before a client dials again, after a close or a failed dial.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// How often an idle client looks at whether its connection ended.
const IDLE_CHECK: Duration = Duration::from_millis(500);

/// The client Service: the client addresses of the Ready pods.
#[derive(Clone, Default)]
pub struct Service(Arc<Mutex<Vec<SocketAddr>>>);

impl Service {
    /// Sets the endpoints, as the endpoints controller does.
    pub fn set(&self, endpoints: Vec<SocketAddr>) {
        *self.0.lock().unwrap() = endpoints;
    }

    /// A Ready pod, uniformly at random; `None` while there is none.
    fn pick(&self) -> Option<SocketAddr> {
        let endpoints = self.0.lock().unwrap();
        (!endpoints.is_empty()).then(|| endpoints[fastrand::usize(..endpoints.len())])
    }
}

/// What each client sends while connected: a message of `message_bytes`
/// every `every`, waiting for its echo.
#[derive(Clone, Copy, Debug)]
pub struct Traffic {
    pub message_bytes: usize,
    pub every: Duration,
}

/// A close the client did not ask for.
#[derive(Clone, Debug)]
pub struct Disruption {
    /// The close code; `None` when the connection was cut without one.
    pub code: Option<u16>,
    /// The pod that owned the key then (`X-Ringway-Shard`).
    pub owner: String,
}

/// One client's key and what happened to it.
pub struct Client {
    pub key: String,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    current: Option<Arc<KeyedConn>>,
    disruptions: Vec<Disruption>,
}

impl Client {
    /// Its connection, while it has one that has not ended.
    fn current(&self) -> Option<Arc<KeyedConn>> {
        let state = self.state.lock().unwrap();
        state.current.clone().filter(|c| c.ended().is_none())
    }

    /// Its disruptions so far.
    pub fn disruptions(&self) -> Vec<Disruption> {
        self.state.lock().unwrap().disruptions.clone()
    }
}

/// The clients, each in its own task; the tasks end when dropped.
pub struct Clients {
    pub clients: Vec<Arc<Client>>,
    _tasks: JoinSet<()>,
}

impl Clients {
    /// One client per key, entering through `service`.
    pub fn start(keys: &[String], service: &Service, traffic: Option<Traffic>) -> Self {
        let mut tasks = JoinSet::new();
        let clients = keys
            .iter()
            .map(|key| {
                let client = Arc::new(Client {
                    key: key.clone(),
                    state: Mutex::default(),
                });
                tasks.spawn(run(Arc::clone(&client), service.clone(), traffic));
                client
            })
            .collect();
        Self {
            clients,
            _tasks: tasks,
        }
    }

    /// Waits until every client is connected; fails after `timeout`,
    /// naming how many are not.
    pub async fn wait_connected(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let missing = self
                .clients
                .iter()
                .filter(|c| c.current().is_none())
                .count();
            if missing == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{missing} of {} clients are not connected after {timeout:?}",
                    self.clients.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Each client's key and the pod that owns it now (`None`: not
    /// connected).
    pub fn owners(&self) -> Vec<(String, Option<String>)> {
        self.clients
            .iter()
            .map(|c| (c.key.clone(), c.current().map(|conn| conn.shard.clone())))
            .collect()
    }

    /// The keys whose connection does not echo a message now.
    pub async fn not_echoing(&self) -> Vec<String> {
        let mut failed = Vec::new();
        for client in &self.clients {
            let echoed = match client.current() {
                Some(conn) => conn.echo(&format!("still there, {}?", client.key)).await,
                None => false,
            };
            if !echoed {
                failed.push(client.key.clone());
            }
        }
        failed
    }

    /// The most disruptions any one client saw.
    pub fn max_disruptions(&self) -> usize {
        self.clients
            .iter()
            .map(|c| c.disruptions().len())
            .max()
            .unwrap_or(0)
    }

    /// How many clients were disrupted 0, 1, 2, … times, with the close
    /// codes of those disruptions (`cut`: no close frame), one line each.
    pub fn distribution(&self) -> String {
        let mut by_count: BTreeMap<usize, (usize, BTreeMap<String, usize>)> = BTreeMap::new();
        for client in &self.clients {
            let disruptions = client.disruptions();
            let (clients, codes) = by_count.entry(disruptions.len()).or_default();
            *clients += 1;
            for d in disruptions {
                let code = d.code.map_or_else(|| "cut".to_owned(), |c| c.to_string());
                *codes.entry(code).or_default() += 1;
            }
        }
        by_count
            .iter()
            .map(|(times, (clients, codes))| {
                let codes: Vec<String> = codes.iter().map(|(c, n)| format!("{c}×{n}")).collect();
                format!(
                    "  disrupted {times} times: {clients} clients {}\n",
                    codes.join(" ")
                )
            })
            .collect()
    }
}

/// One client: dial a Ready pod, stay (sending `traffic`) until the
/// connection ends, record that, dial again.
async fn run(client: Arc<Client>, service: Service, traffic: Option<Traffic>) {
    let payload = traffic.map(|t| "x".repeat(t.message_bytes));
    let every = traffic.map_or(IDLE_CHECK, |t| t.every);
    loop {
        let Some(address) = service.pick() else {
            tokio::time::sleep(RECONNECT_PAUSE).await;
            continue;
        };
        let Ok(conn) = KeyedConn::open(address, 0, &client.key).await else {
            tokio::time::sleep(RECONNECT_PAUSE).await;
            continue;
        };
        let conn = Arc::new(conn);
        client.state.lock().unwrap().current = Some(Arc::clone(&conn));
        let ended = loop {
            if let Some(ended) = conn.wait_ended(every).await {
                break ended;
            }
            if let Some(payload) = &payload {
                conn.echo(payload).await;
            }
        };
        let code = match ended {
            Ended::Close(code, _) => Some(code),
            Ended::Dropped(_) => None,
        };
        client.state.lock().unwrap().disruptions.push(Disruption {
            code,
            owner: conn.shard.clone(),
        });
        tokio::time::sleep(RECONNECT_PAUSE).await;
    }
}
