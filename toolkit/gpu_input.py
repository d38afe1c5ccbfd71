"""The GPU input path: DataLoader workers read file bytes; batches are decoded with nvJPEG
(torchvision.io.decode_jpeg on a list, one call per batch) and transformed on the device.

A file nvJPEG should not decode travels already decoded by PIL in its worker, exactly as on
the CPU path (toolkit.imageio.open_rgb: any format, grayscale, CMYK, EXIF orientation): PNG
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

from .imageio import MAX_PIXELS, open_rgb

_SOF_PLAIN = {0xC0, 0xC1, 0xC2}  # baseline, extended and progressive Huffman JPEG
_XMP = b"http://ns.adobe.com/xap/1.0/"


def _orientation(exif: bytes) -> int:
    """The EXIF IFD0 orientation (1 when absent, 0 when the block cannot be read)."""
    tiff = exif[6:]
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return 0
    ifd = int.from_bytes(tiff[4:8], order)
    count = int.from_bytes(tiff[ifd:ifd + 2], order)
    if ifd + 2 + 12 * count > len(tiff):
        return 0
    for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
        if int.from_bytes(tiff[entry:entry + 2], order) == 0x0112:
            return int.from_bytes(tiff[entry + 8:entry + 10], order)
    return 1


def _segment_ok(marker: int, seg: bytes) -> bool:
    """False for a header segment that makes the JPEG one for PIL."""
    if marker == 0xE1 and seg.startswith(b"Exif\x00\x00"):
        return _orientation(seg) == 1
    if marker == 0xE1 and seg.startswith(_XMP):
        return b"Orientation" not in seg  # Pillow reads tiff:Orientation from XMP too
    if marker == 0xEE and seg.startswith(b"Adobe") and len(seg) > 11:
        return seg[11] != 0  # transform 0: RGB samples, not YCbCr
    if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start of frame
        if marker not in _SOF_PLAIN or len(seg) < 15 or seg[0] != 8 or seg[5] != 3:
            return False
        pixels = int.from_bytes(seg[1:3], "big") * int.from_bytes(seg[3:5], "big")
        return bytes(seg[6:15:3]) != b"RGB" and 0 < pixels <= MAX_PIXELS
    return True


def gpu_decodable(data: bytes) -> bool:
    """True for an 8-bit 3-component YCbCr JPEG with no orientation: what nvJPEG decodes as
    libjpeg does. Reads the header markers only, up to the first scan."""
    if data[:2] != b"\xff\xd8":
        return False
    i, frame = 2, False
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return False
        marker = data[i + 1]
        if marker == 0xFF or marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # no length
            i += 1 if marker == 0xFF else 2
            continue
        if marker in (0xDA, 0xD9):  # start of scan (the header is over) or end of image
            return frame and marker == 0xDA
        length = int.from_bytes(data[i + 2:i + 4], "big")
        seg = data[i + 4:i + 2 + length]
        if not _segment_ok(marker, seg):
            return False
        frame = frame or 0xC0 <= marker <= 0xC2
        i += 2 + length
    return False


def _decoded(data: bytes):
    """PIL's RGB decode (toolkit.imageio.open_rgb) as a CHW uint8 tensor."""
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


def decode(payloads: list, device: str) -> tuple[list, int]:
    """CHW uint8 RGB images on `device`, and how many PIL decoded (in workers or here)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    images = [p.to(device, non_blocking=True) if p.dim() == 3 else None for p in payloads]
    todo = [i for i, p in enumerate(payloads) if p.dim() == 1]
    by_pil = len(payloads) - len(todo)
    if todo:
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

    def __init__(self, loader, transform: Callable, device: str, rank: int = 0):
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
