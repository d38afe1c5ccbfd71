"""The fine-tuning recipe's parts: weight EMA, mixup/cutmix, class balance, head-only warm-up
and early stopping (the automatic batch size: toolkit.train.autobatch). `toolkit.train.session`
puts them together."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

from ..data.loaders import EpochShuffle

IMBALANCE_RATIO = 3.0  # --balance auto balances when the largest class is over 3x the smallest


class ModelEma:
    """An exponential moving average of a model's weights, with timm's decay warm-up
    (ModelEmaV3: decay_t = min(decay, 1 - (1 + t) ** -power)), so a short fine-tuning run
    averages over a window that grows with it. Floating-point buffers (BatchNorm's running
    mean and variance) are averaged with the same decay, as timm's default, torchvision's
    AveragedModel(use_buffers=True) and Ultralytics' ModelEMA do, so the EMA weights are
    validated with statistics of their own; integer buffers (num_batches_tracked) are copied.

    The update is one `torch._foreach_lerp_` over the floating-point parameters and buffers:
    a few fused passes over the weights, no per-tensor Python loop."""

    def __init__(self, model, decay: float = 0.9998, power: float = 0.75):
        import copy

        from .checkpoint import unwrap

        src = unwrap(model)
        self.module = copy.deepcopy(src).eval().requires_grad_(False)
        self.decay, self.power, self.updates = decay, power, 0
        tensors = list(zip([*self.module.parameters(), *self.module.buffers()],
                           [*src.parameters(), *src.buffers()]))
        floats = [(e, s) for e, s in tensors if e.dtype.is_floating_point]
        self._ema, self._src = [e for e, _ in floats], [s for _, s in floats]
        self._copied = [(e, s) for e, s in tensors if not e.dtype.is_floating_point]

    def current_decay(self) -> float:
        return min(self.decay, 1.0 - (1.0 + self.updates) ** -self.power)

    def update(self) -> None:
        import torch

        with torch.no_grad():
            weight = 1.0 - self.current_decay()
            self.updates += 1
            torch._foreach_lerp_(self._ema, self._src, weight)
            for e, s in self._copied:
                e.copy_(s)

    def state_dict(self) -> dict[str, Any]:
        from .checkpoint import cpu_state

        return {"state_dict": cpu_state(self.module), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["state_dict"])
        self.updates = int(state["updates"])


class BatchMix:
    """MixUp and/or CutMix (torchvision.transforms.v2, one of the two per batch when both are
    on) with soft targets. Each batch draws from its own seed, so a resumed epoch replays
    the batches after the skipped ones exactly, and the global RNG is left untouched; the
    seed includes the process's rank, so the processes of a torchrun job mix differently."""

    def __init__(self, num_classes: int, mixup: float, cutmix: float, rank: int = 0):
        from torchvision.transforms import v2 as T

        mixes = ([T.MixUp(alpha=mixup, num_classes=num_classes)] if mixup > 0 else []) + \
                ([T.CutMix(alpha=cutmix, num_classes=num_classes)] if cutmix > 0 else [])
        self.transform = mixes[0] if len(mixes) == 1 else T.RandomChoice(mixes)
        self.seed, self.rank = 0, rank

    def __call__(self, x, y, step: int):
        import torch

        # torch.manual_seed reseeds CUDA too: restore this process's device generator as well
        with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
            torch.manual_seed(self.seed * 1_000_003 + step + self.rank * 1_000_000_007)
            return self.transform(x, y)


def class_counts(samples: Sequence[tuple[Any, int]], num_classes: int) -> list[int]:
    per = Counter(label for _, label in samples)
    return [per.get(i, 0) for i in range(num_classes)]


def pick_balance(requested: str, counts: list[int], world: int = 1) -> tuple[str, str]:
    """(method, why): the method --balance resolves to for these class counts."""
    nonzero = [n for n in counts if n]
    ratio = max(nonzero) / min(nonzero)
    if requested == "auto":
        if ratio <= IMBALANCE_RATIO:
            return "none", f"largest/smallest class {ratio:.1f}x <= {IMBALANCE_RATIO:g}x"
        # a balanced sampler draws the rare classes' few images many times over; with the
        # augmentation that is the stronger remedy, and it needs no change to the loss
        method = "sampler" if world == 1 else "weights"  # DistributedSampler owns the order
        return method, f"largest/smallest class {ratio:.1f}x > {IMBALANCE_RATIO:g}x"
    if requested == "sampler" and world > 1:
        from ..core.errors import RtkError

        raise RtkError("--balance sampler does not combine with torchrun (several processes).",
                       "Use --balance weights.")
    return requested, "as requested"


def class_weights(counts: list[int]) -> list[float]:
    """Inverse-frequency loss weights, mean 1 over the classes (scikit-learn's "balanced")."""
    n, k = sum(counts), len(counts)
    return [n / (k * c) if c else 0.0 for c in counts]


class BalancedSampler(EpochShuffle):
    """Draws len(labels) indices a pass, each class equally likely, with replacement; the
    order depends on (seed, epoch) alone, so a resumed epoch replays it (a torch sampler)."""

    def __init__(self, labels: Sequence[int], seed: int):
        import torch

        super().__init__(len(labels), seed)
        counts = torch.bincount(torch.tensor(list(labels)))
        self.weights = (1.0 / counts.double())[torch.tensor(list(labels))]

    def draw(self, generator) -> list[int]:
        import torch

        return torch.multinomial(self.weights, self.n, True, generator=generator).tolist()


def split_head(model) -> tuple[list, list]:
    """(backbone parameters, head parameters): the head is the last Linear layer, the one
    toolkit.train.model.replace_head put there."""
    import torch.nn as nn

    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    ids = {id(p) for p in head.parameters()}
    backbone = [p for p in model.parameters() if id(p) not in ids]
    return backbone, list(head.parameters())


def set_backbone_frozen(model, frozen: bool) -> None:
    """Freeze (or thaw) every parameter but the head's. While frozen, the backbone's
    BatchNorm layers also stay in eval mode (toolkit.train.loop calls `frozen_eval`), so its
    weights and statistics are exactly the pretrained ones."""
    backbone, _ = split_head(model)
    for p in backbone:
        p.requires_grad_(not frozen)


def frozen_eval(model) -> None:
    """After model.train(): normalisation layers without trainable weights go back to eval."""
    import torch.nn as nn

    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and not any(
                p.requires_grad for p in m.parameters(recurse=False)):
            m.eval()


@dataclass
class EarlyStop:
    """Patience over evaluations of the monitored metric (higher is better)."""

    patience: int = 0
    best: float = -1.0
    best_epoch: int = 0
    bad: int = 0
    stopped_epoch: int | None = None

    def improved(self, value: float, epoch: int) -> bool:
        """Record an evaluation; True when it is the best so far."""
        if value > self.best:
            self.best, self.best_epoch, self.bad = value, epoch, 0
            return True
        self.bad += 1
        if self.patience and self.bad >= self.patience:
            self.stopped_epoch = epoch
        return False
