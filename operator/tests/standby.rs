//! A standby replica: its watches run before it holds the Lease, so its
//! stores fill and it reports synced without acting; once it leads, its
//! controller reconciles what those watches saw while it stood by.

mod support;

use std::{sync::Arc, time::Duration};

use http::Method;
use ringway_operator::controller;
use serde_json::json;
use support::{NS, World};
use tokio::{sync::watch, time::timeout};

#[tokio::test]
async fn a_standby_fills_its_stores_and_is_synced_without_acting() {
    let w = World::new(json!({}), 2);
    let (_leading_tx, standing_by) = watch::channel(false);
    let mut feeds = w.watches(&standing_by);

    timeout(Duration::from_secs(5), w.ctx.stores.wait_until_ready())
        .await
        .expect("the stores list without the Lease")
        .unwrap();
    assert_eq!(
        w.ctx.stores.endpoint_slices(NS, "chat-backend").len(),
        1,
        "the backend's EndpointSlice is kept"
    );
    let writes: Vec<_> = w
        .api
        .requests()
        .into_iter()
        .filter(|(method, _, _)| method != Method::GET)
        .collect();
    assert!(writes.is_empty(), "a standby acts: {writes:#?}");
    assert!(
        feeds[0].gateway_changes.try_recv().is_err(),
        "a standby's controller hears nothing"
    );
}

#[tokio::test]
async fn taking_the_lease_reconciles_what_was_seen_standing_by() {
    let w = World::new(json!({}), 2);
    let (leading_tx, leading) = watch::channel(false);
    let feeds = w.watches(&leading);
    timeout(Duration::from_secs(5), w.ctx.stores.wait_until_ready())
        .await
        .expect("the stores list without the Lease")
        .unwrap();
    assert!(w.api.list("statefulsets").is_empty());

    // The gateway was listed while standing by, and the fake API never
    // reports a change after the list: only the catch-up reconciles it.
    leading_tx.send_replace(true);
    let (halt_tx, halt) = watch::channel(false);
    let (client, context) = (w.api.client(), Arc::clone(&w.ctx));
    let controllers = tokio::spawn(controller::run(client, feeds, context, halt));
    let reconciled = || w.api.get("statefulsets", "chat-a").is_some() && !w.status().is_null();
    for _ in 0..200 {
        if reconciled() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        reconciled(),
        "the stable slot is applied and the status written"
    );
    halt_tx.send_replace(true);
    timeout(Duration::from_secs(10), controllers)
        .await
        .expect("the controllers stop when halted")
        .unwrap();
}
