#!/usr/bin/env python3
"""Compare two agents of one Autobahn report, case by case.

usage: compare.py [--same-end] REPORT_DIR DIRECT_AGENT GATEWAY_AGENT
The report is a fuzzingclient's (the agents are two servers: the backend
directly and through the gateway) or a fuzzingserver's (two clients: one
connected directly, one through the gateway); both write the same
index.json. The gateway must give exactly the direct result in every case
(same `behavior` and `behaviorClose`). With --same-end the connection must
also end the same way for the suite: a clean closing handshake or not, and
the same close code. The backend leg uses it (the direct client fails a
broken server with a close frame, so the gateway must too); the client leg
does not, because there the gateway fails a broken client with 1002 where
the echo backend alone drops the TCP connection, which the suite accepts
as the same behaviour.
Prints the cases that differ and a
closing line 'N passed, N failed'; exit 1 if any case differs or is missing.
"""
import json, os, sys

def main():
    args = sys.argv[1:]
    same_end = "--same-end" in args
    report, direct, gateway = [a for a in args if a != "--same-end"][:3]
    with open(os.path.join(report, "index.json")) as f:
        index = json.load(f)
    a, b = index.get(direct, {}), index.get(gateway, {})
    same = differ = 0
    for case in sorted(set(a) | set(b), key=lambda s: [int(p) for p in s.split(".")]):
        ra, rb = a.get(case), b.get(case)
        key = lambda r: r and (outcome(report, r) if same_end else (r["behavior"], r["behaviorClose"]))
        if ra and rb and key(ra) == key(rb):
            same += 1
        else:
            differ += 1
            print(f"  {case}: {direct}={key(ra)} {gateway}={key(rb)}")
    print(f"{gateway} matches {direct} in {same} of {same + differ} cases")
    print(f"{same} passed, {differ} failed")
    sys.exit(1 if differ or not same else 0)

def outcome(report, entry):
    """What a case came to: the suite's verdicts and how the connection ended."""
    with open(os.path.join(report, entry["reportfile"])) as f:
        case = json.load(f)
    return (entry["behavior"], entry["behaviorClose"],
            "clean" if case.get("wasClean") else "unclean", case.get("remoteCloseCode"))

if __name__ == "__main__":
    main()
