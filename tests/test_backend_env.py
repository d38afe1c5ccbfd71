"""The local Triton server's own Python environment: found, checked, and named when unfit.

No server starts here. Each test builds a real venv (without pip, in well under a second)
whose site-packages hold stand-in packages with real distribution metadata, so the check runs
the environment's own interpreter exactly as `rtk serve` does.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import assert_user_error
from toolkit.core.errors import RtkError
from toolkit.triton import backend_env
from toolkit.triton.install import find_tritonserver

PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
PACKAGES = {"numpy": ("numpy", "1.26.4"), "PIL": ("pillow", "11.0.0"),
            "onnxruntime": ("onnxruntime", "1.20.0"), "pytriton": ("nvidia-pytriton", "0.7.0")}


def fake_env(root: Path, numpy: str = "1.26.4", missing: tuple[str, ...] = ()) -> Path:
    """A venv of this Python with stand-ins for the backend packages and nvidia-pytriton's server."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    site = next((root / "lib").glob("python*/site-packages"))
    for module, (dist, version) in PACKAGES.items():
        if module in missing:
            continue
        version = numpy if module == "numpy" else version
        (site / module).mkdir()
        (site / module / "__init__.py").write_text("")
        info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    if "pytriton" not in missing:
        server = site / "pytriton" / "tritonserver"
        for item in (f"python_backend_stubs/{PYTHON}/triton_python_backend_stub",
                     "bin/tritonserver", "backends/python/libtriton_python.so"):
            (server / item).parent.mkdir(parents=True, exist_ok=True)
            (server / item).write_text("")
    return root


@pytest.fixture
def no_tritonserver_on_path(monkeypatch):
    """A PATH without any tritonserver, as on a machine without the NGC image."""
    monkeypatch.setenv("PATH", "/usr/bin:/bin")


@pytest.mark.slow
def test_a_complete_environment_passes_and_reports_its_versions(tmp_path):
    env = backend_env.check(fake_env(tmp_path / "env"))
    assert env.python == PYTHON and env.versions["numpy"] == "1.26.4"
    assert env.server_root.name == "tritonserver" and env.root == tmp_path / "env"
    assert "numpy 1.26.4" in backend_env.describe(env)


@pytest.mark.slow
def test_numpy_2_is_refused_with_the_command_that_fixes_it(tmp_path):
    root = fake_env(tmp_path / "env", numpy="2.1.0")
    with pytest.raises(RtkError) as info:
        backend_env.check(root)
    assert "has numpy 2.1.0" in info.value.message and "numpy<2" in info.value.message
    assert info.value.hint == f"Fix it with: rtk triton-env {root}"


@pytest.mark.slow
def test_missing_packages_are_named(tmp_path):
    root = fake_env(tmp_path / "env", missing=("onnxruntime", "pytriton"))
    with pytest.raises(RtkError, match="lacks nvidia-pytriton, onnxruntime"):
        backend_env.check(root)


def test_the_variable_chooses_the_environment_and_the_default_sits_beside_the_venv(tmp_path,
                                                                                monkeypatch):
    monkeypatch.setenv(backend_env.ENV_VAR, str(tmp_path / "absent"))
    with pytest.raises(RtkError) as info:
        backend_env.check()
    assert f"at {tmp_path / 'absent'} (from RTK_TRITON_ENV)" in info.value.message
    assert info.value.hint == f"Create it with: rtk triton-env {tmp_path / 'absent'}"
    monkeypatch.delenv(backend_env.ENV_VAR)
    root, origin = backend_env.locate()
    assert origin == "the default location" and root == backend_env.default_location()
    if sys.prefix != sys.base_prefix:  # .venv -> .venv-triton
        prefix = Path(sys.prefix).resolve()
        assert root == prefix.with_name(prefix.name + "-triton")


@pytest.mark.slow
def test_the_stub_gets_the_backend_environment_and_not_rtks(tmp_path, monkeypatch,
                                                             no_tritonserver_on_path):
    root = fake_env(tmp_path / "env")
    monkeypatch.setenv("PYTHONPATH", "/rtk/own/tree")
    (tmp_path / "work").mkdir()
    install = find_tritonserver(tmp_path / "work", root)
    assert install.source == "nvidia-pytriton" and install.backend_env == root
    assert install.binary.is_relative_to(root)
    assert install.env["PATH"].split(":")[0] == str(root / "bin")
    assert install.env["LD_LIBRARY_PATH"].split(":")[0] == sysconfig.get_config_var("LIBDIR")
    assert "PYTHONPATH" not in install.env and install.env["PYTHONNOUSERSITE"] == "1"
    stub = tmp_path / "work" / "backends" / "python" / "triton_python_backend_stub"
    assert stub.resolve().parent.name == PYTHON


def test_tritonserver_on_path_needs_no_backend_environment(tmp_path, monkeypatch):
    """The NGC image's server and Python stay as they are: no environment of rtk's is asked for."""
    binary = tmp_path / "bin" / "tritonserver"
    binary.parent.mkdir()
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    monkeypatch.setenv("PATH", f"{binary.parent}:/usr/bin:/bin")
    install = find_tritonserver(tmp_path, tmp_path / "absent")
    assert install.source == "PATH" and install.flags == [] and install.backend_env is None


def _repo(tmp_path: Path) -> Path:
    (tmp_path / "repo" / "m").mkdir(parents=True)
    (tmp_path / "repo" / "m" / "config.pbtxt").write_text('name: "m"\nbackend: "python"\n')
    return tmp_path / "repo"


def _serve(cli, tmp_path, env):
    pytest.importorskip("tritonclient.grpc.model_config_pb2")  # the repository check parses configs
    from toolkit.triton.server import free_port

    ports = [str(free_port()) for _ in range(3)]
    return cli("serve", _repo(tmp_path), "--backend-env", env, "--http-port", ports[0],
               "--grpc-port", ports[1], "--metrics-port", ports[2])


def test_serve_without_the_environment_says_so_and_how_to_make_it(cli, tmp_path,
                                                                   no_tritonserver_on_path):
    absent = tmp_path / "absent"
    assert_user_error(_serve(cli, tmp_path, absent),
                      f"No Python backend environment for the local Triton server at {absent}",
                      f"Create it with: rtk triton-env {absent}")


@pytest.mark.slow
def test_serve_with_numpy_2_in_the_environment_says_so(cli, tmp_path, no_tritonserver_on_path):
    root = fake_env(tmp_path / "env", numpy="2.2.0")
    assert_user_error(_serve(cli, tmp_path, root), "has numpy 2.2.0", f"rtk triton-env {root}")


def test_rtks_own_environment_is_never_the_servers(cli, tmp_path):
    for args in (("triton-env", sys.prefix), ("triton-env", sys.prefix, "--check")):
        assert_user_error(cli(*args), "is rtk's own environment", "rtk triton-env")


def test_force_replaces_only_a_virtual_environment(cli, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    assert_user_error(cli("triton-env", folder, "--force"), "is not a virtual environment")
    assert (folder / "keep.txt").read_text() == "mine"
