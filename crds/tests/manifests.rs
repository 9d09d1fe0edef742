//! Example manifests are accepted by the generated schema; wrong ones are
//! rejected with a message that names the field, as the API server would.

mod support;

use std::path::{Path, PathBuf};

use ringway_crds::WebSocketGateway;
use serde_json::Value;

/// Every `.yaml` file under `dir`, subdirectories included, in order.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
    {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            files.extend(yaml_files(&path));
        } else if path.extension().is_some_and(|e| e == "yaml") {
            files.push(path);
        }
    }
    files.sort();
    files
}

fn parse(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("readable manifest");
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every document of a multi-document manifest (`---` between them).
fn parse_all(path: &Path) -> Vec<Value> {
    use serde::Deserialize;
    let text = std::fs::read_to_string(path).expect("readable manifest");
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .collect()
}

#[test]
fn every_example_gateway_is_accepted() {
    let crd = ringway_crds::crd();
    let examples = PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR for tests"),
    )
    .join("../examples");
    let mut checked = 0;
    let manifests = yaml_files(&examples)
        .into_iter()
        .flat_map(|path| parse_all(&path).into_iter().map(move |m| (path.clone(), m)));
    for (path, manifest) in manifests {
        if manifest["kind"] != "WebSocketGateway" {
            continue;
        }
        let errors = support::validate(&crd, &manifest);
        assert!(
            errors.is_empty(),
            "{} was rejected:\n{}",
            path.display(),
            errors.join("\n")
        );
        // What the schema accepts, the operator must be able to read.
        serde_json::from_value::<WebSocketGateway>(manifest)
            .unwrap_or_else(|e| panic!("{} does not deserialize: {e}", path.display()));
        checked += 1;
    }
    assert!(
        checked >= 4,
        "expected the minimal, full, chat and canary examples, found {checked}"
    );
}

/// Each file in `tests/invalid/` starts with `# expect: <message>`, the error
/// (or a prefix of it) that it must be rejected with.
#[test]
fn wrong_manifests_are_rejected_naming_the_field() {
    let crd = ringway_crds::crd();
    let dir = PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR for tests"),
    )
    .join("tests/invalid");
    let files = yaml_files(&dir);
    assert!(files.len() >= 5, "the invalid manifests are missing");
    for path in files {
        let text = std::fs::read_to_string(&path).expect("readable manifest");
        let expected = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} has no `# expect:` line", path.display()));
        let errors = support::validate(&crd, &parse(&path));
        assert!(
            errors.iter().any(|e| e.starts_with(expected)),
            "{}: expected an error starting with\n  {expected}\ngot\n  {}",
            path.display(),
            errors.join("\n  ")
        );
    }
}

#[test]
fn defaults_are_filled_in_like_the_api_server_does() {
    let crd = ringway_crds::crd();
    let examples = PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR for tests"),
    )
    .join("../examples");
    let minimal = parse(&examples.join("gateway-minimal.yaml"));
    let schema = serde_json::to_value(&crd.spec.versions[0].schema).expect("schema");
    let spec_schema = &schema["openAPIV3Schema"]["properties"]["spec"];
    let defaulted = kube_cel::apply_defaults(spec_schema, &minimal["spec"]);
    // The defaults the API server stores must equal the ones the operator
    // assumes when it reads an object that predates a field.
    let from_serde: WebSocketGateway = serde_json::from_value(minimal.clone()).expect("minimal");
    assert_eq!(
        defaulted,
        serde_json::to_value(&from_serde.spec).expect("spec")
    );
    assert_eq!(defaulted["shards"], 2);
    assert_eq!(defaulted["routes"][0]["pathPrefix"], "/");
    assert_eq!(defaulted["connections"]["heartbeat"]["intervalSeconds"], 20);
}
