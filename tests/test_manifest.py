"""The typed manifest: the JSON on disk keeps its keys, unknown ones round-trip, schemas are checked."""

import dataclasses
import json

import pytest

from toolkit.core.bundle import Bundle
from toolkit.core.errors import RtkError
from toolkit.core.manifest import Artifact, Manifest, Preprocess

# A manifest as rtk wrote it before the typed manifest (keys trimmed, values real), plus keys
# no record types: they must survive a load and a save unchanged.
OLD = {
    "schema": 1, "rtk_version": "0.1.0", "created": "2026-12-01T10:00:00+0000",
    "artifacts": {
        "model.pt": {"sha256": "a" * 64, "parent": None},
        "model.onnx": {"sha256": "b" * 64, "parent": "model.pt", "trusted": True,
                       "gate": "passed", "io": {"inputs": [{"name": "input", "dtype": "uint8",
                                                            "shape": [-1, 32, 32, 3]}],
                                                "outputs": [{"name": "logits", "dtype": "float32",
                                                             "shape": [-1, 3]}], "opset": 18},
                       "precision": "fp32", "max_batch": 64, "parent_sha256": "a" * 64,
                       "tool": {"name": "someone's converter"}},
    },
    "status": "complete", "arch": "resnet18", "classes": ["a", "b", "c"], "num_classes": 3,
    "preprocessing": {"resize": 37, "crop": 32, "interpolation": "bilinear",
                      "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                      "source": "IMAGENET1K_V1"},
    "input": {"name": "input", "dtype": "uint8", "layout": "NHWC", "shape": [-1, 32, 32, 3]},
    "output": {"name": "logits", "dtype": "float32", "shape": [-1, 3]},
    "data": {"train_dir": "/data", "val_dir": None, "val_split": 0.2, "seed": 0,
             "split_file": "split.json", "train_images": 24, "val_images": 6,
             "skipped_unreadable": 0},
    "metrics": {"best_epoch": 1, "val_accuracy": 0.5, "val_top5": 1.0},
    "provenance": {"command": "rtk finetune", "git_commit": None},
    "diagnosis": ["fine"], "export": {"parity": [{"artifact": "model.onnx"}], "data": "x"},
    "added_by_a_newer_stage": {"k": [1, 2]},
}


def test_old_manifest_round_trips_with_the_same_keys_and_values():
    m = Manifest.from_json(OLD)
    assert m.to_json() == OLD
    assert m.preprocessing == Preprocess(resize=37, crop=32, interpolation="bilinear",
                                         source="IMAGENET1K_V1")
    onnx = m.artifact("model.onnx")
    assert onnx.io.inputs[0].shape == (-1, 32, 32, 3) and onnx.max_batch == 64
    assert onnx.extra == {"tool": {"name": "someone's converter"}}
    assert m.extra == {"added_by_a_newer_stage": {"k": [1, 2]}}
    assert m.trusted("model.onnx") and not m.trusted("model.int8.onnx")


def test_records_are_frozen_and_changed_through_the_bundle(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps(OLD))
    bundle = Bundle.load(tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        bundle.manifest.status = "training"
    bundle.update_artifact("model.onnx", trusted=False, note="by hand")
    bundle.update(status="training")
    bundle.save()
    saved = json.loads((tmp_path / "manifest.json").read_text())
    assert saved["status"] == "training" and saved["artifacts"]["model.onnx"]["trusted"] is False
    assert saved["artifacts"]["model.onnx"]["note"] == "by hand"
    assert {k: v for k, v in saved.items() if k not in ("status", "artifacts")} == \
        {k: v for k, v in OLD.items() if k not in ("status", "artifacts")}


def test_record_artifact_links_the_parent_hash(tmp_path):
    bundle = Bundle.create(tmp_path, arch="resnet18", classes=["a"])
    (tmp_path / "model.pt").write_bytes(b"pt")
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    pt = bundle.record_artifact("model.pt")
    onnx = bundle.record_artifact("model.onnx", parent="model.pt", precision="fp32", extra_key=1)
    assert isinstance(onnx, Artifact) and onnx.parent_sha256 == pt.sha256
    saved = json.loads((tmp_path / "manifest.json").read_text())["artifacts"]
    assert saved["model.pt"] == {"sha256": pt.sha256, "parent": None}
    assert saved["model.onnx"]["extra_key"] == 1 and saved["model.onnx"]["precision"] == "fp32"


@pytest.mark.parametrize("schema,says", [(0, "an older rtk"), (None, "an older rtk"),
                                         (2, "a newer rtk")])
def test_an_unknown_schema_is_a_clear_error(tmp_path, schema, says):
    (tmp_path / "manifest.json").write_text(json.dumps({**OLD, "schema": schema}))
    with pytest.raises(RtkError) as err:
        Bundle.load(tmp_path)
    assert f"has schema {schema}, expected 1" in err.value.message and says in err.value.message
    assert err.value.hint


@pytest.mark.parametrize("damage", [
    lambda m: m["artifacts"]["model.pt"].pop("sha256"),          # a required field is missing
    lambda m: m.__setitem__("preprocessing", "bilinear"),        # an object became a string
    lambda m: m["artifacts"].__setitem__("model.onnx", [1, 2]),  # an artifact is not an object
])
def test_a_field_of_the_wrong_shape_is_a_damaged_manifest_not_a_crash(tmp_path, damage):
    manifest = json.loads(json.dumps(OLD))
    damage(manifest)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RtkError) as err:
        Bundle.load(tmp_path)
    assert "is damaged" in err.value.message and "restore the run folder" in err.value.hint
