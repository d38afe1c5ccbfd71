"""Triton Python-backend model: ONNX Runtime on model.onnx (copied as model.py).

For Triton builds without the onnxruntime backend, such as the server inside
nvidia-pytriton. The requests of a dynamic batch are run as one ONNX Runtime call.
"""

import importlib.util
import json
import os

import numpy as np
try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # only Triton's Python backend runs this file; rtk merely copies it
    pb_utils = None


class TritonPythonModel:
    """One ONNX Runtime session per model instance (CUDA on a GPU instance when available)."""

    def initialize(self, args):
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.input = config["input"][0]["name"]
        self.output = config["output"][0]["name"]
        path = os.path.join(args["model_repository"], args["model_version"],
                            params.get("onnx_file", "model.onnx"))
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = int(params.get("intra_op_threads", "0"))
        opts.inter_op_num_threads = 1
        # "0": idle intra-op threads sleep instead of spinning, leaving the cores to the
        # decoding instances that share them (rtk triton writes it on CPU)
        opts.add_session_config_entry("session.intra_op.allow_spinning",
                                      params.get("intra_op_allow_spinning", "1"))
        # what the INT8 gate ran the graph with (session.x64quantprecision on a CPU without VNNI)
        levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
        for key, value in json.loads(params.get("session_config", "{}")).items():
            if key == "rtk.graph_optimization_level":  # the export found it crashes higher
                opts.graph_optimization_level = levels[value]
            else:
                opts.add_session_config_entry(key, str(value))
        providers = ["CPUExecutionProvider"]
        if args.get("model_instance_kind") == "GPU" and \
                "CUDAExecutionProvider" in ort.get_available_providers():
            device = int(args.get("model_instance_device_id", "0"))
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device}))
        self.session = ort.InferenceSession(path, sess_options=opts, providers=providers)
        if params.get("fingerprint_file"):
            self._replay(os.path.dirname(path), params)

    def _replay(self, folder, params):
        """Refuse to load an INT8 graph whose logits on its fingerprint probes drift from those
        recorded where it was gated: other int8 kernels here, or another graph swapped in."""
        spec = importlib.util.spec_from_file_location(
            "rtk_fingerprint", os.path.join(folder, "fingerprint.py"))
        fp = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(fp)
        doc = fp.load(os.path.join(folder, params["fingerprint_file"]))
        gated = params.get("fingerprint_class", "")
        reason = fp.replay(doc, lambda x: self.session.run([self.output], {self.input: x})[0], gated)
        if reason:
            raise RuntimeError(
                f"rtk: refusing to serve this INT8 graph: {reason}. It was gated on {gated} CPUs; "
                "serve FP32 (rtk triton RUN_DIR --artifact onnx), or gate it on this host's CPU "
                "kind (rtk export RUN_DIR --int8) and regenerate the repository with "
                "--target-cpu for it.")

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input).as_numpy() for r in requests]
        sizes = [len(a) for a in arrays]
        try:
            logits = self.session.run([self.output], {self.input: np.concatenate(arrays)})[0]
        except Exception as exc:
            error = pb_utils.TritonError(f"onnxruntime: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses, start = [], 0
        for n in sizes:
            out = pb_utils.Tensor(self.output, np.ascontiguousarray(logits[start:start + n]))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            start += n
        return responses

    def finalize(self):
        self.session = None
