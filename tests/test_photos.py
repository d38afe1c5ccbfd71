"""Camera photos: the decode rule (DCT-scaled JPEG decoding) against full decoding, in the
eval transform, through an exported graph, in training and in `rtk bench --images`."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from conftest import bomb_png
from toolkit.data.images import MAX_PIXELS, eval_uint8, load_eval, open_rgb

PHOTO = (4032, 3024)  # 12 MP, as a phone takes them


@pytest.fixture(scope="module")
def photos(module_tmp):
    """Two classes x 2 camera-sized JPEGs (3-5 MB each) made from scikit-learn's real photos."""
    pytest.importorskip("sklearn")
    from toolkit.data.sample import write_photos

    return write_photos(module_tmp("photos") / "photos", per_class=2, size=PHOTO)


def _jpeg(size, orientation: int | None = None) -> bytes:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), np.uint8)).resize(size)
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    img.save(buf, "JPEG", quality=90, exif=exif.tobytes())
    return buf.getvalue()


def test_a_jpeg_is_decoded_at_the_smallest_scale_that_keeps_the_short_side():
    data = _jpeg((2000, 1500))
    assert open_rgb(data).size == (2000, 1500)
    assert open_rgb(data, min_short=150).size == (250, 188)  # 1/8: 188 >= 150
    assert open_rgb(data, min_short=200).size == (500, 375)  # 1/4: 1/8 would give 188 < 200
    assert open_rgb(data, min_short=700).size == (1000, 750)  # 1/2
    assert open_rgb(data, min_short=800).size == (2000, 1500)  # 1/2 would give 750 < 800
    png = io.BytesIO()
    Image.open(io.BytesIO(data)).save(png, "PNG")
    assert open_rgb(png.getvalue(), min_short=150).size == (2000, 1500)  # only JPEG scales


def test_exif_orientation_still_applies_to_a_scaled_decode():
    data = _jpeg((1600, 1200), orientation=6)  # rotate 90: the served image is portrait
    assert open_rgb(data).size == (1200, 1600)
    assert open_rgb(data, min_short=100).size == (150, 200)
    full = eval_uint8(open_rgb(data), {"resize": 110, "crop": 100})
    scaled = load_eval(data, {"resize": 110, "crop": 100})
    assert np.abs(full.astype(int) - scaled.astype(int)).mean() < 3  # the same orientation


def test_a_decompression_bomb_is_refused_before_decoding():
    bomb = bomb_png(9000, 9000)  # 81 MP of pixels
    assert len(bomb) < 1_000_000 and 9000 * 9000 > MAX_PIXELS
    with pytest.raises(ValueError, match="exceeds"):
        load_eval(bomb, {"resize": 33, "crop": 32})


def test_scaled_decoding_agrees_with_full_decoding_through_the_exported_graph(photos, exported):
    """The parity the README states: pixels, logits and top-1, scaled against full decoding."""
    from toolkit.backends import open_backend
    from toolkit.core.bundle import Bundle
    from toolkit.core.metrics import parity

    bundle = Bundle.load(exported)
    pre = bundle.preprocessing.to_json()
    files = sorted(photos.rglob("*.jpg"))
    full = np.stack([eval_uint8(open_rgb(p), pre) for p in files])
    scaled = np.stack([load_eval(p, pre) for p in files])
    assert open_rgb(files[0], min_short=pre["resize"]).size == (PHOTO[0] // 8, PHOTO[1] // 8)
    pixels = np.abs(full.astype(int) - scaled.astype(int))
    with open_backend("onnxruntime", bundle) as ort:
        ref, got = ort(full), ort(scaled)
    p = parity(ref, got, ref.argmax(1))
    largest = float(np.abs(ref - got).max())
    print(f"\nscaled vs full decoding, {len(files)} photos of {PHOTO[0]}x{PHOTO[1]}: pixels mean "
          f"{pixels.mean():.2f} max {pixels.max()}; logits max |diff| {largest:.4f} (logit range "
          f"{np.ptp(ref):.2f}); top-1 agreement {p['agreement']:.2%}")
    assert pixels.mean() < 2.0  # libjpeg's scaled IDCT against full decoding + antialiased resize
    assert p["confident_agreement"] == 1.0
    assert largest < 0.25 * max(1.0, float(np.ptp(ref)))


def test_training_decodes_photos_at_twice_the_crop(photos):
    from toolkit.core.manifest import Preprocess
    from toolkit.data.loaders import ImageDataset, train_min_short

    pre = Preprocess(resize=37, crop=32)
    assert train_min_short(pre, "standard") == 64 and train_min_short(pre, "none") == 37
    seen = []
    ds = ImageDataset([(p, 0) for p in sorted(photos.rglob("*.jpg"))], seen.append,
                      min_short=train_min_short(pre, "standard"))
    ds[0]
    assert seen[0].size == (PHOTO[0] // 8, PHOTO[1] // 8)  # 378 >= 64: an eighth is enough


def test_bench_with_the_users_own_photos_times_decoding_next_to_the_model(photos, exported, cli,
                                                                         tmp_path):
    out = tmp_path / "bench"
    result = cli("bench", exported, "--images", photos, "--backends", "onnxruntime",
                 "--batch-sizes", "2", "--duration", "0.6", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    (r,) = [r for r in report["results"] if r["backend"] == "onnxruntime"]
    assert r["status"] == "ok" and r["decode_ms_per_image"] > 0 and r["model_ms_per_image"] > 0
    assert "stable" in r and r["windows"] >= 1 and "other_cores_busy" in r["load"]
    assert report["images"] == str(photos) and report["data_pipeline"]["images"] == 4
    assert "decoding next to the model" in (out / "report.md").read_text()


def test_bench_images_must_be_a_folder_of_images(exported, cli, tmp_path):
    from conftest import assert_user_error

    (tmp_path / "empty").mkdir()
    assert_user_error(cli("bench", exported, "--images", tmp_path / "empty", "--backends", "torch"),
                      "holds no image files", "rtk inspect")
