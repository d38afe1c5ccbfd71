"""`rtk report`: one valid, self-contained HTML page whose numbers are the bundle's numbers.

The page is parsed with html5lib in strict mode: it implements the WHATWG parsing algorithm
and raises on every parse error (stray or misnested end tags, unclosed elements at EOF,
duplicate attributes, a missing doctype), where Python's html.parser accepts anything.
Every number the template shows sits in <span data-v="RAW">, so a section's raw values are
compared with the files they came from, not with a re-implementation of the formatting.
"""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

html5lib = pytest.importorskip("html5lib", reason="html5lib missing: pip install -e '.[test]'")

REPO = Path(__file__).resolve().parents[1]
NS = "{http://www.w3.org/1999/xhtml}"
SECTIONS = ["data", "training", "artifacts", "speed", "serving", "deployment", "provenance"]


def parse(text: str):
    """The document tree; any HTML parse error fails the test."""
    return html5lib.HTMLParser(strict=True, namespaceHTMLElements=True).parse(text)


def assert_self_contained(text: str, tree) -> None:
    """No network: no http(s) src/href, no scripts, no @import or url() but data: URIs."""
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    assert tree.find(f".//{NS}script") is None and "<script" not in text.lower()
    assert "@import" not in text and not re.search(r"url\(\s*['\"]?(?!data:)", text)
    assert tree.find(f".//{NS}link") is None
    for img in tree.iter(f"{NS}img"):
        head, _, payload = img.get("src").partition(",")
        assert head == "data:image/png;base64"
        assert base64.b64decode(payload)[:4] == b"\x89PNG"


def section(tree, name: str):
    found = [s for s in tree.iter(f"{NS}section") if s.get("id") == name]
    assert len(found) == 1, name
    return found[0]


def values(elem) -> list[str]:
    """Raw values of every number shown in `elem`, in page order."""
    return [e.get("data-v") for e in elem.iter() if e.get("data-v") is not None]


def text_of(elem) -> str:
    return " ".join("".join(elem.itertext()).split())


def render(run: Path, out: Path, *args) -> tuple[str, object]:
    from toolkit.html_report import write_report

    extra = {"bench": [str(a) for a in args[:1]], "tune": [str(a) for a in args[1:2]]}
    path = write_report(run, out, extra)
    text = path.read_text()
    return text, parse(text)


def test_fresh_finetune_report_has_data_and_training_and_names_the_missing_commands(tiny_bundle, tmp_path):
    text, tree = render(tiny_bundle, tmp_path / "r.html")
    assert_self_contained(text, tree)
    assert [s.get("id") for s in tree.iter(f"{NS}section")] == SECTIONS

    data = json.loads((tiny_bundle / "report" / "data.json").read_text())
    shown = values(section(tree, "data"))
    assert shown[:3] == [str(data["images"]), str(data["classes"]), str(data["imbalance_ratio"])]
    assert [str(n) for n in data["per_class"].values()] == shown[5:5 + len(data["per_class"])]

    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    validation = json.loads((tiny_bundle / "report" / "validation.json").read_text())
    training = section(tree, "training")
    got = values(training)
    assert str(manifest["metrics"]["val_accuracy"]) in got and str(validation["n"]) in got
    with open(tiny_bundle / "history.csv", newline="") as f:
        rows = list(csv.reader(f))
    history = [v for row in rows[1:] for v in row]
    start = next(i for i in range(len(got)) if got[i:i + len(history)] == history)  # every cell, in order
    per_class = got[start + len(history):]
    weakest = sorted(validation["per_class"].items(), key=lambda kv: (kv[1], kv[0]))
    assert per_class == [str(v) for _, v in weakest]
    if "balanced_accuracy" in validation:  # added by a parallel change to training history
        assert str(validation["balanced_accuracy"]) in got
        assert "balanced accuracy" in text_of(training).lower()
    assert len(list(training.iter(f"{NS}img"))) == 2  # curves and confusion matrix

    for name, command in (("artifacts", "rtk export"), ("speed", "rtk bench"),
                          ("serving", "rtk tune"), ("deployment", "rtk export")):
        notes = " ".join(text_of(p) for p in section(tree, name).iter(f"{NS}p")
                         if p.get("class") == "missing")
        assert command in notes, name
    provenance = text_of(section(tree, "provenance"))
    assert manifest["provenance"]["command"] in provenance
    assert "history.csv" in provenance and "data.json" in provenance


@pytest.fixture(scope="module")
def benched(exported, module_tmp):
    """The exported tiny bundle after a short `rtk bench` of two backends (through the CLI)."""
    from click.testing import CliRunner

    from toolkit.cli import main

    root = Path(shutil.copytree(exported, module_tmp("report") / "run"))
    out = root.parent / "bench"
    result = CliRunner().invoke(main, ["bench", str(root), "--backends", "torch,onnxruntime-int8",
                                       "--batch-sizes", "1,4", "--duration", "0.3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return root, out, result


def test_bench_refreshes_the_report_with_trust_speed_and_deployment(benched):
    root, out, result = benched
    assert f"Report: {root / 'report.html'}" in result.stderr
    text = (root / "report.html").read_text()
    tree = parse(text)
    assert_self_contained(text, tree)
    manifest = json.loads((root / "manifest.json").read_text())

    rows = {r.find(f"{NS}td").findtext(f"{NS}code"): r for r in section(tree, "artifacts").iter(f"{NS}tr")
            if r.find(f"{NS}td") is not None}
    for name in ("model.onnx", "model.fp16.onnx", "model.int8.onnx"):
        p = manifest["artifacts"][name]["parity"]
        expected = [str((root / name).stat().st_size), str(p["n"]), str(p["top1"]),
                    str(p["top1_delta_points"]), *map(str, p["top1_delta_ci95"]),
                    str(p["confident_agreement"]), str(p["flips_confident"]), str(p["flips_near_tie"])]
        assert values(rows[name]) == expected, name
        assert "trusted" in text_of(rows[name])
        assert manifest["artifacts"][name]["sha256"] in text

    bench = json.loads((out / "results.json").read_text())
    speed = section(tree, "speed")
    shown = values(speed)
    for r in bench["results"]:
        if r["status"] == "ok":
            assert str(r["throughput"]) in shown and str(r["p99_ms"]) in shown
    assert str(bench["headlines"]["best_cpu"]["speedup_vs_cpu_eager"]) in shown
    assert bench["environment"]["cpu"] in text_of(speed)
    assert len(list(speed.iter(f"{NS}img"))) == 1  # throughput.png

    deployment = text_of(section(tree, "deployment"))
    assert "Serves model.int8.onnx" in deployment  # what `rtk triton --kind cpu` picks here
    assert f"rtk triton {root}" in deployment and "docker compose up triton" in deployment
    assert str(out / "results.json") in text_of(section(tree, "provenance"))
    # The link is remembered: a later plain `rtk report` still shows the benchmark.
    from toolkit.html_report import write_report

    again = parse(write_report(root, root.parent / "again.html").read_text())
    assert values(section(again, "speed")) == shown


def test_an_untrusted_artifact_is_marked(benched, tmp_path):
    root = Path(shutil.copytree(benched[0], tmp_path / "run"))
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["artifacts"]["model.int8.onnx"].update(trusted=False, gate="failed")
    (root / "manifest.json").write_text(json.dumps(manifest))
    text, tree = render(root, tmp_path / "r.html")
    marked = [r for r in section(tree, "artifacts").iter(f"{NS}tr") if r.get("class") == "untrusted"]
    assert [r.find(f"{NS}td").findtext(f"{NS}code") for r in marked] == ["model.int8.onnx"]
    assert "UNTRUSTED (failed)" in text_of(marked[0])
    assert "Serves model.onnx" in text_of(section(tree, "deployment"))  # INT8 is not served


def test_serving_section_from_a_recorded_triton_sweep_and_tune(exported, tmp_path, cli):
    """The committed CPU benchmark and tune results (real runs on the digits demo)."""
    bench_dir, tune_dir = REPO / "benchmarks" / "cpu", REPO / "benchmarks" / "cpu" / "tune"
    result = cli("report", exported, "--out", tmp_path / "r.html", "--bench", bench_dir,
                 "--tune", tune_dir)
    assert result.exit_code == 0, result.output
    text = (tmp_path / "r.html").read_text()
    tree = parse(text)
    assert_self_contained(text, tree)
    serving = section(tree, "serving")
    shown = values(serving)
    bench = json.loads((bench_dir / "results.json").read_text())
    for r in (r for r in bench["results"] if r.get("protocol")):
        assert str(r["throughput"]) in shown and str(r["p99_ms"]) in shown
        for t in r["server"].values():
            assert str(t["queue_ms"]) in shown and str(t["compute_ms"]) in shown
    tune = json.loads((tune_dir / "tune.json").read_text())
    assert_tune_shown(tree, tune)
    chosen = next(r for r in serving.iter(f"{NS}tr") if r.get("class") == "chosen")
    # The committed tune.json predates the key max_batch_size: the old key is still read.
    assert chosen.findall(f"{NS}td")[1].text == str(tune["chosen"]["max_batch"])
    assert "another run's bundle" in text_of(section(tree, "speed"))  # benchmarks/cpu is the digits run


def assert_tune_shown(tree, tune: dict) -> None:
    serving = section(tree, "serving")
    shown = values(serving)
    for p in (p for p in tune["candidates"] if p["status"] == "ok"):
        assert str(p["throughput"]) in shown and str(p["p99_ms"]) in shown
    if tune.get("speedup_vs_default"):
        assert str(tune["speedup_vs_default"]) in shown
    chosen = [r for r in serving.iter(f"{NS}tr") if r.get("class") == "chosen"]
    assert chosen and all(str(tune["chosen"]["throughput"]) in values(r) for r in chosen)
    assert any(i.get("alt") == "rtk tune Pareto plot" for i in serving.iter(f"{NS}img"))
    assert tune["serve"] in text_of(section(tree, "deployment"))


@pytest.mark.triton
@pytest.mark.slow
def test_tune_refreshes_the_report_with_its_search(benched, tmp_path, cli):
    """A real (short) `rtk tune` on the local Triton server; its page shows the search."""
    pytest.importorskip("tritonclient.grpc")
    root = Path(shutil.copytree(benched[0], tmp_path / "tiny"))
    result = cli("tune", root, "--p99-ms", "2000", "--budget-minutes", "0.3", "--seconds", "1",
                 "--concurrency", "1,2", "--out", tmp_path / "tune", "--repo", tmp_path / "repo")
    assert result.exit_code == 0, result.output
    assert f"Report: {root / 'report.html'}" in result.stderr
    text = (root / "report.html").read_text()
    tree = parse(text)
    assert_self_contained(text, tree)
    assert_tune_shown(tree, json.loads((tmp_path / "tune" / "tune.json").read_text()))
    assert values(section(tree, "speed"))  # the earlier bench is still recorded


def test_the_strict_parser_rejects_a_broken_page():
    """The validity check can fail: misnesting and stray end tags are parse errors."""
    page = "<!DOCTYPE html><html><head><title>x</title></head><body>{}</body></html>"
    parse(page.format("<section><p>fine</p></section>"))
    for broken in ("<section><p>a</section></p>", "<table><tr><td>1</td></tr></div></table>",
                   "<div>unclosed"):
        with pytest.raises(html5lib.html5parser.ParseError):
            parse(page.format(broken))


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium missing (Debian: apt-get install chromium)")
def test_headless_chromium_renders_the_page(benched, tmp_path):
    """A real browser opens the file offline and paints the whole page (laptop width)."""
    import numpy as np
    from PIL import Image

    root = benched[0]
    shot = tmp_path / "report.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars", f"--screenshot={shot}",
           "--window-size=1280,2400", (root / "report.html").as_uri()]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 2400)
    # Painted, not blank: dark text, the accent colour of the header rule and bars, plot colours.
    px = np.asarray(image, dtype=int)
    dark = int((px.max(axis=2) < 90).sum())
    accent = int((np.abs(px - (47, 95, 179)).sum(axis=2) < 30).sum())
    assert dark > 5000 and accent > 2000, (dark, accent)
    assert len(image.getcolors(2**24)) > 200
