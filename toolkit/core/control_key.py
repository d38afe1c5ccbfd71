"""The key that guards Triton's control APIs on every server rtk starts.

`rtk serve` runs Triton with explicit model control (its watchdog reloads a model whose
backend died), and Triton's model-repository API would let any client that reaches the port
unload the served model. Triton can put APIs behind a header: `--http-restricted-api` and
`--grpc-restricted-protocol` (both in the tritonserver of nvidia-pytriton, 2.51). rtk
restricts the model-repository, model-config, shared-memory, trace and logging APIs;
inference, health, metadata and statistics stay open.

Where the key comes from: $RTK_TRITON_CONTROL_KEY (Kubernetes: a Secret), else a file
(`rtk serve --control-key-file`), else a fresh random key per server. A local server
publishes it in a file only its user can read, one per port, so rtk's own clients on this
machine (the watchdog, `rtk tune`, eval/predict/bench with the triton backend, the tests)
find it by the address they connect to.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

from .errors import RtkError

HEADER = "rtk-control-key"
ENV = "RTK_TRITON_CONTROL_KEY"
RESTRICTED = ("model-repository", "model-config", "shared-memory", "trace", "logging")


def key_dir() -> Path:
    """A per-user folder for published keys (the runtime dir where there is one)."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"rtk-{os.getuid() if hasattr(os, 'getuid') else 'user'}" / "triton-keys"


def key_file(host: str, port: int | str) -> Path:
    host = "127.0.0.1" if host in ("localhost", "0.0.0.0", "") else host
    return key_dir() / f"{host}_{port}.key"


def server_key(path: str | Path | None = None) -> str:
    """The key a server starts with: $RTK_TRITON_CONTROL_KEY, the file, or a new random one."""
    if os.environ.get(ENV):
        return os.environ[ENV].strip()
    if path is not None:
        try:
            key = Path(path).read_text().strip()
        except OSError as exc:
            raise RtkError(f"Cannot read the control key file {path}: {exc.strerror}.",
                           "Pass a readable file, or leave --control-key-file out for a fresh key.") from exc
        if len(key) < 16:
            raise RtkError(f"The control key in {path} is {len(key)} characters long.",
                           "Use at least 16 random characters, e.g. `openssl rand -hex 24`.")
        return key
    return secrets.token_urlsafe(32)


def flags(key: str) -> list[str]:
    """tritonserver's options that put the control APIs behind the header."""
    apis = ",".join(RESTRICTED)
    return [f"--http-restricted-api={apis}:{HEADER}={key}",
            f"--grpc-restricted-protocol={apis}:{HEADER}={key}"]


def publish(key: str, host: str, ports: list[int]) -> list[Path]:
    """Write the key for each port, readable by this user only; returns the files."""
    folder = key_dir()
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    written = []
    for port in ports:
        path = key_file(host, port)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # never readable by others
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        os.replace(tmp, path)
        written.append(path)
    return written


def unpublish(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def client_key(url: str) -> str | None:
    """The key for a server at HOST:PORT: $RTK_TRITON_CONTROL_KEY, else the one a local
    `rtk serve` published for that port; None when neither exists (Triton will refuse)."""
    if os.environ.get(ENV):
        return os.environ[ENV].strip()
    host, _, port = url.split("://", 1)[-1].rstrip("/").rpartition(":")
    try:
        return key_file(host or "127.0.0.1", port).read_text().strip() or None
    except OSError:
        return None


GRPC_PREFIX = "triton-grpc-protocol-"  # Triton looks for the gRPC header under this prefix


def headers(key: str | None, protocol: str = "http") -> dict[str, str]:
    """The header that carries the key: `rtk-control-key` over HTTP, and Triton's prefixed
    `triton-grpc-protocol-rtk-control-key` over gRPC (as its refusal names it)."""
    if not key:
        return {}
    return {(GRPC_PREFIX + HEADER) if protocol == "grpc" else HEADER: key}
