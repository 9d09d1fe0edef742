//! Validates a manifest against the generated CRD the way the API server
//! does, so that example manifests are checked without a cluster: defaults
//! first, then the structural schema (types, required fields, bounds, enums,
//! patterns, unknown fields, list-map keys), then the CEL rules (through
//! kube-cel). Errors read like the API server's: `spec.routes[0].name:
//! Required value`.

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
                        errors.push(format!("{path}: Invalid value: {}", e.message));
                    }
                }
            }
        }
    }
    errors
}

fn structural(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    if value.is_null() {
        if schema["nullable"] != Value::Bool(true) {
            errors.push(format!("{path}: Invalid value: null: must not be null"));
        }
        return;
    }
    if schema["x-kubernetes-int-or-string"] == Value::Bool(true) {
        if !(value.is_i64() || value.is_u64() || value.is_string()) {
            errors.push(format!(
                "{path}: Invalid value: {value}: must be an integer or a string"
            ));
        }
        return;
    }
    let want = schema["type"].as_str().unwrap_or("");
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
                    errors.push(format!("{child_path}: unknown field {name:?}"));
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
                        "{path}: Invalid value: {s:?}: should match '{pattern}'"
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
                    "{path}: Invalid value: {n}: should be greater than or equal to {min}"
                ));
            }
            if let Some(max) = schema["maximum"].as_f64()
                && x > max
            {
                errors.push(format!(
                    "{path}: Invalid value: {n}: should be less than or equal to {max}"
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
