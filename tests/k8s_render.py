"""Rendering and validation helpers for test_deploy.py: a small Kustomize, pod specs, schemas.

kubernetes-validate checks built-in kinds against the Kubernetes OpenAPI schemas (strict: no
unknown fields); custom resources are checked against the vendored CRD schemas in schemas/
(see schemas/README.md) and their pod templates again against the core PodSpec schema.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import kubernetes_validate as kv
import yaml

SCHEMAS = Path(__file__).parent / "schemas"
K8S_VERSIONS = ["1.30.0", kv.latest_version()]  # the oldest supported and the newest shipped
STANDALONE = ["storage/loader-pod.yaml", "monitoring/prometheus-adapter-config.yaml"]
CRDS = {(s["x-rtk-crd"]["group"] + "/" + s["x-rtk-crd"]["version"], s["x-rtk-crd"]["kind"]): s
        for s in (json.loads(p.read_text()) for p in SCHEMAS.glob("*.*-v*.json"))}


def _merge(base, patch):
    """Strategic merge as far as rtk's patches need it: maps recursively, named lists by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        return {**base, **{k: _merge(base[k], v) if k in base else v for k, v in patch.items()}}
    named = lambda items: all(isinstance(i, dict) and "name" in i for i in items)  # noqa: E731
    if isinstance(base, list) and isinstance(patch, list) and named(base) and named(patch):
        out = list(base)
        for item in patch:
            hit = [i for i, x in enumerate(out) if x["name"] == item["name"]]
            if hit:
                out[hit[0]] = _merge(out[hit[0]], item)
            else:
                out.append(item)
        return out
    return patch


def python_render(folder: Path) -> list[dict]:
    kust = yaml.safe_load((folder / "kustomization.yaml").read_text())
    objs = []
    for res in kust["resources"]:
        path = folder / res
        objs += (python_render(path) if path.is_dir()
                 else [d for d in yaml.safe_load_all(path.read_text()) if d])
    for patch in kust.get("patches", []):
        (doc,) = yaml.safe_load_all((folder / patch["path"]).read_text())
        (i,) = [i for i, o in enumerate(objs) if (o["kind"], o["metadata"]["name"])
                == (doc["kind"], doc["metadata"]["name"])]
        objs[i] = _merge(objs[i], doc)
    return objs


def by_key(objs: list[dict]) -> dict[tuple[str, str], dict]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objs}


def one(objs: list[dict], kind: str) -> dict:
    (found,) = [o for o in objs if o["kind"] == kind]
    return found


def pod_specs(obj: dict) -> list[dict]:
    """Every pod spec in an object, CRDs included, as a core PodSpec."""
    kind, spec = obj["kind"], obj.get("spec", {})
    if kind in ("Deployment", "Job"):
        return [spec["template"]["spec"]]
    if kind == "Pod":
        return [spec]
    if kind == "PyTorchJob":
        return [r["template"]["spec"] for r in spec["pytorchReplicaSpecs"].values()]
    if kind == "ServingRuntime":
        return [{"containers": spec["containers"], "volumes": spec["volumes"]}]
    if kind == "InferenceService":
        pred = dict(spec["predictor"])
        model = pred.pop("model")
        container = {"name": "kserve-container", "image": "kserve", **{
            k: v for k, v in model.items() if k not in ("modelFormat", "runtime", "protocolVersion",
                                                        "storageUri")}}
        keep = ("securityContext", "terminationGracePeriodSeconds", "tolerations", "serviceAccountName")
        return [{**{k: pred[k] for k in keep if k in pred}, "containers": [container]}]
    return []


def args_of(container: dict) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for arg in container.get("args", []):
        key, _, value = arg.partition("=")
        found.setdefault(key, []).append(value)
    return found



def all_objects(out: Path, rendered: dict) -> list[dict]:
    objs = {(o["kind"], o["metadata"]["name"]): o for docs in rendered.values() for o in docs}
    for path in STANDALONE:
        objs.update(by_key(list(yaml.safe_load_all((out / path).read_text()))))
    return list(objs.values())


def validate(obj: dict) -> None:
    """Strict core schemas for built-in kinds; vendored CRD schemas plus core PodSpecs for CRDs."""
    crd = CRDS.get((obj["apiVersion"], obj["kind"]))
    if crd is not None:
        jsonschema.Draft202012Validator(crd).validate(obj)
        for i, spec in enumerate(pod_specs(obj)):
            validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"p{i}"}, "spec": spec})
        return
    for version in K8S_VERSIONS:
        kv.validate(obj, version, strict=True)

