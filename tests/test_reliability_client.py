"""Client-side reliability without a server: error classification, retries, queue bounds.

The retry loop is driven by a fake callable and a fake clock (no sleeping, no server);
what the real server says in each case is checked end to end in test_reliability.py.
"""

from __future__ import annotations

import pytest

from toolkit.backends import retry

# Triton 2.51's words, as tritonclient reports them over HTTP and gRPC.
SAID = {
    retry.OVERLOADED: [
        "[503] in ensemble 'tiny', [request id: <id_unknown>] Exceeds maximum queue size",
        "[StatusCode.UNAVAILABLE] in ensemble 'tiny', Request timeout expired",
    ],
    retry.MODEL_DOWN: [
        "[500] in ensemble 'tiny', Stub process 'tiny_classifier_cpu_0' is not healthy.",
        "[404] Request for unknown model: 'tiny' has no available versions",
        "[StatusCode.NOT_FOUND] Request for unknown model: 'tiny_classifier' has no available "
        "versions",
        "[StatusCode.INTERNAL] in ensemble 'tiny', Stub process 'tiny_preprocess_cpu_0' is not "
        "healthy.",
    ],
    retry.BAD_INPUT: [
        "[500] in ensemble 'tiny', preprocess: cannot decode image: cannot identify image file",
        "[StatusCode.INTERNAL] in ensemble 'tiny', preprocess: empty image bytes",
        "[400] [request id: <id_unknown>] unexpected shape for input 'input' for model "
        "'tiny_classifier'. Expected [-1,32,32,3], got [1,33,32,3].",
        "[StatusCode.INVALID_ARGUMENT] inference input 'input' data-type is 'FP64', but model "
        "'tiny_classifier' expects 'UINT8'",
        "[StatusCode.INVALID_ARGUMENT] inference request batch-size must be <= 16 for "
        "'tiny_classifier'",
    ],
    retry.UNREACHABLE: [
        "[StatusCode.UNAVAILABLE] failed to connect to all addresses; last error: UNKNOWN: "
        "ipv4:127.0.0.1:9: Failed to connect to remote host: Connection refused",
    ],
    retry.SERVER_ERROR: [
        "[500] in ensemble 'tiny', onnxruntime: [ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION",
    ],
}


class FakeTritonError(Exception):
    """Shaped like tritonclient's InferenceServerException: message() and status()."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text

    def message(self) -> str:
        return self.text

    def status(self):
        return None


@pytest.mark.parametrize("kind,text", [(k, t) for k, texts in SAID.items() for t in texts])
def test_triton_messages_are_classified(kind, text):
    failure = retry.classify(FakeTritonError(text))
    assert failure.kind == kind and failure.message == text
    assert failure.transient == (kind in (retry.OVERLOADED, retry.MODEL_DOWN, retry.UNREACHABLE))


def test_transport_errors_are_unreachable():
    assert retry.classify(ConnectionRefusedError(111, "Connection refused")).kind == retry.UNREACHABLE
    assert retry.classify(ConnectionResetError(104, "reset by peer")).transient


class FakeClock:
    def __init__(self):
        self.now, self.sleeps = 0.0, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


def _failing(texts, result="ok", cost=0.0, clock=None):
    """A callable that raises each text in turn (each call costing `cost` s), then returns."""
    calls = []

    def fn():
        calls.append(1)
        if clock is not None:
            clock.now += cost
        if len(calls) <= len(texts):
            raise FakeTritonError(texts[len(calls) - 1])
        return result
    return fn, calls


def test_transient_failures_are_retried_until_success():
    clock = FakeClock()
    texts = [SAID[retry.MODEL_DOWN][0], SAID[retry.MODEL_DOWN][1], SAID[retry.OVERLOADED][0]]
    fn, calls = _failing(texts)
    assert retry.call_with_retry(fn, 30, clock=clock, sleep=clock.sleep, rand=lambda: 1.0) == "ok"
    assert len(calls) == 4
    assert clock.sleeps == [0.05, 0.1, 0.2]  # exponential (jitter pinned to its maximum)


def test_bad_input_is_never_retried():
    clock = FakeClock()
    fn, calls = _failing([SAID[retry.BAD_INPUT][0]])
    with pytest.raises(retry.RetryGaveUp) as info:
        retry.call_with_retry(fn, 30, clock=clock, sleep=clock.sleep)
    assert len(calls) == 1 and clock.sleeps == [] and info.value.failure.kind == retry.BAD_INPUT


def test_unknown_server_errors_are_not_retried():
    fn, calls = _failing(SAID[retry.SERVER_ERROR])
    with pytest.raises(retry.RetryGaveUp) as info:
        retry.call_with_retry(fn, 30, sleep=lambda s: None)
    assert len(calls) == 1 and info.value.failure.kind == retry.SERVER_ERROR


def test_retries_stop_at_the_deadline():
    clock = FakeClock()
    fn, calls = _failing([SAID[retry.OVERLOADED][0]] * 10_000, cost=0.01, clock=clock)
    with pytest.raises(retry.RetryGaveUp) as info:
        retry.call_with_retry(fn, 5.0, clock=clock, sleep=clock.sleep, rand=lambda: 1.0)
    assert info.value.failure.kind == retry.OVERLOADED and info.value.attempts == len(calls) > 3
    assert 5.0 <= clock.now <= 5.0 + 0.01  # the last pause is cut to the deadline; one call after
    assert max(clock.sleeps) <= 2.0  # the backoff is capped


def test_backoff_is_jittered_and_capped():
    assert retry.backoff(0, rand=lambda: 0.5) == pytest.approx(0.025)
    assert retry.backoff(3, rand=lambda: 1.0) == pytest.approx(0.4)
    assert retry.backoff(30, rand=lambda: 1.0) == 2.0
    assert retry.backoff(30, rand=lambda: 0.0) == 0.0
    assert len({retry.backoff(5) for _ in range(20)}) > 1  # real jitter: clients do not align


def test_client_error_messages_say_what_happened():
    """TritonClient._error: model failure vs bad input vs overload, each with its own hint."""
    from toolkit.backends.triton import TritonClient

    client = TritonClient.__new__(TritonClient)  # only _error's attributes: no server needed
    client.model, client.url = "tiny", "127.0.0.1:8000"

    def error(kind, attempts=1):
        failure = retry.Failure(kind, SAID[kind][0])
        return client._error(retry.RetryGaveUp(failure, attempts, 12.5))

    down = error(retry.MODEL_DOWN, attempts=9)
    assert "backend on the server failed or is being reloaded" in down.message
    assert "9 attempts in 12.5 s" in down.message and "Not a problem with the images" in down.hint
    bad = error(retry.BAD_INPUT)
    assert "rejected the input" in bad.message and "Check the images" in bad.hint
    busy = error(retry.OVERLOADED, attempts=4)
    assert "overloaded" in busy.message and "--max-queue-size" in busy.hint
    assert "Check the images" not in down.hint + busy.hint


def test_queue_policy_defaults_and_flags(tmp_path):
    pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from conftest import fake_bundle

    from toolkit.triton import RepoOptions
    from toolkit.triton.repository import build_configs

    bundle = fake_bundle(tmp_path / "run")
    # by default no queue policy: it would turn off Triton's payload prefetching (the 500 ms stall)
    made, facts = build_configs(bundle, RepoOptions(platform="python", instances=2))
    assert facts["max_queue_size"] == 0 and facts["queue_timeout_ms"] == 0
    for role in ("classifier", "preprocess", "postprocess"):
        assert made[role].HasField("dynamic_batching")
        assert not made[role].dynamic_batching.HasField("default_queue_policy")
    made, _ = build_configs(bundle, RepoOptions(platform="python", max_queue_size=4,
                                                queue_timeout_ms=500))
    for role in ("classifier", "preprocess", "postprocess"):
        policy = made[role].dynamic_batching.default_queue_policy
        assert (policy.max_queue_size, policy.default_timeout_microseconds) == (4, 500_000)
        assert policy.allow_timeout_override and policy.timeout_action == 0  # REJECT


def test_queue_flags_on_the_cli(tmp_path, cli):
    pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from conftest import assert_user_error
    from conftest import fake_bundle

    bundle = fake_bundle(tmp_path / "run")
    result = cli("triton", bundle.root, "--repo", tmp_path / "repo", "--platform", "python",
                 "--max-queue-size", "8", "--queue-timeout-ms", "250")
    assert result.exit_code == 0, result.output
    assert "at most 8 requests per model, rejected after waiting 250 ms" in result.stdout
    assert "payload prefetching" in result.stderr and "--instances 2" in result.stderr  # 1 instance
    text = (tmp_path / "repo" / "run_classifier" / "config.pbtxt").read_text()
    assert "max_queue_size: 8" in text and "default_timeout_microseconds: 250000" in text
    assert_user_error(cli("triton", bundle.root, "--repo", tmp_path / "r2", "--max-queue-size",
                          "-1"), "cannot be negative")


def test_triton_writing_into_a_locked_run_is_refused(tmp_path, cli):
    pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from conftest import assert_user_error
    from conftest import fake_bundle

    from toolkit.core.lock import bundle_lock

    bundle = fake_bundle(tmp_path / "run")
    with bundle_lock(bundle.root, "a test"):
        inside = cli("triton", bundle.root, "--repo", bundle.root / "repo", "--platform", "python")
        assert_user_error(inside, "being changed by another rtk command", "rtk triton")
        outside = cli("triton", bundle.root, "--repo", tmp_path / "repo", "--platform", "python")
        assert outside.exit_code == 0, outside.output  # reading the run is never blocked
    assert not (bundle.root / "repo").exists()


def test_serve_command_line_loads_the_named_models_or_all():
    from toolkit.triton.server import triton_command

    ports = {"http": 8000, "grpc": 8001, "metrics": 8002}
    every = triton_command("tritonserver", "/models", ports, address="0.0.0.0", exit_timeout=30)
    named = triton_command("tritonserver", "s3://bucket/models", ports, address="0.0.0.0", exit_timeout=30,
                           load_models=["tiny", "tiny_classifier"], extra=["--backend-directory=/b"])
    for cmd in (every, named):  # explicit control, without which the watchdog cannot reload
        assert "--model-control-mode=explicit" in cmd and "--exit-timeout-secs=30" in cmd
        assert {"--http-port=8000", "--grpc-port=8001", "--metrics-port=8002"} <= set(cmd)
    assert [a for a in every if a.startswith("--load-model")] == ["--load-model=*"]
    assert [a for a in named if a.startswith("--load-model")] == ["--load-model=tiny",
                                                                   "--load-model=tiny_classifier"]
    assert "--model-repository=s3://bucket/models" in named and named[-1] == "--backend-directory=/b"


def test_serve_refuses_a_model_the_repository_lacks(tmp_path, cli):
    pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from conftest import assert_user_error
    from conftest import fake_bundle

    from toolkit.triton.server import TritonServer

    bundle = fake_bundle(tmp_path / "run")
    assert cli("triton", bundle.root, "--repo", tmp_path / "repo", "--platform", "python",
               ).exit_code == 0
    # refused before any server starts: the repository is checked first
    assert_user_error(cli("serve", tmp_path / "repo", "--load-model", "run",
                          "--load-model", "nope"), "No model 'nope'", "run_classifier")
    TritonServer(tmp_path / "repo", load_models=["run", "*"])._check_repository()
    remote = TritonServer("s3://bucket/models", load_models=["anything"])
    assert remote.repo == "s3://bucket/models"
    remote._check_repository()  # Triton reads cloud storage itself; rtk cannot list it
