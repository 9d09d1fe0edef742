"""A fake Kubernetes API server for `helm install`: it answers discovery
(and /version, so a test can pose as any Kubernetes minor) for the kinds
the chart renders, 404 for every read, and records every object created.
It knows nothing of Helm or the chart; install.py points Helm's library at
its kubeconfig."""

import http.server
import json
import tempfile
import threading
from pathlib import Path

import yaml


class FakeApiServer:
    """Just enough of a Kubernetes API server for `helm install`: discovery
    for the kinds the chart renders, 404 for every read, and a record of
    every object created. Helm's own code renders the templates and posts
    each object, so the objects recorded are what a cluster would receive.
    """

    GROUPS = {
        "": ("v1", [("serviceaccounts", "ServiceAccount", True), ("services", "Service", True),
                    ("secrets", "Secret", True), ("configmaps", "ConfigMap", True),
                    ("namespaces", "Namespace", False)]),
        "apps": ("v1", [("deployments", "Deployment", True)]),
        "rbac.authorization.k8s.io": ("v1", [
            ("clusterroles", "ClusterRole", False), ("clusterrolebindings", "ClusterRoleBinding", False),
            ("roles", "Role", True), ("rolebindings", "RoleBinding", True)]),
        "apiextensions.k8s.io": ("v1", [("customresourcedefinitions", "CustomResourceDefinition", False)]),
        "monitoring.coreos.com": ("v1", [("servicemonitors", "ServiceMonitor", True)]),
        "admissionregistration.k8s.io": ("v1", [
            ("mutatingwebhookconfigurations", "MutatingWebhookConfiguration", False)]),
    }

    def __init__(self, version):
        server = self
        # Every object POSTed, in order; clear it between installs.
        self.created = []
        # (major, minor) that /version reports.
        self.version = version

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def send(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self.send(*server.discovery(self.path.split("?")[0]))

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Type", "").startswith("application/json"):
                    server.created.append(json.loads(body))
                self.send(201, json.loads(body) if body.startswith(b"{") else {})

            def do_PATCH(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send(200, {})

            do_PUT = do_PATCH

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.dir = tempfile.TemporaryDirectory()
        # A kubeconfig whose current context is this server.
        self.kubeconfig = Path(self.dir.name) / "kubeconfig"
        port = self.httpd.server_address[1]
        self.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
            "users": [{"name": "fake", "user": {"token": "fake"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            "current-context": "fake",
        }))

    def discovery(self, path):
        def resources(group_version, items):
            return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
                    "resources": [{"name": n, "singularName": "", "namespaced": ns, "kind": k,
                                   "verbs": ["create", "get", "list", "patch", "update", "delete"]}
                                  for n, k, ns in items]}
        if path == "/version":
            major, minor = self.version
            return 200, {"major": str(major), "minor": str(minor), "gitVersion": f"v{major}.{minor}.0"}
        if path == "/api":
            return 200, {"kind": "APIVersions", "versions": ["v1"]}
        if path == "/api/v1":
            return 200, resources("v1", self.GROUPS[""][1])
        if path == "/apis":
            return 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v}],
                 "preferredVersion": {"groupVersion": f"{g}/{v}", "version": v}}
                for g, (v, _) in self.GROUPS.items() if g]}
        for g, (v, items) in self.GROUPS.items():
            if g and path == f"/apis/{g}/{v}":
                return 200, resources(f"{g}/{v}", items)
        return 404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}

    def stop(self):
        self.httpd.shutdown()
        self.dir.cleanup()
