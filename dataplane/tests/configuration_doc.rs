//! `docs/configuration.md` documents every key of the standalone config file,
//! and only keys that exist, with the parser's defaults.
//!
//! The config types (`dataplane/src/config.rs`) derive neither `Serialize`
//! nor a schema, so the keys are learned from the parser itself. Every struct
//! there has `#[serde(deny_unknown_fields)]`, and serde's answer to an
//! unknown key lists the known ones: `listener: unknown field `zzz`, expected
//! one of `address`, `reusePort`, `tls``. Writing a mapping with a bogus key
//! at each key found, recursively, tells what each key is:
//!
//! - another "unknown field" answer: an object, whose keys are listed;
//! - "expected a sequence": a list, probed again with `[{zzz: 1}]`;
//! - "expected a YAML tag": an enum, whose variants the answer to the string
//!   `zzz` lists ("unknown variant `zzz`, expected one of …");
//! - any other "invalid type: map, expected X": a value of type X (`f64`,
//!   `u32`, `socket address`, `path string`, …).
//!
//! A struct that lost `deny_unknown_fields` would accept the bogus key
//! silently, and the test says so. Nothing here depends on field order, on
//! Rust names, or on anything but the parser's public behaviour.
//!
//! The tests then check, against the tables under `## The standalone config
//! file` (rows `| `key` | type | default | meaning |`):
//!
//! - every key has a row and every row is a key;
//! - the type column agrees with the parser (`seconds` for `f64`, `integer`,
//!   `boolean`, `host:port`, `file path`, `string`, `object`, `list`, and
//!   every enum variant in backticks);
//! - a default written as a code span (`` `20` ``) is the parser's: a config
//!   that leaves the key out parses to the same `Config` (compared by its
//!   `Debug` form) as one that writes that value; a key documented as
//!   `required` cannot be left out, and one documented as `—` can;
//! - every ```yaml example of that part is accepted by `Config::from_yaml`,
//!   laid over a minimal config (each top-level key of the example replaces
//!   the minimal one);
//! - the mapping onto the CRD holds: a key with the same path as a spec field
//!   of the checked-in CRD (`crds/websocketgateway.yaml`, which
//!   `crds/tests/crd.rs` keeps equal to the types) has the same default and
//!   enum values, and every other key and spec field is in the mapping table.
//!
//! The CRD's own tables are checked by `crds/tests/configuration_doc.rs`.

use std::path::PathBuf;

use ringway_dataplane::Config;
use serde_yaml::{Mapping, Value};

/// A key no config struct has.
const PROBE: &str = "zzz_not_a_key";
const PART: &str = "## The standalone config file";

/// A standalone config with every optional section that has required keys
/// of its own, so that each documented key has a parent to live in.
const STANDALONE: &str = "\
listener:
  address: 127.0.0.1:8080
  tls: {certFile: cert.pem, keyFile: key.pem}
admin: {address: 127.0.0.1:9090}
routes:
  - name: r
    key: {source: Query, name: k}
    backends: [127.0.0.1:9001]
";

/// The same for a shard (which has no routes).
const SHARD: &str = "\
listener:
  address: 127.0.0.1:8080
  tls: {certFile: cert.pem, keyFile: key.pem}
admin: {address: 127.0.0.1:9090}
shard:
  peer: {address: 127.0.0.1:7000, tokenFile: token}
  control: {address: 127.0.0.1:7443, certFile: cert.pem, keyFile: key.pem, clientCaFile: ca.pem}
";

// ------------------------------------------------------ the parser's keys

#[derive(Clone, Debug, PartialEq)]
enum Step {
    Field(String),
    Item,
}

fn display(steps: &[Step]) -> String {
    let mut out = String::new();
    for step in steps {
        match step {
            Step::Field(name) if out.is_empty() => out.push_str(name),
            Step::Field(name) => {
                out.push('.');
                out.push_str(name);
            }
            Step::Item => out.push_str("[]"),
        }
    }
    out
}

/// `key.path[].like.this` as steps.
fn steps_of(path: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    for part in path.split('.') {
        let name = part.trim_end_matches("[]");
        steps.push(Step::Field(name.to_owned()));
        for _ in 0..(part.len() - name.len()) / 2 {
            steps.push(Step::Item);
        }
    }
    steps
}

/// What a key holds, as the parser sees it.
#[derive(Clone, Debug)]
enum Kind {
    Object(Vec<String>),
    List(Box<Kind>),
    Enum(Vec<String>),
    /// serde's name of the expected value: `f64`, `u32`, `a boolean`, …
    Scalar(String),
}

/// `leaf` placed at `steps`: `{a: [{b: leaf}]}` for `a[].b`.
fn nest(steps: &[Step], leaf: Value) -> Value {
    steps.iter().rev().fold(leaf, |inner, step| match step {
        Step::Field(name) => {
            let mut m = Mapping::new();
            m.insert(Value::from(name.as_str()), inner);
            Value::Mapping(m)
        }
        Step::Item => Value::Sequence(vec![inner]),
    })
}

fn parse(value: &Value) -> Result<Config, String> {
    let text = serde_yaml::to_string(value).expect("a YAML value serializes");
    Config::from_yaml(&text).map_err(|e| e.to_string())
}

/// The backticked names in `text` after `marker` (up to " at line").
fn listed_after(text: &str, marker: &str) -> Option<Vec<String>> {
    let rest = &text[text.find(marker)? + marker.len()..];
    let rest = rest.split(" at line ").next().unwrap_or(rest);
    Some(
        rest.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect(),
    )
}

fn classify(steps: &[Step]) -> Kind {
    let path = display(steps);
    let mut probe = Mapping::new();
    probe.insert(Value::from(PROBE), Value::from(1));
    let answer = match parse(&nest(steps, Value::Mapping(probe))) {
        Ok(_) => panic!(
            "the config parser accepted the unknown key `{PROBE}` under `{path}`: \
             add #[serde(deny_unknown_fields)] to its struct in dataplane/src/config.rs"
        ),
        Err(e) => e,
    };
    if let Some(fields) = listed_after(&answer, &format!("unknown field `{PROBE}`, expected ")) {
        return Kind::Object(fields);
    }
    if answer.contains("invalid type: map, expected a sequence") {
        let mut item = steps.to_vec();
        item.push(Step::Item);
        return Kind::List(Box::new(classify(&item)));
    }
    if answer.contains("invalid type: map, expected a YAML tag") {
        let answer = parse(&nest(steps, Value::from(PROBE)))
            .err()
            .unwrap_or_default();
        let variants = listed_after(&answer, &format!("unknown variant `{PROBE}`, expected "))
            .unwrap_or_else(|| {
                panic!("`{path}` looks like an enum, but the parser said: {answer}")
            });
        return Kind::Enum(variants);
    }
    if let Some(at) = answer.find("invalid type: map, expected ") {
        let rest = &answer[at + "invalid type: map, expected ".len()..];
        return Kind::Scalar(rest.split(" at line ").next().unwrap_or(rest).to_owned());
    }
    panic!(
        "cannot tell what `{path}` is from the config parser's answer to a mapping with an \
         unknown key: {answer}\n(if its struct lost #[serde(deny_unknown_fields)], put it back; \
         otherwise teach `classify` in this test the new answer)"
    )
}

/// Every key of the config, depth first: `listener`, `listener.address`, …
fn config_keys() -> Vec<(String, Kind)> {
    fn walk(steps: Vec<Step>, out: &mut Vec<(String, Kind)>) {
        let kind = classify(&steps);
        if !steps.is_empty() {
            out.push((display(&steps), kind.clone()));
        }
        let (base, fields) = match kind {
            Kind::Object(fields) => (steps, fields),
            Kind::List(inner) => match *inner {
                Kind::Object(fields) => {
                    let mut base = steps;
                    base.push(Step::Item);
                    (base, fields)
                }
                _ => return,
            },
            _ => return,
        };
        for field in fields {
            let mut child = base.clone();
            child.push(Step::Field(field));
            walk(child, out);
        }
    }
    let mut out = Vec::new();
    walk(Vec::new(), &mut out);
    assert!(
        out.len() > 20,
        "found only {} config keys; is the probing broken?",
        out.len()
    );
    out
}

/// Whether the type column `ty` describes `kind`, or what it should say.
fn type_mismatch(ty: &str, kind: &Kind) -> Option<String> {
    let need = |words: &[&str]| -> Option<String> {
        if words.iter().any(|w| ty.contains(w)) {
            None
        } else {
            Some(format!("say {}", words.join(" or ")))
        }
    };
    match kind {
        Kind::Object(_) => need(&["object"]),
        Kind::List(_) => need(&["list"]),
        Kind::Enum(variants) => {
            let missing: Vec<&String> = variants
                .iter()
                .filter(|v| !ty.contains(&format!("`{v}`")))
                .collect();
            if missing.is_empty() {
                None
            } else {
                Some(format!("list every value; missing {missing:?}"))
            }
        }
        Kind::Scalar(s) => match s.as_str() {
            "f64" => need(&["seconds", "number"]),
            "u8" | "u16" | "u32" | "u64" | "usize" => need(&["integer"]),
            "a boolean" => need(&["boolean"]),
            "socket address" => need(&["`host:port`"]),
            "path string" => need(&["file path"]),
            "a string" => need(&["string", "`host:port`"]),
            other => Some(format!(
                "(this test does not know the parser's type `{other}`: teach `type_mismatch` about it)"
            )),
        },
    }
}

// ---------------------------------------------------------------- the page

fn read_doc() -> String {
    let path = PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR for tests"),
    )
    .join("../docs/configuration.md");
    std::fs::read_to_string(path).expect("docs/configuration.md is readable")
}

/// The lines of the standalone part, numbered from 1.
fn part(doc: &str) -> Vec<(usize, &str)> {
    let start = doc
        .lines()
        .position(|l| l.trim_end() == PART)
        .unwrap_or_else(|| panic!("docs/configuration.md has no heading `{PART}`"));
    let mut out = Vec::new();
    let mut in_code = false;
    for (i, line) in doc.lines().enumerate().skip(start + 1) {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        }
        if !in_code && line.starts_with("## ") {
            break;
        }
        out.push((i + 1, line));
    }
    out
}

fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    inner.split('|').map(|c| c.trim().to_owned()).collect()
}

fn code_spans(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// One table row: its line and cells, under a header whose first cell is
/// `header`.
struct Row {
    line: usize,
    cells: Vec<String>,
}

fn table_rows(doc: &str, header: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut current: Option<String> = None;
    let lines = part(doc);
    for (n, (line_no, line)) in lines.iter().enumerate() {
        if !line.starts_with('|') {
            current = None;
            continue;
        }
        let next_is_rule = lines
            .get(n + 1)
            .is_some_and(|(_, l)| l.starts_with("| ---"));
        if current.is_none() && next_is_rule {
            current = cells(line).first().cloned();
            continue;
        }
        if line.starts_with("| ---") {
            continue;
        }
        if current.as_deref() == Some(header) {
            rows.push(Row {
                line: *line_no,
                cells: cells(line),
            });
        }
    }
    rows
}

/// The documented keys: `(key, row)` for every row of a `| key | … |` table.
fn documented() -> Vec<(String, Row)> {
    let doc = read_doc();
    let rows = table_rows(&doc, "key");
    assert!(
        rows.len() > 20,
        "found only {} rows in the `| key | type | default | meaning |` tables under `{PART}`",
        rows.len()
    );
    rows.into_iter()
        .map(|row| {
            let spans = code_spans(&row.cells[0]);
            assert!(
                spans.len() == 1 && row.cells[0] == format!("`{}`", spans[0]) && row.cells.len() == 4,
                "docs/configuration.md:{}: a key row must read `| `key` | type | default | meaning |`, one key per row",
                row.line
            );
            (spans[0].clone(), row)
        })
        .collect()
}

#[test]
fn every_config_key_is_documented_and_every_documented_key_exists() {
    let keys = config_keys();
    let documented = documented();
    let mut problems = Vec::new();
    for (key, kind) in &keys {
        match documented.iter().find(|(k, _)| k == key) {
            None => problems.push(format!(
                "`{key}` is a config key ({kind:?}) without a row: add `| `{key}` | TYPE | DEFAULT | MEANING |` \
                 to the table of its section"
            )),
            Some((_, row)) => {
                if let Some(fix) = type_mismatch(&row.cells[1], kind) {
                    problems.push(format!(
                        "docs/configuration.md:{}: the type of `{key}` is `{}`, but the parser reads {kind:?}: {fix}",
                        row.line, row.cells[1]
                    ));
                }
            }
        }
    }
    for (i, (key, row)) in documented.iter().enumerate() {
        if !keys.iter().any(|(k, _)| k == key) {
            problems.push(format!(
                "docs/configuration.md:{}: `{key}` is documented but the config parser has no such key: \
                 remove or rename the row",
                row.line
            ));
        }
        if documented[..i].iter().any(|(k, _)| k == key) {
            problems.push(format!(
                "docs/configuration.md:{}: `{key}` has a second row",
                row.line
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "the standalone config tables of docs/configuration.md (under `{PART}`) do not match \
         dataplane/src/config.rs:\n  {}",
        problems.join("\n  ")
    );
}

/// The base config a key is checked in.
fn base_for(key: &str) -> Value {
    let text = if key.starts_with("shard") {
        SHARD
    } else {
        STANDALONE
    };
    serde_yaml::from_str(text).expect("the base configs are YAML")
}

/// The parent mapping of `steps` in `value` (first item of each list),
/// created where missing.
fn parent<'a>(value: &'a mut Value, steps: &[Step]) -> &'a mut Mapping {
    let mut at = value;
    for step in &steps[..steps.len() - 1] {
        at = match step {
            Step::Field(name) => {
                let map = at.as_mapping_mut().expect("a mapping on the way");
                map.entry(Value::from(name.as_str()))
                    .or_insert_with(|| Value::Mapping(Mapping::new()))
            }
            Step::Item => {
                if !at.is_sequence() {
                    *at = Value::Sequence(vec![Value::Mapping(Mapping::new())]);
                }
                let seq = at.as_sequence_mut().expect("a sequence");
                if seq.is_empty() {
                    seq.push(Value::Mapping(Mapping::new()));
                }
                &mut seq[0]
            }
        };
    }
    at.as_mapping_mut()
        .expect("the parent of a key is a mapping")
}

fn leaf_name(steps: &[Step]) -> String {
    match steps.last() {
        Some(Step::Field(name)) => name.clone(),
        _ => panic!("a key ends in a name"),
    }
}

#[test]
fn documented_defaults_and_required_keys_are_the_parsers() {
    let mut problems = Vec::new();
    for (key, row) in documented() {
        let steps = steps_of(&key);
        let default = &row.cells[2];
        let at = format!("docs/configuration.md:{}: `{key}`", row.line);
        if default.starts_with('`') {
            let text = &code_spans(default)[0];
            let value: Value = serde_yaml::from_str(text)
                .unwrap_or_else(|e| panic!("{at}: the default `{text}` is not YAML: {e}"));
            // Leaving the key out must read the same as writing the default.
            let name = leaf_name(&steps);
            let mut without = base_for(&key);
            parent(&mut without, &steps).remove(name.as_str());
            let mut with = without.clone();
            parent(&mut with, &steps).insert(Value::from(name), value);
            match (parse(&without), parse(&with)) {
                (Err(e), _) => problems.push(format!(
                    "{at} is documented to default to `{text}`, but the parser requires it: {e}"
                )),
                (_, Err(e)) => problems.push(format!(
                    "{at} is documented to default to `{text}`, which the parser rejects: {e}"
                )),
                (Ok(a), Ok(b)) if format!("{a:?}") != format!("{b:?}") => problems.push(format!(
                    "{at} is documented to default to `{text}`, but writing that value changes the \
                     parsed config, so the parser's default differs: fix the row or the default in \
                     dataplane/src/config.rs (or dataplane/api/src/defaults.rs, for one the CRD shares)"
                )),
                (Ok(_), Ok(_)) => {}
            }
        } else if default.starts_with("required") {
            let mut without = base_for(&key);
            let name = leaf_name(&steps);
            // (A key missing from the base configs, which parse, cannot be
            // required.)
            parent(&mut without, &steps).remove(name.as_str());
            match parse(&without) {
                Ok(_) => problems.push(format!(
                    "{at} is documented as required, but the parser accepts a config without it: \
                     document its default instead"
                )),
                Err(e) if !e.contains(&name) => problems.push(format!(
                    "{at} is documented as required; without it the parser fails, but not about it: {e}"
                )),
                Err(_) => {}
            }
        } else {
            assert!(
                default == "—",
                "{at}: the default must be a `value` in backticks, `required…` or `—`, not `{default}`"
            );
            // Optional: leaving it out is no "missing field" error. (It may
            // still be needed in some combinations, as `key.name` is.)
            let mut without = base_for(&key);
            let name = leaf_name(&steps);
            parent(&mut without, &steps).remove(name.as_str());
            if let Err(e) = parse(&without)
                && e.contains(&format!("missing field `{name}`"))
            {
                problems.push(format!(
                    "{at} is documented as optional (—), but the parser requires it: {e}"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "defaults in docs/configuration.md (under `{PART}`) disagree with the config parser:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn every_yaml_example_of_the_standalone_part_parses() {
    let doc = read_doc();
    let mut blocks: Vec<(usize, String)> = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (line_no, line) in part(&doc) {
        match &mut current {
            None if line.trim() == "```yaml" => current = Some((line_no, String::new())),
            Some(_) if line.trim() == "```" => blocks.extend(current.take()),
            Some((_, text)) => {
                text.push_str(line);
                text.push('\n');
            }
            None => {}
        }
    }
    assert!(
        blocks.len() >= 6,
        "expected a ```yaml example per section under `{PART}`, found {}",
        blocks.len()
    );
    for (line, text) in blocks {
        let at = format!("docs/configuration.md:{line} (a ```yaml example)");
        let example: Value =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{at} is not YAML: {e}"));
        let map = example
            .as_mapping()
            .unwrap_or_else(|| panic!("{at} is not a mapping"));
        let mut config: Value = if map.contains_key("shard") {
            let mut shard = base_for("shard");
            if let Some(m) = shard.as_mapping_mut() {
                m.remove("routes");
            }
            shard
        } else {
            serde_yaml::from_str("listener: {address: 127.0.0.1:8080}\nroutes: [{name: r, key: {source: Query, name: k}, backends: [127.0.0.1:9001]}]\n")
                .expect("YAML")
        };
        let target = config.as_mapping_mut().expect("a mapping");
        for (k, v) in map {
            target.insert(k.clone(), v.clone());
        }
        if let Err(e) = parse(&config) {
            panic!("{at} is rejected by the config parser: {e}");
        }
    }
}

// --------------------------------------------------- the mapping to the CRD

/// A field of the CRD's spec: its path without `spec.` and its schema.
fn crd_spec_fields() -> Vec<(String, Value)> {
    fn walk(schema: &Value, path: &str, out: &mut Vec<(String, Value)>) {
        if !path.is_empty() {
            out.push((path.to_owned(), schema.clone()));
        }
        let join = |name: &str| {
            if path.is_empty() {
                name.to_owned()
            } else {
                format!("{path}.{name}")
            }
        };
        if let Some(props) = schema["properties"].as_mapping() {
            for (name, child) in props {
                walk(child, &join(name.as_str().unwrap_or_default()), out);
            }
        }
        if let Some(props) = schema["items"]["properties"].as_mapping() {
            for (name, child) in props {
                let name = name.as_str().unwrap_or_default();
                walk(child, &format!("{path}[].{name}"), out);
            }
        }
    }
    let path = PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR for tests"),
    )
    .join("../crds/websocketgateway.yaml");
    let crd: Value = serde_yaml::from_str(
        &std::fs::read_to_string(path).expect("crds/websocketgateway.yaml is readable"),
    )
    .expect("the CRD is YAML");
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let mut out = Vec::new();
    walk(spec, "", &mut out);
    assert!(
        out.len() > 20,
        "the CRD's spec has too few fields: {}",
        out.len()
    );
    out
}

/// Whether `key` is `root` or below it.
fn is_under(key: &str, root: &str) -> bool {
    key == root
        || key
            .strip_prefix(root)
            .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

/// A scalar default for comparing across the two: numbers as `f64`.
fn comparable(v: &Value) -> String {
    match v.as_f64() {
        Some(x) => format!("{x}"),
        None => serde_yaml::to_string(v)
            .unwrap_or_default()
            .trim()
            .to_owned(),
    }
}

#[test]
fn same_named_keys_agree_with_the_crd_and_the_rest_is_in_the_mapping_table() {
    let doc = read_doc();
    let keys = config_keys();
    let documented = documented();
    let crd = crd_spec_fields();
    let mapping = table_rows(&doc, "standalone key");
    assert!(
        !mapping.is_empty(),
        "docs/configuration.md has no `| standalone key | WebSocketGateway field | how |` table under `{PART}`"
    );
    let mapped_keys: Vec<String> = mapping
        .iter()
        .flat_map(|r| code_spans(&r.cells[0]))
        .collect();
    let mapped_fields: Vec<String> = mapping
        .iter()
        .flat_map(|r| code_spans(&r.cells[1]))
        .map(|f| f.strip_prefix("spec.").unwrap_or(&f).to_owned())
        .collect();
    let mut problems = Vec::new();

    for row in &mapping {
        for key in code_spans(&row.cells[0]) {
            if !keys.iter().any(|(k, _)| *k == key) {
                problems.push(format!(
                    "docs/configuration.md:{}: the mapping table names `{key}`, which is not a config key",
                    row.line
                ));
            }
        }
        for field in code_spans(&row.cells[1]) {
            let bare = field.strip_prefix("spec.").unwrap_or(&field);
            if !crd.iter().any(|(p, _)| p == bare) {
                problems.push(format!(
                    "docs/configuration.md:{}: the mapping table names `{field}`, which is not a spec field of the CRD",
                    row.line
                ));
            }
        }
    }

    for (key, kind) in &keys {
        let Some((_, schema)) = crd.iter().find(|(p, _)| p == key) else {
            if !mapped_keys.iter().any(|m| is_under(key, m)) {
                problems.push(format!(
                    "`{key}` has no spec field of the same name (`spec.{key}`) and is not in the mapping \
                     table: add a row `| `{key}` | `spec.…` or — | how |`"
                ));
            }
            continue;
        };
        if let Kind::Enum(variants) = kind {
            let crd_values: Vec<String> = schema["enum"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            if *variants != crd_values {
                problems.push(format!(
                    "`{key}` takes {variants:?} but `spec.{key}` takes {crd_values:?}: the standalone \
                     config follows the spec, so make them agree"
                ));
            }
        }
        if matches!(kind, Kind::Object(_) | Kind::List(_)) {
            continue;
        }
        let ours = documented
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, row)| &row.cells[2])
            .filter(|d| d.starts_with('`'))
            .map(|d| {
                let text = &code_spans(d)[0];
                comparable(&serde_yaml::from_str(text).unwrap_or(Value::Null))
            });
        let theirs = Some(&schema["default"])
            .filter(|d| !d.is_null())
            .map(comparable);
        if ours != theirs {
            problems.push(format!(
                "`{key}` defaults to {} (as documented) but `spec.{key}` \
                 to {} (crds/websocketgateway.yaml): the standalone config follows the spec, so make \
                 them agree, or document the difference in the mapping table and rename the key",
                ours.as_deref().unwrap_or("nothing"),
                theirs.as_deref().unwrap_or("nothing"),
            ));
        }
    }

    for (field, _) in &crd {
        if !keys.iter().any(|(k, _)| k == field)
            && !mapped_fields.iter().any(|m| is_under(field, m))
        {
            problems.push(format!(
                "`spec.{field}` has no standalone key of the same name and is not in the mapping table: \
                 add a row `| `key` or — | `spec.{field}` | how |`"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "docs/configuration.md's mapping of standalone keys onto the CRD is out of date:\n  {}",
        problems.join("\n  ")
    );
}
