"""`helm install` through Helm's library against the fake API server, and
the support floor. Every value set must install, and rendered.py must find
nothing wrong with the objects it creates; every invalid value set must be
refused. The chart's kubeVersion (the oldest Kubernetes minor the product
supports) must agree with the workspace's k8s-openapi feature and the
READMEs, and an API server one minor older must be refused."""

import asyncio
import re
import tomllib

import helm_sdkpy
import yaml

from .chart import CHART, RELEASE_NAMESPACE, ROOT, invalid_value_sets, merged, value_sets
from .fake_api import FakeApiServer
from .rendered import rendered_problems
from .report import fail, ok


def helm_install(server, values):
    """The objects `helm install ringway charts/ringway -n ringway-system
    --values <values>` creates on `server` (a FakeApiServer)."""
    server.created.clear()
    config = helm_sdkpy.Configuration(namespace=RELEASE_NAMESPACE, kubeconfig=str(server.kubeconfig))
    asyncio.run(helm_sdkpy.Install(config).run("ringway", str(CHART), values=values, wait=False, timeout=30))
    return list(server.created)


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


def check_support_floor(floor):
    """`floor` is support_floor()'s answer (None: it already failed)."""
    if floor is None:
        return
    older = (floor[0], floor[1] - 1)
    print(f"support floor: Kubernetes {floor[0]}.{floor[1]}")
    server = FakeApiServer(older)
    try:
        helm_install(server, {})
        fail(f"helm install accepted an API server of Kubernetes {older[0]}.{older[1]}, below the floor")
    except helm_sdkpy.HelmError as e:
        ok(f"helm install refuses Kubernetes {older[0]}.{older[1]} ({str(e).splitlines()[0][:120]})")
    finally:
        server.stop()


def check_render(defaults, floor):
    """Installs every value set on an API server of `floor`, the support
    floor (support_floor()'s answer, or 1.33 when it failed)."""
    floor = floor or (1, 33)
    print(f"render: helm install (Helm's library) against a fake API server of Kubernetes "
          f"{floor[0]}.{floor[1]} (the support floor), for every value set")
    server = FakeApiServer(floor)
    try:
        for name, values in value_sets():
            try:
                objects = helm_install(server, values)
            except helm_sdkpy.HelmError as e:
                fail(f"{name}: helm install failed: {e}")
                continue
            kinds = sorted(o["kind"] for o in objects)
            problems = rendered_problems(objects, merged(defaults, values))
            if problems:
                fail(f"{name}: " + "; ".join(problems))
            else:
                ok(f"{name}: {len(objects)} objects ({', '.join(kinds)})")
        for path in invalid_value_sets():
            name = path.relative_to(ROOT)
            try:
                helm_install(server, yaml.safe_load(path.read_text()) or {})
                fail(f"{name}: helm install accepted it")
            except helm_sdkpy.HelmError as e:
                ok(f"{name}: helm install refuses it ({str(e).splitlines()[0][:120]})")
    finally:
        server.stop()
