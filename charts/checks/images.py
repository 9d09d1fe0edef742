"""The images against the chart and the code: each docker/*.Dockerfile
builds, from a Rust toolchain no older than the workspace's rust-version, a
release binary the workspace has (`cargo metadata`), runs it distroless as
the user the chart and the operator's pod template run as, and names the
image that values.yaml, the operator's default --image and the chat example
use; Chart.yaml's appVersion (the images' default tag) is the workspace's
version."""

import json
import re
import subprocess

import yaml

from .chart import CHART, NONROOT, ROOT
from .report import fail, ok


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
    pod = (ROOT / "operator/src/container.rs").read_text()
    pod_user = re.search(r"pub const NONROOT: i64 = (\d+);", pod)
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
        "the data-plane containers' user (operator/src/container.rs NONROOT: gateway pods and sidecars)": int(pod_user.group(1)) if pod_user else None,
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
