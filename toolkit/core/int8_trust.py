"""Where an INT8 graph may run: its gate rows per CPU int8 class and its fingerprint replay.

The export records a verdict per class (export.cpu_gate); serving reads them here: `rtk
triton`, `rtk tune` and `rtk deploy` serve INT8 only to a class with a passing row whose
measured speed pays, and every place that opens the graph to serve replays its fingerprint.
"""

from __future__ import annotations

from . import fingerprint
from .host import int8_class

INT8 = "model.int8.onnx"
FINGERPRINT = "model.int8.fingerprint.json"
PAYS_X = 1.3  # INT8 is preferred over FP32 only from this speed-up on the class it runs on


def gated_classes(entry) -> list[str]:
    """The int8 classes whose row passed."""
    return [cls for cls, row in (entry.gates or {}).items() if row.get("passed")]


def serve_reason(entry, target: str) -> str | None:
    """None when INT8 may be served to CPUs of class `target`, else why FP32 is served."""
    if entry is None or not entry.trusted:
        return "model.int8.onnx is absent or did not pass its gate"
    rows = entry.gates or {}
    if not rows:  # gated by an rtk that recorded no CPU kind: its verdict holds nowhere known
        return ("model.int8.onnx was gated before rtk recorded the CPU kind; re-gate it: "
                "rtk export RUN_DIR --int8")
    row = rows.get(target)
    if row is None or not row.get("passed"):
        where = ", ".join(gated_classes(entry)) or "no CPU kind"
        return (f"model.int8.onnx was gated on {where}, not on {target}"
                + (" (its gate failed there)" if row else ""))
    speed = row.get("vs_fp32")
    if speed is None or speed < PAYS_X:
        got = "was not measured" if speed is None else f"is {speed:.2f}x FP32"
        return f"INT8's speed on {target} {got}, under the {PAYS_X:g}x that makes it worth serving"
    return None


def replay_reason(bundle, session, input_name: str) -> str | None:
    """None when the INT8 graph may serve on this host: its gate did not fail on this CPU's
    class and it replays its fingerprint (the logits recorded on this class, else on the
    first class it passed on); else why not. A graph without a fingerprint cannot be checked."""
    entry = bundle.entry(INT8)
    here = int8_class()
    row = (entry.gates or {}).get(here)
    if row is not None and not row.get("passed"):
        return f"its gate failed on this CPU's int8 class ({here})"
    if not entry.fingerprint or not bundle.path(entry.fingerprint).is_file():
        return f"it has no fingerprint ({FINGERPRINT}); it was exported by an older rtk"
    doc = fingerprint.load(bundle.path(entry.fingerprint))
    against = here if here in doc["logits"] else next(
        (c for c in gated_classes(entry) if c in doc["logits"]), here)
    return fingerprint.replay(doc, lambda x: session.run(None, {input_name: x})[0], against)


def regate_hint(bundle_root, entry) -> str:
    where = ", ".join(gated_classes(entry)) or "another CPU kind"
    return (f"It was gated on {where}; this CPU is {int8_class()}. Gate it here: "
            f"rtk export {bundle_root} --int8 (adds a row for this kind), or serve FP32 "
            "(--backend onnxruntime / rtk triton --artifact onnx).")


