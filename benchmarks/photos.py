"""Camera photos against small JPEGs, on this CPU, in one run (issue 29).

Made here: 12-megapixel JPEGs (4032x3024, 3-5 MB) from scikit-learn's two real photographs
(toolkit.data.sample.write_photos), and the same images at 320x240. Measured:

- served: the default CPU deployment (`rtk triton --platform python`: INT8 when its gate
  passed, else FP32; ResNet-50 at 224 px, trained briefly from scratch on the digits as
  JPEGs), JPEG bytes through the ensemble, gRPC at concurrency 8, measured by `rtk bench
  --images` in stable windows, with Triton's per-model times;
- `rtk eval` images/s on a folder of 12 MP photos (the library call, decoding included);
- `rtk finetune` images/s (ResNet-18, 64 px, from scratch) on the 12 MP photos and at 320x240;
- with --before COMMIT, the served and eval figures of that commit's code too (a git worktree:
  its own `rtk triton`/`rtk serve` and `evaluate`), so before and after come from one run.

  python benchmarks/photos.py --out benchmarks/cpu/photos [--before cbeba6c] [--run RUN]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def rtk(*args, tree: Path = ROOT, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """`python -m toolkit ARGS` from `tree`: run in that folder, whose path `-m` puts first
    (ahead of the editable install of this tree)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([PY, "-m", "toolkit", *map(str, args)], env=env, check=check, text=True,
                          capture_output=True, cwd=tree, **kw)


def make_photos(work: Path, per_class: int) -> dict[str, Path]:
    from PIL import Image

    from toolkit.data.sample import write_photos

    big = write_photos(work / "12mp", per_class=per_class)
    small = work / "320x240"
    for p in big.rglob("*.jpg"):
        (small / p.parent.name).mkdir(parents=True, exist_ok=True)
        Image.open(p).resize((320, 240), Image.BICUBIC).save(small / p.parent.name / p.name, quality=92)
    return {"12mp": big, "320x240": small}


def train_resnet50(work: Path) -> Path:
    """The serving benchmark's model: ResNet-50 at 224 px on the digits as 256 px JPEGs."""
    from PIL import Image

    from toolkit.data.sample import write_digits

    data = write_digits(work / "digits", size=32, per_class=24)
    for png in list(data.rglob("*.png")):
        Image.open(png).convert("RGB").resize((256, 256)).save(png.with_suffix(".jpg"), quality=90)
        png.unlink()
    run = work / "resnet50"
    rtk("finetune", data, "--out", run, "--weights", "none", "--epochs", 2, "--batch-size", 16,
        "--lr", "5e-4", "--augment", "none", "--no-progress")
    return run


def export(run: Path) -> dict:
    done = rtk("export", run, "--int8", "--calib-size", 64, "--max-batch", 16, "--format", "onnx",
               check=False)
    if done.returncode not in (0, 3):  # 3: INT8 refused by its gate, FP32 is served
        raise SystemExit(done.stdout + done.stderr)
    return {"exit": done.returncode, "int8_trusted": done.returncode == 0}


def served(run: Path, photos: dict[str, Path], work: Path, *, tree: Path, label: str,
           seconds: float) -> dict:
    """`tree`'s rtk triton + rtk serve; this tree's `rtk bench --images` as the client."""
    from toolkit.triton.server import free_port

    repo = work / f"repo_{label}"
    out = {"triton": rtk("triton", run, "--repo", repo, "--platform", "python", tree=tree).stdout}
    http, grpc, metrics = free_port(), free_port(), free_port()
    server = subprocess.Popen([PY, "-m", "toolkit", "serve", repo, "--http-port", str(http),
                               "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--quiet"],
                              env={**os.environ, "PYTHONPATH": str(tree)}, cwd=tree,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_ready(http, server)
        for name, folder in photos.items():
            res = rtk("bench", run, "--backends", "triton", "--images", folder, "--concurrency", 8,
                      "--protocols", "grpc", "--duration", seconds, "--triton-url",
                      f"127.0.0.1:{http}", "--triton-grpc-url", f"127.0.0.1:{grpc}",
                      "--out", work / f"bench_{label}_{name}", "--json")
            rows = [r for r in json.loads(res.stdout)["results"]
                    if r["backend"] == "triton" and r.get("protocol") == "grpc"]
            out[name] = {k: rows[0].get(k) for k in ("throughput", "p50_ms", "p99_ms", "stable",
                                                     "spread_pct", "windows", "status", "server", "load")}
    finally:
        server.terminate()
        server.wait(timeout=60)
    out["ratio_12mp_over_320x240"] = out["12mp"]["throughput"] / out["320x240"]["throughput"]
    return out


def _wait_ready(port: int, server: subprocess.Popen) -> None:
    import urllib.request

    for _ in range(300):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2)
            return
        except OSError as exc:
            if server.poll() is not None:
                raise SystemExit("rtk serve exited before it was ready") from exc
            time.sleep(1)
    raise SystemExit("rtk serve was not ready within 300 s")


EVAL = """
import json, sys, time
from toolkit.core.bundle import Bundle
from toolkit.evaluate import evaluate
bundle = Bundle.load(sys.argv[1])
t0 = time.perf_counter()
r = evaluate(bundle, sys.argv[2], sys.argv[3])
print(json.dumps({"images": r["n"], "seconds": time.perf_counter() - t0}))
"""


def eval_speed(run: Path, folder: Path, backend: str, tree: Path) -> dict:
    """images/s of the library's evaluate (backend opening included, equal for both trees)."""
    done = subprocess.run([PY, "-c", EVAL, str(run), str(folder), backend], check=True, text=True,
                          capture_output=True, env={**os.environ, "PYTHONPATH": str(tree)}, cwd=tree)
    r = json.loads(done.stdout.strip().splitlines()[-1])
    return {**r, "images_per_second": r["images"] / r["seconds"]}


def finetune_speed(data: Path, out: Path, tree: Path) -> dict:
    rtk("finetune", data, "--out", out, "--arch", "resnet18", "--image-size", 64, "--weights", "none",
        "--epochs", 3, "--batch-size", 8, "--no-progress", tree=tree)
    rows = list(csv.DictReader(open(out / "history.csv")))
    return {"epochs": len(rows), "train_images_per_second_last_epoch": float(rows[-1]["images_per_second"])}


def as_eval_folder(folder: Path, work: Path, name: str, repeats: int = 4) -> Path:
    """The photos under class folders the digits run knows ("0", "1"), each linked `repeats`
    times (enough images that opening the backend is a small part): eval speed, not accuracy."""
    dst = work / name
    for i, cls in enumerate(sorted(p for p in folder.iterdir() if p.is_dir())):
        (dst / str(i)).mkdir(parents=True, exist_ok=True)
        for p in cls.iterdir():
            for r in range(repeats):
                (dst / str(i) / f"r{r}_{p.name}").symlink_to(p)
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/cpu/photos")
    ap.add_argument("--before", help="a commit whose code is measured too (served, eval, finetune)")
    ap.add_argument("--run", help="reuse a trained and exported ResNet-50 run")
    ap.add_argument("--per-class", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    from toolkit.bench.system import environment

    work = Path(tempfile.mkdtemp(prefix="rtk-photos-"))
    trees = {"after": ROOT}
    if args.before:
        subprocess.run(["git", "worktree", "add", "--detach", str(work / "before_tree"), args.before],
                       cwd=ROOT, check=True, capture_output=True)
        trees["before"] = work / "before_tree"
    flags = set(open("/proc/cpuinfo").read().split()) if Path("/proc/cpuinfo").exists() else set()
    result = {"environment": environment(), "before_commit": args.before,
              "cpu_flags": sorted(flags & {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile"})}
    try:
        photos = make_photos(work, args.per_class)
        result["photos"] = {k: {"images": len(list(v.rglob("*.jpg"))), "mb_per_image": round(
            sum(p.stat().st_size for p in v.rglob("*.jpg")) / len(list(v.rglob("*.jpg"))) / 1e6, 2)}
            for k, v in photos.items()}
        run = Path(args.run).resolve() if args.run else train_resnet50(work)
        if not args.run:
            result["export"] = export(run)
        else:
            from toolkit.core.bundle import Bundle

            result["export"] = {"reused_run": True,
                                "int8_trusted": Bundle.load(run).manifest.trusted("model.int8.onnx")}
        for label, tree in trees.items():
            print(f"served ({label})...", file=sys.stderr)
            result[f"served_{label}"] = served(run, photos, work, tree=tree, label=label,
                                               seconds=args.seconds)
        evals = {k: as_eval_folder(v, work, f"eval_{k}") for k, v in photos.items()}
        for label, tree in trees.items():
            print(f"eval ({label})...", file=sys.stderr)
            result[f"eval_{label}"] = {f"{b} {k}": eval_speed(run, folder, b, tree)
                                       for b in ("torch", "onnxruntime-int8" if result.get(
                                           "export", {}).get("int8_trusted", True) else "onnxruntime")
                                       for k, folder in evals.items()}
        for label, tree in trees.items():
            print(f"finetune ({label})...", file=sys.stderr)
            result[f"finetune_{label}"] = {k: finetune_speed(v, work / f"ft_{label}_{k}", tree)
                                           for k, v in photos.items()}
    finally:
        if args.before:
            subprocess.run(["git", "worktree", "remove", "--force", str(work / "before_tree")], cwd=ROOT,
                           capture_output=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2, default=str).replace(str(work), "WORK")
    (out / "photos.json").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
