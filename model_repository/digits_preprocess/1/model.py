"""Triton Python-backend model: encoded images (BYTES) in, uint8 NHWC eval crops out.

Copied as model.py into the preprocessing model's version folder, next to a copy of
toolkit/data/images.py, so the served transform is the very code rtk uses everywhere else.
On a KIND_CPU instance it imports only NumPy, PIL (through imageio) and
triton_python_backend_utils. On a KIND_GPU instance it decodes JPEGs with nvJPEG through
torchvision and hands the CUDA tensor itself (it has __dlpack__) to from_dlpack, with no
host round trip (UNVERIFIED here: no GPU). The classifier normalises (toolkit/core/contract.py),
so this step emits uint8: a quarter of the bytes of normalised float32.
"""

import importlib.util
import json
import os

import numpy as np
try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # only Triton's Python backend runs this file; rtk merely copies it
    pb_utils = None

MAX_BYTES_DEFAULT = 32 * 1024 * 1024


def _load(folder, name):
    """A module copied beside this file, loaded by path (a pip `imageio` must not win)."""
    spec = importlib.util.spec_from_file_location(f"rtk_{name}", os.path.join(folder, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TritonPythonModel:
    """Decode, resize, center-crop and normalize each image of each request."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.pre = json.loads(params["preprocessing"])
        self.max_bytes = int(params.get("max_bytes", MAX_BYTES_DEFAULT))
        self.output = config["output"][0]["name"]
        self.input = config["input"][0]["name"]
        folder = os.path.join(args["model_repository"], args["model_version"])
        self.io = _load(folder, "imageio")
        self.gpu = None
        if args.get("model_instance_kind") == "GPU":
            decoder = _load(folder, "gpu_decode")  # imports torch: only on GPU instances
            self.gpu = decoder.GpuDecoder(int(args.get("model_instance_device_id", "0")), self.pre, self.io)

    def _bytes(self, data):
        data = bytes(data)
        if not data:
            raise ValueError("empty image bytes")
        if len(data) > self.max_bytes:
            raise ValueError(f"encoded image of {len(data)} bytes exceeds {self.max_bytes}")
        return data

    def _one(self, data):
        try:
            return self.io.load_eval(data, self.pre)
        except Exception as exc:  # PIL raises many types for undecodable data
            raise ValueError(f"cannot decode image: {exc}") from None

    def _tensor(self, items):
        datas = [self._bytes(item) for item in items.reshape(-1)]
        if self.gpu is not None:
            return pb_utils.Tensor.from_dlpack(self.output, self.gpu.batch(datas, self._one))
        return pb_utils.Tensor(self.output, np.stack([self._one(d) for d in datas]))

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                items = pb_utils.get_input_tensor_by_name(request, self.input).as_numpy()
                out = self._tensor(items)
                responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            except Exception as exc:  # one bad request must not fail the others in its batch
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(f"preprocess: {exc}")))
        return responses
