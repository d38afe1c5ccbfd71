"""Triton client backend: image bytes to the ensemble, or tensors to the classifier, over HTTP/gRPC."""

from __future__ import annotations

import functools
import time

import numpy as np

from ..core import control_key as keys
from ..core.errors import RtkError, require
from . import retry
from .base import Backend

IMAGE_INPUT, PROBS_OUTPUT = "image", "probabilities"  # as written by toolkit.triton.configs
START_HINT = "Start one with: rtk triton RUN_DIR --repo REPO && rtk serve REPO"


class TritonClient(Backend):
    """A model served by Triton; finds the deployment of this bundle's artifact by its sha256."""

    name = "triton"
    devices = ("cpu", "cuda")  # the device is the server's business, not the client's

    @classmethod
    def availability(cls, bundle, device):
        try:
            require("tritonclient.http", "triton")
            require("tritonclient.grpc", "triton")
        except RtkError as exc:
            return f"tritonclient is not installed: {exc.hint}"
        return None

    def __init__(self, bundle, device="cpu", url: str | None = None, *, protocol: str = "http",
                 send_bytes: bool = True, model: str | None = None, timeout: float = 60.0,
                 retry_deadline: float = 30.0, control_key: str | None = None, **options):
        super().__init__(bundle, device)
        self.retry_deadline = retry_deadline  # seconds a request may spend on retries
        if not url:
            raise RtkError("The triton backend needs the server address.",
                           "Pass --url HOST:PORT (8000 for http, 8001 for grpc).")
        if protocol not in ("http", "grpc"):
            raise RtkError(f"Unknown protocol {protocol!r}.", "Use --protocol http or grpc.")
        self.accepts_bytes = bool(send_bytes)
        self.protocol, self.url = protocol, url.split("://", 1)[-1].rstrip("/")
        self.lib = require(f"tritonclient.{protocol}", "triton")
        self.key = control_key or keys.client_key(self.url)
        self.client = self._connect(timeout)
        try:
            self.model, self.config = self._find_model(model)
        except BaseException:
            self.close()  # no connection left open behind an error
            raise
        self.input = self.config["input"][0]["name"]
        self.output = self.config["output"][0]["name"]
        self.max_batch = int(self.config.get("max_batch_size") or 1)

    def _connect(self, timeout: float):
        kwargs = ({"connection_timeout": timeout, "network_timeout": timeout}
                  if self.protocol == "http" else {})
        try:
            client = self.lib.InferenceServerClient(url=self.url, **kwargs)
            ready = self._wait_ready(client)
        except Exception as exc:  # noqa: BLE001 - connection errors differ by protocol
            raise RtkError(f"Cannot reach Triton at {self.url} over {self.protocol}: {exc}.",
                           START_HINT) from exc
        if not ready:
            client.close()
            raise RtkError(f"Triton at {self.url} is not ready after {self.retry_deadline:.0f} s.",
                           "Wait for `rtk serve` to say ready (a crashed model it reloads comes "
                           "back by itself); otherwise its log says which model failed.")
        return client

    def _wait_ready(self, client) -> bool:
        """Server readiness, waiting out a model reload (Triton is briefly not ready meanwhile).

        A refused connection is not waited for: at start-up it means a wrong --url.
        """
        start, attempt = time.monotonic(), 0
        while not client.is_server_ready():
            left = self.retry_deadline - (time.monotonic() - start)
            if left <= 0:
                return False
            time.sleep(min(left, 0.05 + retry.backoff(attempt, cap=1.0)))
            attempt += 1
        return True

    def _control(self) -> dict:
        """Options of a call to a control API (model config, repository index): the key's
        header (core/control_key.py), and JSON on gRPC."""
        return {"headers": keys.headers(self.key, self.protocol),
                **({"as_json": True} if self.protocol == "grpc" else {})}

    def _config(self, name: str) -> dict:
        config = self.client.get_model_config(name, **self._control())
        return config.get("config", config)

    def _find_model(self, name: str | None) -> tuple[str, dict]:
        """The ensemble (bytes) or classifier (tensors) serving one of this bundle's artifacts."""
        role = "ensemble" if self.accepts_bytes else "classifier"
        shas = {a.sha256 for a in self.bundle.manifest.artifacts.values()}
        try:
            index = self.client.get_model_repository_index(**self._control())
        except Exception as exc:  # noqa: BLE001 - tritonclient's error types differ by protocol
            if "restricted" not in str(exc).lower() and "unauthori" not in str(exc).lower():
                raise
            raise RtkError(f"Triton at {self.url} guards its control APIs with a key and "
                           f"{'refused the one given' if self.key else 'none was given'}: {exc}",
                           f"Set {keys.ENV} to the key of that server (`rtk serve` prints the "
                           "file it wrote it to; in Kubernetes it is the Secret's).") from None
        models = index.get("models", []) if isinstance(index, dict) else index
        names = [name] if name else sorted(m["name"] for m in models if m.get("state") == "READY")
        for candidate in names:
            config = self._config(candidate)
            params = {k: v.get("string_value") for k, v in config.get("parameters", {}).items()}
            if params.get("rtk.role") == role and params.get("rtk.artifact_sha256") in shas:
                return candidate, config
        raise RtkError(f"No ready {role} on Triton at {self.url} serves this run's model "
                       f"(looked at: {', '.join(names) or 'nothing'}).",
                       f"Regenerate the repository from this run and restart: {START_HINT}")

    def _input(self, x):
        if self.accepts_bytes:
            data = np.array([[bytes(b)] for b in x], dtype=object).reshape(-1, 1)
            inp = self.lib.InferInput(self.input, list(data.shape), "BYTES")
        else:
            data = np.ascontiguousarray(x, dtype=np.uint8)  # the classifier's uint8 images
            inp = self.lib.InferInput(self.input, list(data.shape), "UINT8")
        inp.set_data_from_numpy(data)
        return inp

    def _infer(self, x, output: str, class_count: int = 0) -> np.ndarray:
        outs = []
        for i in range(0, len(x), self.max_batch):
            inp = self._input(x[i:i + self.max_batch])
            requested = self.lib.InferRequestedOutput(output, class_count=class_count)
            try:  # transient failures (overload, a model being reloaded) are retried
                result = retry.call_with_retry(
                    functools.partial(self.client.infer, self.model, [inp], outputs=[requested]),
                    self.retry_deadline)
            except retry.RetryGaveUp as exc:
                raise self._error(exc) from exc
            outs.append(result.as_numpy(output))
        return np.concatenate(outs)

    def _error(self, gave_up: "retry.RetryGaveUp") -> RtkError:
        """Say what happened: bad input, overload, a failed model, or a lost server."""
        kind, msg = gave_up.failure.kind, gave_up.failure.message
        tried = (f" (still failing after {gave_up.attempts} attempts in {gave_up.elapsed:.1f} s)"
                 if gave_up.attempts > 1 else "")
        if kind == retry.BAD_INPUT:
            return RtkError(f"Triton rejected the input to {self.model}: {msg}",
                            "Check the images (and the server log of `rtk serve`).")
        if kind == retry.OVERLOADED:
            return RtkError(f"Triton is overloaded: {self.model} turned the request away{tried}: "
                            f"{msg}", "Send fewer requests at once, or give the deployment more "
                            "capacity (rtk triton --instances, --max-queue-size, --queue-timeout-ms).")
        if kind == retry.MODEL_DOWN:
            return RtkError(f"The model's backend on the server failed or is being reloaded{tried}:"
                            f" {msg}", "Not a problem with the images. `rtk serve` reloads a crashed "
                            "model within seconds; if it stays down, its log says why.")
        if kind == retry.UNREACHABLE:
            return RtkError(f"Lost the connection to Triton at {self.url}{tried}: {msg}", START_HINT)
        return RtkError(f"The model on the server failed the request to {self.model}: {msg}",
                        "See the server log of `rtk serve` for the model's error.")

    def __call__(self, x) -> np.ndarray:
        """Logits (N, classes) as float32: from image bytes via the ensemble, or NCHW tensors."""
        if len(x) == 0:
            return np.zeros((0, len(self.bundle.classes)), np.float32)
        return self._infer(x, self.output).astype(np.float32)

    def probabilities(self, x) -> np.ndarray:
        """Softmax probabilities computed by the ensemble's postprocessing model (bytes only)."""
        if not self.accepts_bytes:
            raise RtkError("Probabilities come from the ensemble.", "Send image bytes (no --tensors).")
        return self._infer(x, PROBS_OUTPUT).astype(np.float32)

    def labels(self, x, k: int = 5) -> list[list[dict]]:
        """Top-k via Triton's classification extension: label, score and class index per item."""
        output = PROBS_OUTPUT if self.accepts_bytes else self.output
        raw = self._infer(x, output, class_count=max(1, k)).reshape(len(x), -1)
        rows = []
        for row in raw:
            parsed = [item.decode() if isinstance(item, bytes) else str(item) for item in row]
            rows.append([{"score": float(s), "index": int(i), "label": label}
                         for s, i, label in (p.split(":", 2) for p in parsed)])
        return rows

    def close(self) -> None:
        if getattr(self, "client", None) is not None:
            self.client.close()
            self.client = None
