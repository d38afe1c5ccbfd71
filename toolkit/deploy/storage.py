"""Volumes the workloads read: the model repository claim, the shared training claim, a loader pod."""

from __future__ import annotations

from typing import Any

from . import pod
from .options import Plan
from .training import SHARED

LOADER_IMAGE = "busybox:1.36"  # has tar, which `kubectl cp` needs in the pod
SIZES = {"models": "10Gi", "shared": "100Gi"}


def claim(plan: Plan, name: str, size: str) -> dict[str, Any]:
    """ReadWriteMany: every Triton or training pod mounts it, on whichever node it lands.

    No storageClassName: the cluster's default class is used; it must support ReadWriteMany
    (NFS, CephFS, EFS, Filestore, Azure Files...). Set one in an overlay otherwise.
    """
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": pod.metadata(plan, name, "storage"),
            "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": size}}}}


def claims(plan: Plan) -> list[dict[str, Any]]:
    found = [claim(plan, plan.shared_pvc, SIZES["shared"])]
    if plan.repo.scheme == "pvc":
        found.insert(0, claim(plan, plan.repo.claim, SIZES["models"]))
    return found


def loader_pod(plan: Plan) -> dict[str, Any]:
    """A pod to `kubectl cp` the repository and the training data into the claims, then delete."""
    mounts = [{"name": "shared", "mountPath": SHARED}]
    volumes = [{"name": "shared", "persistentVolumeClaim": {"claimName": plan.shared_pvc}}]
    if plan.repo.scheme == "pvc":
        mounts.append({"name": "models", "mountPath": "/models"})
        volumes.append({"name": "models", "persistentVolumeClaim": {"claimName": plan.repo.claim}})
    container = {"name": "loader", "image": LOADER_IMAGE, "command": ["sleep", "3600"],
                 "resources": {"requests": {"cpu": "100m", "memory": "64Mi"},
                               "limits": {"memory": "256Mi"}},
                 "securityContext": pod.container_security(), "volumeMounts": mounts}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": pod.metadata(plan, f"{plan.app}-loader", "storage"),
            "spec": {"securityContext": pod.pod_security(), "restartPolicy": "Never",
                     "automountServiceAccountToken": False, "containers": [container],
                     "volumes": volumes}}
