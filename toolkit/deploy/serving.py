"""Triton on Kubernetes: Deployment, Service, PodDisruptionBudget, HPA and the cpu/gpu overlays."""

from __future__ import annotations

from typing import Any

from ..triton.server import KILL_AFTER_S
from . import pod
from .models import ROLES
from .options import Plan

PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}  # Triton's defaults, as in compose.yaml
MODELS_DIR = "/models"
EXIT_TIMEOUT_S = 30  # Triton's default; in-flight requests get this long after SIGTERM
PRESTOP_S = 5  # time for endpoint removal to reach every proxy before Triton stops accepting
# The kubelet's SIGKILL comes only after the preStop pause, Triton's exit timeout, and the margin
# rtk serve leaves past it before it kills a Triton that hangs on the way out.
GRACE_S = PRESTOP_S + EXIT_TIMEOUT_S + KILL_AFTER_S + 5
STARTUP_PERIOD_S, STARTUP_FAILURES = 10, 90  # 15 minutes: S3 download + TensorRT plan deserialising
# A broken model (rtk serve is reloading it) leaves the Service within 2 x 5 s.
READY_PERIOD_S, READY_FAILURES = 5, 2
# The custom metric the Prometheus Adapter serves (monitoring.py) and its per-pod target.
QUEUE_METRIC = "triton_queue_us_per_request"
QUEUE_TARGET_US = "20000"  # 20 ms of queueing per request means the pod is saturated
CPU_TARGET_PERCENT = 80
RESOURCES = {  # per Triton pod; the gpu profile alone asks for a GPU
    "base": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "2Gi"}},
    "cpu": {"requests": {"cpu": "4", "memory": "4Gi"}, "limits": {"cpu": "4", "memory": "4Gi"}},
    "gpu": {"requests": {"cpu": "2", "memory": "8Gi", "nvidia.com/gpu": "1"},
            "limits": {"memory": "8Gi", "nvidia.com/gpu": "1"}},
}


def serve_args(plan: Plan, repository: str, ports: dict[str, int] = PORTS) -> list[str]:
    """`rtk serve` on exactly this ensemble and its steps, never the repository's other models.

    rtk serve runs Triton with explicit model control, and its watchdog reloads a model whose
    Python backend process died (plain tritonserver never does, and keeps answering ready);
    Triton reports not ready until the reload is done, so the readiness probe takes the pod
    out of rotation meanwhile. SIGTERM becomes Triton's graceful stop with the exit timeout.
    """
    return ["rtk", "serve", repository, "--address=0.0.0.0", f"--http-port={ports['http']}",
            f"--grpc-port={ports['grpc']}", f"--metrics-port={ports['metrics']}",
            f"--exit-timeout={EXIT_TIMEOUT_S}",
            # wait for the models as long as the startup probe does, not rtk's 3-minute default
            f"--timeout={STARTUP_PERIOD_S * STARTUP_FAILURES}",
            *[f"--load-model={plan.models[role]}" for role in ROLES]]


def probes(ensemble: str, port: str | int = "http") -> dict[str, Any]:
    """Startup waits for the models; then readiness gates traffic and liveness restarts a hang.

    Ready means the ensemble's ready endpoint: Triton's /v2/health/ready answers 200 again
    once a model has been unloaded (it counts loaded models only), while unloading any step
    of the ensemble makes the ensemble itself unavailable (measured on Triton 2.51) until
    rtk serve's watchdog loads it again.
    """
    def get(path: str, period: int, failures: int, *, timeout: int) -> dict[str, Any]:
        return {"httpGet": {"path": path, "port": port}, "periodSeconds": period,
                "failureThreshold": failures, "timeoutSeconds": timeout}
    ready = f"/v2/models/{ensemble}/ready"
    return {"startupProbe": get(ready, STARTUP_PERIOD_S, STARTUP_FAILURES, timeout=5),
            "readinessProbe": get(ready, READY_PERIOD_S, READY_FAILURES, timeout=2),
            "livenessProbe": get("/v2/health/live", 10, 6, timeout=5)}


def s3_env(plan: Plan) -> list[dict[str, Any]]:
    """AWS credentials by reference to a Secret the cluster owner creates; never a value here."""
    def ref(key: str, optional: bool) -> dict[str, Any]:
        return {"name": key, "valueFrom": {"secretKeyRef": {"name": f"{plan.app}-s3", "key": key,
                                                            "optional": optional}}}
    return [ref("AWS_ACCESS_KEY_ID", False), ref("AWS_SECRET_ACCESS_KEY", False),
            ref("AWS_SESSION_TOKEN", True), ref("AWS_DEFAULT_REGION", True)]


def control_key_env(plan: Plan) -> dict[str, Any]:
    """The control API key (core/control_key.py) by reference to a Secret the cluster owner
    creates; never a value here, and the pod does not start without it."""
    return {"name": "RTK_TRITON_CONTROL_KEY", "valueFrom": {"secretKeyRef": {
        "name": plan.control_key_secret, "key": "key", "optional": False}}}


def _repository(plan: Plan) -> tuple[str, list[dict], list[dict]]:
    """Triton's --model-repository, plus the volume and mount a PVC repository needs."""
    if plan.repo.scheme == "s3":
        return plan.repo.uri, [], []
    volume = {"name": "models", "persistentVolumeClaim": {"claimName": plan.repo.claim,
                                                          "readOnly": True}}
    mount = {"name": "models", "mountPath": MODELS_DIR, "readOnly": True}
    if plan.repo.path:
        mount["subPath"] = plan.repo.path
    return MODELS_DIR, [volume], [mount]


def deployment(plan: Plan) -> dict[str, Any]:
    """Triton replicas; no spec.replicas, so that re-applying never fights the HPA."""
    repository, volumes, mounts = _repository(plan)
    container = {
        "name": "triton", "image": plan.image, "imagePullPolicy": "IfNotPresent",
        "args": serve_args(plan, repository),
        "ports": [{"name": n, "containerPort": p, "protocol": "TCP"} for n, p in PORTS.items()],
        "env": [control_key_env(plan), *(s3_env(plan) if plan.repo.scheme == "s3" else [])],
        **probes(plan.models["ensemble"]),
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_S)]}}},
        "resources": RESOURCES["base"], "securityContext": pod.container_security(),
        "volumeMounts": mounts + pod.scratch_mounts(),
    }
    if not container["env"]:
        del container["env"]
    spec = {
        "securityContext": pod.pod_security(), "terminationGracePeriodSeconds": GRACE_S,
        "automountServiceAccountToken": False, "enableServiceLinks": False,
        "topologySpreadConstraints": [{  # replicas on different nodes when the cluster allows
            "maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": pod.selector(plan, "serving")}}],
        "containers": [container], "volumes": volumes + pod.scratch_volumes("serving"),
    }
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": pod.metadata(plan, f"{plan.app}-triton", "serving",
                                     annotations={"rtk.dev/ensemble": plan.models["ensemble"]}),
            "spec": {"selector": {"matchLabels": pod.selector(plan, "serving")},
                     "strategy": {"type": "RollingUpdate",
                                  "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                     "revisionHistoryLimit": 3,
                     "template": {"metadata": {"labels": pod.labels(plan, "serving")},
                                  "spec": spec}}}


def service(plan: Plan) -> dict[str, Any]:
    ports = [{"name": n, "port": p, "targetPort": n, "protocol": "TCP"} for n, p in PORTS.items()]
    ports[1]["appProtocol"] = "kubernetes.io/h2c"  # gRPC without TLS, for protocol-aware proxies
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": pod.metadata(plan, f"{plan.app}-triton", "serving"),
            "spec": {"type": "ClusterIP", "selector": pod.selector(plan, "serving"), "ports": ports}}


def disruption_budget(plan: Plan) -> dict[str, Any]:
    """One pod down at a time in a drain; never blocks a drain, even with one replica."""
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": pod.metadata(plan, f"{plan.app}-triton", "serving"),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": pod.selector(plan, "serving")},
                     "unhealthyPodEvictionPolicy": "AlwaysAllow"}}


def autoscaler(plan: Plan) -> dict[str, Any]:
    """Queue time per request of the classifier (the step that saturates), CPU as the fallback.

    With several metrics the HPA takes the largest proposal, and when the custom metric is
    missing it can still scale up on CPU (it skips only scale-downs it cannot fully justify).
    """
    queue = {"type": "Pods", "pods": {
        "metric": {"name": QUEUE_METRIC,
                   "selector": {"matchLabels": {"model": plan.models["classifier"]}}},
        "target": {"type": "AverageValue", "averageValue": QUEUE_TARGET_US}}}
    cpu = {"type": "Resource", "resource": {
        "name": "cpu", "target": {"type": "Utilization", "averageUtilization": CPU_TARGET_PERCENT}}}
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": pod.metadata(plan, f"{plan.app}-triton", "serving"),
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                        "name": f"{plan.app}-triton"},
                     "minReplicas": plan.replicas, "maxReplicas": plan.max_replicas,
                     "metrics": [queue, cpu],
                     # a new Triton pod loads its models before it helps: scale down slowly
                     "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300, "policies": [
                         {"type": "Pods", "value": 1, "periodSeconds": 60}]}}}}


def overlay_patch(plan: Plan, kind: str) -> dict[str, Any]:
    """Strategic-merge patch of the Deployment for one kind: its resources (and GPU taint)."""
    spec: dict[str, Any] = {"containers": [{"name": "triton", "resources": RESOURCES[kind]}]}
    if kind == "gpu":
        spec["tolerations"] = [pod.gpu_toleration()]
    if kind == "cpu" and plan.int8_class:  # INT8 is trusted only on the CPU kind it was gated on
        from .affinity import node_affinity

        spec["affinity"] = node_affinity(plan.int8_class)
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": f"{plan.app}-triton"},
            "spec": {"template": {"spec": spec}}}
