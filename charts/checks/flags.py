"""The operator's flags: every --flag that templates/deployment.yaml passes
is one `ringway-operator --help` lists (the debug binary, built with cargo
when it is missing)."""

import os
import re
import subprocess
from pathlib import Path

from .chart import CHART, ROOT
from .report import fail, ok


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
