"""The chart checks that charts/check.py runs, one module per concern:

- report.py: the ok/FAIL lines and the tally of failures.
- chart.py: where the chart and its test value sets are, the release
  namespace, the non-root user, and Helm's merge of a value set over the
  defaults.
- lint.py: values.yaml's comments, Helm's linter and the values schema on
  every value set (clean), and on every invalid one (rejected).
- fake_api.py: the fake Kubernetes API server `helm install` runs against
  (discovery, /version, a record of every object created).
- install.py: `helm install` for every value set against the fake API
  server, the invalid ones refused, and the support floor.
- rendered.py: what must hold of the objects one install creates (RBAC,
  CRD, pod security, flags, selectors, labels).
- sidecar_injector.py: the sidecar injector's Service, webhook
  configuration, RBAC and flags, rendered exactly when it is enabled.
- images.py: docker/*.Dockerfile against the chart and the workspace.
- flags.py: the operator's flags the chart's Deployment passes exist.
"""
