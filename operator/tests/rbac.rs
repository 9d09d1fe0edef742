//! The operator's RBAC is exactly what its code uses. The fake API server
//! refuses every request that `ringway_operator::rbac` does not grant (in
//! every API test); here one run of everything the operator does — the
//! watches' and the controllers' lists and watches, reconciles through a
//! canary with a bad annotation and a NetworkPolicy turned on and off,
//! leader election — must use every grant; and the Helm chart's rules must
//! be the table's. (The sidecar injector's grants are used by the
//! `webhook_api` test, which checks their resource names too, and the
//! sidecar audit's by the `sidecar_audit_api` test; of the drain pacer's,
//! the webhook uses the pods' list, and the pacer's own tests the rest.)

mod support;

use std::{collections::BTreeSet, path::PathBuf, sync::Arc, time::Duration};

use k8s_openapi::api::rbac::v1::PolicyRule;
use ringway_operator::{
    controller,
    leader::{self, LeaseConfig},
    rbac::{self, Grant},
    watches,
};
use serde_json::{Value, json};
use support::{NS, World};
use tokio::sync::watch;

type Triples = BTreeSet<(String, String, String)>;

fn table(grants: &[Grant]) -> Triples {
    rbac::triples(grants).into_iter().collect()
}

/// The chart's copy of a rule set: a YAML list of RBAC `PolicyRule`s.
fn chart_rules(file: &str) -> Triples {
    let path = PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR for tests"),
    )
    .join("../charts/ringway/files/rbac")
    .join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let rules: Vec<PolicyRule> = serde_yaml::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not a list of PolicyRules: {e}", path.display()));
    let mut out = Triples::new();
    for rule in rules {
        assert!(
            rule.resource_names.is_none() && rule.non_resource_urls.is_none(),
            "{}: the operator's rules name no objects or URLs",
            path.display()
        );
        for group in rule.api_groups.unwrap_or_default() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    assert_ne!(verb, "*", "{}: no wildcard verbs", path.display());
                    out.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    out
}

fn describe(only_left: &Triples) -> String {
    only_left
        .iter()
        .map(|(g, r, v)| format!("  {v} {r} (group {g:?})\n"))
        .collect()
}

#[test]
fn the_charts_rules_are_the_operators() {
    for (file, grants) in [
        ("gateways.yaml", rbac::GATEWAYS),
        ("leader-election.yaml", rbac::LEADER_ELECTION),
        ("sidecar-audit.yaml", rbac::SIDECAR_AUDIT),
        (
            "sidecar-injector-secret-create.yaml",
            rbac::WEBHOOK_SECRET_CREATE,
        ),
        ("sidecar-injector-secret.yaml", rbac::WEBHOOK_SECRET),
        (
            "sidecar-injector-configuration.yaml",
            rbac::WEBHOOK_CONFIGURATION,
        ),
        (
            "sidecar-control-secret-create.yaml",
            rbac::SIDECAR_CONTROL_SECRET_CREATE,
        ),
        ("sidecar-control-secret.yaml", rbac::SIDECAR_CONTROL_SECRET),
        ("sidecar-drain.yaml", rbac::SIDECAR_DRAIN),
    ] {
        let chart = chart_rules(file);
        let code = table(grants);
        assert!(
            chart == code,
            "charts/ringway/files/rbac/{file} differs from operator/src/rbac.rs\n\
             granted by the chart only:\n{}needed by the operator but not granted:\n{}",
            describe(&chart.difference(&code).cloned().collect()),
            describe(&code.difference(&chart).cloned().collect()),
        );
    }
}

#[test]
fn the_charts_control_secret_name_is_the_sidecars() {
    let path = PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR for tests"),
    )
    .join("../charts/ringway/templates/_helpers.tpl");
    let helpers = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let wanted = format!(
        "{{{{- define \"ringway.sidecarControlSecret\" -}}}}\n{}\n{{{{- end -}}}}",
        ringway_dataplane_api::sidecar::CONTROL_SECRET
    );
    assert!(
        helpers.contains(&wanted),
        "{} must define ringway.sidecarControlSecret as sidecar::CONTROL_SECRET:\n{wanted}",
        path.display()
    );
}

#[tokio::test]
async fn every_grant_is_used_by_the_operator() {
    // Reconciles: create every child, start a canary, trip over the same
    // bad annotation twice (the repeated event is patched as a series).
    let w = World::new(json!({"ringway.dev/rollout": "canary"}), 2);
    w.run(3).await;
    w.edit(|gw| gw["spec"]["image"] = json!("ringway/dataplane:2"));
    w.run(2).await;
    for weight in ["abc", "10", "abc"] {
        w.annotate("ringway.dev/canary-weight", Some(weight));
        w.run(2).await;
    }
    assert_eq!(
        w.condition("Degraded")["status"],
        "True",
        "{:#}",
        w.status()
    );
    // The NetworkPolicy: applied when enabled, deleted when disabled.
    w.edit(|gw| gw["spec"]["networkPolicy"] = json!({"enabled": true}));
    w.run(1).await;
    w.edit(|gw| gw["spec"]["networkPolicy"] = json!({"enabled": false}));
    w.run(1).await;
    assert!(w.api.get("networkpolicies", "chat").is_none());

    // The watches and the controllers: every list and watch they start.
    let (halt_tx, halt) = watch::channel(false);
    let client = w.api.client();
    let context = Arc::clone(&w.ctx);
    let (_, scopes) = ringway_operator::stores::stores(&[NS.to_owned()]);
    let (_leading_tx, leading) = watch::channel(true);
    let feeds = watches::start(&client, scopes, &leading);
    let controllers = tokio::spawn(async move {
        controller::run(client, feeds, context, halt).await;
    });
    let watches = |api: &support::FakeApi| {
        api.authorized()
            .iter()
            .filter(|(_, _, verb)| verb == "watch")
            .count()
    };
    // The watches: gateways, pods, EndpointSlices; the controller: six owned kinds.
    let kinds_watched = 9;
    for _ in 0..200 {
        if watches(&w.api) >= kinds_watched {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(watches(&w.api), kinds_watched, "{:#?}", w.api.authorized());
    halt_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), controllers)
        .await
        .expect("the controllers stop when halted")
        .unwrap();

    // Leader election: take the Lease, renew it, hand it over.
    let mut config = LeaseConfig::new(NS, "ringway-operator", "operator-0");
    config.renew_every = Duration::from_millis(50);
    let leadership = leader::acquire(w.api.client(), config, std::future::pending())
        .await
        .unwrap()
        .expect("an uncontested lease is taken");
    let renewed = || {
        w.api
            .requests()
            .iter()
            .filter(|(m, path, _)| m == http::Method::PUT && path.contains("/leases/"))
            .count()
    };
    for _ in 0..200 {
        if renewed() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    leadership.release().await;
    let lease = w.api.get("leases", "ringway-operator").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], Value::Null, "{lease:#}");

    let used = w.api.authorized();
    let granted: Triples = table(rbac::GATEWAYS)
        .union(&table(rbac::LEADER_ELECTION))
        .cloned()
        .collect();
    assert!(
        used == granted,
        "operator/src/rbac.rs grants what the operator never used:\n{}\
         and the operator used what it does not grant:\n{}",
        describe(&granted.difference(&used).cloned().collect()),
        describe(&used.difference(&granted).cloned().collect()),
    );
}
