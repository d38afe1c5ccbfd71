"""`rtk serve`: once Triton is ready, replay each INT8 classifier's fingerprint through it.

rtk's Python-backend classifier replays its fingerprint itself when it loads; Triton's own
onnxruntime backend runs no rtk code, so the server's caller does it, for every platform:
the probes go to the classifier model over HTTP, and logits that drift from those recorded
on the CPU kind the repository was generated for stop the server with the reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core import fingerprint
from ..core.errors import RtkError, require
from . import configs


def int8_classifiers(repo: str | Path) -> list[tuple]:
    """(model, fingerprint file, target CPU kind, input, output, max batch) of each INT8
    classifier."""
    found = []
    for path in sorted(Path(repo).glob("*/config.pbtxt")):
        config = configs.parse(path.read_text())
        params = config.parameters
        if "rtk.target_cpu" not in params or params["rtk.role"].string_value != "classifier":
            continue
        doc = next(path.parent.glob("*/fingerprint.json"), None)
        found.append((config.name, doc, params["rtk.target_cpu"].string_value,
                      config.input[0].name, config.output[0].name, max(1, config.max_batch_size)))
    return found


def replay_all(repo: str | Path, url: str, ready=lambda model: True) -> list[str]:
    """Replay every loaded (`ready`) INT8 classifier's fingerprint on the server at `url`; the
    models checked. Raises RtkError naming the model, the drift and the CPU kind it was gated
    on."""
    checked = []
    for model, doc_path, target, inp, out, batch in int8_classifiers(repo):
        if not ready(model):
            continue
        if doc_path is None:
            raise RtkError(f"{model} serves an INT8 graph without its fingerprint.json, so "
                           "nothing can check it on this CPU.",
                           "Regenerate the repository with this rtk: rtk triton RUN_DIR")
        doc = fingerprint.load(doc_path)
        reason = fingerprint.replay(doc, _runner(url, model, inp, out, batch), target)
        if reason:
            raise RtkError(f"{model}: the INT8 graph does not compute here what it was gated on: "
                           f"{reason}.",
                           f"It was gated on {target} CPUs. Serve FP32 (rtk triton RUN_DIR "
                           "--artifact onnx), or gate INT8 on this host (rtk export RUN_DIR "
                           "--int8) and regenerate with --target-cpu for its kind.")
        checked.append(model)
    return checked


def _runner(url: str, model: str, inp: str, out: str, batch: int):
    """uint8 images -> the model's logits over HTTP, in requests of at most `batch` images."""
    def run(x: np.ndarray) -> np.ndarray:
        return np.concatenate([_infer(url, model, inp, out, x[i:i + batch])
                               for i in range(0, len(x), batch)])
    return run


def _infer(url: str, model: str, inp: str, out: str, x: np.ndarray) -> np.ndarray:
    http = require("tritonclient.http", "triton")
    client = http.InferenceServerClient(url.removeprefix("http://"))
    try:
        tensor = http.InferInput(inp, list(x.shape), "UINT8")
        tensor.set_data_from_numpy(np.ascontiguousarray(x))
        return client.infer(model, [tensor], outputs=[http.InferRequestedOutput(out)]).as_numpy(out)
    finally:
        client.close()
