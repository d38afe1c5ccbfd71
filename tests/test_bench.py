"""rtk bench on the tiny bundle: every field present, sane values, reasons for missing backends."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")

FIELDS = {"backend", "device", "batch_size", "throughput", "p50_ms", "p90_ms", "p99_ms", "status"}


@pytest.fixture(scope="module")
def bench_result(tiny_bundle, module_tmp):
    from click.testing import CliRunner

    from toolkit.core.bundle import Bundle
    from toolkit.cli import main
    from toolkit.export import ExportOptions, export

    root = Path(shutil.copytree(tiny_bundle, module_tmp("bench") / "run"))
    export(Bundle.load(root), ExportOptions(), echo=lambda *_: None)
    out = root / "bench"
    result = CliRunner().invoke(main, ["bench", str(root), "--backends",
                                       "torch,onnxruntime,onnxruntime-int8,tensorrt",
                                       "--batch-sizes", "1,4", "--duration", "0.6", "--out",
                                       str(out), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), out


def test_rows_have_every_field_and_sane_values(bench_result):
    result, _ = bench_result
    ok = [r for r in result["results"] if r["status"] == "ok"]
    assert {(r["backend"], r["batch_size"]) for r in ok} == {
        ("torch", 1), ("torch", 4), ("onnxruntime", 1), ("onnxruntime", 4)}
    for r in result["results"]:
        assert FIELDS <= r.keys()
    for r in ok:
        assert r["throughput"] > 0
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["device"] == "cpu"


def test_unavailable_backends_are_rows_with_reasons(bench_result):
    result, _ = bench_result
    by_name = {r["backend"]: r for r in result["results"] if r["status"] != "ok"}
    assert "model.int8.onnx" in by_name["onnxruntime-int8"]["status"]
    assert "rtk export" in by_name["onnxruntime-int8"]["status"]
    assert by_name["tensorrt"]["status"].startswith("unavailable:")


def test_reports_are_written_with_environment_and_headlines(bench_result):
    result, out = bench_result
    assert {p.name for p in out.iterdir()} >= {"report.md", "results.json", "throughput.png"}
    saved = json.loads((out / "results.json").read_text())
    assert saved["results"] == result["results"]
    env = saved["environment"]
    assert env["cpu"] and env["cpu_cores"] >= 1 and "torch" in env["versions"]
    base = saved["headlines"]["baseline"]
    assert base["backend"] == "torch" and base["throughput"] > 0
    ok = [r for r in saved["results"] if r["status"] == "ok"]

    def fastest(rows):  # the headline rule: among stable measurements when there are any (a
        stable = [r for r in rows if r.get("stable", True)]  # busy machine makes some unstable)
        return max(stable or rows, key=lambda r: r["throughput"])

    top, best = fastest(ok), saved["headlines"]["best_cpu"]
    assert (best["backend"], best["batch_size"]) == (top["backend"], top["batch_size"])
    assert best["speedup_vs_cpu_eager"] == pytest.approx(top["throughput"] / base["throughput"])
    assert base["throughput"] == fastest([r for r in ok if r["backend"] == "torch"])["throughput"]
    md = (out / "report.md").read_text()
    assert "| backend | device | batch |" in md and "Headlines" in md
    assert (out / "throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert saved["data_pipeline"]["single_thread_images_per_s"] > 0


def test_parity_failure_is_flagged_not_timed(tiny_bundle, monkeypatch):
    import numpy as np

    from toolkit.bench import BenchOptions, Timing, bench_backend
    from toolkit.core.bundle import Bundle

    bundle = Bundle.load(tiny_bundle)
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    from toolkit.backends import open_backend

    with open_backend("torch", bundle) as torch_backend:
        truth = torch_backend(images)
    wrong = np.roll(truth, 1, axis=1)  # every argmax moved to another class
    rows = bench_backend(bundle, "torch", "cpu", opts=BenchOptions(timing=Timing(duration=0.2)),
                         images=images, reference=wrong, echo=lambda *_: None)
    assert len(rows) == 1 and rows[0]["status"].startswith("parity failed")
    assert rows[0]["throughput"] is None


def test_int8_row_carries_nodes_in_float_and_the_exports_speed_ratios(exported):
    from toolkit.bench import gate_of
    from toolkit.core.bundle import Bundle

    bundle = Bundle.load(exported)
    entry = bundle.entry("model.int8.onnx")
    fields = gate_of(bundle, "onnxruntime-int8")
    assert fields["kept_float_nodes"] == len(entry.kept_float)
    assert fields["export_speed_vs_fp32"] == entry.speed["vs_fp32"] > 0
    assert fields["export_speed_vs_single_shot_int8"] > 0
    assert "kept_float_nodes" not in gate_of(bundle, "onnxruntime")
