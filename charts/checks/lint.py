"""The chart's values and Helm's linter: values.yaml has a comment on every
key; Helm's linter (its Go library, through helm-sdkpy) and the values
schema accept the defaults and every value set in charts/tests/values/,
and the linter rejects every value set in charts/tests/invalid/.

Helm's linter does not export its messages' text through helm-sdkpy, only
their severity and file; values are therefore also validated here with
jsonschema, whose messages say what is wrong."""

import asyncio
import json
import re
import shutil
import tempfile
from pathlib import Path

import helm_sdkpy
import jsonschema
import yaml

from .chart import CHART, ROOT, invalid_value_sets, merged, value_sets
from .report import fail, ok

SEVERITY = {1: "info", 2: "warning", 3: "error"}


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
    for name, override in value_sets():
        values = merged(defaults, override)
        problems = [f"{SEVERITY[s]} in {path}" for s, path in lint(values)]
        problems += [f"schema: {e}" for e in schema_errors(values)]
        if problems:
            fail(f"{name}: " + "; ".join(problems))
        else:
            ok(name)

    print("lint: charts/tests/invalid/*.yaml must fail")
    invalid = invalid_value_sets()
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
