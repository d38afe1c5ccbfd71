"""Assemble the deployment tree (Kustomize bases and overlays, Dockerfile, README) and write it whole."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from .. import __version__
from ..core.errors import RtkError
from ..core.files import swapped_dir, write_text
from . import kserve, monitoring, network, serving, storage, training
from .options import DEFAULT_IMAGE, NGC_RELEASE, DeployOptions, Plan, resolve

MARKER = ".rtk-deploy.json"  # what rtk wrote, and the licence to replace the folder next time
KUSTOMIZE = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"}
NOTES = {  # one line atop a file, where applying it needs something from the cluster
    "base/hpa.yaml": "needs metrics-server (CPU) and the Prometheus Adapter rule in ../monitoring",
    "monitoring/servicemonitor.yaml": "needs the Prometheus operator; your Prometheus must select it",
    "monitoring/prometheus-adapter-config.yaml": "a full adapter config: merge into yours (README)",
    "kserve/inferenceservice.yaml": "needs KServe; applies after servingruntime.yaml",
    "training/pytorchjob/pytorchjob.yaml": "needs Kubeflow's training operator (PyTorchJob v1)",
    "storage/loader-pod.yaml": "temporary: kubectl cp into it, then delete it (README)",
}

SERVING_DOCKERFILE = f"""\
# The Triton image rtk's manifests run: NGC's release {NGC_RELEASE} (the one the repository's
# Dockerfile and compose.yaml pin, so TensorRT plans fit), plus rtk, whose `rtk serve` starts
# Triton and reloads a model whose Python backend process died; Pillow for rtk's preprocessing
# model; onnxruntime for `rtk triton --platform python` repositories. rtk is installed without
# its dependencies: `rtk serve` imports only click and tritonclient (Triton's config schema),
# never torch or nvidia-pytriton, and runs the image's own tritonserver and Python backend.
#
# Build it from the root of an rtk checkout (it copies pyproject.toml, README.md and toolkit/):
#   docker build -f DEPLOY_DIR/image/Dockerfile -t REGISTRY/{DEFAULT_IMAGE} RTK_CHECKOUT
#   docker push REGISTRY/{DEFAULT_IMAGE}
ARG NGC_RELEASE={NGC_RELEASE}
FROM nvcr.io/nvidia/tritonserver:${{NGC_RELEASE}}-py3
# Ubuntu 24.04's Python refuses system-wide pip installs without it (PEP 668)
ENV PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
RUN pip install --no-cache-dir pillow onnxruntime "click>=8.1" "tritonclient[grpc]>=2.40"
COPY pyproject.toml README.md /opt/rtk/
COPY toolkit /opt/rtk/toolkit
RUN pip install --no-cache-dir --no-deps /opt/rtk
# the image's non-root user (uid 1000); the pods run as that uid either way
USER 1000:1000
"""


def kustomization(resources: list[str], patches: list[str] = ()) -> dict[str, Any]:
    found = {**KUSTOMIZE, "resources": resources}
    if patches:
        found["patches"] = [{"path": p} for p in patches]
    return found


def build_tree(plan: Plan) -> dict[str, Any]:
    """Relative path -> list of YAML documents, or text for the non-YAML files."""
    tree: dict[str, Any] = {
        "base/deployment.yaml": [serving.deployment(plan)],
        "base/service.yaml": [serving.service(plan)],
        "base/pdb.yaml": [serving.disruption_budget(plan)],
        "base/hpa.yaml": [serving.autoscaler(plan)],
        "base/networkpolicy.yaml": [network.network_policy(plan, list(plan.allow_from),
                                                           plan.monitoring_namespace)],
        "monitoring/servicemonitor.yaml": [monitoring.service_monitor(plan)],
        "monitoring/prometheus-adapter-config.yaml": [monitoring.adapter_config(plan)],
        "monitoring/prometheus-adapter-values.yaml": [monitoring.adapter_helm_values()],
        "kserve/servingruntime.yaml": [kserve.serving_runtime(plan)],
        "kserve/inferenceservice.yaml": [kserve.inference_service(plan)],
        "training/pytorchjob/pytorchjob.yaml": [training.pytorch_job(plan)],
        "training/indexed-job/service.yaml": [training.headless_service(plan)],
        "training/indexed-job/job.yaml": [training.indexed_job(plan)],
        "storage/claims.yaml": storage.claims(plan),
        "storage/loader-pod.yaml": [storage.loader_pod(plan)],
    }
    if plan.repo.scheme == "s3":
        tree["kserve/serviceaccount.yaml"] = [kserve.service_account(plan)]
    for kind in ("cpu", "gpu"):
        tree[f"overlays/{kind}/deployment-{kind}.yaml"] = [serving.overlay_patch(plan, kind)]
        tree[f"overlays/{kind}/kustomization.yaml"] = [kustomization(["../../base"],
                                                                     [f"deployment-{kind}.yaml"])]
    layout = {"base": ["deployment.yaml", "service.yaml", "pdb.yaml", "hpa.yaml", "networkpolicy.yaml"],
              "monitoring": ["servicemonitor.yaml"],
              "kserve": [n for n in ("serviceaccount.yaml", "servingruntime.yaml",
                                     "inferenceservice.yaml") if f"kserve/{n}" in tree],
              "training/pytorchjob": ["pytorchjob.yaml"],
              "training/indexed-job": ["service.yaml", "job.yaml"], "storage": ["claims.yaml"]}
    for folder, files in layout.items():
        tree[f"{folder}/kustomization.yaml"] = [kustomization(files)]
    tree["image/Dockerfile"] = SERVING_DOCKERFILE
    return tree


def dump_yaml(docs: list[Any]) -> str:
    """Block style, no anchors (shared dicts are written out), scripts as literal blocks."""
    import yaml

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data):
            return True

    def text(dumper, data):
        return dumper.represent_scalar("tag:yaml.org,2002:str", data,
                                       style="|" if "\n" in data else None)

    Dumper.add_representer(str, text)
    return yaml.dump_all(docs, Dumper=Dumper, sort_keys=False, default_flow_style=False, width=100)


def render(path: str, content: Any, plan: Plan) -> str:
    if isinstance(content, str):
        return content
    head = f"# Generated by `rtk deploy` (rtk {__version__}) for ensemble {plan.models['ensemble']!r}."
    note = f"\n# Note: {NOTES[path]}." if path in NOTES else ""
    return f"{head}{note}\n{dump_yaml(content)}"


def write_deployment(opts: DeployOptions, echo: Callable = print) -> dict[str, Any]:
    """Resolve the options, write the whole tree beside DIR, then swap it in."""
    from .readme import readme

    plan = resolve(opts)
    out = Path(opts.out)
    _check_out(out)
    tree = build_tree(plan)
    facts = {"rtk_version": __version__, "source": str(Path(opts.source).resolve()),
             "source_kind": plan.source, "app": plan.app, "models": plan.models,
             "repo_uri": plan.repo.uri, "kind": plan.kind, "image": plan.image,
             "replicas": plan.replicas, "max_replicas": plan.max_replicas, "nodes": plan.nodes,
             "nproc_per_node": plan.nproc_per_node, "train_image": plan.train_image,
             "shared_pvc": plan.shared_pvc, "files": sorted([*tree, "README.md"])}
    with swapped_dir(out) as tmp:  # the previous output is replaced whole
        for path, content in tree.items():
            write_text(tmp / path, render(path, content, plan))
        write_text(tmp / "README.md", readme(plan, opts.source))
        write_text(tmp / MARKER, json.dumps(facts, indent=2) + "\n")
    echo(f"Wrote {len(facts['files'])} files to {out}")
    return {**facts, "out": str(out), "warnings": warnings(plan, opts)}


def rtk_checkout() -> str:
    """The rtk source folder this rtk runs from (the image's build context), if it is one."""
    root = Path(__file__).resolve().parents[2]
    return str(root) if (root / "pyproject.toml").is_file() else "RTK_CHECKOUT"


def warnings(plan: Plan, opts: DeployOptions) -> list[str]:
    """What the user must still do or know before the manifests can work."""
    found = []
    if plan.image == DEFAULT_IMAGE:
        found.append(f"Build and push the serving image (docker build -f "
                     f"{Path(opts.out) / 'image' / 'Dockerfile'} -t REGISTRY/{DEFAULT_IMAGE} "
                     f"{rtk_checkout()}), then re-run with --image REGISTRY/{DEFAULT_IMAGE}.")
    if plan.repo_kind == "gpu":
        found.append("The repository's classifier runs on KIND_GPU: only overlays/gpu can serve it.")
    if plan.int8_class:
        found.append(f"overlays/cpu serves INT8 and requires {plan.int8_class} nodes by their Node "
                     "Feature Discovery labels: NFD must run on the cluster (README).")
    if plan.repo_kind == "cpu" and plan.kind == "gpu":
        found.append("The repository's classifier runs on KIND_CPU: on GPU pods it still uses the "
                     "CPU; regenerate it with `rtk triton ... --kind gpu` for overlays/gpu.")
    return found


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise RtkError(f"{out} exists and is not a folder.", "Pass another --out.")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise RtkError(f"{out} is not empty and was not written by `rtk deploy`.",
                       "Pass a new or empty --out folder; rtk deploy replaces only its own output.")

