"""Datasets, the seeded stratified split, and data loaders sized to the machine."""

from __future__ import annotations

import random
from collections import defaultdict
from itertools import chain, zip_longest
from pathlib import Path
from typing import Callable, Sequence

from ..core.errors import RtkError
from ..core.manifest import Preprocess
from .images import open_rgb
from ..core.host import usable_cores
from .scan import Scan


class ImageDataset:
    """(path, label) pairs decoded to RGB and transformed; a torch map-style dataset.
    `min_short`: JPEGs are decoded at the DCT scale that keeps at least this short side
    (toolkit.data.images.open_rgb); None decodes at full size."""

    def __init__(self, samples: Sequence[tuple[Path, int]], transform: Callable,
                 min_short: int | None = None):
        self.samples = list(samples)
        self.transform = transform
        self.min_short = min_short

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        return self.transform(open_rgb(path, min_short=self.min_short)), label


def train_min_short(pre: Preprocess, augment: str) -> int:
    """The short side a training decode keeps: twice the crop, so a random-resized crop of a
    large share of the image still samples real pixels (the smallest crops are upsampled,
    as they are from any photo); the eval resize for the unaugmented level."""
    return pre.resize if augment == "none" else max(pre.resize, 2 * pre.crop)


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


def round_robin(samples: Sequence[tuple], seed: int | None = None) -> list[tuple]:
    """(item, label) samples interleaved class by class, so any prefix is balanced; with a
    seed each class is shuffled first (classes in label order, like `stratified_split`)."""
    by_class: dict[int, list] = defaultdict(list)
    for sample in samples:
        by_class[sample[1]].append(sample)
    rng = random.Random(seed)
    groups = [by_class[label] for label in sorted(by_class)]
    if seed is not None:
        for group in groups:
            rng.shuffle(group)
    return [s for s in chain.from_iterable(zip_longest(*groups)) if s is not None]


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
    # every core but the training process's own: on the H200's 16 cores, 15 PIL workers
    # gave 1,545 img/s against 982 for the former cap of 8 (../shared/GPU.md)
    workers = max(0, cpus // max(1, distributed_world) - 1)
    return {"num_workers": workers, "pin_memory": device == "cuda",
            "persistent_workers": workers > 0,
            **({"prefetch_factor": 4} if workers > 0 else {})}


def make_loader(dataset, batch_size: int, *, shuffle: bool, device: str, seed: int,
                sampler=None, world: int = 1, drop_last: bool = False,
                collate_fn=None, random_workers: bool = True):
    """A seeded DataLoader; `random_workers=False` when workers draw no random numbers."""
    import torch

    g = torch.Generator()
    g.manual_seed(seed)
    settings = loader_settings(device, world)
    if shuffle and random_workers:  # fresh workers each epoch: augmentation depends on the
        settings["persistent_workers"] = False  # epoch's seed alone, so a resume replays it
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
        generator=g, drop_last=drop_last, worker_init_fn=_seed_worker, collate_fn=collate_fn,
        **settings)


def training_loaders(train: Sequence, val: Sequence, pre: Preprocess, *, augment: str, decode: str,
                     batch_size: int, device: str, seed: int, rank: int = 0, world: int = 1,
                     sampler=None):
    """(train loader, validation loader, train sampler or None). decode "cpu": PIL decode and
    augmentation in workers; "gpu": workers read bytes, batches are decoded and augmented on
    `device` (toolkit.data.gpu_input, toolkit.data.gpu_transforms). `sampler`: a seeded training
    order with set_epoch (toolkit.train.recipe.BalancedSampler), single process only."""
    import torch

    from .gpu_transforms import EvalBatch, TrainBatch
    from .gpu_input import ByteDataset, DeviceLoader, collate
    from .transforms import eval_transform, train_transform

    on_device = decode == "gpu"
    if on_device:
        train_ds, val_ds = ByteDataset(train), ByteDataset(val)
    else:
        train_ds = ImageDataset(train, train_transform(pre, augment), train_min_short(pre, augment))
        val_ds = ImageDataset(val, eval_transform(pre), pre.resize)
    if sampler is None and world > 1:
        sampler = torch.utils.data.DistributedSampler(train_ds, num_replicas=world, rank=rank,
                                                      shuffle=True, seed=seed)
    elif sampler is None and on_device:  # persistent workers: the order must not depend on them
        sampler = EpochShuffle(len(train_ds), seed)
    extra = {"collate_fn": collate, "random_workers": False} if on_device else {}
    train_loader = make_loader(train_ds, batch_size, shuffle=True, device=device, seed=seed,
                               sampler=sampler, world=world,
                               drop_last=len(train_ds) > batch_size, **extra)
    val_loader = make_loader(val_ds, max(batch_size, 32), shuffle=False, device=device,
                             seed=seed, world=world, **extra)
    if on_device:
        train_loader = DeviceLoader(train_loader, TrainBatch(pre, augment), device, rank=rank)
        val_loader = DeviceLoader(val_loader, EvalBatch(pre), device, rank=rank)
    return train_loader, val_loader, sampler


class EpochShuffle:
    """A shuffled order that depends on (seed, epoch) alone: the same whether the loader's
    workers are fresh or persistent, so a resumed epoch replays it (a torch sampler)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        import torch

        return iter(self.draw(torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)))

    def draw(self, generator) -> list[int]:
        """This pass's indices (a permutation; a subclass may draw differently)."""
        import torch

        return torch.randperm(self.n, generator=generator).tolist()


def _seed_worker(worker_id: int) -> None:
    import numpy as np
    import torch

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
