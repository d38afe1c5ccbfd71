"""Training throughput, in stages (one process each in benchmarks/gpu_run.sh):

- step (default): rtk's training step against a plain torchvision eager-FP32 loop (TF32
  off, so FP32 means FP32 on Ampere and later), on the same decoded batches, model, batch
  size and machine, one after the other. rtk's step is
  toolkit.train.loop.train_one_epoch with the runtime `rtk finetune` picks (bf16/fp16 autocast,
  channels_last; torch.compile and fused AdamW on CUDA). Writes a JSON and a Markdown line
  under --out, or the JSON alone to --json.
- pipeline: the input pipeline alone, no model: PIL decode + augmentation in DataLoader
  workers ("cpu"), and byte-reading workers + nvJPEG + batched augmentation ("gpu", CUDA only).
  The clock starts after num_workers x prefetch_factor batches (what the workers decoded
  before the first one was asked for), then times --steps batches (about 100).
- finetune: `rtk finetune` end to end (toolkit.train.session.fit) for --epochs; images/s per epoch
  and the mean over the epochs after the first (which holds torch.compile's warm-up).

    python benchmarks/train_throughput.py --arch resnet50 --image-size 224 --batch-size 16
    python benchmarks/train_throughput.py --stage pipeline --make-jpegs 4000 --data /tmp/j
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import time
from pathlib import Path

import torch
import torchvision

from toolkit.bench.system import environment
from toolkit.data.loaders import ImageDataset, make_loader
from toolkit.train.loop import Runtime, make_optimizer, train_one_epoch, warmup_cosine
from toolkit.core.host import pick_amp_dtype
from toolkit.data.transforms import recipe, train_transform
from toolkit.data.sample import write_digits
from toolkit.data.scan import scan_folder


def loader(samples, pre, batch, steps):
    ds = ImageDataset(samples, train_transform(pre, "light"))
    dl = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=0, drop_last=True)
    return [b for b in itertools.islice(itertools.cycle(dl), steps)]  # decoded once, reused


@contextlib.contextmanager
def strict_fp32():
    """TF32 off for cuDNN convolutions and matmuls: cuDNN runs convolutions in TF32 by
    default (torch.backends.cudnn.allow_tf32), so "FP32" would otherwise be TF32."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def plain_loop(model, batches):
    """What a typical torchvision script does: eager FP32 (strict_fp32), NCHW, AdamW step."""
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
    crit = torch.nn.CrossEntropyLoss()
    model.train()
    for x, y in batches:
        opt.zero_grad()
        crit(model(x), y).backward()
        opt.step()


def rtk_loop(model, batches, device, compile_):
    rt = Runtime(device, pick_amp_dtype(device, True))
    model = model.to(memory_format=torch.channels_last)
    if compile_:
        model = torch.compile(model)
    opt = make_optimizer(model.parameters(), 5e-5, 0.05, device=device)  # fused on CUDA, as rtk
    sched = warmup_cosine(opt, len(batches), 1)
    scaler = torch.amp.GradScaler(device, enabled=rt.amp_dtype == torch.float16)
    train_one_epoch(model, batches, opt, scheduler=sched, scaler=scaler, rt=rt)
    return rt


def timed(fn, n_images, device):
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return n_images / (time.perf_counter() - t)


def step_stage(args) -> dict:
    """rtk's step against the plain eager-FP32 loop, on batches decoded once beforehand."""
    if not Path(args.data).is_dir():
        write_digits(args.data, size=32)
    samples = scan_folder(args.data).samples
    pre = recipe(image_size=args.image_size)
    total = args.warmup_steps + args.steps
    batches = loader(samples, pre, args.batch_size, total)
    dev = [(x.to(args.device), y.to(args.device)) for x, y in batches]
    warm, timed_batches = dev[: args.warmup_steps], dev[args.warmup_steps:]
    n = args.steps * args.batch_size
    compile_ = args.device == "cuda"

    model = torchvision.models.get_model(args.arch, num_classes=10).to(args.device)
    with strict_fp32():
        plain_loop(model, warm)
        plain = timed(lambda: plain_loop(model, timed_batches), n, args.device)

    model = torchvision.models.get_model(args.arch, num_classes=10).to(args.device)
    rtk_loop(model, warm, args.device, compile_)  # the same module keeps compiled graphs warm
    rt = None

    def run():
        nonlocal rt
        rt = rtk_loop(model, timed_batches, args.device, compile_)

    fast = timed(run, n, args.device)
    return {"plain_eager_fp32_images_per_s": plain, "rtk_images_per_s": fast,
            "train_step_images_per_s": fast, "speedup": fast / plain,
            "rtk_amp_dtype": str(rt.amp_dtype), "compile": compile_,
            "plain_tf32": False}


def warmup_batches(loader) -> int:
    """Batches the workers have decoded before the first is asked for, at most: the first
    num_workers x prefetch_factor come from the queue, not at the pipeline's rate."""
    workers = getattr(loader, "num_workers", 0)
    return max(1, workers * (getattr(loader, "prefetch_factor", None) or 0))


def _rate(batches, n_batches: int, device: str, skip: int) -> dict:
    """Images/s over `n_batches` after `skip` (worker start-up and prefetch are not the
    pipeline's rate); refuses a loader too short to time them all."""
    it = iter(batches)
    for _ in range(skip):
        next(it)
    if device == "cuda":
        torch.cuda.synchronize()
    t, images, timed_ = time.perf_counter(), 0, 0
    for _, (x, y) in zip(range(n_batches), it):
        x = x.to(device, non_blocking=True)
        images, timed_ = images + len(y), timed_ + 1
    if device == "cuda":
        torch.cuda.synchronize()
    if timed_ < n_batches:
        raise SystemExit(f"only {timed_} of {n_batches} batches after skipping {skip}: "
                         "give --data more images (--make-jpegs)")
    return {"images_per_s": images / (time.perf_counter() - t), "skipped_batches": skip,
            "timed_batches": timed_}


def pipeline_stage(args) -> dict:
    """Decode + augmentation alone, workers sized as rtk sizes them, batch --batch-size."""
    from toolkit.data.gpu_transforms import TrainBatch
    from toolkit.data.loaders import loader_settings
    from toolkit.data.gpu_input import ByteDataset, DeviceLoader, collate

    samples = scan_folder(args.data).samples
    pre = recipe(image_size=args.image_size)
    common = {"shuffle": True, "device": args.device, "seed": 0, "drop_last": True}
    cpu_ds = ImageDataset(samples, train_transform(pre, args.augment))
    cpu_loader = make_loader(cpu_ds, args.batch_size, **common)
    cpu = _rate(cpu_loader, args.steps, args.device, warmup_batches(cpu_loader))
    result = {"data_pipeline_images_per_s": {"cpu": cpu.pop("images_per_s"), "gpu": None},
              "timing": {"cpu": cpu}, "augment": args.augment,
              "workers": loader_settings(args.device)["num_workers"]}
    if args.device != "cuda":
        result["gpu_note"] = "no CUDA device: nvJPEG not measured"
        return result
    byte_loader = make_loader(ByteDataset(samples), args.batch_size, collate_fn=collate,
                              random_workers=False, **common)
    gpu = DeviceLoader(byte_loader, TrainBatch(pre, args.augment), args.device)
    rate = _rate(gpu.batches(), args.steps, args.device, warmup_batches(byte_loader))
    result["data_pipeline_images_per_s"]["gpu"] = rate.pop("images_per_s")
    result["timing"]["gpu"] = rate
    return result


def finetune_stage(args) -> dict:
    """`rtk finetune` (the library call the CLI makes) on --data for --epochs."""
    import csv
    import tempfile

    from toolkit.train.config import TrainConfig
    from toolkit.train.session import fit

    out = Path(args.bundle or Path(tempfile.mkdtemp(prefix="rtk-e2e-")) / "run")
    cfg = TrainConfig(data_dir=args.data, out=str(out), arch=args.arch, weights="none",
                      image_size=args.image_size, epochs=args.epochs, batch_size=args.batch_size,
                      lr=2e-4, device=args.device, decode=args.decode, augment=args.augment)
    fit(cfg, progress=False)
    with open(out / "history.csv") as f:
        per_epoch = [float(r["images_per_second"]) for r in csv.DictReader(f)]
    steady = per_epoch[1:] or per_epoch
    return {"finetune_end_to_end_images_per_s": sum(steady) / len(steady),
            "finetune_epoch_images_per_s": per_epoch, "epochs": args.epochs,
            "decode": args.decode or ("gpu" if args.device == "cuda" else "cpu"),
            "augment": args.augment, "run": str(out)}


def parity_stage(args) -> dict:
    """The eval inputs of the GPU path (nvJPEG + EvalBatch on --device) against the CPU path
    (PIL + eval_array) on the first --steps batches: max and mean |difference|, and top-1
    agreement of the --bundle model (from the finetune stage) or a seeded untrained one."""
    from toolkit.data.gpu_transforms import EvalBatch
    from toolkit.train.checkpoint import load
    from toolkit.data.gpu_input import ByteDataset, DeviceLoader, collate
    from toolkit.data.images import eval_array, open_rgb

    samples = scan_folder(args.data).samples[: args.steps * args.batch_size]
    pre = recipe(image_size=args.image_size)
    model = torchvision.models.get_model(args.arch, num_classes=10)
    trained = trained_checkpoint(args.bundle)
    if trained is not None:
        model.load_state_dict(load(trained)["state_dict"])
    model = model.to(args.device).eval()
    byte_loader = make_loader(ByteDataset(samples), args.batch_size, shuffle=False,
                              device=args.device, seed=0, collate_fn=collate,
                              random_workers=False)
    worst, total, agree = 0.0, 0.0, 0
    with torch.inference_mode():
        for i, (x, _) in enumerate(DeviceLoader(byte_loader, EvalBatch(pre), args.device).batches()):
            chunk = samples[i * args.batch_size:(i + 1) * args.batch_size]
            ref = torch.stack([torch.from_numpy(eval_array(open_rgb(path), pre))
                               for path, _ in chunk]).to(args.device)
            diff = (x - ref).abs()
            worst, total = max(worst, diff.max().item()), total + diff.mean().item() * len(chunk)
            agree += (model(x).argmax(1) == model(ref).argmax(1)).sum().item()
    return {"eval_parity": {"images": len(samples), "max_abs_diff": worst,
                            "mean_abs_diff": total / len(samples),
                            "top1_agreement": agree / len(samples),
                            "trained_model": trained is not None}}


def trained_checkpoint(bundle: str | None) -> Path | None:
    """model.pt of a fine-tuning run that completed, else None: a failed or timed-out
    `finetune` stage leaves a run folder, perhaps a model.pt, but status "training"."""
    manifest = Path(bundle or "") / "manifest.json"
    if not bundle or not manifest.is_file():
        return None
    if json.loads(manifest.read_text()).get("status") != "complete":
        return None
    return manifest.parent / "model.pt"


def _jpeg(task) -> None:
    import numpy as np
    from PIL import Image

    path, seed, side = task
    rng = np.random.default_rng(seed)
    cells = np.kron(rng.integers(0, 255, (8, 8, 3)), np.ones((side // 8, side // 8, 1)))
    img = np.clip(cells + rng.normal(0, 40, (side, side, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path, quality=90)


def make_jpegs(root: str, n: int, side: int = 256, classes: int = 10) -> None:
    """`n` photo-like `side`-px JPEGs in `classes` folders (a class is a colour layout)."""
    from multiprocessing import Pool

    from toolkit.core.host import usable_cores

    tasks = []
    for i in range(n):
        folder = Path(root) / f"class_{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        tasks.append((folder / f"{i}.jpg", i, side))
    with Pool(usable_cores()) as pool:
        pool.map(_jpeg, tasks, chunksize=64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", choices=["data", "step", "pipeline", "finetune", "parity"],
                    default="step")
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=12,
                    help="Timed steps (batches for pipeline: about 100).")
    ap.add_argument("--warmup-steps", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3, help="finetune stage.")
    ap.add_argument("--augment", default="standard", help="pipeline and finetune stages.")
    ap.add_argument("--decode", choices=["cpu", "gpu"], help="finetune stage (default: rtk's).")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--data", default="/tmp/rtk-bench-digits")
    ap.add_argument("--make-jpegs", type=int, default=0, help="First write N 256 px JPEGs to --data.")
    ap.add_argument("--out", default="benchmarks/cpu")
    ap.add_argument("--json", help="Write this stage's JSON here (and no Markdown).")
    ap.add_argument("--bundle", help="Run directory: finetune writes it, parity reads it.")
    args = ap.parse_args()

    torch.manual_seed(0)
    if args.make_jpegs and not Path(args.data).is_dir():
        make_jpegs(args.data, args.make_jpegs)
    stage = {"step": step_stage, "pipeline": pipeline_stage, "finetune": finetune_stage,
             "parity": parity_stage, "data": lambda a: {"images": len(scan_folder(a.data).samples)}}
    result = {"stage": args.stage, "arch": args.arch, "image_size": args.image_size,
              "batch_size": args.batch_size, "steps": args.steps, "device": args.device,
              **stage[args.stage](args), "environment": environment()}
    print(json.dumps({k: v for k, v in result.items() if k != "environment"}))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    elif args.stage == "step":
        write_step_report(result, Path(args.out))


def write_step_report(result: dict, out: Path) -> None:
    """train_throughput.json and .md under `out` (the CPU report's files)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    plain, fast = result["plain_eager_fp32_images_per_s"], result["rtk_images_per_s"]
    line = (f"{result['arch']} {result['image_size']}px batch {result['batch_size']} on "
            f"{result['device']}: plain eager FP32 (no TF32) {plain:.1f} img/s, rtk "
            f"({result['rtk_amp_dtype']}, channels_last"
            f"{', compile' if result['compile'] else ''}) {fast:.1f} img/s: {fast / plain:.2f}x")
    env = result["environment"]
    (out / "train_throughput.md").write_text(f"# Training throughput\n\n{env['date']}, "
                                             f"{env['cpu']}\n\n{line}\n")
    print(line)


if __name__ == "__main__":
    main()
