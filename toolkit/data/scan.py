"""Scan a folder of class subfolders: usable images, problems, duplicates, statistics."""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import RtkError
from .images import IMAGE_EXTENSIONS

TINY_SIDE = 8  # images smaller than this on either side are reported as suspicious


@dataclass
class Scan:
    """What a data folder holds, file by file."""

    root: Path
    classes: list[str]
    samples: list[tuple[Path, int]] = field(default_factory=list)  # usable (path, class index)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)  # files without an image extension
    tiny: list[tuple[Path, tuple[int, int]]] = field(default_factory=list)
    duplicates: list[list[Path]] = field(default_factory=list)
    sizes: Counter = field(default_factory=Counter)
    modes: Counter = field(default_factory=Counter)
    formats: Counter = field(default_factory=Counter)

    def counts(self) -> dict[str, int]:
        per = Counter(idx for _, idx in self.samples)
        return {name: per.get(i, 0) for i, name in enumerate(self.classes)}

    @property
    def empty_classes(self) -> list[str]:
        return [name for name, n in self.counts().items() if n == 0]


def list_classes(root: Path) -> list[str]:
    """Class names: the immediate, non-hidden subfolders, sorted."""
    if not root.is_dir():
        raise RtkError(f"{root} is not a folder.",
                       "Point rtk at a folder with one subfolder of images per class.")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise RtkError(f"{root} has no class subfolders.",
                       "Arrange images as DATA_DIR/<class name>/<image>.")
    return classes


def check_image(path: Path, verify: bool = True
                ) -> tuple[str | None, tuple[int, int] | None, str | None, str | None]:
    """Decode one file (a JPEG at 1/8 scale): (problem, size, mode, format); None when usable.
    `verify=False` reads the header only (eval decodes every image anyway: not twice)."""
    from PIL import Image

    from .images import MAX_PIXELS

    if path.stat().st_size == 0:
        return "empty file (0 bytes)", None, None, None
    try:
        with Image.open(path) as img:
            size, mode, fmt = img.size, img.mode, img.format
            if size[0] * size[1] > MAX_PIXELS:  # the same limit training and serving apply
                return f"too large: {size[0]}x{size[1]} exceeds {MAX_PIXELS} pixels", None, None, None
            if verify:
                img.draft(None, (1, 1))  # JPEG: an eighth-scale IDCT still entropy-decodes every byte
                img.load()  # raises on truncated data
    except Image.DecompressionBombError as exc:
        return f"too large: {exc}", None, None, None
    except Exception as exc:  # PIL raises many types for corrupt files
        reason = "not an image" if "cannot identify" in str(exc) else f"unreadable: {exc}"
        return reason, None, None, None
    return None, size, mode, fmt


def scan_folder(root: str | Path, classes: list[str] | None = None, progress: bool = False,
                *, verify: bool = True) -> Scan:
    """Scan `root`; with `classes`, map folders onto a known class list (unknown ones are errors).
    `verify=False`: headers only, no duplicate hashes (for a folder that is decoded next)."""
    root = Path(root)
    found = list_classes(root)
    if classes is not None:
        unknown = [c for c in found if c not in classes]
        if unknown:
            raise RtkError(f"{root} has class folder(s) the model does not know: {', '.join(unknown)}.",
                           f"The model's classes are: {', '.join(classes)}.")
    scan = Scan(root, list(classes) if classes is not None else found)
    index = {name: i for i, name in enumerate(scan.classes)}
    files = [(p, index[c]) for c in found for p in sorted((root / c).rglob("*")) if p.is_file()]
    by_hash: dict[str, list[Path]] = defaultdict(list)
    for path, idx in _progress(files, progress, "Scanning images"):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_EXTENSIONS:
            scan.ignored.append(path)
            continue
        problem, size, mode, fmt = check_image(path, verify)
        if problem:
            scan.unreadable.append((path, problem))
            continue
        scan.samples.append((path, idx))
        scan.sizes[size] += 1
        scan.modes[mode] += 1
        scan.formats[fmt] += 1
        if min(size) < TINY_SIDE:
            scan.tiny.append((path, size))
        if verify:
            by_hash[hashlib.sha256(path.read_bytes()).hexdigest()].append(path)
    scan.duplicates = [paths for paths in by_hash.values() if len(paths) > 1]
    return scan


def _progress(items, enabled: bool, label: str):
    if not enabled:
        return items
    from rich.progress import track

    from ..ui.console import console

    return track(items, description=label, transient=True, console=console())  # not stdout
