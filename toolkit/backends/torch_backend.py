"""PyTorch backends: eager FP32 (the reference), autocast, torch.compile, and a half-precision model.

Every one takes the contract's uint8 NHWC batch (toolkit/core/contract.py): the normalisation runs
inside the module, on the device, so only uint8 bytes cross to it.
"""

from __future__ import annotations

import numpy as np

from .base import Backend


class TorchEager(Backend):
    """The reference: the bundle's model.pt in eager FP32."""

    name = "torch"
    devices = ("cpu", "cuda")
    amp = False
    compiled = False

    @classmethod
    def availability(cls, bundle, device):
        import torch

        if device == "cuda" and not torch.cuda.is_available():
            return "no CUDA GPU visible: run on a GPU host or use --device cpu"
        if not (bundle.root / "model.pt").is_file():
            return f"no model.pt in {bundle.root}: run rtk finetune"
        return super().availability(bundle, device)

    def __init__(self, bundle, device="cpu", **options):
        super().__init__(bundle, device)
        import torch

        from ..core.contract import with_preprocessing
        from ..core.host import pick_amp_dtype
        from ..train.model import load_bundle_model

        self.torch = torch
        net = load_bundle_model(bundle).to(memory_format=torch.channels_last)
        self.model = with_preprocessing(net, bundle.preprocessing).to(device)
        self.dtype = pick_amp_dtype(device, True) if self.amp else None
        if self.amp and self.dtype is None and device == "cpu":
            self.dtype = torch.bfloat16  # emulated where not native: still correct, slower
        if self.compiled:
            # On CUDA, "reduce-overhead" replays CUDA graphs: launch overhead dominates small
            # batches there. Unverified here (no GPU); on CPU the default mode is used.
            mode = "reduce-overhead" if device == "cuda" else "default"
            self.model = torch.compile(self.model, mode=mode)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        torch = self.torch
        t = torch.from_numpy(self.images(x)).to(self.device)
        with torch.inference_mode(), torch.autocast(self.device, dtype=self.dtype,
                                                    enabled=self.dtype is not None):
            return self.model(t).float().cpu().numpy()


class TorchAmp(TorchEager):
    """Autocast: bf16 on CPUs with native bf16 and on recent GPUs, fp16 on older GPUs."""

    name = "torch-amp"
    amp = True


class TorchCompile(TorchEager):
    """torch.compile (inductor) in FP32; CUDA graphs on CUDA."""

    name = "torch-compile"
    compiled = True


class TorchHalf(Backend):
    """A half-precision channels_last model: FP16 with CUDA graphs on CUDA, bf16 on CPU.

    On CUDA (UNVERIFIED here: no GPU) each batch size is captured once as a CUDA graph whose
    static input is a uint8 device buffer; a call copies the batch into a pinned host buffer,
    sends it on a side stream without blocking, replays the graph and copies back only the
    logits. On CPU the same half model runs eagerly (bf16 kernels where the CPU has them).
    """

    name = "torch-half"
    devices = ("cpu", "cuda")
    max_graphs = 8  # distinct batch sizes kept captured; each holds its own activations

    availability = TorchEager.availability

    def __init__(self, bundle, device="cpu", **options):
        super().__init__(bundle, device)
        import torch

        from ..core.contract import with_preprocessing
        from ..train.model import load_bundle_model

        self.torch = torch
        self.half = torch.float16 if device == "cuda" else torch.bfloat16
        net = load_bundle_model(bundle).to(memory_format=torch.channels_last)
        self.model = with_preprocessing(net, bundle.preprocessing, self.half).to(device)
        self.graphs: dict[int, tuple] = {}
        if device == "cuda":
            torch.backends.cudnn.benchmark = True
            self.copy_stream = torch.cuda.Stream()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        torch = self.torch
        x = self.images(x)
        if self.device != "cuda":
            with torch.inference_mode():
                return self.model(torch.from_numpy(x)).float().numpy()
        graph, host_in, dev_in, dev_out, host_out = self._graph(len(x))
        host_in.numpy()[...] = x  # one host copy into pinned memory; the DMA reads from there
        main = torch.cuda.current_stream()
        with torch.cuda.stream(self.copy_stream):
            self.copy_stream.wait_stream(main)  # the previous replay has finished reading
            dev_in.copy_(host_in, non_blocking=True)
        main.wait_stream(self.copy_stream)
        graph.replay()
        host_out.copy_(dev_out, non_blocking=True)
        main.synchronize()
        return host_out.numpy().astype(np.float32)

    def _graph(self, n: int) -> tuple:
        """The captured graph for batch size `n` with its static buffers (captured once)."""
        torch = self.torch
        if n in self.graphs:
            return self.graphs[n]
        if len(self.graphs) >= self.max_graphs:
            self.graphs.pop(next(iter(self.graphs)))
        crop = self.bundle.preprocessing.crop
        dev_in = torch.zeros((n, crop, crop, 3), dtype=torch.uint8, device="cuda")
        warm = torch.cuda.Stream()
        warm.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(warm):
            for _ in range(3):  # cuDNN picks its algorithms before capture, not during it
                self.model(dev_in)
        torch.cuda.current_stream().wait_stream(warm)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            dev_out = self.model(dev_in)
        host_in = torch.empty(dev_in.shape, dtype=torch.uint8, pin_memory=True)
        host_out = torch.empty(dev_out.shape, dtype=dev_out.dtype, pin_memory=True)
        self.graphs[n] = (graph, host_in, dev_in, dev_out, host_out)
        return self.graphs[n]

    def close(self) -> None:
        self.graphs.clear()
