//! The fleet-wide reconnect budget end to end, with real processes: two
//! sidecars of one workload (`ringway-dataplane sidecar`, each with its
//! control port over mutual TLS) in front of `ringway-chat`, and the
//! operator's pacing ([`ringway_operator::sidecar_drain`], the same rounds
//! the leader runs, over the real control client) as their pods stop one
//! after the other: the second pod's drain begins while the first is still
//! draining.
//!
//! The numbers are chosen so that the budget binds: each sidecar on its own
//! would spread its clients over its window at 1.375 times half the
//! budget, so two draining at once, paced locally, would close 1.375 times
//! the budget per second (27.5 for 20). Paced by the operator they share it: every client gets its
//! 1001, the closes of both pods together never pass the budget in any
//! second (with a little slack for when the clients see them), and both
//! finish within their windows.

use std::{
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use futures_util::StreamExt;
use k8s_openapi::{api::core::v1::ObjectReference, jiff::Timestamp};
use ringway_e2e::{
    fleet::{Binaries, EchoProcess, Pki, TempDir},
    sidecar::{SidecarProcess, free_port, pre_stop},
};
use ringway_operator::{
    sidecar_audit::WorkloadKey,
    sidecar_drain::{
        DrainEvent, DrainingPod, Fleet, PodKey, Report,
        pace::{Dialer, Progress, round},
    },
    webhook::control_tls::ClientCert,
};
use tokio::time::{Instant, sleep, timeout};
use tokio_tungstenite::tungstenite::Message;

/// The workload's budget, closes per second.
const BUDGET: u32 = 20;
/// Each sidecar's drain window, seconds.
const WINDOW: u32 = 16;
/// Clients of each sidecar: spread over its window, 13.75 closes a second,
/// 1.375 times half the budget; the first pod has 20 left when the second
/// stops, and the second finishes about 3 s before its window ends.
const CLIENTS: usize = 220;
/// When the second pod stops, after the first.
const SECOND_STOPS_AFTER: Duration = Duration::from_secs(10);
/// Closes over the budget tolerated in a one-second window: the clients
/// timestamp the closes as they read them, a few milliseconds after they
/// were sent, and each re-pacing rounds up by one. Local pacing would
/// reach 27.
const SLACK: usize = 3;
/// How often the operator's rounds run (the leader's tick).
const TICK: Duration = Duration::from_millis(500);

const NAMESPACE: &str = "prod";

/// One pod of the workload: its sidecar and how the operator sees it.
struct Pod {
    sidecar: SidecarProcess,
    draining: DrainingPod,
}

async fn start_pod(dataplane: &Path, app_port: u16, control_dir: &Path, name: &str) -> Pod {
    let control = free_port().expect("a port");
    let args = [
        "--drain-window-seconds".to_owned(),
        WINDOW.to_string(),
        "--max-closes-per-second".to_owned(),
        BUDGET.to_string(),
        "--control-tls-dir".to_owned(),
        control_dir.display().to_string(),
        "--control-port".to_owned(),
        control.to_string(),
    ];
    let sidecar = SidecarProcess::start(dataplane, app_port, &args)
        .await
        .expect("the sidecar starts");
    let draining = DrainingPod {
        pod: PodKey {
            namespace: NAMESPACE.into(),
            name: name.into(),
        },
        workload: WorkloadKey {
            namespace: NAMESPACE.into(),
            workload: "deployment/chat".into(),
        },
        reference: ObjectReference::default(),
        address: SocketAddr::from(([127, 0, 0, 1], control)).to_string(),
        budget: BUDGET,
        since: Timestamp::now(),
    };
    Pod { sidecar, draining }
}

/// A close a client saw: which pod, when, the code and reason.
type Close = (usize, Instant, u16, String);

/// Connects `CLIENTS` clients to `pod` (pod number `which`), each in a
/// room of its own, and records their closes into `closes`.
async fn connect(pod: &Pod, which: usize, closes: &Arc<Mutex<Vec<Close>>>) {
    for i in 0..CLIENTS {
        let url = format!("ws://{}/chat?room=p{which}c{i}", pod.sidecar.client);
        let (mut ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("a client connects");
        let closes = Arc::clone(closes);
        tokio::spawn(async move {
            while let Some(message) = ws.next().await {
                if let Ok(Message::Close(frame)) = message {
                    let (code, reason) = frame.map_or((1005, String::new()), |f| {
                        (u16::from(f.code), f.reason.to_string())
                    });
                    closes
                        .lock()
                        .expect("the closes")
                        .push((which, Instant::now(), code, reason));
                    return;
                }
            }
            closes
                .lock()
                .expect("the closes")
                .push((which, Instant::now(), 1006, String::new()));
        });
    }
}

/// The most closes in any one-second window.
fn busiest_second(times: &mut [Instant]) -> usize {
    times.sort();
    let mut most = 0;
    let mut from = 0;
    for to in 0..times.len() {
        while times[to] - times[from] >= Duration::from_secs(1) {
            from += 1;
        }
        most = most.max(to - from + 1);
    }
    most
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sidecars_drained_together_stay_within_the_shared_budget() {
    let binaries = Binaries::beside(env!("CARGO_BIN_EXE_ringway-echo")).expect("binaries");
    let chat = Path::new(env!("CARGO_BIN_EXE_ringway-chat"));
    let app = EchoProcess::start(chat, "app", SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("the chat application starts");
    let dir = TempDir::new("ringway-sidecar-budget").expect("a temp dir");
    let pki = Pki::sidecars(dir.path(), NAMESPACE).expect("certificates");
    let port = app.address.port();
    let pods = [
        start_pod(&binaries.dataplane, port, dir.path(), "chat-a").await,
        start_pod(&binaries.dataplane, port, dir.path(), "chat-b").await,
    ];
    let closes = Arc::new(Mutex::new(Vec::new()));
    for (which, pod) in pods.iter().enumerate() {
        connect(pod, which, &closes).await;
    }

    // The leader's side: the same rounds, over mutual TLS.
    let dialer = Dialer::new(ClientCert {
        ca_pem: pki.operator.ca_pem.clone(),
        cert_pem: pki.operator.cert_pem.clone(),
        key_pem: pki.operator.key_pem.clone(),
        not_after: SystemTime::now() + Duration::from_secs(3600),
    });
    let mut fleet = Fleet::default();
    let mut reports: Vec<Report> = Vec::new();
    let started = Instant::now();
    let mut stopping = Vec::new();
    let mut pre_stops = Vec::new();
    loop {
        let due = if started.elapsed() >= SECOND_STOPS_AFTER {
            2
        } else {
            1
        };
        while stopping.len() < due {
            // The kubelet runs the preStop hook as the leader sees the pod
            // terminating.
            let pod = &pods[stopping.len()];
            let mut draining = pod.draining.clone();
            draining.since = Timestamp::now();
            stopping.push(draining);
            pre_stops.push(tokio::spawn(pre_stop(pod.sidecar.admin)));
        }
        reports.extend(round(&mut fleet, &stopping, &dialer, Progress::Ask).await);
        if stopping.len() == 2 && !fleet.busy() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the drains did not end; reports: {reports:?}"
        );
        sleep(TICK).await;
    }
    for answer in futures_util::future::join_all(pre_stops).await {
        let answer = answer.expect("the preStop hook's task");
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("drained\n"),
            "the preStop hook's answer: {answer}"
        );
    }

    // Every client got its 1001 with the hint.
    let closes = timeout(Duration::from_secs(5), async {
        loop {
            let seen = closes.lock().expect("the closes").clone();
            if seen.len() == 2 * CLIENTS {
                return seen;
            }
            sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("every client saw its close");
    for (_, _, code, reason) in &closes {
        assert_eq!(*code, 1001, "{reason}");
        assert!(
            reason.starts_with("pod stopping; retry-after-ms="),
            "{reason}"
        );
    }

    // The second pod's drain overlapped the first's: they shared the budget.
    let last_of = |which| closes.iter().filter(|c| c.0 == which).map(|c| c.1).max();
    let first_of = |which| closes.iter().filter(|c| c.0 == which).map(|c| c.1).min();
    assert!(
        first_of(1) < last_of(0),
        "the second pod started draining only after the first was done"
    );
    let mut times: Vec<Instant> = closes.iter().map(|c| c.1).collect();
    let busiest = busiest_second(&mut times);
    assert!(
        busiest <= BUDGET as usize + SLACK,
        "{busiest} closes in one second; the workload's budget is {BUDGET}/s"
    );

    // What the leader reported: each pod paced, the second sharing the
    // budget with the first, and each drained.
    let started_with: Vec<(String, usize, u32)> = reports
        .iter()
        .filter_map(|r| match r.event {
            DrainEvent::Started { sharing, rate, .. } => Some((r.pod.name.clone(), sharing, rate)),
            _ => None,
        })
        .collect();
    assert_eq!(
        started_with,
        [
            ("chat-a".to_owned(), 1, BUDGET),
            ("chat-b".to_owned(), 2, BUDGET / 2)
        ]
    );
    let drained: Vec<&str> = reports
        .iter()
        .filter(|r| matches!(r.event, DrainEvent::Drained { connections, .. } if connections > 0))
        .map(|r| r.pod.name.as_str())
        .collect();
    assert_eq!(drained.len(), 2, "{reports:?}");
    println!(
        "{} clients closed over {:.1} s, at most {busiest} in one second (budget {BUDGET}/s)",
        closes.len(),
        (times[times.len() - 1] - times[0]).as_secs_f64()
    );
}
