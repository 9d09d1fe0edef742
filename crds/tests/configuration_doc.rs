//! `docs/configuration.md` cannot drift from the `WebSocketGateway` types.
//!
//! How it works:
//!
//! - **Field tables are generated.** Every table of CRD fields in the page
//!   sits between `<!-- crd-fields: ROOT -->` and `<!-- /crd-fields -->`
//!   and is rendered here from the OpenAPI schema that the Rust types
//!   generate (`ringway_crds::crd()`, what `crdgen` prints): one row per
//!   field path under ROOT (e.g. `spec.routes[].key.source`), with its type,
//!   default, allowed values (enum, bounds, lengths, patterns, CEL rule
//!   messages) and its description, which is the field's doc comment and the
//!   `kubectl explain` text. A path belongs to the region with the longest
//!   matching ROOT, so a new field lands in its section's table, and a new
//!   top-level one in the `spec` table. The test compares each region with
//!   what it renders and names every missing, stale or changed row. To
//!   rewrite the regions after changing the types:
//!
//!   ```text
//!   RINGWAY_UPDATE_DOCS=1 cargo nextest run -p ringway-crds --test configuration_doc
//!   ```
//!
//!   (`cargo test` works too). Everything outside the regions is hand-written
//!   and left alone.
//! - **Every `spec.…`/`status.…` path the page mentions exists** (prose,
//!   examples' comments, the standalone-to-CRD mapping table): a renamed
//!   field cannot leave a stale reference behind.
//! - **Every YAML example of the resource part is valid**: a full manifest,
//!   or a `spec:`/`metadata:` fragment laid over
//!   `examples/gateway-minimal.yaml` (each top-level spec key replaces the
//!   minimal one), is validated like the API server would
//!   (`tests/support`) and deserialized into `WebSocketGateway`; a
//!   `status:` example must use schema paths only and deserialize into
//!   `WebSocketGatewayStatus`.
//! - **Annotations**: every `ringway.dev/…` constant in
//!   `crds/src/annotations.rs` has a row in the annotations table, every
//!   row and every `ringway.dev/…` name on the page is one of them, and each
//!   value constant (such as `canary`) appears in the table.
//!
//! The standalone config keys are checked by `dataplane/tests/configuration_doc.rs`.

mod support;

use std::{collections::BTreeSet, path::PathBuf};

use regex::Regex;
use ringway_crds::{WebSocketGateway, WebSocketGatewayStatus};
use serde_json::Value;

/// Set to rewrite the generated regions of the page instead of failing.
const UPDATE_VAR: &str = "RINGWAY_UPDATE_DOCS";
const UPDATE_COMMAND: &str =
    "RINGWAY_UPDATE_DOCS=1 cargo nextest run -p ringway-crds --test configuration_doc";
const BEGIN: &str = "<!-- crd-fields: ";
const END: &str = "<!-- /crd-fields -->";
const RESOURCE_PART: &str = "## The WebSocketGateway resource";
const HEADER: &str =
    "| field | type | default | allowed values | meaning |\n| --- | --- | --- | --- | --- |\n";

fn doc_path() -> PathBuf {
    PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR for tests"),
    )
    .join("../docs/configuration.md")
}

fn read_doc() -> String {
    std::fs::read_to_string(doc_path()).expect("docs/configuration.md is readable")
}

/// The `openAPIV3Schema` of the CRD, as JSON.
fn root_schema() -> Value {
    let crd = ringway_crds::crd();
    serde_json::to_value(&crd.spec.versions[0].schema).expect("the schema serializes")
        ["openAPIV3Schema"]
        .clone()
}

/// One documented field: its path and the schema it has, with whether its
/// parent requires it.
struct Field {
    path: String,
    schema: Value,
    required: bool,
}

/// A map whose values are scalars (`resources.limits`) is one field, its
/// type "map of string to …"; only maps of objects are walked into.
fn is_leaf_map(schema: &Value) -> bool {
    let extra = &schema["additionalProperties"];
    extra.is_object() && !extra["properties"].is_object()
}

/// Every field below the schema root, depth first, in the schema's
/// (alphabetical) order: `spec`, `spec.connections`, …
fn fields() -> Vec<Field> {
    fn walk(schema: &Value, path: &str, required: bool, out: &mut Vec<Field>) {
        out.push(Field {
            path: path.to_owned(),
            schema: schema.clone(),
            required,
        });
        let needed: Vec<&str> = schema["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if let Some(props) = schema["properties"].as_object() {
            for (name, child) in props {
                walk(
                    child,
                    &format!("{path}.{name}"),
                    needed.contains(&name.as_str()),
                    out,
                );
            }
        }
        let items = &schema["items"];
        if items.is_object() {
            // The list's own row stands for its items; their fields follow.
            let item_needed: Vec<&str> = items["required"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            for (name, child) in items["properties"].as_object().into_iter().flatten() {
                walk(
                    child,
                    &format!("{path}[].{name}"),
                    item_needed.contains(&name.as_str()),
                    out,
                );
            }
        }
        if schema["additionalProperties"].is_object() && !is_leaf_map(schema) {
            for (name, child) in schema["additionalProperties"]["properties"]
                .as_object()
                .into_iter()
                .flatten()
            {
                walk(child, &format!("{path}.*.{name}"), false, out);
            }
        }
    }
    let root = root_schema();
    let required: Vec<&str> = root["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let mut out = Vec::new();
    for (name, child) in root["properties"].as_object().into_iter().flatten() {
        walk(child, name, required.contains(&name.as_str()), &mut out);
    }
    out
}

// ---------------------------------------------------------------- rendering

/// A number as YAML writes it (schema bounds are floats: `300.0` is `300`).
fn number(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if x.fract() == 0.0 && x.abs() < 1e15 => format!("{}", x as i64),
        _ => v.to_string(),
    }
}

/// ` (1 MiB)` after a byte count that is a whole number of KiB/MiB/GiB.
fn bytes_hint(path: &str, v: &Value) -> String {
    let Some(n) = v.as_f64().filter(|x| x.fract() == 0.0 && *x >= 0.0) else {
        return String::new();
    };
    let n = n as u64;
    if !path.ends_with("Bytes") || n < 1024 {
        return String::new();
    }
    for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if n.is_multiple_of(size) {
            return format!(" ({} {unit})", n / size);
        }
    }
    String::new()
}

fn type_name(schema: &Value) -> String {
    if schema["x-kubernetes-int-or-string"] == Value::Bool(true) {
        return "integer or string".to_owned();
    }
    match schema["type"].as_str().unwrap_or("") {
        "string" if schema["format"] == "date-time" => "timestamp (RFC 3339)".to_owned(),
        "array" => {
            let item = type_name(&schema["items"]);
            if item.contains(' ') {
                format!("list of {item}")
            } else {
                format!("list of {item}s")
            }
        }
        "object" if is_leaf_map(schema) => {
            format!(
                "map of string to {}",
                type_name(&schema["additionalProperties"])
            )
        }
        "" => "any".to_owned(),
        other => other.to_owned(),
    }
}

fn default_cell(field: &Field) -> String {
    let default = &field.schema["default"];
    match default {
        Value::Null if field.required && field.path.starts_with("status") => {
            "always set".to_owned()
        }
        Value::Null if field.required => "required".to_owned(),
        Value::Null => "—".to_owned(),
        Value::Object(_) => "each field's default".to_owned(),
        Value::Array(a) if a.is_empty() => "`[]`".to_owned(),
        Value::String(s) if s.is_empty() => "`\"\"`".to_owned(),
        Value::String(s) => format!("`{s}`"),
        Value::Number(_) => format!("`{}`{}", number(default), bytes_hint(&field.path, default)),
        other => format!("`{other}`"),
    }
}

fn allowed_cell(field: &Field) -> String {
    let s = &field.schema;
    let mut parts = Vec::new();
    if let Some(values) = s["enum"].as_array() {
        let list: Vec<String> = values
            .iter()
            .map(|v| {
                format!(
                    "`{}`",
                    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
                )
            })
            .collect();
        parts.push(list.join(", "));
    }
    let range = |min: &Value, max: &Value, unit: &str| -> Option<String> {
        let unit = if unit.is_empty() {
            String::new()
        } else {
            format!(" {unit}")
        };
        match (min.is_number(), max.is_number()) {
            (true, true) => Some(format!(
                "{} to {}{}{unit}",
                number(min),
                number(max),
                bytes_hint(&field.path, max)
            )),
            (true, false) => Some(format!("at least {}{unit}", number(min))),
            (false, true) => Some(format!(
                "at most {}{}{unit}",
                number(max),
                bytes_hint(&field.path, max)
            )),
            (false, false) => None,
        }
    };
    parts.extend(range(&s["minimum"], &s["maximum"], ""));
    parts.extend(range(&s["minLength"], &s["maxLength"], "characters"));
    parts.extend(range(&s["minItems"], &s["maxItems"], "items"));
    if let Some(pattern) = s["pattern"].as_str() {
        parts.push(format!("matches `{pattern}`"));
    }
    if s["x-kubernetes-list-type"] == "map" {
        let keys: Vec<String> = s["x-kubernetes-list-map-keys"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|k| format!("`{k}`"))
            .collect();
        parts.push(format!("unique {}", keys.join(" and ")));
    }
    let rules = s["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(
            // Rules on a list's items constrain each item: shown on the list.
            s["items"]["x-kubernetes-validations"]
                .as_array()
                .into_iter()
                .flatten(),
        );
    for rule in rules {
        if let Some(message) = rule["message"].as_str() {
            parts.push(format!("rule: {message}"));
        }
    }
    if parts.is_empty() {
        "—".to_owned()
    } else {
        // One constraint per line of the cell.
        parts
            .iter()
            .map(|p| cell_text(p))
            .collect::<Vec<_>>()
            .join("<br>")
    }
}

/// A description as one table cell: paragraphs and lines joined by spaces,
/// `|` escaped, `<` escaped outside code spans.
fn cell_text(text: &str) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out = String::new();
    let mut in_code = false;
    for c in flat.chars() {
        match c {
            '`' => {
                in_code = !in_code;
                out.push(c);
            }
            '|' => out.push_str("\\|"),
            '<' if !in_code => out.push_str("&lt;"),
            _ => out.push(c),
        }
    }
    out
}

fn row(field: &Field) -> String {
    format!(
        "| `{}` | {} | {} | {} | {} |",
        field.path,
        cell_text(&type_name(&field.schema)),
        cell_text(&default_cell(field)),
        allowed_cell(field),
        cell_text(field.schema["description"].as_str().unwrap_or("")),
    )
}

/// Whether `path` is `root` or below it.
fn is_under(path: &str, root: &str) -> bool {
    path == root
        || path
            .strip_prefix(root)
            .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

/// The region (ROOT) that owns `path`: the longest root it is under.
fn owner<'a>(path: &str, roots: &'a [String]) -> Option<&'a str> {
    roots
        .iter()
        .filter(|r| is_under(path, r))
        .max_by_key(|r| r.len())
        .map(String::as_str)
}

// ---------------------------------------------------------------- the page

/// A generated region of the page: its root, where its body starts and
/// ends (byte offsets), and the line of its opening marker.
struct Region {
    root: String,
    body: std::ops::Range<usize>,
    line: usize,
}

fn regions(doc: &str) -> Vec<Region> {
    let mut out = Vec::new();
    let mut offset = 0;
    let mut open: Option<(String, usize, usize)> = None;
    for (i, line) in doc.split_inclusive('\n').enumerate() {
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix(BEGIN) {
            assert!(
                open.is_none(),
                "docs/configuration.md:{}: a `{BEGIN}` region opens before the previous one was closed with `{END}`",
                i + 1
            );
            let root = rest.trim_end_matches("-->").trim().to_owned();
            open = Some((root, offset + line.len(), i + 1));
        } else if trimmed == END {
            let (root, start, at) = open.take().unwrap_or_else(|| {
                panic!(
                    "docs/configuration.md:{}: `{END}` without an opening `{BEGIN}ROOT -->`",
                    i + 1
                )
            });
            out.push(Region {
                root,
                body: start..offset,
                line: at,
            });
        }
        offset += line.len();
    }
    if let Some((root, _, at)) = open {
        panic!("docs/configuration.md:{at}: the region `{root}` is not closed with `{END}`");
    }
    out
}

/// The page with every region's body replaced by what the schema renders.
fn render(doc: &str, fields: &[Field]) -> String {
    let regions = regions(doc);
    let roots: Vec<String> = regions.iter().map(|r| r.root.clone()).collect();
    let mut out = String::new();
    let mut at = 0;
    for region in &regions {
        out.push_str(&doc[at..region.body.start]);
        out.push_str(HEADER);
        for field in fields {
            if owner(&field.path, &roots) == Some(region.root.as_str()) {
                out.push_str(&row(field));
                out.push('\n');
            }
        }
        at = region.body.end;
    }
    out.push_str(&doc[at..]);
    out
}

/// The rows of a table body, keyed by the path in their first cell.
fn documented_rows(body: &str) -> Vec<(String, String)> {
    body.lines()
        .filter_map(|line| {
            let first = line.strip_prefix("| `")?;
            let path = &first[..first.find('`')?];
            Some((path.to_owned(), line.to_owned()))
        })
        .collect()
}

#[test]
fn crd_field_tables_match_the_schema() {
    let doc = read_doc();
    let fields = fields();
    let regions = regions(&doc);
    let roots: Vec<String> = regions.iter().map(|r| r.root.clone()).collect();
    let mut problems = Vec::new();

    // Every region's root is a field, and every field has a region.
    for region in &regions {
        if !fields.iter().any(|f| f.path == region.root) {
            problems.push(format!(
                "docs/configuration.md:{}: `{BEGIN}{} -->` names no field of the schema; rename the region to an existing field path or remove it",
                region.line, region.root
            ));
        }
    }
    for field in &fields {
        if owner(&field.path, &roots).is_none() {
            problems.push(format!(
                "`{}` falls in no `{BEGIN}ROOT -->` region: add a region for it (or for a parent path)",
                field.path
            ));
        }
    }

    let rendered = render(&doc, &fields);
    if rendered != doc {
        // Say what differs, row by row, before saying how to fix it.
        for region in &regions {
            let body = &doc[region.body.clone()];
            let have = documented_rows(body);
            let want: Vec<&Field> = fields
                .iter()
                .filter(|f| owner(&f.path, &roots) == Some(region.root.as_str()))
                .collect();
            for field in &want {
                match have.iter().find(|(p, _)| *p == field.path) {
                    None => problems.push(format!(
                        "`{}` is in the schema but has no row in the `{}` table (docs/configuration.md:{})",
                        field.path, region.root, region.line
                    )),
                    Some((_, line)) if *line != row(field) => problems.push(format!(
                        "the row of `{}` is out of date:\n    documented: {line}\n    schema:     {}",
                        field.path,
                        row(field)
                    )),
                    Some(_) => {}
                }
            }
            for (path, _) in &have {
                if !want.iter().any(|f| f.path == *path) {
                    problems.push(format!(
                        "`{path}` is documented in the `{}` table (docs/configuration.md:{}) but is not a field there (stale row)",
                        region.root, region.line
                    ));
                }
            }
        }
        if problems.is_empty() {
            problems.push(
                "a generated table differs in its header or layout from what the schema renders"
                    .to_owned(),
            );
        }
        if std::env::var_os(UPDATE_VAR).is_some() {
            // Written aside and renamed, so that the tests reading the page
            // in parallel never see half of it.
            let aside = doc_path().with_extension("md.new");
            std::fs::write(&aside, &rendered).expect("docs/ is writable");
            std::fs::rename(&aside, doc_path()).expect("docs/configuration.md is writable");
            eprintln!(
                "rewrote the generated tables of docs/configuration.md:\n  {}",
                problems.join("\n  ")
            );
            return;
        }
    }
    assert!(
        problems.is_empty(),
        "docs/configuration.md does not match the WebSocketGateway schema:\n  {}\n\n\
         The tables between `{BEGIN}…` and `{END}` are generated from the Rust types in crds/src \
         (descriptions are their doc comments). Regenerate them with\n  {UPDATE_COMMAND}\n\
         and, if you changed a doc comment, the CRD too:\n  \
         cargo run -p ringway-crds --bin crdgen > crds/websocketgateway.yaml",
        problems.join("\n  ")
    );
}

/// Every schema path, in the `a.b[].c` form the page uses.
fn schema_paths() -> BTreeSet<String> {
    fields().into_iter().map(|f| f.path).collect()
}

#[test]
fn every_field_path_the_page_mentions_exists() {
    let doc = read_doc();
    let paths = schema_paths();
    // `spec.x`, `status.x[].y` inside a code span, possibly followed by
    // `: value` or `=value`.
    let mention = Regex::new(r"`((?:spec|status)(?:\.[A-Za-z*]+|\[\])+)[^`]*`").expect("regex");
    let mut stale = Vec::new();
    for (i, line) in doc.lines().enumerate() {
        for m in mention.captures_iter(line) {
            let path = &m[1];
            if !paths.contains(path) {
                stale.push(format!("docs/configuration.md:{}: `{path}`", i + 1));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "the page mentions fields that are not in the WebSocketGateway schema; rename or remove them:\n  {}",
        stale.join("\n  ")
    );
}

/// The ```yaml blocks of the part of the page under `heading` (up to the
/// next `## ` heading), with the line each starts on.
fn yaml_blocks(doc: &str, heading: &str) -> Vec<(usize, String)> {
    let start = doc
        .lines()
        .position(|l| l.trim_end() == heading)
        .unwrap_or_else(|| panic!("docs/configuration.md has no heading `{heading}`"));
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in doc.lines().enumerate().skip(start + 1) {
        if current.is_none() && line.starts_with("## ") {
            break;
        }
        match &mut current {
            None if line.trim() == "```yaml" => current = Some((i + 1, String::new())),
            Some(_) if line.trim() == "```" => blocks.extend(current.take()),
            Some((_, text)) => {
                text.push_str(line);
                text.push('\n');
            }
            None => {}
        }
    }
    blocks
}

/// Every key path of a YAML value, in the schema's form (`status.canary.phase`,
/// `status.conditions[].type`).
fn value_paths(value: &Value, path: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                out.push(p.clone());
                value_paths(v, &p, out);
            }
        }
        Value::Array(items) => {
            for item in items {
                value_paths(item, &format!("{path}[]"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn yaml_examples_of_the_resource_part_are_valid() {
    let doc = read_doc();
    let crd = ringway_crds::crd();
    let minimal_path = PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR for tests"),
    )
    .join("../examples/gateway-minimal.yaml");
    let minimal: Value = serde_yaml::from_str(
        &std::fs::read_to_string(&minimal_path).expect("examples/gateway-minimal.yaml"),
    )
    .expect("the minimal example parses");
    let annotations = annotation_constants();
    let paths = schema_paths();
    let blocks = yaml_blocks(&doc, RESOURCE_PART);
    assert!(
        blocks.len() >= 7,
        "expected a ```yaml example per section of `{RESOURCE_PART}`, found {}",
        blocks.len()
    );
    for (line, text) in blocks {
        let at = format!("docs/configuration.md:{line} (a ```yaml example)");
        let example: Value =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{at} is not YAML: {e}"));
        let Some(top) = example.as_object() else {
            panic!("{at} is not a YAML mapping");
        };

        // Annotations: names the operator knows.
        for name in example["metadata"]["annotations"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k)
        {
            assert!(
                annotations.iter().any(|(_, v)| v == name),
                "{at}: annotation `{name}` is not one of crds/src/annotations.rs"
            );
        }

        if let Some(status) = example.get("status") {
            let mut used = Vec::new();
            value_paths(status, "status", &mut used);
            for p in used {
                assert!(
                    paths.contains(&p),
                    "{at}: `{p}` is not a status field of the schema"
                );
            }
            serde_json::from_value::<WebSocketGatewayStatus>(status.clone())
                .unwrap_or_else(|e| panic!("{at}: the status does not deserialize: {e}"));
        }

        if top.contains_key("spec") || top.contains_key("metadata") {
            let manifest = if top.contains_key("kind") {
                example.clone()
            } else {
                // A fragment: each top-level key of its spec (and metadata)
                // replaces the minimal gateway's.
                let mut m = minimal.clone();
                for section in ["spec", "metadata"] {
                    for (k, v) in example[section].as_object().into_iter().flatten() {
                        m[section][k] = v.clone();
                    }
                }
                m
            };
            let errors = support::validate(&crd, &manifest);
            assert!(
                errors.is_empty(),
                "{at} would be rejected by the API server:\n  {}",
                errors.join("\n  ")
            );
            serde_json::from_value::<WebSocketGateway>(manifest)
                .unwrap_or_else(|e| panic!("{at} does not deserialize: {e}"));
        }

        for key in top.keys() {
            assert!(
                ["apiVersion", "kind", "metadata", "spec", "status"].contains(&key.as_str()),
                "{at}: `{key}` is not part of a WebSocketGateway"
            );
        }
    }
}

/// `(NAME, value)` of every `pub const NAME: &str = "value";` in
/// crds/src/annotations.rs: the annotation names and their known values.
fn annotation_constants() -> Vec<(String, String)> {
    let path = PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR for tests"),
    )
    .join("src/annotations.rs");
    let source = std::fs::read_to_string(path).expect("crds/src/annotations.rs");
    let constant = Regex::new(r#"pub const ([A-Z_]+): &str = "([^"]*)";"#).expect("regex");
    let found: Vec<(String, String)> = constant
        .captures_iter(&source)
        .map(|c| (c[1].to_owned(), c[2].to_owned()))
        .collect();
    assert!(
        found.len() >= 3,
        "expected the annotation constants in crds/src/annotations.rs"
    );
    found
}

#[test]
fn every_annotation_is_documented() {
    let doc = read_doc();
    let constants = annotation_constants();
    let (names, values): (Vec<_>, Vec<_>) = constants
        .iter()
        .partition(|(_, v)| v.starts_with("ringway.dev/"));

    // The annotations table: rows whose first cell is `ringway.dev/...`.
    let rows: Vec<(String, String)> = doc
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("| `ringway.dev/")?;
            let name = format!("ringway.dev/{}", &rest[..rest.find('`')?]);
            Some((name, line.to_owned()))
        })
        .collect();
    let mut problems = Vec::new();
    for (constant, name) in &names {
        if !rows.iter().any(|(n, _)| n == name) {
            problems.push(format!(
                "`{name}` (annotations::{constant}) has no row `| `{name}` | … |` in the annotations table"
            ));
        }
    }
    for (name, _) in &rows {
        if !names.iter().any(|(_, n)| n == name) {
            problems.push(format!(
                "the annotations table documents `{name}`, which crds/src/annotations.rs does not define: remove the row"
            ));
        }
    }
    let table: String = rows.iter().map(|(_, l)| l.as_str()).collect();
    for (constant, value) in &values {
        if !table.contains(&format!("`{value}`")) {
            problems.push(format!(
                "the value `{value}` (annotations::{constant}) is not mentioned in the annotations table"
            ));
        }
    }

    // Every `ringway.dev/...` name on the page is an annotation (or the
    // API group's version).
    let crd = ringway_crds::crd();
    let api_versions: Vec<String> = crd
        .spec
        .versions
        .iter()
        .map(|v| format!("{}/{}", crd.spec.group, v.name))
        .collect();
    let mention = Regex::new(r"ringway\.dev/[a-z0-9-]+").expect("regex");
    for (i, line) in doc.lines().enumerate() {
        for m in mention.find_iter(line) {
            let name = m.as_str();
            if !names.iter().any(|(_, n)| n == name) && !api_versions.iter().any(|v| v == name) {
                problems.push(format!(
                    "docs/configuration.md:{}: `{name}` is not an annotation in crds/src/annotations.rs",
                    i + 1
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "the annotations in docs/configuration.md do not match crds/src/annotations.rs:\n  {}",
        problems.join("\n  ")
    );
}
