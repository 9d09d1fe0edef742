//! The CRD's CEL rules fit the API server's cost budgets with room to spare:
//! each rule within half of the per-rule limit and all of them within half
//! of the per-CRD limit, estimated the way the API server estimates them
//! before it accepts a CRD (see `cel_cost` for the model and its sources).

mod cel_cost;

use cel_cost::{Decl, PER_CRD_LIMIT, PER_RULE_LIMIT, RuleCost, estimate, exceeds_message};
use serde_json::{Value, json};

fn schema_of(crd: &Value) -> &Value {
    &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
}

fn checked_in_crd() -> Value {
    serde_json::to_value(ringway_crds::crd()).expect("the CRD serializes")
}

/// What the API server would refuse, and what leaves less than half of a
/// budget free: the messages of a failing check.
fn over_half_budget(costs: &[RuleCost]) -> Vec<String> {
    let mut problems = Vec::new();
    for rule in costs {
        if rule.total() > PER_RULE_LIMIT / 2 {
            problems.push(format!(
                "{}: {} ({} per evaluation x {} occurrences = {}; half the limit is {}): {}",
                rule.path,
                exceeds_message("estimated rule cost", rule.total(), PER_RULE_LIMIT),
                rule.per_call,
                rule.cardinality,
                rule.total(),
                PER_RULE_LIMIT / 2,
                rule.rule,
            ));
        }
    }
    let total = costs
        .iter()
        .fold(0u64, |sum, r| sum.saturating_add(r.total()));
    if total > PER_CRD_LIMIT / 2 {
        problems.push(format!(
            "spec.validation.openAPIV3Schema: {} (total {total}; half the limit is {})",
            exceeds_message(
                "x-kubernetes-validations estimated rule cost total for entire OpenAPIv3 schema",
                total,
                PER_CRD_LIMIT
            ),
            PER_CRD_LIMIT / 2,
        ));
    }
    problems
}

#[test]
fn every_rule_fits_half_of_the_api_servers_budgets() {
    let crd = checked_in_crd();
    let costs = cel_cost::rule_costs(schema_of(&crd));
    assert!(
        costs.len() >= 5,
        "expected the spec's CEL rules, found {}",
        costs.len()
    );
    let total: u64 = costs.iter().map(RuleCost::total).sum();
    for rule in &costs {
        println!(
            "{:>9} = {:>7} x {:>3}  {}",
            rule.total(),
            rule.per_call,
            rule.cardinality,
            rule.path
        );
    }
    println!(
        "total {total} of {PER_CRD_LIMIT} ({:.3}%)",
        total as f64 * 100.0 / PER_CRD_LIMIT as f64
    );
    let problems = over_half_budget(&costs);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Ringway 0.1.0's CRD, which a v1.36 API server refused with "estimated
/// rule cost exceeds budget by factor of 13.1x" for the backend port rule
/// and "... total for entire OpenAPIv3 schema exceeds budget by factor of
/// 1.309747x". The model must give the same figures, and the check must fail.
#[test]
fn the_model_refuses_the_0_1_0_crd_with_the_api_servers_figures() {
    let mut crd = checked_in_crd();
    let backend = &mut crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ["properties"]["routes"]["items"]["properties"]["backend"];
    let port = &mut backend["properties"]["port"];
    for bound in ["minimum", "maximum", "minLength", "maxLength", "pattern"] {
        port.as_object_mut()
            .expect("port is a schema")
            .remove(bound);
    }
    backend["x-kubernetes-validations"] = json!([{
        "rule": "string(self.port).matches('^[0-9]+$') ? (int(string(self.port)) >= 1 && int(string(self.port)) <= 65535) : (string(self.port).matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && size(string(self.port)) <= 15)",
        "message": "port must be a number from 1 to 65535 or a Service port name",
        "fieldPath": ".port",
    }]);

    let costs = cel_cost::rule_costs(schema_of(&crd));
    let port_rule = costs
        .iter()
        .find(|r| {
            r.path
                .ends_with("properties[backend].x-kubernetes-validations[0].rule")
        })
        .expect("the port rule is estimated");
    assert_eq!(
        port_rule.path,
        "spec.validation.openAPIV3Schema.properties[spec].properties[routes].items.properties[backend].x-kubernetes-validations[0].rule"
    );
    assert!(
        exceeds_message("estimated rule cost", port_rule.total(), PER_RULE_LIMIT)
            .starts_with("estimated rule cost exceeds budget by factor of 13.1x"),
        "{port_rule:?}"
    );
    let total: u64 = costs.iter().map(RuleCost::total).sum();
    assert!(
        exceeds_message("total", total, PER_CRD_LIMIT)
            .starts_with("total exceeds budget by factor of 1.309747x"),
        "total {total}"
    );
    let problems = over_half_budget(&costs);
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(problems[0].contains("factor of 13.1x"), "{}", problems[0]);
}

/// A rule on a string with no `maxLength` under a list with no `maxItems`
/// is costed as if the whole request were that string, once per item that
/// fits: the API server refuses it however simple it reads.
#[test]
fn unbounded_strings_and_lists_cost_what_a_whole_request_could_hold() {
    let bounded = json!({
        "type": "object",
        "properties": {"names": {
            "type": "array", "maxItems": 8,
            "items": {"type": "object", "required": ["name"],
                "properties": {"name": {"type": "string", "maxLength": 10}},
                "x-kubernetes-validations": [{"rule": "self.name.matches('^a')", "message": "m"}]},
        }},
    });
    let costs = cel_cost::rule_costs(&bounded);
    // (40 + 1) x 0.1 -> 5, x ('^a' x 0.25 -> 1), + 2 for self.name; 8 items.
    assert_eq!((costs[0].per_call, costs[0].cardinality), (7, 8));

    let mut unbounded = bounded.clone();
    let names = &mut unbounded["properties"]["names"];
    names.as_object_mut().expect("schema").remove("maxItems");
    names["items"]["properties"]["name"]
        .as_object_mut()
        .expect("schema")
        .remove("maxLength");
    let costs = cel_cost::rule_costs(&unbounded);
    // The smallest item is {"name":""}: 2 + 4 + 2 + 4 = 12 bytes, 13 with
    // its comma, so a 3 MiB request holds 241,979 of them.
    assert_eq!(costs[0].cardinality, 3 * 1024 * 1024 / 13);
    assert_eq!(costs[0].per_call, 314_575);
    assert!(costs[0].total() > PER_RULE_LIMIT);
}

/// Equality on strings traverses the shorter one; on numbers it is one step
/// of 0 traversal (the API server sizes numbers by path as 0).
#[test]
fn comparisons_cost_by_the_size_of_what_they_compare() {
    let decl = Decl::of(&json!({
        "type": "object",
        "properties": {
            "a": {"type": "string", "maxLength": 100},
            "b": {"type": "string", "maxLength": 5},
            "n": {"type": "integer"},
        },
    }));
    // self.a (2) + self.b (2) + min(400, 20) x 0.1 = 2.
    assert_eq!(estimate("self.a == self.b", &decl).max, 6);
    assert_eq!(estimate("self.n == 3", &decl).max, 2);
    assert_eq!(estimate("has(self.a) && self.n > 1", &decl).max, 4);
}

#[test]
#[should_panic(expected = "is not modeled")]
fn a_function_the_model_does_not_know_stops_the_estimate() {
    let decl = Decl::of(&json!({"type": "string", "maxLength": 3}));
    estimate("self.lowerAscii() == 'a'", &decl);
}

#[test]
fn the_checked_in_yaml_is_the_crd_estimated_here() {
    let yaml: Value = serde_yaml::from_str(include_str!("../websocketgateway.yaml"))
        .expect("the checked-in CRD parses");
    let from_yaml = cel_cost::rule_costs(schema_of(&yaml));
    let from_types = cel_cost::rule_costs(schema_of(&checked_in_crd()));
    let totals = |c: &[RuleCost]| {
        c.iter()
            .map(|r| (r.path.clone(), r.total()))
            .collect::<Vec<_>>()
    };
    assert_eq!(totals(&from_yaml), totals(&from_types));
}
