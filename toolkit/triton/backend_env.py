"""The local Triton server's own Python environment, apart from rtk's.

The tritonserver in nvidia-pytriton runs rtk's repository models in its Python backend stub,
which embeds whatever Python it finds (libpython via LD_LIBRARY_PATH, the environment via
`python3` on PATH). That stub needs numpy<2 (with numpy 2 it dies, "Stub process ... is not
healthy"), and nvidia-pytriton itself requires numpy<2, so the server, its stub and the
models' imports live in a virtual environment of their own: `rtk triton-env` makes it, and
`rtk serve`, `rtk tune` and the tests find it here. rtk's environment keeps any numpy.

Why a plain venv reached through PATH/LD_LIBRARY_PATH and not the Python backend's
EXECUTION_ENV_PATH: that parameter takes a conda-pack tarball (or an unpacked conda env with
conda-pack's activate script), so it needs conda, which a pip user does not have; it is set
per model in config.pbtxt, so every generated repository would carry a path of this machine
and differ from what the NGC image serves; and the packed Python must still match the stub's
version. A venv needs only pip, leaves the repositories as they are, and is how nvidia-pytriton
itself runs the stub. The NGC image (tritonserver on PATH) never uses this module.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import RtkError

ENV_VAR = "RTK_TRITON_ENV"
# The server and the stub's numpy cap, plus what rtk's repository models import on a CPU
# instance: numpy and Pillow (preprocessing, through imageio.py), onnxruntime (--platform python).
REQUIREMENTS = ("nvidia-pytriton>=0.5", "numpy>=1.24,<2", "pillow>=10", "onnxruntime>=1.18")
MODULES = {"pytriton": "nvidia-pytriton", "numpy": "numpy", "PIL": "pillow",
           "onnxruntime": "onnxruntime"}

# Run by the environment's own interpreter: what the stub will find there.
PROBE = """
import importlib.util, json, sys, sysconfig
from importlib import metadata
mods = json.loads(sys.argv[1])
def version(dist):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None
spec = importlib.util.find_spec("pytriton")
print(json.dumps({
    "python": "%d.%d" % sys.version_info[:2], "prefix": sys.prefix,
    "shared": bool(sysconfig.get_config_var("Py_ENABLE_SHARED")),
    "libdir": sysconfig.get_config_var("LIBDIR") or "",
    "ldlibrary": sysconfig.get_config_var("LDLIBRARY") or "",
    "missing": [d for m, d in mods.items() if importlib.util.find_spec(m) is None],
    "versions": {d: version(d) for d in mods.values()},
    "pytriton": spec.origin if spec and spec.origin else None}))
"""


@dataclass
class BackendEnv:
    """A checked backend environment: its interpreter and where nvidia-pytriton's server lies."""

    root: Path
    python: str  # "3.11"
    libdir: Path  # holds the shared libpython the stub links
    server_root: Path  # site-packages/pytriton/tritonserver
    versions: dict[str, str | None]

    @property
    def bin(self) -> Path:
        return self.root / "bin"


def default_location() -> Path:
    """Beside rtk's venv (.venv -> .venv-triton); outside a venv, the user's data folder."""
    prefix = Path(sys.prefix).resolve()  # a symlinked .venv: beside the real one
    if sys.prefix != sys.base_prefix:
        return prefix.with_name(prefix.name + "-triton")
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "rtk" / "triton-env"


def locate(explicit: str | os.PathLike | None = None) -> tuple[Path, str]:
    """The environment to use and where that choice came from: the option, the variable, the default."""
    if explicit:
        return Path(explicit).expanduser().absolute(), "the path given"
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser().absolute(), ENV_VAR
    return default_location(), "the default location"


def make_command(root: Path, origin: str = "the path given", force: bool = False) -> str:
    """The rtk command that creates (or repairs) the environment at ROOT."""
    where = "" if origin == "the default location" else f" {root}"
    return f"rtk triton-env{where}{' --force' if force else ''}"


def check(explicit: str | os.PathLike | None = None) -> BackendEnv:
    """The located environment, checked for everything the stub needs; RtkError says what is wrong."""
    root, origin = locate(explicit)
    fix = make_command(root, origin)
    what = f"The local Triton server's Python backend environment {root} (from {origin})"
    if not root.exists():
        raise RtkError(f"No Python backend environment for the local Triton server at {root} "
                       f"(from {origin}).", f"Create it with: {fix}")
    _not_rtks_own(root)
    python = root / "bin" / "python3"
    if not python.exists():
        raise RtkError(f"{what} is not a Python environment (no {python}).",
                       f"Create one elsewhere with `rtk triton-env PATH` and point {ENV_VAR} at it, "
                       f"or replace this folder: {make_command(root, origin, force=True)}")
    info = _probe(python)
    return _judge(root, info, what, fix=fix, origin=origin)


def _not_rtks_own(root: Path) -> None:
    """rtk's environment is never the server's: installing numpy<2 there would downgrade rtk's."""
    if root.resolve() == Path(sys.prefix).resolve():
        raise RtkError(f"{root} is rtk's own environment; the local Triton server needs one of "
                       "its own (numpy<2 there would downgrade rtk's numpy).",
                       f"Make a separate one: rtk triton-env (default {default_location()}) "
                       f"or rtk triton-env PATH with {ENV_VAR}=PATH")


def _judge(root: Path, info: dict, what: str, *, fix: str, origin: str) -> BackendEnv:
    recreate = make_command(root, origin, force=True)
    if not info["shared"] or not (Path(info["libdir"]) / info["ldlibrary"]).exists():
        raise RtkError(f"{what} runs a Python without a shared libpython, which the stub embeds.",
                       f"Recreate it from a Python built with --enable-shared: {recreate} "
                       "--python /path/to/python3")
    if info["missing"]:
        raise RtkError(f"{what} lacks {', '.join(info['missing'])}.", f"Install them with: {fix}")
    numpy = info["versions"]["numpy"] or "0"
    if int(numpy.split(".")[0]) >= 2:
        raise RtkError(f"{what} has numpy {numpy}; the Python backend stub of nvidia-pytriton's "
                       "server needs numpy<2.", f"Fix it with: {fix}")
    server = Path(info["pytriton"]).parent / "tritonserver"
    stub = server / "python_backend_stubs" / info["python"] / "triton_python_backend_stub"
    if not stub.is_file():
        have = sorted(p.name for p in (server / "python_backend_stubs").glob("*"))
        raise RtkError(f"{what} runs Python {info['python']}, for which nvidia-pytriton has no "
                       f"Python backend stub.", f"Recreate it from Python {' or '.join(have)}: "
                       f"{recreate} --python /path/to/python3.X")
    return BackendEnv(root, info["python"], Path(info["libdir"]), server, info["versions"])


def _probe(python: Path) -> dict:
    # -I: neither PYTHONPATH nor the user's site-packages, as for the stub (see install.stub_env).
    try:
        out = subprocess.run([str(python), "-I", "-c", PROBE, json.dumps(MODULES)], check=True,
                             capture_output=True, text=True, timeout=60).stdout
        return json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        detail = getattr(exc, "stderr", None) or exc
        raise RtkError(f"Cannot run {python}: {str(detail).strip()[-300:]}",
                       f"Recreate the environment: rtk triton-env {python.parent.parent} --force") \
            from exc


def create(root: str | os.PathLike | None = None, python: str | None = None, force: bool = False,
           *, echo=print) -> BackendEnv:
    """Make (or bring up to date) the backend environment at ROOT; idempotent, never silent."""
    path, origin = locate(root)
    _not_rtks_own(path)
    base = python or sys.executable
    if path.exists() and force:
        if any(path.iterdir()) and not (path / "pyvenv.cfg").is_file():
            raise RtkError(f"{path} is not a virtual environment; --force replaces only those.",
                           "Choose another folder: rtk triton-env PATH")
        echo(f"Removing {path}")
        shutil.rmtree(path)
    if not path.exists() or not any(path.iterdir()):
        _shared_libpython_or_raise(Path(base))
        echo(f"Creating the local Triton server's Python environment in {path} (from {base})")
        _run([base, "-m", "venv", str(path)])
    elif not (path / "bin" / "python3").exists():
        raise RtkError(f"{path} exists and is not a Python environment.",
                       f"Choose another folder, or replace it: {make_command(path, origin, True)}")
    echo(f"Installing {' '.join(REQUIREMENTS)}")
    _run([str(path / "bin" / "python3"), "-m", "pip", "install", "--quiet",
          "--disable-pip-version-check", *REQUIREMENTS])
    return check(path)


def _shared_libpython_or_raise(base: Path) -> None:
    """Refuse before a long install: the stub cannot embed a Python without a shared libpython."""
    info = _probe(base)
    if not info["shared"] or not (Path(info["libdir"]) / info["ldlibrary"]).exists():
        raise RtkError(f"{base} (Python {info['python']}) has no shared libpython, which the "
                       "Python backend stub embeds.",
                       "Pass --python with a Python built with --enable-shared (distribution "
                       "packages, or pyenv with PYTHON_CONFIGURE_OPTS=--enable-shared).")


def clean_environ() -> dict[str, str]:
    """os.environ without what would mix rtk's environment into this one (PYTHONPATH, say)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _run(cmd: list[str]) -> None:
    try:
        subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, env=clean_environ())
    except (OSError, subprocess.CalledProcessError) as exc:
        raise RtkError(f"{' '.join(cmd[:4])} ... failed: {exc}",
                       "Its output is above; fix that, then rerun the same rtk triton-env.") from exc


def describe(env: BackendEnv) -> str:
    """One line naming the environment and the versions that matter."""
    v = env.versions
    return (f"{env.root}: Python {env.python}, numpy {v.get('numpy')}, nvidia-pytriton "
            f"{v.get('nvidia-pytriton')}, onnxruntime {v.get('onnxruntime')}, "
            f"Pillow {v.get('pillow')}")
