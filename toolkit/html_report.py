"""`rtk report`: one self-contained HTML page per run (data, training, trust, speed, serving).

Everything comes from files the other stages already wrote: the manifest, history.csv,
report/*.json and *.png of the bundle, and the results.json / tune.json of every `rtk bench`
and `rtk tune` recorded in RUN/report/links.json. Plots are the PNGs those stages
drew with matplotlib, embedded as base64, so the page needs no network and no scripts.
"""

from __future__ import annotations

import base64
import csv
import time
from pathlib import Path
from typing import Any

from .core.bundle import Bundle, read_json
from .core.files import write_json, write_text
from .core.manifest import Metrics

REPORT = "report.html"
LINKS = "report/links.json"
TEMPLATE = "report.html.j2"
# Files of a bench or tune output folder, and the manifest key that lists those folders.
RESULT_FILES = {"bench": "results.json", "tune": "tune.json"}


def default_path(run: str | Path) -> Path:
    return Path(run) / REPORT


def refresh(run: str | Path, **outputs: str | Path) -> Path:
    """Record a bench/tune output folder (bench=DIR, tune=DIR) for the run, rewrite its report.

    The links live in RUN/report/links.json, not in the manifest: `rtk bench` and `rtk tune`
    only read the bundle, and must not race an `rtk export` that is rewriting the manifest.
    """
    bundle = Bundle.load(run)
    if outputs:
        links = recorded(bundle.root)
        for kind, folder in outputs.items():
            folders = links.setdefault(kind, [])
            if str(Path(folder).resolve()) not in folders:
                folders.append(str(Path(folder).resolve()))
        write_json(bundle.path(LINKS), links)
    return write_report(bundle.root)


def recorded(run: str | Path) -> dict[str, list[str]]:
    """The bench and tune output folders recorded for a run."""
    path = Path(run) / LINKS
    return read_json(path) if path.is_file() else {}


def write_report(run: str | Path, out: str | Path | None = None,
                 extra: dict[str, list[str]] | None = None) -> Path:
    """Render the run's report to `out` (default RUN/report.html) and return its path."""
    out = Path(out) if out else default_path(run)
    write_text(out, render(collect(run, extra)))
    return out


def render(context: dict[str, Any]) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("toolkit", "templates"),
                             autoescape=True,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters.update(pct=lambda v, p=1: "" if v is None else f"{100 * v:.{p}f}%",
                       num=lambda v, p=1: "" if v is None else f"{v:,.{p}f}",
                       mib=lambda v: "" if v is None else f"{v / 2**20:,.1f} MiB")
    return env.get_template(TEMPLATE).render(**context)


def collect(run: str | Path, extra: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """Everything the template shows, read from the bundle and its recorded outputs."""
    bundle = Bundle.load(run)
    m = bundle.manifest
    sources: list[dict] = []
    links = recorded(bundle.root)
    folders = {kind: list(dict.fromkeys(links.get(kind, []) + (extra or {}).get(kind, [])))
               for kind in RESULT_FILES}
    benches = [r for r in (_result(f, "bench", sources) for f in folders["bench"]) if r]
    for b in benches:  # a folder passed by hand may hold another run's benchmark
        b["other_run"] = b.get("bundle") if b.get("bundle") and \
            Path(b["bundle"]).resolve() != bundle.root.resolve() else None
    tunes = [r for r in (_result(f, "tune", sources) for f in folders["tune"]) if r]
    _source(sources, bundle.path("manifest.json"), "manifest, artifacts, gate results, provenance")
    return {
        "run": str(bundle.root.resolve()), "name": bundle.root.resolve().name,
        "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "manifest": m.to_json(),  # the template shows the file's keys ("is defined" = present)
        "classes": bundle.classes,
        "data": _data(bundle, sources), "training": _training(bundle, sources),
        "artifacts": _artifacts(bundle), "benches": benches, "tunes": tunes,
        "deployment": _deployment(bundle, tunes), "sources": sources,
        "hashes": [f"{e.sha256}  {name}" for name, e in m.artifacts.items()],
    }


def _source(sources: list[dict], path: Path, what: str) -> None:
    """Note a file a section's numbers came from, with its modification time."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(path.stat().st_mtime))
    sources.append({"path": str(path), "what": what, "date": stamp})


def _png(path: Path) -> str | None:
    """A PNG file as a data: URI (None when the stage that draws it has not run)."""
    if not path.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _data(bundle: Bundle, sources: list[dict]) -> dict | None:
    path = bundle.path("report/data.json")
    if not path.is_file():
        return None
    data = read_json(path)
    _source(sources, path, "Data: scan of the training folder")
    largest = max(data["per_class"].values(), default=0) or 1
    data["bars"] = [{"name": k, "n": v, "width": 100 * v / largest} for k, v in data["per_class"].items()]
    return data


def _training(bundle: Bundle, sources: list[dict]) -> dict | None:
    m = bundle.manifest
    if m.metrics is None:
        return None
    history = []
    if bundle.path("history.csv").is_file():
        with open(bundle.path("history.csv"), newline="") as f:
            history = list(csv.DictReader(f))
        _source(sources, bundle.path("history.csv"), "Training: one row per evaluation")
    validation = None
    if bundle.path("report/validation.json").is_file():
        validation = read_json(bundle.path("report/validation.json"))
        _source(sources, bundle.path("report/validation.json"), "Training: validation metrics")
    metrics = m.metrics.to_json()  # shown as recorded: the template tests which keys exist
    per_class = (validation or {}).get("per_class") or m.metrics.per_class or {}
    weakest = sorted(per_class.items(), key=lambda kv: (kv[1], kv[0]))
    return {"config": m.config or {}, "metrics": metrics,
            "history": [[(row[c], _cell(c, row[c])) for c in row] for row in history],
            "columns": list(history[0]) if history else [], "validation": validation,
            "last": history[-1] if history else None,  # labelled: model.pt may be another
            "balanced_accuracy": _balanced(validation, m.metrics),
            "per_class": [{"name": k, "accuracy": v} for k, v in weakest],
            "curves": _png(bundle.path("report/curves.png")),
            "confusion": _png(bundle.path("report/confusion.png")),
            "diagnosis": list(m.diagnosis or ()), "status": m.status}


def _cell(column: str, text: str) -> str:
    """A history.csv value as shown: accuracies in percent, losses to 4 places, lr in e-notation."""
    try:
        x = float(text)
    except (TypeError, ValueError):
        return text or ""
    if column == "epoch":
        return text
    if "accuracy" in column or "top5" in column:
        return f"{100 * x:.2f}%"
    if column == "lr":
        return f"{x:.2e}"
    return f"{x:.4f}" if "loss" in column else f"{x:,.1f}"


def _balanced(validation: dict | None, metrics: Metrics) -> float | None:
    """Balanced accuracy (mean per-class recall) where the training stage recorded it."""
    for key in ("balanced_accuracy", "val_balanced_accuracy"):  # validation.json's names
        if (validation or {}).get(key) is not None:
            return validation[key]
    return metrics.val_balanced_accuracy


def _artifacts(bundle: Bundle) -> list[dict]:
    rows = []
    for name, entry in bundle.manifest.artifacts.items():
        path = bundle.path(name)
        derived = entry.parent is not None
        trusted = entry.trusted is True if derived else True
        search = entry.search or {}
        rows.append({"name": name, "entry": entry.to_json(), "present": path.is_file(),
                     "size": path.stat().st_size if path.is_file() else None,
                     "precision": entry.precision or ("fp32" if name.endswith(".pt") else ""),
                     "parity": entry.parity, "derived": derived, "trusted": trusted,
                     "gate": entry.gate or ("reference" if name == "model.pt" else ""),
                     "trials": search.get("trials") or [], "search": search})
    return rows


def _result(folder: str, kind: str, sources: list[dict]) -> dict | None:
    """One bench or tune result, with its plots; None when the folder is gone."""
    folder_path = Path(folder)
    path = folder_path / RESULT_FILES[kind]
    if not path.is_file():
        return None
    result = read_json(path)
    _source(sources, path, "Speed and Serving: rtk bench" if kind == "bench" else "Serving: rtk tune")
    pngs = ("throughput.png", "triton.png") if kind == "bench" else ("tune.png",)
    result["plots"] = {p: _png(folder_path / p) for p in pngs}
    result["folder"] = str(folder_path)
    if kind == "bench":
        result["local"] = [r for r in result["results"] if not r.get("protocol")]
        result["served"] = [r for r in result["results"] if r.get("protocol")]
        result["roles"] = _server_roles(result["served"])
        result["gpu_over_cpu"] = _gpu_over_cpu(result["headlines"])
    else:
        from .tune.report import pareto, same_point, upgrade

        upgrade(result)  # tune.json files written before the key was max_batch_size
        result["front"] = pareto(result["candidates"])
        for p in result["candidates"]:
            p["is_default"] = same_point(p, result.get("default"))
            p["is_chosen"] = same_point(p, result.get("chosen"))
    return result


ROLES = ("preprocess", "classifier", "postprocess")


def _server_roles(rows: list[dict]) -> list[str]:
    """Label each row's server-side models by role (ensemble, preprocess, ...); the role order."""
    seen: set[str] = set()
    for r in rows:
        r["by_role"] = {next((role for role in ROLES if model.endswith("_" + role)), "ensemble"): t
                        for model, t in (r.get("server") or {}).items()}
        seen.update(r["by_role"])
    return [role for role in ("ensemble", *ROLES) if role in seen]


def _gpu_over_cpu(headlines: dict) -> float | None:
    gpu, cpu = headlines.get("best_gpu"), headlines.get("best_cpu")
    if not gpu or not cpu:
        return None
    return gpu["throughput"] / cpu["throughput"]


def _deployment(bundle: Bundle, tunes: list[dict]) -> dict | None:
    """Commands to serve this run, and the artifact each path serves (None before export)."""
    from .triton.repository import RepoOptions, choose_artifact

    if not bundle.manifest.trusted("model.onnx"):
        return None
    run = str(bundle.root)
    plan = bundle.manifest.trusted("model.fp16.plan")
    local, why_fp32 = choose_artifact(bundle, RepoOptions(kind="cpu", platform="python"))
    paths = [
        {"title": "Locally (CPU, rtk's own Triton server)", "artifact": local,
         **({"note": f"FP32 is served, not INT8: {why_fp32}."} if why_fp32 else {}),
         "commands": [f"rtk triton {run} --repo model_repository --platform python",
                      "rtk serve model_repository",
                      f"rtk predict {run} IMAGE.jpg --backend triton --url 127.0.0.1:8000"]},
        {"title": "Docker Compose (GPU host, NGC Triton image)",
         "artifact": "model.fp16.plan" if plan else choose_artifact(
             bundle, RepoOptions(kind="gpu", platform="onnxruntime"))[0],
         "commands": [f"rtk triton {run} --repo model_repository --kind gpu --platform "
                      + ("tensorrt" if plan else "onnxruntime"), "docker compose up triton"]},
        {"title": "Kubernetes (Triton with autoscaling, KServe)",
         "artifact": None, "note": "Serves the repository built above, uploaded where the pods "
                                   "read it (steps in deploy/README.md).",
         "commands": [f"rtk deploy {run} --out deploy",
                      "kubectl apply -k deploy/overlays/gpu   # or deploy/overlays/cpu"]},
    ]
    tuned = next((t for t in reversed(tunes) if t.get("serve")), None)
    if tuned:
        c = tuned["chosen"]
        paths.insert(0, {"title": f"The tuned deployment (rtk tune, p99 <= {tuned['p99_budget_ms']:g} ms)",
                         "artifact": c["artifact"], "commands": [tuned["serve"]]})
    return {"paths": paths}
