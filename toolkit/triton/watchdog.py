"""Self-healing for `rtk serve`: reload a model whose Python backend process died.

Why this mechanism: Triton 2.51's Python backend never restarts a dead stub. After the
kernel (OOM killer) or anything else kills `triton_python_backend_stub`, every request to
that model fails with "Stub process ... is not healthy" while `/v2/health/ready` and the
model's ready endpoint keep answering 200. A `load` of an unchanged loaded model is a
no-op, so the only repair is unload + load through the model control API, which needs
`--model-control-mode=explicit` (started with `--load-model=*`, so nothing else changes).

- Notice: every stub is a child of tritonserver with its model folder in its argv. The
  watchdog holds a pidfd per stub, so a death wakes it within milliseconds (Linux 5.3+);
  a /proc rescan each `interval` catches new stubs and kernels without pidfd.
- Not ready while broken: unloading the model makes Triton itself answer non-200 on
  `/v2/health/ready` (unloading, then loading) and on the ready endpoints of the model and
  of every ensemble that uses it (Triton unloads those with it) until the reload is done,
  so load balancers and Kubernetes probes stop sending traffic to this server meanwhile.
- Heal: load the model again (Triton reloads its ensembles too), retrying with backoff if
  the load fails; any model that was READY at start and is not afterwards is loaded too.

A model that was READY at start and is found unloaded (by a client with the control key:
see core/control_key.py) is loaded again within a second: the server serves what it started
with. Readiness fails meanwhile (the ensemble's ready endpoint, which the probes ask).
"""

from __future__ import annotations

import collections
import json
import os
import select
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from ..core import control_key as keys

STUB = "triton_python_backend_stub"
LOAD_TIMEOUT_S = 600  # a TensorRT plan or a big ONNX graph can take minutes to load


class ModelControl:
    """Triton's model repository API over HTTP: index, load, unload."""

    def __init__(self, base_url: str, key: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.key = key  # the control API's header (core/control_key.py)

    def _post(self, route: str, timeout: float) -> tuple[bool, str]:
        req = urllib.request.Request(self.base_url + route, data=b"{}", method="POST",
                                     headers=keys.headers(self.key))
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return True, resp.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")
            try:
                return False, json.loads(body).get("error", body)
            except ValueError:
                return False, body or str(exc)
        except (urllib.error.URLError, OSError) as exc:
            return False, str(getattr(exc, "reason", exc))

    def states(self) -> dict[str, str] | None:
        """Model name -> state (READY, UNAVAILABLE, LOADING...); None if Triton does not answer."""
        ok, body = self._post("/v2/repository/index", timeout=5)
        if not ok:
            return None
        try:
            return {m["name"]: m.get("state", "") for m in json.loads(body)}
        except (ValueError, KeyError, TypeError):
            return None

    def unload(self, name: str) -> tuple[bool, str]:
        return self._post(f"/v2/repository/models/{name}/unload", timeout=60)

    def load(self, name: str) -> tuple[bool, str]:
        return self._post(f"/v2/repository/models/{name}/load", timeout=LOAD_TIMEOUT_S)


def live_stubs(server_pid: int) -> dict[int, str]:
    """Python backend stubs of a tritonserver process that are still running: pid -> model."""
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            if int(fields[1]) != server_pid or fields[0] == b"Z":  # a zombie is a dead stub
                continue
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
        except (OSError, IndexError, ValueError):
            continue  # the process ended while we looked
        if len(argv) > 1 and argv[0].endswith(STUB):
            found[int(entry.name)] = Path(argv[1]).parent.parent.name  # <repo>/<model>/<v>/model.py
    return found


class Watchdog:
    """A thread that reloads models whose backend process died (see the module docstring)."""

    def __init__(self, server_pid: int, control: ModelControl, notify: Callable[[str], None],
                 *, alive: Callable[[], bool], interval: float = 1.0) -> None:
        self.server_pid, self.control, self.notify, self.alive = server_pid, control, notify, alive
        self.interval = interval
        self.heals: list[dict] = []  # one record per reload, for reports and tests
        self._watched: dict[int, tuple[int | None, str]] = {}  # pid -> (pidfd, model)
        self._poller = select.poll()
        self._wake_r, self._wake_w = os.pipe()
        self._poller.register(self._wake_r, select.POLLIN)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rtk-watchdog", daemon=True)
        self.expected: set[str] = set()
        self.counts: collections.Counter = collections.Counter()  # model -> its stubs at start

    def start(self) -> "Watchdog":
        self.expected = {n for n, s in (self.control.states() or {}).items() if s == "READY"}
        self.counts = collections.Counter(self._track().values())
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching (before Triton shuts down, whose stubs then exit on purpose)."""
        if self._stop.is_set():
            return
        self._stop.set()
        os.write(self._wake_w, b"x")
        if self._thread.is_alive():
            self._thread.join(timeout=5)  # a reload in flight ends when Triton stops
        if not self._thread.is_alive():
            for fd in (self._wake_r, self._wake_w):
                os.close(fd)

    def _track(self) -> dict[int, str]:
        """Watch stubs not yet watched; return the live ones."""
        live = live_stubs(self.server_pid)
        for pid, model in live.items():
            if pid not in self._watched:
                try:
                    fd = os.pidfd_open(pid)
                    self._poller.register(fd, select.POLLIN)
                except (AttributeError, OSError):  # no pidfd here: the rescan still notices
                    fd = None
                self._watched[pid] = (fd, model)
        return live

    def _forget(self, pid: int) -> None:
        fd, _ = self._watched.pop(pid)
        if fd is not None:
            self._poller.unregister(fd)
            os.close(fd)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._poller.poll(self.interval * 1000)
                if self._stop.is_set() or not self.alive():
                    return
                live = self._track()
                dead: dict[str, int | None] = {}
                for pid in [p for p in self._watched if p not in live]:
                    dead.setdefault(self._watched[pid][1], pid)
                    self._forget(pid)
                have = collections.Counter(live.values())  # also a stub that died untracked
                for model in [m for m, n in self.counts.items() if have[m] < n]:
                    dead.setdefault(model, None)
                for model, pid in dead.items():
                    self._heal(model, pid)
                self._restore()
        finally:
            for pid in list(self._watched):
                self._forget(pid)

    def _heal(self, model: str, pid: int | None) -> None:
        """Unload (so Triton reports not ready), then load until it works or we stop."""
        states = {} if self._stop.is_set() else self.control.states() or {}
        if states.get(model) != "READY":
            return  # unloaded on purpose, or Triton is going away
        died = time.monotonic()
        which = f" (pid {pid})" if pid else ""
        self.notify(f"rtk: the backend process of model {model}{which} died; reloading "
                    f"{model} (Triton reports not ready until it is back)")
        self.control.unload(model)
        delay, attempts = 1.0, 0
        while not self._stop.is_set() and self.alive():
            attempts += 1
            ok, reason = self.control.load(model)
            if ok and self._reload_others():
                took = time.monotonic() - died
                # The reload reads config.pbtxt again: its instance count may have changed.
                self.counts[model] = list(live_stubs(self.server_pid).values()).count(model)
                self.heals.append({"model": model, "pid": pid, "seconds": took, "attempts": attempts})
                self.notify(f"rtk: {model} is serving again, {took:.1f} s after its backend died")
                return
            first = (reason or "").strip().split("\n")[0] or "a model that uses it did not load"
            self.notify(f"rtk: reloading {model} failed ({first}); retrying in {delay:.0f} s")
            self._stop.wait(delay)
            delay = min(delay * 2, 30.0)

    def _restore(self) -> None:
        """Load again any model that was READY at start and is unloaded now, whoever unloaded
        it (a client holding the control key, say): the server serves what it started with.
        Passes repeat while they make progress: an ensemble loads only once its steps have."""
        for _ in range(len(self.expected)):
            states = None if self._stop.is_set() else self.control.states()
            if states is None:
                return
            gone = [m for m in sorted(self.expected)
                    if states.get(m) not in ("READY", "LOADING", "UNLOADING")]
            if not gone:
                return
            loaded = 0
            for model in gone:
                self.notify(f"rtk: model {model} is {states.get(model) or 'gone'} (unloaded); "
                            "loading it again")
                start = time.monotonic()
                ok, reason = self.control.load(model)
                if ok:
                    loaded += 1
                    self.heals.append({"model": model, "pid": None, "attempts": 1, "unloaded": True,
                                       "seconds": time.monotonic() - start})
                    self.notify(f"rtk: {model} is serving again")
                else:
                    first = (reason or "").strip().split("\n")[0]
                    self.notify(f"rtk: loading {model} failed ({first}); retrying")
            if not loaded:
                return  # the next round (every interval) tries again

    def _reload_others(self) -> bool:
        """Load every model that was READY at start and is not now (ensembles that used it)."""
        states = self.control.states() or {}
        for name in sorted(self.expected):
            if states.get(name) != "READY" and not self.control.load(name)[0]:
                return False
        return True
