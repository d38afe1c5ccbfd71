"""The run directory ("bundle"): manifest, labels and artifacts shared by every stage."""

from __future__ import annotations

import json
import platform
import sys
import time
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from .errors import RtkError
from .files import sha256, write_json, write_text
from .manifest import SCHEMA_VERSION, Artifact, Manifest, Preprocess, Record
from .host import git_commit

MANIFEST = "manifest.json"
LABELS = "labels.txt"


@dataclass
class Bundle:
    """A run directory and its typed manifest (the single source of truth between stages).

    The manifest is frozen: stages change it through update/update_artifact/record_artifact,
    which replace it, and save() writes it."""

    root: Path
    manifest: Manifest
    # a staged view's run directory (export.staging): records that must outlive a failed
    # export, such as the held-out looks, are written there at once as well
    origin: "Bundle | None" = None

    @classmethod
    def create(cls, root: str | Path, **fields: Any) -> "Bundle":
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        plain = {k: v.to_json() if isinstance(v, Record) else v for k, v in fields.items()}
        manifest = Manifest.from_json({"schema": SCHEMA_VERSION, "rtk_version": __version__,
                                       "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                       "artifacts": {}, **plain})
        return cls(root, manifest)

    @classmethod
    def load(cls, root: str | Path) -> "Bundle":
        root = Path(root)
        path = root / MANIFEST
        if not path.is_file():
            raise RtkError(f"{root} is not an rtk run directory (no {MANIFEST}).",
                           "Pass the --out folder of a finished `rtk finetune` run.")
        data = read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("artifacts"), dict):
            raise RtkError(f"{path} is damaged: it holds JSON, but not an rtk manifest "
                           "(no artifacts table).", DAMAGED_HINT)
        try:
            return cls(root, Manifest.from_json(data, where=str(path)))
        except (TypeError, AttributeError, ValueError, KeyError) as exc:  # a field of the wrong shape
            raise RtkError(f"{path} is damaged: it holds JSON, but a field has the wrong shape "
                           f"({type(exc).__name__}: {exc}).", DAMAGED_HINT) from exc

    # -- convenient views -------------------------------------------------
    @property
    def classes(self) -> list[str]:
        return list(self.manifest.classes or ())

    @property
    def preprocessing(self) -> Preprocess:
        return self.manifest.preprocessing

    def path(self, name: str) -> Path:
        return self.root / name

    def entry(self, name: str) -> Artifact:
        """The recorded entry of artifact `name` (a clear error when it was never recorded)."""
        entry = self.manifest.artifact(name)
        if entry is None:
            raise RtkError(f"{self.root} has no {name}.", make_hint(name, self.root))
        return entry

    # -- writing ----------------------------------------------------------
    def save(self) -> None:
        write_json(self.root / MANIFEST, self.manifest.to_json())

    def update(self, **changes: Any) -> None:
        """Replace top-level manifest fields (not saved until save())."""
        self.manifest = self.manifest.with_(**changes)

    def update_artifact(self, name: str, **changes: Any) -> Artifact:
        """Replace fields of a recorded artifact (untyped names go to its extra); not saved."""
        entry = self.entry(name).with_(**changes)
        self.manifest = self.manifest.with_(artifacts={**self.manifest.artifacts, name: entry})
        return entry

    def split(self) -> dict[str, Any]:
        """The train/validation split recorded by `rtk finetune` (relative paths, labels)."""
        path = self.root / "split.json"
        if not path.is_file():
            raise RtkError(f"{self.root} has no split.json.", "Re-run `rtk finetune`.")
        return read_json(path)

    def write_labels(self) -> None:
        write_text(self.root / LABELS, "\n".join(self.classes) + "\n")

    def record_artifact(self, name: str, parent: str | None = None, **info: Any) -> Artifact:
        """Hash an artifact file, link it to its parent's hash, and save the manifest."""
        entry = Artifact(sha256=sha256(self.root / name), parent=parent).with_(**info)
        if parent is not None:
            entry = dataclasses.replace(entry, parent_sha256=self.entry(parent).sha256)
        self.manifest = self.manifest.with_(artifacts={**self.manifest.artifacts, name: entry})
        self.save()
        return entry

    # -- reading ----------------------------------------------------------
    def artifact(self, name: str, *, trusted: bool = True) -> Path:
        """Path of a recorded artifact, refused when missing, changed, stale or untrusted."""
        self._verify(name)
        entry = self.entry(name)
        # Derived artifacts are trusted only once they passed their gate; a crash between
        # conversion and gate leaves them "pending", which is refused like a failure.
        if trusted and entry.parent is not None and entry.trusted is not True:
            if entry.gate == "pending":
                raise RtkError(f"{name} was never checked against PyTorch (the export stopped).",
                               f"Re-export: rtk export {self.root}")
            raise RtkError(f"{name} failed its accuracy gate and is marked untrusted.",
                           f"See the parity table in {self.root / MANIFEST}; re-export or relax the gate.")
        return self.root / name

    def _verify(self, name: str) -> None:
        """The file matches its recorded hash, and so does every ancestor it was derived from."""
        entry = self.manifest.artifact(name)
        path = self.root / name
        if entry is None or not path.is_file():
            raise RtkError(f"{self.root} has no {name}.", make_hint(name, self.root))
        if _file_hash(path) != entry.sha256:
            raise RtkError(f"{name} was changed after rtk recorded it.", make_hint(name, self.root))
        if entry.input_dtype != "uint8":  # before the uint8 contract (contract.py)
            raise RtkError(f"{name} takes {entry.input_dtype} tensors: it was exported by an older "
                           "rtk, before every artifact took uint8 images.",
                           f"Re-export: rtk export {self.root}")
        if entry.parent is not None:
            self._verify(entry.parent)
            if self.entry(entry.parent).sha256 != entry.parent_sha256:
                raise RtkError(f"{name} is stale: it was made from an older {entry.parent}.",
                               f"Re-export: rtk export {self.root}")


DAMAGED_HINT = ("rtk writes it atomically, so something else cut or changed it (a full disk "
                "outside rtk, a copy, an editor): restore the run folder from a backup, or "
                "re-run `rtk finetune` into a new --out.")


def read_json(path: Path) -> Any:
    """A JSON file of the bundle; a truncated, garbled or unreadable one is a clear RtkError."""
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RtkError(f"{path} is damaged: it is not valid JSON ({exc}).", DAMAGED_HINT) from exc
    except OSError as exc:
        raise RtkError(f"Cannot read {path}: {exc.strerror}.",
                       "Check that the run folder is readable by this user.") from exc


_HASHES: dict[tuple, str] = {}


def _file_hash(path: Path) -> str:
    """sha256, memoised per (path, size, mtime) so repeated checks do not re-read big files."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = sha256(path)
    return _HASHES[key]


def make_hint(name: str, root: Path | str = "RUN_DIR") -> str:
    """The command that (re)creates an artifact."""
    if name.endswith((".onnx", ".plan")):
        flag = {".fp16.onnx": " --fp16", ".int8.onnx": " --int8", ".plan": " --fp16"}
        extra = next((v for k, v in flag.items() if name.endswith(k)), "")
        return f"Create it with: rtk export {root}{extra}"
    return "Re-run `rtk finetune` to create it."


def provenance(argv: list[str] | None = None) -> dict[str, Any]:
    """Versions, git commit and command line that produced a run."""
    import torch
    import torchvision

    return {
        "command": " ".join(argv if argv is not None else sys.argv),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {"rtk": __version__, "torch": torch.__version__,
                     "torchvision": torchvision.__version__},
        "git_commit": git_commit(),
    }

