"""The Triton model names a deployment serves: from a run (as `rtk triton` names them) or a repository."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.bundle import MANIFEST, Bundle
from ..core.errors import RtkError
from ..triton.repository import default_name, model_names, verify_repository

ROLES = ("ensemble", "preprocess", "classifier", "postprocess")
# TrainConfig fields a cluster run repeats (resolved values from the manifest); data, output and
# device are the cluster's, and a local weights path would not exist in the pod.
FINETUNE_FLAGS = {"arch": "--arch", "image_size": "--image-size", "batch_size": "--batch-size",
                  "epochs": "--epochs", "lr": "--lr", "augment": "--augment",
                  "val_split": "--val-split", "eval_steps": "--eval-steps", "seed": "--seed"}


def find_models(source: Path, name: str | None, *, target_cpu: str | None = None) -> dict[str, Any]:
    """Model names (role -> name), where they came from, the run's fine-tuning flags, and the
    CPU kind the CPU overlay's INT8 classifier is kept to (as `rtk triton --kind cpu` picks)."""
    if (source / MANIFEST).is_file():
        from ..triton.repository import RepoOptions, choose_artifact, target_cpu as resolve_cpu

        bundle = Bundle.load(source)
        opts = RepoOptions(kind="cpu", platform="python", target_cpu=target_cpu)
        artifact, note = (choose_artifact(bundle, opts) if bundle.manifest.trusted("model.onnx")
                          else (None, None))
        return {"source": "run", "models": model_names(name or default_name(bundle)),
                "finetune_args": finetune_args(bundle.manifest.config or {}),
                "int8_class": resolve_cpu(opts) if artifact == "model.int8.onnx" else None,
                "int8_note": note}
    if source.is_dir() and any(source.glob("*/config.pbtxt")):
        return {"source": "repository", **from_repository(source, name), "finetune_args": []}
    raise RtkError(f"{source} is neither an rtk run nor a Triton model repository.",
                   "Pass a run folder (rtk finetune --out) or a repository written by `rtk triton`.")


def finetune_args(config: dict[str, Any]) -> list[str]:
    """`rtk finetune` flags that repeat a run's configuration."""
    args = []
    for key, flag in FINETUNE_FLAGS.items():
        if config.get(key) is not None and not (key == "val_split" and config.get("val_dir")):
            args += [flag, str(config[key])]
    if config.get("weights") in ("imagenet", "none"):
        args += ["--weights", config["weights"]]
    if config.get("amp") is False:
        args.append("--no-amp")
    return args


def from_repository(repo: Path, name: str | None) -> dict[str, Any]:
    """The ensemble (and its steps) of a repository, read back with Triton's config schema."""
    from ..triton import configs

    verify_repository(repo)  # every config parses and names its own folder
    parsed = {p.parent.name: configs.parse(p.read_text()) for p in repo.glob("*/config.pbtxt")}
    ensembles = sorted(n for n, c in parsed.items() if c.platform == "ensemble")
    if not ensembles:
        raise RtkError(f"{repo} holds no ensemble model.",
                       "Generate the repository with: rtk triton RUN_DIR --repo REPO")
    if name is None and len(ensembles) > 1:
        raise RtkError(f"{repo} holds several ensembles: {', '.join(ensembles)}.",
                       "Choose one with --name.")
    chosen = name or ensembles[0]
    if chosen not in ensembles:
        raise RtkError(f"{repo} has no ensemble named {chosen!r}.",
                       f"Use --name with one of: {', '.join(ensembles)}.")
    steps = [s.model_name for s in parsed[chosen].ensemble_scheduling.step]
    missing = [s for s in steps if s not in parsed]
    if missing:
        raise RtkError(f"Ensemble {chosen!r} uses models missing from {repo}: {', '.join(missing)}.",
                       "Regenerate the repository with `rtk triton`.")
    models = dict(model_names(chosen))
    for step in steps:  # rtk records each model's role; a hand-made ensemble keeps the defaults
        params = parsed[step].parameters
        role = params["rtk.role"].string_value if "rtk.role" in params else ""
        if role in ROLES:
            models[role] = step
    if models["classifier"] not in parsed:
        raise RtkError(f"Ensemble {chosen!r} has no classifier step in {repo}.",
                       "Regenerate the repository with `rtk triton`.")
    groups = parsed[models["classifier"]].instance_group
    gpu = any(g.kind == configs.pb().ModelInstanceGroup.KIND_GPU for g in groups)
    params = parsed[models["classifier"]].parameters
    int8 = "rtk.target_cpu" in params and params["rtk.artifact"].string_value == "model.int8.onnx"
    return {"models": models, "repo_kind": "gpu" if gpu else "cpu",
            "int8_class": params["rtk.target_cpu"].string_value if int8 and not gpu else None}
