"""The served input contract: batches of uint8 RGB images, normalisation inside every artifact.

A 224 px image is 150 KB as uint8 and 602 KB as normalised float32: the contract moves a
quarter of the bytes over PCIe and the network. Layout is NHWC because that is how images
decode (PIL, nvJPEG after one permute) and because an NHWC uint8 tensor permuted to NCHW is
already channels_last in memory: PyTorch's fast layout costs no copy. Every artifact
(ONNX FP32/FP16/INT8, TensorRT plan, Triton classifier) starts with the same few ops:
cast, transpose to NCHW, then one per-channel affine x/(255*std) - mean/std. The cast comes
first because TensorRT's ONNX parser takes UINT8 only as a network input read by a Cast
(TensorRT API docs, DataType.UINT8); tests/test_contract.py checks the exported graphs.
"""

from __future__ import annotations

from .manifest import Preprocess, TensorSpec

LAYOUT = "NHWC"
DTYPE = "uint8"


def input_spec(crop: int, name: str = "input") -> TensorSpec:
    """The manifest's `input` entry for images of side `crop`."""
    return TensorSpec(name=name, dtype=DTYPE, layout=LAYOUT, shape=(-1, crop, crop, 3))


def scale_shift(pre: Preprocess) -> tuple[list[float], list[float]]:
    """Per-channel (scale, shift) such that uint8 * scale + shift == (x/255 - mean)/std."""
    scale = [1.0 / (255.0 * s) for s in pre.std]
    shift = [-m / s for m, s in zip(pre.mean, pre.std)]
    return scale, shift


def with_preprocessing(model, pre: Preprocess, dtype=None):
    """`model` behind the contract's first ops: uint8 NHWC in, logits out (a torch Module)."""
    import torch

    class Preprocessed(torch.nn.Module):
        """uint8 NHWC -> `dtype` -> NCHW (channels_last in memory) -> normalised -> the model."""

        def __init__(self, net, pre):
            super().__init__()
            self.net = net
            scale, shift = scale_shift(pre)
            # Non-persistent: model.pt stays the plain torchvision state_dict.
            for name, value in (("scale", scale), ("shift", shift), ("zero", [0.0] * 3),
                                ("one", [1.0] * 3)):
                self.register_buffer(name, torch.tensor(value), persistent=False)

        def forward(self, images):
            # Cast before the permute: in ONNX no op but Cast reads the UINT8 input (TensorRT).
            x = images.to(self.scale.dtype).permute(0, 3, 1, 2)
            # x * scale + shift as one per-channel affine op: an inference BatchNormalization
            # in ONNX, one pass over the pixels where Mul then Add took two (half the time in
            # ONNX Runtime on this CPU, measured at batch 16, 224 px).
            return self.net(torch.nn.functional.batch_norm(x, self.zero, self.one, self.scale,
                                                           self.shift, False, 0.0, 0.0))

    wrapped = Preprocessed(model, pre).eval()
    return wrapped.to(dtype) if dtype is not None else wrapped


def check_batch(x, crop: int) -> None:
    """Refuse a batch that breaks the contract, with the shape it should have had."""
    from .errors import RtkError

    shape, dtype = tuple(getattr(x, "shape", ())), str(getattr(x, "dtype", type(x).__name__))
    if len(shape) != 4 or shape[1:] != (crop, crop, 3) or not dtype.endswith("uint8"):
        raise RtkError(f"Expected a uint8 batch of shape (N, {crop}, {crop}, 3), got {dtype} "
                       f"{shape}.", "Pass images through toolkit.data.images.eval_uint8 (resize, "
                       "center-crop, RGB, no normalisation: the model normalises).")
