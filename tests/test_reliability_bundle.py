"""Bundles under concurrency and faults: the writer lock, damaged manifests, a full disk."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import TINY_TRAIN, assert_user_error, popen_rtk, rtk_command

from toolkit.core.bundle import Bundle
from toolkit.core.errors import RtkError
from toolkit.core.lock import bundle_lock


@pytest.mark.parametrize("damage", ["truncated", "empty", "binary", "not a manifest", "no artifacts"])
def test_damaged_manifest_is_a_clear_error_naming_the_file(bundle_copy, cli, damage):
    path = bundle_copy / "manifest.json"
    text = path.read_text()
    path.write_bytes({"truncated": text[: len(text) // 2].encode(), "empty": b"",
                      "binary": b"\x00\xff\xfe garbage \x80",
                      "not a manifest": b"[1, 2, 3]",
                      "no artifacts": json.dumps({"schema": 1}).encode()}[damage])
    with pytest.raises(RtkError, match="is damaged") as info:
        Bundle.load(bundle_copy)
    assert str(path) in info.value.message and "backup" in info.value.hint
    assert_user_error(cli("eval", bundle_copy, "--json"), str(path), "is damaged")


def test_second_writer_is_refused_and_readers_are_not_blocked(bundle_copy, cli, tiny_data):
    before = _snapshot(bundle_copy)
    with bundle_lock(bundle_copy, "a test"):
        assert_user_error(cli("export", bundle_copy), "being changed by another rtk command",
                          "Wait until")
        assert_user_error(cli("finetune", tiny_data, "--out", bundle_copy, *TINY_TRAIN,
                              "--resume"), "being changed by another rtk command")
        reader = cli("eval", bundle_copy, "--backend", "torch", "--json")
        assert reader.exit_code == 0, reader.output  # readers take no lock
        assert Bundle.load(bundle_copy).classes
    assert _snapshot(bundle_copy) == before  # the lock itself writes nothing into the bundle
    with bundle_lock(bundle_copy):  # released by the first holder
        pass


def _holds_flock(pid: int, path: Path) -> bool:
    """Whether process `pid` holds a flock on `path` (read from /proc/locks, touching nothing)."""
    st = os.stat(path)
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in Path("/proc/locks").read_text().splitlines():
        parts = line.split()
        if "FLOCK" in parts and str(pid) in parts and inode in parts:
            return True
    return False


@pytest.mark.slow
def test_two_concurrent_exports_one_wins_cleanly(bundle_copy):
    first = popen_rtk(["export", bundle_copy, "--max-batch", "8"])
    deadline = time.monotonic() + 180
    while not _holds_flock(first.pid, bundle_copy):  # started and holding the lock
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.05)
    second = popen_rtk(["export", bundle_copy, "--max-batch", "8"])
    out2, err2 = second.communicate(timeout=180)
    out1, err1 = first.communicate(timeout=600)
    assert first.returncode == 0, err1
    assert second.returncode != 0
    assert "Error:" in err2 and "being changed by another rtk command" in err2, err2
    assert "Traceback" not in err2 + err1
    bundle = Bundle.load(bundle_copy)  # valid afterwards, and the artifact verifies
    assert bundle.artifact("model.onnx").is_file()


def _file_size_limit(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        # Ignored, SIGXFSZ turns into EFBIG from write(), as ENOSPC does on a full disk.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def _snapshot(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("limit_mib", [1, 40])  # at the first write; near the end of the graph
def test_export_under_a_file_size_limit_leaves_the_bundle_usable(bundle_copy, cli, limit_mib):
    """A full disk midway through re-exporting: the previous export stays intact and usable."""
    from toolkit.export import ExportOptions, export

    export(Bundle.load(bundle_copy), ExportOptions(max_batch=8), echo=lambda *_: None)
    evaluated = cli("eval", bundle_copy, "--backend", "onnxruntime", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    before = _snapshot(bundle_copy)
    proc = subprocess.run([*rtk_command(), "export", str(bundle_copy),
                           "--max-batch", "8"], capture_output=True, text=True, timeout=600,
                          preexec_fn=_file_size_limit(limit_mib << 20))  # the graph is ~45 MiB
    assert proc.returncode != 0 and "Error:" in proc.stderr and "Traceback" not in proc.stderr
    assert "Disk full" in proc.stderr and "previous files are unchanged" in proc.stderr, proc.stderr
    after = _snapshot(bundle_copy)
    assert after == before, sorted(k for k in set(before) | set(after)
                                   if before.get(k) != after.get(k))
    again = cli("eval", bundle_copy, "--backend", "onnxruntime", "--json")
    assert again.exit_code == 0, again.output
    timing = ("seconds", "images_per_second")  # how fast it ran: the only fields that may differ
    same = lambda out: {k: v for k, v in json.loads(out).items() if k not in timing}  # noqa: E731
    assert same(again.stdout) == same(evaluated.stdout)
