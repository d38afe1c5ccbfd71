"""The GPU input path: DataLoader workers read file bytes; batches are decoded with nvJPEG
(torchvision.io.decode_jpeg on a list, one call per batch) and transformed on the device.

A file nvJPEG should not decode travels already decoded by PIL in its worker, exactly as on
the CPU path (toolkit.data.images.open_rgb: any format, grayscale, CMYK, EXIF orientation): PNG
and other formats, 1- or 4-channel, 12-bit, lossless or arithmetic-coded JPEGs, JPEGs stored
as RGB, and JPEGs whose EXIF or XMP carries an orientation. Routing the rotated ones to PIL
is a header scan of a few hundred bytes, and keeps their pixels identical to the CPU path's
(nvJPEG ignores EXIF). A JPEG that nvJPEG still refuses is decoded by PIL on the spot.

The CUDA side (nvJPEG, the side stream) is unverified by the test suite, which has no GPU;
the same code runs on CPU tensors in tests/test_gpu_input.py.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator, Sequence

from .images import gpu_decodable, open_rgb

__all__ = ["ByteDataset", "DeviceLoader", "collate", "decode", "gpu_decodable"]


def _decoded(data: bytes):
    """PIL's RGB decode (toolkit.data.images.open_rgb) as a CHW uint8 tensor."""
    import numpy as np
    import torch

    return torch.from_numpy(np.ascontiguousarray(np.asarray(open_rgb(data)).transpose(2, 0, 1)))


class ByteDataset:
    """(path, label) pairs read as bytes: a 1-D uint8 tensor for nvJPEG, or the image
    already decoded by PIL (a CHW uint8 tensor) for anything else; a torch dataset."""

    def __init__(self, samples: Sequence[tuple[Path, int]]):
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        import torch

        path, label = self.samples[i]
        data = Path(path).read_bytes()
        if gpu_decodable(data):
            return torch.frombuffer(bytearray(data), dtype=torch.uint8), label
        return _decoded(data), label


def collate(items):
    """A batch as (list of payload tensors, label tensor): sizes differ until decoded."""
    import torch

    return [payload for payload, _ in items], torch.tensor([label for _, label in items])


def drain_before_nvjpeg(device) -> None:
    """Wait on the host for the current stream before nvJPEG writes on `device`.

    decode_jpeg(device="cuda") allocates its outputs on the current stream but writes them on a
    private one that does not wait for it, so blocks freed by queued kernels can be rewritten
    before those kernels read them (pytorch/vision PR #9606: 199 of 200 iterations corrupted on
    an H100; draining the caller's stream first made it 0). UNVERIFIED on a GPU here."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.current_stream(torch.device(device)).synchronize()


def decode(payloads: list, device: str) -> tuple[list, int]:
    """CHW uint8 RGB images on `device`, and how many PIL decoded (in workers or here)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    images = [p.to(device, non_blocking=True) if p.dim() == 3 else None for p in payloads]
    todo = [i for i, p in enumerate(payloads) if p.dim() == 1]
    by_pil = len(payloads) - len(todo)
    if todo:
        drain_before_nvjpeg(device)
        try:
            decoded = decode_jpeg([payloads[i] for i in todo], mode=ImageReadMode.RGB,
                                  device=device)
        except RuntimeError:  # one refused file fails the whole call: retry one by one
            decoded = []
            for i in todo:
                try:
                    decoded.append(decode_jpeg(payloads[i], mode=ImageReadMode.RGB,
                                               device=device))
                except RuntimeError:
                    decoded.append(_decoded(payloads[i].numpy().tobytes()).to(device))
                    by_pil += 1
        for i, img in zip(todo, decoded):
            images[i] = img
    return images, by_pil


class DeviceLoader:
    """A byte-reading DataLoader whose batches are decoded and transformed on `device`.

    `transform(images, generator)` gets a CPU generator seeded by (epoch seed, batch, rank),
    so a batch's augmentation does not depend on the batches skipped by a resume."""

    def __init__(self, loader, transform: Callable, device: str, *, rank: int = 0):
        self.loader, self.transform, self.device, self.rank = loader, transform, device, rank
        self.epoch_seed, self.decoded_by_pil = 0, 0
        self._stream = None

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def generator(self):
        return self.loader.generator

    def set_epoch(self, seed: int) -> None:
        self.epoch_seed = seed

    def batches(self, skip: int = 0) -> Iterator:
        """(x, y) on the device from batch `skip` on; skipped batches are read, not decoded."""
        self.decoded_by_pil = 0
        for step, (payloads, labels) in enumerate(self.loader):
            if step >= skip:
                yield self._prepare(payloads, labels, step)

    def _prepare(self, payloads, labels, step: int):
        import torch

        seed = (self.epoch_seed * 1_000_003 + step) * 1_009 + self.rank
        generator = torch.Generator().manual_seed(seed)
        cuda = torch.device(self.device).type == "cuda"
        if cuda and self._stream is None:
            self._stream = torch.cuda.Stream()
        # on a side stream, this batch's decode and augmentation overlap the previous step
        with torch.cuda.stream(self._stream) if cuda else contextlib.nullcontext():
            images, by_pil = decode(payloads, self.device)
            x = self.transform(images, generator)
            y = labels.to(self.device, non_blocking=True)
        self.decoded_by_pil += by_pil
        if cuda:
            current = torch.cuda.current_stream()
            current.wait_stream(self._stream)
            x.record_stream(current)  # freed memory is not reused before the step has run
            y.record_stream(current)
        return x, y
