"""`rtk inspect`: exact findings on a deliberately dirty folder, and the card's presets."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from toolkit.train import presets
from toolkit.data.images import open_rgb


@pytest.fixture(scope="module")
def dirty_data(module_tmp):
    """Every kind of trouble a real folder holds, next to a few good images.

    cats/   3 good JPEGs + a byte-identical PNG pair (5 usable)
    dogs/   zero-byte .jpg, text named .jpg, truncated JPEG (3 unreadable);
            CMYK JPEG, 16-bit PNG, RGBA PNG, palette GIF, 1x1 PNG (5 usable);
            notes.txt and .DS_Store (ignored)
    empty/  no files at all
    broken/ only a zero-byte .png (so no usable image either)
    """
    root = module_tmp("dirty")
    rng = np.random.default_rng(1)
    noise = lambda h, w, c=3: rng.integers(0, 256, (h, w, c), dtype=np.uint8)  # noqa: E731
    cats, dogs, broken = root / "cats", root / "dogs", root / "broken"
    for d in (cats, dogs, broken, root / "empty"):
        d.mkdir()
    for i in range(3):
        Image.fromarray(noise(20, 24)).save(cats / f"good{i}.jpg")
    Image.fromarray(noise(16, 16)).save(cats / "dup_a.png")
    shutil.copy(cats / "dup_a.png", cats / "dup_b.png")

    (dogs / "zero.jpg").write_bytes(b"")
    (dogs / "text.jpg").write_text("this is not an image\n")
    buf = io.BytesIO()
    Image.fromarray(noise(64, 64)).save(buf, "JPEG", quality=95)
    (dogs / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    Image.fromarray(noise(20, 20)).convert("CMYK").save(dogs / "cmyk.jpg")
    gray16 = np.full((20, 20), 65535, dtype=np.uint16)
    gray16[:10] = 0
    Image.fromarray(gray16).save(dogs / "gray16.png")
    Image.fromarray(noise(20, 20, 4), "RGBA").save(dogs / "rgba.png")
    Image.fromarray(noise(20, 20)).convert("P").save(dogs / "palette.gif")
    Image.fromarray(noise(1, 1)).save(dogs / "one.png")
    (dogs / "notes.txt").write_text("not an image extension: ignored")
    (dogs / ".DS_Store").write_bytes(b"\x00\x01")
    (broken / "zero.png").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def dirty_report(dirty_data):
    from click.testing import CliRunner

    from toolkit.cli import main

    result = CliRunner().invoke(main, ["inspect", str(dirty_data), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # stdout is pure JSON: no progress bar, no log lines


def test_counts_usable_images_per_class(dirty_report):
    assert dirty_report["classes"] == 4
    assert dirty_report["images"] == 10
    assert dirty_report["per_class"] == {"broken": 0, "cats": 5, "dogs": 5, "empty": 0}


def test_empty_classes_include_folders_with_only_bad_files(dirty_report):
    assert dirty_report["empty_classes"] == ["broken", "empty"]


def test_unreadable_files_with_reasons(dirty_report):
    reasons = {item["file"]: item["reason"] for item in dirty_report["unreadable"]}
    assert set(reasons) == {"broken/zero.png", "dogs/zero.jpg", "dogs/text.jpg",
                            "dogs/truncated.jpg"}
    assert reasons["dogs/zero.jpg"] == "empty file (0 bytes)"
    assert reasons["broken/zero.png"] == "empty file (0 bytes)"
    assert reasons["dogs/text.jpg"] == "not an image"
    assert reasons["dogs/truncated.jpg"].startswith("unreadable:")
    assert "truncated" in reasons["dogs/truncated.jpg"]


def test_ignored_tiny_and_duplicates(dirty_report):
    assert dirty_report["ignored_files"] == ["dogs/.DS_Store", "dogs/notes.txt"]
    assert dirty_report["tiny_images"] == [{"file": "dogs/one.png", "size": [1, 1]}]
    assert dirty_report["duplicates"] == [["cats/dup_a.png", "cats/dup_b.png"]]


def test_modes_sizes_and_formats(dirty_report):
    assert dirty_report["modes"] == {"RGB": 6, "CMYK": 1, "I;16": 1, "P": 1, "RGBA": 1}
    assert dirty_report["formats"] == {"JPEG": 4, "PNG": 5, "GIF": 1}
    assert dirty_report["sizes"] == {"20x20": 4, "24x20": 3, "16x16": 2, "1x1": 1}
    assert dirty_report["imbalance_ratio"] == 1.0


def test_every_usable_image_decodes_to_rgb(dirty_data):
    """What inspect calls usable, training can read: every mode becomes 8-bit RGB."""
    from toolkit.data.scan import scan_folder

    scan = scan_folder(dirty_data)
    assert len(scan.samples) == 10
    for path, _ in scan.samples:
        img = open_rgb(path)
        assert img.mode == "RGB", path
        assert img.size == Image.open(path).size
    # 16-bit white must stay white (65535 -> 255), not wrap or clip to grey
    arr = np.asarray(open_rgb(dirty_data / "dogs" / "gray16.png"))
    assert arr[:10].max() == 0 and arr[10:].min() == 255


def test_small_data_set_recommendation(dirty_report):
    rec = dirty_report["recommendation"]
    assert rec["arch"] == "resnet18"
    assert rec["augment"] == "heavy"
    assert rec["notes"][0] == "Only 10 images: expect weak results; collect more data if you can."
    assert isinstance(rec["hardware"], str) and rec["hardware"]
    recipe = " ".join(rec["recipe"])  # the fine-tuning recipe finetune applies
    assert "mixup" in recipe and "--ema" in recipe and "--patience 5" in recipe
    assert ("--balance auto" in recipe) == (dirty_report["imbalance_ratio"] > 3)


def test_text_report_names_every_problem(cli, dirty_data):
    result = cli("inspect", dirty_data)
    assert result.exit_code == 0
    text = result.stdout
    assert text.startswith(f"{dirty_data}: 10 usable images in 4 classes")  # no progress residue
    assert "WARNING empty class folder: empty" in text
    assert "WARNING empty class folder: broken" in text
    assert "UNREADABLE dogs/truncated.jpg" in text
    assert "TINY dogs/one.png: 1x1" in text
    assert "DUPLICATES cats/dup_a.png = cats/dup_b.png" in text
    assert "--arch resnet18" in text and "expect weak results" in text
    assert "recipe: --ema" in text


def test_tiny_clean_folder(cli, tiny_data):
    report = json.loads(cli("inspect", tiny_data, "--json").stdout)
    assert report["images"] == 24
    assert report["per_class"] == {"circle": 8, "square": 8, "stripe": 8}
    assert report["unreadable"] == [] and report["duplicates"] == [] and report["empty_classes"] == []
    assert report["recommendation"]["arch"] == "resnet18"
    assert any("expect weak results" in n for n in report["recommendation"]["notes"])


@pytest.mark.parametrize("n, arch, lr, epochs, batch, augment", [
    (800, "resnet18", 2e-5, "15-20", 8, "heavy"),
    (5000, "resnet50", 5e-5, "5-10", 16, "standard"),
    (20000, "resnet50", 1e-4, "3-5", 32, "light"),
    (60000, "resnet50", 1e-4, "3-5", 32, "light"),
])
def test_preset_for(n, arch, lr, epochs, batch, augment):
    preset = presets.preset_for(n)
    assert (preset.arch, preset.lr, preset.epochs_range, preset.batch_size, preset.augment) == \
        (arch, lr, epochs, batch, augment)
    lo, hi = (int(x) for x in preset.epochs_range.split("-"))
    assert lo <= preset.epochs <= hi
    for name, value in (("lr", preset.lr), ("batch_size", preset.batch_size),
                        ("epochs", preset.epochs)):
        presets.check_range(name, value)  # presets never leave the card's own ranges
    assert not any("expect weak results" in note for note in preset.notes)
    # the card: "Consider ViT Base" for accuracy-critical work over 5,000 images
    assert any("--arch vit_b_16" in note for note in preset.notes) == (n > 5_000)


def test_weak_warning_only_below_500_images():
    assert any("Only 499 images" in note for note in presets.preset_for(499).notes)
    assert not any("expect weak results" in note for note in presets.preset_for(500).notes)
