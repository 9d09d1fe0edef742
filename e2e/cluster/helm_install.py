#!/usr/bin/env python3
"""Installs and uninstalls charts/ringway through Helm's own library (the
PyPI package helm-sdkpy), for the cluster tests in e2e/tests/cluster.rs.

    helm_install.py check
    helm_install.py install KUBECONFIG NAMESPACE RELEASE [--set KEY=VALUE]... [--values JSON]
                            [--take-ownership]
    helm_install.py uninstall KUBECONFIG NAMESPACE RELEASE

`--set crds.install=false` sets a nested key; VALUE is read as JSON when it
is JSON (`false`, `3`, `["a","b"]`), else taken as a string. `--values`
takes a JSON object; `--set` pairs go over it. The namespace must exist.
The install does not wait for the operator's pod: the tests scale it to 0.

Exits 0 on success; on failure prints one line saying what failed on
stderr and exits 1 (2 for bad arguments, 3 when helm-sdkpy is missing).
"""

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

CHART = Path(__file__).resolve().parents[2] / "charts" / "ringway"
INSTALL_HINT = "pip install --ignore-requires-python helm-sdkpy==0.1.32"
# helm install's own deadline; the Rust test's DEADLINE (60 s) is above it.
TIMEOUT_SECONDS = 30


def fail(message, code=1):
    print(f"helm_install.py: {message}", file=sys.stderr)
    sys.exit(code)


def helm():
    """The helm_sdkpy module with its native library loaded, or exit 3."""
    try:
        import helm_sdkpy
        helm_sdkpy.get_version()
    except Exception as e:  # ImportError, or HelmLibraryNotFound from the loader
        fail(f"helm-sdkpy is not usable ({type(e).__name__}: {e}); install it with: "
             f"{INSTALL_HINT}", code=3)
    return helm_sdkpy


def parse_set(pairs):
    """`a.b=v` pairs as a nested dict; `v` is JSON if it parses, else a string."""
    values = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ValueError(f"--set {pair!r}: expected KEY=VALUE with KEY like crds.install")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        *parents, leaf = key.split(".")
        node = values
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"--set {pair!r}: {part} is already set to a value")
            node = child
        node[leaf] = value
    return values


def merge(base, over):
    """`base` with `over` on top, nested dicts merged key by key."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def configuration(helm_sdkpy, kubeconfig, namespace):
    # helm-sdkpy reads a string that is not an existing file as kubeconfig
    # YAML, which would turn a wrong path into a puzzling parse error.
    path = Path(kubeconfig).resolve()
    if not path.is_file():
        fail(f"kubeconfig {kubeconfig} does not exist (or is not a file)")
    return helm_sdkpy.Configuration(namespace=namespace, kubeconfig=str(path))


def install(args):
    helm_sdkpy = helm()
    try:
        values = json.loads(args.values) if args.values else {}
        if not isinstance(values, dict):
            raise ValueError("--values must be a JSON object")
        values = merge(values, parse_set(args.set))
    except ValueError as e:  # json.JSONDecodeError is one
        fail(f"bad values: {e}", code=2)
    config = configuration(helm_sdkpy, args.kubeconfig, args.namespace)
    try:
        release = asyncio.run(helm_sdkpy.Install(config).run(
            args.release, str(CHART), values=values or None, wait=False,
            timeout=TIMEOUT_SECONDS, take_ownership=args.take_ownership))
    except helm_sdkpy.HelmError as e:
        fail(f"helm install {args.release} {CHART} --namespace {args.namespace} "
             f"(values {json.dumps(values)}) failed: {e}")
    info = release.get("info") if isinstance(release, dict) else None
    status = info.get("status") if isinstance(info, dict) else None
    print(f"installed release {args.release} in {args.namespace} "
          f"(values {json.dumps(values)}, status {status or 'unknown'})")


def uninstall(args):
    helm_sdkpy = helm()
    config = configuration(helm_sdkpy, args.kubeconfig, args.namespace)
    try:
        asyncio.run(helm_sdkpy.Uninstall(config).run(
            args.release, wait=False, timeout=TIMEOUT_SECONDS))
    except helm_sdkpy.ReleaseNotFoundError:
        print(f"release {args.release} in {args.namespace} is not installed")
        return
    except helm_sdkpy.HelmError as e:
        fail(f"helm uninstall {args.release} --namespace {args.namespace} failed: {e}")
    print(f"uninstalled release {args.release} from {args.namespace}")


def main():
    parser = argparse.ArgumentParser(
        description="Install or uninstall charts/ringway with helm-sdkpy (Helm's Go library).")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("check", help="exit 0 if helm-sdkpy and its native library load")
    for name in ("install", "uninstall"):
        command = commands.add_parser(
            name, help="helm install charts/ringway" if name == "install" else "helm uninstall a release")
        command.add_argument("kubeconfig", help="path of the kubeconfig file")
        command.add_argument("namespace", help="the release's namespace (must exist)")
        command.add_argument("release", help="the release's name")
        if name == "install":
            command.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                                 help="a value, e.g. crds.install=false (repeatable)")
            command.add_argument("--values", metavar="JSON", help="values as a JSON object")
            command.add_argument("--take-ownership", action="store_true",
                                 help="adopt objects that exist already (e.g. the CRD)")
    args = parser.parse_args()
    if args.command == "check":
        helm_sdkpy = helm()
        print(f"{helm_sdkpy.get_version()} loads; chart {CHART}")
    elif args.command == "install":
        install(args)
    else:
        uninstall(args)


if __name__ == "__main__":
    main()
