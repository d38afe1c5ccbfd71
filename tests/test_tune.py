"""`rtk tune` against the real local Triton server, on the tiny exported bundle."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("tritonclient.grpc")

from toolkit.tune.report import same_point  # noqa: E402


# conftest skips these, with the reason, where no Triton server can start (under CI: fails)
pytestmark = [pytest.mark.triton, pytest.mark.slow]

CANDIDATE_FIELDS = {"artifact", "max_batch_size", "instances", "queue_delay_us", "concurrency",
                    "throughput", "p50_ms", "p99_ms", "status"}


@pytest.fixture(scope="module")
def run(exported, module_tmp):
    return shutil.copytree(exported, module_tmp("tune") / "tiny")


def _tune(cli, run, tmp_path, budget_ms: str, minutes: str):
    result = cli("tune", run, "--p99-ms", budget_ms, "--budget-minutes", minutes, "--seconds", "1",
                 "--concurrency", "1,2", "--out", tmp_path / "report", "--repo", tmp_path / "repo",
                 "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_tune_measures_candidates_and_picks_one_within_the_budget(cli, run, tmp_path):
    budget = 2000.0
    out = _tune(cli, run, tmp_path, str(budget), "1.2")
    assert out["p99_budget_ms"] == budget
    configs = {(c["artifact"], c["max_batch_size"], c["instances"], c["queue_delay_us"])
               for c in out["candidates"]}
    assert len(configs) >= 3, configs
    for c in out["candidates"] + [out["default"], out["chosen"]]:
        assert CANDIDATE_FIELDS <= c.keys()
    assert {c["artifact"] for c in out["candidates"]} <= {"onnx", "fp16", "int8"}
    chosen, best = out["chosen"], out["search_best"]
    assert chosen["status"] == "ok" and chosen["p99_ms"] <= budget
    ok = [c for c in out["candidates"] if c["status"] == "ok" and c["p99_ms"] <= budget]
    ok = [c for c in ok if c["stable"]] or ok  # a stable point wins over an unstable one
    assert best["throughput"] == max(c["throughput"] for c in ok)
    if same_point(best, out["default"]):
        assert "confirmation" not in out and chosen == best
    else:  # re-measured interleaved: the pick stands only with an interval above 1
        conf = out["confirmation"]
        assert conf["rounds"] >= 2 and conf["finalists"]
        if conf["verdict"].startswith("no measurable gain"):
            assert same_point(chosen, out["default"]) and out["speedup_vs_default"] is None
        else:
            assert out["speedup_interval"][0] > 1 and out["speedup_vs_default"] > 1
    assert out["default"]["artifact"] == "int8"  # what plain `rtk triton --kind cpu` serves here
    assert out["elapsed_s"] < 1.2 * 60 + 60  # the budget plus at most one candidate
    written = {p.name for p in (tmp_path / "repo").iterdir()}
    assert written == {"tiny", "tiny_classifier", "tiny_preprocess", "tiny_postprocess"}
    assert (tmp_path / "report" / "tune.png").read_bytes()[:4] == b"\x89PNG"
    assert "**chosen**" in (tmp_path / "report" / "tune.md").read_text()


def test_an_impossible_budget_says_so_and_names_the_lowest_p99(cli, run, tmp_path):
    out = _tune(cli, run, tmp_path, "0.01", "0.2")
    assert out["chosen"] is None
    assert out["verdict"].startswith("No candidate meets p99 <= 0.01 ms")
    lowest = out["lowest_p99"]
    assert lowest["p99_ms"] == min(c["p99_ms"] for c in out["candidates"] if c["status"] == "ok")
    assert not (tmp_path / "repo").exists()  # nothing to serve
