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
6. Render: `helm install` through Helm's library against a fake API server
   (discovery answers and a record of every object created), for every
   value set: the RBAC rendered is files/rbac/*.yaml (which a Rust test
   holds equal to the operator's table), the CRD is the generated one and
   kept, the pod is non-root and read-only with its probes and flags (its
   --operator-pod-labels select its own pods), the Services and
   ServiceMonitor select what they should, and every object carries the
   standard labels. The invalid value sets must be refused.
7. Support floor: the chart's kubeVersion names the oldest Kubernetes minor
   the product supports, which is the API version the workspace builds its
   Kubernetes types for (k8s-openapi's `v1_NN` feature) and what the READMEs
   name; `helm install` succeeds against an API server of that version and
   is refused by one a minor older.

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
import tomllib
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


def value_sets():
    """(name, values over the defaults) for the defaults and every file in
    charts/tests/values/."""
    return [("defaults", {})] + [
        (str(p.relative_to(ROOT)), yaml.safe_load(p.read_text()) or {})
        for p in sorted((TESTS / "values").glob("*.yaml"))
    ]


def check_lint(defaults):
    print("lint: defaults and charts/tests/values/*.yaml must be clean")
    for name, override in value_sets():
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


# ---- Rendering: `helm install` against a fake API server.

class FakeApiServer:
    """Just enough of a Kubernetes API server for `helm install`: discovery
    for the kinds the chart renders, 404 for every read, and a record of
    every object created. Helm's own code renders the templates and posts
    each object, so the objects recorded are what a cluster would receive.
    """

    GROUPS = {
        "": ("v1", [("serviceaccounts", "ServiceAccount", True), ("services", "Service", True),
                    ("secrets", "Secret", True), ("configmaps", "ConfigMap", True),
                    ("namespaces", "Namespace", False)]),
        "apps": ("v1", [("deployments", "Deployment", True)]),
        "rbac.authorization.k8s.io": ("v1", [
            ("clusterroles", "ClusterRole", False), ("clusterrolebindings", "ClusterRoleBinding", False),
            ("roles", "Role", True), ("rolebindings", "RoleBinding", True)]),
        "apiextensions.k8s.io": ("v1", [("customresourcedefinitions", "CustomResourceDefinition", False)]),
        "monitoring.coreos.com": ("v1", [("servicemonitors", "ServiceMonitor", True)]),
    }

    def __init__(self, version):
        import http.server
        import threading

        server = self
        self.created = []
        # (major, minor) that /version reports.
        self.version = version

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def send(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self.send(*server.discovery(self.path.split("?")[0]))

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Type", "").startswith("application/json"):
                    server.created.append(json.loads(body))
                self.send(201, json.loads(body) if body.startswith(b"{") else {})

            def do_PATCH(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send(200, {})

            do_PUT = do_PATCH

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.dir = tempfile.TemporaryDirectory()
        self.kubeconfig = Path(self.dir.name) / "kubeconfig"
        port = self.httpd.server_address[1]
        self.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
            "users": [{"name": "fake", "user": {"token": "fake"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            "current-context": "fake",
        }))

    def discovery(self, path):
        def resources(group_version, items):
            return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
                    "resources": [{"name": n, "singularName": "", "namespaced": ns, "kind": k,
                                   "verbs": ["create", "get", "list", "patch", "update", "delete"]}
                                  for n, k, ns in items]}
        if path == "/version":
            major, minor = self.version
            return 200, {"major": str(major), "minor": str(minor), "gitVersion": f"v{major}.{minor}.0"}
        if path == "/api":
            return 200, {"kind": "APIVersions", "versions": ["v1"]}
        if path == "/api/v1":
            return 200, resources("v1", self.GROUPS[""][1])
        if path == "/apis":
            return 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v}],
                 "preferredVersion": {"groupVersion": f"{g}/{v}", "version": v}}
                for g, (v, _) in self.GROUPS.items() if g]}
        for g, (v, items) in self.GROUPS.items():
            if g and path == f"/apis/{g}/{v}":
                return 200, resources(f"{g}/{v}", items)
        return 404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}

    def install(self, values):
        """The objects `helm install ringway charts/ringway -n ringway-system
        --values <values>` creates."""
        self.created = []
        config = helm_sdkpy.Configuration(namespace=RELEASE_NAMESPACE, kubeconfig=str(self.kubeconfig))
        asyncio.run(helm_sdkpy.Install(config).run("ringway", str(CHART), values=values, wait=False, timeout=30))
        return list(self.created)

    def stop(self):
        self.httpd.shutdown()
        self.dir.cleanup()


RELEASE_NAMESPACE = "ringway-system"
STANDARD_LABELS = ["app.kubernetes.io/name", "app.kubernetes.io/instance",
                   "app.kubernetes.io/version", "app.kubernetes.io/managed-by"]


def rules_file(name):
    return yaml.safe_load((CHART / "files" / "rbac" / name).read_text())


def rendered_problems(objects, values):
    """What is wrong with the objects one value set renders; `values` are
    the chart's defaults with the set over them."""
    problems = []
    by_kind = {}
    for o in objects:
        by_kind.setdefault(o["kind"], []).append(o)
        missing = [l for l in STANDARD_LABELS if l not in (o["metadata"].get("labels") or {})]
        if missing:
            problems.append(f"{o['kind']} {o['metadata']['name']} lacks labels {missing}")

    def one(kind):
        found = by_kind.get(kind, [])
        return found[0] if len(found) == 1 else None

    # RBAC: the rendered rules are the files, which a Rust test holds equal
    # to the operator's table; bindings name the ServiceAccount.
    namespaces = values.get("watchNamespaces") or []
    gateways, leader = rules_file("gateways.yaml"), rules_file("leader-election.yaml")
    roles = by_kind.get("Role", [])
    if namespaces:
        if by_kind.get("ClusterRole"):
            problems.append("watchNamespaces is set but a ClusterRole was rendered")
        for ns in namespaces:
            here = [r for r in roles if r["metadata"].get("namespace") == ns]
            if len(here) != 1 or here[0]["rules"] != gateways:
                problems.append(f"namespace {ns}: not exactly one Role with files/rbac/gateways.yaml's rules")
    else:
        cluster_role = one("ClusterRole")
        if not cluster_role or cluster_role["rules"] != gateways:
            problems.append("no ClusterRole with files/rbac/gateways.yaml's rules")
    leader_roles = [r for r in roles if r["metadata"]["name"].endswith("-leader-election")]
    if values.get("leaderElection", {}).get("enabled", True):
        if len(leader_roles) != 1 or leader_roles[0]["rules"] != leader \
                or leader_roles[0]["metadata"].get("namespace") != RELEASE_NAMESPACE:
            problems.append("no leader-election Role in the release namespace with files/rbac/leader-election.yaml's rules")
    account = one("ServiceAccount")
    for binding in by_kind.get("ClusterRoleBinding", []) + by_kind.get("RoleBinding", []):
        subject = binding["subjects"][0]
        if not account or subject["name"] != account["metadata"]["name"] or subject["namespace"] != RELEASE_NAMESPACE:
            problems.append(f"{binding['kind']} {binding['metadata']['name']} binds {subject}, not the chart's ServiceAccount")

    # The operator's pod: non-root, read-only, probed, given its flags.
    deployment = one("Deployment")
    if not deployment:
        return problems + ["not exactly one Deployment"]
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    pod_sc, sc = pod["spec"].get("securityContext", {}), container.get("securityContext", {})
    if pod_sc.get("runAsNonRoot") is not True or pod_sc.get("runAsUser") != NONROOT:
        problems.append(f"the pod does not run as non-root user {NONROOT}: {pod_sc}")
    if sc.get("readOnlyRootFilesystem") is not True or sc.get("allowPrivilegeEscalation") is not False \
            or sc.get("capabilities", {}).get("drop") != ["ALL"]:
        problems.append(f"the container is not read-only and unprivileged: {sc}")
    probes = {p: container.get(p, {}).get("httpGet", {}).get("path") for p in ["livenessProbe", "readinessProbe"]}
    if probes != {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}:
        problems.append(f"probes: {probes}")
    if pod["spec"].get("serviceAccountName") != (account or {}).get("metadata", {}).get("name"):
        problems.append("the pod does not run as the chart's ServiceAccount")
    selector = deployment["spec"]["selector"]["matchLabels"]
    if any(pod["metadata"]["labels"].get(k) != v for k, v in selector.items()):
        problems.append("the Deployment's selector does not match its pods")
    args = container.get("args", [])
    dataplane = values["dataplane"]["image"]
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    want_image = f"{dataplane['repository']}:{dataplane['tag'] or app_version}"
    if f"--image={want_image}" not in args:
        problems.append(f"args {args} do not pass --image={want_image}")
    if namespaces and f"--namespace={','.join(namespaces)}" not in args:
        problems.append(f"args {args} do not pass --namespace={','.join(namespaces)}")
    if not namespaces and any(a.startswith("--namespace") for a in args):
        problems.append(f"args {args} restrict namespaces though watchNamespaces is empty")
    # Gateways' NetworkPolicies admit the pods these labels select to the
    # control port: they must select the operator's own pods.
    pod_labels = [a.split("=", 1)[1] for a in args if a.startswith("--operator-pod-labels=")]
    pairs = [p.split("=", 1) for p in pod_labels[0].split(",")] if pod_labels else []
    if not pairs or any(len(p) != 2 or pod["metadata"]["labels"].get(p[0]) != p[1] for p in pairs):
        problems.append(f"args {args} do not pass --operator-pod-labels selecting the operator's pods")
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in container.get("env", [])}
    if env.get("POD_NAMESPACE") != "metadata.namespace":
        problems.append("POD_NAMESPACE (the operator's namespace) is not the pod's namespace")

    # Metrics: the Service selects the pods; the ServiceMonitor the Service.
    service = one("Service")
    if service and any(pod["metadata"]["labels"].get(k) != v for k, v in service["spec"]["selector"].items()):
        problems.append("the metrics Service does not select the operator's pods")
    monitor = one("ServiceMonitor")
    wants_monitor = values.get("metrics", {}).get("serviceMonitor", {}).get("enabled", False)
    if bool(monitor) != wants_monitor:
        problems.append(f"ServiceMonitor rendered: {bool(monitor)}, wanted: {wants_monitor}")
    if monitor and service and any(service["metadata"]["labels"].get(k) != v
                                   for k, v in monitor["spec"]["selector"]["matchLabels"].items()):
        problems.append("the ServiceMonitor does not select the metrics Service")

    # The CRD: the generated one, kept on uninstall.
    crds = values.get("crds", {})
    crd = one("CustomResourceDefinition")
    if bool(crd) != crds.get("install", True):
        problems.append(f"CRD rendered: {bool(crd)}, wanted: {crds.get('install', True)}")
    if crd:
        generated = yaml.safe_load((ROOT / "crds" / "websocketgateway.yaml").read_text())
        if crd["spec"] != generated["spec"] or crd["metadata"]["name"] != generated["metadata"]["name"]:
            problems.append("the rendered CRD is not crds/websocketgateway.yaml")
        keep = (crd["metadata"].get("annotations") or {}).get("helm.sh/resource-policy") == "keep"
        if keep != crds.get("keep", True):
            problems.append(f"CRD kept on uninstall: {keep}, wanted: {crds.get('keep', True)}")
    return problems


def support_floor():
    """The oldest supported Kubernetes (major, minor), from the chart's
    kubeVersion; fails unless the workspace's k8s-openapi feature and the
    READMEs say the same."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    m = re.fullmatch(r">=(\d+)\.(\d+)\.0-0", chart.get("kubeVersion", ""))
    if not m:
        fail(f"Chart.yaml kubeVersion {chart.get('kubeVersion')!r} is not of the form '>=1.NN.0-0'")
        return None
    floor = (int(m[1]), int(m[2]))
    workspace = tomllib.loads((ROOT / "Cargo.toml").read_text())
    features = workspace["workspace"]["dependencies"]["k8s-openapi"].get("features", [])
    api = [f for f in features if re.fullmatch(r"v\d+_\d+", f)]
    if api != [f"v{floor[0]}_{floor[1]}"]:
        fail(f"k8s-openapi builds for {api}, but the chart's floor is {floor[0]}.{floor[1]}: "
             "the types the operator sends must not be newer than the oldest supported API server")
    for readme in [ROOT / "README.md", CHART / "README.md"]:
        if f"Kubernetes {floor[0]}.{floor[1]} or newer" not in readme.read_text():
            fail(f"{readme.relative_to(ROOT)} does not say 'Kubernetes {floor[0]}.{floor[1]} or newer'")
    return floor


def check_support_floor():
    floor = support_floor()
    if floor is None:
        return
    older = (floor[0], floor[1] - 1)
    print(f"support floor: Kubernetes {floor[0]}.{floor[1]}")
    server = FakeApiServer(older)
    try:
        server.install({})
        fail(f"helm install accepted an API server of Kubernetes {older[0]}.{older[1]}, below the floor")
    except helm_sdkpy.HelmError as e:
        ok(f"helm install refuses Kubernetes {older[0]}.{older[1]} ({str(e).splitlines()[0][:120]})")
    finally:
        server.stop()


def check_render(defaults):
    floor = support_floor() or (1, 33)
    print(f"render: helm install (Helm's library) against a fake API server of Kubernetes "
          f"{floor[0]}.{floor[1]} (the support floor), for every value set")
    server = FakeApiServer(floor)
    try:
        for name, values in value_sets():
            try:
                objects = server.install(values)
            except helm_sdkpy.HelmError as e:
                fail(f"{name}: helm install failed: {e}")
                continue
            kinds = sorted(o["kind"] for o in objects)
            problems = rendered_problems(objects, merged(defaults, values))
            if problems:
                fail(f"{name}: " + "; ".join(problems))
            else:
                ok(f"{name}: {len(objects)} objects ({', '.join(kinds)})")
        for path in sorted((TESTS / "invalid").glob("*.yaml")):
            name = path.relative_to(ROOT)
            try:
                server.install(yaml.safe_load(path.read_text()) or {})
                fail(f"{name}: helm install accepted it")
            except helm_sdkpy.HelmError as e:
                ok(f"{name}: helm install refuses it ({str(e).splitlines()[0][:120]})")
    finally:
        server.stop()


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
    check_render(defaults)
    check_support_floor()
    check_images(defaults)
    check_flags()
    if failures:
        print(f"\n{len(failures)} chart check(s) failed")
        sys.exit(1)
    print("\nchart checks passed")


if __name__ == "__main__":
    main()
