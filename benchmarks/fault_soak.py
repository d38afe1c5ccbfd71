"""Fault soak: `rtk serve` under steady load while the classifier's backend process is killed.

Concurrency-8 JPEG requests through the ensemble for 5 minutes (by default). Halfway through,
the classifier's `triton_python_backend_stub` gets SIGKILL, as from the kernel's OOM killer.
Requests are sent without client retries, so every failure is counted. Reports requests,
failures by reason, the time until service returned, the slowest request (nothing may hang),
and the server's RSS (tritonserver plus its backend processes) at start and end, as
fault_soak.json and fault_soak.md under --out.

    python benchmarks/fault_soak.py                  # trains the demo's model first (~2 min)
    python benchmarks/fault_soak.py RUN --duration 60 --out /tmp/soak
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from toolkit.bench.system import environment, rss_mb
from toolkit.triton.watchdog import live_stubs

RTK = [sys.executable, "-m", "toolkit"]
MODEL = "soak"  # the ensemble's name in the generated repository


def sh(*args, **kwargs) -> None:
    print("+ rtk", " ".join(map(str, args)), flush=True)
    if subprocess.run([*RTK, *map(str, args)], **kwargs).returncode:
        raise SystemExit(f"rtk {args[0]} failed (its error is above)")


def demo_run(work: Path, arch: str) -> Path:
    """The demo's flow, shortened: sample digits, one epoch from scratch at 64 px, export."""
    sh("sample-data", work / "data")
    sh("finetune", work / "data", "--out", work / "run", "--arch", arch, "--weights", "none",
       "--image-size", "64", "--epochs", "1", "--batch-size", "32", "--lr", "5e-4",
       "--augment", "none", "--no-progress")
    sh("export", work / "run", "--max-batch", "32")
    return work / "run"


def jpegs(run: Path, n: int = 64) -> list[bytes]:
    """Held-out images of the run, re-encoded as JPEG (what a camera or browser sends)."""
    from PIL import Image

    from toolkit.core.bundle import Bundle
    from toolkit.backends.run import validation_samples

    out = []
    for path, _ in validation_samples(Bundle.load(run))[:n]:
        buf = io.BytesIO()
        Image.open(path).convert("RGB").save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


class Server:
    """`rtk serve` in a subprocess, and the processes it runs."""

    def __init__(self, repo: Path, port: int, log: Path):
        self.port, self.log = port, log
        self.proc = subprocess.Popen(
            [*RTK, "serve", str(repo), "--http-port", str(port), "--grpc-port", str(port + 1),
             "--metrics-port", str(port + 2), "--quiet"], stdout=log.open("w"),
            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 300
        while "Press Ctrl-C to stop." not in log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("rtk serve did not start:\n" + log.read_text())
            time.sleep(0.5)

    def tritonserver(self) -> int:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                    if (int(stat.rsplit(")", 1)[1].split()[1]) == self.proc.pid
                            and (entry / "comm").read_text().strip() == "tritonserver"):
                        return int(entry.name)
                except (OSError, ValueError):
                    continue
        raise SystemExit("no tritonserver under rtk serve")

    def rss_mib(self) -> dict[str, float]:
        """VmRSS of tritonserver and of each backend process, in MiB."""
        server = self.tritonserver()
        pids = {"tritonserver": server, **{f"stub {m} ({p})": p for p, m in live_stubs(server).items()}}
        return {name: round(rss_mb(pid) or 0.0, 1) for name, pid in pids.items()}

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=120)


def load(url: str, images: list[bytes], concurrency: int, seconds: float,
         at_half=None) -> list[tuple[float, float, str | None]]:
    """(start, latency, error) of every request; `at_half()` runs once, halfway."""
    import tritonclient.grpc as lib

    records, lock, start = [], threading.Lock(), time.monotonic()
    end = start + seconds

    def worker(seed: int) -> None:
        client, rng, mine = lib.InferenceServerClient(url), np.random.default_rng(seed), []
        while time.monotonic() < end:
            inp = lib.InferInput("image", [1, 1], "BYTES")
            inp.set_data_from_numpy(np.array([[images[rng.integers(len(images))]]], dtype=object))
            t0 = time.monotonic()
            try:
                client.infer(MODEL, [inp])
                error = None
            except Exception as exc:  # noqa: BLE001 - counted and reported by reason
                error = str(exc)
            mine.append((t0 - start, time.monotonic() - t0, error))
        client.close()
        with lock:
            records.extend(mine)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    if at_half:
        time.sleep(seconds / 2)
        at_half()
    for t in threads:
        t.join()
    return sorted(records)


def reason(error: str) -> str:
    """A short, stable label for an error message (request ids and pids removed)."""
    text = re.sub(r"\[request id: [^\]]*\]\s*", "", error)
    return re.sub(r"\d+", "N", text)[:120]


def summarize(records, killed_at: float, rss_start, rss_end, serve_log: str, args) -> dict:
    lat = np.array([r[1] for r in records])
    failed = [r for r in records if r[2]]
    after = [r for r in records if r[0] >= killed_at and not r[2]]
    back = min(r[0] + r[1] for r in after) - killed_at if after else None
    last_fail = max((r[0] + r[1] for r in failed), default=killed_at) - killed_at
    reasons: dict[str, int] = {}
    for r in failed:
        reasons[reason(r[2])] = reasons.get(reason(r[2]), 0) + 1
    healed = re.findall(r"serving again, ([\d.]+) s after", serve_log)
    return {"duration_s": args.duration, "concurrency": args.concurrency,
            "requests": len(records), "failures": len(failed), "failure_reasons": reasons,
            "killed_at_s": round(killed_at, 2),
            "service_returned_after_s": None if back is None else round(back, 2),
            "last_failure_after_kill_s": round(last_fail, 2),
            "watchdog_reload_s": [float(h) for h in healed],
            "latency_ms": {"p50": round(float(np.percentile(lat, 50)) * 1e3, 1),
                           "p99": round(float(np.percentile(lat, 99)) * 1e3, 1),
                           "max": round(float(lat.max()) * 1e3, 1)},
            "throughput_rps": round(len(records) / args.duration, 1),
            "server_rss_mib": {"start": round(sum(rss_start.values()), 1),
                               "end": round(sum(rss_end.values()), 1),
                               "start_by_process": rss_start, "end_by_process": rss_end}}


def markdown(s: dict, env: dict, model: str) -> str:
    rss = s["server_rss_mib"]
    lines = [
        "# Fault soak: a model's backend process killed under load", "",
        f"- date: {env['date']}; CPU: {env['cpu']} ({env['cpu_cores']} cores usable); git "
        f"commit: {env['git_commit']}",
        f"- `rtk serve` (Triton 2.51, nvidia-pytriton), ensemble `{model}` (JPEG bytes in, "
        f"gRPC), {s['concurrency']} clients for {s['duration_s']:.0f} s, no client retries",
        f"- the classifier's `triton_python_backend_stub` got SIGKILL at {s['killed_at_s']:.1f} s",
        "", "| measure | value |", "|---|---|",
        f"| requests | {s['requests']} ({s['throughput_rps']} per s) |",
        f"| failed requests | {s['failures']} |",
        f"| service returned (first success started after the kill) | "
        f"{s['service_returned_after_s']} s after the kill |",
        f"| last failure | {s['last_failure_after_kill_s']} s after the kill |",
        f"| watchdog reload (its own log) | {', '.join(f'{x:.1f} s' for x in s['watchdog_reload_s'])} |",
        f"| latency p50 / p99 / max | {s['latency_ms']['p50']} / {s['latency_ms']['p99']} / "
        f"{s['latency_ms']['max']} ms |",
        f"| server RSS (tritonserver + backend processes) | {rss['start']} MiB at start, "
        f"{rss['end']} MiB at end |", "", "Failures by reason:", ""]
    reasons = sorted(s["failure_reasons"].items(), key=lambda x: -x[1])
    lines += [f"- {n} x `{r}`" for r, n in reasons] or ["- none"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", nargs="?", help="A run with model.onnx (default: train the demo's).")
    ap.add_argument("--arch", default="resnet50", help="For the demo run only.")
    ap.add_argument("--duration", type=float, default=300.0)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--port", type=int, default=18300)
    ap.add_argument("--out", default="benchmarks/cpu")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rtk-soak-"))
    run = Path(args.run) if args.run else demo_run(work, args.arch)
    sh("triton", run, "--repo", work / "repo", "--name", MODEL, "--platform", "python")
    images = jpegs(run)
    server = Server(work / "repo", args.port, work / "serve.log")
    killed = {}
    try:
        load(f"127.0.0.1:{args.port + 1}", images, args.concurrency, 5.0)  # warm-up
        rss_start = server.rss_mib()

        def kill() -> None:
            (pid,) = [p for p, m in live_stubs(server.tritonserver()).items()
                      if m == f"{MODEL}_classifier"]
            killed["at"] = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            print(f"killed {MODEL}_classifier's backend process {pid}", flush=True)

        t0 = time.monotonic()
        records = load(f"127.0.0.1:{args.port + 1}", images, args.concurrency, args.duration, kill)
        rss_end = server.rss_mib()
    finally:
        code = server.stop()
    summary = summarize(records, killed["at"] - t0, rss_start, rss_end,
                        (work / "serve.log").read_text(), args)
    summary["serve_exit_code"] = code
    shutil.rmtree(work, ignore_errors=True)
    env = environment()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fault_soak.json").write_text(json.dumps({"environment": env, **summary}, indent=2) + "\n")
    (out / "fault_soak.md").write_text(markdown(summary, env, MODEL))
    print((out / "fault_soak.md").read_text())


if __name__ == "__main__":
    main()
