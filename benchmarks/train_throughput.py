"""Training throughput: rtk's training step against a plain torchvision eager-FP32 loop.

Both run on the same images, model, batch size and machine, in one process, one after
the other. rtk's step is toolkit.loop.train_one_epoch with the runtime `rtk finetune`
picks (bf16/fp16 autocast, channels_last; torch.compile on CUDA). Writes a JSON and a
Markdown line under --out.

    python benchmarks/train_throughput.py --arch resnet50 --image-size 224 --batch-size 16
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch
import torchvision

from toolkit.bench.system import environment
from toolkit.data import ImageDataset
from toolkit.loop import Runtime, pick_amp_dtype, train_one_epoch, warmup_cosine
from toolkit.preprocess import recipe, train_transform
from toolkit.sample import write_digits
from toolkit.scan import scan_folder


def loader(samples, pre, batch, steps):
    ds = ImageDataset(samples, train_transform(pre, "light"))
    dl = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=0, drop_last=True)
    return [b for b in itertools.islice(itertools.cycle(dl), steps)]  # decoded once, reused


def plain_loop(model, batches):
    """What a typical torchvision script does: eager FP32, NCHW, SGD step."""
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
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
    sched = warmup_cosine(opt, len(batches), 1)
    scaler = torch.amp.GradScaler(device, enabled=rt.amp_dtype == torch.float16)
    train_one_epoch(model, batches, opt, sched, scaler, rt)
    return rt


def timed(fn, n_images, device):
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return n_images / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup-steps", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--data", default="/tmp/rtk-bench-digits")
    ap.add_argument("--out", default="benchmarks/cpu")
    args = ap.parse_args()

    torch.manual_seed(0)
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
    plain_loop(model, warm)
    plain = timed(lambda: plain_loop(model, timed_batches), n, args.device)

    model = torchvision.models.get_model(args.arch, num_classes=10).to(args.device)
    rtk_loop(model, warm, args.device, compile_)  # the same module keeps compiled graphs warm
    rt = None

    def run():
        nonlocal rt
        rt = rtk_loop(model, timed_batches, args.device, compile_)

    fast = timed(run, n, args.device)
    result = {"arch": args.arch, "image_size": args.image_size, "batch_size": args.batch_size,
              "steps": args.steps, "device": args.device,
              "plain_eager_fp32_images_per_s": plain, "rtk_images_per_s": fast,
              "speedup": fast / plain, "rtk_amp_dtype": str(rt.amp_dtype), "compile": compile_,
              "environment": environment()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    line = (f"{args.arch} {args.image_size}px batch {args.batch_size} on {args.device}: "
            f"plain eager FP32 {plain:.1f} img/s, rtk ({rt.amp_dtype}, channels_last"
            f"{', compile' if compile_ else ''}) {fast:.1f} img/s: {fast / plain:.2f}x")
    (out / "train_throughput.md").write_text(f"# Training throughput\n\n{result['environment']['date']}, "
                                             f"{result['environment']['cpu']}\n\n{line}\n")
    print(line)


if __name__ == "__main__":
    main()
