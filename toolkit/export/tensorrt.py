"""TensorRT engine from a precision-baked ONNX graph (TensorRT 10/11, strongly typed).

UNVERIFIED here: this host has no GPU and no TensorRT. Written against the TensorRT 10/11
Python API documentation: FP16 comes from the graph itself (TensorRT 11 removed the FP16
and INT8 builder flags), the network is strongly typed, and the plan is written raw (no
header) so Triton's tensorrt_plan backend can deserialize it.
"""

from __future__ import annotations

from pathlib import Path

from ..core import host
from ..core.errors import RtkError, require
from ..core.files import atomic_path, write_bytes


def gpu_info() -> dict:
    """Name and compute capability of GPU 0 (the host probe, via torch)."""
    found = host.gpu()
    if found is None:
        raise RtkError("TensorRT engines need a CUDA GPU and none is visible.",
                       "Run `rtk export RUN_DIR --fp16 --format tensorrt` on a GPU host "
                       "with `pip install 'rtk[gpu]'`.")
    return {"gpu": found["gpu"], "compute_capability": found["compute_capability"]}


def build_engine(onnx_path: Path, plan_path: Path, input_name: str, *, hwc: tuple[int, int, int],
                 max_batch: int, opt_batch: int | None = None, cache_path: Path | None = None,
                 workspace_gib: float = 4.0) -> dict:
    """Build a strongly typed engine with one optimization profile (1 / opt / max_batch).

    The input is the contract's uint8 NHWC image batch (`hwc` without the batch); the graph's
    own Cast/Transpose/BatchNormalization normalise it on the GPU (the Cast first: TensorRT
    takes a UINT8 input only into a Cast, tests/test_contract.py), its FP16 layers come from the
    graph (strong typing), so no precision flag is set.
    """
    trt = require("tensorrt", "gpu")
    info = gpu_info()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise RtkError(f"TensorRT could not parse {onnx_path.name}: {errors}",
                       "Check the opset (--opset) against this TensorRT version.")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    opt = min(max_batch, opt_batch or max(1, max_batch // 2))
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, (1, *hwc), (opt, *hwc), (max_batch, *hwc))
    config.add_optimization_profile(profile)
    cache_blob = cache_path.read_bytes() if cache_path and cache_path.is_file() else b""
    config.set_timing_cache(config.create_timing_cache(cache_blob), False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:  # the reason was printed by the logger
        raise RtkError("TensorRT failed to build the engine (see the log above).",
                       "Try a smaller --max-batch or a larger workspace.")
    with atomic_path(plan_path) as tmp:
        tmp.write_bytes(bytes(plan))  # raw plan, no header: Triton reads it as is
    if cache_path:
        write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    return {"tensorrt_version": trt.__version__, **info, "strongly_typed": True,
            "profile": {"input": input_name, "min": 1, "opt": opt, "max": max_batch}}
