"""`rtk eval` and `rtk predict` with the PyTorch backend on the tiny bundle."""

from __future__ import annotations

import json

import pytest
from conftest import assert_user_error, write_class_images

CLASSES = ["circle", "square", "stripe"]


def _eval(cli, *args):
    result = cli("eval", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_eval_on_a_folder(cli, tiny_bundle, tiny_data):
    r = _eval(cli, tiny_bundle, tiny_data)
    assert r["backend"] == "torch" and r["device"] == "cpu" and r["data"] == str(tiny_data)
    assert r["n"] == 24
    # top-5 is not checked: with 3 classes it is 1.0 whatever the model
    assert set(r["per_class"]) == set(CLASSES)
    confusion = r["confusion"]  # rows: true class, columns: predicted, in the bundle's order
    assert [sum(row) for row in confusion] == [8, 8, 8]
    assert sum(confusion[i][i] for i in range(3)) / 24 == pytest.approx(r["accuracy"])
    for i, name in enumerate(CLASSES):
        assert r["per_class"][name] == pytest.approx(confusion[i][i] / 8), name
    assert r["balanced_accuracy"] == pytest.approx(sum(r["per_class"].values()) / 3)


def test_eval_defaults_to_the_runs_validation_split(cli, tiny_bundle):
    r = _eval(cli, tiny_bundle)
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    assert r["data"] == "validation split"
    assert r["n"] == manifest["data"]["val_images"]
    # the same images and the same model as the training run's own evaluation
    assert r["accuracy"] == pytest.approx(manifest["metrics"]["val_accuracy"])
    # balanced accuracy (mean per-class recall) is reported wherever accuracy is
    recalls = [v for v in r["per_class"].values() if v is not None]
    assert r["balanced_accuracy"] == pytest.approx(sum(recalls) / len(recalls))
    assert r["balanced_accuracy"] == pytest.approx(manifest["metrics"]["val_balanced_accuracy"])


def test_eval_text_output(cli, tiny_bundle):
    result = cli("eval", tiny_bundle)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("torch on validation split: accuracy ")
    assert "weakest:" in result.stdout


def test_eval_subset_of_classes_is_allowed(cli, tiny_bundle, tmp_path):
    data = write_class_images(tmp_path / "two", {"square": (40, 200, 40), "circle": (220, 40, 40)},
                              n=3, seed=5)
    r = _eval(cli, tiny_bundle, data)
    assert r["n"] == 6
    assert r["per_class"]["stripe"] is None  # no images of it: no accuracy, not zero


def test_eval_unknown_class_folder_is_an_error_naming_it(cli, tiny_bundle, tmp_path):
    data = write_class_images(tmp_path / "other", {"circle": (220, 40, 40), "zebra": (9, 9, 9)},
                              n=2)
    result = cli("eval", tiny_bundle, data)
    assert_user_error(result, "zebra", "circle, square, stripe")
    assert "circle" not in result.output.split("Hint:")[0]  # only the unknown one is blamed


def test_eval_folder_without_readable_images_is_an_error(cli, tiny_bundle, tmp_path):
    (tmp_path / "bad" / "circle").mkdir(parents=True)
    (tmp_path / "bad" / "circle" / "x.jpg").write_bytes(b"")
    result = cli("eval", tiny_bundle, tmp_path / "bad")
    assert_user_error(result, "holds no readable images", "rtk inspect")


def test_predict_topk(cli, tiny_bundle, tiny_data):
    images = [tiny_data / "circle" / "circle_0.png", tiny_data / "stripe" / "stripe_1.jpg"]
    result = cli("predict", tiny_bundle, *images, "--topk", "2", "--json")
    assert result.exit_code == 0, result.output
    preds = json.loads(result.stdout)
    assert [p["image"] for p in preds] == [str(i) for i in images]
    for p in preds:
        probs = [t["probability"] for t in p["top"]]
        assert len(p["top"]) == 2
        assert all(0.0 <= q <= 1.0 for q in probs)
        assert sum(probs) <= 1.0 + 1e-6
        assert probs == sorted(probs, reverse=True)
        assert len({t["label"] for t in p["top"]}) == 2
        assert {t["label"] for t in p["top"]} <= set(CLASSES)


def test_predict_topk_is_capped_by_the_classes(cli, tiny_bundle, tiny_data):
    result = cli("predict", tiny_bundle, tiny_data / "square" / "square_2.png", "--json")
    top = json.loads(result.stdout)[0]["top"]  # default --topk 5, only 3 classes
    assert [t["label"] for t in top] != [] and len(top) == 3
    assert sum(t["probability"] for t in top) == pytest.approx(1.0, abs=1e-5)


def test_predict_agrees_with_eval(cli, tiny_bundle, tiny_data):
    """predict's top-1 and eval's accuracy come from the same model and preprocessing."""
    images = sorted(tiny_data.rglob("*.*"))
    preds = json.loads(cli("predict", tiny_bundle, *images, "--topk", "1", "--json").stdout)
    correct = sum(p["top"][0]["label"] == img.parent.name for p, img in zip(preds, images))
    assert correct / len(images) == pytest.approx(_eval(cli, tiny_bundle, tiny_data)["accuracy"])


def test_predict_text_output(cli, tiny_bundle, tiny_data):
    image = tiny_data / "circle" / "circle_0.png"
    result = cli("predict", tiny_bundle, image, "--topk", "1")
    assert result.exit_code == 0
    assert result.stdout.startswith(f"{image}: ")


def test_predict_non_image_is_a_clean_error(cli, tiny_bundle, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("hello")
    result = cli("predict", tiny_bundle, text)
    assert_user_error(result, "Could not read an image", "notes.jpg")


def test_predict_missing_file_is_a_clean_error(cli, tiny_bundle, tmp_path):
    result = cli("predict", tiny_bundle, tmp_path / "gone.png")
    assert_user_error(result, "No such image", "gone.png")
