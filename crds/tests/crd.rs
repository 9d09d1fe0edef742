//! The checked-in CRD is what the types generate, and its schema is one an
//! API server will accept and explain.

use serde_json::Value;

const CHECKED_IN: &str = include_str!("../websocketgateway.yaml");

#[test]
fn checked_in_crd_matches_the_types() {
    let generated = ringway_crds::crd_yaml().expect("the CRD serializes");
    assert!(
        generated == CHECKED_IN,
        "crds/websocketgateway.yaml is stale: run\n  \
         cargo run -p ringway-crds --bin crdgen > crds/websocketgateway.yaml"
    );
}

/// The Helm chart installs its own copy (a template reads it, so that
/// `helm upgrade` updates the CRD); it must be the same bytes.
#[test]
fn the_charts_crd_is_the_checked_in_one() {
    const CHART: &str = include_str!("../../charts/ringway/files/crds/websocketgateway.yaml");
    assert!(
        CHART == CHECKED_IN,
        "charts/ringway/files/crds/websocketgateway.yaml differs from crds/websocketgateway.yaml: run\n  \
         cp crds/websocketgateway.yaml charts/ringway/files/crds/websocketgateway.yaml"
    );
}

fn spec_schema() -> Value {
    let crd = ringway_crds::crd();
    let schema = serde_json::to_value(&crd.spec.versions[0].schema).expect("schema");
    schema["openAPIV3Schema"]["properties"]["spec"].clone()
}

/// Calls `visit(path, schema)` for every schema below `schema`.
fn walk(schema: &Value, path: &str, visit: &mut dyn FnMut(&str, &Value)) {
    visit(path, schema);
    if let Some(props) = schema["properties"].as_object() {
        for (name, child) in props {
            walk(child, &format!("{path}.{name}"), visit);
        }
    }
    if schema["items"].is_object() {
        walk(&schema["items"], &format!("{path}[]"), visit);
    }
    if schema["additionalProperties"].is_object() {
        walk(&schema["additionalProperties"], &format!("{path}.*"), visit);
    }
}

#[test]
fn every_spec_field_is_explained() {
    let mut missing = Vec::new();
    walk(&spec_schema(), "spec", &mut |path, schema| {
        if schema["description"]
            .as_str()
            .is_none_or(|d| d.trim().len() < 10)
        {
            missing.push(path.to_owned());
        }
    });
    assert!(
        missing.is_empty(),
        "fields without a description: {missing:?}"
    );
}

/// Every rule compiles and says what is wrong in words; whether it fits the
/// API server's cost budget is `cel_budget.rs`'s job.
#[test]
fn every_cel_rule_compiles_and_has_a_message() {
    let spec = spec_schema();
    let compiled = kube_cel::compile_schema(&spec);
    let errors: Vec<String> = compiled
        .compilation_errors()
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "CEL rules that do not compile: {errors:?}"
    );

    let mut rules = 0;
    walk(&spec, "spec", &mut |path, schema| {
        for rule in schema["x-kubernetes-validations"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let text = rule["rule"].as_str().expect("a rule has text");
            assert!(rule["message"].is_string(), "{path}: {text} has no message");
            rules += 1;
        }
    });
    assert!(rules >= 5, "expected the spec's CEL rules, found {rules}");
}

#[test]
fn integer_formats_are_ones_openapi_knows() {
    walk(&spec_schema(), "spec", &mut |path, schema| {
        if let Some(format) = schema["format"].as_str() {
            assert!(
                !format.starts_with("uint"),
                "{path} has format {format}, which API servers warn about"
            );
        }
    });
}
