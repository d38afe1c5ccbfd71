"""`rtk serve`: a real Triton server on a model repository, started, watched and stopped cleanly."""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Sequence

from ..core import control_key as keys
from ..core.errors import RtkError
from .install import find_tritonserver
from .repository import verify_repository

GLOG_PREFIX = re.compile(r'^[IWEF]\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\] "?')
FAILURE_MARKS = ("failed to load", "already in use", "Failed to listen", "failed to start",
                 "error: creating server", "Address in use", "failed to bind")
REMOTE = re.compile(r"^[a-z][a-z0-9+.-]*://")  # s3://, gs://, as://: Triton fetches these itself
KILL_AFTER_S = 15  # stop() waits this long past Triton's exit timeout before SIGKILL


def is_remote(repo: str | Path) -> bool:
    """A repository URI that Triton reads itself (cloud storage), not a local folder."""
    return bool(REMOTE.match(str(repo)))


def triton_command(binary: str | Path, repo: str | Path, ports: dict[str, int], *, address: str,
                   exit_timeout: int, load_models: Sequence[str] = (), shm_prefix: str = "rtk",
                   extra: Sequence[str] = ()) -> list[str]:
    """tritonserver's command line: explicit model control, loading LOAD_MODELS (all if empty)."""
    return [str(binary), f"--model-repository={repo}",
            *[f"--{k}-port={v}" for k, v in ports.items()],
            *[f"--{k}-address={address}" for k in ports],
            "--disable-auto-complete-config", f"--exit-timeout-secs={exit_timeout}",
            # Explicit model control loads the chosen models (or all, as the default mode would),
            # and lets the watchdog unload and reload one whose backend died.
            "--model-control-mode=explicit", *[f"--load-model={m}" for m in load_models or ["*"]],
            f"--backend-config=python,shm-region-prefix-name={shm_prefix}", *extra]


class TritonServer:
    """One tritonserver process; a context manager that always stops it."""

    def __init__(self, repo: str | Path, http_port: int = 8000, grpc_port: int = 8001,
                 *, metrics_port: int = 8002, address: str = "127.0.0.1",
                 log: Callable[[str], None] | None = None, exit_timeout: int = 10,
                 heal: bool = True, notify: Callable[[str], None] | None = None,
                 load_models: Sequence[str] = (), backend_env: str | Path | None = None,
                 control_key: str | None = None, control_key_file: str | Path | None = None) -> None:
        self.repo = repo if is_remote(repo) else Path(repo).resolve()
        self.load_models = list(dict.fromkeys(load_models))  # empty: every model in the repository
        self.ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
        self.address, self.log, self.exit_timeout = address, log, exit_timeout
        self.lines: collections.deque[str] = collections.deque(maxlen=500)
        self.proc: subprocess.Popen | None = None
        self._workdir: Path | None = None
        self._reader: threading.Thread | None = None
        self.source = ""
        # The local server's Python environment (toolkit.triton.backend_env); None: the default.
        self.backend_env, self.backend_root = backend_env, None
        # Reload a model whose backend process died (toolkit.triton.watchdog says why and how).
        self.heal, self.notify, self.watchdog = heal, notify or log or (lambda _: None), None
        # The control APIs (load, unload, config...) answer only with this key (core/control_key.py).
        self.control_key = control_key or keys.server_key(control_key_file)
        self.key_files: list[Path] = []

    @property
    def host(self) -> str:
        return "127.0.0.1" if self.address in ("0.0.0.0", "") else self.address

    @property
    def endpoints(self) -> dict[str, str]:
        return {"http": f"{self.host}:{self.ports['http']}", "grpc": f"{self.host}:{self.ports['grpc']}",
                "metrics": f"http://{self.host}:{self.ports['metrics']}/metrics"}

    def start(self, timeout: float = 180.0) -> "TritonServer":
        """Launch tritonserver and block until it is ready (or raise Triton's reason)."""
        self._check_repository()
        self._check_ports()
        self._workdir = Path(tempfile.mkdtemp(prefix="rtk-triton-"))
        try:
            install = find_tritonserver(self._workdir, self.backend_env)
        except BaseException:
            self.stop()  # removes the work folder
            raise
        self.source, self.backend_root = install.source, install.backend_env
        cmd = triton_command(install.binary, self.repo, self.ports, address=self.address,
                             exit_timeout=self.exit_timeout, load_models=self.load_models,
                             shm_prefix=f"rtk{os.getpid()}_{id(self) % 9973}",
                             extra=[*install.flags, *keys.flags(self.control_key)])
        self.proc = subprocess.Popen(cmd, env=install.env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                                     errors="replace", start_new_session=True,
                                     preexec_fn=_die_with_parent(ctypes.util.find_library("c")))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            self._wait_ready(timeout)
            if not is_remote(self.repo):  # an INT8 classifier serves only if it replays here
                from .replay import replay_all

                replay_all(self.repo, f"http://{self.host}:{self.ports['http']}",
                           ready=lambda m: self._get(f"/v2/models/{m}/ready") is not None)
            self.key_files = keys.publish(self.control_key, self.host,
                                          [self.ports["http"], self.ports["grpc"]])
            if self.heal:
                self._watch()
        except BaseException:
            self.stop()
            raise
        return self

    def _watch(self) -> None:
        from .watchdog import ModelControl, Watchdog

        control = ModelControl(f"http://{self.host}:{self.ports['http']}", self.control_key)
        self.watchdog = Watchdog(self.proc.pid, control, self.notify,
                                 alive=lambda: self.proc.poll() is None).start()

    def _check_repository(self) -> None:
        """A local repository must parse and hold every model named to load; a remote one is Triton's."""
        if is_remote(self.repo):
            return
        if not self.repo.is_dir():
            raise RtkError(f"No model repository at {self.repo}.",
                           "Generate one with: rtk triton RUN_DIR --repo REPO")
        names = verify_repository(self.repo)
        missing = [m for m in self.load_models if m != "*" and m not in names]
        if missing:
            raise RtkError(f"No model {', '.join(map(repr, missing))} in {self.repo}.",
                           f"Choose --load-model among: {', '.join(names)}.")

    def _check_ports(self) -> None:
        for kind, port in self.ports.items():
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((self.address, port))
                except OSError as exc:
                    raise RtkError(f"Cannot use {self.address}:{port} for {kind}: {exc.strerror}.",
                                   f"Another server holds it; pass --{kind}-port with a free port.") \
                        from exc

    def _read(self) -> None:
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            if self.log:
                self.log(line)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._reader.join(timeout=5)
                reason = self.reason()
                raise RtkError(f"Triton exited (code {self.proc.returncode}) before it was ready: "
                               f"{reason}", _hint(reason, self.source, self.backend_root))
            if self._get("/v2/health/ready") is not None:
                return
            time.sleep(0.25)
        raise RtkError(f"Triton was not ready after {timeout:.0f} s: {self.reason()}",
                       "Models may still be loading; raise --timeout.")

    def _get(self, route: str, data: bytes | None = None):
        url = f"http://{self.host}:{self.ports['http']}{route}"
        request = urllib.request.Request(url, data=data, headers=keys.headers(self.control_key))
        try:
            with urllib.request.urlopen(request, timeout=2) as resp:
                body = resp.read()
                return json.loads(body) if body else {}
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def models(self) -> list[dict]:
        """The repository index as Triton reports it (name, version, state)."""
        return self._get("/v2/repository/index", data=b"{}") or []

    def version(self) -> str | None:
        return (self._get("/v2") or {}).get("version")

    def reason(self) -> str:
        """Triton's own words for the failure, from its log: model status rows first."""
        rows, errors = [], []
        lines = list(self.lines)  # a snapshot: the reader thread keeps appending
        for line in lines:
            if line.startswith("|") and "UNAVAILABLE" in line:
                name, version, status = [p.strip() for p in line.strip().strip("|").split("|")][:3]
                rows.append(f"model {name} (version {version}) is {status}")
                continue
            text = GLOG_PREFIX.sub("", line).strip().strip('"')
            if any(m in text for m in FAILURE_MARKS):
                errors.append(text)
        found = rows or errors or [GLOG_PREFIX.sub("", s) for s in lines if s.startswith("E")]
        found = list(dict.fromkeys(f.split("\\n")[0].strip() for f in found))
        return "; ".join(found[-3:]) or "no error in its log"

    def wait(self) -> int:
        """Block until Triton exits; its exit code."""
        return self.proc.wait()

    def stop(self) -> None:
        """SIGINT (Triton's graceful shutdown), then SIGKILL if it outlives its exit timeout."""
        if self.watchdog is not None:
            self.watchdog.stop()  # first: the stubs are about to exit on purpose
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=self.exit_timeout + KILL_AFTER_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the Python backend stubs too
                self.proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)
        keys.unpublish(self.key_files)
        self.key_files = []
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> "TritonServer":
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _hint(reason: str, source: str, backend_root: Path | None = None) -> str:
    if "Stub process" in reason and backend_root is not None:
        # backend_env.check() passed, yet a package in the environment may still be broken.
        return (f"A Python backend stub died. Unless the model's own code is at fault, rebuild "
                f"the environment it runs in: rtk triton-env {backend_root} --force")
    if "unable to find backend library" in reason and source == "nvidia-pytriton":
        return ("The tritonserver inside nvidia-pytriton has only the Python backend: regenerate "
                "with `rtk triton RUN_DIR --platform python`, or serve with the official Triton "
                "image (see compose.yaml).")
    return "Fix the model or port named above; the full log is Triton's output (without --quiet)."


def _die_with_parent(libc_name: str | None):
    """A preexec_fn: SIGTERM Triton if rtk dies, so no orphan server keeps the ports.

    libc is found in the parent: find_library runs ldconfig, unsafe between fork and exec.
    """
    def arm() -> None:
        if libc_name:
            ctypes.CDLL(libc_name, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return arm


def free_port(address: str = "127.0.0.1") -> int:
    """A port the OS considers free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return s.getsockname()[1]
