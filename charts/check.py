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

Each concern is a module of the package charts/checks/ (its __init__ lists
them); this file runs them in order and exits non-zero if any failed.

Usage: python3 charts/check.py   (from anywhere; needs helm-sdkpy, PyYAML,
jsonschema, and cargo for steps 3 and 4)
"""

import sys

# Importing the package must not leave __pycache__ in the working tree.
sys.dont_write_bytecode = True

import helm_sdkpy  # noqa: E402
import yaml  # noqa: E402

from checks.chart import CHART  # noqa: E402
from checks.flags import check_flags  # noqa: E402
from checks.images import check_images  # noqa: E402
from checks.install import check_render, check_support_floor, support_floor  # noqa: E402
from checks.lint import check_lint, check_values_comments  # noqa: E402
from checks.report import failures  # noqa: E402


def main():
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    print(f"helm library {helm_sdkpy.get_version()}")
    check_values_comments()
    check_lint(defaults)
    # Read once: its failures are reported once, before the checks that use it.
    floor = support_floor()
    check_render(defaults, floor)
    check_support_floor(floor)
    check_images(defaults)
    check_flags()
    if failures:
        print(f"\n{len(failures)} chart check(s) failed")
        sys.exit(1)
    print("\nchart checks passed")


if __name__ == "__main__":
    main()
