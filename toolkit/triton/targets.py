"""Does a TensorRT plan fit the Triton host that will load it? (version and GPU must match)."""

from __future__ import annotations

from ..core.manifest import Artifact


def local_target() -> dict[str, str | None]:
    """TensorRT version and GPU compute capability of this machine (None where absent)."""
    from ..core import host

    gpu = host.gpu()
    version, capability = host.tensorrt_version(), gpu and gpu["compute_capability"]
    return {"tensorrt_version": version, "compute_capability": capability}


def _release(version: str) -> tuple[str, ...]:
    """major.minor.patch: TensorRT plans only load on the TensorRT release that built them."""
    return tuple(str(version).split(".")[:3])


def plan_mismatch(entry: Artifact, tensorrt_version: str | None,
                  compute_capability: str | None) -> str | None:
    """None when the plan fits the target, else the reason it does not."""
    built_trt, built_cc = entry.tensorrt_version, entry.compute_capability
    gpu = entry.gpu or "an unknown GPU"
    if not built_trt or not built_cc:
        return "the manifest does not record the TensorRT version and GPU the plan was built with"
    if not tensorrt_version:
        return "the target's TensorRT version is unknown (no tensorrt package here)"
    if _release(built_trt) != _release(tensorrt_version):
        return (f"the plan was built with TensorRT {built_trt} but the target has "
                f"TensorRT {tensorrt_version}")
    if not compute_capability:
        return "the target's GPU is unknown (no CUDA GPU visible here)"
    if str(built_cc) != str(compute_capability):
        return (f"the plan was built on {gpu} (compute capability {built_cc}) but the target "
                f"GPU has compute capability {compute_capability}")
    return None
