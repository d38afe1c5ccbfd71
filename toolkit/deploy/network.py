"""The Triton pods' NetworkPolicy: who may reach which port, and where the pods may connect.

Inference (HTTP and gRPC) only from the namespaces and pod labels the user names
(`rtk deploy --allow-from`; by default the pods of the deployment's own namespace), metrics
only from the monitoring namespace. Egress: none with a PVC repository (rtk serve talks to
Triton over loopback, which a NetworkPolicy does not govern); with `--repo-uri s3://`, DNS and
HTTPS, the object store's port (narrow it to the store's address range where it is known).
The control APIs need the key besides (toolkit/core/control_key.py): the policy decides who
can connect at all, the key who can change what is served.
"""

from __future__ import annotations

from typing import Any

from ..core.errors import RtkError
from . import pod
from .options import Plan
from .serving import PORTS

MONITORING_NAMESPACE = "monitoring"


def peers(allow_from: list[str]) -> list[dict[str, Any]]:
    """`--allow-from` values as NetworkPolicy peers: NAMESPACE, or KEY=VALUE for pods with
    that label in the deployment's namespace; none given: every pod of that namespace."""
    if not allow_from:
        return [{"podSelector": {}}]
    found = []
    for item in allow_from:
        if "=" in item:
            key, _, value = item.partition("=")
            if not key or not value:
                raise RtkError(f"--allow-from {item!r} is not KEY=VALUE.",
                               "Name a namespace, or a pod label such as app=frontend.")
            found.append({"podSelector": {"matchLabels": {key: value}}})
        else:
            found.append({"namespaceSelector": {"matchLabels": {
                "kubernetes.io/metadata.name": item}}})
    return found


def network_policy(plan: Plan, allow_from: list[str], monitoring: str = MONITORING_NAMESPACE
                   ) -> dict[str, Any]:
    inference = [{"port": PORTS[p], "protocol": "TCP"} for p in ("http", "grpc")]
    ingress = [{"from": peers(allow_from), "ports": inference},
               {"from": [{"namespaceSelector": {"matchLabels": {
                   "kubernetes.io/metadata.name": monitoring}}}],
                "ports": [{"port": PORTS["metrics"], "protocol": "TCP"}]}]
    egress: list[dict[str, Any]] = []
    if plan.repo.scheme == "s3":
        egress = [{"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
                  {"ports": [{"port": 443, "protocol": "TCP"}]}]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": pod.metadata(plan, f"{plan.app}-triton", "serving"),
            "spec": {"podSelector": {"matchLabels": pod.selector(plan, "serving")},
                     "policyTypes": ["Ingress", "Egress"], "ingress": ingress, "egress": egress}}
