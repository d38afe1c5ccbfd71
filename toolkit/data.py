"""Datasets, the seeded stratified split, and data loaders sized to the machine."""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path
from typing import Callable, Sequence

from .errors import RtkError
from .imageio import open_rgb
from .machine import usable_cores
from .scan import Scan


class ImageDataset:
    """(path, label) pairs decoded to RGB and transformed; a torch map-style dataset."""

    def __init__(self, samples: Sequence[tuple[Path, int]], transform: Callable):
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        return self.transform(open_rgb(path)), label


def stratified_split(samples: Sequence[tuple[Path, int]], fraction: float, seed: int):
    """Split per class with a seeded shuffle; every class with 2+ images keeps one for training."""
    if not 0 < fraction < 1:
        raise RtkError(f"--val-split {fraction} must be between 0 and 1.", "The default is 0.2.")
    by_class: dict[int, list] = defaultdict(list)
    for sample in samples:
        by_class[sample[1]].append(sample)
    rng = random.Random(seed)
    train, val = [], []
    for label in sorted(by_class):
        items = sorted(by_class[label])
        rng.shuffle(items)
        n_val = min(max(1, round(len(items) * fraction)), len(items) - 1) if len(items) > 1 else 0
        val += items[:n_val]
        train += items[n_val:]
    return train, val


def check_usable(scan: Scan) -> None:
    """Refuse data sets that cannot train: fewer than two classes, or an empty class."""
    if len(scan.classes) < 2:
        raise RtkError(f"{scan.root} has {len(scan.classes)} class folder(s); at least 2 are needed.",
                       "Put each class's images in its own subfolder of DATA_DIR.")
    if scan.empty_classes:
        raise RtkError(f"Class folder(s) with no usable image: {', '.join(scan.empty_classes)}.",
                       f"Add images or remove the folder(s); run `rtk inspect {scan.root}` for details.")


def loader_settings(device: str, distributed_world: int = 1) -> dict:
    """DataLoader workers, pinned memory and persistence sized to this machine."""
    cpus = usable_cores()
    workers = max(0, min(8, cpus // max(1, distributed_world) - 1))
    return {"num_workers": workers, "pin_memory": device == "cuda",
            "persistent_workers": workers > 0,
            **({"prefetch_factor": 4} if workers > 0 else {})}


def make_loader(dataset, batch_size: int, *, shuffle: bool, device: str, seed: int,
                sampler=None, world: int = 1, drop_last: bool = False):
    import torch

    g = torch.Generator()
    g.manual_seed(seed)
    settings = loader_settings(device, world)
    if shuffle:  # fresh workers each epoch: order and augmentation depend on the epoch's seed
        settings["persistent_workers"] = False  # alone, so a resumed epoch replays exactly
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
        generator=g, drop_last=drop_last, worker_init_fn=_seed_worker, **settings)


def _seed_worker(worker_id: int) -> None:
    import numpy as np
    import torch

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
