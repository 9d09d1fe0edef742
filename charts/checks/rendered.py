"""What must hold of the objects `helm install` creates for one value set
(a pure function of those objects and the values; install.py runs it):
the RBAC rules are files/rbac/*.yaml (which a Rust test holds equal to the
operator's table) and the bindings name the chart's ServiceAccount; the
operator's pod is non-root and read-only, probed, and given its flags (its
--operator-pod-labels select its own pods); the metrics Service and the
ServiceMonitor select what they should; the CRD is the generated one and
kept on uninstall; every object carries the standard labels; the sidecar
injector's objects are there exactly when it is enabled
(sidecar_injector.py)."""

import yaml

from .chart import CHART, NONROOT, RELEASE_NAMESPACE, ROOT
from .sidecar_injector import sidecar_injector_problems

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

    def one(kind, suffix=""):
        found = [o for o in by_kind.get(kind, []) if o["metadata"]["name"].endswith(suffix)]
        return found[0] if len(found) == 1 else None

    # The sidecar injector's own RBAC is checked in sidecar_injector.py.
    def gateway_roles(kind):
        return [r for r in by_kind.get(kind, []) if not r["metadata"]["name"].endswith("-sidecar-injector")]

    # RBAC: the rendered rules are the files, which a Rust test holds equal
    # to the operator's table; bindings name the ServiceAccount.
    namespaces = values.get("watchNamespaces") or []
    gateways, leader = rules_file("gateways.yaml"), rules_file("leader-election.yaml")
    if values.get("sidecarInjector", {}).get("enabled", False):
        gateways += rules_file("sidecar-audit.yaml")  # the leader's sidecar audit
    roles = gateway_roles("Role")
    if namespaces:
        if gateway_roles("ClusterRole"):
            problems.append("watchNamespaces is set but a ClusterRole was rendered")
        for ns in namespaces:
            here = [r for r in roles if r["metadata"].get("namespace") == ns]
            if len(here) != 1 or here[0]["rules"] != gateways:
                problems.append(f"namespace {ns}: not exactly one Role with files/rbac/gateways.yaml's rules"
                                " (and sidecar-audit.yaml's with the injector)")
    else:
        cluster_roles = gateway_roles("ClusterRole")
        cluster_role = cluster_roles[0] if len(cluster_roles) == 1 else None
        if not cluster_role or cluster_role["rules"] != gateways:
            problems.append("no ClusterRole with files/rbac/gateways.yaml's rules"
                            " (and sidecar-audit.yaml's with the injector)")
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
    # Readiness without the Lease: a standby replica must be ready, or a
    # rolling update would wait for a pod that cannot lead yet.
    if probes != {"livenessProbe": "/healthz", "readinessProbe": "/readyz/informer-sync"}:
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
    service = one("Service", "-metrics")
    if service and any(pod["metadata"]["labels"].get(k) != v for k, v in service["spec"]["selector"].items()):
        problems.append("the metrics Service does not select the operator's pods")
    monitor = one("ServiceMonitor")
    wants_monitor = values.get("metrics", {}).get("serviceMonitor", {}).get("enabled", False)
    if bool(monitor) != wants_monitor:
        problems.append(f"ServiceMonitor rendered: {bool(monitor)}, wanted: {wants_monitor}")
    if monitor and service and any(service["metadata"]["labels"].get(k) != v
                                   for k, v in monitor["spec"]["selector"]["matchLabels"].items()):
        problems.append("the ServiceMonitor does not select the metrics Service")

    problems += sidecar_injector_problems(by_kind, values, pod, args)

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
