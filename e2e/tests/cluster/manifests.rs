//! The API server's verdict on the repository's manifests: every example
//! gateway is accepted and every manifest in `crds/tests/invalid/` refused
//! with its `# expect:` text, by a server-side dry run with strict field
//! validation (nothing is stored).

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::{kubectl::Kubectl, repo_file};

/// The texts a manifest in `crds/tests/invalid/` must be refused with: the
/// rule of `crds/tests/manifests.rs` (the first line is `# expect: <text>`),
/// and any `# expect:` lines right after it. `None` when the first line is
/// not one.
pub fn expected_errors(manifest: &str) -> Option<Vec<&str>> {
    let expected: Vec<&str> = manifest
        .lines()
        .map_while(|l| l.strip_prefix("# expect: "))
        .filter(|e| !e.trim().is_empty())
        .collect();
    (!expected.is_empty()).then_some(expected)
}

/// Whether a manifest holds a WebSocketGateway: a document whose top-level
/// `kind:` says so.
fn holds_a_gateway(manifest: &str) -> bool {
    manifest
        .lines()
        .any(|l| l.trim_end() == "kind: WebSocketGateway")
}

/// Every `.yaml` file under `dir`, subdirectories included, in order.
fn yaml_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(yaml_files(&path)?);
        } else if path.extension().is_some_and(|e| e == "yaml") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The manifests under `examples/` that hold a WebSocketGateway (with
/// whatever else they hold: the chat example brings its backend too).
pub fn example_gateways() -> anyhow::Result<Vec<PathBuf>> {
    let mut gateways = Vec::new();
    for path in yaml_files(&repo_file("examples"))? {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        if holds_a_gateway(&text) {
            gateways.push(path);
        }
    }
    Ok(gateways)
}

/// An API server's refusal in the wording of Kubernetes 1.35 and later,
/// which the `# expect:` lines use. Before 1.35 (the support floor is
/// 1.33), a CEL rule's error on an object or an array showed the node's
/// type as its value (`Invalid value: "object": <message>`, since then no
/// value), and a duplicate list-map key was printed with Go's `%#v`
/// (`map[string]interface {}{"name":"echo"}`, since then as JSON).
pub fn in_current_wording(said: &str) -> String {
    said.replace("Invalid value: \"object\": ", "Invalid value: ")
        .replace("Invalid value: \"array\": ", "Invalid value: ")
        .replace(
            "Duplicate value: map[string]interface {}{",
            "Duplicate value: {",
        )
}

/// The manifests the API server must refuse, each with what it must say.
pub fn invalid_manifests() -> anyhow::Result<Vec<(PathBuf, Vec<String>)>> {
    yaml_files(&repo_file("crds/tests/invalid"))?
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let expected = expected_errors(&text)
                .with_context(|| format!("{} has no `# expect:` first line", path.display()))?
                .into_iter()
                .map(str::to_owned)
                .collect();
            Ok((path, expected))
        })
        .collect()
}

/// Dry-runs every example and every invalid manifest in the kubectl's
/// namespace; returns one line per verdict that differs from the
/// expected one (empty: all as expected).
pub fn dry_run_mismatches(kubectl: &Kubectl) -> anyhow::Result<Vec<String>> {
    let dry_run = |path: &Path| {
        kubectl.output(
            &[
                "create",
                "--dry-run=server",
                "--validate=strict",
                "--namespace",
                &kubectl.namespace,
                "-f",
            ],
            Some(path),
        )
    };
    let shown = |path: &Path| {
        path.strip_prefix(repo_file(""))
            .unwrap_or(path)
            .display()
            .to_string()
    };
    let mut mismatches = Vec::new();

    let examples = example_gateways()?;
    anyhow::ensure!(
        examples.len() >= 4,
        "expected the minimal, full, chat and canary example gateways, found {examples:?}"
    );
    for path in &examples {
        let output = dry_run(path)?;
        if output.status.success() {
            println!("ok: {} accepted", shown(path));
        } else {
            mismatches.push(format!(
                "{}: refused, but every example must be accepted: {}",
                shown(path),
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
    }

    let invalid = invalid_manifests()?;
    anyhow::ensure!(!invalid.is_empty(), "crds/tests/invalid/ holds no manifest");
    for (path, expected) in &invalid {
        let output = dry_run(path)?;
        let said = String::from_utf8_lossy(&output.stderr);
        if output.status.success() {
            mismatches.push(format!(
                "{}: accepted, but must be refused with: {}",
                shown(path),
                expected.join(" / ")
            ));
            continue;
        }
        let said = in_current_wording(&said);
        let missing: Vec<&String> = expected.iter().filter(|e| !said.contains(*e)).collect();
        if missing.is_empty() {
            println!("ok: {} refused", shown(path));
        } else {
            for text in missing {
                mismatches.push(format!(
                    "{}: refused, but the API server did not say\n    {text}\n  it said\n    {}",
                    shown(path),
                    said.trim()
                ));
            }
        }
    }
    Ok(mismatches)
}

#[cfg(test)]
mod tests {
    use super::{
        example_gateways, expected_errors, holds_a_gateway, in_current_wording, invalid_manifests,
    };

    #[test]
    fn refusals_of_servers_before_1_35_read_as_todays() {
        // As a v1.33 server words them, and as v1.36 does.
        let before = r#"The WebSocketGateway "bad" is invalid: spec.routes: Invalid value: "array": two routes have the same pathPrefix; each prefix may appear once"#;
        let now = r#"The WebSocketGateway "bad" is invalid: spec.routes: Invalid value: two routes have the same pathPrefix; each prefix may appear once"#;
        assert_eq!(in_current_wording(before), now);
        assert_eq!(in_current_wording(now), now);
        let before = r#"spec.routes[1]: Duplicate value: map[string]interface {}{"name":"echo"}"#;
        assert_eq!(
            in_current_wording(before),
            r#"spec.routes[1]: Duplicate value: {"name":"echo"}"#
        );
        // A string value stays as it was.
        let pattern = r#"spec.routes[0].pathPrefix: Invalid value: "chat": spec.routes[0].pathPrefix in body should match"#;
        assert_eq!(in_current_wording(pattern), pattern);
    }

    #[test]
    fn the_expected_error_is_the_first_line() {
        let manifest = "# expect: spec.shards: Invalid value: 0: spec.shards in body should be greater than or equal to 1\napiVersion: ringway.dev/v1alpha1\n";
        assert_eq!(
            expected_errors(manifest),
            Some(vec![
                "spec.shards: Invalid value: 0: spec.shards in body should be greater than or equal to 1"
            ])
        );
    }

    #[test]
    fn expect_lines_right_after_the_first_count_too_and_later_ones_do_not() {
        let manifest = "# expect: one\n# expect: two\n# a comment\n# expect: not this\nkind: X\n";
        assert_eq!(expected_errors(manifest), Some(vec!["one", "two"]));
    }

    #[test]
    fn a_manifest_without_a_first_expect_line_expects_nothing() {
        assert_eq!(expected_errors("kind: X\n# expect: late\n"), None);
        assert_eq!(expected_errors("# expect: \nkind: X\n"), None);
        assert_eq!(expected_errors("#expect: no space\n"), None);
    }

    #[test]
    fn every_invalid_manifest_says_what_it_expects() {
        let invalid = invalid_manifests().expect("crds/tests/invalid/ is readable");
        assert!(invalid.len() >= 5, "{invalid:?}");
        assert!(invalid.iter().all(|(_, expected)| !expected.is_empty()));
    }

    #[test]
    fn the_example_gateways_are_the_files_of_that_kind() {
        let names: Vec<String> = example_gateways()
            .expect("examples/ is readable")
            .iter()
            .map(|p| p.to_string_lossy().replace('\\', "/"))
            .collect();
        for wanted in [
            "examples/gateway-minimal.yaml",
            "examples/gateway-full.yaml",
            "examples/chat-gateway.yaml",
            "examples/canary/gateway.yaml",
        ] {
            assert!(
                names.iter().any(|n| n.ends_with(wanted)),
                "{wanted} not in {names:#?}"
            );
        }
        assert!(
            !names
                .iter()
                .any(|n| n.ends_with("standalone.yaml") || n.ends_with("shard.yaml")),
            "data-plane configs are not gateways: {names:#?}"
        );
        assert!(holds_a_gateway(
            "---\nkind: Service\n---\nkind: WebSocketGateway\n"
        ));
        assert!(!holds_a_gateway("spec:\n  kind: WebSocketGateway\n"));
    }
}
