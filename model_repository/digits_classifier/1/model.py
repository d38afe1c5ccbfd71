"""Triton Python-backend model: ONNX Runtime on model.onnx (copied as model.py).

For Triton builds without the onnxruntime backend, such as the server inside
nvidia-pytriton. The requests of a dynamic batch are run as one ONNX Runtime call.
"""

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
        providers = ["CPUExecutionProvider"]
        if args.get("model_instance_kind") == "GPU" and \
                "CUDAExecutionProvider" in ort.get_available_providers():
            device = int(args.get("model_instance_device_id", "0"))
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device}))
        self.session = ort.InferenceSession(path, sess_options=opts, providers=providers)

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
