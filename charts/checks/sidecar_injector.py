"""What must hold of the sidecar injector's objects in one install (a pure
function of the objects and the values; rendered.py calls it): when
`sidecarInjector.enabled`, a Service on 443 in front of the operator pods'
webhook port; one MutatingWebhookConfiguration calling it for pod
creations of annotated pods only, never kube-system's or the release's
namespace's, with the value's failurePolicy; the operator given the
matching --webhook-* flags; RBAC that is files/rbac/sidecar-injector-*.yaml,
limited by name to that configuration and that Secret wherever RBAC can,
and, cluster-wide, sidecar-control-secret*.yaml (the sidecars' control
Secret, by name where RBAC can) and sidecar-drain.yaml (the drain pacer).
When disabled, none of it."""

import yaml

from .chart import CHART, RELEASE_NAMESPACE

SUFFIX = "-sidecar-injector"
# sidecar::CONTROL_SECRET (dataplane/api/src/sidecar.rs).
CONTROL_SECRET = "ringway-sidecar-control"
FLAGS = ["--webhook-address", "--webhook-service", "--webhook-configuration", "--webhook-secret"]


def rules_file(name, resource_name=None):
    rules = yaml.safe_load((CHART / "files" / "rbac" / name).read_text())
    if resource_name:
        for rule in rules:
            rule["resourceNames"] = [resource_name]
    return rules


def flag(args, name):
    found = [a.split("=", 1)[1] for a in args if a.startswith(name + "=")]
    return found[0] if len(found) == 1 else None


def named(by_kind, kind, suffix):
    return [o for o in by_kind.get(kind, []) if o["metadata"]["name"].endswith(suffix)]


def sidecar_injector_problems(by_kind, values, pod, args):
    injector = values.get("sidecarInjector", {})
    configs = by_kind.get("MutatingWebhookConfiguration", [])
    services = named(by_kind, "Service", "-webhook")
    roles = named(by_kind, "Role", SUFFIX) + named(by_kind, "ClusterRole", SUFFIX)
    if not injector.get("enabled", False):
        leftovers = [o["kind"] for o in configs + services + roles] + [f for f in FLAGS if flag(args, f)]
        return [f"the sidecar injector is disabled, yet rendered {leftovers}"] if leftovers else []

    problems = []
    if len(configs) != 1 or len(services) != 1:
        return [f"{len(configs)} MutatingWebhookConfigurations and {len(services)} webhook Services, wanted 1 each"]
    config, service = configs[0], services[0]
    container = pod["spec"]["containers"][0]

    # The operator serves on the port the Service targets, under the names
    # the configuration and RBAC use.
    port = injector["port"]
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    if ports.get("webhook") != port:
        problems.append(f"the operator's container does not expose port `webhook` {port}: {ports}")
    if flag(args, "--webhook-address") != f"0.0.0.0:{port}":
        problems.append(f"--webhook-address is not 0.0.0.0:{port}: {args}")
    if flag(args, "--webhook-service") != service["metadata"]["name"]:
        problems.append(f"--webhook-service is not the Service {service['metadata']['name']}")
    if flag(args, "--webhook-configuration") != config["metadata"]["name"]:
        problems.append(f"--webhook-configuration is not {config['metadata']['name']}")
    secret = flag(args, "--webhook-secret")
    if not secret:
        problems.append("no --webhook-secret")
    spec = service["spec"]
    if any(pod["metadata"]["labels"].get(k) != v for k, v in spec["selector"].items()) \
            or [(p["port"], p["targetPort"]) for p in spec["ports"]] != [(443, "webhook")]:
        problems.append(f"the webhook Service does not send 443 to the operator pods' webhook port: {spec}")

    # The configuration: annotated pods' creations only, on the Service.
    hooks = config.get("webhooks", [])
    if len(hooks) != 1:
        return problems + [f"{len(hooks)} webhooks, wanted 1"]
    hook = hooks[0]
    client = hook["clientConfig"]
    wanted_service = {"name": service["metadata"]["name"], "namespace": RELEASE_NAMESPACE,
                      "path": "/mutate-pods", "port": 443}
    if client.get("service") != wanted_service or "caBundle" in client:
        problems.append(f"clientConfig {client}, wanted service {wanted_service} and no caBundle (the operator sets it)")
    wanted = {
        "name": "sidecar.ringway.dev",
        "admissionReviewVersions": ["v1"],
        "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                   "resources": ["pods"], "scope": "Namespaced"}],
        "sideEffects": "None",
        "timeoutSeconds": 5,
        "reinvocationPolicy": "IfNeeded",
        "matchPolicy": "Equivalent",
        "failurePolicy": injector["failurePolicy"],
        "namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                                                    "values": ["kube-system", RELEASE_NAMESPACE]}]},
        "matchConditions": [{"name": "opted-in", "expression":
                             "has(object.metadata.annotations) && 'ringway.dev/sidecar' in object.metadata.annotations"}],
    }
    for key, value in wanted.items():
        if hook.get(key) != value:
            problems.append(f"webhook {key}: {hook.get(key)!r}, wanted {value!r}")

    # RBAC: the files, limited by name wherever RBAC allows it.
    if not values.get("rbac", {}).get("create", True):
        return problems
    cluster_roles, ns_roles = named(by_kind, "ClusterRole", SUFFIX), named(by_kind, "Role", SUFFIX)
    want_cluster = (rules_file("sidecar-injector-configuration.yaml", config["metadata"]["name"])
                    + rules_file("sidecar-control-secret-create.yaml")
                    + rules_file("sidecar-control-secret.yaml", CONTROL_SECRET)
                    + rules_file("sidecar-drain.yaml"))
    if len(cluster_roles) != 1 or cluster_roles[0]["rules"] != want_cluster:
        problems.append(f"no ClusterRole{SUFFIX} with exactly {want_cluster}")
    want_ns = rules_file("sidecar-injector-secret-create.yaml") + rules_file("sidecar-injector-secret.yaml", secret)
    if len(ns_roles) != 1 or ns_roles[0]["rules"] != want_ns \
            or ns_roles[0]["metadata"].get("namespace") != RELEASE_NAMESPACE:
        problems.append(f"no Role{SUFFIX} in the release namespace with exactly {want_ns}")
    for kind in ["ClusterRoleBinding", "RoleBinding"]:
        if len(named(by_kind, kind, SUFFIX)) != 1:
            problems.append(f"not exactly one {kind}{SUFFIX}")
    return problems
