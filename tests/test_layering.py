"""Static rules of the code base, checked on the source with `ast` (see ARCHITECTURE.md)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import toolkit

PACKAGE = Path(toolkit.__file__).parent
SOURCES = sorted(PACKAGE.rglob("*.py"))
HEAVY_OPTIONAL = {"tensorrt", "onnxruntime", "tritonclient", "modelopt", "onnx"}


def _rel(path: Path) -> str:
    return str(path.relative_to(PACKAGE.parent))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _imported(node) -> list[str]:
    """Top-level package names an Import/ImportFrom node brings in (relative imports: none)."""
    if isinstance(node, ast.Import):
        return [a.name.split(".")[0] for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return [node.module.split(".")[0]]
    return []


def _module_level_nodes(tree: ast.Module):
    """Every node executed at import time: the module body, including its if/try blocks."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.ClassDef):  # a class body runs at import; its methods do not
            stack.extend(node.body)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def test_module_level_walker_sees_guarded_imports_but_not_lazy_ones():
    tree = ast.parse("try:\n    import onnx\nexcept ImportError:\n    pass\n"
                     "class A:\n    from tensorrt import Logger\n"
                     "    def f(self):\n        import tritonclient\n"
                     "def g():\n    import modelopt\n")
    found = {n for node in _module_level_nodes(tree) for n in _imported(node)}
    assert found == {"onnx", "tensorrt"}


def test_sources_found():
    names = {p.name for p in SOURCES}
    assert {"cli.py", "session.py", "checkpoint.py", "imageio.py"} <= names


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_no_heavy_optional_import_at_module_level(path):
    bad = [(node.lineno, name) for node in _module_level_nodes(_tree(path))
           for name in _imported(node) if name in HEAVY_OPTIONAL]
    assert not bad, f"{_rel(path)} imports {bad} at import time; import it inside the function"


def test_click_only_in_cli_modules():
    offenders = [f"{_rel(p)}:{node.lineno}" for p in SOURCES for node in ast.walk(_tree(p))
                 if "click" in _imported(node) and not (p.parent == PACKAGE
                                                        and p.name.startswith("cli"))]
    assert not offenders, offenders


def test_no_assert_statements():
    offenders = [f"{_rel(p)}:{node.lineno}" for p in SOURCES for node in ast.walk(_tree(p))
                 if isinstance(node, ast.Assert)]
    assert not offenders, f"use RtkError, not assert: {offenders}"


def test_no_eval_or_exec():
    offenders = [f"{_rel(p)}:{node.lineno}" for p in SOURCES for node in ast.walk(_tree(p))
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                 and node.func.id in ("eval", "exec")]
    assert not offenders, offenders


def _torch_load_calls(tree):
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "load" and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "torch"):
            yield node


def test_torch_load_always_uses_weights_only():
    calls = [(p, c) for p in SOURCES for c in _torch_load_calls(_tree(p))]
    assert calls, "expected torch.load calls in toolkit (checkpoint.py, model.py)"
    unsafe = [f"{_rel(p)}:{c.lineno}" for p, c in calls
              if not any(k.arg == "weights_only" and isinstance(k.value, ast.Constant)
                         and k.value.value is True for k in c.keywords)]
    assert not unsafe, f"torch.load without weights_only=True: {unsafe}"


def test_imageio_is_self_contained():
    """imageio.py is copied into the Triton preprocessing model: stdlib, NumPy and PIL only."""
    imports = {n for node in ast.walk(_tree(PACKAGE / "imageio.py")) for n in _imported(node)}
    relative = [node for node in ast.walk(_tree(PACKAGE / "imageio.py"))
                if isinstance(node, ast.ImportFrom) and node.level > 0]
    assert imports <= {"__future__", "io", "numpy", "PIL"}, imports
    assert not relative


def test_errors_module_uses_only_the_stdlib():
    imports = {n for node in ast.walk(_tree(PACKAGE / "errors.py")) for n in _imported(node)}
    assert all(name in sys.stdlib_module_names or name == "__future__" for name in imports), imports


def test_importing_the_cli_loads_no_heavy_library():
    """`rtk --help` stays fast: torch and the optional runtimes load only when a command runs."""
    heavy = sorted(HEAVY_OPTIONAL | {"torch", "torchvision", "matplotlib"})
    code = ("import sys, toolkit.cli; "
            f"print(','.join(m for m in {heavy!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""


# Layers, bottom to top; a module may import its own layer and those below, never above.
# (The Triton Python-backend model templates are copied into repositories and import nothing
# of rtk; the CLI sits on top of everything.)
LAYERS = [
    {"errors", "fileio", "machine", "imageio", "card", "metrics", "__init__"},
    {"bundle", "scan", "preprocess", "sample", "ui", "report", "contract", "lock"},
    {"data", "datareport", "model", "checkpoint", "loop", "gpu_input", "batch_transforms",
     "batch_augment", "recipe"},
    {"train", "session"},
    {"backends"},
    {"evaluate"},
    {"export"},
    {"triton"},
    {"bench", "deploy", "tune", "html_report"},
    {"cli", "cli_train", "cli_use", "cli_export", "cli_triton", "cli_bench", "cli_deploy",
     "cli_tune", "cli_report", "__main__"},
]


def _layer_of(module: str) -> int:
    top = module.split(".")[0]
    if not (PACKAGE / f"{top}.py").exists() and not (PACKAGE / top).is_dir():
        top = "__init__"  # `from . import __version__`: an attribute of the package itself
    return next(i for i, names in enumerate(LAYERS) if top in names)


def _toolkit_imports(path: Path) -> set[str]:
    """rtk modules a file imports (relative or absolute), as names under toolkit."""
    pkg = path.relative_to(PACKAGE).parent.parts
    found = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(pkg[: len(pkg) - (node.level - 1)])
            if node.module:
                found.add(".".join([*base, *node.module.split(".")]))
            else:
                found.update(".".join([*base, a.name]) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("toolkit."):
            found.add(node.module.removeprefix("toolkit."))
    return {f for f in found if f}


# Triton Python-backend model templates are copied out of the package and import no rtk module.
LAYERED = [p for p in SOURCES if not (p.parent.name == "triton" and p.name.endswith("_model.py"))]


@pytest.mark.parametrize("path", LAYERED, ids=_rel)
def test_no_module_imports_a_layer_above_its_own(path):
    module = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
    upward = sorted(m for m in _toolkit_imports(path) if _layer_of(m) > _layer_of(module))
    assert not upward, f"{module} imports from a higher layer: {upward}"
