"""Pod pieces every workload shares: labels, a locked-down security context, scratch volumes."""

from __future__ import annotations

from typing import Any

from .options import Plan

# NGC's Triton image has a non-root user with uid 1000 (Triton's guide, "Run as a non-root
# user"); the same uid runs training, so files it writes on the shared volume stay writable.
UID = 1000
SHM = {"serving": "1Gi", "training": "8Gi"}  # compose.yaml gives Triton 1 GB of /dev/shm


def labels(plan: Plan, component: str) -> dict[str, str]:
    """Recommended app.kubernetes.io labels; name + instance are the selectors."""
    return {**selector(plan, component), "app.kubernetes.io/part-of": "rtk",
            "app.kubernetes.io/component": component}


def selector(plan: Plan, component: str) -> dict[str, str]:
    name = "triton" if component == "serving" else f"rtk-{component}"
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/instance": plan.app}


def metadata(plan: Plan, name: str, component: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "labels": labels(plan, component), **extra}


def pod_security() -> dict[str, Any]:
    """Non-root, its own group, and the runtime's default seccomp profile."""
    return {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID,
            "seccompProfile": {"type": "RuntimeDefault"}}


def container_security() -> dict[str, Any]:
    """No privilege, no escalation, no capabilities, nothing written outside the scratch mounts."""
    return {"privileged": False, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}


def scratch_volumes(component: str) -> list[dict[str, Any]]:
    """/tmp (S3 downloads, Python backend stubs, caches) and /dev/shm, on a read-only root."""
    return [{"name": "tmp", "emptyDir": {}},
            # The Python backend (rtk's preprocessing) and DataLoader workers pass tensors through
            # shared memory; a container's default /dev/shm is 64 MiB.
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM[component]}}]


def scratch_mounts() -> list[dict[str, Any]]:
    return [{"name": "tmp", "mountPath": "/tmp"}, {"name": "shm", "mountPath": "/dev/shm"}]


def gpu_toleration() -> dict[str, Any]:
    """GPU nodes are commonly tainted so that only pods asking for GPUs land there."""
    return {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
