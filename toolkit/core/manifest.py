"""The typed manifest: frozen records read from and written to manifest.json (same keys as ever).

Each record keeps the keys it does not know in `extra`, so a field some stage (or a newer
rtk) adds round-trips untouched. A field whose value is None is left out of the JSON unless
the record always wrote it (`_ALWAYS`), so loading and saving a manifest keeps its keys.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

from .errors import RtkError

SCHEMA_VERSION = 1


class Record:
    """from_json/to_json by field name, unknown keys kept in `extra`."""

    _ALWAYS: ClassVar[tuple[str, ...]] = ()  # written even when None
    _NESTED: ClassVar[dict[str, type]] = {}  # fields holding another Record

    @classmethod
    def names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)} - {"extra"}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]):
        known = cls.names()
        kwargs = {k: cls._NESTED[k].from_json(v) if k in cls._NESTED and v is not None else v
                  for k, v in data.items() if k in known}
        return cls(**kwargs, extra={k: v for k, v in data.items() if k not in known})

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or (value is None and f.name not in self._ALWAYS):
                continue
            out[f.name] = value.to_json() if isinstance(value, Record) else _plain(value)
        out.update(self.extra)
        return out

    def with_(self, **changes: Any):
        """A copy with `changes` (a nested record may be given as its JSON); names the record
        does not type go to `extra`."""
        known = self.names()
        extra = {**self.extra, **{k: v for k, v in changes.items() if k not in known}}
        typed = {k: self._NESTED[k].from_json(v) if k in self._NESTED and isinstance(v, dict)
                 else v for k, v in changes.items() if k in known}
        return dataclasses.replace(self, **typed, extra=extra)


def _plain(value: Any) -> Any:
    """Tuples (kept in frozen records) back to JSON lists."""
    return list(value) if isinstance(value, tuple) else value


@dataclass(frozen=True)
class Preprocess(Record):
    """The weights' eval recipe: resize the short side, center-crop, normalise."""

    resize: int
    crop: int
    interpolation: str | None = None  # "bilinear" in every recipe rtk writes
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    source: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "mean", tuple(self.mean))
        object.__setattr__(self, "std", tuple(self.std))


@dataclass(frozen=True)
class TensorSpec(Record):
    """One named tensor: the manifest's input/output, or an artifact's io entry."""

    name: str
    dtype: str
    layout: str | None = None
    shape: tuple[int, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(self.shape))


@dataclass(frozen=True)
class Io(Record):
    """An artifact's graph inputs and outputs (and whatever else io_spec recorded)."""

    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Io":
        io = super().from_json(data)
        return dataclasses.replace(
            io, inputs=tuple(TensorSpec.from_json(t) for t in io.inputs or ()),
            outputs=tuple(TensorSpec.from_json(t) for t in io.outputs or ()))

    def to_json(self) -> dict[str, Any]:
        return {"inputs": [t.to_json() for t in self.inputs],
                "outputs": [t.to_json() for t in self.outputs], **self.extra}


@dataclass(frozen=True)
class Profile(Record):
    """A TensorRT plan's one optimization profile: the batch sizes it was built for."""

    input: str | None = None
    min: int = 1
    opt: int | None = None
    max: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Artifact(Record):
    """A file of the bundle: its hash, what it was derived from, and the export's verdict."""

    _ALWAYS = ("parent",)
    _NESTED = {"io": Io, "profile": Profile}

    sha256: str
    parent: str | None = None
    parent_sha256: str | None = None
    precision: str | None = None
    io: Io | None = None
    trusted: bool | None = None
    gate: str | None = None  # pending | passed | failed
    parity: dict[str, Any] | None = None
    speed: dict[str, Any] | None = None
    search: dict[str, Any] | None = None  # INT8 only, with the nodes it kept in float:
    kept_float: tuple[str, ...] | None = None
    kept_float_nodes: int | None = None
    max_batch: int | None = None  # the ONNX export's dynamic batch limit
    profile: Profile | None = None  # TensorRT plans only, with the build's versions:
    tensorrt_version: str | None = None
    gpu: str | None = None
    compute_capability: str | None = None
    # INT8 only: the verdict per CPU int8 class (core.host.INT8_CLASSES), each with the host
    # it was taken on; the session options the graph needs here; its fingerprint's file
    gates: dict[str, Any] | None = None
    session_config: dict[str, str] | None = None
    fingerprint: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def input_dtype(self) -> str:
        """The first input's dtype (uint8 when the io was not recorded)."""
        return self.io.inputs[0].dtype if self.io and self.io.inputs else "uint8"


@dataclass(frozen=True)
class Data(Record):
    """Where the images came from and how they were split."""

    _ALWAYS = ("train_dir", "val_dir", "val_split", "seed", "split_file")

    train_dir: str | None = None
    val_dir: str | None = None
    val_split: float | None = None
    seed: int | None = None
    split_file: str | None = "split.json"
    train_images: int | None = None
    val_images: int | None = None
    skipped_unreadable: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Metrics(Record):
    """The best checkpoint's validation numbers."""

    best_epoch: int | None = None
    val_accuracy: float | None = None
    val_balanced_accuracy: float | None = None
    weights: str | None = None
    monitor: str | None = None
    val_top5: float | None = None
    train_accuracy: float | None = None
    val_loss: float | None = None
    per_class: dict[str, Any] | None = None
    train_images_per_second: float | None = None
    stopped_epoch: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Provenance(Record):
    """Versions, git commit and command line that produced the run."""

    _ALWAYS = ("git_commit",)

    command: str | None = None
    python: str | None = None
    platform: str | None = None
    versions: dict[str, str] | None = None
    git_commit: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExportRecord(Record):
    """The last export's parity table and the images it was judged on."""

    parity: tuple[dict[str, Any], ...] = ()
    data: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest(Record):
    """manifest.json: the single source of truth between stages."""

    _NESTED = {"preprocessing": Preprocess, "input": TensorSpec, "output": TensorSpec,
               "data": Data, "provenance": Provenance, "metrics": Metrics,
               "export": ExportRecord}

    schema: int = SCHEMA_VERSION
    rtk_version: str | None = None
    created: str | None = None
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    status: str | None = None  # training | complete
    arch: str | None = None
    classes: tuple[str, ...] | None = None
    num_classes: int | None = None
    preprocessing: Preprocess | None = None
    input: TensorSpec | None = None
    output: TensorSpec | None = None
    data: Data | None = None
    config: dict[str, Any] | None = None  # TrainConfig's fields, as resolved
    recipe: Any = None  # the card's notes on the chosen recipe
    seed: int | None = None
    provenance: Provenance | None = None
    metrics: Metrics | None = None
    diagnosis: tuple[str, ...] | None = None
    export: ExportRecord | None = None
    # held-out sets by content hash: how often an INT8 verdict was asked of each (export.looks)
    held_out: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(self.classes))

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "manifest.json") -> "Manifest":
        """The typed manifest; a schema this rtk does not read is a clear RtkError."""
        schema = data.get("schema")
        if schema != SCHEMA_VERSION:
            newer = isinstance(schema, int) and schema > SCHEMA_VERSION
            raise RtkError(
                f"{where} has schema {schema}, expected {SCHEMA_VERSION}: it was written by "
                f"{'a newer' if newer else 'an older'} rtk.",
                "Upgrade rtk to read it." if newer else
                "Re-run `rtk finetune` with this version of rtk.")
        manifest = super().from_json({k: v for k, v in data.items() if k != "artifacts"})
        artifacts = {name: Artifact.from_json(e) for name, e in data.get("artifacts", {}).items()}
        return dataclasses.replace(manifest, artifacts=artifacts)

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        out["artifacts"] = {name: a.to_json() for name, a in self.artifacts.items()}
        return out

    def artifact(self, name: str | None) -> Artifact | None:
        """The recorded entry of `name` (None when it was never recorded)."""
        return self.artifacts.get(name) if name is not None else None

    def trusted(self, name: str) -> bool:
        """Whether `name` is recorded and passed its gate."""
        entry = self.artifact(name)
        return entry is not None and entry.trusted is True
