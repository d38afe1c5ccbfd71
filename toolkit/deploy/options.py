"""What `rtk deploy` can choose, checked and resolved into one plan the manifest builders read."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import RtkError

# Keep equal to NGC_RELEASE in the Dockerfile and compose.yaml: a TensorRT plan only loads on the
# TensorRT release that built it, so every Triton that serves rtk's repositories uses one release.
NGC_RELEASE = "25.10"
TRITON_BASE = f"nvcr.io/nvidia/tritonserver:{NGC_RELEASE}-py3"
DEFAULT_IMAGE = f"rtk-triton:{NGC_RELEASE}"  # TRITON_BASE + rtk + Pillow: DIR/image/Dockerfile
DEFAULT_TRAIN_IMAGE = f"rtk:{NGC_RELEASE}"  # the repository's Dockerfile (NGC PyTorch + rtk)
TARGETS = ("kubernetes",)
KINDS = ("cpu", "gpu")
K8S_NAME_MAX = 40  # leaves room for suffixes: "-finetune-master-0", "-adapter-rules", pod hashes


@dataclass
class DeployOptions:
    """Everything `rtk deploy` can choose; model names come from the run or the repository."""

    source: str
    out: str = "deploy"
    target: str = "kubernetes"
    name: str | None = None  # the ensemble's name, as given to `rtk triton --name`
    replicas: int = 2  # serving: HPA minimum (and PDB basis)
    max_replicas: int | None = None  # default: 4 x replicas
    kind: str = "gpu"  # KServe and training resources; both serving overlays are always written
    image: str = DEFAULT_IMAGE
    repo_uri: str | None = None  # s3://bucket/path or pvc:CLAIM[/path]; default pvc:<name>-models
    nodes: int = 2  # training pods
    nproc_per_node: int = 1  # training processes (GPUs) per pod
    train_image: str = DEFAULT_TRAIN_IMAGE
    shared_pvc: str | None = None  # training data, runs and checkpoints; default <name>-shared
    allow_from: tuple[str, ...] = ()  # inference clients: NAMESPACE or KEY=VALUE pod labels
    monitoring_namespace: str = "monitoring"  # the only namespace that may scrape metrics
    control_key_secret: str | None = None  # Secret with the control API key; default <name>-triton-control
    target_cpu: str | None = None  # CPU int8 class of the serving nodes (default: this host's)


@dataclass
class RepoLocation:
    """Where Triton finds the model repository."""

    scheme: str  # "s3" or "pvc"
    uri: str  # as given (s3://...) or pvc://CLAIM/PATH for KServe
    claim: str | None = None
    path: str = ""  # inside the claim


@dataclass
class Plan:
    """The resolved deployment: names, sizes, images and where things live."""

    app: str  # Kubernetes name prefix (DNS-1035)
    models: dict[str, str]  # role -> Triton model name (ensemble, preprocess, classifier, postprocess)
    source: str  # "run" or "repository"
    repo: RepoLocation
    kind: str
    replicas: int
    max_replicas: int
    image: str
    nodes: int
    nproc_per_node: int
    train_image: str
    shared_pvc: str
    finetune_args: list[str] = field(default_factory=list)
    repo_kind: str | None = None  # instance kind found in a given repository
    allow_from: tuple[str, ...] = ()
    monitoring_namespace: str = "monitoring"
    control_key_secret: str = ""
    int8_class: str | None = None  # the CPU overlay serves INT8 gated on this class (None: FP32)
    int8_note: str | None = None  # why the CPU overlay serves FP32 rather than INT8


def k8s_name(name: str) -> str:
    """A DNS-1035 label from a model name: lower case, '-' for anything else, a letter first."""
    text = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if not text or not text[0].isalpha():
        text = f"rtk-{text}".rstrip("-")
    return text[:K8S_NAME_MAX].rstrip("-")


def parse_repo_uri(uri: str) -> RepoLocation:
    """s3://bucket[/path] (Triton reads it natively) or pvc:CLAIM[/path] (mounted read-only)."""
    if uri.startswith("s3://"):
        if not uri[len("s3://"):].strip("/"):
            raise RtkError(f"--repo-uri {uri!r} names no bucket.", "Use s3://BUCKET/PATH.")
        return RepoLocation("s3", uri.rstrip("/"))
    if uri.startswith("pvc:"):
        claim, _, path = uri[len("pvc:"):].lstrip("/").partition("/")
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", claim):
            raise RtkError(f"--repo-uri {uri!r} has no valid claim name.",
                           "Use pvc:CLAIM or pvc:CLAIM/PATH (a lower-case PersistentVolumeClaim name).")
        path = path.strip("/")
        return RepoLocation("pvc", f"pvc://{claim}/{path}".rstrip("/"), claim, path)
    raise RtkError(f"Unsupported --repo-uri {uri!r}.",
                   "Use s3://BUCKET/PATH (credentials from a Secret) or pvc:CLAIM[/PATH].")


def resolve(opts: DeployOptions) -> Plan:
    """Check the options and derive the plan (model names from the run or the repository)."""
    from .models import find_models

    if opts.target not in TARGETS:
        raise RtkError(f"Unknown target {opts.target!r}.", f"Use one of: {', '.join(TARGETS)}.")
    if opts.kind not in KINDS:
        raise RtkError(f"Unknown kind {opts.kind!r}.", "Use --gpu or --cpu.")
    for flag, value in (("--replicas", opts.replicas), ("--nodes", opts.nodes),
                        ("--nproc-per-node", opts.nproc_per_node)):
        if value < 1:
            raise RtkError(f"{flag} must be at least 1, got {value}.", f"Use {flag} 1 or more.")
    max_replicas = opts.max_replicas or 4 * opts.replicas
    if max_replicas < opts.replicas:
        raise RtkError(f"--max-replicas {max_replicas} is below --replicas {opts.replicas}.",
                       f"Use --max-replicas {opts.replicas} or more.")
    for flag, image in (("--image", opts.image), ("--train-image", opts.train_image)):
        if not image or any(c.isspace() for c in image):
            raise RtkError(f"{flag} {image!r} is not an image reference.", "Use REGISTRY/NAME:TAG.")
    found = find_models(Path(opts.source), opts.name, target_cpu=opts.target_cpu)
    app = k8s_name(found["models"]["ensemble"])
    repo = parse_repo_uri(opts.repo_uri or f"pvc:{app}-models")
    shared = opts.shared_pvc or f"{app}-shared"
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", shared):
        raise RtkError(f"--shared-pvc {shared!r} is not a valid claim name.",
                       "Use a lower-case PersistentVolumeClaim name.")
    return Plan(app=app, models=found["models"], source=found["source"], repo=repo,
                kind=opts.kind, replicas=opts.replicas, max_replicas=max_replicas,
                image=opts.image, nodes=opts.nodes, nproc_per_node=opts.nproc_per_node,
                train_image=opts.train_image, shared_pvc=shared,
                finetune_args=found["finetune_args"], repo_kind=found.get("repo_kind"),
                allow_from=tuple(opts.allow_from), monitoring_namespace=opts.monitoring_namespace,
                control_key_secret=opts.control_key_secret or f"{app}-triton-control",
                int8_class=found.get("int8_class"), int8_note=found.get("int8_note"))
