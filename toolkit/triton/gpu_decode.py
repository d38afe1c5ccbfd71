"""nvJPEG decoding for the Triton preprocessing model on a KIND_GPU instance (copied beside it).

UNVERIFIED here (no GPU): written against torchvision.io.decode_jpeg(list, device="cuda")
and torchvision.transforms.v2.functional. JPEGs without EXIF data decode on the GPU in one
batched call; anything else (PNG, EXIF-rotated JPEGs, which nvJPEG would not rotate, and
files nvJPEG refuses) takes the CPU transform, so every image gets the same orientation and
mode handling as on a CPU instance. The bilinear antialiased resize of torchvision differs
from PIL's by at most a few intensity levels on some pixels.
"""

import torch
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as F
from torch.utils.dlpack import to_dlpack

JPEG_MAGIC = b"\xff\xd8\xff"


def _plain_jpeg(data: bytes) -> bool:
    """A JPEG whose header carries no EXIF block (so no orientation to apply)."""
    return data[:3] == JPEG_MAGIC and b"Exif\x00\x00" not in data[:65536]


class GpuDecoder:
    """Bytes of one request to a uint8 NHWC CUDA batch, handed on as DLPack."""

    def __init__(self, device_id: int, pre: dict, io):
        self.device = torch.device("cuda", device_id)
        self.pre, self.io = pre, io

    def _crop(self, chw):
        resized = F.resize(chw, [self.pre["resize"]], antialias=True)
        return F.center_crop(resized, [self.pre["crop"]]).permute(1, 2, 0)

    def batch(self, datas, cpu_one):
        """DLPack capsule of the (N, crop, crop, 3) uint8 batch on this instance's GPU."""
        out = [None] * len(datas)
        gpu = [i for i, d in enumerate(datas) if _plain_jpeg(d)]
        if gpu:
            encoded = [torch.frombuffer(bytearray(datas[i]), dtype=torch.uint8) for i in gpu]
            try:
                decoded = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=self.device)
            except RuntimeError:  # one odd JPEG fails the batched call: decode these on the CPU
                decoded, gpu = [], []
            for i, chw in zip(gpu, decoded):
                out[i] = self._crop(chw)
        for i, item in enumerate(out):
            if item is None:
                out[i] = torch.from_numpy(cpu_one(datas[i])).to(self.device, non_blocking=True)
        return to_dlpack(torch.stack(out).contiguous())
