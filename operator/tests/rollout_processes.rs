//! Automatic canaries end to end: the operator's real reconcile and
//! control channel, pods that are real `ringway-dataplane` processes on
//! loopback (run by the kubelet of `rollout_processes/kubelet.rs`), a real
//! echo backend, and keyed clients that enter through a Service-like
//! random choice of the Ready pods and count every disruption.
//!
//! The binaries come from the target directory of this test: build them
//! first with `cargo build -p ringway-dataplane -p ringway-e2e` (or set
//! `RINGWAY_DATAPLANE_BIN` and `RINGWAY_ECHO_BIN`).

#![allow(clippy::unwrap_used, missing_docs)]

#[path = "rollout_processes/clients.rs"]
mod clients;
#[path = "rollout_processes/gateway.rs"]
mod gateway;
#[path = "rollout_processes/kubelet.rs"]
mod kubelet;
mod support;

use std::{collections::BTreeSet, time::Duration};

use clients::{Clients, Disruption, Traffic};
use gateway::Gateway;
use ringway_dataplane::routing::{bucket, hash_key};
use serde_json::{Value, json};
use tokio::time::Instant;

/// The clients, one per key.
const CLIENTS: usize = 200;

/// How long the clients may take to be connected.
const CONNECT: Duration = Duration::from_secs(20);

/// How long a whole rollout (or abort) may take.
const ROLLOUT: Duration = Duration::from_secs(60);

/// Issue 17, item 3: from canary start to the old pods' exit, each client
/// connection is disrupted at most once.
const MAX_DISRUPTIONS_PER_CLIENT: usize = 1;

/// A disruption budget that allows every move at once, and a short drain.
fn quick_moves() -> Value {
    json!({
        "drain": {"windowSeconds": 1, "closeTimeoutSeconds": 1},
        "disruptionBudget": {"maxReconnectsPerSecond": 100000, "maxDisruptedPercent": 100, "windowSeconds": 1},
    })
}

fn spec(rollout: Value) -> Value {
    let mut spec = quick_moves();
    spec["rollout"] = rollout;
    spec
}

fn keys() -> Vec<String> {
    (0..CLIENTS).map(|i| format!("room-{i}")).collect()
}

/// Whether `key` is on the canary at `weight` percent: its bucket is below
/// the canary's share of the 10,000 buckets.
fn on_canary(key: &str, weight: u32) -> bool {
    bucket(hash_key(key.as_bytes())) < weight * 100
}

/// The other slot's StatefulSet.
fn other_set(set: &str) -> String {
    if set == "chat-a" { "chat-b" } else { "chat-a" }.to_owned()
}

/// Fails unless every client is connected through a pod of `set` as its
/// key's owner and echoes.
async fn assert_all_served_by(clients: &Clients, set: &str) -> anyhow::Result<()> {
    clients.wait_connected(CONNECT).await?;
    let elsewhere: Vec<(String, Option<String>)> = clients
        .owners()
        .into_iter()
        .filter(|(_, owner)| {
            !owner
                .as_ref()
                .is_some_and(|o| o.starts_with(&format!("{set}-")))
        })
        .collect();
    assert!(
        elsewhere.is_empty(),
        "every key should be owned by a pod of {set}; these are not: {elsewhere:?}"
    );
    let silent = clients.not_echoing().await;
    assert!(silent.is_empty(), "these keys do not echo: {silent:?}");
    Ok(())
}

/// Drives `gateway` until its canary is aborted and the canary's pods are
/// gone, and checks that the analysis did it and says why: the `Aborting`
/// phase, `status.aborted`'s reason naming `measure` with the canary's and
/// stable's figures, the `CanaryAnalysisFailed` event and `Degraded`
/// reason; stable stays in `stable_set`.
async fn abort_by_analysis(
    gateway: &mut Gateway,
    stable_set: &str,
    measure: &str,
) -> anyhow::Result<()> {
    let canary_pods = format!("{}-", other_set(stable_set));
    let mut phases: Vec<String> = Vec::new();
    gateway
        .drive_until(ROLLOUT, |g| {
            let status = g.world.status();
            if let Some(phase) = status["canary"]["phase"].as_str()
                && phases.last().map(String::as_str) != Some(phase)
            {
                phases.push(phase.to_owned());
            }
            !status["aborted"].is_null()
                && status["canary"].is_null()
                && g.kubelet.running(&canary_pods) == 0
        })
        .await?;
    assert!(
        phases.iter().any(|p| p == "Aborting"),
        "phases seen: {phases:?}"
    );
    let reason = gateway.world.status()["aborted"]["reason"].clone();
    assert!(
        reason
            .as_str()
            .is_some_and(|r| r.contains(measure) && r.contains("canary") && r.contains("stable")),
        "the abort names {measure} with the figures of both versions: {reason}"
    );
    println!("aborted: {reason}");
    let reasons = gateway.event_reasons();
    assert!(
        reasons.iter().any(|r| r == "CanaryAnalysisFailed"),
        "no CanaryAnalysisFailed event in {reasons:?}"
    );
    assert_eq!(
        gateway.world.condition("Degraded")["reason"],
        "CanaryAnalysisFailed"
    );
    assert_eq!(
        gateway.stable_set(),
        stable_set,
        "stable stays where it was"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_walks_every_step_to_promotion_by_itself() -> anyhow::Result<()> {
    let begun = Instant::now();
    let mut gateway = Gateway::start(spec(json!({
        "steps": [{"weight": 25}, {"weight": 50}],
        "analysis": {"holdSeconds": 2, "minConnectionMinutes": 0},
    })))
    .await?;
    let clients = Clients::start(&keys(), &gateway.service, None);
    clients.wait_connected(CONNECT).await?;
    let old_revision = gateway.world.status()["stable"]["revision"].clone();
    let old_set = gateway.stable_set();

    gateway
        .world
        .edit(|gw| gw["spec"]["image"] = json!("ringway/dataplane:2"));
    let mut weights: Vec<u64> = Vec::new();
    let rollout = Instant::now();
    gateway
        .drive_until(ROLLOUT, |g| {
            let status = g.world.status();
            if let Some(w) = status["canary"]["weight"].as_u64()
                && weights.last() != Some(&w)
            {
                weights.push(w);
            }
            status["canary"].is_null()
                && status["stable"]["revision"] != old_revision
                && g.kubelet.running(&format!("{old_set}-")) == 0
        })
        .await?;
    let rollout = rollout.elapsed();

    let new_set = gateway.stable_set();
    assert_eq!(
        new_set,
        other_set(&old_set),
        "the canary's slot is stable now"
    );
    weights.retain(|&w| w > 0);
    assert_eq!(weights, [25, 50, 100], "the weights the status showed");
    let reasons = gateway.event_reasons();
    for reason in [
        "CanaryStarted",
        "CanaryWeightChanged",
        "CanaryPromoting",
        "CanaryPromoted",
    ] {
        assert!(
            reasons.iter().any(|r| r == reason),
            "no {reason} event in {reasons:?}"
        );
    }
    assert_all_served_by(&clients, &new_set).await?;
    println!(
        "healthy canary: rollout {rollout:.1?} (test {:.1?}), disruptions per client over it:\n{}",
        begun.elapsed(),
        clients.distribution()
    );
    assert!(
        clients.max_disruptions() <= MAX_DISRUPTIONS_PER_CLIENT,
        "a connection may be disrupted at most {MAX_DISRUPTIONS_PER_CLIENT} time(s) from canary \
         start to the old pods' exit (issue 17, item 3); per client:\n{}",
        clients.distribution()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_canary_is_aborted_and_every_key_comes_back_to_stable() -> anyhow::Result<()> {
    let begun = Instant::now();
    let mut gateway = Gateway::start(spec(json!({
        "steps": [{"weight": 50}],
        "analysis": {"holdSeconds": 60},
    })))
    .await?;
    let clients = Clients::start(&keys(), &gateway.service, None);
    clients.wait_connected(CONNECT).await?;
    let stable_set = gateway.stable_set();
    let canary_set = other_set(&stable_set);

    gateway
        .world
        .edit(|gw| gw["spec"]["image"] = json!("ringway/dataplane:crashes"));
    gateway
        .drive_until(ROLLOUT, |g| {
            let canary = &g.world.status()["canary"];
            canary["weight"] == 50 && canary["phase"] == "Holding"
        })
        .await?;
    // The new build crashes once it owns keys; the kubelet restarts it.
    let abort = Instant::now();
    gateway.kubelet.crash(&format!("{canary_set}-")).await?;
    abort_by_analysis(&mut gateway, &stable_set, "restarts").await?;
    let abort = abort.elapsed();
    assert_all_served_by(&clients, &stable_set).await?;
    println!(
        "crashing canary: aborted {abort:.1?} after the crash (test {:.1?}); disruptions per \
         client:\n{}",
        begun.elapsed(),
        clients.distribution()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_harmful_canary_is_aborted_and_exactly_its_keys_come_back_to_stable() -> anyhow::Result<()>
{
    let begun = Instant::now();
    let mut gateway = Gateway::start(spec(json!({
        "steps": [{"weight": 50}],
        "analysis": {"holdSeconds": 60, "minEvents": 5},
    })))
    .await?;
    let traffic = Traffic {
        message_bytes: 2048,
        every: Duration::from_millis(200),
    };
    let clients = Clients::start(&keys(), &gateway.service, Some(traffic));
    clients.wait_connected(CONNECT).await?;
    let stable_set = gateway.stable_set();
    let canary_set = other_set(&stable_set);

    // Below the 2 KiB the clients send: the canary's pods close them
    // (a frame may not be larger than a message).
    gateway.world.edit(|gw| {
        gw["spec"]["connections"]["maxMessageBytes"] = json!(1024);
        gw["spec"]["connections"]["maxFrameBytes"] = json!(1024);
    });
    let abort = Instant::now();
    abort_by_analysis(&mut gateway, &stable_set, "1009").await?;
    let abort = abort.elapsed();
    assert_all_served_by(&clients, &stable_set).await?;

    let too_big: BTreeSet<String> = clients
        .clients
        .iter()
        .filter(|c| c.disruptions().iter().any(|d| d.code == Some(1009)))
        .map(|c| c.key.clone())
        .collect();
    let canary_keys: BTreeSet<String> = keys().into_iter().filter(|k| on_canary(k, 50)).collect();
    println!(
        "harmful canary: aborted in {abort:.1?} (test {:.1?}); {} of the {} canary keys closed \
         with 1009; disruptions per client:\n{}",
        begun.elapsed(),
        too_big.len(),
        canary_keys.len(),
        clients.distribution()
    );
    assert!(!too_big.is_empty(), "the canary closed no client with 1009");
    let outside: Vec<&String> = too_big.difference(&canary_keys).collect();
    assert!(
        outside.is_empty(),
        "keys stable owns were closed with 1009: {outside:?}"
    );
    let not_by_canary: Vec<Disruption> = clients
        .clients
        .iter()
        .flat_map(|c| c.disruptions())
        .filter(|d| d.code == Some(1009) && !d.owner.starts_with(&format!("{canary_set}-")))
        .collect();
    assert!(
        not_by_canary.is_empty(),
        "1009 closes by pods other than the canary's: {not_by_canary:?}"
    );
    Ok(())
}
