"""`rtk deploy`: Kubernetes manifests for Triton at scale, KServe, and multi-node fine-tuning."""

from __future__ import annotations

from .options import DeployOptions
from .writer import build_tree, write_deployment

__all__ = ["DeployOptions", "build_tree", "write_deployment"]
