"""Where the tritonserver binary is, and the flags and environment it needs to run here."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import RtkError

HINT = "Install it with: pip install 'rtk[triton]' (nvidia-pytriton ships a tritonserver), " \
       "or run inside the official Triton image (see compose.yaml)."


@dataclass
class Installation:
    """A tritonserver binary plus the extra flags and environment it needs."""

    binary: Path
    source: str  # "PATH" or "nvidia-pytriton"
    flags: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


def find_tritonserver(workdir: Path) -> Installation:
    """`tritonserver` from PATH when present, else the one inside the nvidia-pytriton wheel."""
    on_path = shutil.which("tritonserver")
    if on_path:
        # A full install (NGC's image: /opt/tritonserver/bin on PATH) keeps its own default
        # --backend-directory (/opt/tritonserver/backends) and its own Python backend stub, built
        # for the image's Python: no flag and no stub environment from rtk.
        return Installation(Path(on_path), "PATH", env=dict(os.environ))
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.origin:
        raise RtkError("No Triton server here: tritonserver is not on PATH and nvidia-pytriton "
                       "is not installed.", HINT)
    root = Path(spec.origin).parent / "tritonserver"
    binary = root / "bin" / "tritonserver"
    if not binary.is_file():
        raise RtkError(f"nvidia-pytriton is installed but has no server binary at {binary}.", HINT)
    backends = _python_backend_dir(root, workdir)
    libs = root.parent.parent / "nvidia_pytriton.libs"  # wheel; an editable install keeps them inside
    libs = libs if libs.is_dir() else root / "external_libs"
    return Installation(binary, "nvidia-pytriton", [f"--backend-directory={backends}"], _stub_env(libs))


def _python_backend_dir(root: Path, workdir: Path) -> Path:
    """A backends/ folder whose python/ holds the stub built for this interpreter (as pytriton does)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        have = sorted(p.name for p in (root / "python_backend_stubs").glob("*"))
        raise RtkError(f"nvidia-pytriton has no Python backend stub for Python {version}.",
                       f"Use a Python it supports ({', '.join(have)}) for rtk's environment.")
    python = workdir / "backends" / "python"
    python.mkdir(parents=True)
    for item in (root / "backends" / "python").iterdir():
        if item.name != "__pycache__":
            (python / item.name).symlink_to(item)
    (python / stub.name).symlink_to(stub)
    return python.parent


def _stub_env(libs: Path) -> dict[str, str]:
    """PATH and LD_LIBRARY_PATH so the stub embeds this interpreter (its libpython, its numpy)."""
    from importlib import metadata

    libdir = sysconfig.get_config_var("LIBDIR") or ""
    libpython = sysconfig.get_config_var("LDLIBRARY") or ""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED") or not (Path(libdir) / libpython).exists():
        raise RtkError(f"This Python ({sys.executable}) has no shared libpython, which Triton's "
                       "Python backend stub needs.",
                       "Use a Python built with --enable-shared (distribution packages, or pyenv "
                       "with PYTHON_CONFIGURE_OPTS=--enable-shared) for rtk's environment.")
    try:
        numpy_version = metadata.version("numpy")
    except metadata.PackageNotFoundError:
        numpy_version = None
    if numpy_version is None or int(numpy_version.split(".")[0]) >= 2:
        raise RtkError(f"The Python backend stub needs numpy<2 in {sys.prefix} "
                       f"(found {numpy_version or 'none'}).", "Install it: pip install 'numpy<2'")
    env = dict(os.environ)
    # The stub finds `python3` on PATH to locate the environment (venv site-packages).
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    parts = [libdir, str(libs), env.get("LD_LIBRARY_PATH", "")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in parts if p)
    return env
