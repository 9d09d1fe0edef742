"""The chart and what the checks feed it: where charts/ringway and its
test value sets live, the release every check installs, the user every
image and pod runs as, and the values Helm would use for a value set
(the defaults with the set merged over them)."""

import copy
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "ringway"
TESTS = ROOT / "charts" / "tests"
# The namespace the checks install the release `ringway` into.
RELEASE_NAMESPACE = "ringway-system"
# The user every image and pod runs as.
NONROOT = 65532


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


def value_sets():
    """(name, values over the defaults) for the defaults and every file in
    charts/tests/values/."""
    return [("defaults", {})] + [
        (str(p.relative_to(ROOT)), yaml.safe_load(p.read_text()) or {})
        for p in sorted((TESTS / "values").glob("*.yaml"))
    ]


def invalid_value_sets():
    """The files in charts/tests/invalid/: value sets the chart must
    refuse."""
    return sorted((TESTS / "invalid").glob("*.yaml"))
