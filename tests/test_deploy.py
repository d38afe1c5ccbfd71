"""`rtk deploy`: the Kubernetes tree renders, validates strictly, and says what a reviewer checks.

No cluster: objects are rendered with `kubectl kustomize` (when on the PATH) and with a small
Python renderer, validated against the Kubernetes 1.30 and newest OpenAPI schemas
(kubernetes-validate, strict) and, for custom resources, against the vendored CRD schemas in
tests/schemas (see its README for sources and versions).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")
kv = pytest.importorskip("kubernetes_validate")  # the test extra; strict offline K8s schemas
jsonschema = pytest.importorskip("jsonschema")

from conftest import assert_user_error  # noqa: E402
from k8s_render import (SCHEMAS, STANDALONE, all_objects, args_of, by_key, one,  # noqa: E402
                        pod_specs, python_render, validate)

from toolkit.deploy import DeployOptions, write_deployment  # noqa: E402
from toolkit.deploy.options import NGC_RELEASE, k8s_name  # noqa: E402

ROOT = Path(__file__).parents[1]
KUSTOMIZATIONS = ["base", "overlays/cpu", "overlays/gpu", "monitoring", "kserve",
                  "training/pytorchjob", "training/indexed-job", "storage"]


# -- fixtures ------------------------------------------------------------------------------------
def deploy(source, out, **kw) -> dict:
    return write_deployment(DeployOptions(source=str(source), out=str(out), **kw), echo=lambda *_: None)


@pytest.fixture(scope="module")
def tree(tiny_bundle, module_tmp):
    """gpu, PVC repository, 3 training pods x 2 processes."""
    out = module_tmp("deploy") / "k8s"
    summary = deploy(tiny_bundle, out, replicas=2, nodes=3, nproc_per_node=2)
    return out, summary, {k: python_render(out / k) for k in KUSTOMIZATIONS}


@pytest.fixture(scope="module")
def s3_tree(tiny_bundle, module_tmp):
    """cpu, S3 repository, a single training pod."""
    out = module_tmp("deploy") / "k8s-s3"
    summary = deploy(tiny_bundle, out, kind="cpu", repo_uri="s3://bucket/models", nodes=1)
    return out, summary, {k: python_render(out / k) for k in KUSTOMIZATIONS}


@pytest.fixture(scope="module")
def repository(tiny_bundle, module_tmp):
    """A real repository: the tiny run exported to ONNX, then `rtk triton --kind gpu`."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from toolkit.core.bundle import Bundle
    from toolkit.export import ExportOptions, export
    from toolkit.triton import RepoOptions, write_repository

    root = Path(shutil.copytree(tiny_bundle, module_tmp("deploy-repo") / "tiny"))
    bundle = Bundle.load(root)
    export(bundle, ExportOptions(max_batch=16), echo=lambda *_: None)
    repo = root.parent / "model_repository"
    write_repository(bundle, RepoOptions(repo=str(repo), kind="gpu"), echo=lambda *_: None)
    return root, repo


# -- the tree ------------------------------------------------------------------------------------
def test_tree_and_names_from_the_run(tree, tiny_bundle):
    from toolkit.core.bundle import Bundle
    from toolkit.triton.repository import default_name, model_names

    out, summary, _ = tree
    assert summary["models"] == model_names(default_name(Bundle.load(tiny_bundle)))
    for folder in KUSTOMIZATIONS:
        assert (out / folder / "kustomization.yaml").is_file()
    assert set(summary["files"]) == {str(p.relative_to(out)) for p in out.rglob("*")
                                     if p.is_file() and p.name != ".rtk-deploy.json"}
    readme = (out / "README.md").read_text()
    for needle in ("rtk export", "rtk triton", "kubectl apply -k overlays/gpu", "--resume",
                   "## What was verified, and what was not", "Not verified", "applied to a cluster",
                   "rtk serve", "Self-healing", "not in a container or a cluster"):
        assert needle in readme


@pytest.mark.slow
@pytest.mark.parametrize("folder", KUSTOMIZATIONS)
def test_kubectl_kustomize_renders_what_python_renders(tree, folder):
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not on the PATH: only the Python rendering check ran")
    out, _, rendered = tree
    proc = subprocess.run(["kubectl", "kustomize", str(out / folder)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert by_key(list(yaml.safe_load_all(proc.stdout))) == by_key(rendered[folder])


@pytest.mark.parametrize("which", ["tree", "s3_tree"])
def test_every_object_validates_strictly(which, request):
    out, _, rendered = request.getfixturevalue(which)
    objs = all_objects(out, rendered)
    for obj in objs:
        validate(obj)
    kinds = {o["kind"] for o in objs}
    assert kinds >= {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler",
                     "ServiceMonitor", "ConfigMap", "ServingRuntime", "InferenceService",
                     "PyTorchJob", "Job", "PersistentVolumeClaim", "Pod"}


def test_validation_is_strict_enough_to_fail(tree):
    _, _, rendered = tree
    deployment = one(rendered["overlays/gpu"], "Deployment")
    bad = json.loads(json.dumps(deployment))
    bad["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, "1.30.0", strict=True)
    job = json.loads(json.dumps(one(rendered["training/pytorchjob"], "PyTorchJob")))
    job["spec"]["runPolicy"]["backofLimit"] = 3
    with pytest.raises(jsonschema.ValidationError):
        validate(job)
    isvc = json.loads(json.dumps(one(rendered["kserve"], "InferenceService")))
    isvc["spec"]["predictor"]["model"]["resources"]["limits"]["memory"] = "lots"
    with pytest.raises(jsonschema.ValidationError):
        validate(isvc)


# -- serving ------------------------------------------------------------------------------------
def test_probes_hit_triton_health_on_the_http_port(tree):
    _, _, rendered = tree
    runtime = one(rendered["kserve"], "ServingRuntime")["spec"]["containers"][0]
    deployment = one(rendered["overlays/gpu"], "Deployment")["spec"]["template"]["spec"]["containers"][0]
    for container in (deployment, runtime):
        http = int(args_of(container)["--http-port"][0])
        named = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        paths = {}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            get = container[probe]["httpGet"]
            assert named.get(get["port"], get["port"]) == http
            paths[probe] = get["path"]
        # ready = the ensemble ready (an unloaded step makes it unavailable; /v2/health/ready
        # counts loaded models only and answers 200 again after an unload)
        name = one(rendered["base"], "Deployment")["metadata"]["annotations"]["rtk.dev/ensemble"]
        ensemble = f"/v2/models/{name}/ready"
        assert paths == {"startupProbe": ensemble, "readinessProbe": ensemble,
                         "livenessProbe": "/v2/health/live"}
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # TensorRT plans
        # rtk serve waits for the models as long as the startup probe does
        assert int(args_of(container)["--timeout"][0]) >= startup["periodSeconds"] * startup[
            "failureThreshold"]
        ready = container["readinessProbe"]  # a model being reloaded leaves rotation within ~10 s
        assert ready["periodSeconds"] <= 5 and ready["failureThreshold"] <= 2
    service = one(rendered["base"], "Service")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        "http": 8000, "grpc": 8001, "metrics": 8002}
    assert {k: int(v[0]) for k, v in args_of(deployment).items() if k.endswith("-port")} == {
        "--http-port": 8000, "--grpc-port": 8001, "--metrics-port": 8002}


def test_model_names_match_the_generated_repository(repository, tmp_path):
    from toolkit.triton import verify_repository

    run, repo = repository
    models = set(verify_repository(repo))
    for source in (run, repo):
        out = tmp_path / source.name
        summary = deploy(source, out)
        assert set(summary["models"].values()) == models
        rendered = python_render(out / "overlays/gpu") + python_render(out / "kserve")
        for obj in [one(rendered, "Deployment"), one(rendered, "ServingRuntime")]:
            (container,) = pod_specs(obj)[0]["containers"]
            assert container["args"][:2] == ["rtk", "serve"]  # the watchdog, not plain tritonserver
            assert sorted(args_of(container)["--load-model"]) == sorted(models)
        hpa = one(rendered, "HorizontalPodAutoscaler")
        queue = [m for m in hpa["spec"]["metrics"] if m["type"] == "Pods"][0]["pods"]["metric"]
        assert queue["selector"]["matchLabels"]["model"] == summary["models"]["classifier"]
        assert one(rendered, "InferenceService")["metadata"]["annotations"][
            "rtk.dev/ensemble"] == summary["models"]["ensemble"]
    assert summary["source_kind"] == "repository" and summary["warnings"][-1].startswith(
        "The repository's classifier runs on KIND_GPU")


def test_gpu_requests_only_in_the_gpu_overlay(tree, s3_tree):
    _, _, rendered = tree
    for folder in ("base", "overlays/cpu", "monitoring"):
        assert "nvidia.com/gpu" not in json.dumps(rendered[folder]), folder
    spec = one(rendered["overlays/gpu"], "Deployment")["spec"]["template"]["spec"]
    resources = spec["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "1"
    assert spec["tolerations"][0]["key"] == "nvidia.com/gpu"
    _, _, cpu_rendered = s3_tree  # --cpu: KServe and training ask for no GPU either
    assert "nvidia.com/gpu" not in json.dumps({k: v for k, v in cpu_rendered.items()
                                               if k != "overlays/gpu"})


@pytest.mark.parametrize("which", ["tree", "s3_tree"])
def test_no_privileged_container_and_non_root(which, request):
    out, _, rendered = request.getfixturevalue(which)
    objects = all_objects(out, rendered)
    specs = [(o["kind"], s) for o in objects for s in pod_specs(o)]
    assert len(specs) >= 6 and "ServingRuntime" in {kind for kind, _ in specs}
    for kind, spec in specs:
        # a ServingRuntime has no pod-level securityContext in its schema: each container must
        # say runAsNonRoot itself; every other pod must say it at pod level
        pod_level = None if kind == "ServingRuntime" else spec["securityContext"]["runAsNonRoot"]
        assert kind == "ServingRuntime" or pod_level is True, kind
        assert all(c["securityContext"].get("runAsNonRoot", pod_level) is True
                   for c in spec["containers"]), kind
        assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc.get("privileged") is not True and sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
            assert sc["readOnlyRootFilesystem"] is True
    triton = one(rendered["overlays/gpu"], "Deployment")["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in triton["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in triton["volumes"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_graceful_termination_covers_tritons_exit_timeout(tree):
    _, _, rendered = tree
    spec = one(rendered["base"], "Deployment")["spec"]["template"]["spec"]
    container = spec["containers"][0]
    from toolkit.triton.server import KILL_AFTER_S

    exit_timeout = int(args_of(container)["--exit-timeout"][0])
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    # rtk serve turns SIGTERM into Triton's graceful stop, and kills a hung Triton after a margin
    assert spec["terminationGracePeriodSeconds"] > exit_timeout + pre_stop + KILL_AFTER_S


def test_hpa_pdb_and_monitor_target_the_deployment(tree):
    out, _, rendered = tree
    objs = rendered["overlays/gpu"]
    deployment, hpa = one(objs, "Deployment"), one(objs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    assert "replicas" not in deployment["spec"]  # the HPA owns the count
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    for obj in (one(objs, "PodDisruptionBudget"), deployment):
        assert obj["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = one(objs, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    monitor = one(rendered["monitoring"], "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    # the adapter serves the metric the HPA asks for, from the two counters Triton exports
    config = yaml.safe_load(yaml.safe_load((out / STANDALONE[1]).read_text())["data"]["config.yaml"])
    schema = json.loads((SCHEMAS / "prometheus-adapter-config.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(config)
    (rule,) = config["rules"]
    assert rule["name"]["as"] == metrics["Pods"]["pods"]["metric"]["name"]
    assert re.search(r"rate\(nv_inference_queue_duration_us\{<<\.LabelMatchers>>\}.*/.*"
                     r"rate\(nv_inference_request_success\{<<\.LabelMatchers>>\}", rule["metricsQuery"])
    values = yaml.safe_load((out / "monitoring/prometheus-adapter-values.yaml").read_text())
    assert values["rules"]["custom"] == config["rules"]


# -- training -----------------------------------------------------------------------------------
def _script_flags(script: str) -> dict[str, str]:
    return dict(re.findall(r"(--[a-z-]+)=(\S+)", script))


def test_torchrun_rendezvous_settings_are_consistent(tree):
    _, _, rendered = tree
    job = one(rendered["training/pytorchjob"], "PyTorchJob")
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] + replicas["Worker"]["replicas"] == 3
    assert job["spec"]["nprocPerNode"] == "2"
    for spec in pod_specs(job):
        (c,) = spec["containers"]
        flags = _script_flags(c["command"][-1])
        port = {p["name"]: p["containerPort"] for p in c["ports"]}["pytorchjob-port"]
        assert c["name"] == "pytorch"  # the operator injects its variables into this container
        assert (flags["--nnodes"], flags["--nproc-per-node"]) == ("3", "2")
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
        assert flags["--master-addr"] == f"{job['metadata']['name']}-master-0"
        assert (flags["--master-port"], flags["--node-rank"]) == (str(port), '"$PET_NODE_RANK"')
        assert (flags["--rdzv-backend"], flags["--max-restarts"]) == ("static", "0")
    svc, ijob = one(rendered["training/indexed-job"], "Service"), one(rendered["training/indexed-job"], "Job")
    spec = ijob["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 3
    (c,) = spec["template"]["spec"]["containers"]
    flags = _script_flags(c["command"][-1])
    assert (flags["--nnodes"], flags["--nproc-per-node"]) == ("3", "2")
    assert spec["template"]["spec"]["subdomain"] == svc["metadata"]["name"]
    assert flags["--master-addr"] == f"{ijob['metadata']['name']}-0.{svc['metadata']['name']}"
    assert flags["--master-port"] == str(svc["spec"]["ports"][0]["port"])
    assert flags["--master-port"] == str(c["ports"][0]["containerPort"])
    assert flags["--node-rank"] == '"$JOB_COMPLETION_INDEX"'
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {"batch.kubernetes.io/job-name": ijob["metadata"]["name"]}
    # every pod writes (rank 0) and reads (resume) the run on the same shared claim
    mount = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}["shared"]
    assert {e["name"]: e["value"] for e in c["env"] if "value" in e}["RTK_OUT"].startswith(mount + "/")
    shared = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}["shared"]
    assert shared["persistentVolumeClaim"]["claimName"] == one(
        [o for o in rendered["storage"] if o["metadata"]["name"].endswith("-shared")],
        "PersistentVolumeClaim")["metadata"]["name"]


@pytest.mark.slow
@pytest.mark.parametrize("state", ["fresh", "checkpoint", "orphan"])
def test_launch_script_resumes_only_from_a_checkpoint(tree, tmp_path, state):
    _, _, rendered = tree
    stub = tmp_path / "bin" / "torchrun"
    stub.parent.mkdir()
    stub.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    stub.chmod(0o755)
    out = tmp_path / "run"
    out.mkdir()
    if state == "checkpoint":
        (out / "last.pt").write_bytes(b"x")
    if state in ("checkpoint", "orphan"):
        (out / "manifest.json").write_text("{}")
    job = one(rendered["training/indexed-job"], "Job")
    (c,) = job["spec"]["template"]["spec"]["containers"]
    env = {**os.environ, "PATH": f"{stub.parent}:{os.environ['PATH']}", "RTK_OUT": str(out),
           "JOB_COMPLETION_INDEX": "2"}
    proc = subprocess.run(c["command"], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    args = proc.stdout.splitlines()
    assert "--node-rank=2" in args and args[args.index("--out") + 1] == str(out)
    assert ("--resume" in args) == (state == "checkpoint")
    assert (out / "manifest.json").exists() == (state == "checkpoint")  # an orphan is cleared
    assert args[args.index("-m"):args.index("-m") + 3] == ["-m", "toolkit", "finetune"]


# -- credentials, pins, CLI ---------------------------------------------------------------------
def test_s3_credentials_only_by_secret_reference(s3_tree):
    out, summary, rendered = s3_tree
    objs = all_objects(out, rendered)
    assert "Secret" not in {o["kind"] for o in objs}
    env = [e for o in objs for s in pod_specs(o) for c in s["containers"] for e in c.get("env", [])]
    secretish = [e for e in env if re.search("KEY|SECRET|TOKEN|PASSWORD", e["name"])]
    assert {e["name"] for e in secretish} >= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert all("value" not in e and "secretKeyRef" in e["valueFrom"] for e in secretish)
    (c,) = pod_specs(one(rendered["base"], "Deployment"))[0]["containers"]
    assert c["args"][:3] == ["rtk", "serve", "s3://bucket/models"]  # Triton reads S3 itself
    isvc = one(rendered["kserve"], "InferenceService")["spec"]["predictor"]
    account = one(rendered["kserve"], "ServiceAccount")
    assert isvc["serviceAccountName"] == account["metadata"]["name"]
    assert isvc["model"]["storageUri"] == "s3://bucket/models"
    assert summary["nodes"] == 1 and "Worker" not in one(
        rendered["training/pytorchjob"], "PyTorchJob")["spec"]["pytorchReplicaSpecs"]


def test_triton_release_is_the_one_the_dockerfile_and_compose_pin(tree):
    out, summary, _ = tree
    for path in (ROOT / "Dockerfile", ROOT / "compose.yaml"):
        if path.is_file():
            assert re.findall(r"NGC_RELEASE[:=-]+(\d+\.\d+)", path.read_text()) == [NGC_RELEASE], path
    dockerfile = (out / "image/Dockerfile").read_text()
    assert f"ARG NGC_RELEASE={NGC_RELEASE}\n" in dockerfile
    assert "FROM nvcr.io/nvidia/tritonserver:${NGC_RELEASE}-py3\n" in dockerfile
    assert summary["image"].endswith(f":{NGC_RELEASE}")


def test_every_triton_container_runs_rtk_serve_with_options_it_accepts(tree, s3_tree):
    """The Deployment, the ServingRuntime and compose.yaml: parsed by `rtk serve`'s own options."""
    import shlex

    from toolkit.cli.triton import serve

    commands = []
    for _, _, rendered in (tree, s3_tree):
        for obj in (one(rendered["overlays/cpu"], "Deployment"), one(rendered["kserve"],
                                                                    "ServingRuntime")):
            (container,) = pod_specs(obj)[0]["containers"]
            commands.append(container["args"])
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]["triton"]
    commands.append(shlex.split(compose["command"]))
    for args in commands:
        assert args[:2] == ["rtk", "serve"], args
        params = serve.make_context("serve", list(args[2:])).params  # raises on an unknown flag
        assert params["address"] == "0.0.0.0" and params["repo"] in (
            "/models", "/mnt/models", "s3://bucket/models")
    dockerfiles = [(tree[0] / "image/Dockerfile").read_text(), compose["build"]["dockerfile_inline"]]
    for text in dockerfiles:  # rtk from this checkout, without torch or nvidia-pytriton
        assert "COPY toolkit /opt/rtk/toolkit" in text and "--no-deps /opt/rtk" in text
        assert "tritonclient[grpc]" in text and "pillow" in text


def test_cli_writes_replaces_and_refuses(cli, tiny_bundle, tmp_path):
    out = tmp_path / "k8s"
    for _ in range(2):  # the second run replaces the first
        result = cli("deploy", tiny_bundle, "--target", "kubernetes", "--out", out, "--cpu",
                     "--name", "Tiny_Net", "--repo-uri", "pvc:shared-models/rtk", "--json")
        assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["app"] == "tiny-net" and summary["models"]["ensemble"] == "Tiny_Net"
    deployment = yaml.safe_load((out / "base/deployment.yaml").read_text())
    mount = [m for m in deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
             if m["name"] == "models"][0]
    assert (mount["subPath"], mount["readOnly"]) == ("rtk", True)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert_user_error(cli("deploy", tiny_bundle, "--out", foreign), "not written by `rtk deploy`")
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert_user_error(cli("deploy", tiny_bundle, "--out", tmp_path / "x", "--repo-uri", "gs://b"),
                      "Unsupported --repo-uri")
    assert_user_error(cli("deploy", tmp_path, "--out", tmp_path / "y"), "neither an rtk run")
    assert_user_error(cli("deploy", tiny_bundle, "--out", tmp_path / "z", "--name", "bad name"),
                      "Invalid model name")


def test_kubernetes_names_from_model_names():
    assert k8s_name("Tiny_Net") == "tiny-net"
    assert k8s_name("9lives") == "rtk-9lives"
    assert len(k8s_name("a" * 48)) <= 40


# -- who may reach the pods ------------------------------------------------------------------------
def _policy(rendered) -> dict:
    return one(rendered["base"], "NetworkPolicy")["spec"]


def test_network_policy_opens_inference_to_the_named_clients_and_metrics_to_monitoring(
        tiny_bundle, tmp_path, tree, s3_tree):
    out = tmp_path / "k8s"
    deploy(tiny_bundle, out, allow_from=("frontend", "app=web"), monitoring_namespace="obs")
    rendered = {"base": python_render(out / "base")}
    policy = _policy(rendered)
    for obj in rendered["base"]:
        validate(obj)  # the strict Kubernetes schema, NetworkPolicy included
    deployment = one(rendered["base"], "Deployment")
    assert policy["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    inference, metrics = policy["ingress"]
    assert {p["port"] for p in inference["ports"]} == {8000, 8001}
    assert inference["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "frontend"}}},
        {"podSelector": {"matchLabels": {"app": "web"}}}]
    assert [p["port"] for p in metrics["ports"]] == [8002]
    assert metrics["from"] == [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "obs"}}}]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"} and policy["egress"] == []  # PVC
    # defaults: this namespace's pods only; S3: DNS and HTTPS out, nothing else
    assert _policy(tree[2])["ingress"][0]["from"] == [{"podSelector": {}}]
    assert sorted((p["port"], p["protocol"]) for rule in _policy(s3_tree[2])["egress"]
                  for p in rule["ports"]) == [(53, "TCP"), (53, "UDP"), (443, "TCP")]
    readme = (out / "README.md").read_text()
    assert "base/networkpolicy.yaml" in readme and "`frontend`" in readme
    assert "kubectl create secret generic" in readme and "rtk-control-key" in readme


def test_the_control_key_comes_from_a_secret_rtk_never_writes(tree):
    out, _, rendered = tree
    assert "Secret" not in {o["kind"] for o in all_objects(out, rendered)}
    (c,) = pod_specs(one(rendered["base"], "Deployment"))[0]["containers"]
    (key,) = [e for e in c["env"] if e["name"] == "RTK_TRITON_CONTROL_KEY"]
    assert key["valueFrom"]["secretKeyRef"]["optional"] is False and "value" not in key


def test_allow_from_must_be_a_namespace_or_a_label(tiny_bundle, tmp_path):
    from toolkit.core.errors import RtkError

    with pytest.raises(RtkError, match="is not KEY=VALUE"):
        deploy(tiny_bundle, tmp_path / "k8s", allow_from=("app=",))


@pytest.mark.parametrize("target,vnni_terms", [("x86-vnni", 3), ("x86-avx2", 1)])
def test_an_int8_deployment_requires_nodes_of_its_cpu_kind(exported, tmp_path, target, vnni_terms):
    """The CPU overlay serving INT8 keeps to the kind its gate passed on (NFD labels); a kind
    it was not gated on gets FP32 and no affinity. The gate row is set here, so the test does
    not depend on the CPU it runs on."""
    from toolkit.core.bundle import Bundle

    root = Path(shutil.copytree(exported, tmp_path / "run"))
    bundle = Bundle.load(root)
    row = {"passed": True, "vs_fp32": 2.0, "host": {"int8_class": target}}
    bundle.update_artifact("model.int8.onnx", trusted=True, gates={target: row})
    bundle.save()
    for asked, served in ((target, True), ("arm64", False)):
        out = tmp_path / f"k8s-{asked}"
        summary = deploy(root, out, kind="cpu", target_cpu=asked)
        spec = one(python_render(out / "overlays/cpu"), "Deployment")["spec"]["template"]["spec"]
        readme = (out / "README.md").read_text()
        if not served:
            assert "affinity" not in spec and "serves FP32, not INT8" in readme
            continue
        terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
            "nodeSelectorTerms"]
        assert len(terms) == vnni_terms
        keys = [e["key"] for t in terms for e in t["matchExpressions"]]
        assert all(k.startswith("feature.node.kubernetes.io/cpu-cpuid.") or k == "kubernetes.io/arch"
                   for k in keys)
        if target == "x86-avx2":  # AVX2 and none of the VNNI flags
            ops = {e["key"].rsplit(".", 1)[-1]: e["operator"] for e in terms[0]["matchExpressions"]}
            assert ops["AVX2"] == "In" and ops["AVX512VNNI"] == ops["AVXVNNI"] == "DoesNotExist"
        assert "Node Feature Discovery" in readme and f"--target-cpu {target}" in readme
        assert any("NFD" in w for w in summary["warnings"])
        gpu = one(python_render(out / "overlays/gpu"), "Deployment")["spec"]["template"]["spec"]
        assert "affinity" not in gpu
