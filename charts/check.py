#!/usr/bin/env python3
"""Checks the Helm chart and the images without a cluster or a container
engine; `.ci/run` runs it and fails when it does.

1. Lint: Helm's own linter (its Go library, from the PyPI package
   helm-sdkpy) on charts/ringway with its default values and with every
   value set in charts/tests/values/: no warning, no error. The linter
   renders every template and checks the values against
   values.schema.json.
2. Lint must fail for every value set in charts/tests/invalid/ (so the
   checks above can fail).
3. Images: each docker/*.Dockerfile builds a release binary that exists in
   the workspace, runs it as the user the chart and the operator's pod
   template run it as, and names the image the chart and the code use.
4. The operator's flags that the chart's Deployment passes exist.
5. values.yaml has a comment on every key.

Helm's linter does not export its messages' text through helm-sdkpy, only
their severity and file; values are therefore also validated here with
jsonschema, whose messages say what is wrong.

Usage: python3 charts/check.py   (from anywhere; needs helm-sdkpy, PyYAML,
jsonschema, and cargo for step 4)
"""

import asyncio
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import helm_sdkpy
import jsonschema
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "ringway"
TESTS = ROOT / "charts" / "tests"
SEVERITY = {1: "info", 2: "warning", 3: "error"}
# The user every image and pod runs as.
NONROOT = 65532

failures = []


def fail(message):
    failures.append(message)
    print(f"  FAIL {message}")


def ok(message):
    print(f"  ok   {message}")


def merged(base, override):
    """Helm's merge of user values over the defaults: maps merge, the rest
    (lists too) is replaced."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def lint(values):
    """Lints a copy of the chart whose values.yaml is `values`; returns the
    linter's messages above info as (severity, path)."""
    with tempfile.TemporaryDirectory() as tmp:
        chart = Path(tmp) / "ringway"
        shutil.copytree(CHART, chart)
        (chart / "values.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
        result = asyncio.run(helm_sdkpy.Lint(helm_sdkpy.Configuration()).run(str(chart)))
    if result.get("TotalChartsLinted") != 1:
        return [(3, f"the linter linted {result.get('TotalChartsLinted')} charts")]
    return [
        (m["Severity"], m["Path"])
        for m in result.get("Messages") or []
        if m["Severity"] >= 2
    ]


def schema_errors(values):
    schema = json.loads((CHART / "values.schema.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'.'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}"
        for e in validator.iter_errors(values)
    ]


def check_values_comments():
    """Every key of values.yaml that the schema describes has a comment
    (the line above it, or at its end); keys inside free-form maps (a
    security context, resource quantities) are the Kubernetes API's."""
    print("values.yaml: a comment on every key")
    schema = json.loads((CHART / "values.schema.json").read_text())
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack = []  # (indent, key)
    missing = []
    for i, line in enumerate(lines):
        m = re.match(r"^( *)([A-Za-z][A-Za-z0-9]*):( .*)?$", line)
        if not m:
            continue
        indent, key = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parent = schema
        for _, k in stack:
            parent = (parent.get("properties") or {}).get(k, {})
        stack.append((indent, key))
        if "properties" not in parent:
            continue
        above = lines[i - 1].strip() if i > 0 else ""
        if not above.startswith("#") and "#" not in (m.group(3) or ""):
            missing.append(".".join(k for _, k in stack))
    if missing:
        fail(f"keys without a comment in charts/ringway/values.yaml: {', '.join(missing)}")
    else:
        ok("every key is commented")


def check_lint(defaults):
    print("lint: defaults and charts/tests/values/*.yaml must be clean")
    sets = [("defaults", {})] + [
        (str(p.relative_to(ROOT)), yaml.safe_load(p.read_text()) or {})
        for p in sorted((TESTS / "values").glob("*.yaml"))
    ]
    for name, override in sets:
        values = merged(defaults, override)
        problems = [f"{SEVERITY[s]} in {path}" for s, path in lint(values)]
        problems += [f"schema: {e}" for e in schema_errors(values)]
        if problems:
            fail(f"{name}: " + "; ".join(problems))
        else:
            ok(name)

    print("lint: charts/tests/invalid/*.yaml must fail")
    invalid = sorted((TESTS / "invalid").glob("*.yaml"))
    if not invalid:
        fail("charts/tests/invalid/ holds no value sets")
    for path in invalid:
        values = merged(defaults, yaml.safe_load(path.read_text()) or {})
        errors = [p for s, p in lint(values) if s >= 3]
        name = path.relative_to(ROOT)
        if errors:
            ok(f"{name}: rejected ({', '.join(errors)})")
        else:
            fail(f"{name}: the linter accepted it")


def dockerfile(path):
    """The parts of a Dockerfile this check reads."""
    text = path.read_text()
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    return {
        "text": text,
        "image": re.search(r"The image (\S+?):", text),
        "builder": re.match(r"rust:(\d+)\.(\d+)", stages[0]) if stages else None,
        "build": re.search(
            r"cargo build --release --locked -p (\S+) --bin (\S+)", stages[0] if stages else ""
        ),
        "runtime": stages[-1] if stages else "",
    }


def cargo_bins():
    """Every binary target of the workspace, by package."""
    out = subprocess.run(
        ["cargo", "metadata", "--no-deps", "--format-version", "1", "--locked"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    bins = {}
    for package in json.loads(out)["packages"]:
        for target in package["targets"]:
            if "bin" in target["kind"]:
                bins.setdefault(package["name"], set()).add(target["name"])
    return bins


def check_images(defaults):
    print("images: docker/*.Dockerfile against the chart and the code")
    cargo = (ROOT / "Cargo.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', cargo, re.M).group(1)
    rust_version = tuple(int(x) for x in re.search(r'^rust-version = "(\d+)\.(\d+)"', cargo, re.M).groups())
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    if chart["appVersion"] == version:
        ok(f"Chart.yaml appVersion {version} is the workspace's version (the images' default tag)")
    else:
        fail(f"Chart.yaml appVersion {chart['appVersion']} is not the workspace's version {version}")

    operator_main = (ROOT / "operator/src/main.rs").read_text()
    default_dataplane = re.search(r'default_value = concat!\("([^"]+):", env!\("CARGO_PKG_VERSION"\)\)', operator_main)
    pod = (ROOT / "operator/src/children/pod.rs").read_text()
    pod_user = re.search(r"const NONROOT: i64 = (\d+);", pod)
    chat_example = ROOT / "examples/chat-gateway.yaml"
    chat_images = set(re.findall(r"image:\s*(\S+):", chat_example.read_text())) if chat_example.exists() else set()
    # Where each image's name must agree.
    expected = {
        "ringway-operator": {"charts/ringway/values.yaml image.repository": defaults["image"]["repository"]},
        "ringway-dataplane": {
            "charts/ringway/values.yaml dataplane.image.repository": defaults["dataplane"]["image"]["repository"],
            "the operator's default --image (operator/src/main.rs)": default_dataplane.group(1) if default_dataplane else None,
        },
        "ringway-chat": {"examples/chat-gateway.yaml": next(iter(chat_images), None)},
    }
    users = {
        "charts/ringway/values.yaml podSecurityContext.runAsUser": defaults["podSecurityContext"].get("runAsUser"),
        "charts/ringway/values.yaml podSecurityContext.runAsGroup": defaults["podSecurityContext"].get("runAsGroup"),
        "the gateway pods' user (operator/src/children/pod.rs NONROOT)": int(pod_user.group(1)) if pod_user else None,
    }
    for where, user in users.items():
        if user == NONROOT:
            ok(f"{where} is {NONROOT}")
        else:
            fail(f"{where} is {user}, not {NONROOT}")

    bins = cargo_bins()
    files = sorted((ROOT / "docker").glob("*.Dockerfile"))
    if {f.name.removesuffix(".Dockerfile") for f in files} != set(expected):
        fail(f"docker/ holds {[f.name for f in files]}, expected one Dockerfile per image {sorted(expected)}")
    for path in files:
        name = path.relative_to(ROOT)
        image_name = path.name.removesuffix(".Dockerfile")
        d = dockerfile(path)
        problems = []
        if not d["builder"] or tuple(int(x) for x in d["builder"].groups()) < rust_version:
            problems.append(f"the build stage is not a rust image >= {'.'.join(map(str, rust_version))}")
        if not d["build"]:
            problems.append("no `cargo build --release --locked -p <package> --bin <binary>`")
        else:
            package, binary = d["build"].groups()
            if binary != image_name:
                problems.append(f"builds {binary}, not {image_name}")
            if binary not in bins.get(package, set()):
                problems.append(f"package {package} has no binary {binary} (it has {sorted(bins.get(package, []))})")
            if f"target/release/{binary}" not in d["text"]:
                problems.append(f"does not copy target/release/{binary}")
            if f'ENTRYPOINT ["/usr/local/bin/{binary}"]' not in d["runtime"]:
                problems.append(f"the runtime stage's entrypoint is not /usr/local/bin/{binary}")
        if "gcr.io/distroless/" not in d["runtime"].splitlines()[0]:
            problems.append("the runtime stage is not distroless")
        if f"USER {NONROOT}:{NONROOT}" not in d["runtime"]:
            problems.append(f"the runtime stage does not run as USER {NONROOT}:{NONROOT}")
        full = d["image"].group(1) if d["image"] else None
        if full != f"ghcr.io/ringway-dev/{image_name}":
            problems.append(f"its header names image {full}, not ghcr.io/ringway-dev/{image_name}")
        for where, repository in expected.get(image_name, {}).items():
            if repository != full:
                problems.append(f"{where} names {repository}, the Dockerfile builds {full}")
        if problems:
            fail(f"{name}: " + "; ".join(problems))
        else:
            ok(f"{name}: {full}, release build, distroless, user {NONROOT}, named alike everywhere")


def operator_binary():
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    binary = target / "debug" / "ringway-operator"
    if not binary.exists():
        subprocess.run(["cargo", "build", "-q", "--locked", "-p", "ringway-operator"], cwd=ROOT, check=True)
    return binary


def check_flags():
    print("flags: every --flag the chart passes is one the operator takes")
    template = (CHART / "templates/deployment.yaml").read_text()
    flags = sorted(set(re.findall(r"^\s*- (--[a-z-]+)=", template, re.M)))
    help_text = subprocess.run(
        [str(operator_binary()), "--help"], check=True, capture_output=True, text=True
    ).stdout
    taken = set(re.findall(r"(--[a-z-]+)", help_text))
    for flag in flags:
        if flag in taken:
            ok(flag)
        else:
            fail(f"templates/deployment.yaml passes {flag}, which `ringway-operator --help` does not list")


def main():
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    print(f"helm library {helm_sdkpy.get_version()}")
    check_values_comments()
    check_lint(defaults)
    check_images(defaults)
    check_flags()
    if failures:
        print(f"\n{len(failures)} chart check(s) failed")
        sys.exit(1)
    print("\nchart checks passed")


if __name__ == "__main__":
    main()
