"""Regenerate the vendored CRD schemas: upstream openAPIV3Schema, pruned to the fields rtk sets.

    python tests/schemas/vendor_crds.py UPSTREAM_DIR

UPSTREAM_DIR holds the four upstream CRD files named in SOURCES (see README.md for the exact
repositories, tags and commits). The script fails if rtk sets a field the upstream schema
does not define, so vendoring is itself a check.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).parent
# upstream file name -> (kind, version, vendored file)
SOURCES = {
    "kubeflow.org_pytorchjobs.yaml": ("PyTorchJob", "v1", "pytorchjob.kubeflow.org-v1.json"),
    "serving.kserve.io_inferenceservices.yaml": (
        "InferenceService", "v1beta1", "inferenceservice.serving.kserve.io-v1beta1.json"),
    "serving.kserve.io_servingruntimes.yaml": (
        "ServingRuntime", "v1alpha1", "servingruntime.serving.kserve.io-v1alpha1.json"),
    "monitoring.coreos.com_servicemonitors.yaml": (
        "ServiceMonitor", "v1", "servicemonitor.monitoring.coreos.com-v1.json"),
}
# Validation keywords kept as upstream; descriptions and printer hints are dropped.
KEEP = {"type", "format", "enum", "required", "pattern", "minimum", "maximum", "minLength",
        "maxLength", "minItems", "maxItems", "anyOf", "oneOf", "allOf", "nullable",
        "x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields"}


def prune(schema: dict, values: list, path: str, unknown: list[str]) -> dict:
    """The schema restricted to the keys used in `values`; other keys are rejected."""
    out = {k: v for k, v in schema.items() if k in KEEP}
    if "properties" in schema:
        used = sorted({k for v in values if isinstance(v, dict) for k in v})
        unknown += [f"{path}.{k}" for k in used if k not in schema["properties"]]
        out["properties"] = {k: prune(schema["properties"][k], [v[k] for v in values if k in v],
                                      f"{path}.{k}", unknown)
                             for k in used if k in schema["properties"]}
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    elif isinstance(schema.get("additionalProperties"), dict):
        nested = [x for v in values if isinstance(v, dict) for x in v.values()]
        out["additionalProperties"] = prune(schema["additionalProperties"], nested, f"{path}.*",
                                            unknown)
    if isinstance(schema.get("items"), dict):
        nested = [x for v in values if isinstance(v, list) for x in v]
        out["items"] = prune(schema["items"], nested, f"{path}[]", unknown)
    return out


def samples() -> list[dict]:
    """Every object rtk writes, over the option combinations that change their shape."""
    sys.path.insert(0, str(HERE.parents[1]))
    from toolkit.deploy import build_tree
    from toolkit.deploy.options import Plan, parse_repo_uri
    from toolkit.triton.repository import model_names

    found = []
    for uri, kind, nodes in (("pvc:models/sub", "gpu", 2), ("s3://bucket/repo", "cpu", 1),
                             ("s3://bucket/repo", "gpu", 3)):
        plan = Plan(app="sample", models=model_names("sample"), source="run",
                    repo=parse_repo_uri(uri), kind=kind, replicas=2, max_replicas=8,
                    image="rtk-triton:x", nodes=nodes, nproc_per_node=2, train_image="rtk:x",
                    shared_pvc="sample-shared", finetune_args=["--arch", "resnet18"])
        for content in build_tree(plan).values():
            found += [d for d in content if isinstance(d, dict)] if isinstance(content, list) else []
    return found


def main(upstream: Path) -> None:
    objects = samples()
    for name, (kind, version, target) in SOURCES.items():
        crd = yaml.safe_load((upstream / name).read_text())
        (entry,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
        group = crd["spec"]["group"]
        used = [o for o in objects if o.get("kind") == kind and o.get("apiVersion") == f"{group}/{version}"]
        if not used:
            sys.exit(f"rtk writes no {kind} {group}/{version}")
        unknown: list[str] = []
        schema = prune(entry["schema"]["openAPIV3Schema"], used, kind, unknown)
        if unknown:
            sys.exit(f"rtk sets fields the upstream {kind} schema lacks: {unknown}")
        schema["x-rtk-crd"] = {"group": group, "version": version, "kind": kind, "upstream": name}
        (HERE / target).write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
        print(f"{target}: {len(json.dumps(schema))} bytes from {len(used)} sample object(s)")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
