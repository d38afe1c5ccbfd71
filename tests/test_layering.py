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
    names = {_rel(p) for p in SOURCES}
    assert {"toolkit/cli/__init__.py", "toolkit/train/session.py", "toolkit/data/images.py"} <= names


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_no_heavy_optional_import_at_module_level(path):
    bad = [(node.lineno, name) for node in _module_level_nodes(_tree(path))
           for name in _imported(node) if name in HEAVY_OPTIONAL]
    assert not bad, f"{_rel(path)} imports {bad} at import time; import it inside the function"


def test_click_only_in_cli_modules():
    offenders = [f"{_rel(p)}:{node.lineno}" for p in SOURCES for node in ast.walk(_tree(p))
                 if "click" in _imported(node) and p.parent.name != "cli"]
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
    assert calls, "expected torch.load calls in toolkit (train/checkpoint.py, train/model.py)"
    unsafe = [f"{_rel(p)}:{c.lineno}" for p, c in calls
              if not any(k.arg == "weights_only" and isinstance(k.value, ast.Constant)
                         and k.value.value is True for k in c.keywords)]
    assert not unsafe, f"torch.load without weights_only=True: {unsafe}"


def test_images_module_is_self_contained():
    """data/images.py is copied into the Triton preprocessing model: stdlib, NumPy and PIL only."""
    imports = {n for node in ast.walk(_tree(PACKAGE / "data" / "images.py")) for n in _imported(node)}
    relative = [node for node in ast.walk(_tree(PACKAGE / "data" / "images.py"))
                if isinstance(node, ast.ImportFrom) and node.level > 0]
    assert imports <= {"__future__", "io", "numpy", "PIL"}, imports
    assert not relative


def test_errors_module_uses_only_the_stdlib():
    imports = {n for node in ast.walk(_tree(PACKAGE / "core" / "errors.py")) for n in _imported(node)}
    assert all(name in sys.stdlib_module_names or name == "__future__" for name in imports), imports


@pytest.mark.slow
def test_importing_the_cli_loads_no_heavy_library():
    """`rtk --help` stays fast: torch and the optional runtimes load only when a command runs."""
    heavy = sorted(HEAVY_OPTIONAL | {"torch", "torchvision", "matplotlib"})
    code = ("import sys, toolkit.cli; "
            f"print(','.join(m for m in {heavy!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""


# Layers, bottom to top, one per stage package (or top-level module): a module may import its own
# layer and those below, never above.  bench, tune and deploy share a layer (tune measures with
# bench; html_report, `rtk report`, reads what all of them wrote); the CLI sits on top.
# A new package must be placed here, or this test fails.
LAYERS = ["core", "ui", "data", "train", "backends", "evaluate", "export", "triton",
          {"bench", "tune", "deploy", "html_report"}, "cli"]
# Triton Python-backend model templates are copied out of the package and import no rtk module.
TEMPLATES = PACKAGE / "triton" / "models"
MAX_TOP_LEVEL = 12


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in SOURCES}


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _layer_of(module: str) -> int:
    stage = _stage(module)
    if stage == "__init__":
        return 0  # the package itself: __version__
    if stage == "__main__":
        return len(LAYERS) - 1
    for i, names in enumerate(LAYERS):
        if stage == names or (isinstance(names, set) and stage in names):
            return i
    raise AssertionError(f"toolkit.{stage} is in no layer: add it to LAYERS in {__file__}")


def _targets(module: str, path: Path, node) -> list[str]:
    """rtk modules one import statement loads (`from pkg import mod` names the module)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
            for _ in range(node.level - 1):
                base = base.rsplit(".", 1)[0]
            base = f"{base}.{node.module}" if node.module else base
        else:
            base = node.module or ""
        subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
        names = subs if subs and len(subs) == len(node.names) else [base, *subs]
    else:
        return []
    return [n for n in names if n in MODULES and n != module]


def _graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Import edges between rtk modules, at module level and inside functions alike."""
    return {m: {t for node in ast.walk(_tree(p)) for t in _targets(m, p, node)}
            for m, p in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]; counter[0] += 1  # noqa: E702
        stack.append(root); on.add(root)  # noqa: E702
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        x = stack.pop(); on.discard(x); comp.append(x)  # noqa: E702
                        if x == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
            elif w not in index:
                index[w] = low[w] = counter[0]; counter[0] += 1  # noqa: E702
                stack.append(w); on.add(w)  # noqa: E702
                work.append((w, iter(sorted(graph[w]))))
            elif w in on:
                low[v] = min(low[v], index[w])
    return out


def test_cycle_finder_sees_a_function_level_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_targets_resolve_relative_and_package_imports():
    tree = ast.parse("from ..core import errors\nfrom . import common\nfrom .common import handled\n"
                     "def f():\n    from ..backends.run import batches\n")
    path = PACKAGE / "cli" / "use.py"
    found = {t for node in ast.walk(tree) for t in _targets("toolkit.cli.use", path, node)}
    assert found == {"toolkit.core.errors", "toolkit.cli.common", "toolkit.backends.run"}


def test_no_import_cycles():
    cycles = _cycles(_graph(MODULES))
    assert not cycles, f"import cycles (module- or function-level): {cycles}"


def test_every_stage_has_a_layer():
    for module in MODULES:
        _layer_of(module)


def test_flat_top_level_stays_small():
    top = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert len(top) <= MAX_TOP_LEVEL, f"{len(top)} modules at the top of toolkit/: {top}"


LAYERED = [p for p in SOURCES if TEMPLATES not in p.parents]


@pytest.mark.parametrize("path", LAYERED, ids=_rel)
def test_no_module_imports_a_layer_above_its_own(path):
    module = _module(path)
    upward = sorted(t for node in ast.walk(_tree(path)) for t in _targets(module, path, node)
                    if _layer_of(t) > _layer_of(module))
    assert not upward, f"{module} imports from a higher layer: {upward}"


@pytest.mark.parametrize("path", sorted(TEMPLATES.glob("*.py")), ids=_rel)
def test_triton_templates_import_no_rtk_module(path):
    rtk = [node.lineno for node in ast.walk(_tree(path))
           if (isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("toolkit")))
           or (isinstance(node, ast.Import) and any(a.name.startswith("toolkit") for a in node.names))]
    assert not rtk, f"{_rel(path)} is copied into Triton repositories; it imports rtk at lines {rtk}"
