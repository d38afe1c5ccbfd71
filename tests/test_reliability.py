"""Faults and overload against a real Triton server started by `rtk serve` (never mocked).

- The classifier's Python backend process is killed (as the OOM killer would): `rtk serve`
  reloads it with no one's help, and Triton reports not ready in between.
- A burst far beyond capacity on a deployment with a small queue: every request ends
  quickly, failures say "queue full" or "timed out", and the server stays up.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tritonclient.http")
pytest.importorskip("tritonclient.grpc")

from conftest import popen_rtk  # noqa: E402
from toolkit.core.errors import RtkError  # noqa: E402

# conftest skips these, with the reason, where no Triton server can start (under CI: fails)
pytestmark = [pytest.mark.triton, pytest.mark.slow]

QUEUE, QUEUE_TIMEOUT_MS = 4, 500  # the small deployment of the burst test
OVERLOAD = re.compile(r"Exceeds maximum queue size|Request timeout expired")


@pytest.fixture(scope="module")
def deployed(tiny_bundle, module_tmp):
    """The tiny bundle, exported, with two repositories: default queues and a small one."""
    from toolkit.core.bundle import Bundle
    from toolkit.export import ExportOptions, export
    from toolkit.triton import RepoOptions, write_repository

    root = module_tmp("reliability") / "run"
    shutil.copytree(tiny_bundle, root)
    bundle = Bundle.load(root)
    export(bundle, ExportOptions(max_batch=16), echo=lambda *_: None)
    for repo, queue in (("repo", {}), ("small", {"max_queue_size": QUEUE,
                                                 "queue_timeout_ms": QUEUE_TIMEOUT_MS})):
        write_repository(bundle, RepoOptions(repo=str(root.parent / repo), name="tiny",
                                             platform="python", **queue), echo=lambda *_: None)
    return bundle


class Serving:
    """A running `rtk serve`: its ports, output, and the processes under it."""

    def __init__(self, proc, ports, output):
        self.proc, self.ports, self.output = proc, ports, output

    def get(self, route: str) -> int | None:
        """HTTP status of a GET on Triton's HTTP port (None: no answer)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['http']}{route}",
                                        timeout=2) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except (urllib.error.URLError, OSError):
            return None

    def text(self) -> str:
        return "".join(self.output)

    def tritonserver(self) -> int:
        (pid,) = [p for p in _children(self.proc.pid) if _comm(p) == "tritonserver"]
        return pid

    def stub(self, model: str) -> int:
        from toolkit.triton.watchdog import live_stubs

        pids = sorted(p for p, m in live_stubs(self.tritonserver()).items() if m == model)
        assert pids, f"no backend process of {model}"
        return pids[0]  # one of its instances (decoding runs one per core)


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                stat = Path(f"/proc/{entry.name}/stat").read_bytes()
                if int(stat.rsplit(b")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def _comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def _rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024


@contextlib.contextmanager
def rtk_serve(repo: Path, *extra: str):
    """`rtk serve REPO [EXTRA]` on free ports until ready; Ctrl-C (SIGINT), a clean exit at the end."""
    from toolkit.triton.server import free_port

    ports = {p: free_port() for p in ("http", "grpc", "metrics")}
    proc = popen_rtk(["serve", repo, "--http-port", ports["http"], "--grpc-port", ports["grpc"],
                      "--metrics-port", ports["metrics"], "--quiet", *extra])
    output: list[str] = []
    readers = [threading.Thread(target=lambda s=s: output.extend(iter(s.readline, "")), daemon=True)
               for s in (proc.stdout, proc.stderr)]
    for reader in readers:
        reader.start()
    try:
        deadline = time.monotonic() + 120
        while "Press Ctrl-C to stop." not in "".join(output):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("rtk serve did not become ready:\n" + "".join(output))
            time.sleep(0.2)
        yield Serving(proc, ports, output)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=60)
        except Exception:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        for reader in readers:
            reader.join(timeout=5)
    assert code == 0, "".join(output)


def _infer_once(lib, client, image: bytes):
    """One request to the ensemble, no retries: None on success, else Triton's message."""
    inp = lib.InferInput("image", [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[image]], dtype=object))
    try:
        client.infer("tiny", [inp])
        return None
    except Exception as exc:  # noqa: BLE001 - the message is what the test looks at
        return str(exc)


def _image(bundle) -> bytes:
    from toolkit.backends.run import validation_samples

    return validation_samples(bundle)[0][0].read_bytes()


class ReadyPoller:
    """Polls readiness endpoints every few milliseconds in a thread; records every answer."""

    def __init__(self, serving: Serving, routes: list[str]):
        self.serving, self.routes, self.seen = serving, routes, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.seen.append((time.monotonic(), [self.serving.get(r) for r in self.routes]))
            time.sleep(0.005)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def not_ready(self, route: str, start: float, end: float) -> int:
        i = self.routes.index(route)
        return sum(1 for t, codes in self.seen if start <= t <= end and codes[i] != 200)


def test_killed_classifier_backend_is_reloaded_and_not_ready_meanwhile(deployed):
    import tritonclient.http as lib

    image = _image(deployed)
    with rtk_serve(deployed.root.parent / "repo") as serving:
        client = lib.InferenceServerClient(f"127.0.0.1:{serving.ports['http']}")
        assert _infer_once(lib, client, image) is None
        routes = ["/v2/health/ready", "/v2/models/tiny/ready"]
        with ReadyPoller(serving, routes) as poller:
            time.sleep(0.2)
            killed = time.monotonic()
            os.kill(serving.stub("tiny_classifier"), signal.SIGKILL)  # as the OOM killer does
            errors = []
            while (error := _infer_once(lib, client, image)) is not None:
                errors.append(error)
                assert time.monotonic() - killed < 30, f"no recovery in 30 s: {errors[-3:]}"
                time.sleep(0.05)
            recovered = time.monotonic()
        print(f"recovered {recovered - killed:.2f} s after the kill; {len(errors)} failed requests; "
              f"not ready: {[poller.not_ready(r, killed, recovered) for r in routes]} polls")
        for route in routes:  # Triton itself said not ready while the model was down
            assert poller.not_ready(route, killed, recovered) > 0, (route, poller.seen[-50:])
        client.close()
        deadline = time.monotonic() + 10
        while "is serving again" not in serving.text() and time.monotonic() < deadline:
            time.sleep(0.1)
        text = serving.text()
    assert "backend process of model tiny_classifier" in text and "is serving again" in text, text


def test_a_model_that_cannot_reload_keeps_triton_not_ready_until_it_can(deployed, tmp_path):
    """Reload attempts repeat with backoff; Triton reports not ready all along (no 200)."""
    import tritonclient.http as lib

    repo = shutil.copytree(deployed.root.parent / "repo", tmp_path / "repo")
    onnx = repo / "tiny_classifier" / "1" / "model.onnx"
    good = onnx.read_bytes()
    with rtk_serve(repo) as serving:
        onnx.write_bytes(b"damaged")  # as if the disk under the repository went bad
        os.kill(serving.stub("tiny_classifier"), signal.SIGKILL)
        deadline = time.monotonic() + 30
        while serving.text().count("failed (") < 2:  # two reload attempts failed
            assert time.monotonic() < deadline, serving.text()
            time.sleep(0.1)
        assert serving.get("/v2/health/ready") != 200
        assert serving.get("/v2/models/tiny/ready") != 200
        onnx.write_bytes(good)
        client = lib.InferenceServerClient(f"127.0.0.1:{serving.ports['http']}")
        deadline = time.monotonic() + 30  # the backoff is at most 4 s by now
        while _infer_once(lib, client, _image(deployed)) is not None:
            assert time.monotonic() < deadline, serving.text()
            time.sleep(0.2)
        client.close()
        assert serving.get("/v2/health/ready") == 200


def test_load_model_serves_only_the_named_models_and_still_heals(deployed):
    """`--load-model` (how the container and Kubernetes deployments start) limits what loads;
    the watchdog still reloads a named model and brings back none that was left out."""
    from toolkit.core import control_key as keys
    from toolkit.triton.watchdog import ModelControl

    named = ["tiny_classifier", "tiny_postprocess"]
    with rtk_serve(deployed.root.parent / "repo", *[a for m in named for a in ("--load-model", m)]
                   ) as serving:
        url = f"127.0.0.1:{serving.ports['http']}"
        control = ModelControl(f"http://{url}", keys.client_key(url))
        ready = lambda: sorted(n for n, s in (control.states() or {}).items() if s == "READY")  # noqa: E731
        assert ready() == named and "ready with 2 model(s)" in serving.text()
        assert serving.get("/v2/health/ready") == 200
        os.kill(serving.stub("tiny_classifier"), signal.SIGKILL)
        deadline = time.monotonic() + 30
        while "is serving again" not in serving.text():
            assert time.monotonic() < deadline, serving.text()
            time.sleep(0.1)
        assert ready() == named and serving.get("/v2/health/ready") == 200


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_rtk_client_rides_through_a_backend_crash(deployed, protocol):
    """The triton backend of eval/predict retries while the model is reloaded: no error."""
    from toolkit.backends import open_backend
    from toolkit.backends.run import validation_samples

    images = [p.read_bytes() for p, _ in validation_samples(deployed)[:4]]
    with rtk_serve(deployed.root.parent / "repo") as serving:
        url = f"127.0.0.1:{serving.ports[protocol]}"
        with open_backend("triton", deployed, url=url, protocol=protocol) as client:
            before = client(images)
            os.kill(serving.stub("tiny_classifier"), signal.SIGKILL)
            after = client(images)  # the first attempt meets the dead stub or the reload
            assert np.allclose(before, after, atol=1e-5)
            os.kill(serving.stub("tiny_preprocess"), signal.SIGKILL)
            assert np.allclose(client(images), before, atol=1e-5)
            with pytest.raises(RtkError, match="rejected the input") as info:
                client([b"not an image"])  # bad input: at once, and not retried
            assert "Check the images" in info.value.hint and "attempts" not in info.value.message


def test_burst_far_beyond_capacity_fails_fast_and_server_survives(deployed):
    import tritonclient.grpc as lib

    image, seconds, concurrency = _image(deployed), 20.0, 64
    bound = QUEUE_TIMEOUT_MS / 1000 + 1.0
    with rtk_serve(deployed.root.parent / "small") as serving:
        url, server = f"127.0.0.1:{serving.ports['grpc']}", serving.tritonserver()
        rss_before, results, lock = _rss_mib(server), [], threading.Lock()
        end = time.monotonic() + seconds

        def worker():
            client = lib.InferenceServerClient(url)
            mine = []
            while time.monotonic() < end:
                start = time.monotonic()
                error = _infer_once(lib, client, image)
                mine.append((time.monotonic() - start, error))
            client.close()
            with lock:
                results.extend(mine)

        threads = [threading.Thread(target=worker) for _ in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert serving.get("/v2/health/live") == 200 and serving.get("/v2/health/ready") == 200
        probe = lib.InferenceServerClient(url)
        assert _infer_once(lib, probe, image) is None  # still serving
        probe.close()
        rss_after = _rss_mib(server)
    failures = [e for _, e in results if e is not None]
    slowest = max(d for d, _ in results)
    print(f"{len(results)} requests, {len(failures)} turned away, slowest {slowest:.2f} s, "
          f"server RSS {rss_before:.0f} -> {rss_after:.0f} MiB")
    assert len(results) > concurrency and len(failures) < len(results)  # some were served
    assert failures, "the burst never met the queue bound"
    assert all(OVERLOAD.search(e) for e in failures), {e for e in failures if not OVERLOAD.search(e)}
    assert slowest <= bound, f"a request took {slowest:.2f} s (bound {bound:.1f} s)"
    assert rss_after < rss_before + 256, (rss_before, rss_after)  # bounded memory


def test_control_apis_need_the_key_and_an_unload_is_loaded_again(deployed):
    """Without the key an unload is refused and the model stays ready; with it the model goes,
    readiness fails (the ensemble's ready endpoint, which the probes ask) until the watchdog
    has loaded it again. Inference, health, metadata and statistics need no key."""
    import tritonclient.grpc as grpc

    from toolkit.core import control_key as keys
    from toolkit.triton.watchdog import ModelControl

    with rtk_serve(deployed.root.parent / "repo") as serving:
        http, route = f"127.0.0.1:{serving.ports['http']}", "/v2/models/tiny/ready"
        key = keys.client_key(http)
        assert key and len(key) >= 32 and "rtk-control-key" in serving.text()
        assert keys.client_key(f"127.0.0.1:{serving.ports['grpc']}") == key
        for wrong in (None, "not-the-key-not-the-key"):
            ok, message = ModelControl(f"http://{http}", wrong).unload("tiny")
            assert not ok and "restricted" in message, message
        assert serving.get(route) == 200 and serving.get("/v2/health/ready") == 200
        assert serving.get("/v2/models/tiny") == 200 and serving.get("/v2/models/stats") == 200
        assert serving.get("/v2/models/tiny/config") == 403  # model config is a control API
        client = grpc.InferenceServerClient(f"127.0.0.1:{serving.ports['grpc']}")
        with pytest.raises(Exception, match="restricted"):
            client.unload_model("tiny")
        assert client.is_model_ready("tiny")
        index = client.get_model_repository_index(headers=keys.headers(key, "grpc"), as_json=True)
        assert {m["name"] for m in index["models"]} >= {"tiny", "tiny_classifier"}  # the key works
        client.close()
        with ReadyPoller(serving, [route]) as poller:
            start = time.monotonic()
            ok, message = ModelControl(f"http://{http}", key).unload("tiny_classifier")
            assert ok, message
            deadline = time.monotonic() + 30
            while "tiny_classifier is serving again" not in serving.text():
                assert time.monotonic() < deadline, serving.text()
                time.sleep(0.05)
            back = time.monotonic()
            while serving.get(route) != 200:  # the ensemble follows its steps
                assert time.monotonic() < deadline, serving.text()
                time.sleep(0.05)
            back = time.monotonic()
        down = poller.not_ready(route, start, back)
        print(f"unloaded with the key: not ready for {down} polls, ready again "
              f"{back - start:.2f} s later")
        assert down > 0
        image = _image(deployed)
        import tritonclient.http as lib

        client = lib.InferenceServerClient(http)
        assert _infer_once(lib, client, image) is None
        client.close()


def test_rtk_ready_names_a_model_that_is_not_ready(deployed, cli):
    """`rtk ready` (Compose's health check) fails while any served model is unloaded, which
    /v2/health/ready does not; here on a server without the watchdog, so nothing reloads it."""
    from toolkit.triton.server import TritonServer, free_port
    from toolkit.triton.watchdog import ModelControl

    server = TritonServer(deployed.root.parent / "repo", http_port=free_port(),
                          grpc_port=free_port(), metrics_port=free_port(), heal=False).start()
    try:
        url = server.endpoints["http"]
        result = cli("ready", url)
        assert result.exit_code == 0 and "tiny_classifier" in result.stdout, result.output
        ok, _ = ModelControl(f"http://{url}", server.control_key).unload("tiny_classifier")
        assert ok
        deadline = time.monotonic() + 30
        while (server.models() and any(m.get("state") == "UNLOADING" for m in server.models())):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert urllib.request.urlopen(f"http://{url}/v2/health/ready").status == 200  # Triton's own
        result = cli("ready", url)
        assert result.exit_code == 2 and "tiny_classifier is UNAVAILABLE" in result.output, result.output
    finally:
        server.stop()
    assert not any(p.exists() for p in server.key_files)  # the published key is gone with it
