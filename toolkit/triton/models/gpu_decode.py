"""nvJPEG decoding for the Triton preprocessing model on a KIND_GPU instance (copied beside it).

UNVERIFIED here (no GPU): written against torchvision.io.decode_jpeg(list, device="cuda")
and torchvision.transforms.v2.functional. The JPEGs that training decodes with nvJPEG
(imageio.gpu_decodable, the one rule for both) decode on the GPU in one batched call; anything
else (PNG, grayscale, CMYK, 12-bit, arithmetic-coded, EXIF- or XMP-rotated JPEGs, and files
nvJPEG refuses) takes the CPU transform, as on a CPU instance. The bilinear antialiased resize
of torchvision differs from PIL's by at most a few intensity levels on some pixels.
"""

import torch
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as F


class GpuDecoder:
    """Bytes of one request to a uint8 NHWC CUDA batch (`io` is the imageio copied beside)."""

    def __init__(self, device_id: int, pre: dict, io):
        self.device = torch.device("cuda", device_id)
        self.pre, self.io = pre, io

    def _crop(self, chw):
        resized = F.resize(chw, [self.pre["resize"]], antialias=True)
        return F.center_crop(resized, [self.pre["crop"]]).permute(1, 2, 0)

    def batch(self, datas, cpu_one):
        """The (N, crop, crop, 3) uint8 batch on this instance's GPU, as a torch tensor.

        A tensor, not a DLPack capsule: pb_utils.Tensor.from_dlpack orders Triton's stream
        after the producer's only for objects with __dlpack__ (python_backend pb_tensor.cc)."""
        out = [None] * len(datas)
        gpu = [i for i, d in enumerate(datas) if self.io.gpu_decodable(d)]
        if gpu:
            encoded = [torch.frombuffer(bytearray(datas[i]), dtype=torch.uint8) for i in gpu]
            # nvJPEG writes on a private stream that does not wait for ours (pytorch/vision
            # PR #9606): drain ours first, as toolkit/data/gpu_input.py does. UNVERIFIED here.
            torch.cuda.current_stream(self.device).synchronize()
            try:
                decoded = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=self.device)
            except RuntimeError:  # one odd JPEG fails the batched call: decode these on the CPU
                decoded, gpu = [], []
            for i, chw in zip(gpu, decoded):
                out[i] = self._crop(chw)
        for i, item in enumerate(out):
            if item is None:
                out[i] = torch.from_numpy(cpu_one(datas[i])).to(self.device, non_blocking=True)
        return torch.stack(out).contiguous()
