"""Multi-node `rtk finetune`: a Kubeflow PyTorchJob, or an indexed Job with a headless Service."""

from __future__ import annotations

import shlex
from typing import Any

from . import pod
from .options import Plan

SHARED = "/shared"  # one ReadWriteMany volume: data in, run bundle and checkpoints out
DATA_DIR = f"{SHARED}/data"
OPERATOR_PORT = ("pytorchjob-port", 23456)  # the training operator's port name and default
JOB_PORT = ("torch-dist", 29500)  # torchrun's default master port

# Sourced by every training pod on every (re)start: the resume decision must be taken per
# attempt, never baked into the manifest. Rank 0 alone writes the bundle (toolkit.train.session).
RESUME = """\
set -eu
resume=""
if [ -f "$RTK_OUT/last.pt" ]; then
  # an earlier attempt (a preempted or failed pod) finished at least one epoch: continue it
  resume="--resume"
  echo "rtk: found $RTK_OUT/last.pt, resuming"
elif [ -f "$RTK_OUT/manifest.json" ]; then
  # an attempt died before its first checkpoint: nothing to resume, and rtk finetune refuses
  # to start over a folder that holds a run
  echo "rtk: $RTK_OUT has no checkpoint yet, starting over"
  rm -f "$RTK_OUT/manifest.json"
fi
"""


def out_dir(plan: Plan) -> str:
    return f"{SHARED}/runs/{plan.app}"


def torchrun_args(plan: Plan, node_rank_env: str, master_addr: str, *, master_port: int) -> list[str]:
    """Static rendezvous: a fixed set of pods; Kubernetes, not torchrun, replaces a lost one.

    With --max-restarts=0 a failure anywhere ends every pod's torchrun, the pods restart, and
    each one decides again whether to resume; torchrun's own restarts would rerun the first
    attempt's arguments.
    """
    return ["torchrun", f"--nnodes={plan.nodes}", f"--nproc-per-node={plan.nproc_per_node}",
            f'--node-rank="${node_rank_env}"', f"--master-addr={master_addr}",
            f"--master-port={master_port}", "--rdzv-backend=static", "--max-restarts=0"]


def launch_script(plan: Plan, node_rank_env: str, master_addr: str, *, master_port: int) -> str:
    device = "cuda" if plan.kind == "gpu" else "cpu"
    finetune = ["-m", "toolkit", "finetune", DATA_DIR, '--out "$RTK_OUT"',
                *map(shlex.quote, plan.finetune_args), f"--device {device}", "--no-progress",
                "$resume"]
    lines = torchrun_args(plan, node_rank_env, master_addr, master_port=master_port) + [" ".join(finetune)]
    return RESUME + "exec " + " \\\n  ".join(lines) + "\n"


def _resources(plan: Plan) -> dict[str, Any]:
    n = plan.nproc_per_node
    if plan.kind == "gpu":
        return {"requests": {"cpu": str(4 * n), "memory": f"{16 * n}Gi", "nvidia.com/gpu": str(n)},
                "limits": {"memory": f"{16 * n}Gi", "nvidia.com/gpu": str(n)}}
    return {"requests": {"cpu": str(2 * n), "memory": f"{4 * n}Gi"},
            "limits": {"cpu": str(2 * n), "memory": f"{4 * n}Gi"}}


def _pod_spec(plan: Plan, name: str, script: str, *, port: tuple[str, int]) -> dict[str, Any]:
    container = {
        "name": name, "image": plan.train_image, "imagePullPolicy": "IfNotPresent",
        "command": ["/bin/sh", "-c", script],
        "env": [{"name": "RTK_OUT", "value": out_dir(plan)},
                # a read-only root: caches go to /tmp, downloaded weights to the shared volume
                {"name": "HOME", "value": "/tmp"}, {"name": "MPLCONFIGDIR", "value": "/tmp/matplotlib"},
                # uid 1000 may have no passwd entry; getpass (torch.compile's cache) reads USER
                {"name": "USER", "value": "rtk"},
                {"name": "TORCH_HOME", "value": f"{SHARED}/cache/torch"},
                {"name": "PYTHONUNBUFFERED", "value": "1"}],
        "ports": [{"name": port[0], "containerPort": port[1], "protocol": "TCP"}],
        "resources": _resources(plan), "securityContext": pod.container_security(),
        "volumeMounts": [{"name": "shared", "mountPath": SHARED}] + pod.scratch_mounts(),
    }
    spec: dict[str, Any] = {
        "securityContext": pod.pod_security(), "automountServiceAccountToken": False,
        "enableServiceLinks": False, "containers": [container],
        "volumes": [{"name": "shared", "persistentVolumeClaim": {"claimName": plan.shared_pvc}}]
        + pod.scratch_volumes("training")}
    if plan.kind == "gpu":
        spec["tolerations"] = [pod.gpu_toleration()]
    return spec


def pytorch_job(plan: Plan) -> dict[str, Any]:
    """Master + (nodes - 1) workers; the operator names the master's Service <job>-master-0."""
    name = f"{plan.app}-finetune"
    # the operator sets PET_NODE_RANK (0 for the master, i + 1 for worker i) in every pod
    script = launch_script(plan, "PET_NODE_RANK", f"{name}-master-0", master_port=OPERATOR_PORT[1])
    template = {"metadata": {"labels": pod.labels(plan, "training")},
                "spec": _pod_spec(plan, "pytorch", script, port=OPERATOR_PORT)}  # the operator's names
    replicas = {"Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": template}}
    if plan.nodes > 1:
        replicas["Worker"] = {"replicas": plan.nodes - 1, "restartPolicy": "OnFailure",
                              "template": template}
    return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
            "metadata": pod.metadata(plan, name, "training"),
            "spec": {"nprocPerNode": str(plan.nproc_per_node),
                     "runPolicy": {"backoffLimit": 3 * plan.nodes, "cleanPodPolicy": "None"},
                     "pytorchReplicaSpecs": replicas}}


def headless_service(plan: Plan) -> dict[str, Any]:
    """Gives pod <job>-<index> the name <job>-<index>.<service>, before it is even ready."""
    name = f"{plan.app}-finetune"
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": pod.metadata(plan, name, "training"),
            "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                     "selector": {"batch.kubernetes.io/job-name": name},
                     "ports": [{"name": JOB_PORT[0], "port": JOB_PORT[1], "protocol": "TCP"}]}}


def indexed_job(plan: Plan) -> dict[str, Any]:
    """One pod per node; index 0 hosts the rendezvous; a preempted pod is replaced, not counted."""
    name = f"{plan.app}-finetune"
    script = launch_script(plan, "JOB_COMPLETION_INDEX", f"{name}-0.{name}", master_port=JOB_PORT[1])
    spec = {**_pod_spec(plan, "finetune", script, port=JOB_PORT), "subdomain": name,
            "restartPolicy": "Never"}
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": pod.metadata(plan, name, "training"),
            "spec": {"completionMode": "Indexed", "completions": plan.nodes,
                     "parallelism": plan.nodes, "backoffLimit": 3 * plan.nodes,
                     # a new pod only once the old one is gone: one holder of each hostname
                     "podReplacementPolicy": "Failed",
                     "podFailurePolicy": {"rules": [{  # preemption, eviction, drain: not a failure
                         "action": "Ignore",
                         "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]},
                     "template": {"metadata": {"labels": pod.labels(plan, "training")},
                                  "spec": spec}}}
