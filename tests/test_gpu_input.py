"""The GPU input path on CPU tensors: byte reading, PIL fallback, eval parity, augmentation.

torchvision's decode_jpeg and every batched transform also run on the CPU, so all of the
path but nvJPEG and the CUDA stream runs here; the `gpu` tests run the rest on a device.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN, interrupt_training
from PIL import Image

from toolkit.data.gpu_transforms import EvalBatch, TrainBatch, color_jitter, crop_boxes, rotate_nearest
from toolkit.data.loaders import EpochShuffle, loader_settings, make_loader
from toolkit.data.gpu_input import ByteDataset, DeviceLoader, collate, decode, gpu_decodable
from toolkit.data.images import eval_array, open_rgb
from toolkit.data.transforms import AUGMENT, recipe

PRE = recipe(image_size=32)  # resize 33, crop 32
RAW = PRE.to_json()  # what images.py and the Triton models take (they import nothing of rtk)
BOUND = 1e-6  # measured: 0.0 (bitwise equal); one uint8 level is 1 / 255 / 0.229 = 0.0171


def _photo(h: int, w: int, seed: int) -> Image.Image:
    """A photo-like RGB image: blocks of colour with noise (hard on resize errors)."""
    rng = np.random.default_rng(seed)
    base = np.kron(rng.integers(0, 255, (8, 8, 3)), np.ones((h // 8 + 1, w // 8 + 1, 1)))
    arr = base[:h, :w] + rng.normal(0, 30, (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def _rotated_jpeg(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _jpeg(_photo(24, 40, 3), exif=exif.tobytes())


KINDS = {  # name -> (bytes, decoded by nvJPEG in batches?)
    "baseline": (lambda: _jpeg(_photo(40, 48, 0)), True),
    "progressive": (lambda: _jpeg(_photo(40, 48, 1), progressive=True), True),
    "exif_upright": (lambda: _rotated_jpeg(1), True),
    "exif_rotated": (lambda: _rotated_jpeg(6), False),
    "grayscale": (lambda: _jpeg(_photo(40, 48, 2).convert("L")), False),
    "cmyk": (lambda: _jpeg(_photo(40, 48, 2).convert("CMYK")), False),
    "png": (lambda: _png(_photo(40, 48, 4)), False),
}


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def files(module_tmp):
    """One file of each kind, label = index."""
    root = module_tmp("kinds")
    paths = []
    for name, (make, _) in KINDS.items():
        path = root / f"{name}.{'png' if name == 'png' else 'jpg'}"
        path.write_bytes(make())
        paths.append(path)
    return paths


@pytest.mark.parametrize("name", KINDS)
def test_only_plain_colour_jpegs_go_to_nvjpeg(name):
    make, expected = KINDS[name]
    assert gpu_decodable(make()) is expected


def test_gpu_decodable_refuses_garbage():
    for data in (b"", b"\xff\xd8", b"\xff\xd8\xff\xe1\x00", b"not a jpeg", _jpeg(_photo(8, 8, 0))[:20]):
        assert gpu_decodable(data) is False


def test_byte_dataset_reads_bytes_or_pil_pixels(files):
    ds = ByteDataset([(p, i) for i, p in enumerate(files)])
    assert len(ds) == len(KINDS)
    for (name, (_, to_gpu)), path, i in zip(KINDS.items(), files, range(len(files))):
        payload, label = ds[i]
        assert label == i and payload.dtype == torch.uint8
        if to_gpu:  # the file's own bytes, untouched
            assert payload.dim() == 1 and payload.numpy().tobytes() == path.read_bytes()
        else:  # the CPU path's pixels: EXIF orientation, any mode -> RGB
            expected = np.asarray(open_rgb(path)).transpose(2, 0, 1)
            assert payload.dim() == 3 and np.array_equal(payload.numpy(), expected), name
    assert tuple(ds[3][0].shape) == (3, 40, 24)  # orientation 6 turned the 24x40 image


def test_decode_gives_pil_pixels_for_every_kind(files):
    ds = ByteDataset([(p, i) for i, p in enumerate(files)])
    payloads, labels = collate([ds[i] for i in range(len(ds))])
    images, by_pil = decode(payloads, "cpu")
    assert by_pil == sum(not to_gpu for _, to_gpu in KINDS.values())
    assert labels.tolist() == list(range(len(files)))
    for img, path in zip(images, files):  # torchvision's libjpeg and PIL's agree exactly
        assert np.array_equal(img.numpy(), np.asarray(open_rgb(path)).transpose(2, 0, 1))


def test_a_refused_jpeg_falls_back_to_pil_alone(files, monkeypatch):
    """nvJPEG failing on one file fails its whole call: that file alone goes to PIL."""
    import torchvision.io

    real = torchvision.io.decode_jpeg
    bad = files[1].read_bytes()

    def picky(data, **kw):
        items = data if isinstance(data, list) else [data]
        if any(t.numpy().tobytes() == bad for t in items):
            raise RuntimeError("nvjpeg: unsupported")
        return real(data, **kw)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", picky)
    payloads = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in files[:3]]
    images, by_pil = decode(payloads, "cpu")
    assert by_pil == 1 and len(images) == 3  # nothing dropped
    for img, path in zip(images, files[:3]):
        assert np.array_equal(img.numpy(), np.asarray(open_rgb(path)).transpose(2, 0, 1))


def _eval_inputs(paths):
    """Both eval paths on the same files: PIL + eval_array, and bytes -> decode -> EvalBatch."""
    cpu = torch.stack([torch.from_numpy(eval_array(open_rgb(p), RAW)) for p in paths])
    ds = ByteDataset([(p, 0) for p in paths])
    images, _ = decode([ds[i][0] for i in range(len(ds))], "cpu")
    return cpu, EvalBatch(PRE)(images), images


@pytest.fixture(scope="module")
def real_images(module_tmp):
    """Real digits (grayscale PNG, upscaled 32 -> 33) and photo-like JPEGs of many shapes."""
    from toolkit.data.sample import write_digits

    root = module_tmp("real")
    digits = sorted(write_digits(root / "digits", size=32, per_class=2).rglob("*.png"))
    photos = []
    for i, (h, w) in enumerate([(256, 256), (300, 200), (200, 300), (40, 40), (31, 45),
                                (480, 640), (1000, 37), (33, 33), (64, 500)]):
        photos.append(root / f"photo_{i}.jpg")
        photos[-1].write_bytes(_jpeg(_photo(h, w, 10 + i)))
    return digits + photos


def test_gpu_eval_transform_equals_the_cpu_one(real_images):
    cpu, gpu, _ = _eval_inputs(real_images)
    assert gpu.shape == cpu.shape == (len(real_images), 3, 32, 32) and gpu.dtype == torch.float32
    assert gpu.is_contiguous(memory_format=torch.channels_last)
    assert (gpu - cpu).abs().max().item() <= BOUND
    torch.manual_seed(0)
    model = __import__("torchvision").models.resnet18(num_classes=10).eval()
    with torch.inference_mode():
        assert torch.equal(model(cpu).argmax(1), model(gpu).argmax(1))


def test_the_bound_catches_resize_and_crop_bugs(real_images):
    """A missing antialias or a crop one pixel off breaks the bound many times over."""
    from torchvision.transforms.v2 import functional as F

    cpu, _, images = _eval_inputs(real_images)
    norm = EvalBatch(PRE).normalize

    def variant(antialias: bool, shift: int):
        out = []
        for img in images:
            h, w = img.shape[-2:]
            s = PRE.resize / min(h, w)
            r = F.resize(img, [int(round(h * s)), int(round(w * s))], antialias=antialias)
            top, left = (r.shape[1] - 32) // 2 + shift, (r.shape[2] - 32) // 2
            out.append(r[:, top:top + 32, left:left + 32])
        return norm(torch.stack(out))

    assert (variant(False, 0) - cpu).abs().max().item() > 100 * BOUND
    assert (variant(True, 1) - cpu).abs().max().item() > 100 * BOUND


@pytest.mark.parametrize("level", list(AUGMENT))
def test_augmentation_levels_shapes_ranges_and_seeds(level):
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
              for h, w in [(40, 40), (50, 30), (32, 64), (100, 80), (33, 33)]]
    aug = TrainBatch(PRE, level)
    a = aug(images, torch.Generator().manual_seed(1))
    assert a.shape == (5, 3, 32, 32) and a.dtype == torch.float32
    assert a.is_contiguous(memory_format=torch.channels_last)
    mean, std = torch.tensor(PRE.mean).view(1, 3, 1, 1), torch.tensor(PRE.std).view(1, 3, 1, 1)
    pixels = a * std + mean  # back to 0..1
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
    assert torch.equal(a, aug(images, torch.Generator().manual_seed(1)))  # seeded
    other = aug(images, torch.Generator().manual_seed(2))
    assert torch.equal(a, other) == (level == "none")  # "none" is the eval transform
    if level == "none":
        assert torch.equal(a, EvalBatch(PRE)(images))


def test_crop_boxes_follow_random_resized_crop():
    sizes = [(40, 40), (50, 30), (32, 64), (100, 80), (8, 300)] * 20
    boxes = crop_boxes(sizes, (0.25, 1.0), torch.Generator().manual_seed(0))
    assert boxes == crop_boxes(sizes, (0.25, 1.0), torch.Generator().manual_seed(0))
    for (h, w), (top, left, bh, bw) in zip(sizes, boxes):
        assert 0 <= top and top + bh <= h and 0 <= left and left + bw <= w and bh > 0 and bw > 0
    fitted = [(bh * bw) / (h * w) for (h, w), (_, _, bh, bw) in zip(sizes[:4], boxes[:4])]
    assert all(0.2 <= f <= 1.0 for f in fitted)
    assert boxes[4][2:] == (8, 11)  # 8x300 fits no try: central crop at the 4:3 ratio limit


def test_batched_rotation_is_torchvisions_rotate():
    from torchvision.transforms.v2 import functional as F

    x = torch.randint(0, 256, (4, 3, 24, 40)).float()
    angles = torch.tensor([0.0, 10.0, -20.0, 90.0])
    ours = rotate_nearest(x, angles)
    for i, angle in enumerate(angles.tolist()):
        ref = F.rotate(x[i], angle, interpolation=F.InterpolationMode.NEAREST)
        assert (ours[i] == ref).float().mean() > 0.999


def test_color_jitter_identity_and_extremes():
    x = torch.rand(2, 3, 8, 8) * 255
    ones = torch.ones(2, 3)
    assert torch.allclose(color_jitter(x, ones, [0, 1, 2, 3], hue=torch.eye(3).expand(2, 3, 3)), x,
                          atol=1e-3)
    dark = color_jitter(x, torch.tensor([[0.0, 1, 1], [1, 1, 1]]), [0])
    assert dark[0].abs().max() == 0 and torch.allclose(dark[1], x[1])
    gray = color_jitter(x, torch.tensor([[1, 1, 0.0], [1, 1, 1]]), [2])
    assert torch.allclose(gray[0, 0], gray[0, 1]) and torch.allclose(gray[0, 1], gray[0, 2])


def test_device_loader_on_cpu_workers(files):
    """Workers read bytes; batches come out decoded, normalised and in sampler order."""
    ds = ByteDataset([(p, i) for i, p in enumerate(files)])
    loader = make_loader(ds, 3, shuffle=False, device="cpu", seed=0, collate_fn=collate,
                         random_workers=False)
    dl = DeviceLoader(loader, EvalBatch(PRE), "cpu")
    batches = list(dl.batches())
    assert len(batches) == len(dl) == 3
    xs, ys = zip(*batches)
    assert torch.cat(ys).tolist() == list(range(len(files)))
    cpu = torch.stack([torch.from_numpy(eval_array(open_rgb(p), RAW)) for p in files])
    assert torch.equal(torch.cat(xs), cpu)
    assert dl.decoded_by_pil == 4
    assert [len(y) for _, y in dl.batches(skip=2)] == [1]  # a resume skips whole batches


def test_loader_workers_follow_the_cores(monkeypatch):
    import toolkit.data.loaders

    monkeypatch.setattr(toolkit.data.loaders, "usable_cores", lambda: 16)
    assert loader_settings("cuda")["num_workers"] == 15
    assert loader_settings("cuda", distributed_world=2)["num_workers"] == 7
    monkeypatch.setattr(toolkit.data.loaders, "usable_cores", lambda: 1)
    assert loader_settings("cpu")["num_workers"] == 0


def test_epoch_shuffle_depends_on_seed_and_epoch_only():
    a = EpochShuffle(50, seed=3)
    first = list(a)
    assert sorted(first) == list(range(50)) and list(a) == first
    a.set_epoch(1)
    assert list(a) != first and sorted(a) == list(range(50))
    b = EpochShuffle(50, seed=3)
    b.set_epoch(1)
    assert list(b) == list(a)


def test_finetune_on_the_gpu_path_is_seeded(cli, tiny_data, tmp_path):
    """`--decode gpu` runs the batched path (here on CPU tensors); one seed, one model."""
    from toolkit.train.config import TrainConfig
    from toolkit.train.session import fit

    run = tmp_path / "cli"
    result = cli("finetune", tiny_data, "--out", run, *TINY_TRAIN, "--decode", "gpu",
                 "--augment", "heavy")
    assert result.exit_code == 0, result.output
    assert "decode gpu" in result.stderr and "decoded by PIL" in result.stderr
    fit(TrainConfig(data_dir=str(tiny_data), out=str(tmp_path / "lib"), arch="resnet18",
                    weights="none", image_size=32, epochs=1, batch_size=4, device="cpu",
                    decode="gpu", augment="heavy"), progress=False, echo=lambda *_: None)
    a, b = (torch.load(r / "model.pt", weights_only=True)["state_dict"] for r in (run, tmp_path / "lib"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_gpu_path_resumes_mid_epoch_exactly(tiny_data, tmp_path, monkeypatch):
    """Order (EpochShuffle) and augmentation (seeded per batch) survive a Ctrl-C mid-epoch."""
    from toolkit.train import session
    from toolkit.core.errors import RtkError
    from toolkit.train.config import TrainConfig
    from toolkit.train.session import fit

    def run(out, **kw):
        fit(TrainConfig(data_dir=str(tiny_data), out=str(out), arch="resnet18", weights="none",
                        image_size=32, epochs=2, batch_size=4, device="cpu", decode="gpu",
                        augment="standard", **kw), progress=False, echo=lambda *_: None)

    run(tmp_path / "ref")
    real = interrupt_training(monkeypatch, epoch=2, step=2)
    with pytest.raises(RtkError, match="Interrupted during epoch 2"):
        run(tmp_path / "run")
    monkeypatch.setattr(session, "train_one_epoch", real)
    run(tmp_path / "run", resume=True)
    ref, got = (torch.load(r / "last.pt", weights_only=True)["state_dict"]
                for r in (tmp_path / "ref", tmp_path / "run"))
    assert all(torch.equal(ref[k], got[k]) for k in ref)


@pytest.mark.gpu
def test_cuda_path_matches_the_cpu_tensors(real_images):
    """On a GPU: the eval transform is bitwise the CPU one on the same pixels; nvJPEG is close
    to libjpeg; augmentation runs on the device."""
    _, cpu_batch, images = _eval_inputs(real_images)
    on_gpu = EvalBatch(PRE)([img.cuda() for img in images])
    assert torch.equal(on_gpu.cpu(), cpu_batch)
    jpegs = [p for p in real_images if p.suffix == ".jpg"]
    payloads = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in jpegs]
    gpu_decoded, by_pil = decode(payloads, "cuda")
    assert by_pil == 0
    for img, path in zip(gpu_decoded, jpegs):
        diff = (img.cpu().int() - torch.from_numpy(np.asarray(open_rgb(path)).transpose(2, 0, 1)).int())
        assert diff.abs().float().mean() < 2.0  # IDCT/upsampling differ by a level or two
    x = TrainBatch(PRE, "heavy")(gpu_decoded, torch.Generator().manual_seed(0))
    assert x.is_cuda and x.shape == (len(jpegs), 3, 32, 32)
    assert x.is_contiguous(memory_format=torch.channels_last)


class _FakeStream:
    """Stands in for torch.cuda.current_stream(): records when the host waited on it."""

    def __init__(self, log):
        self.log = log

    def synchronize(self):
        self.log.append("drain")


def _recording_decode_jpeg(log):
    """torchvision's CPU decode_jpeg, recording each call's inputs (any `device` ignored)."""
    import torchvision.io

    real = torchvision.io.decode_jpeg

    def decode_jpeg(data, mode, device=None):
        log.append(("decode", [t.numpy().tobytes() for t in data]))
        return real(data, mode=mode)

    return decode_jpeg


def test_the_stream_is_drained_before_the_batched_nvjpeg_decode(files, monkeypatch):
    """pytorch/vision PR #9606: nvJPEG's private stream does not wait for ours, so the host
    waits first. The fake stream only shows the order of calls; the race needs a GPU."""
    import torchvision.io

    log = []
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: _FakeStream(log))
    monkeypatch.setattr(torchvision.io, "decode_jpeg", _recording_decode_jpeg(log))
    payloads = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in files[:2]]
    decode(payloads, "cuda")
    assert [e if e == "drain" else e[0] for e in log] == ["drain", "decode"]


def _triton_gpu_decoder(monkeypatch, log):
    """toolkit/triton/models/gpu_decode.py loaded as Triton loads it, running on CPU tensors."""
    import importlib.util
    from pathlib import Path

    import toolkit.triton

    path = Path(toolkit.triton.__file__).parent / "models" / "gpu_decode.py"
    spec = importlib.util.spec_from_file_location("rtk_gpu_decode", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "decode_jpeg", _recording_decode_jpeg(log))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: _FakeStream(log))
    decoder = module.GpuDecoder(0, RAW, toolkit.data.images)
    decoder.device = torch.device("cpu")
    return decoder


def test_triton_gpu_preprocessing_sends_nvjpeg_what_training_does(monkeypatch):
    """One rule (gpu_decodable) in both places; the stream drained first; a tensor (with
    __dlpack__, so Triton's python backend syncs streams), not a bare DLPack capsule."""
    from toolkit.data.images import eval_uint8

    log = []
    decoder = _triton_gpu_decoder(monkeypatch, log)
    datas = [make() for make, _ in KINDS.values()]
    out = decoder.batch(datas, lambda d: eval_uint8(open_rgb(d), RAW))
    assert log[0] == "drain" and log[1][0] == "decode"
    assert log[1][1] == [d for d, (_, to_gpu) in zip(datas, KINDS.values()) if to_gpu]
    assert isinstance(out, torch.Tensor) and hasattr(out, "__dlpack__")
    assert out.dtype == torch.uint8 and tuple(out.shape) == (len(datas), 32, 32, 3)
    for i, (_, to_gpu) in enumerate(KINDS.values()):
        if not to_gpu:  # the CPU transform's pixels, exactly
            assert np.array_equal(out[i].numpy(), eval_uint8(open_rgb(datas[i]), RAW))


def test_normalize_divides_by_device_tensors_not_a_host_scalar(monkeypatch):
    """CUDA turns x / (CPU scalar) into x * (1 / scalar), one ulp off on 126 byte values; a
    device tensor divisor keeps the division true (the CUDA result needs a GPU to check)."""
    from toolkit.data.gpu_transforms import Normalize

    divisors, real = [], torch.Tensor.div_
    monkeypatch.setattr(torch.Tensor, "div_", lambda self, other: divisors.append(other)
                        or real(self, other))
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(1, 3, 16, 16)
    Normalize(PRE)(x)
    assert len(divisors) == 2
    assert all(isinstance(d, torch.Tensor) and d.device == x.device for d in divisors)
    v = np.arange(256, dtype=np.float32)  # why: the reciprocal differs from NumPy's division
    assert (v * np.float32(1 / 255) != v / np.float32(255)).sum() == 126
