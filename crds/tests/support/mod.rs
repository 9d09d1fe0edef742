//! Validates a manifest against the generated CRD the way the API server
//! does, so that example manifests are checked without a cluster: defaults
//! first, then the structural schema (types, required fields, bounds, enums,
//! patterns, unknown fields, list-map keys), then the CEL rules (through
//! kube-cel). Errors are worded as the API server words them (v1.35 and
//! later, checked against a v1.36 server by the cluster tests:
//! `field.Invalid` around kube-openapi's messages, see apiextensions-apiserver
//! `pkg/apiserver/validation/validation.go`), so that each `# expect:` line
//! in `tests/invalid/` is also what the cluster tests look for in the API
//! server's answer.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use regex::Regex;
use serde_json::Value;

/// Every error the API server would report for `object` (a parsed manifest),
/// or an empty list when it would be accepted.
pub fn validate(crd: &CustomResourceDefinition, object: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let group = &crd.spec.group;
    let kind = &crd.spec.names.kind;
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let Some(version) = crd
        .spec
        .versions
        .iter()
        .find(|v| api_version == format!("{group}/{}", v.name))
    else {
        return vec![format!("apiVersion: Unsupported value: {api_version:?}")];
    };
    if object["kind"].as_str() != Some(kind.as_str()) {
        errors.push(format!("kind: Unsupported value: {}", object["kind"]));
    }
    if object["metadata"]["name"]
        .as_str()
        .is_none_or(str::is_empty)
    {
        errors.push("metadata.name: Required value".to_owned());
    }
    let schema = serde_json::to_value(
        version
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("the CRD has a schema"),
    )
    .expect("a schema serializes");
    let spec_schema = &schema["properties"]["spec"];
    match object.get("spec") {
        None => errors.push("spec: Required value".to_owned()),
        Some(spec) => {
            let spec = kube_cel::apply_defaults(spec_schema, spec);
            structural(spec_schema, &spec, "spec", &mut errors);
            if errors.is_empty() {
                // The API server runs CEL rules only on objects that pass the
                // structural checks; so do we.
                if let Err(cel) = kube_cel::Validator::new().validate(spec_schema, &spec, None) {
                    for e in cel.as_slice() {
                        let path = if e.field_path.is_empty() {
                            "spec".to_owned()
                        } else {
                            format!("spec.{}", e.field_path.trim_start_matches('.'))
                        };
                        // Kubernetes 1.35 and later show no value for a
                        // rule on an object or an array (before, its type:
                        // `Invalid value: "object": ...`); on a scalar they
                        // show the value, which this does not emulate.
                        let node = rule_node_type(spec_schema, &e.rule).unwrap_or("object");
                        assert!(
                            matches!(node, "object" | "array"),
                            "the rule {:?} is on a {node} node: the API server shows its \
                             value; teach this emulation to show it too",
                            e.rule
                        );
                        errors.push(format!("{path}: Invalid value: {}", e.message));
                    }
                }
            }
        }
    }
    errors
}

/// The `type` of the schema node that carries `rule`.
fn rule_node_type<'a>(schema: &'a Value, rule: &str) -> Option<&'a str> {
    let here = schema["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|r| r["rule"] == rule);
    if here {
        return schema["type"].as_str();
    }
    let children = schema["properties"]
        .as_object()
        .into_iter()
        .flat_map(|p| p.values())
        .chain([&schema["items"], &schema["additionalProperties"]]);
    children
        .filter(|c| c.is_object())
        .find_map(|c| rule_node_type(c, rule))
}

/// A number as Go's `%v` prints a float64 that holds an integer.
fn go_number(x: f64) -> String {
    if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        x.to_string()
    }
}

fn structural(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    if value.is_null() {
        if schema["nullable"] != Value::Bool(true) {
            errors.push(format!("{path}: Invalid value: null: must not be null"));
        }
        return;
    }
    // An int-or-string is checked as what it holds: `minimum`/`maximum`
    // apply to the integer, `maxLength`/`pattern` to the string.
    let int_or_string = schema["x-kubernetes-int-or-string"] == Value::Bool(true);
    if int_or_string && !(value.is_i64() || value.is_u64() || value.is_string()) {
        errors.push(format!(
            "{path}: Invalid value: {value}: must be an integer or a string"
        ));
        return;
    }
    let want = if int_or_string {
        ""
    } else {
        schema["type"].as_str().unwrap_or("")
    };
    let type_ok = match want {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        _ => true,
    };
    if !type_ok {
        errors.push(format!(
            "{path}: Invalid value: {value}: must be of type {want}"
        ));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
        errors.push(format!(
            "{path}: Unsupported value: {value}: supported values: {}",
            list.join(", ")
        ));
    }
    match value {
        Value::Object(map) => {
            for required in schema["required"].as_array().into_iter().flatten() {
                let name = required.as_str().unwrap_or_default();
                if !map.contains_key(name) {
                    errors.push(format!("{path}.{name}: Required value"));
                }
            }
            let properties = schema["properties"].as_object();
            let additional = schema.get("additionalProperties");
            for (name, child) in map {
                let child_path = format!("{path}.{name}");
                if let Some(child_schema) = properties.and_then(|p| p.get(name)) {
                    structural(child_schema, child, &child_path, errors);
                } else if let Some(extra) = additional.filter(|a| a.is_object()) {
                    structural(extra, child, &child_path, errors);
                } else if schema["x-kubernetes-preserve-unknown-fields"] != Value::Bool(true) {
                    // Strict field validation (`kubectl --validate=strict`).
                    errors.push(format!("unknown field {child_path:?}"));
                }
            }
        }
        Value::Array(items) => {
            bound(
                schema,
                "minItems",
                "maxItems",
                items.len(),
                "items",
                path,
                errors,
            );
            for (i, item) in items.iter().enumerate() {
                structural(&schema["items"], item, &format!("{path}[{i}]"), errors);
            }
            if schema["x-kubernetes-list-type"] == "map" {
                let keys: Vec<&str> = schema["x-kubernetes-list-map-keys"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let mut seen = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let key: serde_json::Map<String, Value> = keys
                        .iter()
                        .map(|k| ((*k).to_owned(), item[*k].clone()))
                        .collect();
                    if seen.contains(&key) {
                        // The key as JSON, as Kubernetes 1.35 and later
                        // print it (before: Go's `map[string]interface {}{...}`).
                        errors.push(format!(
                            "{path}[{i}]: Duplicate value: {}",
                            Value::Object(key.clone())
                        ));
                    }
                    seen.push(key);
                }
            }
        }
        Value::String(s) => {
            let len = s.chars().count();
            bound(
                schema,
                "minLength",
                "maxLength",
                len,
                "characters",
                path,
                errors,
            );
            if let Some(pattern) = schema["pattern"].as_str() {
                let re = Regex::new(pattern).expect("schema patterns compile");
                if !re.is_match(s) {
                    errors.push(format!(
                        "{path}: Invalid value: {s:?}: {path} in body should match '{pattern}'"
                    ));
                }
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or_default();
            if let Some(min) = schema["minimum"].as_f64()
                && x < min
            {
                errors.push(format!(
                    "{path}: Invalid value: {n}: {path} in body should be greater than or equal to {}",
                    go_number(min)
                ));
            }
            if let Some(max) = schema["maximum"].as_f64()
                && x > max
            {
                errors.push(format!(
                    "{path}: Invalid value: {n}: {path} in body should be less than or equal to {}",
                    go_number(max)
                ));
            }
        }
        _ => {}
    }
}

fn bound(
    schema: &Value,
    min_key: &str,
    max_key: &str,
    len: usize,
    unit: &str,
    path: &str,
    errors: &mut Vec<String>,
) {
    let len = len as u64;
    if let Some(min) = schema[min_key].as_u64()
        && len < min
    {
        errors.push(format!(
            "{path}: Invalid value: {len} {unit}: must have at least {min} {unit}"
        ));
    }
    if let Some(max) = schema[max_key].as_u64()
        && len > max
    {
        errors.push(format!(
            "{path}: Too many: {len}: must have at most {max} {unit}"
        ));
    }
}
