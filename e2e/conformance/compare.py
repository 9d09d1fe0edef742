#!/usr/bin/env python3
"""Compare two agents of one Autobahn fuzzingclient report, case by case.

usage: compare.py REPORT_DIR BACKEND_AGENT GATEWAY_AGENT
The gateway must give exactly the backend's own result in every case
(same `behavior` and `behaviorClose`). Prints the cases that differ and a
closing line 'N passed, N failed'; exit 1 if any case differs or is missing.
"""
import json, os, sys

def main():
    report, backend, gateway = sys.argv[1:4]
    with open(os.path.join(report, "index.json")) as f:
        index = json.load(f)
    a, b = index.get(backend, {}), index.get(gateway, {})
    same = differ = 0
    for case in sorted(set(a) | set(b), key=lambda s: [int(p) for p in s.split(".")]):
        ra, rb = a.get(case), b.get(case)
        key = lambda r: r and (r["behavior"], r["behaviorClose"])
        if ra and rb and key(ra) == key(rb):
            same += 1
        else:
            differ += 1
            print(f"  {case}: {backend}={key(ra)} {gateway}={key(rb)}")
    print(f"{gateway} matches {backend} in {same} of {same + differ} cases")
    print(f"{same} passed, {differ} failed")
    sys.exit(1 if differ or not same else 0)

if __name__ == "__main__":
    main()
