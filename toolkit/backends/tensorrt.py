"""TensorRT engine backend (model.fp16.plan): uint8 NHWC images in, torch CUDA tensors as buffers.

UNVERIFIED here (no GPU, no TensorRT): written against the TensorRT 10/11 name-based
tensor API (set_input_shape, set_tensor_address, execute_async_v3).
"""

from __future__ import annotations

import numpy as np

from ..core.errors import require
from .base import Backend


class TensorRTEngine(Backend):
    name = "tensorrt"
    devices = ("cuda",)
    artifact = "model.fp16.plan"

    @classmethod
    def availability(cls, bundle, device):
        from ..core.host import tensorrt_ready

        reason = tensorrt_ready()
        if reason:
            return f"{reason}: TensorRT needs an NVIDIA GPU and pip install 'rtk[gpu]'"
        if bundle.manifest.artifact(cls.artifact) is None:
            return f"no {cls.artifact}: rtk export {bundle.root} --fp16 on a GPU host"
        return super().availability(bundle, device)

    def __init__(self, bundle, device="cuda", trusted_only: bool = True, **options):
        super().__init__(bundle, device)
        import torch

        trt = require("tensorrt", "gpu")
        self.torch = torch
        blob = bundle.artifact(self.artifact, trusted=trusted_only).read_bytes()
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(blob)
        if self.engine is None:
            from ..core.errors import RtkError

            raise RtkError("TensorRT could not deserialize the engine.",
                           "Engines are tied to the TensorRT version and GPU that built them; "
                           f"re-export on this host: rtk export {bundle.root} --fp16")
        self.context = self.engine.create_execution_context()
        self.max_batch = bundle.entry(self.artifact).profile.max
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input = next(n for n in names
                          if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output = next(n for n in names
                           if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self.out_dtype = torch.from_numpy(
            np.zeros(0, trt.nptype(self.engine.get_tensor_dtype(self.output)))).dtype

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Logits, in chunks no larger than the engine profile's max batch."""
        step = self.max_batch
        return np.concatenate([self._run(x[i:i + step]) for i in range(0, len(x), step)])

    def _run(self, x: np.ndarray) -> np.ndarray:
        torch = self.torch
        host = torch.from_numpy(self.images(x)).pin_memory()
        inp = host.to("cuda", non_blocking=True)
        if not self.context.set_input_shape(self.input, tuple(inp.shape)):
            from ..core.errors import RtkError

            raise RtkError(f"The engine refused input shape {tuple(inp.shape)}.",
                           f"Its profile allows batches 1 to {self.max_batch}.")
        out = torch.empty(tuple(self.context.get_tensor_shape(self.output)), dtype=self.out_dtype,
                          device="cuda")
        self.context.set_tensor_address(self.input, inp.data_ptr())
        self.context.set_tensor_address(self.output, out.data_ptr())
        stream = torch.cuda.current_stream()
        enqueue(self.context, stream.cuda_stream, len(x))
        stream.synchronize()
        return out.float().cpu().numpy()

    def close(self) -> None:
        self.context = self.engine = None


def enqueue(context, stream_handle: int, batch: int) -> None:
    """Queue one inference; TensorRT reports a failed enqueue only by returning False, and
    the output buffer then holds whatever torch.empty left there."""
    if not context.execute_async_v3(stream_handle):
        from ..core.errors import RtkError

        raise RtkError(f"TensorRT failed to enqueue a batch of {batch} (execute_async_v3 "
                       "returned False; its log above says why).",
                       "Check that the GPU has free memory and that the engine was built on "
                       "this TensorRT and GPU; rebuild with rtk export --fp16 --format tensorrt.")
