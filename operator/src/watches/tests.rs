use std::time::Duration;

use futures_util::stream;
use kube::runtime::{
    reflector::{self, ObjectRef},
    watcher::Event,
};
use tokio::{sync::mpsc::error::TryRecvError, time::timeout};

use super::*;

fn pod(name: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "prod",
            "labels": {"ringway.dev/gateway": "chat"}}
    }))
    .expect("pod")
}

/// A watch whose events the test sends, kept in `writer`'s store.
fn scripted(
    writer: Writer<Pod>,
) -> (
    mpsc::UnboundedSender<Event<Pod>>,
    impl Stream<Item = Result<Pod, watcher::Error>>,
) {
    let (events, rx) = mpsc::unbounded_channel();
    let stream = stream::unfold(rx, |mut rx| async move {
        let event = rx.recv().await?;
        Some((Ok(event), rx))
    });
    (events, stream.reflect(writer).touched_objects())
}

#[tokio::test]
async fn changes_reach_the_controller_only_while_leading_and_after_the_store() {
    let (store, writer) = reflector::store::<Pod>();
    let (events, watch) = scripted(writer);
    let (leading_tx, leading) = watch::channel(false);
    let (to, mut changes) = mpsc::channel(FEED_BUFFER);
    let forwarding = tokio::spawn(forward(watch, leading, to));

    // Standing by: the store fills, the controller hears nothing.
    for event in [Event::Init, Event::InitApply(pod("a")), Event::InitDone] {
        events.send(event).unwrap();
    }
    events.send(Event::Apply(pod("b"))).unwrap();
    timeout(Duration::from_secs(5), store.wait_until_ready())
        .await
        .expect("the store lists while standing by")
        .unwrap();
    for _ in 0..100 {
        if store.get(&ObjectRef::new("b").within("prod")).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(store.state().len(), 2, "both pods are kept");
    assert_eq!(changes.try_recv().unwrap_err(), TryRecvError::Empty);

    // Leading: each change is handed over once its store has it.
    leading_tx.send_replace(true);
    events.send(Event::Delete(pod("a"))).unwrap();
    events.send(Event::Apply(pod("c"))).unwrap();
    let deleted = changes.recv().await.unwrap();
    assert_eq!(deleted.name_any(), "a");
    let added = changes.recv().await.unwrap();
    assert_eq!(added.name_any(), "c");
    assert!(store.get(&ObjectRef::from_obj(&added)).is_some());
    assert!(store.get(&ObjectRef::from_obj(&deleted)).is_none());

    // Dropping the feed stops the watch.
    drop(changes);
    timeout(Duration::from_secs(5), forwarding)
        .await
        .expect("the watch stops with its feed")
        .unwrap();
}

fn gateway(generation: i64, weight: &str, connections: i64) -> WebSocketGateway {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "ringway.dev/v1alpha1", "kind": "WebSocketGateway",
        "metadata": {"name": "chat", "namespace": "prod", "uid": "u1",
            "generation": generation,
            "annotations": {"ringway.dev/canary-weight": weight}},
        "spec": {"routes": [{"name": "r", "key": {"source": "Header", "name": "x"},
            "backend": {"service": "s", "port": 80}}]},
        "status": {"connections": connections}
    }))
    .expect("gateway")
}

#[tokio::test]
async fn the_operators_own_status_writes_do_not_start_a_reconcile() {
    let applied = stream::iter([
        gateway(1, "5", 10),
        gateway(1, "5", 11),
        gateway(2, "5", 11),
        gateway(2, "25", 11),
        gateway(2, "25", 12),
    ])
    .map(Ok);
    let heard: Vec<(i64, i64)> = spec_or_annotation_changes(applied)
        .map(|g| {
            let g = g.expect("no error");
            (
                g.metadata.generation.unwrap_or(0),
                g.status.map_or(0, |s| s.connections),
            )
        })
        .collect()
        .await;
    assert_eq!(heard, vec![(1, 10), (2, 11), (2, 11)]);
}
