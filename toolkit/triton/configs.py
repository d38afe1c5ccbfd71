"""Triton model configs built with Triton's own protobuf schema (model_config_pb2), never by hand."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.errors import RtkError, require
from ..core.manifest import Preprocess

# NumPy dtype names (as recorded by `rtk export`) to Triton data types.
DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64",
          "int64": "TYPE_INT64", "int32": "TYPE_INT32", "int8": "TYPE_INT8",
          "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL", "object": "TYPE_STRING"}
IMAGE_INPUT = "image"  # encoded JPEG/PNG bytes, one element per batch item
PROBS_OUTPUT = "probabilities"
RAW_LOGITS = "raw_logits"  # postprocessing input; the ensemble's internal classifier output
LABELS = "labels.txt"
WARMUP_FILE = "sample_image.bin"


@dataclass
class Tensor:
    """One model input or output: name, NumPy dtype name and dims without the batch dimension."""

    name: str
    dtype: str
    dims: list[int]


@dataclass
class Serving:
    """How a model is scheduled: batch limit, dynamic batching, instances."""

    max_batch: int
    kind: str = "cpu"  # cpu | gpu
    instances: int = 1
    queue_delay_us: int = 100
    parameters: dict[str, str] = field(default_factory=dict)
    max_queue_size: int = 0  # requests waiting per model; 0 leaves Triton's unbounded queue
    queue_timeout_us: int = 0  # longest wait in the queue before REJECT; 0: no limit


def pb():
    """Triton's model_config_pb2, as shipped with tritonclient."""
    return require("tritonclient.grpc.model_config_pb2", "triton")


def _base(name: str, serving: Serving, inputs: list[Tensor], *, outputs: list[Tensor],
          labels_on: tuple[str, ...] = ()):
    mc = pb()
    config = mc.ModelConfig(name=name, max_batch_size=serving.max_batch)
    config.version_policy.latest.num_versions = 1
    for t in inputs:
        config.input.add(name=t.name, data_type=_dtype(t.dtype), dims=t.dims)
    for t in outputs:
        out = config.output.add(name=t.name, data_type=_dtype(t.dtype), dims=t.dims)
        if t.name in labels_on:
            out.label_filename = LABELS  # Triton's classification extension returns labels
    for key, value in sorted(serving.parameters.items()):
        config.parameters[key].string_value = str(value)
    return config


def _dtype(name: str) -> int:
    if name not in DTYPES:
        raise RtkError(f"Triton has no data type for {name!r}.", f"Supported: {', '.join(DTYPES)}.")
    return pb().DataType.Value(DTYPES[name])


def _schedule(config, serving: Serving, kind: str | None = None) -> None:
    """Dynamic batching (preferred sizes up to max_batch), instance group, nothing else."""
    mc = pb()
    if serving.max_batch > 1:
        sizes = sorted({max(1, serving.max_batch // 4), max(1, serving.max_batch // 2),
                        serving.max_batch})
        config.dynamic_batching.preferred_batch_size.extend(sizes)
        config.dynamic_batching.max_queue_delay_microseconds = serving.queue_delay_us
    if serving.max_batch >= 1 and (serving.max_queue_size or serving.queue_timeout_us):
        _queue_policy(config, serving)
    group_kind = {"cpu": mc.ModelInstanceGroup.KIND_CPU,
                  "gpu": mc.ModelInstanceGroup.KIND_GPU}[kind or serving.kind]
    config.instance_group.add(name=f"{config.name}_{kind or serving.kind}", kind=group_kind,
                              count=serving.instances)


def _queue_policy(config, serving: Serving) -> None:
    """Overload fails fast: a full queue or a request that waited too long gets an error now,
    which a client can retry elsewhere, instead of latency and memory that grow without bound."""
    policy = config.dynamic_batching.default_queue_policy
    policy.timeout_action = pb().ModelQueuePolicy.REJECT
    policy.max_queue_size = serving.max_queue_size
    policy.default_timeout_microseconds = serving.queue_timeout_us
    policy.allow_timeout_override = True  # a request may ask for a shorter wait, never longer


def _warmup_zero(config, t: Tensor) -> None:
    warm = config.model_warmup.add(name="zeros", batch_size=1)
    warm.inputs[t.name].data_type = _dtype(t.dtype)
    warm.inputs[t.name].dims.extend(t.dims)
    warm.inputs[t.name].zero_data = True


# Triton's onnxruntime backend: optimization.graph.level (its README: -1 basic, 1 basic and
# extended, 2 none; unset is ONNX Runtime's default, everything)
ORT_GRAPH_LEVELS = {"extended": 1, "basic": -1, "disabled": 2}


def classifier(name: str, platform: str, inp: Tensor, *, out: Tensor, serving: Serving,
               trt_fp16: bool = False, graph_level: str | None = None):
    """The classifier: onnxruntime_onnx, tensorrt_plan, or ONNX Runtime in the Python backend;
    `graph_level`: a lower ONNX Runtime optimization level the export found the graph needs."""
    config = _base(name, serving, [inp], outputs=[out], labels_on=(out.name,))
    if platform == "onnxruntime":
        config.platform, config.default_model_filename = "onnxruntime_onnx", "model.onnx"
        if graph_level in ORT_GRAPH_LEVELS:
            config.optimization.graph.level = ORT_GRAPH_LEVELS[graph_level]
        if trt_fp16 and serving.kind == "gpu":
            accel = config.optimization.execution_accelerators.gpu_execution_accelerator.add(
                name="tensorrt")
            accel.parameters["precision_mode"] = "FP16"
            accel.parameters["max_workspace_size_bytes"] = str(1 << 30)
    elif platform == "tensorrt":
        config.platform, config.default_model_filename = "tensorrt_plan", "model.plan"
    elif platform == "python":
        config.backend = "python"
    else:
        raise RtkError(f"Unknown platform {platform!r}.", "Use onnxruntime, tensorrt or python.")
    _schedule(config, serving)
    _warmup_zero(config, inp)
    return config


def preprocess(name: str, out: Tensor, serving: Serving, *, preprocessing: Preprocess):
    """Python backend: encoded images (BYTES) to the classifier's uint8 image batch."""
    import json

    config = _base(name, serving, [Tensor(IMAGE_INPUT, "object", [1])], outputs=[out])
    config.backend = "python"
    config.parameters["preprocessing"].string_value = json.dumps(preprocessing.to_json(), sort_keys=True)
    _schedule(config, serving)  # KIND_GPU: nvJPEG decoding, the batch stays on the GPU
    warm = config.model_warmup.add(name="sample_image", batch_size=1)
    warm.inputs[IMAGE_INPUT].data_type = _dtype("object")
    warm.inputs[IMAGE_INPUT].dims.append(1)
    warm.inputs[IMAGE_INPUT].input_data_file = WARMUP_FILE
    return config


def postprocess(name: str, logits: Tensor, serving: Serving):
    """Python backend: raw logits to logits and softmax probabilities (both labelled).

    The ensemble takes both outputs from this last step: Triton 2.51 fails a request for a
    subset of an ensemble's outputs when one of them also feeds a later step.
    """
    raw = Tensor(RAW_LOGITS, logits.dtype, logits.dims)
    probs = Tensor(PROBS_OUTPUT, "float32", logits.dims)
    config = _base(name, serving, [raw], outputs=[logits, probs], labels_on=(logits.name, PROBS_OUTPUT))
    config.backend = "python"
    _schedule(config, serving, kind="cpu")
    _warmup_zero(config, raw)
    return config


def ensemble(name: str, steps: dict[str, str], inp: Tensor, *, out: Tensor, serving: Serving):
    """JPEG/PNG bytes in; logits and probabilities (with labels) out."""
    image = Tensor(IMAGE_INPUT, "object", [1])
    probs = Tensor(PROBS_OUTPUT, "float32", out.dims)
    config = _base(name, serving, [image], outputs=[out, probs], labels_on=(out.name, PROBS_OUTPUT))
    config.platform = "ensemble"
    chain = [(steps["preprocess"], {IMAGE_INPUT: IMAGE_INPUT}, {inp.name: "preprocessed"}),
             (steps["classifier"], {inp.name: "preprocessed"}, {out.name: RAW_LOGITS}),
             (steps["postprocess"], {RAW_LOGITS: RAW_LOGITS},
              {out.name: out.name, PROBS_OUTPUT: PROBS_OUTPUT})]
    for model, input_map, output_map in chain:
        step = config.ensemble_scheduling.step.add(model_name=model, model_version=-1)
        step.input_map.update(input_map)
        step.output_map.update(output_map)
    return config


def to_text(config) -> str:
    """config.pbtxt text, checked to parse back into an identical message."""
    from google.protobuf import text_format

    text = text_format.MessageToString(config)
    if parse(text) != config:
        raise RtkError(f"The config of {config.name} does not round-trip through protobuf.",
                       "This is a bug in rtk; report it with `rtk --debug triton`.")
    return text


def parse(text: str):
    """Parse config.pbtxt text with Triton's schema (raises RtkError on invalid text)."""
    from google.protobuf import text_format

    try:
        return text_format.Parse(text, pb().ModelConfig())
    except text_format.ParseError as exc:
        raise RtkError(f"Invalid config.pbtxt: {exc}.", "Regenerate it with `rtk triton`.") from exc
