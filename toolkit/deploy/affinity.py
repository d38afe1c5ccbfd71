"""Node affinity for an INT8 deployment: only nodes of a CPU kind the graph was gated on.

Node Feature Discovery (a prerequisite, see the deploy README) labels each node with its CPU
features, `feature.node.kubernetes.io/cpu-cpuid.<FLAG>=true`, and writes no label for a flag
the CPU lacks. Terms of a required affinity are ORed, the expressions inside one ANDed.
"""

from __future__ import annotations

from typing import Any

from ..core.errors import RtkError

CPUID = "feature.node.kubernetes.io/cpu-cpuid."
VNNI = ("AVX512VNNI", "AVXVNNI", "AMXINT8")
ARCH = "kubernetes.io/arch"


def _has(flag: str) -> dict:
    return {"key": CPUID + flag, "operator": "In", "values": ["true"]}


def _lacks(flag: str) -> dict:
    return {"key": CPUID + flag, "operator": "DoesNotExist"}


def _arch(name: str) -> dict:
    return {"key": ARCH, "operator": "In", "values": [name]}


def terms(int8_class: str) -> list[dict]:
    """nodeSelectorTerms matching the nodes of one CPU int8 class (core.host.INT8_CLASSES)."""
    if int8_class == "x86-vnni":
        return [{"matchExpressions": [_arch("amd64"), _has(flag)]} for flag in VNNI]
    if int8_class == "x86-avx2":
        return [{"matchExpressions": [_arch("amd64"), _has("AVX2"), *map(_lacks, VNNI)]}]
    if int8_class == "arm64":
        return [{"matchExpressions": [_arch("arm64")]}]
    raise RtkError(f"No node labels describe the CPU kind {int8_class!r}, so the INT8 "
                   "deployment cannot be kept to such nodes.",
                   "Deploy with --target-cpu x86-vnni, x86-avx2 or arm64, or serve FP32 "
                   "(rtk triton --artifact onnx).")


def node_affinity(int8_class: str) -> dict[str, Any]:
    """A pod spec's `affinity`: required, on the NFD labels of `int8_class`."""
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": terms(int8_class)}}}
