"""Atomic writes, folder swaps and hashing: a crash never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; move it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; give the file normal permissions
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())  # the data is on disk before the name points at it
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def swapped_dir(path: str | os.PathLike, names: list[str] | None = None) -> Iterator[Path]:
    """Yield a new folder beside `path`; swap it in only if the block succeeds.

    names None: the whole folder is replaced (no file of an older layout lingers); else only
    those entries of `path` are, and the rest of `path` stays (other models in a repository).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.rtk-", dir=path.parent))
    os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes 0700; the result must be readable
    try:
        yield tmp
        _swap(tmp, path, names)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _swap(tmp: Path, path: Path, names: list[str] | None) -> None:
    """Move the new entries in; replaced ones go to a trash folder, then away."""
    if not path.exists():
        os.replace(tmp, path)
        return
    trash = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
    moves = [(tmp, path, trash / path.name)] if names is None else \
        [(tmp / name, path / name, trash / name) for name in names]
    try:
        for new, old, parked in moves:
            if old.exists():
                os.replace(old, parked)
            try:
                os.replace(new, old)
            except OSError:
                if parked.exists():  # put the old entry back before giving up
                    os.replace(parked, old)
                raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)


def umask() -> int:
    """The process umask (reading it means setting it; it is restored at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
