"""Which JPEG decoder serves rtk's decode rule best: full PIL decoding against DCT-scaled
decoding by PIL (`draft`), simplejpeg and PyTurboJPEG, each followed by the same resize and
center crop (toolkit.data.images.eval_uint8), on the same camera-sized JPEGs, interleaved.

Per candidate: ms per image (median round), and the pixel difference from full decoding after
the resize and crop. Candidates whose package is missing are reported as such.

  python benchmarks/decode_candidates.py PHOTOS_DIR [--resize 232 --crop 224] [--json OUT]
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from toolkit.data.images import eval_uint8, load_eval, open_rgb


def candidates(pre: dict) -> dict:
    """name -> (bytes -> uint8 crop), or the reason it cannot run."""
    out = {"pil_full": lambda b: eval_uint8(open_rgb(b), pre),
           "pil_draft": lambda b: load_eval(b, pre)}
    try:
        import simplejpeg

        out["simplejpeg"] = lambda b: eval_uint8(Image.fromarray(simplejpeg.decode_jpeg(
            b, colorspace="RGB", min_height=pre["resize"], min_width=pre["resize"])), pre)
    except ImportError as exc:
        out["simplejpeg"] = f"not installed ({exc})"
    try:
        from turbojpeg import TurboJPEG

        tj = TurboJPEG()

        def turbo(b: bytes):
            w, h = Image.open(io.BytesIO(b)).size
            factor = next((f for f in ((1, 8), (1, 4), (1, 2))
                           if min(w, h) * f[0] // f[1] >= pre["resize"]), (1, 1))
            rgb = tj.decode(b, pixel_format=0, scaling_factor=factor)  # TJPF_RGB
            return eval_uint8(Image.fromarray(rgb), pre)

        out["pyturbojpeg"] = turbo
    except (ImportError, RuntimeError, OSError) as exc:
        out["pyturbojpeg"] = f"not available ({exc})"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("photos")
    ap.add_argument("--resize", type=int, default=232)
    ap.add_argument("--crop", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args()
    pre = {"resize": args.resize, "crop": args.crop}
    datas = [p.read_bytes() for p in sorted(Path(args.photos).rglob("*.jpg"))]
    runs = candidates(pre)
    ready = {k: f for k, f in runs.items() if callable(f)}
    reference = [ready["pil_full"](b) for b in datas]
    times: dict[str, list[float]] = {k: [] for k in ready}
    for _ in range(args.rounds):  # interleaved: a busy moment hits every candidate alike
        for name, fn in ready.items():
            t0 = time.perf_counter()
            for b in datas:
                fn(b)
            times[name].append((time.perf_counter() - t0) * 1000 / len(datas))
    result = {"images": len(datas), "size": list(Image.open(io.BytesIO(datas[0])).size),
              "mb_per_image": round(sum(map(len, datas)) / len(datas) / 1e6, 2),
              "resize": args.resize, "crop": args.crop, "candidates": {}}
    for name, fn in runs.items():
        if not callable(fn):
            result["candidates"][name] = {"status": fn}
            continue
        diff = np.concatenate([np.abs(fn(b).astype(int) - r.astype(int)).ravel()
                               for b, r in zip(datas, reference)])
        ms = float(np.median(times[name]))
        result["candidates"][name] = {
            "ms_per_image": round(ms, 1), "speedup_vs_full": round(np.median(times["pil_full"]) / ms, 2),
            "mean_abs_diff": round(float(diff.mean()), 3), "max_abs_diff": int(diff.max())}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
