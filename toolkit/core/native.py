"""Native calls that can kill the process: an ONNX Runtime session is opened in a child first.

ONNX Runtime 1.32 (CPU) segfaults while creating a session for the FP16 ViT-B/16 graph at
its default optimization level (issue 27), and a segfault takes the whole `rtk export` down
with exit 139 and no message. So before the gate opens an FP16 graph in-process (the one ONNX
Runtime is known to crash on; export.Gate._survivable), a child interpreter opens it and runs
one batch; a child killed by a signal becomes a lower
optimization level that works (recorded with the artifact and applied wherever it runs) or,
when none does, an RtkError naming the library, its version and the artifact.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from .errors import RtkError

LEVEL_KEY = "rtk.graph_optimization_level"  # in an artifact's session_config; not ORT's own key
# ONNX Runtime's levels, most optimized first, by their GraphOptimizationLevel names
ORT_LEVELS = {"all": "ORT_ENABLE_ALL", "extended": "ORT_ENABLE_EXTENDED",
              "basic": "ORT_ENABLE_BASIC", "disabled": "ORT_DISABLE_ALL"}
LEVELS = tuple(ORT_LEVELS)

# The child: onnxruntime and numpy only, so it starts in well under a second.
PROBE = """
import json, sys
import numpy as np
import onnxruntime as ort
path, level, config, shape = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
          "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
          "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
          "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
opts = ort.SessionOptions()
opts.graph_optimization_level = levels[level]
opts.intra_op_num_threads = 1
for key, value in config.items():
    opts.add_session_config_entry(key, str(value))
session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
session.run(None, {session.get_inputs()[0].name: np.zeros(shape, np.uint8)})
"""


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def crashes(path: Path, *, level: str, config: dict, shape: tuple, timeout: float = 600) -> str | None:
    """The signal that killed a child opening `path` at `level` and running one batch, or None
    (a Python error in the child is no crash: the in-process session reports it properly)."""
    config = {k: v for k, v in config.items() if k != LEVEL_KEY}
    try:
        done = subprocess.run([sys.executable, "-c", PROBE, str(path), level, json.dumps(config),
                               json.dumps(list(shape))], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return None  # slow is not a crash; the gate's own session will take its time
    return _signal_name(done.returncode) if done.returncode < 0 else None


def safe_level(path: Path, *, artifact: str, config: dict | None, shape: tuple,
               echo=print) -> str | None:
    """None when ONNX Runtime opens `path` at its recorded (or default) level; else the most
    optimized lower level that does not crash. RtkError when every level crashes."""
    from .host import package_version

    config = dict(config or {})
    start = config.get(LEVEL_KEY, "all")
    tried = []
    for level in LEVELS[LEVELS.index(start):]:
        died = crashes(path, level=level, config=config, shape=shape)
        if died is None:
            if tried:
                echo(f"Note: ONNX Runtime crashed ({tried[0][1]}) opening {artifact} at "
                     f"optimization level {tried[0][0]!r}; it runs at {level!r}, which is "
                     "recorded with the artifact and used wherever it is opened.")
            return level if tried else None
        tried.append((level, died))
    version = package_version("onnxruntime", "onnxruntime-gpu")
    raise RtkError(
        f"ONNX Runtime {version} crashed ({tried[0][1]}) opening {artifact} at every "
        f"optimization level ({', '.join(t[0] for t in tried)}).",
        f"The graph is not trusted. Try another ONNX Runtime release (pip install -U "
        f"onnxruntime), or export without this artifact; report it to ONNX Runtime with {path.name}.")
