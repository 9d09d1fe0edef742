"""The outcome of a run: every check prints one `ok` or `FAIL` line per
thing it checked, and `failures` collects the FAIL messages; the entry
point (charts/check.py) exits non-zero when any were collected."""

failures = []


def fail(message):
    failures.append(message)
    print(f"  FAIL {message}")


def ok(message):
    print(f"  ok   {message}")
