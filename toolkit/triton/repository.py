"""`rtk triton`: write a Triton model repository (classifier, preprocessing, ensemble) atomically."""

from __future__ import annotations

import io
import json
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..core.bundle import Bundle
from ..core.errors import RtkError
from ..core.files import swapped_dir
from ..core.manifest import Artifact
from ..core.native import LEVEL_KEY
from . import configs
from .configs import Serving, Tensor

PLATFORMS = ("onnxruntime", "tensorrt", "python")
ONNX_ARTIFACTS = {"onnx": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
PLAN = "model.fp16.plan"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,47}$")
HERE = Path(__file__).parent


@dataclass
class RepoOptions:
    """Everything `rtk triton` can choose; the rest is derived from the bundle."""

    repo: str = "model_repository"
    name: str | None = None
    platform: str = "onnxruntime"
    kind: str = "cpu"
    max_batch: int | None = None
    instances: int | None = None  # None: by cores on CPU (see cpu_layout), 1 on GPU
    preprocess_instances: int | None = None  # None: one per core on CPU (see preprocess_instances)
    ort_spin: bool = False  # CPU: let idle ONNX Runtime threads spin (lower latency, fewer decoding cycles)
    artifact: str | None = None  # onnx | fp16 | int8; None: the best trusted one for the kind
    target_cpu: str | None = None  # CPU int8 class of the serving nodes (default: this host's)
    queue_delay_us: int = 100
    trt_fp16: bool = False  # onnxruntime on GPU: TensorRT execution accelerator in FP16
    target_tensorrt: str | None = None  # tensorrt: the Triton host's TensorRT (default: here)
    target_cc: str | None = None  # tensorrt: the Triton host's GPU compute capability
    max_queue_size: int = 0  # requests each model may queue before REJECT; 0: unbounded
    queue_timeout_ms: int = 0  # longest queue wait before REJECT; 0: none


# Why queues are unbounded by default: any queue policy (a max_queue_size or a default
# timeout) turns off payload prefetching in Triton core's dynamic batcher, which then wakes
# on a new request only if an instance is already waiting for work. A request that arrives
# while the single instance is still returning from the previous one waits out the batcher's
# 500 ms timer (core r24.10, dynamic_batch_scheduler.cc: default_wait_microseconds). Measured
# on the 2-core CPU (benchmarks/cpu/serving/latency.md): 20 of 2,018 classifier requests at
# 505-512 ms with a queue policy, none over 12 ms without; with 2 instances, none either.
QUEUE_STALL_HINT = ("a bounded queue turns off Triton's payload prefetching: with 1 instance "
                    "per model, requests can wait out the dynamic batcher's 500 ms timer; "
                    "use --instances 2 or more (benchmarks/cpu/serving/latency.md)")


def queue_size(opts: RepoOptions, max_batch: int, instances: int = 1) -> int:
    """The max_queue_size written into each model's dynamic batching queue policy (0: none)."""
    return opts.max_queue_size


def model_names(name: str) -> dict[str, str]:
    """Names of the four models; the ensemble carries the plain name."""
    if not NAME_RE.match(name):
        raise RtkError(f"Invalid model name {name!r}.",
                       "Use 1-48 letters, digits, '_' or '-', starting with a letter or digit.")
    return {"ensemble": name, "preprocess": f"{name}_preprocess",
            "classifier": f"{name}_classifier", "postprocess": f"{name}_postprocess"}


def default_name(bundle: Bundle) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", bundle.root.resolve().name).strip("_-")[:48] or "classifier"


def _check(opts: RepoOptions) -> None:
    if opts.platform not in PLATFORMS:
        raise RtkError(f"Unknown platform {opts.platform!r}.", f"Use one of: {', '.join(PLATFORMS)}.")
    if opts.kind not in ("cpu", "gpu"):
        raise RtkError(f"Unknown instance kind {opts.kind!r}.", "Use cpu or gpu.")
    if opts.platform == "tensorrt" and opts.kind != "gpu":
        raise RtkError("TensorRT plans run only on GPU instances.", "Add --kind gpu.")
    for flag, value in (("--instances", opts.instances),
                        ("--preprocess-instances", opts.preprocess_instances)):
        if value is not None and value < 1:
            raise RtkError(f"{flag} must be at least 1, got {value}.", f"Use {flag} 1.")
    if (opts.max_queue_size or 0) < 0 or opts.queue_timeout_ms < 0:
        raise RtkError("--max-queue-size and --queue-timeout-ms cannot be negative.",
                       "Use 0 for no limit, or leave them out for the defaults.")


def _classifier_io(bundle: Bundle, artifact: str) -> tuple[Artifact, Tensor, Tensor, int]:
    """The artifact's entry, input/output tensors and batch limit, all from the manifest."""
    entry = bundle.entry(artifact)
    parent = bundle.manifest.artifact(entry.parent) or Artifact(sha256="")
    spec = entry.io or parent.io
    if not spec or not spec.inputs:
        raise RtkError(f"The manifest records no inputs/outputs for {artifact}.",
                       f"Re-export: rtk export {bundle.root}")
    (inp,), (out,) = spec.inputs, spec.outputs
    if inp.shape[0] != -1 or out.shape[0] != -1:
        raise RtkError(f"{artifact} has a fixed batch dimension.", f"Re-export: rtk export {bundle.root}")
    limit = (entry.profile.max if entry.profile else None) if artifact.endswith(".plan") else \
        entry.max_batch or parent.max_batch
    if not limit:
        raise RtkError(f"The manifest records no batch range for {artifact}.",
                       f"Re-export: rtk export {bundle.root}")
    return (entry, Tensor(inp.name, inp.dtype, list(inp.shape[1:])),
            Tensor(out.name, out.dtype, list(out.shape[1:])), int(limit))


def _check_plan(entry: Artifact, opts: RepoOptions) -> None:
    from .targets import local_target, plan_mismatch

    here = {} if opts.target_tensorrt and opts.target_cc else local_target()
    trt = opts.target_tensorrt or here.get("tensorrt_version")
    cc = opts.target_cc or here.get("compute_capability")
    reason = plan_mismatch(entry, trt, cc)
    if reason:
        raise RtkError(f"model.fp16.plan does not fit the target: {reason}.",
                       "Rebuild the plan on the serving GPU with the Triton image's TensorRT "
                       "(rtk export RUN_DIR --fp16 --format tensorrt), pass --target-tensorrt/"
                       "--target-cc for that host, or use --platform onnxruntime.")


def choose_artifact(bundle: Bundle, opts: RepoOptions) -> tuple[str, str | None]:
    """The classifier's artifact: --artifact, else INT8 on CPU where it was gated on the target
    CPU kind and pays there, else FP32; with the reason INT8 was passed over (None if not)."""
    if opts.platform == "tensorrt":
        if opts.artifact not in (None, "fp16"):
            raise RtkError(f"TensorRT serves the FP16 plan, not --artifact {opts.artifact}.",
                           "Drop --artifact, or use --platform onnxruntime.")
        return PLAN, None
    if opts.artifact is not None:
        if opts.artifact not in ONNX_ARTIFACTS:
            raise RtkError(f"Unknown --artifact {opts.artifact!r}.",
                           f"Use one of: {', '.join(ONNX_ARTIFACTS)}.")
        if opts.artifact == "int8" and opts.kind == "cpu" and \
                bundle.manifest.trusted(ONNX_ARTIFACTS["int8"]):  # else refused as untrusted
            reason = int8_refusal(bundle, opts, pays=False)
            if reason:
                raise RtkError(f"model.int8.onnx cannot be served here: {reason}.",
                               "Drop --artifact to serve FP32, or gate INT8 on that CPU kind: "
                               f"rtk export {bundle.root} --int8 on such a host.")
        return ONNX_ARTIFACTS[opts.artifact], None  # refused below if it is not trusted
    if opts.kind != "cpu" or bundle.manifest.artifact(ONNX_ARTIFACTS["int8"]) is None:
        return ONNX_ARTIFACTS["onnx"], None
    reason = int8_refusal(bundle, opts)
    return (ONNX_ARTIFACTS["onnx"], reason) if reason else (ONNX_ARTIFACTS["int8"], None)


def target_cpu(opts: RepoOptions) -> str:
    from ..core.host import INT8_CLASSES, int8_class

    target = opts.target_cpu or int8_class()
    if target not in INT8_CLASSES:
        raise RtkError(f"Unknown --target-cpu {target!r}.", f"Use one of: {', '.join(INT8_CLASSES)}.")
    return target


def int8_refusal(bundle: Bundle, opts: RepoOptions, *, pays: bool = True) -> str | None:
    """Why the INT8 graph is not served to the target CPU kind (None: it is)."""
    from ..core.int8_trust import serve_reason

    entry = bundle.manifest.artifact(ONNX_ARTIFACTS["int8"])
    reason = serve_reason(entry, target_cpu(opts))
    if reason and (pays or "speed" not in reason):
        return reason
    if not entry.fingerprint or not bundle.path(entry.fingerprint).is_file():
        return "its fingerprint is missing, so no server could check it; re-export it"
    if entry is not None and entry.session_config and opts.platform == "onnxruntime":
        return (f"it needs the ONNX Runtime session option(s) {', '.join(entry.session_config)}, "
                "which Triton's onnxruntime backend cannot set (use --platform python)")
    return None


def cpu_layout(opts: RepoOptions) -> tuple[int, int | None]:
    """(instances, ONNX Runtime threads per instance) for the classifier.

    On CPU, one instance per 4 cores, each with its share of the cores as intra-op threads:
    instances overlap Python and queueing with compute, and threads beyond a share would only
    fight each other. On GPU, one instance and the runtime's own threading.
    """
    from ..core.host import usable_cores

    if opts.kind != "cpu":
        return opts.instances or 1, None
    cores = usable_cores()
    instances = opts.instances or max(1, cores // 4)
    return instances, max(1, cores // instances)


def preprocess_instances(opts: RepoOptions, classifier_instances: int) -> int:
    """Instances of the preprocessing model. On CPU one per core: each decodes on one core
    (PIL holds the GIL per stub process), and a camera JPEG's decode can cost more than the
    classifier's share of the batch, so one instance left the other cores idle. On GPU the
    classifier's count (nvJPEG decodes there)."""
    from ..core.host import usable_cores

    if opts.preprocess_instances is not None:
        return opts.preprocess_instances
    return usable_cores() if opts.kind == "cpu" else classifier_instances


def build_configs(bundle: Bundle, opts: RepoOptions) -> tuple[dict[str, Any], dict[str, Any]]:
    """Protobuf configs of the four models (role -> ModelConfig) and the facts they came from."""
    _check(opts)
    names = model_names(opts.name or default_name(bundle))
    artifact, int8_note = choose_artifact(bundle, opts)
    bundle.artifact(artifact)  # refuses a missing, changed, stale or untrusted artifact
    entry, inp, out, limit = _classifier_io(bundle, artifact)
    instances, threads = cpu_layout(opts)
    if opts.platform == "tensorrt":
        _check_plan(entry, opts)
    max_batch = opts.max_batch or limit
    if not 1 <= max_batch <= limit:
        raise RtkError(f"--max-batch {max_batch} is outside {artifact}'s batch range 1..{limit}.",
                       f"Use --max-batch {limit} or less, or re-export with a larger --max-batch.")
    params = {"rtk.run": bundle.root.resolve().name,
              "rtk.artifact": artifact, "rtk.artifact_sha256": entry.sha256}

    pre_instances = preprocess_instances(opts, instances)

    def serving(role: str, count: int = instances, **extra: str) -> Serving:
        return Serving(max_batch, opts.kind, count, opts.queue_delay_us,
                       {**params, "rtk.role": role, **extra},
                       max_queue_size=queue_size(opts, max_batch, count),
                       queue_timeout_us=opts.queue_timeout_ms * 1000)

    extra = {"onnx_file": "model.onnx"} if opts.platform == "python" else {}
    if artifact == ONNX_ARTIFACTS["int8"]:  # the CPU kind it may run on (rtk deploy keeps to it)
        extra["rtk.target_cpu"] = target_cpu(opts)
    if entry.session_config and opts.platform == "python":  # what the gate ran it with
        extra["session_config"] = json.dumps(entry.session_config, sort_keys=True)
    if artifact == ONNX_ARTIFACTS["int8"] and opts.platform == "python":
        # the classifier replays the fingerprint before it serves (core/fingerprint.py)
        extra.update(session_config=json.dumps(entry.session_config or {}, sort_keys=True),
                     fingerprint_file="fingerprint.json", fingerprint_class=target_cpu(opts))
    if threads:  # read by rtk's Python-backend classifier and by Triton's onnxruntime backend
        extra.update(intra_op_threads=str(threads), intra_op_thread_count=str(threads),
                     inter_op_thread_count="1")
        # rtk's classifier: idle ONNX Runtime threads sleep by default, so the decoding instances
        # on the same cores get them: 12 MP JPEGs served at c8 31.5 against 27.6 images/s with
        # spinning, 320x240 99.5 against 102.2. The price is latency where the model is tiny:
        # the digits run's classifier at c1 3.4 against 2.5 ms p50 (README, "Real photos").
        extra.update(intra_op_allow_spinning="1" if opts.ort_spin else "0")
    made = {
        "classifier": configs.classifier(names["classifier"], opts.platform, inp, out=out,
                                         serving=serving("classifier", **extra), trt_fp16=opts.trt_fp16,
                                         graph_level=(entry.session_config or {}).get(LEVEL_KEY)),
        "preprocess": configs.preprocess(names["preprocess"], inp, serving("preprocess", pre_instances),
                                         preprocessing=bundle.preprocessing),
        "postprocess": configs.postprocess(names["postprocess"], out, serving("postprocess")),
        "ensemble": configs.ensemble(names["ensemble"], names, inp, out=out, serving=serving("ensemble")),
    }
    return made, {"artifact": artifact, "max_batch": max_batch, "names": names,
                  "instances": instances, "threads_per_instance": threads,
                  "preprocess_instances": pre_instances,
                  "max_queue_size": queue_size(opts, max_batch, instances),
                  "queue_timeout_ms": opts.queue_timeout_ms,
                  "target_cpu": target_cpu(opts) if opts.kind == "cpu" else None,
                  "int8_note": int8_note}


def write_repository(bundle: Bundle, opts: RepoOptions, echo: Callable = print) -> dict[str, Any]:
    """Generate the repository in a temp folder beside it, verify it, then swap it in."""
    made, facts = build_configs(bundle, opts)
    repo = Path(opts.repo)
    if repo.exists() and not repo.is_dir():
        raise RtkError(f"{repo} exists and is not a folder.", "Pass another --repo.")
    # only rtk's model folders are replaced: other models in the repository stay
    with swapped_dir(repo, [c.name for c in made.values()]) as tmp:
        for role, config in made.items():
            _write_model(tmp / config.name, role, config, bundle=bundle, artifact=facts["artifact"])
        verify_repository(tmp)
    echo(f"Wrote {len(made)} models to {repo}: " + ", ".join(c.name for c in made.values()))
    if facts["int8_note"]:
        echo(f"Serving FP32, not INT8: {facts['int8_note']}.")
    if (opts.max_queue_size or opts.queue_timeout_ms) and min(
            facts["instances"], facts["preprocess_instances"]) < 2:
        echo(f"Warning: {QUEUE_STALL_HINT}.")
    return {"repo": str(repo), "platform": opts.platform, "kind": opts.kind, **facts}


def _write_model(folder: Path, role: str, config, *, bundle: Bundle, artifact: str) -> None:
    version = folder / "1"
    version.mkdir(parents=True)
    (folder / "config.pbtxt").write_text(configs.to_text(config))
    if any(o.label_filename for o in config.output):
        (folder / configs.LABELS).write_text("\n".join(bundle.classes) + "\n")
    if role == "classifier":
        target = "model.plan" if artifact.endswith(".plan") else "model.onnx"  # any precision
        shutil.copyfile(bundle.path(artifact), version / target)
        if config.backend == "python":
            shutil.copyfile(HERE / "models" / "classifier.py", version / "model.py")
        if artifact == ONNX_ARTIFACTS["int8"]:  # replayed by the classifier or by `rtk serve`
            shutil.copyfile(bundle.path(bundle.entry(artifact).fingerprint or "-"),
                            version / "fingerprint.json")
            shutil.copyfile(HERE.parent / "core" / "fingerprint.py", version / "fingerprint.py")
    elif role == "preprocess":
        shutil.copyfile(HERE / "models" / "preprocess.py", version / "model.py")
        shutil.copyfile(HERE.parent / "data" / "images.py", version / "imageio.py")
        if config.instance_group[0].kind == configs.pb().ModelInstanceGroup.KIND_GPU:
            shutil.copyfile(HERE / "models" / "gpu_decode.py", version / "gpu_decode.py")
        (folder / "warmup").mkdir()
        (folder / "warmup" / configs.WARMUP_FILE).write_bytes(
            _warmup_bytes(bundle.preprocessing.crop))
    elif role == "postprocess":
        shutil.copyfile(HERE / "models" / "postprocess.py", version / "model.py")
    else:
        (version / ".gitkeep").write_text("")  # Triton needs the version folder, git a file


def _warmup_bytes(crop: int) -> bytes:
    """One PNG, serialized as Triton's BYTES warm-up data (uint32 length + bytes)."""
    import numpy as np
    from PIL import Image

    side = crop + crop // 8
    ramp = np.linspace(0, 255, side, dtype=np.uint8)
    arr = np.stack([np.tile(ramp, (side, 1)), np.tile(ramp[:, None], (1, side)),
                    np.full((side, side), 128, np.uint8)], axis=-1)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="PNG")
    return struct.pack("<I", len(buf.getvalue())) + buf.getvalue()


def verify_repository(repo: str | Path) -> list[str]:
    """Parse every config.pbtxt back with Triton's schema; names must match their folders."""
    found = []
    for path in sorted(Path(repo).glob("*/config.pbtxt")):
        config = configs.parse(path.read_text())
        if config.name != path.parent.name:
            raise RtkError(f"{path} names model {config.name!r}, not {path.parent.name!r}.",
                           "Regenerate the repository with `rtk triton`.")
        found.append(config.name)
    if not found:
        raise RtkError(f"{repo} holds no model (no */config.pbtxt).",
                       "Generate one with: rtk triton RUN_DIR --repo REPO")
    return found

