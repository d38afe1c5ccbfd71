"""Export into a staging folder and publish at the end: a crash or a full disk mid-export
leaves the previous manifest and artifacts exactly as they were.

The staging folder sits inside the run directory (same filesystem, so publishing is a
rename) and starts as symlinks to the run's files. Every rtk write is atomic (a temp file,
then os.replace), which replaces a link without touching its target. Publishing moves the
new regular files into the run directory, then writes the manifest last.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from ..core.bundle import MANIFEST, Bundle


@contextlib.contextmanager
def staged(bundle: Bundle) -> Iterator[Bundle]:
    """A Bundle view on a staging copy; published when the block ends normally. A staging
    folder already there was left by an export that was killed (`rtk export` holds the run's
    lock, so no other export is using it): it is removed first."""
    for left in bundle.root.glob(".export-*"):
        if left.is_dir():
            shutil.rmtree(left, ignore_errors=True)
    stage = Path(tempfile.mkdtemp(prefix=".export-", dir=bundle.root))
    try:
        for item in bundle.root.iterdir():
            if not item.name.startswith("."):  # other stagings, temp files, the lock
                (stage / item.name).symlink_to(item.resolve())
        view = Bundle(stage, copy.deepcopy(bundle.manifest), origin=bundle)  # untouched if it fails
        yield view
        publish(view, bundle)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def publish(view: Bundle, bundle: Bundle) -> None:
    """Move the staged artifacts in, then the manifest (whose hashes name them) last."""
    for item in view.root.iterdir():
        if item.is_file() and not item.is_symlink() and item.name != MANIFEST \
                and not item.name.startswith("."):
            os.replace(item, bundle.root / item.name)
    bundle.manifest = view.manifest
    bundle.save()
