"""The KServe route: a Triton ServingRuntime on rtk's image and an InferenceService that uses it."""

from __future__ import annotations

from typing import Any

from . import pod
from .options import Plan
from .serving import GRACE_S, RESOURCES, probes, serve_args

# KServe's own kserve-tritonserver runtime serves HTTP on 8080 and gRPC on 9000 from /mnt/models
# (where its storage initializer puts storageUri); rtk's runtime keeps that contract.
KSERVE_PORTS = {"http": 8080, "grpc": 9000, "metrics": 8002}
MODEL_DIR = "/mnt/models"


def serving_runtime(plan: Plan) -> dict[str, Any]:
    """Like kserve-tritonserver, but on rtk's image, locked down, loading one ensemble.

    KServe's stock runtime runs plain tritonserver in the NGC image, where rtk's preprocessing
    model cannot import PIL and a dead Python backend is never reloaded; pinning
    runtimeVersion would change neither. This one runs `rtk serve`, as the Deployment does.
    """
    container = {"name": "kserve-container", "image": plan.image,
                 "args": serve_args(plan, MODEL_DIR, KSERVE_PORTS),
                 **probes(plan.models["ensemble"], KSERVE_PORTS["http"]),
                 "securityContext": pod.container_security(), "volumeMounts": pod.scratch_mounts()}
    return {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "ServingRuntime",
            "metadata": pod.metadata(plan, f"{plan.app}-triton", "kserve"),
            "spec": {"annotations": {"prometheus.kserve.io/port": str(KSERVE_PORTS["metrics"]),
                                     "prometheus.kserve.io/path": "/metrics"},
                     "supportedModelFormats": [{"name": "triton", "version": "2",
                                                "autoSelect": False}],
                     "protocolVersions": ["v2", "grpc-v2"],
                     "containers": [container], "volumes": pod.scratch_volumes("serving")}}


def inference_service(plan: Plan) -> dict[str, Any]:
    """A raw (Knative-free) predictor from storageUri; KServe's HPA scales it on CPU."""
    predictor: dict[str, Any] = {
        "minReplicas": plan.replicas, "maxReplicas": plan.max_replicas,
        "scaleMetric": "cpu", "scaleTarget": 80,
        "securityContext": pod.pod_security(), "terminationGracePeriodSeconds": GRACE_S,
        "model": {"modelFormat": {"name": "triton", "version": "2"},
                  "runtime": f"{plan.app}-triton", "protocolVersion": "v2",
                  "storageUri": plan.repo.uri, "resources": RESOURCES[plan.kind],
                  # KServe merges this container over the runtime's: keep it locked down too
                  "securityContext": pod.container_security()},
    }
    if plan.repo.scheme == "s3":  # the storage initializer finds the Secret through this account
        predictor["serviceAccountName"] = f"{plan.app}-kserve"
    if plan.kind == "gpu":
        predictor["tolerations"] = [pod.gpu_toleration()]
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": pod.metadata(plan, plan.app, "kserve", annotations={
                # "RawDeployment": read by every KServe release (newer ones call it Standard)
                "serving.kserve.io/deploymentMode": "RawDeployment",
                "rtk.dev/ensemble": plan.models["ensemble"]}),
            "spec": {"predictor": predictor}}


def service_account(plan: Plan) -> dict[str, Any]:
    """Names the S3 Secret for KServe's storage initializer (KServe's documented S3 route)."""
    return {"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": pod.metadata(plan, f"{plan.app}-kserve", "kserve"),
            "secrets": [{"name": f"{plan.app}-s3"}]}
