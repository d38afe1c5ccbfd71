"""Where the tritonserver binary is, and the flags and environment it needs to run here."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import RtkError
from . import backend_env


@dataclass
class Installation:
    """A tritonserver binary plus the extra flags and environment it needs."""

    binary: Path
    source: str  # "PATH" or "nvidia-pytriton"
    flags: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    backend_env: Path | None = None  # the Python environment its stub embeds (nvidia-pytriton)


def find_tritonserver(workdir: Path, backend: str | os.PathLike | None = None) -> Installation:
    """`tritonserver` from PATH when present, else nvidia-pytriton's in the backend environment.

    BACKEND is that environment (default: backend_env.locate); RtkError when it is missing or
    unfit, with the command that makes it.
    """
    on_path = shutil.which("tritonserver")
    if on_path:
        # A full install (NGC's image: /opt/tritonserver/bin on PATH) keeps its own default
        # --backend-directory (/opt/tritonserver/backends) and its own Python backend stub, built
        # for the image's Python: no flag and no stub environment from rtk.
        return Installation(Path(on_path), "PATH", env=dict(os.environ))
    env = backend_env.check(backend)
    binary = env.server_root / "bin" / "tritonserver"
    if not binary.is_file():
        raise RtkError(f"nvidia-pytriton in {env.root} has no server binary at {binary}.",
                       f"Reinstall it: rtk triton-env {env.root} --force")
    backends = _python_backend_dir(env, workdir)
    libs = env.server_root.parent.parent / "nvidia_pytriton.libs"  # the wheel's bundled libraries
    libs = libs if libs.is_dir() else env.server_root / "external_libs"  # an editable install's
    return Installation(binary, "nvidia-pytriton", [f"--backend-directory={backends}"],
                        stub_env(env, libs), env.root)


def _python_backend_dir(env: backend_env.BackendEnv, workdir: Path) -> Path:
    """A backends/ folder whose python/ holds the stub built for the environment's Python."""
    root = env.server_root
    stub = root / "python_backend_stubs" / env.python / "triton_python_backend_stub"
    python = workdir / "backends" / "python"
    python.mkdir(parents=True)
    for item in (root / "backends" / "python").iterdir():
        if item.name != "__pycache__":
            (python / item.name).symlink_to(item)
    (python / stub.name).symlink_to(stub)
    return python.parent


def stub_env(env: backend_env.BackendEnv, libs: Path) -> dict[str, str]:
    """tritonserver's environment: its stub embeds the backend env's Python, and only that."""
    # The stub finds `python3` on PATH to locate the environment (its site-packages) and links
    # libpython from LD_LIBRARY_PATH. rtk's own PYTHONPATH or PYTHONHOME (numpy 2, say) must not
    # leak into it, nor the user's site-packages.
    out = backend_env.clean_environ()
    out["PATH"] = os.pathsep.join([str(env.bin), out.get("PATH", "")])
    parts = [str(env.libdir), str(libs), out.get("LD_LIBRARY_PATH", "")]
    out["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in parts if p)
    return out
