"""PyTorch backends: eager FP32, autocast (bf16/fp16) and torch.compile."""

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

        from ..loop import pick_amp_dtype
        from ..model import load_bundle_model

        self.torch = torch
        self.model = load_bundle_model(bundle).to(device, memory_format=torch.channels_last)
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
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(
            self.device, memory_format=torch.channels_last)
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
